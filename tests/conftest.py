"""Shared fixtures for ferricorn's integration tests.

Every test starts the real server as a subprocess on a free loopback port and talks to it with real
clients. The server command comes from the environment variable FERRICORN_SERVER (default
``ferricorn``); it may hold extra words, e.g. ``FERRICORN_SERVER="python -m ferricorn"``. Running the
suite with ``FERRICORN_SERVER=gunicorn`` checks the tests themselves against the reference server;
tests of behaviour that only ferricorn has are marked ``ferricorn_only`` and skipped then.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
APPS_DIR = os.path.join(TESTS_DIR, "apps")
EXAMPLES_DIR = os.path.join(os.path.dirname(TESTS_DIR), "examples")

SERVER_CMD = shlex.split(os.environ.get("FERRICORN_SERVER", "ferricorn"))
SERVER_NAME = os.path.basename(SERVER_CMD[0])
if SERVER_NAME.startswith("python") and "-m" in SERVER_CMD:
    SERVER_NAME = SERVER_CMD[SERVER_CMD.index("-m") + 1]
IS_GUNICORN = "gunicorn" in SERVER_NAME
# The name the server uses for itself in its log lines ("Starting ferricorn 0.1.0").
PRODUCT = "gunicorn" if IS_GUNICORN else "ferricorn"

READY_TIMEOUT = 20.0  # seconds for a server to accept connections
STOP_GRACE = 8.0  # seconds between TERM and KILL when a fixture cleans up

# Variables of the caller's environment that would change the server's configuration.
_SCRUBBED_ENV = (
    "PORT", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "FERRICORN_CMD_ARGS", "SCRIPT_NAME",
    "FORWARDED_ALLOW_IPS", "PYTHONPATH",
)

LOG_LINE_RE = re.compile(
    r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4})\] \[(\d+)\] "
    r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] (.*)$"
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferricorn_only: behaviour gunicorn does not have; skipped when FERRICORN_SERVER is gunicorn",
    )
    config.addinivalue_line(
        "markers",
        "stress: a matrix case repeated `repeats(default)` times; FERRICORN_STRESS=N repeats it N times "
        "(`-m stress` selects these for a long run)",
    )
    config.addinivalue_line(
        "markers",
        "smoke: the main paths of an installed server (WSGI, ASGI, the seed app's loopback call, "
        "ferricornctl); .ci/wheel-smoke runs these against the wheel in a venv with no Rust toolchain",
    )


# FERRICORN_STRESS=N: every matrix case (marked `stress`) repeats N times instead of its default count.
STRESS = int(os.environ.get("FERRICORN_STRESS") or 0)


def repeats(default):
    """How many times a matrix case repeats: `default`, or N under FERRICORN_STRESS=N."""
    return STRESS or default


def pytest_collection_modifyitems(config, items):
    # FERRICORN_RUN_ALL=1 runs the ferricorn-only tests against gunicorn too (to watch them fail)
    if not IS_GUNICORN or os.environ.get("FERRICORN_RUN_ALL") == "1":
        return
    skip = pytest.mark.skip(reason="ferricorn-only behaviour (FERRICORN_SERVER is gunicorn)")
    for item in items:
        if "ferricorn_only" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------------
# ports and processes


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port the OS just handed out for `host`, closed again for the server to bind."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def child_pids(pid):
    """Direct children of `pid`, read from /proc."""
    kids = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return sorted(kids)
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.add(int(entry))
    return sorted(kids)


def pid_alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def rss(pid):
    """A process's resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def stop_pid(pid, timeout=15, what="the new master"):
    """SIGTERM a process this test started outside `start_server` (a master made by USR2) and wait
    until it is gone; a process already gone is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    wait_for(lambda: not pid_alive(pid), timeout, message=f"{what} to stop")


def wait_for(predicate, timeout, interval=0.05, message="condition"):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Server:
    """One server process started by the test suite."""

    def __init__(self, args, app_dir=APPS_DIR, env=None, bind=True, port=None, workdir=None,
                 clean_env=True, wrap_cgroup=None, preexec=None):
        self.args = list(args)
        self.app_dir = app_dir
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir or tempfile.mkdtemp(prefix="fcn-")
        self.stdout_path = os.path.join(self.workdir, "stdout.log")
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        base = dict(os.environ)
        if clean_env:
            for key in _SCRUBBED_ENV:
                base.pop(key, None)
        base["PYTHONUNBUFFERED"] = "1"
        # gunicorn opens a control socket under $XDG_RUNTIME_DIR; keep each server's apart.
        base["XDG_RUNTIME_DIR"] = self.workdir
        base.update(env or {})
        self.env = base
        self.cmd = list(SERVER_CMD)
        if bind:
            self.cmd += ["-b", f"127.0.0.1:{self.port}"]
        self.cmd += self.args
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        setup = preexec  # run in the child before exec (e.g. to enter a mount namespace)
        if wrap_cgroup or setup:
            def preexec():
                if wrap_cgroup:
                    # Join the given cgroup (its cgroup.procs file), so the whole server runs in it.
                    with open(wrap_cgroup, "w") as f:
                        f.write(str(os.getpid()))
                if setup:
                    setup()
        try:
            self.proc = subprocess.Popen(
                self.cmd, cwd=app_dir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=self._out, stderr=self._err, start_new_session=True, preexec_fn=preexec,
            )
        except FileNotFoundError:
            self._out.close()
            self._err.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise AssertionError(
                f"server command {SERVER_CMD[0]!r} not found: install ferricorn (pip install .) "
                "or set FERRICORN_SERVER"
            ) from None
        self.pid = self.proc.pid
        self._known_children = set()

    # -- logs
    def log_text(self):
        """What the server wrote on stderr so far (its error log by default)."""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        return self.log_text().splitlines()

    def wait_log(self, pattern, timeout=15.0, count=1, text=None):
        """Wait until the regex `pattern` matches `count` times in the log; return the matches."""
        source = text or self.log_text
        rx = re.compile(pattern, re.M)

        def found():
            m = rx.findall(source())
            return m if len(m) >= count else None

        try:
            return wait_for(found, timeout, message=f"log pattern {pattern!r} x{count}")
        except AssertionError:
            raise AssertionError(
                f"pattern {pattern!r} did not appear {count} time(s) within {timeout}s; log:\n"
                + source()
            ) from None

    def worker_pids_from_log(self):
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log_text())]

    def children(self):
        kids = child_pids(self.pid)
        self._known_children.update(kids)
        return kids

    # -- life cycle
    def wait_ready(self, timeout=READY_TIMEOUT, addr=None):
        family, target = addr or (socket.AF_INET, ("127.0.0.1", self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with code {self.proc.returncode} before accepting connections;"
                    f"\ncommand: {self.cmd}\nlog:\n{self.log_text()}"
                )
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(target)
                self.children()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(
            f"server did not accept connections within {timeout}s;\ncommand: {self.cmd}\n"
            f"log:\n{self.log_text()}"
        )

    def wait_workers(self, n, timeout=15.0):
        """Wait until `n` workers have logged that they booted; return their pids."""
        self.wait_log(r"Booting worker with pid: \d+", timeout=timeout, count=n)
        return self.worker_pids_from_log()

    def stop(self, sig=signal.SIGTERM, timeout=STOP_GRACE):
        """Send `sig` to the master and wait for it to exit; return its exit code (None if it did not)."""
        if self.proc.poll() is None:
            self.children()
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        return self.wait(timeout)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self):
        """TERM, then KILL after a grace period; also KILL any worker the master left behind."""
        if self.proc.poll() is None:
            self.children()
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        # Workers normally leave with their master; give them a moment, then remove stragglers.
        deadline = time.monotonic() + 3.0
        for pid in sorted(self._known_children):
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid) and _parent_of(pid) in (1, self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._out.close()
        self._err.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@pytest.fixture
def start_server(request):
    """Factory: ``start_server(args, app_dir=APPS_DIR, env=None, ready=True, bind=True)``.

    Starts ``[FERRICORN_SERVER, "-b", "127.0.0.1:PORT", *args]`` (without the ``-b`` when
    ``bind=False``) with `app_dir` as working directory and waits, when `ready`, until the port
    accepts connections. Every server is stopped when the test ends.
    """
    servers = []

    def start(args, app_dir=APPS_DIR, env=None, ready=True, bind=True, **kw):
        srv = None
        for _attempt in range(3):
            srv = Server(args, app_dir=app_dir, env=env, bind=bind, **kw)
            servers.append(srv)
            if not ready:
                return srv
            try:
                return srv.wait_ready()
            except AssertionError:
                # another process may have taken the port between our probe and the bind: retry
                if bind and "port" not in kw and "in use" in srv.log_text():
                    srv.cleanup()
                    continue
                raise
        return srv.wait_ready()

    yield start
    for srv in servers:
        srv.cleanup()


@pytest.fixture(scope="module")
def module_server(request):
    """Like `start_server`, but the servers live for the whole test module."""
    servers = []

    def start(args, app_dir=APPS_DIR, env=None, **kw):
        srv = Server(args, app_dir=app_dir, env=env, **kw)
        servers.append(srv)
        return srv.wait_ready()

    yield start
    for srv in servers:
        srv.cleanup()


@pytest.fixture
def tmp_short():
    """A short temporary directory (AF_UNIX paths are limited to about 100 bytes)."""
    d = tempfile.mkdtemp(prefix="fcn-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_cli(args, cwd=APPS_DIR, env=None, timeout=30):
    """Run the server command to completion (for --help, --check-config, bad flags ...)."""
    base = dict(os.environ)
    for key in _SCRUBBED_ENV:
        base.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="fcn-") as runtime_dir:
        base["XDG_RUNTIME_DIR"] = runtime_dir
        base.update(env or {})
        return subprocess.run(
            SERVER_CMD + list(args), cwd=cwd, env=base, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=timeout,
        )



def print_config(args, cwd=APPS_DIR, env=None):
    """`--print-config` as a dict of setting name to the printed value."""
    res = run_cli(["--print-config", *args], cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr.decode()
    settings = {}
    for line in res.stdout.decode().splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.*)$", line)
        if m:
            settings[m.group(1)] = m.group(2).strip()
    return settings


# ----------------------------------------------------------------------------------------------
# raw HTTP


class RawResponse:
    def __init__(self, version, status, reason, headers, body, raw, framing):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in wire order
        self.body = body
        self.raw = raw  # the bytes of this response as received
        self.framing = framing  # "length", "chunked", "close" or "none"

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return f"<RawResponse {self.status} {self.headers!r} body={self.body[:80]!r}>"


class IncompleteResponse(AssertionError):
    def __init__(self, message, raw):
        super().__init__(f"{message}; received {raw[:300]!r}")
        self.raw = raw


class RawConnection:
    """A client socket that sends raw bytes and parses responses strictly, one at a time."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, family=socket.AF_INET, addr=None):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr if addr is not None else (host, port))
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until_close(self):
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def _take_line(self, start):
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                return i
            if not self._fill():
                raise IncompleteResponse("connection closed inside a line", self.buf)

    def read_response(self, head=False):
        """Read one response (interim 1xx responses included: they come back on their own)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not self._fill():
                raise IncompleteResponse("connection closed before the end of the header", self.buf)
        head_bytes = self.buf[:end]
        lines = head_bytes.split(b"\r\n")
        m = re.match(rb"^HTTP/(\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError(f"bad status line {lines[0]!r}")
        version = m.group(1).decode()
        status = int(m.group(2))
        reason = (m.group(3) or b"").decode("latin-1")
        headers = []
        for line in lines[1:]:
            assert b":" in line, f"bad header line {line!r} in {head_bytes!r}"
            assert line[:1] not in (b" ", b"\t"), f"obs-fold in response: {head_bytes!r}"
            k, v = line.split(b":", 1)
            headers.append((k.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        pos = end + 4
        lower = {k.lower(): v for k, v in headers}
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        body = b""
        if head or 100 <= status < 200 or status in (204, 304):
            framing = "none"
        elif te:
            assert te[-1].lower().split(",")[-1].strip() == "chunked", f"unexpected TE {te}"
            framing = "chunked"
            chunks = []
            while True:
                i = self._take_line(pos)
                size_line = self.buf[pos:i]
                size = int(size_line.split(b";")[0].strip(), 16)
                pos = i + 2
                if size == 0:
                    # trailers until an empty line
                    while True:
                        i = self._take_line(pos)
                        line = self.buf[pos:i]
                        pos = i + 2
                        if not line:
                            break
                    break
                while len(self.buf) < pos + size + 2:
                    if not self._fill():
                        raise IncompleteResponse("connection closed inside a chunk", self.buf)
                chunks.append(self.buf[pos:pos + size])
                assert self.buf[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
                pos += size + 2
            body = b"".join(chunks)
        elif "content-length" in lower:
            framing = "length"
            n = int(lower["content-length"])
            while len(self.buf) < pos + n:
                if not self._fill():
                    raise IncompleteResponse("connection closed inside the body", self.buf)
            body = self.buf[pos:pos + n]
            pos += n
        else:
            framing = "close"
            while self._fill():
                pass
            body = self.buf[pos:]
            pos = len(self.buf)
        raw = self.buf[:pos]
        self.buf = self.buf[pos:]
        return RawResponse(version, status, reason, headers, body, raw, framing)

    def read_final_response(self, head=False):
        """Read responses, skipping interim 1xx ones; return (final, [interim...])."""
        interim = []
        while True:
            r = self.read_response(head=head)
            if 100 <= r.status < 200:
                interim.append(r)
                continue
            return r, interim


def raw_request(port, data, timeout=10.0, head=False):
    """Send `data` on a new connection and return the first final response."""
    with RawConnection(port, timeout=timeout) as c:
        c.send(data)
        return c.read_final_response(head=head)[0]


def raw_exchange(port, data, timeout=10.0):
    """Send `data`, then read everything until the server closes (or `timeout`); return the bytes."""
    with RawConnection(port, timeout=timeout) as c:
        c.send(data)
        try:
            return c.read_until_close()
        except socket.timeout:
            return c.buf


def ws_url(srv, path):
    """The websocket URL of `path` on a started server."""
    return "ws://127.0.0.1:%d%s" % (srv.port, path)


def get(port, path, headers=None, version="1.1", method="GET", body=b"", timeout=10.0):
    """One request with Connection: close on its own connection; returns RawResponse."""
    lines = [f"{method} {path} HTTP/{version}", f"Host: 127.0.0.1:{port}", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return raw_request(port, data, timeout=timeout, head=(method == "HEAD"))


def parse_log_lines(text):
    """Every line of an error log as (time, pid, level, message); fails on a line of another shape."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE_RE.match(line)
        assert m, f"log line not in '[time] [pid] [LEVEL] msg' format: {line!r}\nfull log:\n{text}"
        out.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return out


def _memory_cgroup_parent():
    """A cgroup v1 memory hierarchy this process may create children in, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    parent = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
                    if os.access(parent, os.W_OK):
                        return parent
    except OSError:
        pass
    return None


@pytest.fixture
def memory_cgroup():
    """A new cgroup v1 memory group limited to 300 MiB (skipped where none can be made); start a server
    in it with ``start_server(..., wrap_cgroup=os.path.join(memory_cgroup, "cgroup.procs"))``."""
    parent = _memory_cgroup_parent()
    if parent is None:
        pytest.skip("no writable cgroup v1 memory hierarchy")
    path = os.path.join(parent, f"ferricorn-oom-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(300 * 1024 * 1024))
        try:
            with open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w") as f:
                f.write(str(300 * 1024 * 1024))
        except OSError:
            pass  # no swap accounting: the memory limit alone triggers the OOM killer
        yield path
    finally:
        # Processes must leave before the group can be removed; the server fixture stops them first.
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def marker_path(tmp_path):
    """A path the test app touches to say it has started handling a request."""
    return str(tmp_path / "started")


sys.path.insert(0, TESTS_DIR)


class ClientThreads:
    """`n` daemon threads, each running `self._run(i)` while `self.running()` (until the context exits
    or `limit_s` passes): the shape of the load clients of the lifecycle tests."""

    def __init__(self, n, limit_s=60, join_s=15):
        import threading

        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + limit_s
        self._join_s = join_s
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def running(self):
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _run(self, i):
        raise NotImplementedError

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(self._join_s)

    def finish(self):
        """Wait (bounded by the deadline and `join_s`) for clients that end by themselves, without asking
        them to stop."""
        for t in self._threads:
            t.join(max(0.0, self._deadline - time.monotonic()) + self._join_s)


class Sessions(ClientThreads):
    """`n` clients, each with its own kept-alive `requests.Session`, making `per_client` calls of
    `call(session)` one after another (fewer if the deadline passes). `results` holds what each call
    returned, or the repr of what it raised."""

    def __init__(self, n, per_client, call, limit_s=60):
        super().__init__(n, limit_s)
        self.per_client = per_client
        self.call = call
        self.results = []

    def _run(self, _i):
        import requests

        with requests.Session() as s:
            for _ in range(self.per_client):
                if not self.running():
                    return
                try:
                    out = self.call(s)
                except Exception as e:  # noqa: BLE001 - the test compares the results
                    out = repr(e)
                with self._lock:
                    self.results.append(out)

    def run(self):
        """Start the clients, wait for them to finish; the results."""
        with self:
            self.finish()
        return self.results
