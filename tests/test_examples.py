"""The examples shipped in examples/ run as documented."""

import pytest

from conftest import EXAMPLES_DIR, get


@pytest.mark.smoke
def test_hello_example(start_server):
    srv = start_server(["hello"], app_dir=EXAMPLES_DIR)
    r = get(srv.port, "/")
    assert r.status == 200
    assert r.body == b"Hello, World!"
    assert r.header("Content-Type") == "text/plain"
    assert r.header("Content-Length") == "13"
    r = get(srv.port, "/any/path", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert r.header("Content-Length") == "13"


def test_fastapi_example(start_server):
    import os

    import httpx
    from websockets.sync.client import connect

    srv = start_server(["-k", "asgi", "-t", "2", "main:app"], app_dir=os.path.join(EXAMPLES_DIR, "fastapi_app"))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/").json()["hello"] == "world"
        r = c.post("/orders", json={"item": "pen"})
        assert r.json() == {"item": "pen", "quantity": 1, "status": "accepted"}
        assert c.get("/too-slow").status_code == 504
    srv.wait_log(r"await asyncio.sleep\(60\)")
    with connect("ws://127.0.0.1:%d/ws" % srv.port) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
