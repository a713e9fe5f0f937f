"""Operations of the ASGI worker under traffic, as for WSGI: a USR2 upgrade, --reload, and
--max-requests with jitter while websockets stay open (closed with 1012, clients reconnect) — with no
failed request."""

import os
import re
import signal
import textwrap
import time

import pytest

from conftest import ClientThreads, stop_pid, wait_for, ws_url
from test_lifecycle import Load

RAW = "asgi_raw:app"

pytestmark = pytest.mark.ferricorn_only


class WsClients(ClientThreads):
    """`n` websocket clients on /ws/echo, each echoing a message in a loop and reconnecting when the
    server closes with 1012 (service restart) or 1001 (going away). Anything else is an error."""

    def __init__(self, srv, n=4, limit_s=60):
        super().__init__(n, limit_s, join_s=20)
        self.url = ws_url(srv, "/ws/echo")
        self.echoes = 0
        self.restarts = 0
        self.errors = []

    def _run(self, i):
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        while self.running():
            try:
                with connect(self.url, open_timeout=10) as ws:
                    while self.running():
                        msg = f"client {i} {time.monotonic()}"
                        ws.send(msg)
                        if ws.recv(timeout=10) != msg:
                            raise AssertionError("wrong echo")
                        with self._lock:
                            self.echoes += 1
                        time.sleep(0.02)
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                with self._lock:
                    if code in (1012, 1001):
                        self.restarts += 1
                    else:
                        self.errors.append(f"closed with {code}")
            except Exception as e:  # recorded; the test asserts there are none
                with self._lock:
                    self.errors.append(repr(e))


def test_max_requests_with_jitter_recycles_under_load_and_open_websockets(start_server):
    srv = start_server(["-k", "asgi", "-w", "2", "--max-requests", "40", "--max-requests-jitter",
                        "20", "--graceful-timeout", "5", RAW])
    srv.wait_workers(2)
    with WsClients(srv) as ws, Load(srv.url, clients=4, path="/pid") as load:
        wait_for(lambda: len(load.pids) >= 6, 40, message="several recycled workers served")
        wait_for(lambda: ws.restarts >= 2, 30, message="websockets closed by recycling workers")
        wait_for(lambda: ws.echoes > 100, 30, message="echoes across the recycling")
    assert load.errors == [], (load.errors[:5], srv.log_text()[-3000:])
    assert ws.errors == [], (ws.errors[:5], srv.log_text()[-3000:])
    assert load.ok > 100
    assert srv.log_text().count("Autorestarting worker after current request.") >= 4
    assert srv.proc.poll() is None


def test_usr2_upgrade_under_load_with_websockets(start_server, tmp_path):
    srv = start_server(["-k", "asgi", "-w", "2", "--graceful-timeout", "5", RAW])
    srv.wait_workers(2)
    old_master = srv.pid
    new_master = None
    try:
        with WsClients(srv) as ws, Load(srv.url, clients=4, path="/pid") as load:
            time.sleep(0.5)
            srv.signal(signal.SIGUSR2)
            m = wait_for(lambda: re.findall(r"Listening at: \S+ \((\d+)\)", srv.log_text())[1:] or None,
                         20, message="a new master")
            new_master = int(m[0])
            assert new_master != old_master
            srv.wait_workers(4, timeout=20)
            time.sleep(0.5)
            # The old master goes (its websockets closed with 1012, the clients reconnect to the
            # new master's workers); the new one keeps serving on the same sockets.
            assert srv.stop() == 0
            wait_for(lambda: ws.restarts >= 4, 20, message="websockets moved to the new master")
            served_before = load.ok
            wait_for(lambda: load.ok > served_before + 50, 20, message="served by the new master")
        assert load.errors == [], load.errors[:5]
        assert ws.errors == [], ws.errors[:5]
        wait_for(lambda: "Master has been promoted." in srv.log_text() or None, 10,
                 message="promotion")
    finally:
        if new_master:
            stop_pid(new_master)


APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"{version}"
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": body}})
"""


def _write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(textwrap.dedent(text))
    os.replace(tmp, path)


def test_reload_serves_the_changed_asgi_app(start_server, tmp_path):
    import httpx

    d = tmp_path / "app"
    d.mkdir()
    _write(d / "reload_asgi.py", APP.format(version="v1"))
    srv = start_server(["-k", "asgi", "--reload", "reload_asgi:app"], app_dir=str(d))

    def text():
        try:
            return httpx.get(srv.url + "/", timeout=5).text
        except httpx.HTTPError:
            return None

    assert text() == "v1"
    time.sleep(1.2)  # let the watcher see the loaded modules
    _write(d / "reload_asgi.py", APP.format(version="v2"))
    wait_for(lambda: text() == "v2", 20, message="new code served")
    assert re.search(r"Worker reloading: \S*reload_asgi\.py modified", srv.log_text())
    assert srv.proc.poll() is None
