"""103 Early Hints: `environ["wsgi.early_hints"]` (WSGI, as gunicorn 25) and `http.response.informational`
(ASGI), sent before the final response to HTTP/1.1 clients only; read off raw sockets, and through
kept-alive connections to check the framing of what follows."""

import socket

import httpx
import pytest

pytestmark = pytest.mark.ferricorn_only


def exchange(srv, *requests):
    """Send raw `requests` on one connection (the last one asks to close it) and read to the end."""
    last = requests[-1].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"".join(requests[:-1]) + last)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


WSGI_HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
              b"Link: </app.js>; rel=preload; as=script\r\n\r\nHTTP/1.1 200 ")


def test_wsgi_early_hints_reach_an_http11_client_before_the_response(start_server):
    srv = start_server(["-w", "1", "--threads", "2", "testapp:application"])
    req = b"GET /early-hints HTTP/1.1\r\nHost: x\r\n\r\n"
    # Twice on one kept-alive connection, after other traffic: each response gets its own hints, and
    # the framing of the next request is intact.
    data = exchange(srv, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", req, req)
    assert data.count(WSGI_HINTS) == 2, data
    assert data.count(b"<html>hinted</html>") == 2
    # A hint after start_response is ignored.
    assert b"late.css" not in data
    # An HTTP/1.0 client gets none.
    data = exchange(srv, b"GET /early-hints HTTP/1.0\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200 ") and b"103" not in data.split(b"\r\n")[0], data
    # A real client takes the final response.
    r = httpx.get(srv.url + "/early-hints", timeout=10)
    assert r.status_code == 200 and r.text == "<html>hinted</html>"


def test_asgi_informational_103(start_server):
    srv = start_server(["-k", "asgi", "-w", "1", "asgi_raw:app"])
    req = b"GET /early-hints HTTP/1.1\r\nHost: x\r\n\r\n"
    data = exchange(srv, req, req)
    assert data.count(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
                      b"HTTP/1.1 200 ") == 2, data
    data = exchange(srv, b"GET /early-hints HTTP/1.0\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200 ") and b" 103 " not in data, data
    # After http.response.start it is an error of the app's: logged, and answered 500 as any.
    assert httpx.get(srv.url + "/late-hint", timeout=10).status_code == 500
    srv.wait_log(r"'http.response.informational' is only allowed before 'http.response.start'")
    assert httpx.get(srv.url + "/", timeout=10).text == "hello"
