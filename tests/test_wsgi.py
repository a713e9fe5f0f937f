"""The WSGI bridge (PEP 3333): environ, wsgi.input, start_response, write(), close(), response
headers, errors, wsgi.file_wrapper, and an app checked by wsgiref.validate."""

import hashlib
import io
import json
import os
import socket
import time
from urllib.parse import quote

import pytest
import requests

from conftest import (
    IncompleteResponse, RawConnection, get, raw_exchange, raw_request, wait_for,
)


@pytest.fixture(scope="module")
def close_log(tmp_path_factory):
    return str(tmp_path_factory.mktemp("close") / "close.log")


@pytest.fixture(scope="module")
def srv(module_server, close_log):
    return module_server(["-w", "1", "testapp"], env={"CLOSE_LOG": close_log})


def _environ(port, path="/environ", method="GET", headers=None, body=b""):
    r = get(port, path, headers=headers, method=method, body=body)
    assert r.status == 200, r
    return json.loads(r.body)


# ---------------------------------------------------------------------------------------------
# environ


@pytest.mark.smoke
def test_environ_pep3333_keys(srv):
    with RawConnection(srv.port) as c:
        client_port = c.sock.getsockname()[1]
        c.send(b"POST /environ/sub?a=1&b=%20x HTTP/1.1\r\nHost: 127.0.0.1:" + str(srv.port).encode()
               + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n"
               b"X-Custom-Thing: custom value\r\nUser-Agent: wsgi-test\r\nConnection: close\r\n\r\n"
               b"data")
        r = c.read_final_response()[0]
    assert r.status == 200
    env = json.loads(r.body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/sub"
    assert env["QUERY_STRING"] == "a=1&b=%20x"
    assert env["RAW_URI"] == "/environ/sub?a=1&b=%20x"
    assert env["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "4"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["SERVER_NAME"] in ("127.0.0.1", "localhost")
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{srv.port}"
    assert env["HTTP_X_CUSTOM_THING"] == "custom value"
    assert env["HTTP_USER_AGENT"] == "wsgi-test"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert {"read", "readline", "readlines", "__iter__"} <= set(env["wsgi.input"]["methods"])
    assert {"write", "writelines", "flush"} <= set(env["wsgi.errors"]["methods"])
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.file_wrapper"]["callable"] is True


def test_environ_get_without_body(srv):
    env = _environ(srv.port, "/environ")
    assert env["REQUEST_METHOD"] == "GET"
    assert env["QUERY_STRING"] == ""
    assert env.get("CONTENT_LENGTH", "") in ("", "0")


def test_environ_http10(srv):
    data = raw_exchange(srv.port, b"GET /environ HTTP/1.0\r\n\r\n")
    env = json.loads(data.partition(b"\r\n\r\n")[2])
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["SERVER_PORT"] == str(srv.port)


@pytest.mark.parametrize("raw,decoded", [
    ("/environ/caf%C3%A9", "/environ/caf\u00c3\u00a9"),
    ("/environ/a%20b", "/environ/a b"),
    ("/environ/plain", "/environ/plain"),
])
def test_path_info_percent_decoded_as_latin1(srv, raw, decoded):
    env = _environ(srv.port, raw + "?q=%C3%A9")
    assert env["PATH_INFO"] == decoded
    assert env["RAW_URI"] == raw + "?q=%C3%A9"
    assert env["QUERY_STRING"] == "q=%C3%A9"  # the query string stays encoded


def test_repeated_headers_joined(srv):
    r = raw_request(srv.port, b"GET /environ HTTP/1.1\r\nHost: x\r\nX-Multi: a\r\nX-Other: 1\r\n"
                              b"X-Multi: b\r\nConnection: close\r\n\r\n")
    env = json.loads(r.body)
    assert env["HTTP_X_MULTI"] == "a,b"
    assert env["HTTP_X_OTHER"] == "1"


def test_script_name_from_environment(start_server):
    s = start_server(["testapp"], env={"SCRIPT_NAME": "/prefix"})
    env = _environ(s.port, "/prefix/environ/inner")
    assert env["SCRIPT_NAME"] == "/prefix"
    assert env["PATH_INFO"] == "/environ/inner"
    assert env["RAW_URI"] == "/prefix/environ/inner"


def test_forwarded_proto_trusted_by_default(srv):
    env = _environ(srv.port, headers={"X-Forwarded-Proto": "https"})
    assert env["wsgi.url_scheme"] == "https"
    assert _environ(srv.port)["wsgi.url_scheme"] == "http"


def test_forwarded_proto_from_untrusted_peer_ignored(start_server):
    s = start_server(["--forwarded-allow-ips", "10.0.0.1", "testapp"])
    env = _environ(s.port, headers={"X-Forwarded-Proto": "https"})
    assert env["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize("args,multiprocess,multithread", [
    (["-w", "2"], True, False),
    (["-w", "1", "-k", "gthread", "--threads", "3"], False, True),
    (["-w", "2", "-k", "gthread", "--threads", "2"], True, True),
], ids=["w2-sync", "w1-gthread", "w2-gthread"])
def test_multiprocess_multithread_flags(start_server, args, multiprocess, multithread):
    s = start_server([*args, "testapp"])
    env = _environ(s.port)
    assert env["wsgi.multiprocess"] is multiprocess
    assert env["wsgi.multithread"] is multithread


# ---------------------------------------------------------------------------------------------
# wsgi.input

BODY = b"first line\nsecond, longer line of the body\n\nfourth after an empty one\nno newline at the end"


def _expected(op, body):
    f = io.BytesIO(body)
    if op == "readn":
        parts = [f.read(3), f.read(4), f.read(1), f.read(100000), f.read(5)]
    elif op == "read":
        parts = [f.read(), f.read()]
    elif op == "readline":
        parts = []
        while True:
            line = f.readline()
            parts.append(line)
            if not line:
                break
    elif op == "readline_n":
        parts = [f.readline(2), f.readline(2), f.readline(100), f.readline(), f.readline()]
    elif op == "readlines":
        parts = f.readlines()
    else:
        parts = list(f)
    return [p.decode("latin-1") for p in parts]


def _chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


OPS = ["readn", "read", "readline", "readline_n", "readlines", "iter"]


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("op", OPS)
def test_wsgi_input_methods(srv, op, framing):
    head = f"POST /input?op={op} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    if framing == "length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    else:
        # 7-byte chunks: lines span chunk boundaries
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(BODY, 7)
    r = raw_request(srv.port, data)
    assert r.status == 200, r
    assert json.loads(r.body) == _expected(op, BODY)


@pytest.mark.parametrize("op", OPS)
def test_wsgi_input_empty_body(srv, op):
    r = raw_request(srv.port, f"POST /input?op={op} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                              f"Connection: close\r\n\r\n".encode())
    assert r.status == 200
    assert json.loads(r.body) == _expected(op, b"")


def _blocks(total_mb):
    base = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    for i in range(total_mb):
        k = (i * 7919) % len(base)
        yield base[k:] + base[:k]


def test_large_chunked_upload(srv):
    h = hashlib.sha256()
    total = 0

    def body():
        nonlocal total
        for block in _blocks(50):
            h.update(block)
            total += len(block)
            yield block

    r = requests.post(srv.url + "/sha256", data=body(), timeout=120)
    assert r.status_code == 200
    result = r.json()
    assert result["length"] == total == 50 * 1024 * 1024
    assert result["sha256"] == h.hexdigest()
    assert result["reads"] >= total // 65536


def test_large_upload_with_content_length(srv):
    data = b"".join(_blocks(8))
    r = requests.post(srv.url + "/sha256", data=data, timeout=60)
    assert r.status_code == 200
    assert r.json()["length"] == len(data)
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# start_response and write()


def test_exc_info_before_headers_replaces_response(srv):
    r = get(srv.port, "/exc-before")
    assert r.status == 503
    assert r.reason == "Replaced"
    assert r.body == b"replaced response"


@pytest.mark.ferricorn_only
def test_exc_info_before_headers_replaces_headers(srv):
    # PEP 3333: the new headers replace the stored ones (gunicorn keeps the old ones as well)
    r = get(srv.port, "/exc-before")
    assert r.status == 503
    assert r.header("X-First") is None
    assert r.header_all("Content-Type") == ["text/plain"]


def test_exc_info_after_headers_reraises(srv):
    with RawConnection(srv.port, timeout=10) as c:
        c.send(b"GET /exc-after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            r = c.read_response()
            complete = True
        except IncompleteResponse:
            r, complete = None, False
        rest = c.buf + c.read_until_close()
    # the 200 already on the wire cannot be taken back: the response is cut short (or, had
    # nothing been sent yet, replaced by an error); the late body never appears
    if complete:
        assert r.status >= 500, r
        assert b"must-not-be-sent" not in r.raw
    assert b"must-not-be-sent" not in rest
    wait_for(lambda: "late failure after the headers" in srv.log_text(), 10,
             message="the re-raised exception in the log")


def test_write_callable(srv):
    r = get(srv.port, "/write")
    assert r.status == 200
    assert r.header("Content-Length") == "17"
    assert r.body == b"part1-part2-part3"


def _pattern(n, salt=0):
    block = bytes((i + salt) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


# Large pieces are written from the app's own bytes objects (no copy); small ones are copied into the
# response buffer. Both sides of that line, in every framing, must put the same bytes on the wire.
@pytest.mark.parametrize("size", [100, 16 * 1024 - 1, 16 * 1024, 100_000])
@pytest.mark.parametrize("shape", ["list", "parts", "iter", "write"])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_large_bodies_byte_exact(srv, shape, size, version):
    count = 1 if shape == "list" else 3
    r = get(srv.port, f"/large?shape={shape}&size={size}&count={count}", version=version)
    assert r.status == 200
    expected = b"".join(_pattern(size, salt=i) for i in range(count))
    assert len(r.body) == len(expected)
    assert r.body == expected
    if shape in ("iter", "write"):
        assert r.framing == ("chunked" if version == "1.1" else "close")


@pytest.mark.parametrize("shape", ["list", "parts", "iter"])
def test_large_body_truncated_to_declared_length(srv, shape):
    # A Content-Length below the body: exactly that many bytes go out.
    declared = 40_000
    size, count = (50_000, 1) if shape == "list" else (30_000, 2)
    for _ in range(2):
        c = RawConnection(srv.port, timeout=10)
        c.send(f"GET /large?shape={shape}&size={size}&count={count}&declared={declared} HTTP/1.1\r\n"
               "Host: x\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200
        assert r.header("Content-Length") == str(declared)
        whole = b"".join(_pattern(size, salt=i) for i in range(count))
        assert r.body == whole[:declared]
        c.close()


@pytest.mark.smoke
@pytest.mark.ferricorn_only  # gunicorn's sync worker closes every connection
def test_large_bodies_keep_alive_many(srv):
    # Many large responses on one connection: each borrowed body stays intact until it is written.
    c = RawConnection(srv.port, timeout=10)
    for i in range(30):
        c.send(b"GET /large?shape=iter&size=70000&count=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.body == _pattern(70000) + _pattern(70000, salt=1), i
    c.close()


# ---------------------------------------------------------------------------------------------
# close()


def _close_lines(close_log, tag):
    if not os.path.exists(close_log):
        return []
    with open(close_log) as f:
        return [line.split() for line in f if line.split()[1:2] == [tag]]


def test_close_called_on_success(srv, close_log):
    r = get(srv.port, "/closing?mode=ok&tag=success")
    assert r.status == 200
    assert len(r.body) == 4 * 16
    lines = wait_for(lambda: _close_lines(close_log, "success"), 10, message="close() call")
    assert lines == [["close", "success", "sent=4"]]


def test_close_called_when_iteration_raises(srv, close_log):
    data = raw_exchange(srv.port, b"GET /closing?mode=raise&tag=failing HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n")
    # 2 items were sent before the failure; the response must not look complete
    assert not data.endswith(b"0\r\n\r\n")
    lines = wait_for(lambda: _close_lines(close_log, "failing"), 10, message="close() call")
    assert lines == [["close", "failing", "sent=2"]]
    wait_for(lambda: "iteration failure in failing" in srv.log_text(), 10,
             message="the iteration error in the log")


def test_close_called_when_client_disconnects(srv, close_log):
    c = RawConnection(srv.port, timeout=10)
    c.send(b"GET /closing?mode=slow&tag=gone HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    for _ in range(1000):
        piece = c.sock.recv(65536)
        got += piece
        if not piece or len(got) >= 100000:
            break
    assert got.startswith(b"HTTP/1.1 200")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    lines = wait_for(lambda: _close_lines(close_log, "gone"), 15, message="close() call")
    assert len(lines) == 1
    sent = int(lines[0][2].split("=")[1])
    assert sent < 2000, "the app was iterated to the end although the client had gone"
    # the worker is free again
    assert get(srv.port, "/hello").status == 200


# ---------------------------------------------------------------------------------------------
# response headers


def test_content_length_from_app(srv):
    r = get(srv.port, "/length")
    assert r.header("Content-Length") == "5"
    assert r.header("Transfer-Encoding") is None
    assert r.framing == "length"
    assert r.body == b"hello"


def test_hop_by_hop_headers_dropped(srv):
    r = get(srv.port, "/hop")
    assert r.status == 200
    assert r.body == b"hop-by-hop body"
    assert r.header("X-Kept") == "kept"
    assert r.header_all("Keep-Alive") == []
    assert all(v.lower() != "keep-alive" for v in r.header_all("Connection")), r.headers
    assert len(r.header_all("Transfer-Encoding")) <= 1


@pytest.mark.parametrize("kind", ["value", "lf", "name"])
def test_header_with_newline_gives_500(srv, kind):
    data = raw_exchange(srv.port, f"GET /badheader?kind={kind} HTTP/1.1\r\nHost: x\r\n"
                                  f"Connection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500"), data
    assert b"X-Injected" not in data
    assert b"should not be sent" not in data


def test_app_exception_gives_500_and_is_logged(srv):
    r = get(srv.port, "/error")
    assert r.status == 500
    assert b"deliberate failure" not in r.body  # no traceback for the client
    log = srv.wait_log(r"Error handling request GET /error")
    assert log
    text = srv.log_text()
    tail = text[text.index("Error handling request GET /error"):]
    assert "Traceback (most recent call last)" in tail
    assert "RuntimeError: deliberate failure in the error route" in tail


def test_file_wrapper(srv, tmp_path):
    path = tmp_path / "payload.bin"
    content = b"".join(_blocks(1)) + b"tail bytes"
    path.write_bytes(content)
    r = get(srv.port, f"/file?path={quote(str(path))}")
    assert r.status == 200
    assert r.header("Content-Length") == str(len(content))
    assert r.body == content


@pytest.mark.parametrize("args,expected", [([], b"abc" * 5000), (["--no-sendfile"], b"ABC" * 5000)],
                         ids=["sendfile", "no-sendfile"])
def test_no_sendfile_reads_the_file_through_python(start_server, tmp_path, args, expected):
    """By default a file_wrapper body goes out from the descriptor and the object's read() is not called;
    --no-sendfile (as in gunicorn) reads it through the object. The route's read() upper-cases."""
    path = tmp_path / "lower.txt"
    path.write_bytes(b"abc" * 5000)
    srv = start_server(["-w", "1", *args, "testapp"])
    r = get(srv.port, f"/upper-file?path={quote(str(path))}")
    assert r.status == 200
    assert r.header("Content-Length") == str(len(expected))
    assert r.body == expected


def test_file_wrapper_head_sends_no_body_and_keeps_the_connection(srv, tmp_path):
    path = tmp_path / "head.bin"
    path.write_bytes(b"x" * 5000)
    with RawConnection(srv.port) as c:
        c.send(f"HEAD /file?path={quote(str(path))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        r = c.read_response(head=True)
        assert r.status == 200
        assert r.header("Content-Length") == "5000"
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        # no stray body bytes from the HEAD response in front of this one
        assert (r.status, r.body) == (200, b"Hello, World!")


def test_large_file_to_a_reader_that_pauses_arrives_whole(srv, tmp_path):
    # The socket holds only a little of a file unsent at a time (TCP_NOTSENT_LOWAT), so a large file is
    # sent in many pieces as the client drains it: all of it arrives, in order, and the connection carries
    # the next request afterwards.
    content = os.urandom(12 * 1024 * 1024 + 17)
    path = tmp_path / "large.bin"
    path.write_bytes(content)
    with RawConnection(srv.port, timeout=20) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        for _ in range(2):
            c.send(f"GET /file?path={quote(str(path))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                piece = c.sock.recv(4096)
                assert piece, head
                head += piece
            head, _, body = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert f"Content-Length: {len(content)}".encode() in head, head
            digest = hashlib.sha256(body)
            received = len(body)
            pauses = 0
            while received < len(content):
                if pauses < 5 and received > pauses * 2 * 1024 * 1024:
                    time.sleep(0.2)  # let the server find the socket full
                    pauses += 1
                piece = c.sock.recv(min(65536, len(content) - received))
                assert piece, f"connection closed after {received} of {len(content)} bytes"
                digest.update(piece)
                received += len(piece)
            assert digest.digest() == hashlib.sha256(content).digest()
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200


def test_file_wrapper_over_a_unix_socket_on_a_kept_alive_connection(start_server, tmp_short, tmp_path):
    """A unix socket sends files from the descriptor too (the route's read() upper-cases, so a body read
    through Python would show), large ones in many pieces, and the connection carries the next request."""
    sock_path = os.path.join(tmp_short, "files.sock")
    srv = start_server(["-b", f"unix:{sock_path}", "-w", "1", "testapp"], bind=False, ready=False)
    srv.wait_ready(addr=(socket.AF_UNIX, sock_path))
    lower = tmp_path / "lower.txt"
    lower.write_bytes(b"abc" * 5000)
    large = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "large.bin").write_bytes(large)
    with RawConnection(None, family=socket.AF_UNIX, addr=sock_path, timeout=20) as c:
        for _ in range(3):
            c.send(f"GET /upper-file?path={quote(str(lower))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r = c.read_response()
            assert (r.status, r.body) == (200, b"abc" * 5000)
            c.send(f"GET /file?path={quote(str(tmp_path / 'large.bin'))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200
            assert r.header("Content-Length") == str(len(large))
            assert hashlib.sha256(r.body).digest() == hashlib.sha256(large).digest()
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"Hello, World!")


def test_file_to_slow_reader_does_not_hold_the_worker(srv, tmp_path):
    # A file sent with sendfile needs no Python thread: while one client does not read its download, the
    # one sync thread serves others at once (not after the download ends or times out).
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse: far more than the socket buffers hold
    stalled = RawConnection(srv.port, timeout=10)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.send(f"GET /file?path={quote(str(path))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert stalled.sock.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        t0 = time.monotonic()
        for _ in range(3):
            assert get(srv.port, "/hello", timeout=10).status == 200
        # Generous: the point is "not after the download's 30 s write timeout".
        assert time.monotonic() - t0 < 8
    finally:
        stalled.close()


# ---------------------------------------------------------------------------------------------
# wsgiref.validate


def test_validator_app(start_server):
    s = start_server(["-w", "1", "validated"])
    r = get(s.port, "/v?x=1")
    assert (r.status, r.body) == (200, b"validated GET")
    r = get(s.port, "/v", method="POST", body=b"some data",
            headers={"Content-Type": "application/octet-stream"})
    assert (r.status, r.body) == (200, b"posted:some data")
    r = get(s.port, "/v", method="HEAD")
    assert r.status == 200 and r.body == b""
    r = requests.post(s.url + "/v", data=iter([b"chunked ", b"body"]), timeout=10)
    assert r.status_code == 200 and r.content == b"posted:chunked body"
    # what the app wrote to wsgi.errors reaches the error log
    s.wait_log(r"validated app saw HEAD")
    time.sleep(0.3)
    log = s.log_text()
    assert "AssertionError" not in log, log
    assert "Traceback" not in log, log
    assert "Error handling request" not in log, log
