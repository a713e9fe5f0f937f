"""End to end: the example Django project on PostgreSQL, behind nginx, on the server under test.

`examples/django_project/stack up` starts the three real servers on free loopback ports in a
temporary STACK_DIR (with a 3 s --timeout), and every request here goes through nginx, as in the
Django worker-timeout field report. `stack down` runs at the end whatever happens.

Needs nginx, PostgreSQL, Django and psycopg. Outside CI the module is skipped when one is missing;
in CI (.ci/run installs them) a missing one is a failure.
"""

import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

from conftest import EXAMPLES_DIR, SERVER_CMD, free_port, pid_alive, wait_for

PROJECT_DIR = os.path.join(EXAMPLES_DIR, "django_project")
STACK_SCRIPT = os.path.join(PROJECT_DIR, "stack")
TIMEOUT = 3  # ferricorn's --timeout in this stack
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing():
    missing = [m for m in ("django", "psycopg") if importlib.util.find_spec(m) is None]
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        missing.append("nginx")
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        missing.append("postgresql")
    return missing


if _missing() and not IN_CI:
    pytestmark = pytest.mark.skip(
        reason=f"needs {', '.join(_missing())} (apt-get install nginx-light postgresql; "
        "pip install -r examples/django_project/requirements.txt); CI installs them"
    )


class Stack:
    """One stack in its own STACK_DIR, driven through the `stack` script."""

    def __init__(self):
        # short: PostgreSQL's unix socket path lives under it
        self.dir = tempfile.mkdtemp(prefix="fst-", dir="/tmp")
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.app_port, self.pg_port = sorted(ports)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
        for key in ("PORT", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "FERRICORN_CMD_ARGS",
                    "FORWARDED_ALLOW_IPS", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"):
            env.pop(key, None)
        env.update({
            "STACK_DIR": self.dir,
            "STACK_HTTP_PORT": str(self.http_port),
            "STACK_APP_PORT": str(self.app_port),
            "STACK_PG_PORT": str(self.pg_port),
            "STACK_WORKERS": "2",
            "STACK_THREADS": "2",
            "STACK_TIMEOUT": str(TIMEOUT),
            "STACK_GRACEFUL_TIMEOUT": "10",
            # low, so that workers are also recycled during the load tests
            "STACK_MAX_REQUESTS": "40",
            "STACK_MAX_REQUESTS_JITTER": "10",
            "STACK_NGINX_READ_TIMEOUT": "20",
            "STACK_ADMIN_PASSWORD": "s3cret-admin",
            "FERRICORN": " ".join(SERVER_CMD),
            "PYTHON": sys.executable,
        })
        self.env = env

    def run(self, command, extra_env=None, timeout=300, check=True):
        env = dict(self.env, **(extra_env or {}))
        proc = subprocess.run([STACK_SCRIPT, command], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"stack {command} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def log(self, name, since=0):
        with open(self.path("logs", name), "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def mark(self, name):
        """The current end of a log, to read only what comes after it."""
        return os.path.getsize(self.path("logs", name))

    def pid(self, component):
        with open(self.path(f"{component}.pid")) as f:
            return int(f.read().split()[0])

    def db_password(self):
        with open(self.path("secrets.env")) as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line)["DJANGO_DB_PASSWORD"]


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    try:
        s.run("up")
        yield s
    finally:
        down = s.run("down", check=False, timeout=120)
        shutil.rmtree(s.dir, ignore_errors=True)
        assert down.returncode == 0, f"stack down failed:\n{down.stdout}\n{down.stderr}"


def status_lines(stack):
    proc = stack.run("status", check=False)
    states = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(postgres|nginx|ferricorn)\s+(up|down)\b(?:\s+pid (\d+))?", line)
        assert m, f"status line of an unexpected shape: {line!r}\n{proc.stdout}"
        states[m.group(1)] = (m.group(2), int(m.group(3)) if m.group(3) else None)
    assert set(states) == {"postgres", "nginx", "ferricorn"}, proc.stdout
    return proc.returncode, states


def timeout_forensics(text, path):
    """For the request `path` that timed out: (worker pid, seconds it ran, its stack frames)."""
    m = re.search(
        r"^\[[^\]]+\] \[(\d+)\] \[CRITICAL\] Request exceeded --timeout (\d+)s: GET "
        + re.escape(path) + r" from 127\.0\.0\.1:\d+ \(running for ([\d.]+)s, worker (\d+)",
        text, re.M,
    )
    assert m, f"no 'Request exceeded' line for GET {path} in the error log:\n{text}"
    worker = int(m.group(4))
    assert int(m.group(1)) == worker and int(m.group(2)) == TIMEOUT
    assert re.search(rf"^\[[^\]]+\] \[\d+\] \[CRITICAL\] WORKER TIMEOUT \(pid:{worker}\)$", text, re.M), text
    rest = text[m.end():]
    head = re.search(
        rf"^\[[^\]]+\] \[{worker}\] \[CRITICAL\] Python stack of the thread running it.*\n"
        r"Stack \(most recent call first\):\n((?:  File .*\n)+)", rest, re.M,
    )
    assert head, f"no Python stack after the timeout of GET {path}:\n{text}"
    frames = head.group(1).splitlines()
    return worker, float(m.group(3)), frames


def frame_index(frames, pattern):
    for i, frame in enumerate(frames):
        if re.search(pattern, frame):
            return i
    raise AssertionError(f"no frame matching {pattern!r} in:\n" + "\n".join(frames))


def in_background(fn):
    """Run fn() in a thread; returns a dict that gets 'result' or 'error', and the thread."""
    box = {}

    def run():
        started = time.monotonic()
        try:
            box["result"] = fn()
        except Exception as e:  # reported by the test that reads the box
            box["error"] = e
        box["elapsed"] = time.monotonic() - started

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return box, t


def assert_other_pages_work(stack, count=4):
    for _ in range(count):
        started = time.monotonic()
        r = requests.get(stack.url("/"), timeout=10)
        assert r.status_code == 200 and "Catalog" in r.text
        assert time.monotonic() - started < 2.0, "the normal page was held up by a stuck request"


# ------------------------------------------------------------------------------------------------


def test_status_shows_every_component_up(stack):
    rc, states = status_lines(stack)
    assert rc == 0
    assert states["nginx"] == ("up", stack.pid("nginx"))
    assert states["ferricorn"] == ("up", stack.pid("ferricorn"))
    assert states["postgres"][0] == "up"
    assert os.path.exists(stack.path("ferricorn.ctl"))


def test_pages_through_nginx(stack):
    r = requests.get(stack.url("/"), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.text.count('<tr class="book">') == 10
    assert 'href="/static/catalog/style.css"' in r.text

    # 40 seeded books, each author read on its own: 1 + 40 queries
    r = requests.get(stack.url("/n-plus-one/"), timeout=10)
    assert r.status_code == 200
    assert '<p id="query-count">41 queries</p>' in r.text

    r = requests.get(stack.url("/report/?n=100000"), timeout=10)
    assert r.status_code == 200 and r.json()["rows"] == 100000

    r = requests.get(stack.url("/slow-query/?seconds=0.2"), timeout=10)
    assert r.status_code == 200 and r.json() == {"slept": 0.2}

    r = requests.get(stack.url("/slow-query/?seconds=lots"), timeout=10)
    assert r.status_code == 400 and "seconds must be a number" in r.text
    r = requests.get(stack.url("/external/?url=file:///etc/passwd"), timeout=10)
    assert r.status_code == 400 and "url must be http" in r.text


def test_django_sees_scheme_and_host_from_nginx(stack):
    host = f"localhost:{stack.http_port}"
    # nginx overwrites forwarded headers a client sends: they cannot be forged through it
    r = requests.get(stack.url("/health/"), timeout=10, headers={
        "Host": host, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "forged.example",
    })
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["database"] == "ok"
    assert (info["scheme"], info["host"]) == ("http", host)
    assert info["absolute_uri"] == f"http://{host}/health/"

    # from the allowed proxy address, X-Forwarded-Proto is believed (what nginx with TLS sends)
    r = requests.get(f"http://127.0.0.1:{stack.app_port}/health/", timeout=10, headers={
        "Host": host, "X-Forwarded-Proto": "https", "X-Forwarded-Host": host,
    })
    assert r.status_code == 200 and r.json()["scheme"] == "https"
    assert r.json()["absolute_uri"] == f"https://{host}/health/"

    # a host outside ALLOWED_HOSTS is refused by Django
    r = requests.get(stack.url("/health/"), timeout=10, headers={"Host": "forged.example"})
    assert r.status_code == 400


def test_admin_login(stack):
    s = requests.Session()
    r = s.get(stack.url("/admin/"), timeout=10)
    assert r.status_code == 200 and r.url == stack.url("/admin/login/?next=/admin/")

    def login(password):
        page = s.get(stack.url("/admin/login/"), timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return s.post(stack.url("/admin/login/?next=/admin/"), timeout=10, data={
            "csrfmiddlewaretoken": token, "username": "admin", "password": password, "next": "/admin/",
        })

    r = login("wrong")
    assert r.status_code == 200 and "Please enter the correct username and password" in r.text
    r = login("s3cret-admin")
    assert r.status_code == 200 and r.url == stack.url("/admin/")
    assert "Site administration" in r.text and "Books" in r.text
    r = s.get(stack.url("/admin/catalog/book/"), timeout=10)
    assert r.status_code == 200 and "40 books" in r.text
    css = re.search(r'href="(/static/admin/css/[^"]+\.css)"', r.text).group(1)
    assert s.get(stack.url(css), timeout=10).status_code == 200


def test_static_files_come_from_nginx(stack):
    access_mark = stack.mark("ferricorn-access.log")
    nginx_mark = stack.mark("nginx-access.log")
    with open(os.path.join(PROJECT_DIR, "catalog", "static", "catalog", "style.css"), "rb") as f:
        source = f.read()
    r = requests.get(stack.url("/static/catalog/style.css"), timeout=10)
    assert r.status_code == 200 and r.content == source
    assert r.headers["Content-Type"] == "text/css"
    assert "max-age=604800" in r.headers["Cache-Control"]
    r = requests.get(stack.url("/static/admin/css/base.css"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/css"
    requests.get(stack.url("/health/"), timeout=10)  # a request that does reach the app

    lines = wait_for(lambda: [l for l in stack.log("nginx-access.log", nginx_mark).splitlines()
                              if "/static/" in l], 5, message="nginx access lines")
    assert len(lines) == 2 and all("upstream=- " in l for l in lines), lines
    app = wait_for(lambda: stack.log("ferricorn-access.log", access_mark), 5, message="access log")
    assert "GET /health/" in app and "/static/" not in app, app


def test_slow_query_times_out_with_the_stack_inside_psycopg(stack):
    err_mark = stack.mark("ferricorn-error.log")
    nginx_mark = stack.mark("nginx-access.log")
    box, t = in_background(lambda: requests.get(stack.url("/slow-query/?seconds=30"), timeout=20))
    time.sleep(0.5)
    assert_other_pages_work(stack)
    t.join(20)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert r.status_code == 504
    assert r.text == f"The request ran longer than the server's timeout ({TIMEOUT} s).\n"
    assert TIMEOUT - 0.5 < box["elapsed"] < TIMEOUT + 4

    text = wait_for(lambda: (lambda x: x if "Python stack" in x else None)(
        stack.log("ferricorn-error.log", err_mark)), 5, message="the timeout report")
    worker, ran, frames = timeout_forensics(text, "/slow-query/?seconds=30")
    assert TIMEOUT <= ran < TIMEOUT + 1
    driver = frame_index(frames, r'File ".*/psycopg/[^"]+\.py", line \d+ in \w+')
    view = frame_index(frames, r'File ".*/catalog/views\.py", line \d+ in slow_query$')
    assert driver < view, "the driver frame should be above (more recent than) the view"

    # nginx passed ferricorn's answer on (upstream status 504), it did not time out itself
    line = [l for l in stack.log("nginx-access.log", nginx_mark).splitlines() if "/slow-query/" in l]
    assert len(line) == 1 and '" 504 ' in line[0] and " us=504 " in line[0], line
    assert "upstream timed out" not in stack.log("nginx-error.log")
    assert_other_pages_work(stack)


def test_lock_wait_times_out_with_the_stack_inside_psycopg(stack):
    err_mark = stack.mark("ferricorn-error.log")
    hold = 5.0
    r = requests.get(stack.url(f"/lock-hold/?seconds={hold}"), timeout=10)
    held_at = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json()["locked_book"] == 1
    # the row is taken: a second holder is refused at once
    r = requests.get(stack.url("/lock-hold/?seconds=1"), timeout=10)
    assert r.status_code == 409 and "could not obtain lock" in r.json()["error"]

    box, t = in_background(lambda: requests.get(stack.url("/lock-wait/"), timeout=20))
    time.sleep(0.5)
    assert_other_pages_work(stack)
    t.join(20)
    assert "error" not in box, box.get("error")
    assert box["result"].status_code == 504
    assert TIMEOUT - 0.5 < box["elapsed"] < TIMEOUT + 4

    text = wait_for(lambda: (lambda x: x if "Python stack" in x else None)(
        stack.log("ferricorn-error.log", err_mark)), 5, message="the timeout report")
    _worker, _ran, frames = timeout_forensics(text, "/lock-wait/")
    driver = frame_index(frames, r'File ".*/psycopg/[^"]+\.py", line \d+ in \w+')
    view = frame_index(frames, r'File ".*/catalog/views\.py", line \d+ in lock_wait$')
    assert driver < view

    # once the holder's transaction has ended, the same view goes through
    time.sleep(max(0.0, held_at + hold + 0.5 - time.monotonic()))
    r = requests.get(stack.url("/lock-wait/"), timeout=10)
    assert r.status_code == 200 and r.json() == {"updated_book": 1}


def test_external_call_without_timeout_is_named(stack):
    # a service that accepts connections and never answers
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        path = f"/external/?url=http://127.0.0.1:{silent.getsockname()[1]}/api"
        err_mark = stack.mark("ferricorn-error.log")
        r = requests.get(stack.url(path), timeout=20)
        assert r.status_code == 504
        text = wait_for(lambda: (lambda x: x if "Python stack" in x else None)(
            stack.log("ferricorn-error.log", err_mark)), 5, message="the timeout report")
        _worker, _ran, frames = timeout_forensics(text, path)
        call = frame_index(frames, r'File ".*/urllib/request\.py", line \d+ in urlopen$')
        view = frame_index(frames, r'File ".*/catalog/views\.py", line \d+ in external$')
        assert call < view
    finally:
        silent.close()


def test_hup_under_load_through_nginx_fails_no_request(stack):
    err_mark = stack.mark("ferricorn-error.log")
    master = stack.pid("ferricorn")
    paths = ["/", "/health/", "/n-plus-one/", "/static/catalog/style.css", "/report/?n=20000"]
    stop = threading.Event()
    results = []  # (path, status or exception text)
    lock = threading.Lock()

    def client(offset):
        s = requests.Session()
        i = offset
        while not stop.is_set() and i < offset + 2000:
            path = paths[i % len(paths)]
            i += 1
            try:
                outcome = s.get(stack.url(path), timeout=15).status_code
            except requests.RequestException as e:
                outcome = repr(e)
            with lock:
                results.append((path, outcome))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for _ in range(3):
            os.kill(master, signal.SIGHUP)
            time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    failures = [r for r in results if r[1] != 200]
    assert len(results) >= 50, f"only {len(results)} requests were made"
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:10]}"
    log = stack.log("ferricorn-error.log", err_mark)
    assert len(re.findall(r"\[INFO\] Handling signal: hup$", log, re.M)) == 3, log
    # every HUP replaced both workers (and max_requests=40 may have recycled more)
    assert len(re.findall(r"\[INFO\] Booting worker with pid: \d+$", log, re.M)) >= 6, log
    assert pid_alive(master) and stack.pid("ferricorn") == master


def test_term_drains_the_request_in_flight(stack):
    import psycopg

    err_mark = stack.mark("ferricorn-error.log")
    master = stack.pid("ferricorn")
    _rc, before = status_lines(stack)
    box, t = in_background(lambda: requests.get(stack.url("/slow-query/?seconds=2"), timeout=20))

    def sleeping_in_db():
        with psycopg.connect(host="127.0.0.1", port=stack.pg_port, dbname="demo", user="demo",
                             password=stack.db_password(), connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%'").fetchone()[0]

    wait_for(sleeping_in_db, 5, interval=0.1, message="the request to reach the database")
    os.kill(master, signal.SIGTERM)
    t.join(20)
    assert "error" not in box, box.get("error")
    assert box["result"].status_code == 200 and box["result"].json() == {"slept": 2.0}
    wait_for(lambda: not pid_alive(master), 15, message="the master to exit")
    log = stack.log("ferricorn-error.log", err_mark)
    assert "[INFO] Handling signal: term" in log and "[INFO] Shutting down: Master" in log, log

    # nothing behind nginx now: it says so with a 502
    assert requests.get(stack.url("/health/"), timeout=10).status_code == 502
    rc, states = status_lines(stack)
    assert rc == 1 and states["ferricorn"] == ("down", None)
    assert states["nginx"] == before["nginx"] and states["postgres"] == before["postgres"]

    # up again starts what is missing and leaves the rest running
    stack.run("up")
    rc, states = status_lines(stack)
    assert rc == 0 and states["ferricorn"][1] not in (None, master)
    assert states["nginx"] == before["nginx"] and states["postgres"] == before["postgres"]
    assert requests.get(stack.url("/health/"), timeout=10).status_code == 200


def test_nginx_timeout_below_ferricorns_loses_the_forensics(stack):
    """Why deploy/nginx.conf waits longer than ferricorn: the other way round, nginx answers and
    the request runs on in the app with nobody waiting, and no stack is logged."""
    err_mark = stack.mark("ferricorn-error.log")
    access_mark = stack.mark("ferricorn-access.log")
    nginx_err_mark = stack.mark("nginx-error.log")
    try:
        stack.run("up", {"STACK_NGINX_READ_TIMEOUT": "1"})
        started = time.monotonic()
        r = requests.get(stack.url("/slow-query/?seconds=2.5"), timeout=20)
        assert r.status_code == 504 and time.monotonic() - started < 2.0
        assert "The request ran longer" not in r.text and "nginx" in r.text
        assert "upstream timed out" in stack.log("nginx-error.log", nginx_err_mark)
        # the app finished it later, for nobody
        wait_for(lambda: re.search(r'"GET /slow-query/\?seconds=2\.5 HTTP/1\.0" 200 ',
                                   stack.log("ferricorn-access.log", access_mark)), 5,
                 message="the abandoned request in the access log")
        assert "Request exceeded" not in stack.log("ferricorn-error.log", err_mark)
    finally:
        stack.run("up")


def test_static_through_the_app_when_nginx_does_not_serve_it(stack):
    access_mark = stack.mark("ferricorn-access.log")
    try:
        stack.run("up", {"STACK_NGINX_STATIC": "0"})
        with open(stack.path("nginx.conf")) as f:
            assert "alias " not in f.read()

        def served_by_app():
            r = requests.get(stack.url("/static/catalog/style.css"), timeout=10)
            return r if r.status_code == 200 and "/static/" in stack.log("ferricorn-access.log", access_mark) else None

        # ferricorn re-reads its config on HUP; the new workers serve /static/ through Django
        r = wait_for(served_by_app, 15, interval=0.3, message="Django to serve /static/")
        assert r.headers["Content-Type"].startswith("text/css")
    finally:
        stack.run("up")
    access_mark = stack.mark("ferricorn-access.log")
    r = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        requests.get(stack.url("/static/catalog/style.css"), timeout=10)), 15, message="static")
    assert "max-age=604800" in r.headers["Cache-Control"]


def test_down_is_idempotent_and_up_restores(stack):
    pids = {c: stack.pid(c) for c in ("nginx", "ferricorn")}
    first = stack.run("down")
    second = stack.run("down")
    assert first.returncode == second.returncode == 0
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still running after down"
    rc, states = status_lines(stack)
    assert rc == 1 and all(state == ("down", None) for state in states.values()), states
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url("/"), timeout=5)

    stack.run("up")
    rc, states = status_lines(stack)
    assert rc == 0, states
    assert requests.get(stack.url("/"), timeout=10).status_code == 200


def test_bad_settings_are_refused_with_one_line(stack):
    proc = stack.run("up", {"STACK_TIMEOUT": "soon"}, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "stack: error: STACK_TIMEOUT must be a whole number of seconds or requests, got 'soon'\n"
    proc = stack.run("sideways", check=False)
    assert proc.returncode == 2 and "unknown command 'sideways'" in proc.stderr
    proc = stack.run("up", {"FERRICORN": "/nonexistent/ferricorn"}, check=False)
    assert proc.returncode == 1 and "ferricorn not found" in proc.stderr and "pip install" in proc.stderr
