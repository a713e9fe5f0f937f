"""``ferricornctl doctor`` against real processes: a ferricorn with a control socket and log files,
a real nginx in front of it (loopback ports, a temporary prefix), real requests that time out, queue
and fetch static files; then the doctor's JSON report is checked for each finding, and an aligned setup
is checked for their absence.

Host-state rules (swap, OOM kills) are driven through the hidden ``--host-root`` option with fake
/proc and /sys files: swap and OOM kills cannot be produced on demand on the machine running the tests.

The client command comes from FERRICORNCTL (default ``ferricornctl``).
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import free_port, get, wait_for

pytestmark = pytest.mark.ferricorn_only

CTL_CMD = shlex.split(os.environ.get("FERRICORNCTL", "ferricornctl"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APP = "doctorapp:application"

needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


def doctor(*args, timeout=60):
    """Run `ferricornctl doctor ARGS --json`; return (exit status, report)."""
    res = subprocess.run(
        CTL_CMD + ["doctor", "--json", *args], capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode in (0, 1), f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.returncode, json.loads(res.stdout)


def ids(report):
    return {f["id"] for f in report["findings"]}


def by_id(report, fid):
    found = [f for f in report["findings"] if f["id"] == fid]
    assert found, f"{fid} not in {sorted(ids(report))}"
    return found


class Nginx:
    """nginx in the foreground with its own prefix directory, proxying to a ferricorn port."""

    def __init__(self, upstream_port, read_timeout="60s", static=True):
        self.dir = tempfile.mkdtemp(prefix="fcn-nginx-", dir="/tmp")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        os.makedirs(os.path.join(self.dir, "static"))
        with open(os.path.join(self.dir, "static", "app.css"), "w") as f:
            f.write("body {}\n")
        static_block = (
            f"        location /static/ {{ alias {self.dir}/static/; }}\n" if static else ""
        )
        # As root, nginx's workers would switch to `nobody`, who cannot use this private prefix.
        user = "user root;\n" if os.geteuid() == 0 else ""
        with open(self.conf, "w") as f:
            f.write(
                f"""{user}worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream_port};
    }}
    server {{
        listen 127.0.0.1:{self.port};
        server_name doctor-test;
{static_block}        location / {{
            proxy_pass http://app;
            proxy_set_header Host $host;
            proxy_read_timeout {read_timeout};
        }}
    }}
}}
"""
            )
        # A wrapper that makes `nginx -T` dump this configuration (for --nginx-bin).
        self.bin = os.path.join(self.dir, "nginx-here")
        with open(self.bin, "w") as f:
            f.write(f'#!/bin/sh\nexec {NGINX} -p {self.dir} -c {self.conf} "$@"\n')
        os.chmod(self.bin, 0o755)
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.dir, "-c", self.conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )

        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 10, message="nginx to accept")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def start_nginx():
    started = []

    def start(*args, **kw):
        n = Nginx(*args, **kw)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (an external service that hangs)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


def start_app(start_server, tmp, *args):
    """ferricorn serving doctorapp with log files and a control socket in `tmp`; `srv.error_log()`
    reads its error log (for `srv.wait_log(..., text=srv.error_log)`)."""
    ctl = os.path.join(tmp, "f.ctl")
    srv = start_server([
        "--control-socket", ctl, "--error-logfile", os.path.join(tmp, "error.log"),
        "--access-logfile", os.path.join(tmp, "access.log"), *args, APP,
    ])
    wait_for(lambda: os.path.exists(ctl), 10, message="the control socket")

    def error_log():
        with open(os.path.join(tmp, "error.log"), errors="replace") as f:
            return f.read()

    srv.error_log = error_log
    return srv, ctl


def fake_host_root(tmp, swap_used_kib=0, cgroup_oom=0, host_oom=0):
    """/proc and /sys files under `tmp/root` for --host-root."""
    root = os.path.join(tmp, "root")
    os.makedirs(os.path.join(root, "proc", "self"), exist_ok=True)
    os.makedirs(os.path.join(root, "sys", "fs", "cgroup", "app"), exist_ok=True)
    files = {
        "proc/loadavg": "0.10 0.10 0.10 1/100 1\n",
        "proc/cpuinfo": "processor\t: 0\nprocessor\t: 1\n",
        "proc/meminfo": (
            "MemTotal:        4000000 kB\nMemAvailable:    3000000 kB\n"
            f"SwapTotal:       2000000 kB\nSwapFree:        {2000000 - swap_used_kib} kB\n"
        ),
        "proc/vmstat": f"pgfault 1\noom_kill {host_oom}\n",
        "proc/self/cgroup": "0::/app\n",
        "sys/fs/cgroup/app/memory.events": f"low 0\nhigh 0\nmax 0\noom {cgroup_oom}\noom_kill {cgroup_oom}\n",
    }
    for rel, text in files.items():
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    return root


def in_parallel(calls):
    threads = [threading.Thread(target=c) for c in calls]
    for t in threads:
        t.start()
    return threads


@needs_nginx
def test_misaligned_stack_gets_every_finding(start_server, start_nginx, tmp_short, silent_port):
    # 1 worker x 2 threads (sync spelled with threads), timeout 2s behind nginx's 1s read timeout,
    # /static/ proxied, max_requests without jitter, graceful_timeout below timeout.
    srv, ctl = start_app(
        start_server, tmp_short, "-w", "1", "-k", "sync", "--threads", "2", "--max-threads", "2",
        "--timeout", "2", "--graceful-timeout", "1", "--max-requests", "1000",
    )
    ngx = start_nginx(srv.port, read_timeout="1s", static=False)

    # Through nginx: nginx gives up at 1s (its own 504) while the worker runs on to its timeout.
    started = time.monotonic()
    r = get(ngx.port, "/sleep/?s=10", timeout=20)
    assert r.status == 504 and "nginx" in r.header("Server", ""), r
    assert time.monotonic() - started < 1.9
    # Static files through nginx reach the app.
    assert get(ngx.port, "/static/app.css").body == b"body { color: red }\n"
    srv.wait_log(r"Request exceeded --timeout 2s: GET /sleep/\?s=10", text=srv.error_log)
    srv.wait_log(r"Booting worker with pid", count=2, text=srv.error_log)
    # Four slow requests at once on two threads: starvation, then four more timeouts on /sleep/; one
    # external call that never gets an answer.
    calls = [lambda: get(srv.port, "/sleep/?s=10", timeout=30) for _ in range(4)]
    calls.append(lambda: get(srv.port, f"/external/?port={silent_port}", timeout=30))
    for t in in_parallel(calls):
        t.join(40)
    srv.wait_log(r"All 2 worker threads are busy", text=srv.error_log)
    srv.wait_log(r"Request exceeded --timeout 2s: GET /sleep/", count=5, timeout=30, text=srv.error_log)
    srv.wait_log(r"Request exceeded --timeout 2s: GET /external/", timeout=30, text=srv.error_log)

    code, rep = doctor("-s", ctl, "--nginx-config", ngx.conf,
                       "--probe", f"http://127.0.0.1:{ngx.port}/", "--probe-count", "3")
    assert code == 1
    assert rep["exit_status"] == 1

    t = by_id(rep, "nginx-timeout-shorter")[0]
    assert t["severity"] == "critical"
    assert "proxy_read_timeout 1s <= timeout 2s" in t["title"]
    assert f"{ngx.conf}:" in t["evidence"][0]
    assert "proxy_read_timeout 7s" in t["fix"]

    route = by_id(rep, "route-causes-timeouts")[0]
    assert "/sleep/ (5 of 6 timeouts" in route["title"], route

    app_code = by_id(rep, "stuck-in-app-code")[0]
    assert app_code["severity"] == "critical"
    assert any("doctorapp.py" in e and "application" in e for e in app_code["evidence"]), app_code
    net = by_id(rep, "stuck-on-external-call")[0]
    assert "/external/ (1)" in net["evidence"][-1], net

    cap = by_id(rep, "capacity-below-concurrency")[0]
    assert "workers x threads (2)" in cap["title"], cap
    assert any("/sleep/" in e for e in cap["evidence"]), cap

    static = by_id(rep, "static-served-by-app")[0]
    assert any("proxies it" in e for e in static["evidence"]), static
    assert any("/static/app.css" in e for e in static["evidence"]), static

    assert by_id(rep, "sync-with-threads")[0]["severity"] == "info"
    assert by_id(rep, "max-requests-without-jitter")[0]["severity"] == "warning"
    assert by_id(rep, "graceful-timeout-short")[0]["severity"] == "warning"
    # threads run (sync with threads is gthread), so this one must not appear
    assert "sync-workers-waiting-on-io" not in ids(rep)

    # The numbers behind it.
    assert rep["server"]["timeout"] == 2 and rep["server"]["threaded"] is True
    assert rep["server"]["stats"]["peak_busy_threads"] >= 2
    assert rep["server"]["stats"]["peak_waiting"] >= 1
    by_path = {p["path"]: p for p in rep["error_log"]["by_path"]}
    assert by_path["/sleep/"]["timeouts"] == 5
    probe = rep["probes"][0]
    assert probe["requests"] == 3 and probe["statuses"] == [200, 200, 200]
    assert probe["p50_seconds"] is not None and probe["p99_seconds"] >= probe["p50_seconds"]
    assert "probe-latency" in ids(rep)


@needs_nginx
def test_aligned_stack_has_none_of_them(start_server, start_nginx, tmp_short, silent_port):
    srv, ctl = start_app(
        start_server, tmp_short, "-w", "2", "-k", "gthread", "--threads", "2", "--timeout", "2",
        "--graceful-timeout", "2", "--max-requests", "1000", "--max-requests-jitter", "100",
        "--slow-request-threshold", "1",
    )
    ngx = start_nginx(srv.port, read_timeout="10s", static=True)
    assert get(ngx.port, "/static/app.css").body == b"body {}\n"  # from nginx, not the app
    assert get(ngx.port, "/").status == 200
    root = fake_host_root(tmp_short)
    code, rep = doctor("-s", ctl, "--nginx-bin", ngx.bin, "--host-root", root,
                       "--probe", f"http://127.0.0.1:{ngx.port}/")
    assert rep["sources"]["nginx"]["ok"], rep["sources"]
    assert "-T" in rep["sources"]["nginx"]["detail"]
    for fid in ("nginx-timeout-shorter", "nginx-send-timeout-shorter", "nginx-upstream-mismatch",
                "static-served-by-app", "route-causes-timeouts", "capacity-below-concurrency",
                "sync-with-threads", "max-requests-without-jitter", "graceful-timeout-short",
                "stuck-in-app-code", "swap-in-use", "oom-kills-cgroup"):
        assert fid not in ids(rep), (fid, rep["findings"])
    assert code == 0, rep["findings"]
    assert rep["nginx"]["static"][0]["served_by"] == "nginx"


def test_sync_worker_waiting_on_io(start_server, tmp_short, silent_port):
    srv, ctl = start_app(start_server, tmp_short, "-w", "1", "--timeout", "2")
    get(srv.port, f"/external/?port={silent_port}", timeout=20)
    srv.wait_log(r"Request exceeded --timeout 2s: GET /external/", text=srv.error_log)
    code, rep = doctor("-s", ctl, "--no-nginx")
    assert code == 1
    f = by_id(rep, "sync-workers-waiting-on-io")[0]
    assert "gthread" in f["fix"]
    assert by_id(rep, "stuck-on-external-call")[0]["severity"] == "critical"
    # one event: no "route" finding (it needs two to speak of "most")
    assert "route-causes-timeouts" not in ids(rep)
    # the same server with nothing stuck in the window
    code, rep = doctor("-s", ctl, "--no-nginx", "--error-log", os.devnull)
    assert "sync-workers-waiting-on-io" not in ids(rep)


def test_config_file_and_nginx_file_without_a_server(tmp_short):
    conf = os.path.join(tmp_short, "gunicorn.conf.py")
    with open(conf, "w") as f:
        f.write("bind = '127.0.0.1:8123'\ntimeout = 90\ngraceful_timeout = 90\n"
                "worker_class = 'sync'\nthreads = 4\nmax_requests = 500\n")
    ngx = os.path.join(tmp_short, "site.conf")
    with open(ngx, "w") as f:
        f.write("server {\n  location / {\n    proxy_pass http://localhost:8123;\n  }\n}\n")
    code, rep = doctor("--config", conf, "--nginx-config", ngx)
    assert code == 1
    assert rep["server"]["origin"] == f"config file {conf}"
    assert rep["server"]["stats"] is None
    t = by_id(rep, "nginx-timeout-shorter")[0]
    assert t["severity"] == "critical"
    assert "proxy_read_timeout 60s <= timeout 90s" in t["title"]
    assert "nginx's default 60s" in t["evidence"][0]
    assert "nginx-upstream-mismatch" not in ids(rep)
    assert {"sync-with-threads", "max-requests-without-jitter", "static-served-by-app"} <= ids(rep)
    # the same file aligned
    with open(conf, "w") as f:
        f.write("bind = '127.0.0.1:8123'\ntimeout = 30\nworker_class = 'gthread'\nthreads = 4\n")
    code, rep = doctor("--config", conf, "--nginx-config", ngx)
    assert not ids(rep) & {"nginx-timeout-shorter", "sync-with-threads", "max-requests-without-jitter"}
    # pointing at another port is called out
    with open(conf, "w") as f:
        f.write("bind = '127.0.0.1:8124'\n")
    code, rep = doctor("--config", conf, "--nginx-config", ngx)
    assert "nginx-upstream-mismatch" in ids(rep)


def test_nginx_is_named_only_when_found(tmp_short):
    conf = os.path.join(tmp_short, "gunicorn.conf.py")
    with open(conf, "w") as f:
        f.write("bind = '127.0.0.1:8123'\ntimeout = 30\ngraceful_timeout = 10\n")
    code, rep = doctor("--config", conf, "--no-nginx")
    (short,) = by_id(rep, "graceful-timeout-short")
    text = " ".join(short["evidence"]) + short["fix"]
    assert "their clients get a 503" in text, short
    assert "nginx" not in text and "502" not in text, short
    ngx = os.path.join(tmp_short, "site.conf")
    with open(ngx, "w") as f:
        f.write("server {\n  location / {\n    proxy_pass http://127.0.0.1:8123;\n  }\n}\n")
    code, rep = doctor("--config", conf, "--nginx-config", ngx)
    (short,) = by_id(rep, "graceful-timeout-short")
    assert "nginx passes on the 503" in " ".join(short["evidence"]), short


def test_database_that_cannot_be_used_is_one_line(tmp_short):
    none = os.path.join(tmp_short, "none.ctl")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    cases = [
        (["--database-url", f"postgresql://app:secret@127.0.0.1:{port}/app"],
         f"database: postgresql://app@127.0.0.1:{port}/app: "),
        (["--database-url", "postgresql://app@127.0.0.1/app", "--psql", "/nonexistent/psql"],
         "database: postgresql://app@127.0.0.1/app: cannot run /nonexistent/psql: "),
        (["--django-settings", "no_such_settings_module"], "database: Django settings: "),
    ]
    # Refused, psql missing (or not found: the same one line), settings that do not import.
    for args, start in cases:
        code, rep = doctor("-s", none, "--no-nginx", *args)
        lines = [f for f in rep["findings"] if f["title"].startswith("database")]
        assert len(lines) == 1, (args, rep["findings"])
        assert lines[0]["id"] == "source-skipped" and lines[0]["title"].startswith(start), lines
        assert lines[0]["title"].endswith("; skipped") and "secret" not in json.dumps(rep)
        # the rest of the report
        assert rep["sources"]["host"]["ok"] and rep["database"] is None
        assert "ferricorn" in rep["sources"] and rep["findings"]


def test_host_state_rules_from_fake_proc(tmp_short):
    root = fake_host_root(tmp_short, swap_used_kib=512000, cgroup_oom=3, host_oom=7)
    code, rep = doctor("-s", os.path.join(tmp_short, "none.ctl"), "--no-nginx", "--host-root", root)
    assert code == 1
    assert "500 MiB" in by_id(rep, "swap-in-use")[0]["title"]
    assert by_id(rep, "oom-kills-cgroup")[0]["severity"] == "warning"
    assert by_id(rep, "oom-kills-host")[0]["severity"] == "info"
    root = fake_host_root(os.path.join(tmp_short, "clean"))
    code, rep = doctor("-s", os.path.join(tmp_short, "none.ctl"), "--no-nginx", "--host-root", root)
    assert code == 0, rep["findings"]
    assert not ids(rep) & {"swap-in-use", "oom-kills-cgroup", "oom-kills-host"}
    # the unreachable server is an info line, not a failure
    skipped = [f for f in rep["findings"] if f["id"] == "source-skipped"]
    assert any(f["title"].startswith("ferricorn: cannot connect") for f in skipped), skipped


def test_never_hangs_on_a_stuck_source(tmp_short):
    slow = os.path.join(tmp_short, "slow-nginx")
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 30\n")
    os.chmod(slow, 0o755)
    started = time.monotonic()
    code, rep = doctor("-s", os.path.join(tmp_short, "none.ctl"), "--nginx-bin", slow, "-t", "1",
                       "--probe", "http://127.0.0.1:9/", "--probe-count", "1",
                       "--probe-timeout", "1", "--probe", "https://example.invalid/")
    assert time.monotonic() - started < 10
    assert not rep["sources"]["nginx"]["ok"]
    assert "did not finish within 1s" in rep["sources"]["nginx"]["detail"]
    assert by_id(rep, "probe-errors")[0]["severity"] == "critical"
    assert "only http://" in by_id(rep, "probe-skipped")[0]["title"]


def test_human_output_and_usage_errors(tmp_short):
    res = subprocess.run(CTL_CMD + ["doctor", "-s", os.path.join(tmp_short, "none.ctl"),
                                    "--no-nginx"], capture_output=True, text=True, timeout=30)
    assert res.returncode in (0, 1)
    assert res.stdout.startswith("ferricorn doctor: ")
    assert "\nSources:\n" in res.stdout
    res = subprocess.run(CTL_CMD + ["doctor", "--bogus"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    res = subprocess.run(CTL_CMD + ["doctor", "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "nginx-timeout-shorter" in res.stdout
    assert "--database-url <URL>" in res.stdout and "db-request-blocked" in res.stdout
    res2 = subprocess.run(CTL_CMD + ["--help"], capture_output=True, text=True, timeout=30)
    assert "doctor [OPTIONS]" in res2.stdout
    # Both laid out for 80 columns, whatever the terminal: nothing re-wrapped past it, and a help
    # text that goes on to a second line goes on under its own column.
    for text in (res.stdout, res2.stdout):
        long = [line for line in text.splitlines() if len(line) > 80]
        assert not long, long
    sources = res.stdout[res.stdout.index("Sources"):res.stdout.index("Findings")]
    for line in sources.splitlines()[1:]:
        assert line == "" or re.match(r"^  \w[\w ]{0,10}\s+\S|^              \S", line), line
    res = subprocess.run(CTL_CMD + ["doctor", "--database-url", "mysql://db/app"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "ferricornctl doctor: error: --database-url must be a postgresql:// URL, got a mysql:// one"]
