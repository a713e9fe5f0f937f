"""HTTP/2 serving (`--http-protocols h2,h1`, `--http2-cleartext`), with real HTTP/2 clients: httpx
(`http2=True`, the `h2` package), curl (`--http2-prior-knowledge`, `--http2` over TLS) and, where a
test needs frames no client library sends on purpose (a reset mid-request, a reader that never opens
its window), the `h2` package's connection over a plain socket.

The apps are real: a Flask app and a raw ASGI app (tests/apps/h2app.py). Conformance (h2spec's cases)
and attacks (rapid reset, CONTINUATION floods, ...) have suites of their own.
"""

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from multiprocessing.pool import ThreadPool

import pytest

from conftest import IS_GUNICORN, parse_log_lines, run_cli, wait_for

httpx = pytest.importorskip("httpx")
h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402

pytestmark = pytest.mark.ferricorn_only if IS_GUNICORN else []

H2C = ["--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge"]
CURL = shutil.which("curl")


def curl(*args, timeout=30):
    if not CURL:
        pytest.skip("curl is not installed")
    res = subprocess.run([CURL, "-sS", *args], capture_output=True, timeout=timeout)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def h2c_client(**kw):
    """httpx speaking HTTP/2 with prior knowledge (no HTTP/1 at all)."""
    return httpx.Client(http1=False, http2=True, timeout=30, **kw)


class RawH2:
    """An HTTP/2 client connection on a plain socket, driven frame by frame."""

    def __init__(self, port, window=None, sock=None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events = []

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                     (":authority", "127.0.0.1"), *headers], end_stream=end)
        self.flush()
        return sid

    def pump(self, until, timeout=10.0, ack=True):
        """Read frames until `until(events)` is true; returns the events seen so far."""
        deadline = time.monotonic() + timeout
        while not until(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events: {self.events}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"connection closed; events: {self.events}")
            for e in self.conn.receive_data(data):
                self.events.append(e)
                if ack and isinstance(e, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            self.flush()
        return self.events

    def body(self, sid):
        return b"".join(e.data for e in self.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)

    def ended(self, sid):
        return lambda evs: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                               and e.stream_id == sid for e in evs)

    def close(self):
        self.sock.close()


def access_lines(srv):
    return [line for line in srv.stdout_text().splitlines() if '"' in line]


# ---------------------------------------------------------------------------------------------------
# cleartext, prior knowledge


def test_h2c_get_post_and_the_access_log(start_server):
    srv = start_server(["-w", "1", "--threads", "4", *H2C, "--access-logfile", "-", "h2app:app"])
    with h2c_client() as c:
        # Several requests on the one connection, after other traffic.
        for _ in range(3):
            r = c.get(f"{srv.url}/")
            assert r.http_version == "HTTP/2" and r.status_code == 200
            assert r.text == "hello HTTP/2.0 http\n"
            assert r.headers["server"] == "ferricorn" and "date" in r.headers
        env = c.get(f"{srv.url}/env?a=1", headers={"x-thing": "yes", "cookie": "a=1"}).json()
        assert env["SERVER_PROTOCOL"] == "HTTP/2.0" and env["HTTP_HOST"] == f"127.0.0.1:{srv.port}"
        assert env["HTTP_X_THING"] == "yes" and env["QUERY_STRING"] == "a=1"
        small = b"field=value&other=2"
        r = c.post(f"{srv.url}/upload", content=small)
        assert r.json() == {"length": len(small), "sha256": hashlib.sha256(small).hexdigest(),
                            "content_length": len(small)}
        # A body many windows long: the server opens the window as the app reads it.
        big = os.urandom(3 * 1024 * 1024 + 17)
        r = c.post(f"{srv.url}/upload", content=big)
        assert r.json()["length"] == len(big) and r.json()["sha256"] == hashlib.sha256(big).hexdigest()
        # A body without a length (the stream's end is its end).
        r = c.post(f"{srv.url}/upload", content=iter([b"a" * 70000, b"b" * 70000]))
        assert r.json()["length"] == 140000 and r.json()["content_length"] is None
    out = curl("--http2-prior-knowledge", f"{srv.url}/")
    assert out == b"hello HTTP/2.0 http\n"
    # Cookies split over several fields (RFC 9113 §8.2.3) reach the app as one.
    env = json.loads(curl("--http2-prior-knowledge", "-H", "cookie: a=1", "-H", "cookie: b=2",
                          f"{srv.url}/env"))
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    wait_for(lambda: len(access_lines(srv)) >= 9, 5, message="access lines")
    lines = access_lines(srv)
    assert all('HTTP/2.0" 200' in line for line in lines), lines
    assert sum('"POST /upload HTTP/2.0" 200' in line for line in lines) == 3


def test_many_concurrent_streams_on_one_connection(start_server):
    srv = start_server(["-w", "1", "--threads", "8", *H2C, "h2app:app"])

    async def many():
        async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as c:
            await c.get(f"{srv.url}/")
            t0 = time.monotonic()
            rs = await asyncio.gather(*[c.get(f"{srv.url}/sleep?s=0.3") for _ in range(40)])
            return rs, time.monotonic() - t0
    rs, took = asyncio.run(many())
    assert all(r.status_code == 200 and r.text == "slept\n" and r.http_version == "HTTP/2" for r in rs)
    # 40 requests of 0.3 s on 8 threads: about 1.5 s if they ran side by side, 12 s one by one.
    assert took < 6, took


def test_a_streamed_response_and_a_reader_that_stops(start_server, tmp_path):
    marker = tmp_path / "marker"
    srv = start_server(["-w", "1", "--threads", "2", *H2C, "h2app:app"],
                       env={"H2_MARKER": str(marker)})
    # 4 MiB in 64 chunks, read in full.
    out = curl("--http2-prior-knowledge", f"{srv.url}/stream?chunks=64&size=65536")
    assert len(out) == 64 * 65536 and out[:65536] == b"A" * 65536 and out[-1:] == b"L"
    marker.write_text("")
    # A client that never opens its window past the first 64 KiB: the app is held back, not the
    # server's memory filled with the response.
    c = RawH2(srv.port)
    sid = c.request("/stream?chunks=256&size=65536")
    c.pump(lambda evs: any(isinstance(e, h2.events.DataReceived) for e in evs), ack=False)
    time.sleep(1.5)
    produced = marker.read_text().count("chunk")
    assert produced < 32, f"the app made {produced} chunks for a reader that took 64 KiB"
    # Other streams on the same connection still get answers... (the connection window is shared, so
    # the stalled stream's bytes are acknowledged for the connection only)
    c.conn.increment_flow_control_window(1 << 20)
    c.flush()
    sid2 = c.request("/")
    c.pump(c.ended(sid2), ack=False)
    assert c.body(sid2) == b"hello HTTP/2.0 http\n"
    assert not c.ended(sid)(c.events)
    c.close()


def test_timeout_answers_504_on_the_stream_and_logs_it(start_server):
    srv = start_server(["-w", "1", "--threads", "2", "--timeout", "2", *H2C,
                        "--access-logfile", "-", "h2app:app"])
    with h2c_client() as c:
        t0 = time.monotonic()
        r = c.get(f"{srv.url}/sleep?s=6")
        assert r.status_code == 504 and time.monotonic() - t0 < 5
        assert "timeout" in r.text
    srv.wait_log(r"Request exceeded --timeout 2s: GET /sleep", timeout=5)
    log = srv.log_text()
    assert "WORKER TIMEOUT" in log and "in sleep" in log, log
    wait_for(lambda: any('"GET /sleep?s=6 HTTP/2.0" 504' in line for line in access_lines(srv)), 5,
             message="the 504's access line")


def test_graceful_stop_finishes_a_stream_in_flight(start_server):
    srv = start_server(["-w", "1", "--threads", "2", *H2C, "--graceful-timeout", "10",
                        "h2app:app"])
    got = {}

    def slow():
        with h2c_client() as c:
            got["r"] = c.get(f"{srv.url}/sleep?s=1.5")
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    srv.signal(signal.SIGTERM)
    t.join(15)
    assert got["r"].status_code == 200 and got["r"].text == "slept\n"
    assert srv.wait(10) == 0


def test_a_reset_stream_fails_the_apps_read(start_server, tmp_path):
    marker = tmp_path / "marker"
    srv = start_server(["-w", "1", "--threads", "2", *H2C, "h2app:app"],
                       env={"H2_MARKER": str(marker)})
    c = RawH2(srv.port)
    # After other traffic (the app loaded: a request reset while still queued is withdrawn unrun).
    first = c.request("/")
    c.pump(c.ended(first))
    sid = c.request("/read-slowly", method="POST", end=False)
    c.conn.send_data(sid, b"x" * 15000)
    c.conn.send_data(sid, b"x" * 15000)
    c.flush()
    time.sleep(0.3)
    c.conn.reset_stream(sid, error_code=8)  # CANCEL
    c.flush()
    wait_for(lambda: marker.exists() and "read failed" in marker.read_text(), 5,
             message="the app's read to fail")
    assert "the client reset the stream (CANCEL)" in marker.read_text()
    # The connection goes on.
    sid2 = c.request("/")
    c.pump(c.ended(sid2))
    assert c.body(sid2) == b"hello HTTP/2.0 http\n"
    c.close()


def test_a_trusted_peer_must_speak_http2_and_others_get_http1(start_server):
    # 127.0.0.1 is in --forwarded-allow-ips by default: on a prior-knowledge port it must speak HTTP/2.
    srv = start_server(["-w", "1", *H2C, "h2app:app"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP/2 connection preface" in data
    # A peer outside it is served HTTP/1 as if the setting were off.
    srv2 = start_server(["-w", "1", *H2C, "--forwarded-allow-ips", "10.9.9.9", "h2app:app"])
    r = httpx.get(f"{srv2.url}/", timeout=10)
    assert r.http_version == "HTTP/1.1" and r.text == "hello HTTP/1.1 http\n"


# ---------------------------------------------------------------------------------------------------
# ASGI


def test_asgi_over_h2c_scope_stream_trailers_and_disconnect(start_server, tmp_path):
    marker = tmp_path / "marker"
    srv = start_server(["-w", "1", "-k", "asgi", *H2C, "h2app:asgi"],
                       env={"H2_MARKER": str(marker)})
    with h2c_client() as c:
        facts = c.post(f"{srv.url}/scope", content=b"x" * 100000).json()
        assert facts["http_version"] == "2" and facts["scheme"] == "http"
        assert facts["body_length"] == 100000
        assert facts["headers"]["host"] == f"127.0.0.1:{srv.port}"
        r = c.get(f"{srv.url}/stream")
        assert r.text == "".join(f"part {i}\n" for i in range(10))
    c = RawH2(srv.port)
    sid = c.request("/trailers", headers=[("te", "trailers")])
    c.pump(c.ended(sid))
    trailers = [e for e in c.events if isinstance(e, h2.events.TrailersReceived)]
    assert c.body(sid) == b"with trailers\n"
    assert trailers and (b"x-checksum", b"abc123") in trailers[0].headers
    # A client that resets its stream: the app's receive() says http.disconnect.
    sid = c.request("/wait-disconnect")
    time.sleep(0.3)
    c.conn.reset_stream(sid)
    c.flush()
    wait_for(lambda: marker.exists() and "disconnect" in marker.read_text(), 5,
             message="http.disconnect")
    c.close()


# ---------------------------------------------------------------------------------------------------
# TLS: ALPN


def test_tls_alpn_serves_h2_and_h1_on_one_port(start_server, tmp_path):
    from test_tls import Pki, client_context
    pki = Pki(str(tmp_path))
    srv = start_server(["-w", "1", "--threads", "4", "--certfile", pki.cert, "--keyfile", pki.key,
                        "--http-protocols", "h2,h1", "h2app:app"])
    url = f"https://127.0.0.1:{srv.port}/"
    with httpx.Client(http2=True, verify=client_context(pki), timeout=30) as c:
        r = c.get(url)
        assert r.http_version == "HTTP/2" and r.text == "hello HTTP/2.0 https\n"
        big = os.urandom(1024 * 1024)
        assert c.post(url + "upload", content=big).json()["length"] == len(big)
    with httpx.Client(verify=client_context(pki), timeout=30) as c:
        r = c.get(url)
        assert r.http_version == "HTTP/1.1" and r.text == "hello HTTP/1.1 https\n"
    out = curl("--http2", "--cacert", pki.ca, url)
    assert out == b"hello HTTP/2.0 https\n"
    # The default (h1 only) does not offer h2.
    srv2 = start_server(["-w", "1", "--certfile", pki.cert, "--keyfile", pki.key, "h2app:app"])
    with httpx.Client(http2=True, verify=client_context(pki), timeout=30) as c:
        assert c.get(f"https://127.0.0.1:{srv2.port}/").http_version == "HTTP/1.1"


@pytest.mark.parametrize("worker", ["gthread", "asgi"])
def test_static_map_is_served_over_h2_without_the_app(start_server, tmp_path, worker):
    """`--static-map` answers HTTP/2 streams on the I/O thread, as it answers HTTP/1 requests: the
    file, its validators and ranges, HEAD, 404 for a miss, with app requests on the same connection
    before and after, many at once, and over TLS (ALPN h2) as a browser reaches it."""
    from test_tls import Pki, client_context
    root = tmp_path / "static"
    root.mkdir()
    small = b"body { color: red; }\n" * 50
    big = os.urandom(1024 * 1024 + 333)  # many DATA frames and several windows
    (root / "site.css").write_bytes(small)
    (root / "big.bin").write_bytes(big)
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    pki = Pki(str(tmp_path))
    app = "h2app:app" if worker == "gthread" else "h2app:asgi"
    common = ["-w", "1", "-k", worker, "--static-map", f"/static={root}", "--access-logfile", "-"]
    srv = start_server([*common, *H2C, app])
    tls = start_server([*common, "--certfile", pki.cert, "--keyfile", pki.key,
                        "--http-protocols", "h2,h1", app])
    for client, base in ((h2c_client(), srv.url),
                         (httpx.Client(http2=True, verify=client_context(pki), timeout=30),
                          f"https://127.0.0.1:{tls.port}")):
        with client as c:
            assert c.get(f"{base}/").status_code == 200  # the app, first
            r = c.get(f"{base}/static/site.css")
            assert r.http_version == "HTTP/2" and r.status_code == 200 and r.content == small
            assert r.headers["content-type"].startswith("text/css")
            assert r.headers["content-length"] == str(len(small))
            assert r.headers["server"] == "ferricorn" and "date" in r.headers
            etag = r.headers["etag"]
            assert c.get(f"{base}/static/site.css", headers={"if-none-match": etag}).status_code == 304
            part = c.get(f"{base}/static/big.bin", headers={"range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == big[100:200]
            head = c.head(f"{base}/static/big.bin")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(big))
            miss = c.get(f"{base}/static/nothing.css")
            # The static answer's own 404, not the app's (Flask's is HTML).
            assert miss.status_code == 404 and miss.text == "Not Found\n", miss.text
            assert c.get(f"{base}/static/%2e%2e/secret.txt").status_code == 404
            assert c.post(f"{base}/static/site.css", content=b"x").status_code == 405
            # Many streams at once on the one connection, the app's among them.
            with ThreadPool(8) as pool:
                got = pool.map(lambda i: c.get(f"{base}/static/big.bin" if i % 2 else f"{base}/"),
                               range(16))
            assert all(g.status_code == 200 for g in got)
            assert all(g.content == big for g in got[1::2])
            assert c.get(f"{base}/").status_code == 200  # the app, after
    for s in (srv, tls):
        wait_for(lambda: sum("/static/" in line for line in access_lines(s)) >= 15, 5,
                 message="static access lines")
        lines = access_lines(s)
        assert any('"GET /static/site.css HTTP/2.0" 200' in line for line in lines), lines
        assert any('"GET /static/site.css HTTP/2.0" 304' in line for line in lines), lines
        assert any('"GET /static/big.bin HTTP/2.0" 206' in line for line in lines), lines


def test_a_proxy_header_before_the_h2c_preface_and_before_tls_names_the_client(start_server, tmp_path):
    """`--proxy-protocol` with HTTP/2: the load balancer's header comes first (before the cleartext
    preface, or before the TLS handshake whose ALPN picks h2), and the app sees the client it names,
    on every stream of the connection; a broken header is refused, never served."""
    from test_tls import Pki, client_context
    pki = Pki(str(tmp_path))
    proxy = ["--proxy-protocol", "v1", "--proxy-allow-from", "127.0.0.1"]
    srv = start_server(["-w", "1", "--threads", "4", *proxy, *H2C, "h2app:app"])
    tls = start_server(["-w", "1", "--threads", "4", *proxy, "--certfile", pki.cert, "--keyfile", pki.key,
                        "--http-protocols", "h2,h1", "h2app:app"])

    def env_over(conn, n):
        envs = []
        for _ in range(n):  # several streams, one after the other, on the one connection
            sid = conn.request("/env")
            conn.pump(conn.ended(sid))
            envs.append(json.loads(conn.body(sid)))
        return envs

    for i in range(3):
        header = f"PROXY TCP4 203.0.113.{i + 7} 192.0.2.1 {40000 + i} 443\r\n".encode()
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        sock.sendall(header)
        conn = RawH2(srv.port, sock=sock)
        for env in env_over(conn, 3):
            assert env["SERVER_PROTOCOL"] == "HTTP/2.0"
            assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (f"203.0.113.{i + 7}", str(40000 + i))
        conn.close()

        raw = socket.create_connection(("127.0.0.1", tls.port), timeout=10)
        raw.sendall(header)
        ctx = client_context(pki)
        ctx.set_alpn_protocols(["h2"])
        wrapped = ctx.wrap_socket(raw, server_hostname="localhost")
        assert wrapped.selected_alpn_protocol() == "h2"
        conn = RawH2(tls.port, sock=wrapped)
        for env in env_over(conn, 3):
            assert env["wsgi.url_scheme"] == "https"
            assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (f"203.0.113.{i + 7}", str(40000 + i))
        conn.close()
    # A header that is not one: refused with 400 before any HTTP/2, and the server goes on.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 not-an-ip 192.0.2.1 1 2\r\n" + h2.connection.H2Connection().data_to_send())
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(b"PROXY TCP4 198.51.100.1 192.0.2.1 5000 80\r\n")
    conn = RawH2(srv.port, sock=sock)
    assert env_over(conn, 1)[0]["REMOTE_ADDR"] == "198.51.100.1"
    conn.close()


# ---------------------------------------------------------------------------------------------------
# settings


def test_settings_print_and_bad_values_exit_2():
    from conftest import print_config
    s = print_config(["--http-protocols", "H2, h1", "--http2-cleartext", "both",
                      "--http2-max-concurrent-streams", "50", "--http2-initial-window-size", "1048576",
                      "--http2-max-frame-size", "32768", "--http2-max-header-list-size", "0"])
    assert s["http_protocols"] == "['h2', 'h1']" and s["http2_cleartext"] == "both"
    assert s["http2_max_concurrent_streams"] == "50" and s["http2_initial_window_size"] == "1048576"
    assert s["http2_max_frame_size"] == "32768" and s["http2_max_header_list_size"] == "0"
    d = print_config([])
    assert (d["http_protocols"], d["http2_cleartext"], d["http2_max_concurrent_streams"],
            d["http2_initial_window_size"], d["http2_max_frame_size"],
            d["http2_max_header_list_size"]) == ("['h1']", "off", "100", "65535", "16384", "65536")
    for bad in (["--http-protocols", "h4"], ["--http-protocols", "h2,h2"],
                ["--http2-cleartext", "maybe"], ["--http2-max-frame-size", "1000"],
                ["--http2-max-frame-size", "16777216"], ["--http2-initial-window-size", "2147483648"],
                ["--http2-max-concurrent-streams", "-1"]):
        res = run_cli([*bad, "h2app:app"])
        err = res.stderr.decode().strip()
        assert res.returncode == 2 and len(err.splitlines()) == 1, (bad, err)
        assert bad[0] in err, (bad, err)
