"""A sync worker's one app thread drives the worker's I/O itself between requests and calls the app
inline (docs/architecture.md, "The path of one request"). What that must not cost, the way users hit it
on one worker: many kept-alive connections and slow clients held while the app runs, a loopback call
served while a request waits for it, other connections read and answered around a long request, and
the response written on time after a short one — repeated, after other traffic.
"""

import os
import socket
import threading
import time

import pytest
import requests

from conftest import RawConnection, free_port, repeats


def _trickle(port, stop, results):
    """A slow client: sends a request head a byte every 50 ms, then reads the answer."""
    data = b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            for b in data:
                if stop.is_set():
                    break
                s.sendall(bytes([b]))
                time.sleep(0.05)
            got = s.recv(4096)
            results.append(got.split(b"\r\n", 1)[0])
    except OSError as e:
        results.append(repr(e))


def test_keepalive_slow_clients_and_loopback_on_one_sync_worker(start_server):
    """-w 1 sync: 30 kept-alive connections and 4 slow clients held open while a view calls its own
    server over HTTP, 20 times: every loopback call is answered (the overflow lane), the slow clients get
    their answer, and every kept-alive connection still serves its next request."""
    port = free_port()
    env = {"SELF_URL": f"http://127.0.0.1:{port}", "CALL_TIMEOUT": "15"}
    srv = start_server(["-w", "1", "-k", "sync", "--timeout", "8", "--keep-alive", "60",
                        "selfcall:app"], env=env, port=port)
    kept = [RawConnection(port) for _ in range(30)]
    try:
        for c in kept:
            c.send(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
        stop = threading.Event()
        slow_results = []
        slow = [threading.Thread(target=_trickle, args=(port, stop, slow_results)) for _ in range(4)]
        for t in slow:
            t.start()
        for i in range(repeats(20)):
            r = requests.post(f"{srv.url}/call?via=requests&depth=1", timeout=15)
            assert r.status_code == 201, (i, r.text, srv.log_text())
            c = kept[i % len(kept)]
            c.send(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
        for t in slow:
            t.join(timeout=20)
        stop.set()
        assert slow_results == [b"HTTP/1.1 200 OK"] * 4, slow_results
        for c in kept:
            c.send(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
    finally:
        for c in kept:
            c.close()
    log = srv.log_text()
    assert "WORKER TIMEOUT" not in log, log
    assert "Loopback call" in log, log


def test_other_connections_served_around_a_long_request(start_server):
    """While the one app thread sleeps in a view for 1.5 s, the worker still accepts, reads and holds
    other connections: their requests (sent during the sleep) are answered right after it, and a
    request whose head arrived meanwhile is not charged the sleep as header time."""
    srv = start_server(["-w", "1", "-k", "sync", "--timeout", "10", "--keep-alive", "60",
                        "testapp:application"])
    for _ in range(3):
        long = {}

        def sleeper():
            long["r"] = requests.get(f"{srv.url}/sleep?s=1.5", timeout=10)

        t = threading.Thread(target=sleeper)
        t.start()
        time.sleep(0.3)
        others = [RawConnection(srv.port) for _ in range(10)]
        for c in others:
            c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        for c in others:
            r = c.read_response()
            assert r.status == 200 and r.body == b"Hello, World!"
        waited = time.monotonic() - started
        t.join()
        assert long["r"].status_code == 200
        # Answered as soon as the sleeping request let the thread go (~1.2 s from here), not later.
        assert waited < 3.0, waited
        for c in others:
            c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
            c.close()


def test_response_goes_out_without_a_next_request(start_server):
    """A short request's response is written at once, though nothing else happens on the worker after
    it (the app thread writes it when it goes back to the loop), on a fresh and on a kept-alive
    connection, many times over."""
    srv = start_server(["-w", "1", "-k", "sync", "testapp:application"])
    with RawConnection(srv.port, timeout=2.0) as c:
        for _ in range(200):
            c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
    for _ in range(50):
        with RawConnection(srv.port, timeout=2.0) as c:
            c.send(b"GET /stream?n=50 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body.count(b"chunk-") == 50


@pytest.mark.parametrize("body_size", [10, 300 * 1024, 3 * 1024 * 1024])
def test_bodies_beyond_the_read_ahead(start_server, body_size):
    """A body larger than the read-ahead is pumped to the app while it reads it (the loop is driven by
    the main thread then), on a kept-alive connection, after other requests."""
    srv = start_server(["-w", "1", "-k", "sync", "testapp:application"])
    with requests.Session() as s:
        for i in range(5):
            assert s.get(f"{srv.url}/hello", timeout=10).status_code == 200
            data = bytes([i]) * body_size
            r = s.post(f"{srv.url}/echo", data=data, timeout=20)
            assert r.status_code == 200 and r.content == data
