"""A raw ASGI app (no framework) for the asgi worker's tests: one route per behaviour under test."""

import asyncio
import json
import os
import time

STARTED = {"startup": 0}


async def read_body(receive):
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def send_text(send, status, text, headers=()):
    data = text.encode() if isinstance(text, str) else text
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")] + list(headers),
        }
    )
    await send({"type": "http.response.body", "body": data})


DISCONNECTS = []


def note(text):
    marker = os.environ.get("ASGI_WS_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(text + "\n")


async def websocket(scope, receive, send):
    path = scope["path"]
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    if path == "/ws/echo":
        proto = "chat" if "chat" in scope["subprotocols"] else None
        await send({"type": "websocket.accept", "subprotocol": proto, "headers": [(b"x-ws", b"yes")]})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                note("disconnect %s" % msg["code"])
                return
            if msg.get("text") is not None:
                if msg["text"] == "scope":
                    info = {k: scope[k] for k in ("type", "scheme", "path", "query_string", "subprotocols", "http_version")}
                    info["query_string"] = info["query_string"].decode()
                    await send({"type": "websocket.send", "text": json.dumps(info)})
                else:
                    await send({"type": "websocket.send", "text": msg["text"]})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
    elif path == "/ws/deny":
        await send({"type": "websocket.close", "code": 1000})
    elif path == "/ws/deny-body":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"go away"})
    elif path == "/ws/raise":
        raise RuntimeError("boom in the websocket")
    elif path == "/ws/server-close":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
        msg = await receive()
        note("after close %s %s" % (msg["type"], msg.get("code")))
    elif path == "/ws/never-answer":
        # Has the connect and never accepts nor refuses: --timeout answers for it.
        try:
            await asyncio.sleep(3600)
        finally:
            note("handshake cancelled")
    elif path == "/ws/forever":
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                note("disconnect %s" % msg["code"])
                return


# /pieces: sizes of the body messages (below and above the size the server writes without a copy).
PIECE_SIZES = [5, 0, 20000, 1, 70000, 0, 16384, 3, 100, 40000, 7, 0]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                if os.environ.get("ASGI_FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                scope["state"]["greeting"] = "hello from lifespan"
                STARTED["startup"] += 1
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                marker = os.environ.get("ASGI_SHUTDOWN_MARKER")
                if marker:
                    with open(marker, "a") as f:
                        f.write("shutdown %d\n" % os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send)
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/":
        await send_text(send, 200, "hello")
    elif path == "/pid":
        await send_text(send, 200, str(os.getpid()))
    elif path == "/scope":
        info = {k: v for k, v in scope.items() if k not in ("headers", "state", "extensions", "raw_path", "query_string")}
        info["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        info["raw_path"] = scope["raw_path"].decode("latin-1")
        info["query_string"] = scope["query_string"].decode("latin-1")
        info["state"] = dict(scope.get("state") or {})
        info["extensions"] = sorted(scope.get("extensions") or {})
        info["client"] = list(scope["client"]) if scope["client"] else None
        info["server"] = list(scope["server"]) if scope["server"] else None
        await send_text(send, 200, json.dumps(info), [(b"content-type", b"application/json")])
    elif path == "/echo":
        body = await read_body(receive)
        await send_text(send, 200, body or b"")
    elif path == "/stream":
        n = int(dict(kv.split("=") for kv in scope["query_string"].decode().split("&") if kv).get("n", "5"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/sse":
        # A stream of events longer than --timeout: alive, not stuck.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(8):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
            await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/big":
        size = int(scope["query_string"].decode().split("=")[1])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        block = b"x" * 65536
        left = size
        while left > 0:
            part = block[: min(left, len(block))]
            left -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": left > 0})
    elif path == "/sleep":
        secs = float(scope["query_string"].decode().split("=")[1])
        await asyncio.sleep(secs)
        await send_text(send, 200, "slept")
    elif path == "/block":
        secs = float(scope["query_string"].decode().split("=")[1])
        time.sleep(secs)
        await send_text(send, 200, "blocked")
    elif path == "/block-later":
        # Blocks the loop after the response, outside any request (a callback, a background task).
        secs = float(scope["query_string"].decode().split("=")[1])
        asyncio.get_running_loop().call_later(0.2, time.sleep, secs)
        await send_text(send, 200, "later")
    elif path == "/forever":
        try:
            await asyncio.sleep(3600)
        finally:
            marker = os.environ.get("ASGI_CANCEL_MARKER")
            if marker:
                with open(marker, "a") as f:
                    f.write("cancelled /forever\n")
    elif path == "/wait-disconnect":
        msg = await receive()
        assert msg["type"] == "http.request"
        msg = await receive()
        marker = os.environ.get("ASGI_DISCONNECT_MARKER")
        if marker:
            with open(marker, "a") as f:
                f.write(msg["type"] + "\n")
    elif path == "/raise":
        raise RuntimeError("boom in the view")
    elif path == "/no-response":
        return
    elif path == "/half":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        return
    elif path == "/pieces":
        # Pieces of every kind sent in one step of the task (none of the sends waits): small ones the
        # server copies, large ones it writes from the app's bytes, empty ones; then trailers if asked.
        trailers = b"trailers" in scope["query_string"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-n")] if trailers else [], "trailers": trailers})
        for i, size in enumerate(PIECE_SIZES):
            await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * size, "more_body": True})
        await send({"type": "http.response.body", "body": b"end", "more_body": trailers})
        if trailers:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send({"type": "http.response.trailers", "headers": [(b"x-n", b"%d" % len(PIECE_SIZES))], "more_trailers": False})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")], "more_trailers": False})
    elif path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.pathsend", "path": os.environ["ASGI_FILE"]})
    elif path == "/zerocopy":
        # ?offset=N&count=M: part of ASGI_FILE; ?pieces=1: two pieces with more_body, after a body.
        q = dict(kv.split("=") for kv in scope["query_string"].decode().split("&") if kv)
        assert "http.response.zerocopy" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        with open(os.environ["ASGI_FILE"], "rb") as f:
            if q.get("pieces"):
                await send({"type": "http.response.body", "body": b"head:", "more_body": True})
                await send({"type": "http.response.zerocopy", "file": f, "offset": 0, "count": 10, "more_body": True})
                f.seek(10)
                await send({"type": "http.response.zerocopy", "file": f, "more_body": False})
            else:
                msg = {"type": "http.response.zerocopy", "file": f}
                if "offset" in q:
                    msg["offset"] = int(q["offset"])
                if "count" in q:
                    msg["count"] = int(q["count"])
                await send(msg)
    elif path == "/early-hints":
        await send({"type": "http.response.informational", "status": 103,
                    "headers": [(b"link", b"</style.css>; rel=preload; as=style")]})
        await send_text(send, 200, "hinted")
    elif path == "/late-hint":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.informational", "status": 103, "headers": []})
    elif path == "/latin1":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-name", "café".encode("latin-1"))]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nb")]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/selfcall-sync":
        # The async form of the loopback deadlock: a synchronous client inside an async view.
        import urllib.request

        port = scope["server"][1]
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=20) as r:
            inner = r.read()
        await send_text(send, 200, b"outer got " + inner)
    elif path == "/selfcall-async":
        import httpx

        port = scope["server"][1]
        async with httpx.AsyncClient() as client:
            r = await client.get("http://127.0.0.1:%d/" % port)
        await send_text(send, 200, "outer got " + r.text)
    else:
        await send_text(send, 404, "not found")
