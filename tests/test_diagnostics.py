"""Never hang silently: what ferricorn does and logs when a request runs past --timeout, and when a
worker is killed (by the master, by the kernel's OOM killer, or by someone else)."""

import os
import re
import signal
import threading
import time

import pytest
import requests

from conftest import APPS_DIR, free_port, raw_request

pytestmark = pytest.mark.ferricorn_only


def _assert_timeout_forensics(srv, worker, path, frame):
    """The log keeps gunicorn's line and adds the request and the stuck thread's stack."""
    srv.wait_log(rf"\[CRITICAL\] WORKER TIMEOUT \(pid:{worker}\)")
    log = srv.log_text()
    after = log[log.index("WORKER TIMEOUT"):]
    assert re.search(rf"Request exceeded --timeout 2s: GET {re.escape(path)} from 127\.0\.0\.1:\d+", after), log
    assert "stuck.py" in after and frame in after, log
    assert "memory" not in log.lower(), log


@pytest.mark.parametrize("path,frame", [
    ("/sleep?s=30", "sleeping_view"),
    ("/recv", "blocked_in_recv"),
    ("/swallow?s=30", "swallowing_loop"),
], ids=["time.sleep", "socket.recv", "swallows-BaseException"])
def test_sync_request_past_timeout_gets_504_and_the_worker_is_replaced(start_server, path, frame):
    srv = start_server(["-w", "1", "--timeout", "2", "--graceful-timeout", "5", "stuck"])
    (worker,) = srv.wait_workers(1)
    started = time.monotonic()
    r = raw_request(srv.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=20)
    elapsed = time.monotonic() - started
    assert r.status == 504, r
    assert dict((k.lower(), v) for k, v in r.headers)["connection"].lower() == "close"
    assert b"timeout" in r.body
    assert elapsed < 10, elapsed
    _assert_timeout_forensics(srv, worker, path, frame)
    # A new worker takes over and serves.
    pids = srv.wait_workers(2)
    assert pids[-1] != worker
    assert requests.get(srv.url + "/", timeout=10).status_code == 200


def _stuck_then_other(srv, stuck_path, pause, other_path):
    """GET `stuck_path`, then after `pause` seconds `other_path`, each from its own thread; returns
    {"stuck": status, "other": status}."""
    results = {}

    def call(name, path):
        try:
            results[name] = requests.get(srv.url + path, timeout=20).status_code
        except requests.RequestException as e:
            results[name] = repr(e)

    stuck = threading.Thread(target=call, args=("stuck", stuck_path))
    stuck.start()
    time.sleep(pause)
    other = threading.Thread(target=call, args=("other", other_path))
    other.start()
    stuck.join(20)
    other.join(20)
    return results


def test_gthread_timeout_spares_the_other_threads(start_server):
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "2", "--timeout", "2",
                        "--graceful-timeout", "10", "stuck"])
    (worker,) = srv.wait_workers(1)
    # The other request is shorter than the timeout, but still running when the stuck request's timeout
    # fires at ~2 s and the worker starts to retire: it must finish normally.
    results = _stuck_then_other(srv, "/sleep?s=30", 0.8, "/sleep?s=1.8")
    assert results == {"stuck": 504, "other": 200}, results
    _assert_timeout_forensics(srv, worker, "/sleep?s=30", "sleeping_view")
    pids = srv.wait_workers(2)
    assert pids[-1] != worker
    assert requests.get(srv.url + "/", timeout=10).status_code == 200


def test_timeout_answer_is_the_access_line(start_server):
    """The 504 sent for --timeout has its access line; the view that returns after it (while the retiring
    worker finishes another request) sent nothing, so it adds no line of its own."""
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "2", "--timeout", "5",
                        "--graceful-timeout", "10", "--access-logfile", "-", "stuck"])
    (worker,) = srv.wait_workers(1)
    # The other request is within the timeout and keeps the retiring worker alive until after the stuck
    # view returns (5.5 s).
    results = _stuck_then_other(srv, "/sleep?s=5.5", 2, "/sleep?s=4")
    assert results == {"stuck": 504, "other": 200}, results
    srv.wait_log(rf"Worker exiting \(pid: {worker}\)")
    access = srv.stdout_text()
    late_lines = [line for line in access.splitlines() if "/sleep?s=5.5 " in line]
    assert len(late_lines) == 1, access
    assert re.search(r'"GET /sleep\?s=5\.5 HTTP/1\.1" 504 \d+ ', late_lines[0]), access
    assert re.search(r'"GET /sleep\?s=4 HTTP/1\.1" 200 ', access), access


def test_outside_kill_is_not_blamed_on_memory(start_server):
    srv = start_server(["-w", "1", "stuck"])
    (worker,) = srv.wait_workers(1)
    os.kill(worker, signal.SIGKILL)
    srv.wait_log(rf"Worker \(pid:{worker}\) was sent SIGKILL!")
    srv.wait_workers(2)
    log = srv.log_text()
    line = next(l for l in log.splitlines() if f"Worker (pid:{worker}) was sent SIGKILL!" in l)
    assert "another process killed it" in line, line
    assert "Perhaps out of memory" not in log
    assert re.search(r"last RSS \d+\.\d MiB|RSS not sampled yet", line), line
    assert "no request in flight" in line, line


def test_oom_kill_is_told_apart(start_server, memory_cgroup):
    tasks = os.path.join(memory_cgroup, "cgroup.procs")
    # The server starts inside the cgroup: a wrapper writes its own pid there, then execs the server.
    srv = start_server(["-w", "1", "stuck"], wrap_cgroup=tasks)
    (worker,) = srv.wait_workers(1)
    with pytest.raises(requests.RequestException):
        requests.get(srv.url + "/alloc?mb=1000", timeout=30)
    srv.wait_log(rf"Worker \(pid:{worker}\) was sent SIGKILL!", timeout=30)
    log = srv.log_text()
    line = next(l for l in log.splitlines() if f"Worker (pid:{worker}) was sent SIGKILL!" in l)
    assert "Out of memory: the kernel's OOM killer ended it" in line, log
    assert re.search(r"request in flight: GET /alloc\?mb=1000 from 127\.0\.0\.1:\d+", line), line
    assert re.search(r"last RSS \d+\.\d MiB|RSS not sampled yet", line), line
    srv.stop()


# --- loopback calls ----------------------------------------------------------------------------------

SEED_APP = os.path.join(os.path.dirname(APPS_DIR), "..", "examples", "seed_app")


def _call_hello(srv, results, i):
    try:
        r = requests.post(srv.url + "/call_hello_world", timeout=20)
        results[i] = (r.status_code, r.json())
    except Exception as e:  # recorded and asserted below
        results[i] = (repr(e), None)


@pytest.mark.parametrize("args,calls", [
    (["-w", "1", "-k", "sync"], 1),
    (["-w", "2", "-k", "sync"], 4),
    (["-w", "1", "-k", "gthread", "--threads", "2"], 4),
], ids=["one-sync-worker", "two-sync-workers-four-calls", "gthread-all-threads-busy"])
def test_loopback_calls_never_deadlock(start_server, args, calls):
    # The seed app calls http://localhost:$PORT: give it the port the server listens on.
    port = free_port()
    srv = start_server(args + ["--timeout", "30", "app:site"], app_dir=os.path.abspath(SEED_APP),
                       env={"PORT": str(port)}, port=port)
    srv.wait_workers(1)
    results = {}
    threads = [threading.Thread(target=_call_hello, args=(srv, results, i)) for i in range(calls)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    elapsed = time.monotonic() - started
    assert len(results) == calls, results
    for status, body in results.values():
        assert status == 201, results
        assert "session_id" in body
    # Far from the 30 s timeout: nothing waited for a worker to be killed.
    assert elapsed < 10, elapsed
    log = srv.log_text()
    assert "WORKER TIMEOUT" not in log
    warning = re.search(r"\[WARNING\] Loopback call: POST /hello_world from 127\.0\.0\.1:\d+ was sent to "
                        r"this server by its own request POST /call_hello_world \(worker \d+", log)
    assert warning, log
    assert "--workers" in log and "--threads" in log


# --- slow requests, starvation, slow boots, memory limits --------------------------------------------


def test_slow_request_is_logged_with_its_stack_and_continues(start_server):
    srv = start_server(["-w", "1", "--slow-request-threshold", "1", "--timeout", "30", "stuck"])
    srv.wait_workers(1)
    r = requests.get(srv.url + "/sleep?s=2", timeout=10)
    assert r.status_code == 200  # the request was not cut short
    log = srv.log_text()
    m = re.search(r"\[WARNING\] Slow request: GET /sleep\?s=2 from 127\.0\.0\.1:\d+ still running after "
                  r"1\.\ds \(--slow-request-threshold 1s", log)
    assert m, log
    after = log[m.start():]
    assert "stuck.py" in after and "sleeping_view" in after, log
    assert len(re.findall("Slow request:", log)) == 1
    assert "WORKER TIMEOUT" not in log


def test_starvation_is_reported_while_it_happens(start_server):
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "2", "--max-threads", "2", "--timeout", "30",
                        "stuck"])
    srv.wait_workers(1)
    results = []

    def call(path):
        try:
            results.append(requests.get(srv.url + path, timeout=20).status_code)
        except requests.RequestException as e:
            results.append(repr(e))

    slow = [threading.Thread(target=call, args=("/sleep?s=4",)) for _ in range(2)]
    for t in slow:
        t.start()
    time.sleep(0.5)
    waiting = [threading.Thread(target=call, args=("/",)) for _ in range(3)]
    for t in waiting:
        t.start()
    srv.wait_log(r"\[WARNING\] All 2 worker threads are busy", timeout=10)
    for t in slow + waiting:
        t.join(20)
    assert results.count(200) == 5, results  # the waiting requests were served afterwards
    log = srv.log_text()
    line = next(l for l in log.splitlines() if "worker threads are busy" in l)
    assert re.search(r"and [1-9]\d* connections are waiting", line), line
    assert line.count("GET /sleep?s=4") == 2, line
    assert len(re.findall("worker threads are busy", log)) == 1  # rate-limited


def test_slow_boot_is_not_called_a_request_timeout(start_server):
    srv = start_server(["-w", "1", "--timeout", "2", "slowboot"], env={"SLOW_BOOT_SECONDS": "30"},
                       ready=False)
    srv.wait_log(r"is still loading the app after --timeout 2s: a slow boot", timeout=20)
    srv.wait_log(r"slowboot\.py", timeout=10)
    log = srv.log_text()
    after = log[log.index("a slow boot"):]
    assert "_load_models" in after, log
    assert "WORKER TIMEOUT" not in log
    assert "memory" not in log.lower()


def test_boot_time_is_logged(start_server):
    srv = start_server(["-w", "1", "stuck"])
    (worker,) = srv.wait_workers(1)
    srv.wait_log(rf"Worker \(pid:{worker}\) loaded the app stuck in \d+\.\d{{3}}s")


def test_max_worker_memory_recycles_gracefully(start_server):
    srv = start_server(["-w", "1", "--max-worker-memory", "150", "stuck"])
    (worker,) = srv.wait_workers(1)
    # The request that pushes the worker past the limit still gets its answer.
    r = requests.get(srv.url + "/alloc?mb=200", timeout=30)
    assert r.status_code == 200 and r.text == "allocated 200 MiB\n"
    srv.wait_log(rf"Worker \(pid:{worker}\) uses \d+\.\d MiB, above --max-worker-memory 150 MiB", timeout=10)
    pids = srv.wait_workers(2)
    assert pids[-1] != worker
    assert requests.get(srv.url + "/pid", timeout=10).text == str(pids[-1])
    assert "SIGKILL" not in srv.log_text()
