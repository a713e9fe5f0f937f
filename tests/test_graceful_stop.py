"""A graceful stop (TERM, HUP) that runs out of --graceful-timeout while requests still run: their
clients get an answer (503 with Connection: close, in the access and error logs) where the worker can
still send one, and the log says what happened — which requests were cut off, with their stacks, and,
for a worker that could not stop by itself, that the master killed it. Never "another process killed
it" for a kill the master sent.

Repeats: FERRICORN_STRESS=N (see conftest.repeats)."""

import os
import re
import signal
import threading
import time

import pytest

from conftest import RawConnection, pid_alive, repeats, wait_for

pytestmark = [pytest.mark.ferricorn_only, pytest.mark.stress]

GRACEFUL = 2


class Call:
    """One request on its own raw connection, sent from a thread; the result is kept for the test."""

    def __init__(self, port, target, conn=None, timeout=20):
        self.port = port
        self.target = target
        self.conn = conn
        self.timeout = timeout
        self.response = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn = self.conn or RawConnection(self.port, timeout=self.timeout)
        try:
            conn.send(f"GET {self.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self.response = conn.read_response()
        except Exception as e:  # inspected by the test
            self.error = e
        finally:
            if self.conn is None:
                conn.close()

    def result(self):
        self.thread.join(self.timeout + 5)
        assert not self.thread.is_alive(), f"{self.target}: no answer"
        return self.response, self.error


def _marked(tmp_path, name):
    return str(tmp_path / name)


def _wait_started(*marks):
    for m in marks:
        wait_for(lambda m=m: os.path.exists(m), 15, message=f"the request marking {m} to start")


def _assert_503(call):
    r, err = call.result()
    assert err is None, (call.target, err)
    assert r.status == 503, (call.target, r)
    assert r.header("Connection").lower() == "close", r
    assert b"graceful timeout" in r.body, r


def _access_503(srv, target):
    return re.search(rf'"GET {re.escape(target)} HTTP/1\.1" 503 \d+ ', srv.stdout_text())


@pytest.mark.parametrize("args,busy,queued", [
    (["-w", "1"], 1, True),
    (["-w", "2"], 2, False),
    (["-w", "1", "-k", "gthread", "--threads", "2", "--max-threads", "2"], 2, True),
    (["-w", "2", "-k", "gthread", "--threads", "2", "--max-threads", "2"], 4, False),
], ids=["sync-w1", "sync-w2", "gthread-w1", "gthread-w2"])
def test_term_answers_the_requests_still_running_with_503(start_server, tmp_path, args, busy, queued):
    """TERM while every thread runs a long request (and, with one worker, a kept-alive connection has a
    request queued behind them): each client gets a 503 just before the deadline, the log names each
    request with its stack, the workers exit by themselves and nothing is SIGKILLed."""
    for i in range(repeats(2)):
        srv = start_server(args + ["--graceful-timeout", str(GRACEFUL), "--timeout", "60",
                                   "--keep-alive", "10", "--access-logfile", "-", "stuck"])
        workers = srv.wait_workers(int(args[1]))
        kept = None
        if queued:
            # A keep-alive client served before the long requests, so its connection is on the worker.
            kept = RawConnection(srv.port, timeout=20)
            kept.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.read_response().status == 200
        marks = [_marked(tmp_path, f"r{i}-{k}") for k in range(busy)]
        long_calls = [Call(srv.port, f"/hold?s=60&mark={m}") for m in marks]
        _wait_started(*marks)
        waiting = Call(srv.port, "/pid?queued=1", conn=kept) if queued else None
        # Let the queued request be read before TERM (read after it, it is queued all the same).
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        for c in long_calls:
            _assert_503(c)
        if waiting:
            _assert_503(waiting)
            kept.close()
        assert srv.wait(15) == 0, srv.log_text()
        log = srv.log_text()
        assert re.search(rf"\[INFO\] Waiting up to --graceful-timeout {GRACEFUL}s for {busy} requests? in "
                         r"flight: GET /hold\?s=60", log), log
        for c in long_calls:
            m = re.search(rf"\[ERROR\] Request cut off at --graceful-timeout {GRACEFUL}s: "
                          rf"GET {re.escape(c.target)} from 127\.0\.0\.1:\d+ \(running for \d+\.\ds, worker "
                          r"\d+, thread \d+\); answered 503 and closed the connection\. Python stack of the "
                          r"thread running it", log)
            assert m, log
            assert "in holding_view" in log[m.end():], log
            assert _access_503(srv, c.target), srv.stdout_text()
        if waiting:
            assert re.search(rf"\[ERROR\] Request cut off at --graceful-timeout {GRACEFUL}s: GET "
                             r"/pid\?queued=1 from 127\.0\.0\.1:\d+ waited \d+\.\ds for a thread and was not "
                             r"run", log), log
            assert _access_503(srv, "/pid?queued=1"), srv.stdout_text()
        # The workers stopped by themselves: no kill, no false diagnosis.
        assert "SIGKILL" not in log and "another process" not in log, log
        for w in workers:
            assert f"Worker exiting (pid: {w})" in log, log
        assert "Shutting down: Master" in log


def test_a_started_response_is_ended_and_said_so(start_server, tmp_path):
    """A response whose head already went out cannot become a 503: the connection is closed at the
    deadline and the log says the response was cut."""
    for i in range(repeats(2)):
        srv = start_server(["-w", "1", "--graceful-timeout", str(GRACEFUL), "stuck"])
        mark = _marked(tmp_path, f"drip{i}")
        conn = RawConnection(srv.port, timeout=20)
        conn.send(f"GET /drip?s=60&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        _wait_started(mark)
        srv.signal(signal.SIGTERM)
        data = conn.read_until_close()
        conn.close()
        assert data.startswith(b"HTTP/1.1 200 OK") and b"first" in data and b"second" not in data, data
        assert srv.wait(15) == 0
        log = srv.log_text()
        assert re.search(r"Request cut off at --graceful-timeout 2s: GET /drip\?s=60\S* from "
                         r"127\.0\.0\.1:\d+ \(running for .*\); its response had begun, so the connection "
                         r"was closed before its end\.", log), log
        assert "SIGKILL" not in log


@pytest.mark.parametrize("workers", [1, 2])
def test_hup_rounds_cut_off_only_what_overstays(start_server, tmp_path, workers):
    """HUP again and again while a long request runs and keep-alive clients keep sending fast ones:
    every long request gets its 503 from the retiring worker, every fast request succeeds, and no worker
    is ever killed."""
    from test_lifecycle import Load

    srv = start_server(["-w", str(workers), "-k", "gthread", "--threads", "2", "--graceful-timeout", "1",
                        "--access-logfile", "-", "stuck"])
    srv.wait_workers(workers)
    rounds = repeats(6)
    with Load(srv.url, clients=3) as load:
        for i in range(rounds):
            mark = _marked(tmp_path, f"hup{i}")
            long_call = Call(srv.port, f"/hold?s=60&round={i}&mark={mark}")
            _wait_started(mark)
            srv.signal(signal.SIGHUP)
            _assert_503(long_call)
            srv.wait_workers(workers * (i + 2), timeout=20)
    assert load.errors == [], (load.errors[:5], srv.log_text())
    assert load.ok > 20
    log = srv.log_text()
    assert len(re.findall(r"Request cut off at --graceful-timeout 1s: GET /hold\?s=60&round=", log)) == rounds
    assert "SIGKILL" not in log and "another process" not in log, log


def test_a_worker_that_cannot_stop_is_killed_by_the_master_and_the_log_says_so(start_server, tmp_path):
    """The backstop: a worker that cannot run its own stop (here stopped with SIGSTOP, as a wedged
    process) is killed at the deadline; the log names the workers still there, what they ran, and that
    the master killed them."""
    for i in range(repeats(2)):
        srv = start_server(["-w", "2", "--graceful-timeout", str(GRACEFUL), "stuck"])
        workers = srv.wait_workers(2)
        mark = _marked(tmp_path, f"wedged{i}")
        call = Call(srv.port, f"/hold?s=60&mark={mark}")
        _wait_started(mark)
        with open(mark) as f:
            busy = int(f.read().split()[0])
        idle = next(w for w in workers if w != busy)
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        srv.signal(signal.SIGTERM)
        assert srv.wait(15) == 0
        r, err = call.result()
        assert r is None  # a stopped worker answers nobody: that is what the log must explain
        log = srv.log_text()
        assert re.search(rf"\[WARNING\] Worker \(pid:{busy}\) did not stop within --graceful-timeout "
                         rf"{GRACEFUL}s: killing it \(requests still running: GET /hold\?s=60\S* from "
                         r"127\.0\.0\.1:\d+, thread 0, running for \d+\.\ds\)", log), log
        assert re.search(rf"\[WARNING\] Worker \(pid:{idle}\) did not stop within --graceful-timeout "
                         rf"{GRACEFUL}s: killing it \(no request in flight\)", log), log
        for w in workers:
            line = next(l for l in log.splitlines() if f"Worker (pid:{w}) was sent SIGKILL!" in l)
            assert f"The master killed it: it did not stop within --graceful-timeout {GRACEFUL}s" in line
        assert "another process" not in log and "Not sent by ferricorn" not in log, log
        for w in workers:
            wait_for(lambda w=w: not pid_alive(w), 5, message="the killed workers to be gone")


@pytest.mark.parametrize("args", [["-w", "1"],
                                  ["-w", "1", "-k", "gthread", "--threads", "2", "--max-threads", "2"]],
                         ids=["sync", "gthread"])
def test_a_request_no_thread_will_run_is_answered_at_once(start_server, tmp_path, args):
    """Every thread of a worker is stuck in a request past --timeout: a request that waits for a thread
    on a kept-alive connection (queued before the timeout, or sent after it) gets 503 right away, not
    after --graceful-timeout, and is never run even when a stuck thread comes back; a new connection is
    served by the replacement."""
    threads = 2 if "gthread" in args else 1
    for i in range(repeats(2)):
        srv = start_server(args + ["--timeout", "2", "--graceful-timeout", "30", "--keep-alive", "5",
                                   "--access-logfile", "-", "stuck"])
        (worker,) = srv.wait_workers(1)
        # `holder` stays idle: its connection keeps the stopping worker there until after the stuck
        # threads come back, so that a request they could wrongly run would run.
        early, late, holder = (RawConnection(srv.port, timeout=15) for _ in range(3))
        for c in (early, late, holder):
            c.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
        # Just past the timeout: the stuck threads come back while the worker still stops.
        marks = [_marked(tmp_path, f"stuck{i}-{k}") for k in range(threads)]
        stuck = [Call(srv.port, f"/hold?s=2.8&mark={m}") for m in marks]
        _wait_started(*marks)
        stuck_at = time.monotonic()
        holder_closed = []
        watcher = threading.Thread(target=lambda: (holder.read_until_close(),
                                                   holder_closed.append(time.monotonic())), daemon=True)
        watcher.start()
        never = [_marked(tmp_path, f"never{i}-{k}") for k in range(2)]
        queued = Call(srv.port, f"/hold?s=0&mark={never[0]}", conn=early, timeout=15)
        srv.wait_log(rf"WORKER TIMEOUT \(pid:{worker}\)", timeout=10)
        sent_late = Call(srv.port, f"/hold?s=0&mark={never[1]}", conn=late, timeout=15)
        for c in stuck:
            r, err = c.result()
            assert err is None and r.status == 504, (r, err)
        for c in (queued, sent_late):
            r, err = c.result()
            assert err is None, err
            assert r.status == 503 and r.header("Connection").lower() == "close", r
            assert b"retry" in r.body, r
        # Retried on a new connection: the replacement serves it.
        retry = RawConnection(srv.port, timeout=15)
        retry.send(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = retry.read_response()
        assert r.status == 200 and int(r.body) != worker, r
        # The stuck threads returned (at 2.8 s) before the worker was gone: neither request ran.
        srv.wait_log(rf"Worker exiting \(pid: {worker}\)", timeout=15)
        watcher.join(10)
        assert holder_closed and holder_closed[0] - stuck_at > 3.0, "premise: the worker outlived the stuck views"
        assert not any(os.path.exists(n) for n in never), srv.log_text()
        log = srv.log_text()
        assert len(re.findall(r"\[ERROR\] Request not run: GET /hold\?s=0&mark=\S+ from 127\.0\.0\.1:\d+ came "
                              r"in while every thread of this stopping worker is stuck in a request past "
                              r"--timeout", log)) == 2, log
        assert len(re.findall(r'"GET /hold\?s=0&mark=\S+ HTTP/1\.1" 503 ', srv.stdout_text())) == 2
        for c in (early, late, holder, retry):
            c.close()
        srv.cleanup()


@pytest.mark.parametrize("cause", ["max-requests", "timeout"])
def test_a_worker_stopping_by_itself_is_replaced_at_once(start_server, tmp_path, cause):
    """A worker that begins to stop by itself (its --max-requests-th request, or a request past
    --timeout) while a long request runs: kept-alive clients still send it requests on the way out, and
    the master must still see it stopping and start the replacement now, not when the long request
    ends."""
    from test_lifecycle import Load

    extra = ["--max-requests", "30"] if cause == "max-requests" else ["--timeout", "2"]
    for i in range(repeats(2)):
        srv = start_server(["-w", "1", "-k", "gthread", "--threads", "4", "--graceful-timeout", "20",
                            *extra, "stuck"])
        (first,) = srv.wait_workers(1)
        mark = _marked(tmp_path, f"self{i}")
        # Runs past the timeout in the timeout case; in both it outlasts the check below.
        long_call = Call(srv.port, f"/hold?s=8&mark={mark}", timeout=30)
        _wait_started(mark)
        with Load(srv.url, clients=3, limit_s=30) as load:
            if cause == "max-requests":
                srv.wait_log(rf"\[{first}\] \[INFO\] Autorestarting worker after current request\.", timeout=15)
            else:
                srv.wait_log(rf"WORKER TIMEOUT \(pid:{first}\)", timeout=15)
            pids = srv.wait_workers(2, timeout=5)
            wait_for(lambda: str(pids[-1]) in load.pids, 5, message="the replacement to serve")
        if cause == "max-requests":
            assert long_call.thread.is_alive()  # still running: the worker was replaced meanwhile
        else:
            r, err = long_call.result()
            assert err is None and r.status == 504, (r, err)
        assert load.errors == [], load.errors[:5]
        srv.cleanup()
