"""A Flask app and a raw ASGI app for tests/test_http2.py: the same routes over HTTP/1 and HTTP/2."""

import asyncio
import hashlib
import json
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/")
def hello():
    return f"hello {request.environ['SERVER_PROTOCOL']} {request.environ['wsgi.url_scheme']}\n"


@app.route("/env")
def env():
    e = request.environ
    keys = ["SERVER_PROTOCOL", "wsgi.url_scheme", "HTTP_HOST", "HTTP_COOKIE", "HTTP_X_THING",
            "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH", "REMOTE_ADDR", "REMOTE_PORT"]
    return {k: e.get(k) for k in keys}


@app.route("/upload", methods=["POST", "PUT"])
def upload():
    # Read in pieces, as an app that streams an upload does.
    h, n = hashlib.sha256(), 0
    while True:
        piece = request.stream.read(65536)
        if not piece:
            break
        h.update(piece)
        n += len(piece)
    return {"length": n, "sha256": h.hexdigest(), "content_length": request.content_length}


@app.route("/stream")
def stream():
    chunks = int(request.args.get("chunks", 16))
    size = int(request.args.get("size", 65536))

    marker = os.environ.get("H2_MARKER")

    def gen():
        for i in range(chunks):
            if marker:
                with open(marker, "a") as f:
                    f.write(f"chunk {i}\n")
            yield bytes([65 + i % 26]) * size
    return Response(gen(), mimetype="application/octet-stream")


@app.route("/sleep")
def sleep():
    time.sleep(float(request.args.get("s", 1)))
    return "slept\n"


@app.route("/read-slowly", methods=["POST"])
def read_slowly():
    # Reads the body a piece at a time and notes when the client gave up (the read fails).
    got = 0
    try:
        while True:
            piece = request.stream.read(16384)
            if not piece:
                break
            got += len(piece)
            time.sleep(0.05)
    except OSError as e:
        marker = os.environ.get("H2_MARKER")
        if marker:
            with open(marker, "a") as f:
                f.write(f"read failed after {got}: {e}\n")
        raise
    return {"got": got}


async def asgi(scope, receive, send):
    """A raw ASGI app: scope facts, an echo, a streamed body, trailers, and a disconnect waiter."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    body = b""
    while path != "/wait-disconnect":
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if path == "/scope":
        facts = {"http_version": scope["http_version"], "scheme": scope["scheme"],
                 "method": scope["method"], "path": scope["path"],
                 "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                 "body_length": len(body)}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(facts).encode()})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(10):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"with trailers\n"})
        await send({"type": "http.response.trailers",
                    "headers": [(b"x-checksum", b"abc123")]})
    elif path == "/wait-disconnect":
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                marker = os.environ.get("H2_MARKER")
                if marker:
                    with open(marker, "a") as f:
                        f.write("disconnect\n")
                return
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello asgi " + scope["http_version"].encode()})
