"""The master process: boot failures, dead workers, signals and the worker timeout."""

import os
import signal
import threading
import time
from urllib.parse import quote

import pytest
import requests

from conftest import child_pids, get, pid_alive, raw_exchange, wait_for


def _pid_of_worker(srv):
    return int(get(srv.port, "/pid").body)


def _start_slow_request(srv, seconds, marker_path):
    """Send /sleep in a thread; return (thread, result dict) once the app has started it."""
    result = {}

    def run():
        try:
            r = requests.get(srv.url + f"/sleep?s={seconds}&mark={quote(marker_path)}", timeout=30)
            result["status"] = r.status_code
            result["body"] = r.json()
        except Exception as e:  # inspected by the test
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: os.path.exists(marker_path) or "error" in result, 10,
             message="the slow request to reach the app")
    assert "error" not in result, result
    return t, result


def test_app_import_error_stops_master(start_server):
    srv = start_server(["boom"], ready=False)
    code = srv.wait(30)
    log = srv.log_text()
    assert code == 3, f"exit code {code}; log:\n{log}"
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom: this module fails at import time" in log
    assert "Worker failed to boot." in log
    assert not child_pids(srv.pid)


def test_worker_killed_is_replaced(start_server):
    srv = start_server(["-w", "1", "testapp"])
    (old,) = srv.wait_workers(1)
    assert _pid_of_worker(srv) == old
    os.kill(old, signal.SIGKILL)
    srv.wait_log(rf"Worker \(pid:{old}\) was sent SIGKILL!")
    pids = srv.wait_workers(2)
    new = pids[-1]
    assert new != old
    wait_for(lambda: not pid_alive(old), 5, message="the killed worker to be reaped")
    # requests work and are served by the replacement
    assert _pid_of_worker(srv) == new
    assert get(srv.port, "/hello").body == b"Hello, World!"
    assert srv.proc.poll() is None


def test_worker_exit_code_is_logged_and_replaced(start_server):
    srv = start_server(["-w", "1", "testapp"])
    (old,) = srv.wait_workers(1)
    # the worker dies inside the view: the client gets no response
    data = raw_exchange(srv.port, b"GET /exit?code=7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not data.startswith(b"HTTP/1.1 200"), data
    srv.wait_log(rf"Worker \(pid:{old}\) exited with code 7")
    pids = srv.wait_workers(2)
    assert pids[-1] != old
    assert _pid_of_worker(srv) == pids[-1]
    assert srv.proc.poll() is None


def test_term_finishes_inflight_request(start_server, marker_path):
    srv = start_server(["-w", "1", "--graceful-timeout", "10", "testapp"])
    (worker,) = srv.wait_workers(1)
    t, result = _start_slow_request(srv, 1.0, marker_path)
    srv.signal(signal.SIGTERM)
    t.join(20)
    assert result.get("status") == 200, result
    assert result["body"]["pid"] == worker
    code = srv.wait(15)
    log = srv.log_text()
    assert code == 0, log
    assert "Handling signal: term" in log
    assert "Shutting down: Master" in log
    assert not pid_alive(worker)


@pytest.mark.parametrize("sig,name", [(signal.SIGINT, "int"), (signal.SIGQUIT, "quit")])
def test_quick_stop_does_not_wait(start_server, marker_path, sig, name):
    srv = start_server(["-w", "1", "--graceful-timeout", "20", "testapp"])
    (worker,) = srv.wait_workers(1)
    t, result = _start_slow_request(srv, 10.0, marker_path)
    srv.signal(sig)
    # a quick stop ends well before the 10 s request (or the 20 s graceful timeout) would
    code = srv.wait(8)
    assert code == 0, f"exit code {code}; log:\n{srv.log_text()}"
    t.join(15)
    assert result.get("status") != 200, result
    log = srv.log_text()
    assert f"Handling signal: {name}" in log
    assert "Shutting down: Master" in log
    wait_for(lambda: not pid_alive(worker), 5, message="the worker to be gone")


def test_worker_timeout(start_server):
    srv = start_server(["-w", "1", "--timeout", "2", "--graceful-timeout", "1", "testapp"])
    (old,) = srv.wait_workers(1)
    t0 = time.monotonic()
    data = raw_exchange(srv.port, b"GET /sleep?s=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        timeout=20)
    # the request is cut off by the timeout, long before the view would have returned
    assert time.monotonic() - t0 < 15
    assert b'"pid"' not in data
    srv.wait_log(rf"\[CRITICAL\] WORKER TIMEOUT \(pid:{old}\)")
    pids = srv.wait_workers(2)
    assert pids[-1] != old
    wait_for(lambda: not pid_alive(old), 5, message="the stuck worker to be gone")
    assert _pid_of_worker(srv) == pids[-1]


def test_quick_request_after_timeout_kill_uses_fresh_worker(start_server):
    # two workers: one is killed for its stuck request while the other keeps serving
    srv = start_server(["-w", "2", "--timeout", "2", "testapp"])
    pids = srv.wait_workers(2)
    t = threading.Thread(target=raw_exchange, args=(
        srv.port, b"GET /sleep?s=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 20))
    t.start()
    try:
        for _ in range(5):
            assert get(srv.port, "/hello").status == 200
        line = srv.wait_log(r"WORKER TIMEOUT \(pid:(\d+)\)")
        assert int(line[0]) in pids
        srv.wait_workers(3)
        assert get(srv.port, "/hello").status == 200
    finally:
        t.join(25)


@pytest.mark.ferricorn_only
def test_worker_timeout_gthread(start_server):
    # ferricorn times requests out for every worker class (gunicorn's gthread never does)
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "2", "--timeout", "2",
                        "--graceful-timeout", "1", "testapp"])
    (old,) = srv.wait_workers(1)
    data = raw_exchange(srv.port, b"GET /sleep?s=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        timeout=20)
    assert b'"pid"' not in data
    srv.wait_log(rf"\[CRITICAL\] WORKER TIMEOUT \(pid:{old}\)")
    pids = srv.wait_workers(2)
    assert _pid_of_worker(srv) == pids[-1] != old


def test_worker_timeout_names_the_stuck_request(start_server):
    # after the WORKER TIMEOUT line the log names the request that was running and shows the
    # Python stack of the stuck view
    srv = start_server(["-w", "1", "--timeout", "2", "--graceful-timeout", "1", "testapp"])
    (old,) = srv.wait_workers(1)
    raw_exchange(srv.port, b"GET /sleep?s=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                 timeout=20)
    srv.wait_log(rf"WORKER TIMEOUT \(pid:{old}\)")
    srv.wait_workers(2)
    log = srv.log_text()
    after = log[log.index("WORKER TIMEOUT"):]
    assert "GET /sleep" in after, log
    assert "testapp.py" in after, log  # a stack frame of the view that was stuck
