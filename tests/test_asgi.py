"""The asgi worker: ASGI 3.0 HTTP and lifespan against real apps (a raw ASGI app, FastAPI, Django's ASGI
handler), driven by real clients over real sockets, and the never-hang cases: a task past --timeout, an
event loop blocked by a synchronous call, the async form of the loopback deadlock."""

import concurrent.futures
import json
import os
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from conftest import get, raw_request, rss, wait_for, ws_url

pytestmark = pytest.mark.ferricorn_only

RAW = "asgi_raw:app"


def asgi(start_server, *args, app=RAW, env=None, **kw):
    return start_server(["-k", "asgi", "-w", "1", *args, app], env=env, **kw)


def worker_pid(srv):
    return srv.wait_workers(1)[-1]


def wire(srv, request):
    """Every byte the server sends back for `request`, until it closes the connection."""
    data = b""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(request)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def warm_up(srv, n=20):
    """Ordinary traffic first, on one kept-alive connection, so guarantees are tested after it."""
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for _ in range(n):
            assert c.get("/").text == "hello"


# ---- worker classes and settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "asgi",
        "uvicorn.workers.UvicornWorker",
        "uvicorn.workers.UvicornH11Worker",
        "uvicorn_worker.UvicornWorker",
        "gunicorn.workers.gasgi.ASGIWorker",
    ],
)
def test_the_worker_names_asgi_configs_carry_run_the_asgi_worker(start_server, name):
    srv = start_server(["-k", name, "-w", "1", RAW])
    assert get(srv.port, "/").body == b"hello"
    srv.wait_log(r"Using worker: asgi")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_each_event_loop_serves(start_server, loop):
    srv = asgi(start_server, "--asgi-loop", loop)
    warm_up(srv, 5)
    r = httpx.post(srv.url + "/echo", content=b"x" * 200_000, timeout=10)
    assert r.content == b"x" * 200_000


def test_a_bad_asgi_setting_is_one_line_and_exit_2(start_server):
    from conftest import run_cli

    res = run_cli(["-k", "asgi", "--asgi-loop", "trio", RAW])
    assert res.returncode == 2, res
    err = res.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "asgi" in err[0] and "trio" in err[0], err


# ---- scope ----------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_the_scope_has_every_key(start_server):
    srv = asgi(start_server, "--root-path", "/mounted")
    warm_up(srv, 3)
    r = httpx.get(srv.url + "/scope?a=1&b=%20x", headers={"X-Custom": "Yes"}, timeout=10)
    s = r.json()
    assert s["type"] == "http"
    assert s["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert s["http_version"] == "1.1"
    assert s["method"] == "GET"
    assert s["scheme"] == "http"
    assert s["path"] == "/scope"
    assert s["raw_path"] == "/scope"
    assert s["query_string"] == "a=1&b=%20x"
    assert s["root_path"] == "/mounted"
    assert ["x-custom", "Yes"] in s["headers"]
    assert s["client"][0] == "127.0.0.1" and isinstance(s["client"][1], int)
    assert s["server"] == ["127.0.0.1", srv.port]
    assert s["state"] == {"greeting": "hello from lifespan"}
    assert "http.response.pathsend" in s["extensions"]
    assert "http.response.trailers" in s["extensions"]


def test_path_is_decoded_and_raw_path_is_not(start_server):
    srv = asgi(start_server)
    resp = raw_request(srv.port, b"GET /sc%6Fpe/caf%C3%A9 HTTP/1.0\r\n\r\n")
    # /scope/café is not a route: the 404 proves the decoded path reached the app.
    assert resp.status == 404
    resp = raw_request(srv.port, b"GET /sc%6Fpe HTTP/1.0\r\nHost: x\r\n\r\n")
    s = json.loads(resp.body)
    assert s["path"] == "/scope"
    assert s["raw_path"] == "/sc%6Fpe"
    assert s["http_version"] == "1.0"


# ---- request and response bodies -------------------------------------------------------------------


@pytest.mark.smoke
def test_bodies_stream_both_ways_on_kept_alive_connections(start_server):
    srv = asgi(start_server)
    warm_up(srv)
    big = os.urandom(3 * 1024 * 1024 + 17)
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for i in range(5):
            assert c.post("/echo", content=big).content == big
            # chunked upload (no length)
            assert c.post("/echo", content=iter([big[:100_000], big[100_000:]])).content == big
            r = c.get("/stream", params={"n": 50})
            assert r.headers.get("transfer-encoding") == "chunked"
            assert r.text == "".join(f"chunk {j}\n" for j in range(50))
            assert c.get("/").text == "hello"


PIECE_SIZES = [5, 0, 20000, 1, 70000, 0, 16384, 3, 100, 40000, 7, 0]  # as in apps/asgi_raw.py


def test_pieces_sent_in_one_step_arrive_whole_and_in_order(start_server):
    # Pieces queued together go out in one write: their framing must be each piece's, in order, on a
    # connection that goes on carrying requests.
    srv = asgi(start_server)
    want = b"".join(bytes([65 + i % 26]) * n for i, n in enumerate(PIECE_SIZES)) + b"end"
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for _ in range(5):
            r = c.get("/pieces")
            assert r.headers.get("transfer-encoding") == "chunked"
            assert r.content == want
            assert c.get("/").text == "hello"
    data = wire(srv, b"GET /pieces?trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    got = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        got += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    assert got == want
    assert body == b"x-n: %d\r\n\r\n" % len(PIECE_SIZES)


def test_concurrent_requests_run_as_tasks_of_one_loop(start_server):
    srv = asgi(start_server)
    warm_up(srv)

    def one(i):
        with httpx.Client(base_url=srv.url, timeout=20) as c:
            return c.get("/sleep", params={"s": "0.5"}).text

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(one, range(64)))
    elapsed = time.monotonic() - t0
    assert answers == ["slept"] * 64
    # 64 half-second sleeps on one worker: concurrently, not one after another (32 s).
    assert elapsed < 16, elapsed


def test_a_slow_reader_holds_the_app_back_instead_of_filling_memory(start_server):
    srv = asgi(start_server)
    warm_up(srv)
    pid = worker_pid(srv)
    before = rss(pid)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(b"GET /big?size=268435456 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(4096)
    time.sleep(2.0)
    grown = rss(pid) - before
    s.close()
    # 256 MiB were asked for; backpressure keeps what the server holds to a few pieces.
    assert grown < 48 * 1024 * 1024, grown
    # and the worker still serves
    assert get(srv.port, "/").body == b"hello"


def test_head_gets_no_body(start_server):
    srv = asgi(start_server)
    resp = raw_request(srv.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", head=True)
    assert resp.status == 200
    assert resp.body == b""


def test_pathsend_sends_the_file(start_server, tmp_path):
    data = os.urandom(1024 * 1024 + 3)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    srv = asgi(start_server, env={"ASGI_FILE": str(f)})
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for _ in range(3):
            r = c.get("/pathsend")
            assert r.status_code == 200
            assert r.headers["content-length"] == str(len(data))
            assert r.content == data
            assert c.get("/").text == "hello"


def test_zerocopy_sends_the_file_or_its_part(start_server, tmp_path):
    data = os.urandom(1024 * 1024 + 7)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    srv = asgi(start_server, env={"ASGI_FILE": str(f)})
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for _ in range(3):
            r = c.get("/zerocopy")
            assert r.status_code == 200 and r.headers["content-length"] == str(len(data))
            assert r.content == data
            r = c.get("/zerocopy?offset=1000&count=5000")
            assert r.headers["content-length"] == "5000" and r.content == data[1000:6000]
            assert c.get("/zerocopy?offset=1048000").content == data[1048000:]
            # Pieces among body messages: the same bytes, in order.
            r = c.get("/zerocopy?pieces=1")
            assert r.content == b"head:" + data[:10] + data[10:]
            assert c.get("/").text == "hello"


def test_trailers_reach_a_client_that_asked_for_them(start_server):
    srv = asgi(start_server)
    data = wire(srv, b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.startswith(b"4\r\ndata\r\n0\r\n")
    assert b"x-checksum: abc\r\n" in body


def test_header_bytes_go_out_as_the_app_gave_them(start_server):
    srv = asgi(start_server)
    data = wire(srv, b"GET /latin1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"x-name: caf\xe9\r\n" in data


# ---- app errors ----------------------------------------------------------------------------------


def test_app_errors_are_logged_answered_and_the_worker_goes_on(start_server):
    srv = asgi(start_server)
    warm_up(srv)
    pid = worker_pid(srv)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/raise")
        assert r.status_code == 500
        srv.wait_log(r"Error handling request GET /raise\nTraceback")
        assert "RuntimeError: boom in the view" in srv.log_text()
    assert httpx.get(srv.url + "/no-response", timeout=10).status_code == 500
    srv.wait_log(r"ASGI callable returned without starting response: GET /no-response")
    r = httpx.get(srv.url + "/bad-header", timeout=10)
    assert r.status_code == 500
    srv.wait_log(r"invalid value for header")
    # A response the app began and abandoned cannot be completed: the connection is cut.
    with pytest.raises(httpx.HTTPError):
        httpx.get(srv.url + "/half", timeout=10)
    srv.wait_log(r"ASGI callable returned without completing response: GET /half")
    warm_up(srv, 5)
    assert worker_pid(srv) == pid
    assert srv.worker_pids_from_log() == [pid]


# ---- the client goes away ---------------------------------------------------------------------------


def test_the_app_hears_http_disconnect_when_the_client_leaves(start_server, tmp_path):
    marker = tmp_path / "disc.txt"
    srv = asgi(start_server, env={"ASGI_DISCONNECT_MARKER": str(marker)})
    warm_up(srv)
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        s.close()
        wait_for(lambda: marker.exists() and marker.read_text().count("http.disconnect") == i + 1, 5,
                 message="http.disconnect delivered")
    assert "returned without starting response" not in srv.log_text()


# ---- lifespan --------------------------------------------------------------------------------------


def test_lifespan_shutdown_runs_on_a_graceful_stop(start_server, tmp_path):
    marker = tmp_path / "shut.txt"
    srv = asgi(start_server, env={"ASGI_SHUTDOWN_MARKER": str(marker)})
    warm_up(srv)
    pid = worker_pid(srv)
    assert srv.stop() == 0
    assert marker.read_text() == f"shutdown {pid}\n"
    text = srv.log_text()
    assert "Application startup complete." in text
    assert "Application shutdown complete." in text


def test_a_failed_startup_stops_the_server_with_the_message(start_server):
    srv = asgi(start_server, env={"ASGI_FAIL_STARTUP": "1"}, ready=False)
    code = srv.wait(20)
    assert code == 3, srv.log_text()
    assert "Application startup failed. no database" in srv.log_text()


def test_lifespan_off_gives_no_state(start_server):
    srv = asgi(start_server, "--asgi-lifespan", "off")
    s = httpx.get(srv.url + "/scope", timeout=10).json()
    assert s["state"] == {}
    assert "Application startup complete." not in srv.log_text()


def test_an_app_without_lifespan_is_served_under_auto_and_refused_under_on(start_server, tmp_path):
    (tmp_path / "nolife.py").write_text(
        "async def app(scope, receive, send):\n"
        "    assert scope['type'] == 'http'\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'plain'})\n"
    )
    srv = start_server(["-k", "asgi", "nolife:app"], app_dir=str(tmp_path))
    assert get(srv.port, "/").body == b"plain"
    srv.wait_log(r"ASGI 'lifespan' protocol appears unsupported.")
    srv2 = start_server(["-k", "asgi", "--asgi-lifespan", "on", "nolife:app"], app_dir=str(tmp_path),
                        ready=False)
    assert srv2.wait(20) == 3
    assert "Exception in 'lifespan' protocol" in srv2.log_text()


# ---- never hang silently --------------------------------------------------------------------------


def test_a_task_past_timeout_is_cancelled_named_with_its_await_stack_and_the_worker_goes_on(
    start_server, tmp_path
):
    marker = tmp_path / "cancel.txt"
    srv = asgi(start_server, "-t", "2", env={"ASGI_CANCEL_MARKER": str(marker)})
    warm_up(srv)
    pid = worker_pid(srv)
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for i in range(3):
            t0 = time.monotonic()
            r = c.get("/forever")
            assert r.status_code == 504
            assert time.monotonic() - t0 < 6
            # the same worker answers the next request
            assert c.get("/").text == "hello"
    srv.wait_log(r"Request exceeded --timeout 2s: GET /forever", count=3)
    text = srv.log_text()
    assert "WORKER TIMEOUT (pid:%d): a request's task ran past --timeout 2s and is cancelled" % pid in text
    block = text.split("Await stack of its task (most recent call first):\n", 1)[1]
    assert "asgi_raw.py" in block and "await asyncio.sleep(3600)" in block
    # `finally` blocks ran: the task was cancelled, not abandoned.
    wait_for(lambda: marker.exists() and marker.read_text().count("cancelled") == 3, 5,
             message="three cancellations")
    assert srv.worker_pids_from_log() == [pid]


def test_a_response_that_streams_past_timeout_is_not_cut(start_server):
    srv = asgi(start_server, "-t", "2")
    warm_up(srv)
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        r = c.get("/sse")
        assert r.text == "".join("data: %d\n\n" % i for i in range(8))
        assert c.get("/").text == "hello"
    assert "WORKER TIMEOUT" not in srv.log_text()


def test_a_slow_task_is_named_with_its_await_stack(start_server):
    srv = asgi(start_server, "--slow-request-threshold", "1")
    warm_up(srv)
    assert httpx.get(srv.url + "/sleep?s=1.6", timeout=10).text == "slept"
    srv.wait_log(r"Slow request: GET /sleep\?s=1.6 from 127\.0\.0\.1:\d+ still running after 1\.\ds")
    assert "await asyncio.sleep(secs)" in srv.log_text()


def test_a_blocked_event_loop_is_named_with_the_stack_that_blocks_it(start_server):
    srv = asgi(start_server, "--asgi-block-threshold", "1", "-t", "30")
    warm_up(srv)
    pid = worker_pid(srv)
    results = []
    t = threading.Thread(target=lambda: results.append(httpx.get(srv.url + "/block?s=2.5", timeout=20).text))
    t.start()
    time.sleep(0.3)
    # A request that arrives meanwhile waits for the loop, and is served once it is back.
    assert httpx.get(srv.url + "/", timeout=20).text == "hello"
    t.join()
    assert results == ["blocked"]
    # Seen at the first watchdog round past the threshold (later on a loaded machine).
    srv.wait_log(r"Event loop of worker %d blocked for \d\.\ds \(--asgi-block-threshold 1s\)" % pid)
    text = srv.log_text()
    assert "Requests in flight: GET /block?s=2.5 from 127.0.0.1" in text
    stack = text.split("Python stack of the loop thread (most recent call first):\n", 1)[1]
    assert re.search(r'File ".*asgi_raw\.py", line \d+ in app', stack), stack
    # One warning per episode.
    assert text.count("Event loop of worker") == 1
    warm_up(srv, 5)
    assert srv.worker_pids_from_log() == [pid]


def test_a_request_on_a_loop_blocked_past_timeout_retires_the_worker_with_its_stack(start_server):
    srv = asgi(start_server, "-t", "2", "--graceful-timeout", "2")
    warm_up(srv)
    pid = worker_pid(srv)
    try:
        r = httpx.get(srv.url + "/block?s=60", timeout=15)
        assert r.status_code == 504
    except httpx.HTTPError:
        pass
    srv.wait_log(r"Request exceeded --timeout 2s: GET /block\?s=60 from 127\.0\.0\.1:\d+", timeout=20)
    srv.wait_log(r"Booting worker with pid: \d+", count=2, timeout=30)
    text = srv.log_text()
    assert "WORKER TIMEOUT (pid:%d)\n" % pid in text
    # The loop cannot cancel a task while it is blocked: the stack is the loop thread's.
    assert re.search(r"\(running for \d+\.\ds, worker %d, task \d+\)" % pid, text), text
    assert re.search(r"Python stack of the event loop's thread, which does not come back \(most recent "
                     r"call first\):\n(.*\n)*.*asgi_raw\.py", text), text
    wait_for(lambda: get(srv.port, "/").body == b"hello", 20, message="the replacement serving")


def test_a_loop_blocked_outside_any_request_retires_the_worker_with_its_stack(start_server):
    srv = asgi(start_server, "-t", "2", "--graceful-timeout", "2")
    warm_up(srv)
    pid = worker_pid(srv)
    assert httpx.get(srv.url + "/block-later?s=60", timeout=10).text == "later"
    srv.wait_log(r"The event loop of worker %d has not come back for \d+\.\ds \(a blocking call in an "
                 r"async view\) past --timeout 2s; requests in flight: none" % pid, timeout=20)
    srv.wait_log(r"Booting worker with pid: \d+", count=2, timeout=30)
    text = srv.log_text()
    assert "WORKER TIMEOUT (pid:%d)\n" % pid in text
    assert re.search(r"Python stack of the stuck thread \(most recent call first\):\n(.*\n)*.*File .*line \d+ in serve", text)
    wait_for(lambda: get(srv.port, "/").body == b"hello", 20, message="the replacement serving")


def test_a_sync_self_call_from_an_async_view_does_not_deadlock(start_server):
    """The async form of the field report: one worker, a synchronous client in an async view calling
    its own server. The nested call is recognised and served on an overflow loop, every time, after
    other traffic and on kept-alive connections."""
    srv = asgi(start_server, "-t", "20")
    warm_up(srv)
    with httpx.Client(base_url=srv.url, timeout=15) as c:
        for i in range(10):
            assert c.get("/selfcall-sync").text == "outer got hello"
            assert c.get("/").text == "hello"
    srv.wait_log(r"Loopback call: GET / from 127\.0\.0\.1:\d+ was sent to this server by its own request "
                 r"GET /selfcall-sync .* with a synchronous client")
    assert "httpx.AsyncClient" in srv.log_text()


def test_an_async_self_call_needs_nothing(start_server):
    srv = asgi(start_server)
    warm_up(srv)
    for _ in range(5):
        assert httpx.get(srv.url + "/selfcall-async", timeout=15).text == "outer got hello"
    assert "Loopback call" not in srv.log_text()


# ---- operations ------------------------------------------------------------------------------------


def test_a_graceful_stop_finishes_requests_in_flight(start_server):
    from test_observability import families, start_with_metrics, value

    srv, mport = start_with_metrics(start_server, ["-k", "asgi", "-w", "1", "--graceful-timeout", "10", RAW])
    warm_up(srv)
    results = []

    def slow():
        results.append(httpx.get(srv.url + "/sleep?s=1.5", timeout=20).text)

    ts = [threading.Thread(target=slow) for _ in range(8)]
    for t in ts:
        t.start()
    # The stop comes while all eight run (not after a fixed pause: on a busy machine the clients may not
    # have connected yet, and connections the stop finds unaccepted are not the worker's to finish).
    wait_for(lambda: value(families(mport), "ferricorn_requests_in_flight") == 8, 10,
             message="8 requests in flight")
    srv.signal(signal.SIGTERM)
    for t in ts:
        t.join()
    assert results == ["slept"] * 8
    assert srv.wait(15) == 0


def test_max_requests_recycles_without_a_failed_request(start_server):
    srv = start_server(["-k", "asgi", "-w", "2", "--max-requests", "30", "--max-requests-jitter", "5", RAW])
    failures = []

    def client(n):
        with httpx.Client(base_url=srv.url, timeout=20) as c:
            for _ in range(n):
                try:
                    r = c.get("/")
                    if r.text != "hello":
                        failures.append(r.status_code)
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    ts = [threading.Thread(target=client, args=(50,)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert failures == []
    assert len(srv.worker_pids_from_log()) >= 4


def test_access_log_lines_for_asgi_requests(start_server):
    srv = asgi(start_server, "--access-logfile", "-")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        c.get("/", headers={"User-Agent": "probe/1"})
        c.post("/echo", content=b"12345")
    wait_for(lambda: srv.stdout_text().count("\n") >= 2, 5, message="two access lines")
    out = srv.stdout_text()
    assert re.search(r'127\.0\.0\.1 - - \[.*\] "GET / HTTP/1\.1" 200 5 "-" "probe/1"', out), out
    assert re.search(r'"POST /echo HTTP/1\.1" 200 5 ', out), out


# ---- frameworks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("klass", ["asgi", "uvicorn.workers.UvicornWorker"])
def test_fastapi(start_server, tmp_path, klass):
    task_marker = tmp_path / "task.txt"
    shut_marker = tmp_path / "shut.txt"
    srv = start_server(
        ["-k", klass, "-w", "1", "asgi_fastapi:app"],
        env={"FASTAPI_TASK_MARKER": str(task_marker), "FASTAPI_SHUTDOWN_MARKER": str(shut_marker)},
    )
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for _ in range(3):
            assert c.get("/").json() == {"hello": "world"}
            r = c.post("/items", json={"name": "pen", "price": 1.25, "tags": ["a"]})
            assert r.json() == {"name": "pen", "total": 2.5, "tags": ["a"]}
            r = c.post("/items", json={"name": "pen"})
            assert r.status_code == 422
            assert c.get("/state").json() == {"db": "connected"}
            assert c.get("/stream", params={"n": 20}).text == "".join(f"line {i}\n" for i in range(20))
            assert c.get("/sync").json() == {"sync": True}
        assert c.post("/background").text == "queued"
    wait_for(lambda: task_marker.exists() and "background ran" in task_marker.read_text(), 5,
             message="the background task")

    def load(i):
        with httpx.Client(base_url=srv.url, timeout=20) as c:
            return [c.post("/items", json={"name": str(i), "price": i}).json()["total"] for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        totals = list(ex.map(load, range(16)))
    assert totals == [[round(i * 2, 2)] * 10 for i in range(16)]
    assert srv.stop() == 0
    assert shut_marker.read_text() == "lifespan shutdown\n"


def test_django_asgi_async_and_sync_views(start_server):
    srv = start_server(["-k", "asgi", "-w", "1", "asgi_django:application"])
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for i in range(5):
            assert c.get("/async/").json() == {"view": "async", "path": "/async/", "method": "GET"}
            assert c.post("/sync/", content=b"body %d" % i).text == "sync view: body %d" % i
    srv.wait_log(r"ASGI 'lifespan' protocol appears unsupported.")


# ---- websockets --------------------------------------------------------------------------------------


def test_websocket_echo_text_and_bytes_with_a_subprotocol(start_server, tmp_path):
    from websockets.sync.client import connect

    marker = tmp_path / "ws.txt"
    srv = asgi(start_server, env={"ASGI_WS_MARKER": str(marker)})
    warm_up(srv)
    for i in range(5):
        with connect(ws_url(srv, "/ws/echo?x=1"), subprotocols=["chat", "other"]) as ws:
            assert ws.subprotocol == "chat"
            assert ws.response.headers["x-ws"] == "yes"
            for j in range(20):
                ws.send("hello %d" % j)
                assert ws.recv(timeout=10) == "hello %d" % j
            blob = os.urandom(300_000)
            ws.send(blob)
            assert ws.recv(timeout=10) == blob
            ws.send("scope")
            info = json.loads(ws.recv(timeout=10))
            assert info == {"type": "websocket", "scheme": "ws", "path": "/ws/echo", "query_string": "x=1",
                            "subprotocols": ["chat", "other"], "http_version": "1.1"}
        wait_for(lambda: marker.exists() and marker.read_text().count("disconnect 1000") == i + 1, 5,
                 message="the app's websocket.disconnect")
    # plain HTTP still works on the same worker
    warm_up(srv, 5)


def test_many_websockets_at_once(start_server):
    from websockets.sync.client import connect

    srv = asgi(start_server)

    def session(i):
        with connect(ws_url(srv, "/ws/echo")) as ws:
            for j in range(50):
                ws.send("%d-%d" % (i, j))
                assert ws.recv(timeout=20) == "%d-%d" % (i, j)
        return i

    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        assert sorted(ex.map(session, range(64))) == list(range(64))


def test_websocket_refusals(start_server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    srv = asgi(start_server)
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(srv, "/ws/deny"))
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(srv, "/ws/deny-body"))
    assert e.value.response.status_code == 401
    assert e.value.response.body == b"go away"
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(srv, "/ws/raise"))
    assert e.value.response.status_code == 500
    srv.wait_log(r"Error handling websocket /ws/raise\nTraceback")
    # A handshake this server cannot take is answered without reaching the app.
    resp = raw_request(srv.port, b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 b"Sec-WebSocket-Version: 8\r\n\r\n")
    assert resp.status == 426
    warm_up(srv, 3)


def test_the_app_closes_a_websocket(start_server, tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    marker = tmp_path / "ws.txt"
    srv = asgi(start_server, env={"ASGI_WS_MARKER": str(marker)})
    with connect(ws_url(srv, "/ws/server-close")) as ws:
        assert ws.recv(timeout=10) == "bye"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4000
        assert ws.close_reason == "done"
    wait_for(lambda: marker.exists() and "after close websocket.disconnect 4000" in marker.read_text(), 5,
             message="disconnect after the app's close")


def test_a_graceful_stop_closes_websockets_with_1012(start_server, tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    marker = tmp_path / "ws.txt"
    srv = asgi(start_server, "--graceful-timeout", "10", env={"ASGI_WS_MARKER": str(marker)})
    conns = [connect(ws_url(srv, "/ws/forever")).__enter__() for _ in range(5)]
    time.sleep(0.3)
    srv.signal(signal.SIGTERM)
    for ws in conns:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1012
        ws.close()
    assert srv.wait(15) == 0
    assert marker.read_text().count("disconnect 1012") == 5


def test_a_websocket_message_over_ws_max_size_closes_with_1009(start_server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    srv = asgi(start_server, "--websocket-max-message-size", "1000")
    with connect(ws_url(srv, "/ws/echo")) as ws:
        ws.send("x" * 900)
        assert ws.recv(timeout=10) == "x" * 900
        ws.send("x" * 5000)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1009
    warm_up(srv, 3)


class RawWs:
    """A websocket client of raw frames, to send what no library sends: bad UTF-8, reserved bits and
    opcodes, odd fragments, bad close frames."""

    TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10

    def __init__(self, port, path="/ws/echo", extra_headers=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n" + extra_headers + b"\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "closed during the handshake"
            self.buf += chunk
        self.response, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert self.response.startswith(b"HTTP/1.1 101 "), self.response

    def send(self, opcode, payload=b"", fin=True, rsv=0, mask=True):
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        n = len(payload)
        m = 0x80 if mask else 0
        if n < 126:
            head += bytes([m | n])
        elif n < 65536:
            head += bytes([m | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([m | 127]) + n.to_bytes(8, "big")
        if mask:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def _take(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed with %d of %d bytes read" % (len(self.buf), n))
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        """(fin, rsv, opcode, payload) of the next frame from the server (never masked)."""
        b0, b1 = self._take(2)
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._take(n)

    def message(self):
        """(opcode, payload) of the next data message, its fragments joined."""
        fin, _, op, data = self.frame()
        while not fin:
            fin, _, cont, more = self.frame()
            assert cont == self.CONT
            data += more
        return op, data

    def close_code(self, answer=True):
        """The code of the server's close frame (data frames before it are skipped), after checking the
        server then closes the connection. `answer`: the server's close started the closing handshake,
        and the client answers it."""
        while True:
            _, _, op, data = self.frame()
            if op == self.CLOSE:
                break
        if answer:
            self.sock.sendall(b"\x88\x80" + os.urandom(4))
        assert self.sock.recv(1) == b"", "the server closes the connection after the close handshake"
        return int.from_bytes(data[:2], "big") if data else None

    def close(self):
        self.sock.close()


@pytest.fixture
def ws_srv(start_server):
    return asgi(start_server, "--websocket-max-message-size", "200000")


def test_fragments_are_joined_and_pings_answered_between_them(ws_srv):
    ws = RawWs(ws_srv.port)
    text = "Hello wörld €".encode()
    cut = text.index(b"\xc3") + 1  # fragment boundaries inside a UTF-8 sequence are fine
    ws.send(RawWs.TEXT, text[:3], fin=False)
    ws.send(RawWs.PING, b"ping data")
    ws.send(RawWs.CONT, text[3:cut], fin=False)
    ws.send(RawWs.CONT, b"", fin=False)
    ws.send(RawWs.CONT, text[cut:], fin=True)
    assert ws.frame() == (True, 0, RawWs.PONG, b"ping data")
    assert ws.message() == (RawWs.TEXT, text)
    ws.send(RawWs.TEXT, b"")
    assert ws.message() == (RawWs.TEXT, b"")
    blob = os.urandom(150_000)  # within the limit in 15 fragments
    for i in range(0, len(blob), 10_000):
        ws.send(RawWs.CONT if i else RawWs.BINARY, blob[i:i + 10_000], fin=i + 10_000 >= len(blob))
    assert ws.message() == (RawWs.BINARY, blob)
    ws.send(RawWs.PONG, b"unsolicited")  # ignored
    ws.send(RawWs.CLOSE, (3000).to_bytes(2, "big") + b"bye")
    assert ws.close_code(answer=False) == 3000
    ws.close()


@pytest.mark.parametrize("frames,code", [
    # invalid UTF-8 in a text message, whole or across fragments, or in a close reason: 1007
    ([(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", True)], 1007),
    ([(1, b"\xce\xba\xe1", False), (0, b"\xbd\xb9\xf4\x90\x80\x80", True)], 1007),
    ([(1, b"ok \xe2\x82", False), (0, b"", True)], 1007),
    ([(8, b"\x03\xe8\xff\xfe", True)], 1007),
    # protocol errors: 1002
    ([(1, b"rsv", True, 4)], 1002),
    ([(2, b"rsv", True, 2)], 1002),
    ([(3, b"", True)], 1002),
    ([(11, b"", True)], 1002),
    ([(0, b"orphan continuation", True)], 1002),
    ([(1, b"a", False), (1, b"b", True)], 1002),
    ([(9, b"x" * 126, True)], 1002),
    ([(9, b"fragmented ping", False)], 1002),
    ([(8, b"\x03", True)], 1002),
    # close codes a peer may not send
    *[([(8, c.to_bytes(2, "big"), True)], 1002) for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999)],
    # over --websocket-max-message-size (200000), in one frame or in fragments: 1009
    ([(2, b"x" * 200_001, True)], 1009),
    ([(2, b"x" * 100_000, False), (0, b"x" * 100_000, False), (0, b"x", True)], 1009),
], ids=lambda v: None if isinstance(v, int) else "")
def test_websocket_violations_close_with_their_code(ws_srv, frames, code):
    ws = RawWs(ws_srv.port)
    ws.send(RawWs.TEXT, b"before")
    assert ws.message() == (RawWs.TEXT, b"before")
    for op, payload, fin, *rsv in frames:
        ws.send(op, payload, fin=fin, rsv=rsv[0] if rsv else 0)
    # a bad close frame began the closing handshake: the server's close answers it
    assert ws.close_code(answer=frames[-1][0] != RawWs.CLOSE) == code
    ws.close()


def test_bad_utf8_fails_before_its_frame_is_complete(ws_srv):
    for fragmented in (False, True):
        ws = RawWs(ws_srv.port)
        key = os.urandom(4)
        body = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80" + b"x" * 1000
        if fragmented:  # the message's first fragment is complete, the second is not
            ws.send(RawWs.TEXT, "κό".encode()[:3], fin=False)
            head = bytes([0x80 | RawWs.CONT, 0x80 | 126]) + len(body).to_bytes(2, "big")
        else:
            head = bytes([0x80 | RawWs.TEXT, 0x80 | 126]) + len(body).to_bytes(2, "big")
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(body))
        ws.sock.sendall(head + key + masked[:20])  # the rest of the frame never comes
        assert ws.close_code() == 1007
        ws.close()


def test_an_unmasked_client_frame_is_a_protocol_error(ws_srv):
    ws = RawWs(ws_srv.port)
    ws.send(RawWs.TEXT, b"bare", mask=False)
    assert ws.close_code() == 1002
    ws.close()


def test_valid_close_codes_are_echoed(ws_srv):
    for code in (1000, 1001, 1003, 1007, 1011, 3000, 4999):
        ws = RawWs(ws_srv.port)
        ws.send(RawWs.CLOSE, code.to_bytes(2, "big") + "réason".encode())
        assert ws.close_code(answer=False) == code
        ws.close()
    ws = RawWs(ws_srv.port)
    ws.send(RawWs.CLOSE, b"")  # no code: answered with none or 1000
    assert ws.close_code(answer=False) in (None, 1000)
    ws.close()


# ---- permessage-deflate ------------------------------------------------------------------------------

DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def deflate(data, compressor=None):
    """A message's payload as a client compresses it (raw deflate, sync flush, tail stripped)."""
    import zlib

    c = compressor or zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_permessage_deflate_is_negotiated_with_a_websockets_client(start_server):
    from websockets.sync.client import connect

    srv = asgi(start_server)
    text = json.dumps([{"id": i, "name": "item %d" % i} for i in range(3000)])
    blob = os.urandom(100_000)
    with connect(ws_url(srv, "/ws/echo")) as ws:  # the client offers permessage-deflate by default
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for _ in range(5):  # context kept from message to message
            ws.send(text)
            assert ws.recv(timeout=10) == text
            ws.send(blob)
            assert ws.recv(timeout=10) == blob
            ws.send("")
            assert ws.recv(timeout=10) == ""
    with connect(ws_url(srv, "/ws/echo"), compression=None) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(text)
        assert ws.recv(timeout=10) == text


@pytest.mark.parametrize("params", [
    dict(server_no_context_takeover=True, client_no_context_takeover=True),
    dict(server_max_window_bits=9, client_max_window_bits=10),
    dict(server_max_window_bits=12, server_no_context_takeover=True),
])
def test_permessage_deflate_parameters_are_honoured(start_server, params):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    from websockets.sync.client import connect

    srv = asgi(start_server)
    factory = ClientPerMessageDeflateFactory(**params)
    with connect(ws_url(srv, "/ws/echo"), extensions=[factory], compression=None) as ws:
        agreed = ws.response.headers["Sec-WebSocket-Extensions"]
        for name, value in params.items():
            if name == "server_no_context_takeover" or name == "server_max_window_bits":
                assert name + ("" if value is True else "=%d" % value) in agreed, agreed
        for i in range(20):
            msg = ("message %d " % i) * (50 * i + 1)
            ws.send(msg)
            assert ws.recv(timeout=10) == msg


def test_what_permessage_deflate_cannot_honour_is_declined(start_server):
    import zlib

    srv = asgi(start_server)
    for offer, agreed in [
        (b"permessage-deflate; server_max_window_bits=8", None),
        (b"permessage-deflate; server_max_window_bits=16", None),
        (b"permessage-deflate; mystery=1", None),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        (b"x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, "
         b"permessage-deflate; server_no_context_takeover",
         b"permessage-deflate; server_no_context_takeover"),
    ]:
        ws = RawWs(srv.port, extra_headers=b"Sec-WebSocket-Extensions: " + offer + b"\r\n")
        head = ws.response.lower()
        if agreed is None:
            assert b"sec-websocket-extensions" not in head, (offer, ws.response)
        else:
            assert b"sec-websocket-extensions: " + agreed + b"\r\n" in head + b"\r\n", ws.response
        ws.send(RawWs.TEXT, b"plain")
        fin, rsv, op, data = ws.frame()
        if agreed:
            data = zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff")
        assert (fin, rsv, op, data) == (True, 4 if agreed else 0, RawWs.TEXT, b"plain")
        ws.close()


def test_compressed_raw_frames(start_server):
    import zlib

    srv = asgi(start_server, "--websocket-max-message-size", "200000")
    ws = RawWs(srv.port, extra_headers=DEFLATE_OFFER)
    assert b"permessage-deflate" in ws.response
    inflate = zlib.decompressobj(wbits=-15)  # the server keeps its context too

    def echoed():
        fin, rsv, op, data = ws.frame()
        assert fin and rsv == 4, "the echo goes out compressed, in one frame"
        return op, inflate.decompress(data + b"\x00\x00\xff\xff")

    comp = zlib.compressobj(wbits=-15)
    text = ("compress me " * 1000).encode()
    ws.send(RawWs.TEXT, deflate(text, comp), rsv=4)
    assert echoed() == (RawWs.TEXT, text)
    # a compressed message in three frames: RSV1 on the first one only
    wire = deflate("€ and more €".encode() * 100, comp)
    ws.send(RawWs.TEXT, wire[:5], fin=False, rsv=4)
    ws.send(RawWs.CONT, wire[5:9], fin=False)
    ws.send(RawWs.CONT, wire[9:], fin=True)
    assert echoed() == (RawWs.TEXT, "€ and more €".encode() * 100)
    # an uncompressed message in the same session is fine
    ws.send(RawWs.BINARY, b"\x00raw")
    assert echoed() == (RawWs.BINARY, b"\x00raw")
    # just within the limit once decompressed
    ws.send(RawWs.BINARY, deflate(b"z" * 200_000, comp), rsv=4)
    assert echoed() == (RawWs.BINARY, b"z" * 200_000)
    ws.close()


@pytest.mark.parametrize("case", ["bomb", "bomb-fragmented", "corrupt", "bad-utf8", "rsv1-continuation"])
def test_bad_compressed_messages_close_with_their_code(start_server, case):
    srv = asgi(start_server, "--websocket-max-message-size", "200000")
    ws = RawWs(srv.port, extra_headers=DEFLATE_OFFER)
    if case == "bomb":  # 10 MB of zeros in about 10 kB: the limit is on the decompressed size
        wire = deflate(bytes(10_000_000))
        assert len(wire) < 20_000
        ws.send(RawWs.BINARY, wire, rsv=4)
        code = 1009
    elif case == "bomb-fragmented":
        wire = deflate(bytes(300_000))
        ws.send(RawWs.BINARY, wire[:100], fin=False, rsv=4)
        ws.send(RawWs.CONT, wire[100:], fin=True)
        code = 1009
    elif case == "corrupt":
        ws.send(RawWs.TEXT, b"\xff\xff\xff\xff not deflate", rsv=4)
        code = 1007
    elif case == "bad-utf8":
        ws.send(RawWs.TEXT, deflate(b"ok \xed\xa0\x80 surrogate"), rsv=4)
        code = 1007
    else:
        wire = deflate(b"hello")
        ws.send(RawWs.TEXT, wire[:2], fin=False, rsv=4)
        ws.send(RawWs.CONT, wire[2:], fin=True, rsv=4)
        code = 1002
    assert ws.close_code() == code
    ws.close()


def test_ws_per_message_deflate_false_offers_none(start_server):
    from websockets.sync.client import connect

    srv = asgi(start_server, "--ws-per-message-deflate", "false")
    with connect(ws_url(srv, "/ws/echo")) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("x" * 1000)
        assert ws.recv(timeout=10) == "x" * 1000
    ws = RawWs(srv.port, extra_headers=DEFLATE_OFFER)
    assert b"extensions" not in ws.response.lower()
    ws.send(RawWs.TEXT, deflate(b"hello"), rsv=4)  # RSV1 without the extension: a protocol error
    assert ws.close_code() == 1002
    ws.close()


def _load(srv, stop, failures, served):
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        while not stop.is_set():
            try:
                r = c.get("/scope")
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    served.append(r.json()["state"]["greeting"])
            except httpx.HTTPError as e:
                failures.append(repr(e))


@pytest.mark.parametrize("sig", ["HUP", "TTIN-TTOU"])
def test_hup_and_worker_count_changes_under_load_fail_no_request(start_server, sig):
    srv = start_server(["-k", "asgi", "-w", "2", "--graceful-timeout", "10", RAW])
    srv.wait_workers(2)
    stop, failures, served = threading.Event(), [], []
    ts = [threading.Thread(target=_load, args=(srv, stop, failures, served)) for _ in range(6)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    for i in range(3):
        if sig == "HUP":
            srv.signal(signal.SIGHUP)
            srv.wait_workers(2 * (i + 2), timeout=20)
        else:
            srv.signal(signal.SIGTTIN)
            srv.wait_workers(3 + 2 * i, timeout=20)
            srv.signal(signal.SIGTTOU)
            srv.wait_workers(3 + 2 * i, timeout=20)
            time.sleep(0.3)
            srv.signal(signal.SIGTTIN)
            srv.wait_workers(4 + 2 * i, timeout=20)
            srv.signal(signal.SIGTTOU)
        time.sleep(0.7)
    stop.set()
    for t in ts:
        t.join()
    assert failures == [], (failures[:5], srv.log_text()[-3000:])
    assert len(served) > 100
    # every worker ran the lifespan: the state is in every request, old workers' and new
    assert set(served) == {"hello from lifespan"}


def test_preload_serves_the_app_loaded_in_the_master(start_server, tmp_path):
    srv = start_server(["-k", "asgi", "-w", "2", "--preload", RAW])
    warm_up(srv)
    assert httpx.get(srv.url + "/scope", timeout=10).json()["state"] == {"greeting": "hello from lifespan"}
