"""Observability: the Prometheus listener (`--metrics-bind`) scraped under load and parsed with
prometheus_client's parser, statsd datagrams as gunicorn sends them, worker restarts by cause,
liveness, and readiness turning false on a graceful stop before the listeners close.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, get, stop_pid, wait_for
from test_control import ctl, ctl_json, is_socket

pytestmark = pytest.mark.ferricorn_only


def scrape(port, path="/metrics"):
    r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    return r


def families(port):
    r = scrape(port)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(fams, name, suffix="", **labels):
    """The samples of family `name` (sample name `name + suffix`) whose labels include `labels`."""
    fam = fams.get(name)
    if fam is None:
        return []
    return [s for s in fam.samples
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())]


def value(fams, name, suffix="", **labels):
    return sum(s.value for s in samples(fams, name, suffix, **labels))


def start_with_metrics(start_server, args, **kw):
    mport = free_port()
    srv = start_server(list(args) + ["--metrics-bind", f"127.0.0.1:{mport}"], **kw)
    wait_for(lambda: _accepts(mport), 10, message="metrics listener")
    return srv, mport


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_scrape_under_load_is_parsed_and_adds_up(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "2", "--threads", "4"])
    wait_for(lambda: len(srv.children()) == 2, 10, message="two workers")
    sent = {"GET 2xx": 0, "POST 2xx": 0, "GET 4xx": 0, "GET 5xx": 0}
    lock = threading.Lock()
    errors = []

    def client(n):
        s = requests.Session()  # kept-alive connections
        try:
            for i in range(n):
                kind = i % 4
                if kind == 0:
                    r = s.get(f"{srv.url}/hello", timeout=10)
                    key = "GET 2xx"
                elif kind == 1:
                    r = s.post(f"{srv.url}/echo", data=b"x" * 100, timeout=10)
                    key = "POST 2xx"
                elif kind == 2:
                    r = s.get(f"{srv.url}/missing", timeout=10)
                    key = "GET 4xx"
                else:
                    r = s.get(f"{srv.url}/error", timeout=10)
                    key = "GET 5xx"
                assert r.status_code // 100 == int(key[-3]), (key, r.status_code)
                with lock:
                    sent[key] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(60,)) for _ in range(8)]
    for t in threads:
        t.start()
    # Scrape while the load runs: each scrape parses, and counters never go backwards.
    last_total = 0
    scrapes = 0
    while any(t.is_alive() for t in threads) or scrapes < 3:
        fams = families(mport)
        total = value(fams, "ferricorn_requests", "_total")
        assert total >= last_total
        last_total = total
        scrapes += 1
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors, errors
    expected = sum(sent.values())
    assert expected == 480

    def settled():
        f = families(mport)
        return f if value(f, "ferricorn_requests", "_total") == expected else None

    fams = wait_for(settled, 10, message="every request counted")
    for key, n in sent.items():
        method, status = key.split()
        assert value(fams, "ferricorn_requests", "_total", method=method, status=status,
                     worker_class="gthread") == n, key
        assert value(fams, "ferricorn_request_duration_seconds", "_count", method=method,
                     status=status) == n
    # Histogram buckets are cumulative and end at the count.
    buckets = samples(fams, "ferricorn_request_duration_seconds", "_bucket", method="GET",
                      status="2xx")
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    assert buckets[-1].labels["le"] == "+Inf" and counts[-1] == sent["GET 2xx"]
    assert value(fams, "ferricorn_threads_total") == 8
    assert value(fams, "ferricorn_workers") == 2
    rss = samples(fams, "ferricorn_worker_rss_bytes")
    assert sorted(int(s.labels["pid"]) for s in rss) == sorted(srv.children())
    assert all(s.value > 1 << 20 for s in rss)
    assert value(fams, "ferricorn_up") == 1 and value(fams, "ferricorn_ready") == 1
    for c in ("timeout", "oom", "outside_kill", "max_requests", "max_worker_memory", "crash",
              "reload"):
        assert samples(fams, "ferricorn_worker_restarts", "_total", cause=c), c

    # A request in flight shows as such while it runs.
    t = threading.Thread(target=lambda: requests.get(f"{srv.url}/sleep?s=2", timeout=10))
    t.start()
    wait_for(lambda: value(families(mport), "ferricorn_requests_in_flight") >= 1, 5,
             message="in flight")
    t.join()

    # The metrics listener is its own: the app never sees /metrics, the listener serves no app.
    app = requests.get(f"{srv.url}/metrics", timeout=10)
    assert app.status_code == 404 and app.text == "not found"
    assert scrape(mport, "/hello").status_code == 404


def test_restarts_are_counted_by_cause(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "1", "--timeout", "2", "--graceful-timeout", "2"])

    def restarts(cause):
        return value(families(mport), "ferricorn_worker_restarts", "_total", cause=cause)

    def one_worker():
        kids = srv.children()
        return kids[0] if len(kids) == 1 else None

    first = wait_for(one_worker, 10, message="a worker")
    # A request past --timeout: 504, the worker retires, its replacement comes up.
    r = requests.get(f"{srv.url}/sleep?s=30", timeout=20)
    assert r.status_code == 504
    wait_for(lambda: restarts("timeout") == 1, 20, message="timeout restart")
    assert value(families(mport), "ferricorn_request_timeouts", "_total") == 1
    second = wait_for(lambda: (p := one_worker()) and p != first and p, 10, message="replacement")
    # A worker that exits with an error status: a crash.
    with pytest.raises(requests.RequestException):
        requests.get(f"{srv.url}/exit?code=7", timeout=10)
    wait_for(lambda: restarts("crash") == 1, 10, message="crash restart")
    third = wait_for(lambda: (p := one_worker()) and p != second and p, 10, message="replacement")
    wait_for(lambda: get(srv.port, "/hello").status == 200, 10, message="serving again")
    # Killed from outside.
    os.kill(third, signal.SIGKILL)
    wait_for(lambda: restarts("outside_kill") == 1, 15, message="outside kill")
    fams = families(mport)
    assert restarts("timeout") == 1 and restarts("crash") == 1
    assert value(fams, "ferricorn_worker_restarts", "_total", cause="oom") == 0


def test_max_requests_restart(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "1", "--max-requests", "5"])
    s = requests.Session()
    for _ in range(12):
        assert s.get(f"{srv.url}/hello", timeout=10).status_code == 200
    wait_for(lambda: value(families(mport), "ferricorn_worker_restarts", "_total",
                           cause="max_requests") >= 2, 15, message="max-requests restarts")
    # Requests of the retired workers are still counted.
    wait_for(lambda: value(families(mport), "ferricorn_requests", "_total") == 12, 10,
             message="all counted")


class StatsdListener:
    """A UDP statsd server: collects datagrams and parses each line by the statsd grammar."""

    LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+):(?P<value>-?[0-9.]+(?:e-?\d+)?)"
                      r"\|(?P<type>c|g|ms|h|s)(?:\|@(?P<rate>[0-9.]+))?(?:\|#(?P<tags>[^|]*))?$")

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            for line in data.decode().split("\n"):
                m = self.LINE.match(line)
                assert m, f"not a statsd line: {line!r}"
                self.lines.append(m.groupdict())

    def named(self, name):
        return [l for l in list(self.lines) if l["name"] == name]

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


def test_statsd_as_gunicorn_under_load(start_server):
    listener = StatsdListener()
    try:
        srv = start_server(["testapp:application", "-w", "2", "--threads", "2",
                            "--statsd-host", f"127.0.0.1:{listener.port}",
                            "--statsd-prefix", "app", "--dogstatsd-tags", "env:test,team:web"])
        n_threads, per_thread = 4, 50

        def client():
            s = requests.Session()
            for _ in range(per_thread):
                assert s.get(f"{srv.url}/hello", timeout=10).status_code == 200

        threads = [threading.Thread(target=client) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert requests.get(f"{srv.url}/missing", timeout=10).status_code == 404
        assert requests.get(f"{srv.url}/error", timeout=10).status_code == 500
        n = n_threads * per_thread + 2
        wait_for(lambda: len(listener.named("app.gunicorn.requests")) == n, 10,
                 message="every request's datagram")
        reqs = listener.named("app.gunicorn.requests")
        assert all(l["type"] == "c" and l["value"] == "1" and l["rate"] == "1.0" for l in reqs)
        durations = listener.named("app.gunicorn.request.duration")
        assert len(durations) == n
        assert all(l["type"] == "ms" and float(l["value"]) >= 0 for l in durations)
        assert len(listener.named("app.gunicorn.request.status.200")) == n - 2
        assert len(listener.named("app.gunicorn.request.status.404")) == 1
        assert len(listener.named("app.gunicorn.request.status.500")) == 1
        # The app's exception is counted as gunicorn counts it.
        wait_for(lambda: listener.named("app.gunicorn.log.exception"), 5, message="log.exception")
        workers = listener.named("app.gunicorn.workers")
        assert workers and workers[0]["type"] == "g" and workers[-1]["value"] == "2"
        assert all(l["tags"] == "env:test,team:web" for l in list(listener.lines))
    finally:
        listener.close()


def test_backlog_metric_and_statsd_to_a_unix_socket(start_server, tmp_short):
    path = os.path.join(tmp_short, "statsd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        srv = start_server(["testapp:application", "--statsd-host", f"unix:{path}",
                            "--enable-backlog-metric"])
        assert get(srv.port, "/hello").status == 200
        seen = set()
        deadline = time.monotonic() + 10
        while not {"gunicorn.backlog", "gunicorn.requests"} <= seen and time.monotonic() < deadline:
            for line in sock.recv(65536).decode().split("\n"):
                seen.add(line.split(":")[0])
                if line.startswith("gunicorn.backlog:"):
                    assert line.endswith("|ms")
        assert {"gunicorn.backlog", "gunicorn.requests"} <= seen, seen
    finally:
        sock.close()


def test_health_sees_a_frozen_io_loop(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "2", "--threads", "3"])
    wait_for(lambda: len(srv.children()) == 2, 10, message="two workers")
    body = wait_for(lambda: (r := scrape(mport, "/healthz")).text.startswith(
        "ok: 2 worker(s) serving") and r.text, 10, message="healthy and serving")
    assert body.startswith("ok: 2 worker(s) serving"), body
    assert len(re.findall(r"3/3 threads alive", body)) == 2, body
    frozen = srv.children()[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Its idle threads' beats (each second) may go stale a moment before its loop's (each 0.5 s):
        # wait for the loop's.
        text = wait_for(lambda: (r := scrape(mport, "/healthz")).status_code == 503
                        and "its I/O loop last beat" in r.text and r.text,
                        15, message="liveness fails")
        assert f"worker {frozen} is not alive: its I/O loop last beat" in text, text
        res = ctl(srv, "show", "health")
        assert res.returncode == 1 and "NOT ALIVE" in res.stdout, res.stdout
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_for(lambda: scrape(mport, "/healthz").status_code == 200, 10, message="healthy again")


def test_readiness_turns_false_before_the_listener_closes(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "2", "--shutdown-delay", "3"])
    wait_for(lambda: scrape(mport, "/readyz").status_code == 200, 10, message="ready")
    res = ctl(srv, "show", "health")
    assert res.returncode == 0 and "Ready:  yes" in res.stdout, res.stdout
    # Kept-alive traffic before the stop.
    s = requests.Session()
    for _ in range(20):
        assert s.get(f"{srv.url}/hello", timeout=10).status_code == 200
    srv.signal(signal.SIGTERM)
    # (A 503 response is falsy: wait for its text.)
    text = wait_for(lambda: (r := scrape(mport, "/readyz")).status_code == 503 and r.text, 5,
                    message="not ready")
    assert "stopping" in text
    # Not ready, yet still serving: the load balancer has time to stop sending.
    assert scrape(mport, "/healthz").status_code == 200
    assert get(srv.port, "/hello").status == 200
    health = json.loads(ctl(srv, "--json", "show", "health").stdout)
    assert health["ready"] is False and health["stopping"] is True and health["live"] is True
    # Then the listener closes and the master exits.
    assert srv.wait(15) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    log = srv.log_text()
    assert log.index("not ready any more") < log.index("Shutting down: Master")


def test_grafana_dashboard_uses_exported_metrics(start_server):
    """Every metric the dashboard in deploy/ queries is one a scrape of a WSGI or an ASGI server has."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "deploy", "grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used = set(re.findall(r"\bferricorn_[a-z_]+", " ".join(exprs)))
    srv, mport = start_with_metrics(start_server, ["testapp:application"])
    assert get(srv.port, "/hello").status == 200
    text = wait_for(lambda: "ferricorn_requests_total{" in (t := scrape(mport).text) and t, 10,
                    message="a request counted")
    exported = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    # The event loop's lag is an asgi worker's.
    asrv, aport = start_with_metrics(start_server, ["-k", "asgi", "asgi_raw:app"])
    text = wait_for(lambda: "ferricorn_asgi_event_loop_lag_seconds{" in (t := scrape(aport).text)
                    and t, 10, message="an asgi worker's lag")
    exported |= {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    missing = used - exported
    assert not missing, missing


def test_reload_scale_down_and_memory_restarts(start_server):
    srv, mport = start_with_metrics(
        start_server, ["stuck:application", "-w", "2", "--max-worker-memory", "120"])

    def restarts(cause):
        return value(families(mport), "ferricorn_worker_restarts", "_total", cause=cause)

    wait_for(lambda: len(srv.children()) == 2, 10, message="two workers")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: restarts("reload") == 2, 20, message="both workers replaced by the reload")
    wait_for(lambda: len(srv.children()) == 2, 10, message="two workers again")
    srv.signal(signal.SIGTTOU)
    wait_for(lambda: restarts("scale_down") == 1, 20, message="one worker retired")
    wait_for(lambda: len(srv.children()) == 1, 10, message="one worker")
    # Past --max-worker-memory: recycled after its request, and counted so.
    assert get(srv.port, "/alloc?mb=200", timeout=30).status == 200
    wait_for(lambda: restarts("max_worker_memory") == 1, 20, message="memory recycle")
    assert restarts("reload") == 2 and restarts("crash") == 0 and restarts("outside_kill") == 0


def test_asgi_requests_are_counted_too(start_server):
    srv, mport = start_with_metrics(start_server, ["-k", "asgi", "-w", "1", "asgi_raw:app"])
    s = requests.Session()
    for _ in range(10):
        assert s.get(f"{srv.url}/", timeout=10).status_code == 200
    for _ in range(3):
        assert s.post(f"{srv.url}/echo", data=b"abc", timeout=10).text == "abc"
    fams = wait_for(lambda: value(f := families(mport), "ferricorn_requests", "_total") == 13 and f,
                    10, message="asgi requests counted")
    assert value(fams, "ferricorn_requests", "_total", worker_class="asgi", method="GET",
                 status="2xx") == 10
    assert value(fams, "ferricorn_request_duration_seconds", "_count", worker_class="asgi",
                 method="POST", status="2xx") == 3
    assert scrape(mport, "/healthz").status_code == 200
    assert scrape(mport, "/readyz").status_code == 200


def test_asgi_event_loop_lag_and_a_blocked_loop(start_server):
    srv, mport = start_with_metrics(
        start_server, ["-k", "asgi", "-w", "1", "--timeout", "30", "asgi_raw:app"])
    (worker,) = wait_for(lambda: (k := srv.children()) and len(k) == 1 and k, 10,
                         message="a worker")
    s = requests.Session()
    for _ in range(20):
        assert s.get(f"{srv.url}/", timeout=10).status_code == 200

    def lag():
        return value(families(mport), "ferricorn_asgi_event_loop_lag_seconds", pid=str(worker))

    # A loop that serves keeps a small lag (its 0.1 s timer fires about on time).
    wait_for(lambda: lag() < 0.5, 10, message="a small lag while serving")
    # A blocking call in an async view: the lag grows with the block, and liveness fails with the
    # reason, though the worker's I/O loop still beats.
    done = {}
    t = threading.Thread(target=lambda: done.update(
        r=requests.get(f"{srv.url}/block?s=9", timeout=30)))
    t.start()
    try:
        wait_for(lambda: lag() >= 2, 10, message="the lag shows the block")
        text = wait_for(lambda: (r := scrape(mport, "/healthz")).status_code == 503 and r.text,
                        10, message="liveness fails while the loop is blocked")
        assert (f"worker {worker} is not alive: its event loop has been blocked for" in text), text
        assert scrape(mport, "/readyz").status_code == 503
    finally:
        t.join(30)
    assert done["r"].status_code == 200 and done["r"].text == "blocked"
    # Back: healthy again, and the lag falls back once the block is out of the window.
    wait_for(lambda: scrape(mport, "/healthz").status_code == 200, 10, message="healthy again")
    wait_for(lambda: lag() < 0.5, 10, message="the lag falls back")
    assert s.get(f"{srv.url}/", timeout=10).status_code == 200
    # The busy/total gauges count an asgi worker's capacity, its --worker-connections.
    assert value(families(mport), "ferricorn_threads_total") == 1000


def test_wsgi_workers_export_no_loop_lag(start_server):
    srv, mport = start_with_metrics(start_server, ["testapp:application", "-w", "1"])
    wait_for(lambda: len(srv.children()) == 1, 10, message="a worker")
    assert "ferricorn_asgi_event_loop_lag_seconds" not in scrape(mport).text


def test_an_oom_kill_is_counted_as_oom(start_server, memory_cgroup):
    tasks = os.path.join(memory_cgroup, "cgroup.procs")
    srv, mport = start_with_metrics(start_server, ["-w", "1", "stuck"], wrap_cgroup=tasks)
    (worker,) = srv.wait_workers(1)
    with pytest.raises(requests.RequestException):
        requests.get(srv.url + "/alloc?mb=1000", timeout=30)
    srv.wait_log(rf"Worker \(pid:{worker}\) was sent SIGKILL!", timeout=30)

    def restarts(cause):
        return value(families(mport), "ferricorn_worker_restarts", "_total", cause=cause)

    wait_for(lambda: restarts("oom") == 1, 15, message="the OOM kill counted")
    assert restarts("outside_kill") == 0 and restarts("crash") == 0 and restarts("timeout") == 0
    srv.stop()


def _unix_get(path, target):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        c.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    return data.decode()


def test_usr2_new_master_serves_the_metrics(start_server, tmp_short):
    unix = os.path.join(tmp_short, "m.sock")
    srv, mport = start_with_metrics(start_server, ["stuck:application", "-w", "1"])
    # A second server with a unix metrics listener: the file must outlive the old master.
    usrv = start_server(["stuck:application", "-w", "1", "--metrics-bind", f"unix:{unix}"])
    wait_for(lambda: is_socket(unix), 10, message="unix metrics listener")
    masters = []
    try:
        for s in (srv, usrv):
            s.wait_workers(1)
            s.signal(signal.SIGUSR2)
            s.wait_log(r"Metrics listening at .* taken over from the master that started this one",
                       timeout=20)
            new = wait_for(lambda: (p := ctl_json(s, "show", "stats")["pid"]) != s.pid and p, 20,
                           message="the new master answers")
            masters.append(new)
            s.wait_workers(2, timeout=20)
            # The old master goes; the new one goes on serving the same address.
            assert s.stop() == 0
            s.wait_log(r"Master has been promoted\.")
        assert "Metrics address" not in srv.log_text()
        new_kids = lambda: [int(x) for x in subprocess.run(
            ["pgrep", "-P", str(masters[0])], capture_output=True, text=True).stdout.split()]
        kids = wait_for(lambda: (k := new_kids()) and k, 10, message="the new master's worker")
        fams = families(mport)
        rss = samples(fams, "ferricorn_worker_rss_bytes")
        assert sorted(int(x.labels["pid"]) for x in rss) == sorted(kids)
        assert value(fams, "ferricorn_up") == 1
        assert scrape(mport, "/readyz").status_code == 200
        assert is_socket(unix)
        reply = _unix_get(unix, "/metrics")
        assert reply.startswith("HTTP/1.1 200") and "ferricorn_up 1" in reply, reply[:300]
    finally:
        for m in masters:
            stop_pid(m, timeout=20)
    assert not os.path.exists(unix)


def test_slow_requests_and_starvation_seconds(start_server):
    srv, mport = start_with_metrics(
        start_server, ["testapp:application", "-w", "1", "--slow-request-threshold", "1"])
    # One thread, two requests of 2.5 s at once: the second waits the whole first one.
    threads = [threading.Thread(target=lambda: requests.get(f"{srv.url}/sleep?s=2.5", timeout=20))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    wait_for(lambda: value(families(mport), "ferricorn_requests_waiting", where="worker")
             + value(families(mport), "ferricorn_requests_waiting", where="backlog") >= 1, 5,
             message="a request waiting")
    for t in threads:
        t.join()
    fams = wait_for(lambda: value(f := families(mport), "ferricorn_slow_requests", "_total") == 2
                    and f, 10, message="both slow")
    assert value(fams, "ferricorn_starvation_seconds", "_total") >= 1.0


def test_loopback_calls_are_counted(start_server):
    port, mport = free_port(), free_port()
    srv = start_server(["-w", "1", "--timeout", "20", "--metrics-bind", f"127.0.0.1:{mport}",
                        "selfcall:app"],
                       env={"SELF_URL": f"http://127.0.0.1:{port}", "CALL_TIMEOUT": "10"},
                       port=port)
    wait_for(lambda: _accepts(mport), 10, message="metrics listener")
    r = requests.post(f"{srv.url}/call?via=requests&depth=1", timeout=30)
    assert r.status_code == 201, r.text  # the view's own status
    wait_for(lambda: value(families(mport), "ferricorn_loopback_calls", "_total") == 1, 10,
             message="the loopback call counted")
