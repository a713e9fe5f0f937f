"""HTTP/1.x on the wire: versions, keep-alive, pipelining, chunked bodies, 100-continue, HEAD,
slow clients and request-based backpressure."""

import http.client
import json
import os
import threading
import time
from urllib.parse import quote

import pytest
import requests

from conftest import RawConnection, get, raw_exchange, raw_request, wait_for

SYNC = ["-k", "sync"]
GTHREAD = ["-k", "gthread", "--threads", "2"]

# gunicorn's sync worker closes every connection after one response; ferricorn keeps it open
WORKER_KINDS = [
    pytest.param(SYNC, id="sync", marks=pytest.mark.ferricorn_only),
    pytest.param(GTHREAD, id="gthread"),
]


@pytest.fixture(scope="module")
def sync_server(module_server):
    return module_server(["-w", "1", "testapp"])


@pytest.fixture(scope="module")
def gthread_server(module_server):
    return module_server(["-w", "1", *GTHREAD, "testapp"])


# ---------------------------------------------------------------------------------------------
# versions


def test_http10(sync_server):
    data = raw_exchange(sync_server.port, b"GET /hello HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] in (b"HTTP/1.0 200 OK", b"HTTP/1.1 200 OK")
    assert body == b"Hello, World!"  # and the server closed the connection after it


def test_http11(sync_server):
    r = raw_request(sync_server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.version == "1.1"
    assert r.status == 200
    assert r.header("Content-Length") == "13"
    assert r.body == b"Hello, World!"


def test_requests_client(sync_server):
    r = requests.get(sync_server.url + "/hello", timeout=10)
    assert r.status_code == 200
    assert r.text == "Hello, World!"
    assert r.headers["Content-Type"] == "text/plain"


# ---------------------------------------------------------------------------------------------
# keep-alive and pipelining


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_keepalive_http_client(start_server, kind):
    srv = start_server(["-w", "1", *kind, "testapp"])
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        remote_ports = set()
        for i in range(4):
            conn.request("GET", f"/environ?i={i}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200
            assert not r.will_close, r.getheaders()
            remote_ports.add(json.loads(body)["REMOTE_PORT"])
        # every request came over the same client socket
        assert len(remote_ports) == 1
    finally:
        conn.close()


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_keepalive_mixed_requests(start_server, kind):
    srv = start_server(["-w", "1", *kind, "testapp"])
    with RawConnection(srv.port) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().body == b"Hello, World!"
        c.send(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(head=True)
        assert r.status == 200 and r.body == b""
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload")
        assert c.read_response().body == b"payload"
        c.send(b"GET /stream?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.framing == "chunked" and r.body == b"chunk-0\nchunk-1\nchunk-2\n"
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.read_response().body == b"Hello, World!"
        # nothing but the responses came back, and the server closed as asked
        assert c.read_until_close() == b""


def test_keepalive_idle_connection_closed(start_server):
    srv = start_server(["-w", "1", *GTHREAD, "--keep-alive", "1", "testapp"])
    with RawConnection(srv.port, timeout=15) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.read_until_close() == b""
        assert time.monotonic() - t0 < 12


def test_http10_keepalive_not_by_default(start_server):
    srv = start_server(["-w", "1", *GTHREAD, "testapp"])
    with RawConnection(srv.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.body == b"Hello, World!"
        assert c.read_until_close() == b""


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_pipelining(start_server, kind):
    srv = start_server(["-w", "1", *kind, "testapp"])
    with RawConnection(srv.port) as c:
        c.send(b"GET /hello?1 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond"
               b"GET /stream?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first = c.read_response()
        second = c.read_response()
        third = c.read_response()
        assert (first.status, first.body) == (200, b"Hello, World!")
        assert (second.status, second.body) == (200, b"second")
        assert (third.status, third.body) == (200, b"chunk-0\nchunk-1\n")
        assert c.read_until_close() == b""


# ---------------------------------------------------------------------------------------------
# chunked bodies


def test_chunked_request_body(sync_server):
    r = raw_request(sync_server.port,
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n"
                    b"5\r\nhello\r\n6;ext=1\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n")
    assert r.status == 200
    assert r.body == b"hello world0123456789"
    assert r.header("X-Received-Length") == "21"


def test_chunked_request_body_from_requests(sync_server):
    parts = [b"alpha-", b"beta-", b"", b"gamma"]
    r = requests.post(sync_server.url + "/echo", data=iter(parts), timeout=10)
    assert r.status_code == 200
    assert r.content == b"alpha-beta-gamma"


def test_chunked_response_http11(sync_server):
    r = raw_request(sync_server.port,
                    b"GET /stream?n=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.header("Content-Length") is None
    assert r.framing == "chunked"
    assert r.body == b"".join(b"chunk-%d\n" % i for i in range(5))


def test_close_delimited_response_http10(sync_server):
    data = raw_exchange(sync_server.port, b"GET /stream?n=5 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lower = head.lower()
    assert b"transfer-encoding" not in lower
    assert b"content-length" not in lower
    assert body == b"".join(b"chunk-%d\n" % i for i in range(5))


@pytest.mark.parametrize("request_bytes", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
], ids=["bad-chunk-size", "cl-and-te", "two-content-lengths"])
def test_ambiguous_framing_refused(sync_server, request_bytes):
    data = raw_exchange(sync_server.port, request_bytes)
    assert data.startswith(b"HTTP/1.1 400") or data.startswith(b"HTTP/1.0 400"), data
    assert b"hello" not in data.partition(b"\r\n\r\n")[2]


# ---------------------------------------------------------------------------------------------
# Expect: 100-continue


def test_expect_continue_when_app_reads(sync_server):
    with RawConnection(sync_server.port, timeout=10) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
               b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        # the body is held back until the server asks for it
        interim = c.read_response()
        assert interim.status == 100
        c.send(b"hello world")
        final = c.read_response()
        assert final.status == 200
        assert final.body == b"hello world"


@pytest.mark.ferricorn_only
def test_no_continue_when_app_does_not_read(sync_server):
    with RawConnection(sync_server.port, timeout=10) as c:
        c.send(b"POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
               b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r.raw
        assert r.body == b"body left unread"
        assert b"100 Continue" not in r.raw


# ---------------------------------------------------------------------------------------------
# HEAD


@pytest.mark.parametrize("path,length", [("/hello", "13"), ("/stream?n=3", None)])
def test_head(sync_server, path, length):
    data = raw_exchange(sync_server.port,
                        f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200")
    assert rest == b""
    if length is not None:
        assert f"Content-Length: {length}".encode() in head


# ---------------------------------------------------------------------------------------------
# slow clients


def _slow_header_client(srv, call_log):
    with RawConnection(srv.port, timeout=20) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        t0 = time.monotonic()
        data = c.read_until_close()
        elapsed = time.monotonic() - t0
    assert elapsed < 15, "the server kept a stalled client for too long"
    assert not data.startswith(b"HTTP/1.1 200"), data
    assert not os.path.exists(call_log) or open(call_log).read() == ""
    # the server still serves others
    assert get(srv.port, "/hello").status == 200
    assert "GET /hello" in open(call_log).read()


def test_slow_header_client_disconnected_sync(start_server, tmp_path):
    call_log = str(tmp_path / "calls")
    srv = start_server(["-w", "1", "--timeout", "3", "--keep-alive", "1", "testapp"],
                       env={"CALL_LOG": call_log})
    _slow_header_client(srv, call_log)


@pytest.mark.ferricorn_only
def test_slow_header_client_disconnected_gthread(start_server, tmp_path):
    call_log = str(tmp_path / "calls")
    srv = start_server(["-w", "1", *GTHREAD, "--timeout", "3", "--keep-alive", "1", "testapp"],
                       env={"CALL_LOG": call_log})
    _slow_header_client(srv, call_log)


# ---------------------------------------------------------------------------------------------
# backpressure


@pytest.mark.ferricorn_only
# gthread: 3 slow requests on 2 workers x 2 threads leave exactly one thread free somewhere
@pytest.mark.parametrize("kind,sleepers", [(SYNC, 1), (GTHREAD, 3)], ids=["sync", "gthread"])
def test_no_request_queues_behind_a_busy_worker(start_server, tmp_path, kind, sleepers):
    srv = start_server(["-w", "2", *kind, "--timeout", "30", "testapp"])
    srv.wait_workers(2)
    marker = str(tmp_path / "started")
    slow_results = []

    def slow():
        r = requests.get(srv.url + f"/sleep?s=6&mark={quote(marker)}", timeout=30)
        slow_results.append((time.monotonic(), r.status_code))

    slow_threads = []
    for i in range(sleepers):
        t = threading.Thread(target=slow)
        t.start()
        slow_threads.append(t)
        wait_for(lambda: os.path.exists(marker) and len(open(marker).read().split()) > i, 10,
                 message="the slow request to start")

    n = 50
    done = [None] * n
    errors = []
    go = threading.Event()

    def short(i):
        go.wait(10)
        try:
            with RawConnection(srv.port, timeout=20) as c:
                c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                r = c.read_response()
            done[i] = (time.monotonic(), r.status)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=short, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    fired = time.monotonic()
    go.set()
    for t in threads:
        t.join(25)
    for t in slow_threads:
        t.join(30)
    assert not errors, errors[:5]
    assert all(d is not None and d[1] == 200 for d in done)
    last_short = max(d[0] for d in done)
    # the idle worker answered all of them while the slow request was still running
    assert last_short - fired < 4.0, f"short requests took {last_short - fired:.1f}s"
    assert len(slow_results) == sleepers
    assert all(status == 200 for _, status in slow_results)
    assert last_short < min(t for t, _ in slow_results)
