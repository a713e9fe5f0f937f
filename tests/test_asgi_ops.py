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
