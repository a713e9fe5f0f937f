"""The asgi worker against more real apps (Starlette HTTP + websocket, a FastAPI websocket route, a Django
Channels consumer), driven by httpx and the `websockets` client over real sockets."""

import concurrent.futures

import httpx
import pytest
from conftest import ws_url

pytestmark = pytest.mark.ferricorn_only


def serve(start_server, app):
    return start_server(["-k", "asgi", "-w", "1", app])


def test_starlette_http_routes_and_websocket(start_server):
    from websockets.sync.client import connect

    srv = serve(start_server, "asgi_starlette:app")
    with httpx.Client(base_url=srv.url, timeout=20) as c:
        for i in range(5):
            assert c.get("/").text == "hello from starlette"
            assert c.get("/users/ann", params={"q": str(i)}).json() == {"user": "ann", "q": str(i)}
            assert c.post("/json", json=[i, "x"]).json() == {"got": [i, "x"], "n": 2}
            assert c.get("/missing").status_code == 404
    for i in range(3):
        with connect(ws_url(srv, "/ws")) as ws:
            for j in range(10):
                ws.send("m%d-%d" % (i, j))
                assert ws.recv(timeout=10) == "starlette: m%d-%d" % (i, j)
            ws.send(b"\x01\x02\x03")
            assert ws.recv(timeout=10) == b"\x03\x02\x01"
    # HTTP still served after the websocket sessions, alongside several at once
    def session(k):
        with connect(ws_url(srv, "/ws")) as ws:
            ws.send("c%d" % k)
            return ws.recv(timeout=10)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        assert list(ex.map(session, range(16))) == ["starlette: c%d" % k for k in range(16)]
    assert httpx.get(srv.url + "/", timeout=10).text == "hello from starlette"


def test_fastapi_websocket_route(start_server):
    from websockets.sync.client import connect

    srv = serve(start_server, "asgi_fastapi:app")
    assert httpx.get(srv.url + "/", timeout=20).json() == {"hello": "world"}
    for i in range(3):
        with connect(ws_url(srv, "/ws/bob")) as ws:
            for j in range(10):
                ws.send('{"i": %d, "j": %d}' % (i, j))
                assert ws.recv(timeout=10) == '{"name":"bob","echo":{"i":%d,"j":%d}}' % (i, j)
    assert httpx.get(srv.url + "/", timeout=20).json() == {"hello": "world"}


def test_django_channels_websocket_consumer(start_server):
    pytest.importorskip("channels")
    from websockets.sync.client import connect

    srv = serve(start_server, "asgi_channels:application")
    assert httpx.get(srv.url + "/", timeout=20).text == "django http"
    for i in range(3):
        with connect(ws_url(srv, "/ws/room%d/" % i)) as ws:
            for j in range(10):
                ws.send("hi %d" % j)
                assert ws.recv(timeout=10) == "room%d: hi %d" % (i, j)
            ws.send(b"\x00bin")
            assert ws.recv(timeout=10) == b"\x00bin"
    assert httpx.get(srv.url + "/", timeout=20).text == "django http"


def _hold(srv, target, rate_limited=False):
    """Send GET `target` on a raw connection and leave it open; a rate-limited one never reads."""
    import socket

    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    if rate_limited:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def test_show_workers_and_stacks_tell_each_task_and_what_it_waits_for(start_server):
    import time

    from test_control import ctl_json, ctl_ok
    from websockets.sync.client import connect

    from conftest import wait_for

    srv = start_server(["-k", "asgi", "-w", "1", "asgi_raw:app"])
    srv.wait_workers(1)
    held = [_hold(srv, "/sleep?s=20"), _hold(srv, "/wait-disconnect"),
            _hold(srv, "/big?n=200000000", rate_limited=True)]
    ws = connect(ws_url(srv, "/ws/forever")).__enter__()
    try:
        def states():
            (w,) = ctl_json(srv, "show", "workers")["workers"]
            return {r["path"]: r.get("task_state") for r in w["in_flight"]}

        want = {"/sleep?s=20": "in the app", "/wait-disconnect": "awaiting http.disconnect",
                "/big?n=200000000": "awaiting the client to read the response",
                "/ws/forever": "awaiting a websocket message"}
        wait_for(lambda: states() == want, 15, message=f"task states {want}")
        text = ctl_ok(srv, "show", "workers")
        assert "task " in text and "thread " not in text, text
        assert "GET /wait-disconnect from 127.0.0.1:" in text and ", awaiting http.disconnect" in text

        # show stacks: each task's await chain, from the app's line down to what it awaits.
        stacks = ctl_ok(srv, "show", "stacks")
        block = stacks.split("GET /sleep?s=20")[1].split("  task ")[0]
        assert "awaiting" in block and "await asyncio.sleep(secs)" in block, stacks
        assert "asgi_raw.py" in block, stacks
        block = stacks.split("GET /wait-disconnect")[1].split("  task ")[0]
        assert "msg = await receive()" in block, stacks

        # A blocked loop cannot answer: its thread's stack stands in, naming the blocking line.
        blocker = _hold(srv, "/block?s=4")
        held.append(blocker)
        time.sleep(1.2)
        stacks = ctl_ok(srv, "show", "stacks")
        assert "(the event loop has been blocked for" in stacks, stacks
        assert "asgi_raw.py" in stacks and "thread's stack" in stacks, stacks
    finally:
        ws.close()
        for s in held:
            s.close()
    # The worker goes on serving.
    assert httpx.get(srv.url + "/", timeout=20).text == "hello"


def test_a_websocket_handshake_the_app_never_answers_gets_504_at_timeout(start_server, tmp_path):
    import time

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from conftest import wait_for

    marker = tmp_path / "ws.txt"
    srv = start_server(["-k", "asgi", "-w", "1", "-t", "2", "asgi_raw:app"],
                       env={"ASGI_WS_MARKER": str(marker)})
    srv.wait_workers(1)
    for i in range(3):
        t0 = time.monotonic()
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url(srv, "/ws/never-answer"), open_timeout=15).close()
        assert e.value.response.status_code == 504
        assert time.monotonic() - t0 < 8
        # The same worker goes on: HTTP and an accepted websocket after it.
        assert httpx.get(srv.url + "/", timeout=10).text == "hello"
        with connect(ws_url(srv, "/ws/echo")) as ws:
            ws.send("still here")
            assert ws.recv(timeout=10) == "still here"
    srv.wait_log(r"Request exceeded --timeout 2s: GET /ws/never-answer", count=3)
    text = srv.log_text()
    assert "a request's task ran past --timeout 2s and is cancelled" in text
    block = text.split("Await stack of its task (most recent call first):\n", 1)[1]
    assert "asgi_raw.py" in block and "await asyncio.sleep(3600)" in block, block
    # The task was cancelled (its finally ran), not abandoned.
    wait_for(lambda: marker.exists() and marker.read_text().count("handshake cancelled") == 3, 5,
             message="three cancellations")
    assert len(srv.worker_pids_from_log()) == 1


@pytest.mark.parametrize("grace", [None, "0"])
def test_a_task_whose_client_left_is_cancelled_after_the_grace_period(start_server, tmp_path, grace):
    import socket
    import time

    from conftest import wait_for

    marker = tmp_path / "cancel.txt"
    args = ["-k", "asgi", "-w", "1", "asgi_raw:app"]
    if grace is not None:
        args += ["--asgi-disconnect-grace-period", grace]
    srv = start_server(args, env={"ASGI_CANCEL_MARKER": str(marker)})
    srv.wait_workers(1)
    for i in range(3):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        s.close()
        left = time.monotonic()
        if grace is None:
            # The default gives the app 3 s to notice (http.disconnect) before it is cancelled.
            time.sleep(1)
            assert not marker.exists() or marker.read_text().count("cancelled") == i
        wait_for(lambda: marker.exists() and marker.read_text().count("cancelled") == i + 1, 10,
                 message="the task cancelled")
        if grace is None:
            assert time.monotonic() - left >= 2.5
    want = "3s" if grace is None else "0s"
    srv.wait_log(r"Request GET /forever from 127\.0\.0\.1:\d+: its client left \d+s ago and the task "
                 rf"still runs: cancelled \(--asgi-disconnect-grace-period {want}\)", count=3)
    # A client that stays gets its answer; the worker goes on.
    assert httpx.get(srv.url + "/sleep?s=1", timeout=10).text == "slept"
    assert len(srv.worker_pids_from_log()) == 1
