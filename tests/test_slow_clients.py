"""Slow and hostile clients: trickled headers, stalled bodies, clients that stop reading, and heads that
never end. None of them may hold a Python thread past `--timeout`, grow a worker's memory, or keep
ordinary clients waiting.
"""

import json
import os
import socket
import threading
import time

import pytest

from conftest import RawConnection, rss

MIB = 1 << 20


def hello(port, timeout=20):
    """One ordinary request on a new connection; returns (status, seconds)."""
    t0 = time.monotonic()
    with RawConnection(port, timeout=timeout) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
    return r.status, time.monotonic() - t0


def worker_pid(port):
    with RawConnection(port) as c:
        c.send(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return json.loads(c.read_response().body)["pid"]


# ----------------------------------------------------------------------------------------------
# 200 trickling clients


SLOW_CLIENTS = 200
ORDINARY = 100
TRICKLE_LINES = 12  # one per second, then the blank line


def test_trickling_headers_do_not_delay_others(start_server):
    """200 connections send their header one line a second for 12 s; meanwhile 100 ordinary requests
    (one every 80 ms, from 2 s on) on 2 sync workers are all answered, with a p99 under 250 ms. Then
    every slow client finishes its request and is answered too."""
    srv = start_server(["-w", "2", "-k", "sync", "--worker-connections", "300", "--timeout", "30",
                        "--backlog", "512", "bigio"])
    srv.wait_workers(2)
    for _ in range(4):
        assert hello(srv.port)[0] == 200  # both workers are up

    slow = []
    for i in range(SLOW_CLIENTS):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET /hello?slow=%d HTTP/1.1\r\n" % i)
        slow.append(s)
    trickle_start = time.monotonic()
    trickle_errors = []
    finished = threading.Event()

    def trickle():
        try:
            for line in range(TRICKLE_LINES):
                time.sleep(max(0.0, trickle_start + line + 1 - time.monotonic()))
                for s in slow:
                    s.sendall(b"X-Line-%d: %s\r\n" % (line, b"v" * 20))
            for s in slow:
                s.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        except OSError as e:
            trickle_errors.append(repr(e))
        finished.set()

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        latencies = [None] * ORDINARY
        failures = []

        def ordinary(k):
            time.sleep(max(0.0, trickle_start + 2.0 + 0.08 * k - time.monotonic()))
            try:
                status, took = hello(srv.port, timeout=8)
                latencies[k] = took
                if status != 200:
                    failures.append(status)
            except Exception as e:  # reported below
                failures.append(f"request {k}: {e!r}")

        threads = [threading.Thread(target=ordinary, args=(k,), daemon=True) for k in range(ORDINARY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, trickle_start + 20 - time.monotonic()))
        ordinary_done = time.monotonic()
        assert not failures, f"{len(failures)} failed: {failures[:3]}"
        done = sorted(x for x in latencies if x is not None)
        assert len(done) == ORDINARY
        p99 = done[int(0.99 * len(done)) - 1]
        ms = [round(x * 1000) for x in done]
        assert p99 < 0.25, f"p99 {p99 * 1000:.0f} ms; median {ms[len(ms) // 2]} ms; slowest {ms[-5:]}"
        # all of it happened while the 200 slow clients were still trickling
        assert ordinary_done - trickle_start < TRICKLE_LINES and not finished.is_set()

        trickler.join(30)
        assert not trickle_errors, trickle_errors[:3]
        answered = 0
        deadline = time.monotonic() + 20
        for s in slow:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            answered += data.startswith(b"HTTP/1.1 200 ")
        assert answered == SLOW_CLIENTS
    finally:
        for s in slow:
            s.close()


# ----------------------------------------------------------------------------------------------
# a head that never ends


@pytest.mark.parametrize("kind", [["-k", "sync"], ["-k", "gthread", "--threads", "2"]],
                         ids=["sync", "gthread"])
def test_header_timeout_cuts_off_a_head_that_never_ends(start_server, tmp_path, kind):
    """A client that keeps sending header bytes (one every 0.3 s) but never the blank line is cut off
    about --timeout after it began, however busy it looks, and the app never sees it."""
    log = str(tmp_path / "calls.jsonl")
    srv = start_server(["-w", "1", *kind, "--timeout", "2", "--keep-alive", "1", "recorder"],
                       env={"RECORDER_LOG": log})
    with RawConnection(srv.port, timeout=20) as c:
        port = c.sock.getsockname()[1]
        c.send(b"GET /never-finished HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed = None
        for i in range(60):
            try:
                c.send(b"X-%d: y\r\n" % i)
            except OSError:
                closed = time.monotonic() - t0
                break
            c.sock.settimeout(0.3)
            try:
                if c.sock.recv(65536) == b"":
                    closed = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = time.monotonic() - t0
                break
    assert closed is not None, "the server kept the trickling client for 18 s"
    assert 1.5 < closed < 6, f"cut off after {closed:.1f}s with --timeout 2"
    assert not os.path.exists(log) or all(json.loads(line)["port"] != port
                                          for line in open(log).read().splitlines())
    # and the worker serves others
    with RawConnection(srv.port) as c:
        c.send(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.read_response().status == 200


# ----------------------------------------------------------------------------------------------
# bodies that stall, responses nobody reads


TIMEOUT = 3


@pytest.fixture
def one_sync_worker(start_server):
    srv = start_server(["-w", "1", "-k", "sync", "--timeout", str(TIMEOUT), "--graceful-timeout", "2",
                        "bigio"])
    srv.wait_workers(1)
    return srv


@pytest.mark.parametrize("sent,trickle", [
    (16 * 1024, False), (256 * 1024, False), (16 * 1024, True), (256 * 1024, True),
], ids=["stall-before-dispatch", "stall-while-app-reads", "trickle-before-dispatch",
        "trickle-while-app-reads"])
def test_slow_body_frees_the_worker(one_sync_worker, sent, trickle):
    """A client announces 4 MiB of body, sends `sent` bytes, then stalls or trickles 64 bytes every
    0.25 s. Below 64 KiB the app has not been called yet; past it the app is blocked reading. Either way
    the sync worker is free again within --timeout (plus a little), other clients get answers, and the
    slow client is disconnected."""
    srv = one_sync_worker
    with RawConnection(srv.port, timeout=30) as slow:
        slow.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 * MIB))
        slow.send(b"z" * sent)
        t0 = time.monotonic()
        stop = threading.Event()

        def dribble():
            while trickle and not stop.wait(0.25) and time.monotonic() - t0 < TIMEOUT + 8:
                try:
                    slow.sock.sendall(b"z" * 64)
                except OSError:
                    return

        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        try:
            time.sleep(0.3)
            status, _ = hello(srv.port, timeout=TIMEOUT + 10)
            waited = time.monotonic() - t0
            assert status == 200
            assert waited < TIMEOUT + 3, f"the slow upload held the worker for {waited:.1f}s"
            rest = slow.read_until_close()
            assert time.monotonic() - t0 < TIMEOUT + 5, "the slow client was not disconnected"
            assert not rest.startswith(b"HTTP/1.1 200"), rest[:100]
        finally:
            stop.set()
            dribbler.join(5)


def test_client_that_stops_reading(one_sync_worker):
    """A client asks for 1 GiB and reads none of it. The worker holds a bounded buffer (its RSS does not
    follow the generator) and the Python thread is free again within --timeout (plus a little)."""
    srv = one_sync_worker
    pid = worker_pid(srv.port)
    base = rss(pid)
    reader = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        reader.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (1 << 30))
        t0 = time.monotonic()
        peak = base
        while time.monotonic() - t0 < 1.5:
            peak = max(peak, rss(pid))
            time.sleep(0.05)
        assert peak - base < 64 * MIB, f"worker RSS grew by {(peak - base) / MIB:.0f} MiB"
        status, _ = hello(srv.port, timeout=TIMEOUT + 15)
        waited = time.monotonic() - t0
        assert status == 200
        assert waited < TIMEOUT + 3, f"an unread response held the worker for {waited:.1f}s"
    finally:
        reader.close()
