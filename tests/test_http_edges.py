"""HTTP/1.1 at its edges, over real sockets: an app that answers with a 1xx status, CONNECT, the staged
close after an answer sent while the client is still sending (RFC 9112 section 9.6), absolute-form
targets, requests the client cuts off, and limits above gunicorn's maxima.

The app is tests/apps/edges.py; it logs every call with the client's port, so a test can tell which
requests reached it. The refusals and cut-offs of the parser itself are in test_framing.py.
"""

import json
import os
import re
import socket
import threading
import time
from urllib.parse import quote

import pytest

from conftest import RawConnection, run_cli

# Sent in full (like a synchronous client: all of the upload, then the answer) after a head the server
# answers without reading the body. Below the bound of what a staged close reads and throws away.
UPLOAD = 512 * 1024
# How many times each staged-close case is repeated: a reset that destroys the answer is a race.
REPEATS = 10


class Edges:
    """A server running the edges app, and the calls the app saw."""

    def __init__(self, srv, log):
        self.srv = srv
        self.port = srv.port
        self.log = log

    def calls(self, client_port):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            rows = [json.loads(line) for line in f.read().splitlines()]
        return [r for r in rows if r["port"] == client_port]


def _edges(factory, tmp, args):
    log = os.path.join(tmp, "calls.jsonl")
    srv = factory(["-w", "2", "--keep-alive", "5", *args, "edges"], env={"EDGES_LOG": log})
    return Edges(srv, log)


@pytest.fixture(scope="module")
def edges(module_server, tmp_path_factory):
    return _edges(module_server, str(tmp_path_factory.mktemp("edges")), ["--timeout", "30"])


def fields_of(head):
    """The header fields of a response head (bytes) as a dict of lower-case names."""
    lines = head.split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}


def one_response(data):
    """`data` is exactly one response framed by Content-Length (and nothing after it): its status line,
    fields and body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    fields = fields_of(head)
    assert int(fields[b"content-length"]) == len(body), f"not exactly one response: {data[:600]!r}"
    return head.split(b"\r\n")[0], fields, body


# ----------------------------------------------------------------------------------------------
# 1. an interim (1xx) status from start_response


@pytest.mark.ferricorn_only  # gunicorn sends the 1xx as if it were the answer
@pytest.mark.parametrize("status", ["103 Early Hints", "100 Continue", "101 Switching Protocols",
                                    "199 Interim"])
def test_interim_status_from_the_app_is_answered_500(edges, status):
    """A 1xx is never a final response (RFC 9110 section 15.2): the client gets a 500 and a closed
    connection, so a pipelined request's answer can never be taken for this one's."""
    target = b"/interim?status=" + quote(status).encode()
    with RawConnection(edges.port) as c:
        c.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 500, r
        assert r.header("Connection") == "close"
        assert c.read_until_close() == b""  # the pipelined request is not answered on this connection
    edges.srv.wait_log(r"\[ERROR\] Error handling request GET " + re.escape(target.decode()))
    log = edges.srv.log_text()
    assert f"status {status!r} is not a final response" in log, log


@pytest.mark.ferricorn_only  # gunicorn writes whatever status line it is given
@pytest.mark.parametrize("status", ["099 Low", "600 High", "200 Bell\x07"])
def test_status_that_cannot_be_written_is_answered_500(edges, status):
    with RawConnection(edges.port) as c:
        c.send(b"GET /interim?status=" + quote(status).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 500, r
    edges.srv.wait_log(re.escape('invalid status "' + status[:7]))


def test_final_statuses_through_the_same_route_are_served(edges):
    """The check refuses interim statuses only: final ones from the same code path are answered in
    order on one kept-alive connection."""
    statuses = ["200 OK", "204 No Content", "304 Not Modified", "404 Not Found", "599 Custom"]
    with RawConnection(edges.port) as c:
        c.send(b"".join(b"GET /interim?status=" + quote(s).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                        for s in statuses))
        got = [c.read_response() for _ in statuses]
    assert [r.status for r in got] == [200, 204, 304, 404, 599], got
    assert got[0].body == b"the body of an interim response"
    assert all(r.header("Connection") != "close" for r in got), got


# ----------------------------------------------------------------------------------------------
# 2. CONNECT


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _connect(edges, authority):
    with RawConnection(edges.port, timeout=15) as c:
        port = c.sock.getsockname()[1]
        c.send(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n" + SMUGGLED)
        t0 = time.monotonic()
        data = c.read_until_close()
        elapsed = time.monotonic() - t0
    return port, data, elapsed


@pytest.mark.ferricorn_only  # gunicorn's gthread worker frames a 2xx to CONNECT and keeps the connection
def test_connect_2xx_has_no_framing_and_ends_the_connection(edges):
    """RFC 9110 section 9.3.6: a 2xx to CONNECT has no Content-Length nor Transfer-Encoding and makes
    the connection a tunnel; a WSGI app cannot run one, so the connection closes after the answer and
    the bytes after the CONNECT are never read as a request."""
    port, data, elapsed = _connect(edges, b"example.com:443")
    assert elapsed < 4, "the connection was kept open after the answer to CONNECT"
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    fields = fields_of(head)
    assert b"content-length" not in fields and b"transfer-encoding" not in fields, head
    assert fields[b"connection"] == b"close", head
    assert json.loads(rest)["method"] == "CONNECT"  # the app's bytes, then the close
    assert [c["raw_uri"] for c in edges.calls(port)] == ["example.com:443"]


@pytest.mark.ferricorn_only
def test_connect_refused_by_the_app_ends_the_connection(edges):
    port, data, elapsed = _connect(edges, b"deny.example:443")
    assert elapsed < 4, "the connection was kept open after the answer to CONNECT"
    status, fields, body = one_response(data)
    assert status.startswith(b"HTTP/1.1 405 "), data[:300]
    assert fields[b"connection"] == b"close"
    assert body == b"no tunnels here\n"
    assert [c["raw_uri"] for c in edges.calls(port)] == ["deny.example:443"]


# ----------------------------------------------------------------------------------------------
# 3. staged close: the answer survives a client that is still sending


def upload_then_read(port, data, timeout=20.0):
    """Send all of `data`, then read until the server closes, as a synchronous client does (it reads the
    answer only once its upload is out). Returns (bytes read, the socket errors seen, if any)."""
    errors = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError as e:
            errors.append(f"send: {e!r}")
        out = b""
        try:
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                out += piece
        except OSError as e:
            errors.append(f"recv: {e!r}")
    return out, errors


def post_head(fields=b"", length=UPLOAD, target=b"/upload"):
    return (b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + fields
            + b"Content-Length: %d\r\n\r\n" % length)


STAGED = {
    "400-bad-field": (post_head(b"X-Bad: a\x01b\r\n"), 400),
    "431-too-many-fields": (post_head(b"".join(b"X-%d: 1\r\n" % i for i in range(101))), 431),
    "417-expectation": (post_head(b"Expect: something-else\r\n"), 417),
    "501-coding": (b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501),
}


@pytest.mark.parametrize("case", sorted(STAGED))
def test_refusal_survives_an_upload_in_progress(edges, case):
    """The head is refused at once; the client goes on sending its body before it reads. Closing with
    those bytes unread would make the kernel send a reset, which destroys the answer still unread on the
    client's side (ECONNRESET): the server half-closes, reads and discards, then closes."""
    head, status = STAGED[case]
    for i in range(REPEATS):
        out, errors = upload_then_read(edges.port, head + b"x" * UPLOAD)
        assert not errors, f"run {i}: {errors}; got {out[:200]!r}"
        line, fields, _ = one_response(out)
        assert line.startswith(b"HTTP/1.1 %d " % status), (i, out[:200])
        assert fields[b"connection"] == b"close"


@pytest.mark.ferricorn_only  # gunicorn's --timeout kills the worker and the client gets no answer
def test_timeout_504_survives_an_upload_in_progress(module_server, tmp_path_factory):
    """`--timeout`'s 504 goes out while the app has not read the body the client is still sending."""
    srv = _edges(module_server, str(tmp_path_factory.mktemp("timeout")), ["--timeout", "1"])
    for i in range(4):
        # past the part read ahead before the app runs (256 KiB): the rest stays unread on the socket
        length = UPLOAD + 256 * 1024
        out, errors = upload_then_read(srv.port, post_head(target=b"/sleep?s=4", length=length)
                                       + b"x" * length)
        assert not errors, f"run {i}: {errors}; got {out[:200]!r}"
        line, fields, _ = one_response(out)
        assert line.startswith(b"HTTP/1.1 504 "), (i, out[:200])
        assert fields[b"connection"] == b"close"


@pytest.mark.ferricorn_only  # gunicorn's sync worker answers one request per connection anyway
def test_max_requests_last_answer_survives_pipelined_upload(module_server, tmp_path_factory):
    """The worker's last request (`--max-requests`) is answered with `Connection: close` while the client
    has already pipelined an upload behind it."""
    srv = _edges(module_server, str(tmp_path_factory.mktemp("maxreq")), ["--max-requests", "1"])
    for i in range(6):
        data = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + post_head() + b"x" * UPLOAD
        out, errors = upload_then_read(srv.port, data)
        assert not errors, f"run {i}: {errors}; got {out[:200]!r}"
        line, fields, body = one_response(out)
        assert line.startswith(b"HTTP/1.1 200 "), (i, out[:200])
        assert fields[b"connection"] == b"close"
        assert json.loads(body)["raw_uri"] == "/first"


def test_staged_close_is_bounded(edges):
    """A client that never stops sending is still cut off: the server reads for a bounded time and
    size after its answer, then closes."""
    stop = threading.Event()
    sent = [0]
    with socket.create_connection(("127.0.0.1", edges.port), timeout=20) as s:
        s.sendall(post_head(b"X-Bad: a\x01b\r\n", length=1 << 40))

        def flood():
            chunk = b"x" * 65536
            try:
                while not stop.is_set():
                    s.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(30)
        stop.set()
        assert not t.is_alive(), "the server went on reading a never-ending upload"
    assert sent[0] < 64 << 20, sent[0]


@pytest.mark.parametrize("request_bytes", [
    b"GET /closing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /closing HTTP/1.0\r\n\r\n",
], ids=["http11-close", "http10"])
def test_clients_that_ask_to_close_get_whole_answers_under_load(edges, request_bytes):
    """Clients that ask to close and send nothing more, many at once and after other traffic, each get
    the whole answer and then the server's FIN, with no reset (such a connection is closed without the
    staged close's reads)."""
    with RawConnection(edges.port) as c:  # a kept-alive client beside them, before and after
        c.send(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
        problems = []

        def client():
            for _ in range(25):
                out, errors = upload_then_read(edges.port, request_bytes, timeout=10)
                try:
                    line, fields, body = one_response(out)
                    assert not errors and line.split(b" ")[1] == b"200", (errors, line)
                    assert json.loads(body)["raw_uri"] == "/closing"
                except (AssertionError, ValueError, KeyError) as e:
                    problems.append(repr(e)[:300])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not problems, problems[:3]
        c.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200


# ----------------------------------------------------------------------------------------------
# 5. absolute-form targets


def _env(edges, data):
    with RawConnection(edges.port) as c:
        c.send(data)
        r = c.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


@pytest.mark.ferricorn_only  # gunicorn keeps the Host field and takes SERVER_NAME from the socket
@pytest.mark.parametrize("target,host,name,port", [
    (b"http://a.example/x", "a.example", "a.example", "80"),
    (b"http://a.example:8080/x?q=1", "a.example:8080", "a.example", "8080"),
    (b"https://user:pw@a.example/x", "a.example", "a.example", "80"),
    (b"http://[::1]:9000/v6", "[::1]:9000", "[::1]", "9000"),
], ids=["plain", "port", "userinfo", "ipv6"])
def test_absolute_form_authority_replaces_host(edges, target, host, name, port):
    """RFC 9112 section 3.2.2: the target's authority is the request's host; the Host field is ignored."""
    env = _env(edges, b"GET " + target + b" HTTP/1.1\r\nHost: b.example\r\n\r\n")
    assert env["raw_uri"] == target.decode()
    assert (env["http_host"], env["server_name"], env["server_port"]) == (host, name, port)


@pytest.mark.ferricorn_only
def test_absolute_form_on_http10_without_host(edges):
    env = _env(edges, b"GET http://a.example:81/x HTTP/1.0\r\n\r\n")
    assert (env["http_host"], env["server_name"], env["server_port"]) == ("a.example:81", "a.example",
                                                                          "81")


@pytest.mark.ferricorn_only
def test_absolute_form_keeps_what_a_trusted_proxy_says(edges):
    """A trusted proxy's scheme header still decides wsgi.url_scheme (and so the default port), and its
    X-Forwarded-Host reaches the app unchanged, for the frameworks that prefer it to HTTP_HOST."""
    env = _env(edges, b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nX-Forwarded-Proto: https\r\n"
                      b"X-Forwarded-Host: c.example\r\n\r\n")
    assert env["url_scheme"] == "https"
    assert (env["http_host"], env["server_port"], env["forwarded_host"]) == ("a.example", "443",
                                                                             "c.example")


def test_origin_form_still_uses_host(edges):
    env = _env(edges, b"GET /x HTTP/1.1\r\nHost: b.example:8000\r\n\r\n")
    assert (env["http_host"], env["server_name"], env["server_port"]) == ("b.example:8000", "b.example",
                                                                          "8000")


# ----------------------------------------------------------------------------------------------
# 6. requests cut off by the client


def _cut(edges, data):
    """Send `data`, half-close, and read what comes back until the server closes."""
    with RawConnection(edges.port, timeout=15) as c:
        port = c.sock.getsockname()[1]
        c.send(data)
        c.sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        out = c.read_until_close()
        assert time.monotonic() - t0 < 8, "the server did not close the connection"
    return port, out


CUT = {
    "request-line": b"GET /partial HT",
    "mid-field": b"GET /partial HTTP/1.1\r\nHost: x\r\nX-Partial: ab",
    "before-empty-line": b"GET /partial HTTP/1.1\r\nHost: x\r\n",
    "body-by-length": b"POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
    "body-past-prefetch": (b"POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (UPLOAD * 2)
                           + b"x" * UPLOAD),
    "chunked-body": b"POST /partial HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
}
CUT_MESSAGES = {
    "request-line": "Request ended before its head was complete (400)",
    "mid-field": "Request ended before its head was complete (400)",
    "before-empty-line": "Request ended before its head was complete (400)",
    "body-by-length": "Request ended before its body was complete (400)",
    "body-past-prefetch": "Request ended before its body was complete (400)",
    "chunked-body": "Request ended before its body was complete (400)",
}


@pytest.mark.ferricorn_only  # gunicorn closes without an answer (a DEBUG line only)
@pytest.mark.parametrize("case", sorted(CUT))
def test_cut_off_request_is_answered_400_and_logged(edges, case):
    """The client stops in the middle of a request and half-closes: it can still read, so it gets a
    400, and the error log gets the WARNING every refused request gets, so a truncating proxy shows."""
    before = edges.srv.log_text().count("Invalid request from ip=127.0.0.1: " + CUT_MESSAGES[case])
    port, out = _cut(edges, CUT[case])
    line, fields, _ = one_response(out)
    assert line.startswith(b"HTTP/1.1 400 "), out[:200]
    assert fields[b"connection"] == b"close"
    if case == "body-past-prefetch":
        # the app ran (the body was more than is read ahead) and its read of the rest failed
        assert [c["raw_uri"] for c in edges.calls(port)] == ["/partial"]
    else:
        assert edges.calls(port) == [], "the app saw a truncated request"
    edges.srv.wait_log(r"\[WARNING\] Invalid request from ip=127\.0\.0\.1: "
                       + re.escape(CUT_MESSAGES[case]) + "$", count=before + 1)


def test_clean_ends_are_not_refusals(edges):
    """No answer and no WARNING where no request was cut: a connection closed before any byte, after
    blank lines only (which RFC 9112 section 2.2 lets a server ignore), or after complete requests."""
    before = edges.srv.log_text().count("Invalid request from")
    for data in (b"", b"\r\n\r\n"):
        _, out = _cut(edges, data)
        assert out == b"", (data, out)
    _, out = _cut(edges, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    line, _, _ = one_response(out)
    assert line.startswith(b"HTTP/1.1 200 "), out[:200]
    with RawConnection(edges.port) as c:
        c.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
    # the client closed that one after its answer
    time.sleep(0.3)
    assert edges.srv.log_text().count("Invalid request from") == before, edges.srv.log_text()


# ----------------------------------------------------------------------------------------------
# 7. limits above gunicorn's maxima


@pytest.mark.ferricorn_only  # the behaviour is gunicorn's; the WARNING and the 400 (gunicorn: 414) are not
@pytest.mark.parametrize("flag,value,used", [
    ("--limit-request-line", "8200", 8190),
    ("--limit-request-fields", "40000", 32768),
])
def test_limit_above_the_maximum_is_used_as_the_maximum(start_server, flag, value, used):
    """gunicorn takes a limit above its maximum and uses the maximum; so does ferricorn, with one
    WARNING at startup (a unit file that worked with gunicorn must still boot)."""
    srv = start_server(["-w", "1", flag, value, "edges"])
    if flag == "--limit-request-line":
        target = b"/" + b"a" * (used - len(b"GET / HTTP/1.1"))
        requests = [(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 200),
                    (b"GET " + target + b"a HTTP/1.1\r\nHost: x\r\n\r\n", 400)]
    else:
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(used - 1))  # and Host
        requests = [(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 200),
                    (b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"X-Last: 1\r\n\r\n", 431)]
    for data, status in requests:
        with RawConnection(srv.port, timeout=20) as c:
            c.send(data)
            assert c.read_response().status == status
    setting = flag[2:].replace("-", "_")
    warnings = re.findall(r"\[WARNING\] (.*" + setting + r".*)$", srv.log_text(), re.M)
    assert warnings == [f"{setting} {value} is above its maximum, {used}: {used} is used"], \
        srv.log_text()


@pytest.mark.ferricorn_only
def test_limit_above_the_maximum_in_a_config_file(tmp_path):
    conf = tmp_path / "ferricorn.conf.py"
    conf.write_text("limit_request_line = 9000\nlimit_request_fields = 99999\n")
    res = run_cli(["-c", str(conf), "--print-config", "edges"])
    assert res.returncode == 0, res.stderr.decode()
    printed = dict(re.findall(r"^(\w+)\s*=\s*(.*)$", res.stdout.decode(), re.M))
    # shown as configured, as gunicorn's --print-config shows it
    assert printed["limit_request_line"].strip() == "9000"
    assert printed["limit_request_fields"].strip() == "99999"
    res = run_cli(["-c", str(conf), "--check-config", "edges"])
    assert res.returncode == 0, res.stderr.decode()
