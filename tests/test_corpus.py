"""gunicorn's HTTP parser corpus (shared/http-corpus, see its README) against the real server.

Every case is sent over a socket three ways: whole, one byte per send(), and in seeded random pieces
with short pauses between them. A valid case must reach the app (tests/apps/recorder.py) exactly as
listed — method, target, path, query, version, header fields as the WSGI environ maps them, body — and
be answered once per request. An invalid case must get its status, nothing after it, and must never
reach the app; input that merely stops (the client half-closes after it) is answered 400 too, as
gunicorn answers it.

One server runs per distinct combination of settings (cases are grouped so that only one is up at a
time), with `--permit-missing-host` because many cases are HTTP/1.1 requests without Host. The module
prints `corpus: N passed, N failed, N skipped` (counted per case) and fails if any case fails.
"""

import base64
import json
import os
import random
import socket
import tempfile
import time
import zlib
from urllib.parse import unquote_to_bytes

import pytest

from conftest import RawConnection, Server

pytestmark = pytest.mark.ferricorn_only  # --permit-missing-host and the strict framing are ferricorn's

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus_dir():
    env = os.environ.get("FERRICORN_HTTP_CORPUS")
    if env:
        return env
    return os.path.normpath(os.path.join(REPO, "..", "shared", "http-corpus"))


CORPUS_DIR = _corpus_dir()


def _load(name):
    path = os.path.join(CORPUS_DIR, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


VALID = _load("valid.json")
INVALID = _load("invalid.json")

# Valid cases ferricorn refuses, with the status and why.
EXPECT_REFUSED = {
    # The corpus README: gunicorn 27 refuses these two too.
    "009": (400, "Transfer-Encoding with Content-Length"),
    "027": (400, "raw UTF-8 bytes in the request target"),
    # gunicorn hands a gzip-coded body to the app undecoded, as if it were the content; ferricorn
    # refuses the coding (docs/gunicorn-compat.md).
    "025": (501, "Transfer-Encoding: gzip, then chunked"),
    "025_line": (501, "Transfer-Encoding: gzip,chunked"),
    "rfc9112_smuggle_gzip_chunked_01": (501, "Transfer-Encoding: gzip, chunked"),
}
# Cases that cannot run over a socket at all.
SKIP_CASES = {
    "099": "declares a longer body than the case holds: a server rightly waits for the rest",
}
# gunicorn settings ferricorn does not have yet: cases needing them are skipped under this reason.
MISSING_SETTINGS = {}
# Where ferricorn reports a field differently from gunicorn on purpose.
PATH_NOT_COMPARED = {
    "rfc9112_target_authority_connect_01":
        "for CONNECT example.com:443 gunicorn reports urlsplit's path '443'; ferricorn the authority",
}

MODES = ("whole", "bytewise", "random")


def _flag(name):
    return "--" + name.replace("_", "-")


def settings_to_args(settings):
    """The command-line flags for a case's gunicorn settings; raises KeyError for a missing setting."""
    args = ["--permit-missing-host"]
    for key in sorted(settings):
        value = settings[key]
        if key in MISSING_SETTINGS:
            raise KeyError(key)
        if key == "limit_request_line":
            # above 8190 (case 024: 8200), ferricorn uses 8190, as gunicorn does
            args += ["--limit-request-line", str(value)]
        elif key == "limit_request_field_size":
            args += ["--limit-request-field_size", str(value)]
        elif key == "limit_request_fields":
            args += ["--limit-request-fields", str(value)]
        elif key in ("permit_obsolete_folding", "strip_header_spaces", "casefold_http_method",
                     "permit_unconventional_http_method", "permit_unconventional_http_version"):
            if value:
                args.append(_flag(key))
        elif key == "header_map":
            args += ["--header-map", value]
        elif key == "forwarded_allow_ips":
            args += ["--forwarded-allow-ips", ",".join(value) if isinstance(value, list) else value]
        elif key == "proxy_protocol":
            # gunicorn reads a boolean as auto/off
            mode = {True: "auto", False: "off"}[value] if isinstance(value, bool) else value
            args += ["--proxy-protocol", mode]
        elif key == "proxy_allow_ips":
            args += ["--proxy-allow-from", ",".join(value) if isinstance(value, list) else value]
        else:
            raise KeyError(key)
    return args


def _cases():
    if VALID is None or INVALID is None:
        return [pytest.param(None, None, None, marks=pytest.mark.skip(
            reason=f"HTTP corpus not found at {CORPUS_DIR} (set FERRICORN_HTTP_CORPUS)"))]
    cases = [("valid", c) for c in VALID] + [("invalid", c) for c in INVALID]

    def group(item):
        try:
            return (0, tuple(settings_to_args(item[1]["settings"])))
        except KeyError:
            return (1, ())

    # Cases with the same settings run one after another on one server.
    cases.sort(key=group)
    return [pytest.param(kind, case, mode, id=f"{kind}-{case['name']}-{mode}")
            for kind, case in cases for mode in MODES]


# ----------------------------------------------------------------------------------------------
# score


class Score:
    def __init__(self):
        self.results = {}  # (kind, name) -> {"passed"|"failed"|"skipped"}

    def add(self, key, outcome):
        self.results.setdefault(key, set()).add(outcome)

    def line(self):
        passed = failed = skipped = 0
        for outcomes in self.results.values():
            if "failed" in outcomes:
                failed += 1
            elif "passed" in outcomes:
                passed += 1
            else:
                skipped += 1
        return f"corpus: {passed} passed, {failed} failed, {skipped} skipped"


SCORE = Score()


@pytest.fixture(scope="module", autouse=True)
def corpus_score(request):
    yield SCORE
    if not SCORE.results:
        return
    line = SCORE.line()
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        # shown whatever the outcome, not only in the report of a failure
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print(line)


# ----------------------------------------------------------------------------------------------
# one server at a time


class ServerPool:
    """Keeps the server for the current settings; starting another stops the previous one."""

    def __init__(self):
        self.key = None
        self.server = None
        self.log = None

    def get(self, args):
        key = tuple(args)
        if key != self.key:
            self.close()
            workdir = tempfile.mkdtemp(prefix="fcn-corpus-")
            self.log = os.path.join(workdir, "calls.jsonl")
            self.server = Server(["-w", "1", "--keep-alive", "5", "--timeout", "20", *args, "recorder"],
                                 env={"RECORDER_LOG": self.log}, workdir=workdir)
            self.key = key
            self.server.wait_ready()
        return self.server

    def records(self, port):
        """What the app recorded for the client connection with local port `port`."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [r for r in map(json.loads, f.read().splitlines()) if r["port"] == port]

    def close(self):
        if self.server is not None:
            self.server.cleanup()
        self.server = None
        self.key = None


@pytest.fixture(scope="module")
def pool():
    p = ServerPool()
    yield p
    p.close()


# ----------------------------------------------------------------------------------------------
# sending


def _pieces(data, mode, name):
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(zlib.crc32(name.encode()))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def send_case(conn, data, mode, name):
    """Send `data` as `mode` says; stop quietly if the server has closed the connection already."""
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pause = 0.002 if mode == "random" else 0.0
    try:
        for piece in _pieces(data, mode, name):
            conn.sock.sendall(piece)
            if pause:
                time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# expectations


def expected_fields(headers):
    """The environ keys a list of (NAME, value) header fields maps to, as gunicorn builds them."""
    out = {}
    for name, value in headers:
        if name == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif name == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.replace("-", "_")
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def compare(name, want, got):
    """Differences between a corpus request and a recorded call, as a list of strings."""
    diffs = []

    def check(what, expected, actual):
        if expected != actual:
            diffs.append(f"{what}: expected {expected!r}, got {actual!r}")

    check("method", want["method"], got["method"])
    check("target", want["target"], got["raw_uri"])
    check("query", want["query"], got["query"])
    major, minor = want["version"]
    check("version", f"HTTP/{major}.{minor}", got["protocol"])
    if name not in PATH_NOT_COMPARED:
        path = unquote_to_bytes(want["path"].encode("latin-1")).decode("latin-1")
        check("path", path, got["path_info"])
    fields = dict(got["fields"])
    want_fields = expected_fields(want["headers"])
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if fields.get(key) == "" and key not in want_fields:
            del fields[key]
    check("fields", want_fields, fields)
    check("body", want["body"], got["body"])
    return diffs


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxied_port(raw):
    """The client port a PROXY protocol header at the start of `raw` names (the app's REMOTE_PORT), or
    None without one."""
    if raw.startswith(b"PROXY TCP"):
        return int(raw.split(b"\r\n", 1)[0].split(b" ")[4])
    if raw.startswith(V2_SIGNATURE) and raw[12] == 0x21:
        offset = {0x11: 24, 0x21: 48}.get(raw[13])
        if offset is not None:
            return int.from_bytes(raw[offset:offset + 2], "big")
    return None


def run_valid(pool, case, mode):
    srv = pool.get(settings_to_args(case["settings"]))
    raw = base64.b64decode(case["raw_base64"])
    wanted = case["requests"]
    # Behind a PROXY header the app sees the header's client port, the same for every mode: only the
    # calls recorded from now on are this run's.
    proxied = proxied_port(raw) if "proxy_protocol" in case["settings"] else None
    seen = len(pool.records(proxied)) if proxied is not None else 0
    with RawConnection(srv.port, timeout=10) as conn:
        port = conn.sock.getsockname()[1] if proxied is None else proxied
        # The server may close before the end of the input (HTTP/1.0, Connection: close); what must
        # come back is the answers to the requests before that point.
        send_case(conn, raw, mode, case["name"])
        responses = [conn.read_response() for _ in wanted]
        statuses = [r.status for r in responses]
        assert statuses == [200] * len(wanted), f"statuses {statuses}: {responses}"
        if (responses[-1].header("Connection") or "").lower() == "close":
            rest = conn.read_until_close()
            assert rest == b"", f"more after the last expected response: {rest[:200]!r}"
    # Give a request the server should not have run a moment to show up.
    time.sleep(0.02)
    records = pool.records(port)[seen:]
    assert len(records) == len(wanted), f"the app saw {len(records)} requests: {records}"
    problems = []
    for i, (want, got) in enumerate(zip(wanted, records)):
        problems += [f"request {i}: {d}" for d in compare(case["name"], want, got)]
        # the response is what the app answered for this very request
        assert json.loads(responses[i].body)["raw_uri"] == got["raw_uri"]
    assert not problems, "\n".join(problems)


def run_invalid(pool, case, mode, status):
    srv = pool.get(settings_to_args(case["settings"]))
    raw = base64.b64decode(case["raw_base64"])
    with RawConnection(srv.port, timeout=15) as conn:
        port = conn.sock.getsockname()[1]
        # An earlier case's connection may have had the same local port (ports are reused): only what
        # the app records from now on is this connection's.
        seen = len(pool.records(port))
        if send_case(conn, raw, mode, case["name"]):
            try:
                # the input is all there: let the server see its end too
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t0 = time.monotonic()
        data = conn.read_until_close()
        assert time.monotonic() - t0 < 12, "the server did not close the connection"
    assert data.startswith(b"HTTP/1.1 %d " % status), f"expected {status}, got {data[:300]!r}"
    # exactly one response, and nothing after it
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    assert lengths and int(lengths[0]) == len(body), f"trailing bytes after the error: {data!r}"
    assert b"connection: close" in head.lower(), head
    records = pool.records(port)[seen:]
    assert records == [], f"the app was called: {records}"


@pytest.mark.parametrize("kind,case,mode", _cases())
def test_corpus_case(pool, kind, case, mode):
    key = (kind, case["name"])
    try:
        settings_to_args(case["settings"])
    except KeyError as e:
        SCORE.add(key, "skipped")
        setting = e.args[0]
        pytest.skip(f"needs setting {setting}: "
                    f"{MISSING_SETTINGS.get(setting, 'not a ferricorn setting')}")
    if kind == "valid" and case["name"] in SKIP_CASES:
        SCORE.add(key, "skipped")
        pytest.skip(SKIP_CASES[case["name"]])
    try:
        if kind == "valid" and case["name"] in EXPECT_REFUSED:
            run_invalid(pool, case, mode, EXPECT_REFUSED[case["name"]][0])
        elif kind == "valid":
            run_valid(pool, case, mode)
        else:
            run_invalid(pool, case, mode, case["status"])
    except BaseException:
        SCORE.add(key, "failed")
        raise
    SCORE.add(key, "passed")
