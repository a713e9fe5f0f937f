"""The examples shipped in examples/ run as documented."""

from conftest import EXAMPLES_DIR, get


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
