"""Apps for tests/test_tls.py: what a request over TLS sees.

`app` (WSGI): `/env` answers the scheme and the TLS keys of the environ as JSON, `/file?size=N` sends a
file of N patterned bytes through `wsgi.file_wrapper`, `/pid` the worker's pid, anything else says
hello. `asgi` (ASGI): `/scope`
answers the scope's scheme and `tls` extension as JSON; `/wait-disconnect` and `/stream` note the
`http.disconnect` they hear; a websocket echoes with the scope's scheme first.
"""

import json
import os
import tempfile

TLS_KEYS = ("HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY",
            "SSL_CLIENT_S_DN", "SSL_CLIENT_I_DN", "SSL_CLIENT_S_DN_CN", "SSL_CLIENT_M_SERIAL",
            "SSL_CLIENT_V_START", "SSL_CLIENT_V_END", "SSL_CLIENT_CERT")


def _patterned(size):
    path = os.path.join(tempfile.gettempdir(), f"fcn-tls-file-{size}")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        block = bytes((i * 7 + i // 251) % 256 for i in range(65536))
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        os.replace(tmp, path)
    return path


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/env":
        body = json.dumps({
            "url_scheme": environ["wsgi.url_scheme"],
            "server_port": environ["SERVER_PORT"],
            "remote": [environ["REMOTE_ADDR"], environ["REMOTE_PORT"]],
            **{k: environ[k] for k in TLS_KEYS if k in environ},
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        size = int(environ["QUERY_STRING"].split("=", 1)[1])
        f = open(_patterned(size), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](f)
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = b"hello over tls\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    """Run with `--asgi-lifespan off`."""
    if scope["type"] == "http" and scope["path"] in ("/wait-disconnect", "/stream"):
        await _until_disconnect(scope, receive, send)
        return
    if scope["type"] == "http":
        tls = scope.get("extensions", {}).get("tls")
        body = json.dumps({"scheme": scope["scheme"], "tls": tls}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    tls = scope.get("extensions", {}).get("tls") or {}
    await send({"type": "websocket.send",
                "text": json.dumps({"scheme": scope["scheme"],
                                    "client": tls.get("client_cert_name")})})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})


async def _until_disconnect(scope, receive, send):
    """/wait-disconnect waits in `receive` for the client to go; /stream sends a chunk every 50 ms
    meanwhile, and listens for the disconnect beside it (as Starlette's StreamingResponse does). Either
    writes what it heard to $ASGI_DISCONNECT_MARKER."""
    import asyncio

    msg = await receive()
    assert msg["type"] == "http.request"
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})

        async def stream():
            for _ in range(400):
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.05)

        streaming = asyncio.ensure_future(stream())
        msg = await receive()
        streaming.cancel()
    else:
        msg = await receive()
    with open(os.environ["ASGI_DISCONNECT_MARKER"], "a") as f:
        f.write(f"{scope['path']} {msg['type']}\n")
