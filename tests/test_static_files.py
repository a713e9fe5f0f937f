"""Static files answered by the worker's I/O thread (`--static-map PREFIX=DIR`), never by the app.

Every request goes over a real socket (http.client, which sends paths exactly as given and does not
decode bodies; requests where a client that decodes gzip is the point; raw sockets for bytes no client
library sends). The app records each call it gets (CALL_LOG): a static request must never appear
there. The Django case runs collectstatic with ManifestStaticFilesStorage and maps STATIC_URL to
STATIC_ROOT from a config file.
"""

import gzip
import hashlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

from conftest import APPS_DIR, run_cli, wait_for

pytestmark = pytest.mark.ferricorn_only

JS = b"function hello() { return 'static from the I/O thread'; }\n" * 40
CSS = b"body { color: #333; }\n" * 10
BIG = os.urandom(3 * 1024 * 1024 + 123)


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def tree():
    """A static root, a secret beside it, and an app call log."""
    base = tempfile.mkdtemp(prefix="fcn-static-")
    root = os.path.join(base, "root")
    _write(os.path.join(root, "site.css"), CSS)
    _write(os.path.join(root, "js", "app.js"), JS)
    _write(os.path.join(root, "js", "app.js.gz"), gzip.compress(JS))
    # Not real brotli (no encoder is needed to tell which file was sent): marked bytes.
    _write(os.path.join(root, "js", "app.js.br"), b"BROTLI:" + JS[:100])
    _write(os.path.join(root, "js", "only-gz.js"), JS)
    _write(os.path.join(root, "js", "only-gz.js.gz"), gzip.compress(JS))
    _write(os.path.join(root, "css", "base.5af66c1b1797.css"), CSS)
    _write(os.path.join(root, "img", "dot.png"), b"\x89PNG\r\n\x1a\n" + bytes(100))
    _write(os.path.join(root, "data.json"), b'{"a": 1}')
    _write(os.path.join(root, "font.woff2"), b"wOF2" + bytes(50))
    _write(os.path.join(root, "LICENSE"), b"no extension\n")
    _write(os.path.join(root, "big.bin"), BIG)
    _write(os.path.join(root, "a b.txt"), b"spaced\n")
    _write(os.path.join(root, "empty.txt"), b"")
    os.makedirs(os.path.join(root, "sub", "deeper"))
    _write(os.path.join(base, "secret.txt"), b"TOP SECRET\n")
    os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "out.txt"))
    os.symlink(base, os.path.join(root, "outdir"))
    os.symlink(os.path.join(root, "site.css"), os.path.join(root, "inside.css"))
    calls = os.path.join(base, "calls.log")
    access = os.path.join(base, "access.log")
    yield {"base": base, "root": root, "calls": calls, "access": access}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(module_server, tree):
    return module_server(
        ["-w", "1", "--threads", "2", "--static-map", f"/static={tree['root']}",
         "--access-logfile", tree["access"], "testapp:application"],
        env={"CALL_LOG": tree["calls"]},
    )


def app_calls(tree):
    try:
        with open(tree["calls"]) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def get(srv, path, headers=None, method="GET", conn=None, body=None):
    """One request on `conn` (a new connection if None): (status, headers in lower case, body)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            c.close()


def raw(srv, request):
    """Send raw bytes, read until the server closes: the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", out)
    assert m, out[:200]
    return int(m.group(1)), out


def test_files_with_their_types_validators_and_cache(server, tree):
    cases = [
        ("/static/site.css", "text/css; charset=utf-8", CSS),
        ("/static/js/app.js", "text/javascript; charset=utf-8", JS),
        ("/static/img/dot.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("/static/data.json", "application/json", b'{"a": 1}'),
        ("/static/font.woff2", "font/woff2", b"wOF2" + bytes(50)),
        ("/static/LICENSE", "application/octet-stream", b"no extension\n"),
        ("/static/a%20b.txt", "text/plain; charset=utf-8", b"spaced\n"),
        ("/static/inside.css", "text/css; charset=utf-8", CSS),
        ("/static/empty.txt", "text/plain; charset=utf-8", b""),
        # A query string (a cache buster) does not change the file.
        ("/static/site.css?v=3", "text/css; charset=utf-8", CSS),
    ]
    for path, ctype, data in cases:
        status, h, body = get(server, path)
        assert status == 200, path
        assert body == data, path
        assert h["content-type"] == ctype, path
        assert h["content-length"] == str(len(data)), path
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', h["etag"]), h
        assert h["last-modified"].endswith(" GMT")
        assert h["cache-control"] == "public, max-age=60"
        assert h["accept-ranges"] == "bytes"
        assert "content-encoding" not in h
    # Vary only where a coded sibling could be chosen (text formats), not for images.
    assert get(server, "/static/site.css")[1]["vary"] == "Accept-Encoding"
    assert "vary" not in get(server, "/static/img/dot.png")[1]
    # A name with a ManifestStaticFilesStorage hash may be cached for good.
    status, h, body = get(server, "/static/css/base.5af66c1b1797.css")
    assert (status, body) == (200, CSS)
    assert h["cache-control"] == "public, max-age=31536000, immutable"
    assert app_calls(tree) == []


def test_etag_and_last_modified_give_304(server, tree):
    status, h, _ = get(server, "/static/site.css")
    etag, lm = h["etag"], h["last-modified"]
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"nope", W/{etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": lm},
        {"If-Modified-Since": "Fri, 31 Dec 2100 23:59:59 GMT"},
    ):
        status, h304, body = get(server, "/static/site.css", headers, conn=c)
        assert (status, body) == (304, b""), headers
        assert h304["etag"] == etag and h304["last-modified"] == lm
        assert h304["cache-control"] == "public, max-age=60"
        assert "content-length" not in h304
    # A different tag wins over a date that would match (If-None-Match is looked at first).
    for headers in (
        {"If-None-Match": '"other"'},
        {"If-None-Match": '"other"', "If-Modified-Since": lm},
        {"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"},
        {"If-Modified-Since": "not a date"},
    ):
        status, _, body = get(server, "/static/site.css", headers, conn=c)
        assert (status, body) == (200, CSS), headers
    # If-Match / If-Unmodified-Since: 412 when the file is not that one.
    assert get(server, "/static/site.css", {"If-Match": '"other"'}, conn=c)[0] == 412
    assert get(server, "/static/site.css", {"If-Match": etag}, conn=c)[0] == 200
    old = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert get(server, "/static/site.css", {"If-Unmodified-Since": old}, conn=c)[0] == 412
    # All of it on one kept-alive connection.
    assert get(server, "/static/site.css", conn=c)[2] == CSS
    c.close()


def test_ranges(server):
    n = len(BIG)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for spec, first, last in (
        ("bytes=0-9", 0, 9),
        ("bytes=1000-", 1000, n - 1),
        ("bytes=-500", n - 500, n - 1),
        ("bytes=2000000-2999999", 2000000, 2999999),
        (f"bytes=5-{n + 1000}", 5, n - 1),
    ):
        status, h, body = get(server, "/static/big.bin", {"Range": spec}, conn=c)
        assert status == 206, spec
        assert h["content-range"] == f"bytes {first}-{last}/{n}", spec
        assert h["content-length"] == str(last - first + 1)
        assert body == BIG[first:last + 1], spec
    for spec in (f"bytes={n}-", "bytes=-0", f"bytes={n + 5}-{n + 9}"):
        status, h, body = get(server, "/static/big.bin", {"Range": spec}, conn=c)
        assert status == 416, spec
        assert h["content-range"] == f"bytes */{n}"
        assert body == b""
    # Several ranges, another unit, nonsense: the whole file.
    for spec in ("bytes=0-1,5-6", "items=0-5", "bytes=x-y"):
        status, h, body = get(server, "/static/data.json", {"Range": spec}, conn=c)
        assert (status, body) == (200, b'{"a": 1}'), spec
    # If-Range: the range only while the validator is the file's.
    etag, lm = get(server, "/static/data.json", conn=c)[1]["etag"], None
    lm = get(server, "/static/data.json", conn=c)[1]["last-modified"]
    assert get(server, "/static/data.json", {"Range": "bytes=0-1", "If-Range": etag},
               conn=c)[:3:2] == (206, b'{"')
    assert get(server, "/static/data.json", {"Range": "bytes=0-1", "If-Range": lm},
               conn=c)[:3:2] == (206, b'{"')
    assert get(server, "/static/data.json", {"Range": "bytes=0-1", "If-Range": '"old"'},
               conn=c)[:3:2] == (200, b'{"a": 1}')
    assert get(server, "/static/data.json", {"Range": "bytes=0-1", "If-Range": f"W/{etag}"},
               conn=c)[0] == 200
    # An empty file has no satisfiable range.
    assert get(server, "/static/empty.txt", {"Range": "bytes=0-"}, conn=c)[0] == 416
    c.close()


def test_precompressed_siblings_by_accept_encoding(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, h, body = get(server, "/static/js/app.js", {"Accept-Encoding": "gzip, deflate, br"},
                          conn=c)
    assert (status, h["content-encoding"], body) == (200, "br", b"BROTLI:" + JS[:100])
    assert h["vary"] == "Accept-Encoding"
    assert h["content-type"] == "text/javascript; charset=utf-8"
    br_etag = h["etag"]
    for ae in ("gzip", "br;q=0, gzip", "gzip;q=1.0, br;q=0.5", "x-gzip"):
        status, h, body = get(server, "/static/js/app.js", {"Accept-Encoding": ae}, conn=c)
        assert (status, h.get("content-encoding")) == (200, "gzip"), ae
        assert gzip.decompress(body) == JS
        assert h["etag"] != br_etag
    for ae in ("identity", "br;q=0, gzip;q=0", "deflate"):
        status, h, body = get(server, "/static/js/app.js", {"Accept-Encoding": ae}, conn=c)
        assert (status, body) == (200, JS), ae
        assert "content-encoding" not in h and h["vary"] == "Accept-Encoding"
    # Only a gzip sibling: br-first clients get it.
    status, h, body = get(server, "/static/js/only-gz.js", {"Accept-Encoding": "br, gzip"}, conn=c)
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == JS
    # A range is served from the file itself.
    status, h, body = get(server, "/static/js/app.js",
                          {"Accept-Encoding": "br, gzip", "Range": "bytes=0-7"}, conn=c)
    assert (status, body) == (206, JS[:8]) and "content-encoding" not in h
    # The tag of the br answer gives 304 for br, not for the plain file.
    assert get(server, "/static/js/app.js", {"Accept-Encoding": "br", "If-None-Match": br_etag},
               conn=c)[0] == 304
    assert get(server, "/static/js/app.js", {"If-None-Match": br_etag}, conn=c)[0] == 200
    c.close()
    # A client that decodes gzip itself gets the original bytes.
    r = requests.get(f"{server.url}/static/js/only-gz.js", headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and r.content == JS


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/.%2e/secret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/sub/..%2f..%2fsecret.txt",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/static/..%5csecret.txt",
    "/static/sub\\..\\..\\secret.txt",
    "/static/out.txt",
    "/static/outdir/secret.txt",
    "/static/site.css%00.png",
    "/static/%00",
    "/static//etc/passwd",
    "/static/sub",
    "/static/sub/",
    "/static/sub/deeper",
    "/static/",
    "/static",
    "/static/missing.css",
    "/static/js/app.js.missing",
]


def test_path_traversal_and_non_files_are_404(server, tree):
    before = len(app_calls(tree))
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in TRAVERSALS:
        status, h, body = get(server, path, conn=c)
        assert status == 404, path
        assert b"SECRET" not in body and b"root:" not in body, path
        assert body == b"Not Found\n"
    # A malformed escape is the client's syntax error.
    for path in ("/static/%zz.css", "/static/a%2"):
        assert get(server, path, conn=c)[0] == 400, path
    c.close()
    # The same with raw bytes no client library would send as they are.
    for path in (b"/static/../secret.txt", b"/static/./../secret.txt", b"/static/%2e%2e/secret.txt"):
        status, out = raw(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status in (400, 404), path
        assert b"SECRET" not in out
    # Nothing of it reached the app.
    assert app_calls(tree)[before:] == []
    # A sibling of the mount's prefix is the app's.
    assert get(server, "/staticx/site.css")[0] == 404
    assert app_calls(tree)[-1] == "GET /staticx/site.css"


def test_head_and_other_methods(server, tree):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, h, body = get(server, "/static/big.bin", method="HEAD", conn=c)
    assert (status, body) == (200, b"")
    assert h["content-length"] == str(len(BIG))
    # The connection goes on after a bodiless answer.
    assert get(server, "/static/site.css", conn=c)[2] == CSS
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, h, body = get(server, "/static/site.css", method=method, conn=c)
        assert status == 405, method
        assert h["allow"] == "GET, HEAD"
    c.close()
    # With a body (which is not read), the answer closes the connection.
    status, out = raw(server, b"POST /static/site.css HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert status == 405 and b"Connection: close" in out
    assert not [line for line in app_calls(tree) if "/static/" in line]


def test_big_file_intact_through_sendfile(server):
    digest = hashlib.sha256(BIG).hexdigest()
    for _ in range(3):
        r = requests.get(f"{server.url}/static/big.bin")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == digest
    # A slow reader: the kernel's socket buffers fill and the send waits for room.
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = bytearray()
        time.sleep(0.5)
        while True:
            chunk = s.recv(8192)
            if not chunk:
                break
            out += chunk
    head, _, body = bytes(out).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest() == digest


def test_kept_alive_connection_mixes_static_and_app(server, tree):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    get(server, "/hello", conn=c)
    sock = c.sock
    for _ in range(3):
        assert get(server, "/static/site.css", conn=c)[2] == CSS
        assert get(server, "/hello", conn=c)[2] == b"Hello, World!"
        assert get(server, "/static/big.bin", {"Range": "bytes=10-19"}, conn=c)[2] == BIG[10:20]
        assert get(server, "/static/nope", conn=c)[0] == 404
        assert get(server, "/static/js/app.js", method="HEAD", conn=c)[0] == 200
        assert get(server, "/pid", conn=c)[0] == 200
    assert c.sock is sock, "the connection was not kept alive"
    c.close()
    # Pipelined: three requests in one write, answered in order.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /static/data.json HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /static/LICENSE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b'{"a": 1}') < out.index(b"Hello, World!") < out.index(b"no extension")


def test_concurrent_load(server, tree):
    files = {"/static/site.css": CSS, "/static/js/app.js": JS, "/static/data.json": b'{"a": 1}',
             "/static/big.bin": BIG}
    errors = []

    def client(i):
        try:
            with requests.Session() as s:
                for j in range(40):
                    path = list(files)[(i + j) % len(files)]
                    r = s.get(f"{server.url}{path}", headers={"Accept-Encoding": "identity"})
                    if r.status_code != 200 or r.content != files[path]:
                        errors.append((path, r.status_code, len(r.content)))
                    if j % 10 == 0:
                        r = s.get(f"{server.url}/hello")
                        if r.text != "Hello, World!":
                            errors.append(("/hello", r.status_code))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_access_log_lines(server, tree):
    get(server, "/static/data.json?x=1", {"User-Agent": "static-test"})
    get(server, "/static/missing.txt")

    def lines():
        with open(tree["access"]) as f:
            return f.read()

    text = wait_for(lambda: "missing.txt" in lines() and lines(), 5, message="access log")
    assert re.search(r'"GET /static/data\.json\?x=1 HTTP/1\.1" 200 8 "-" "static-test"', text), text
    assert re.search(r'"GET /static/missing\.txt HTTP/1\.1" 404 10 ', text), text


def test_static_answers_are_counted_in_the_metrics(start_server, tree):
    from test_observability import families, start_with_metrics, value

    srv, mport = start_with_metrics(
        start_server, ["-w", "1", "--static-map", f"/static={tree['root']}", "testapp:application"])
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for _ in range(5):
        assert get(srv, "/static/site.css", conn=c)[0] == 200
    for _ in range(3):
        assert get(srv, "/static/missing", conn=c)[0] == 404
    assert get(srv, "/static/site.css", method="HEAD", conn=c)[0] == 200
    c.close()

    def counted():
        fams = families(mport)
        ok = value(fams, "ferricorn_requests", "_total", method="GET", status="2xx")
        return (ok, value(fams, "ferricorn_requests", "_total", method="GET", status="4xx"),
                value(fams, "ferricorn_requests", "_total", method="HEAD", status="2xx")) == (5, 3, 1)

    wait_for(counted, 10, message="the static answers counted")


def test_static_answers_while_the_only_python_thread_is_busy(start_server, tree):
    """A sync worker (one Python thread) busy in a slow view still answers static requests at once."""
    srv = start_server(["-w", "1", "--static-map", f"/static={tree['root']}",
                        "testapp:application"], env={"CALL_LOG": tree["calls"]})
    # A connection the worker already holds (accepted while the thread was free).
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    assert get(srv, "/static/site.css", conn=c)[0] == 200
    before = len(app_calls(tree))
    slow = {}

    def slow_request():
        t0 = time.monotonic()
        r = requests.get(f"{srv.url}/sleep?s=3", timeout=20)
        slow["status"], slow["took"] = r.status_code, time.monotonic() - t0

    t = threading.Thread(target=slow_request)
    t.start()
    wait_for(lambda: "GET /sleep" in app_calls(tree)[before:], 5, message="the slow view to start")
    t0 = time.monotonic()
    for _ in range(20):
        status, _, body = get(srv, "/static/big.bin", {"Range": "bytes=0-99"}, conn=c)
        assert (status, body) == (206, BIG[:100])
        status, _, body = get(srv, "/static/site.css", conn=c)
        assert (status, body) == (200, CSS)
        assert get(srv, "/static/site.css", {"If-None-Match": "*"}, conn=c)[0] == 304
    took = time.monotonic() - t0
    assert "status" not in slow, "the slow view finished before the static requests"
    assert took < 1.5, f"60 static requests took {took:.2f}s while the Python thread was busy"
    t.join(20)
    assert slow["status"] == 200
    assert [line for line in app_calls(tree)[before:] if "/static/" in line] == []
    c.close()


# ---- configuration --------------------------------------------------------------------------


def test_bad_static_map_values_exit_2(tree):
    root = tree["root"]
    cases = [
        ("nothing", "PREFIX=DIR"),
        ("/static=/no/such/dir", "cannot use the directory"),
        (f"/static={root}/site.css", "not a directory"),
        (f"http://cdn.example.com/static/={root}", "another host"),
        (f"/st atic={root}", "plain URL path"),
        (f"/static/../x={root}", "'..'"),
        ("/static=", "no directory"),
    ]
    for value, words in cases:
        res = run_cli(["--static-map", value, "testapp:application"])
        err = res.stderr.decode().strip()
        assert res.returncode == 2, (value, err)
        assert len(err.splitlines()) == 1, err
        assert "--static-map" in err and words in err, (value, err)
    res = run_cli(["--static-map", f"/s={root}", "--static-map", f"/s/={root}", "testapp:application"])
    assert res.returncode == 2 and "mapped twice" in res.stderr.decode()


def test_config_file_list_dict_and_print_config(tree, tmp_path):
    root = tree["root"]
    real = os.path.realpath(root)
    conf = tmp_path / "conf.py"
    conf.write_text(f"import pathlib\nstatic_map = {{'static/': pathlib.Path({root!r}), '/media': {root!r}}}\n")
    res = run_cli(["-c", str(conf), "--print-config", "testapp:application"])
    assert res.returncode == 0, res.stderr.decode()
    line = [x for x in res.stdout.decode().splitlines() if x.startswith("static_map")][0]
    assert f"'/static/={real}'" in line and f"'/media/={real}'" in line
    conf.write_text(f"static_map = ['/assets={root}']\n")
    res = run_cli(["-c", str(conf), "--print-config", "testapp:application"])
    assert f"'/assets/={real}'" in res.stdout.decode()
    conf.write_text("static_map = {'/static/': '/no/such/dir'}\n")
    res = run_cli(["-c", str(conf), "testapp:application"])
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "static_map" in err, err


# ---- Django: ManifestStaticFilesStorage after collectstatic --------------------------------

DJANGO_SETTINGS = '''
import os
SECRET_KEY = "static-files-test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "site_urls"
INSTALLED_APPS = ["django.contrib.staticfiles"]
MIDDLEWARE = []
DATABASES = {}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [],
              "APP_DIRS": False, "OPTIONS": {"builtins": ["django.templatetags.static"]}}]
STATIC_URL = "static/"
STATIC_ROOT = os.path.join(os.path.dirname(__file__), "collected")
STATICFILES_DIRS = [os.path.join(os.path.dirname(__file__), "assets")]
STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}
'''

DJANGO_URLS = '''
import os
from django.http import HttpResponse
from django.template import engines
from django.urls import path

def page(request):
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write("GET " + request.path + "\\n")
    t = engines["django"].from_string('<link href="{% static "css/site.css" %}"><script src="{% static "js/app.js" %}"></script>')
    return HttpResponse(t.render({}))

urlpatterns = [path("", page)]
'''

DJANGO_WSGI = '''
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
'''

DJANGO_CONF = '''
# Serve Django's static files from ferricorn: STATIC_URL mapped to STATIC_ROOT.
import os
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
django.setup()
from django.conf import settings
static_map = {settings.STATIC_URL: settings.STATIC_ROOT}
workers = 1
'''


def test_django_manifest_static_files(start_server, tmp_path):
    pytest.importorskip("django")
    proj = tmp_path / "proj"
    (proj / "assets" / "css").mkdir(parents=True)
    (proj / "assets" / "js").mkdir(parents=True)
    (proj / "assets" / "css" / "site.css").write_bytes(CSS)
    (proj / "assets" / "js" / "app.js").write_bytes(JS)
    (proj / "site_settings.py").write_text(DJANGO_SETTINGS)
    (proj / "site_urls.py").write_text(DJANGO_URLS)
    (proj / "site_wsgi.py").write_text(DJANGO_WSGI)
    (proj / "ferricorn.conf.py").write_text(DJANGO_CONF)
    calls = tmp_path / "calls.log"
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="site_settings", PYTHONPATH=str(proj))
    subprocess.run([sys.executable, "-m", "django", "collectstatic", "--noinput", "-v", "0"],
                   cwd=proj, env=env, check=True, timeout=60)
    assert (proj / "collected" / "staticfiles.json").exists()
    srv = start_server(["-c", "ferricorn.conf.py", "site_wsgi:application"], app_dir=str(proj),
                       env={"CALL_LOG": str(calls), "PYTHONPATH": str(proj)})
    page = requests.get(srv.url + "/").text
    urls = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert len(urls) == 2 and all(re.search(r"\.[0-9a-f]{12}\.(css|js)$", u) for u in urls), page
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for url, data in zip(urls, (CSS, JS)):
        status, h, body = get(srv, url, conn=c)
        assert (status, body) == (200, data), url
        assert h["cache-control"] == "public, max-age=31536000, immutable"
        assert get(srv, url, {"If-None-Match": h["etag"]}, conn=c)[0] == 304
        assert get(srv, url, {"If-Modified-Since": h["last-modified"]}, conn=c)[0] == 304
        status, h2, body = get(srv, url, {"Range": "bytes=5-14"}, conn=c)
        assert (status, body) == (206, data[5:15])
        assert h2["content-range"] == f"bytes 5-14/{len(data)}"
    # The unhashed copy collectstatic also writes: a short cache.
    status, h, body = get(srv, "/static/css/site.css", conn=c)
    assert (status, body, h["cache-control"]) == (200, CSS, "public, max-age=60")
    # The manifest itself is a file of the root like any other.
    assert get(srv, "/static/staticfiles.json", conn=c)[1]["content-type"] == "application/json"
    c.close()
    with open(calls) as f:
        assert f.read().splitlines() == ["GET /"]
