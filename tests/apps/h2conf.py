"""Apps for tests/test_http2_conformance.py and tests/test_http2_attacks.py: the same routes as a Flask
app (`app`, WSGI) and a raw ASGI app (`asgi`, run with `-k asgi --asgi-lifespan off`).

`/` says hello; `/echo` answers the request body and its length; `/big?size=N` streams N patterned
bytes in 16 KiB pieces (flow-control and zero-window cases); `/req` answers what the app saw of the
request as JSON (method, path, query, scheme, protocol, headers), so a test can show a smuggled header
never reached it; `/slow?s=S` answers after S seconds (concurrent streams).
"""

import asyncio
import json
import time

from asgi_raw import read_body
from flask import Flask, Response, request

CHUNK = 16384


BLOCK = bytes((i * 7 + i // 251) % 256 for i in range(65521))  # a prime length: no power-of-two period


def pattern(size, start=0):
    """`size` bytes of the endless cyclic pattern BLOCK BLOCK ..., from offset `start`."""
    out = bytearray()
    pos = start % len(BLOCK)
    while len(out) < size:
        take = min(size - len(out), len(BLOCK) - pos)
        out += BLOCK[pos:pos + take]
        pos = 0
    return bytes(out)


def chunks_of(size):
    """The pattern's first `size` bytes in CHUNK pieces, made one at a time (a big response never
    sits whole in the app's memory)."""
    for i in range(0, size, CHUNK):
        yield pattern(min(CHUNK, size - i), i)


app = Flask(__name__)


@app.route("/")
def hello():
    return Response("hello h2\n", mimetype="text/plain")


@app.route("/echo", methods=["POST", "PUT"])
def echo():
    body = request.get_data()
    return Response(body, mimetype="application/octet-stream",
                    headers={"x-body-length": str(len(body))})


@app.route("/big")
def big():
    size = int(request.args.get("size", "1048576"))
    return Response(chunks_of(size), mimetype="application/octet-stream",
                    headers={"Content-Length": str(size)})


@app.route("/req", methods=["GET", "POST"])
def req():
    env = request.environ
    seen = {
        "method": request.method,
        "path": env.get("PATH_INFO"),
        "query": env.get("QUERY_STRING"),
        "scheme": env.get("wsgi.url_scheme"),
        "protocol": env.get("SERVER_PROTOCOL"),
        "headers": {k: v for k, v in env.items() if k.startswith("HTTP_")},
        "body": len(request.get_data()),
    }
    return Response(json.dumps(seen), mimetype="application/json")


@app.route("/slow")
def slow():
    time.sleep(float(request.args.get("s", "1")))
    return Response("slow done\n", mimetype="text/plain")


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope.get("query_string", b"").decode()
    args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)

    async def answer(status, body, ctype=b"text/plain", extra=()):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), *extra]})
        await send({"type": "http.response.body", "body": body})

    if path == "/":
        await answer(200, b"hello h2\n")
    elif path == "/echo":
        body = await read_body(receive)
        if body is None:
            return
        await answer(200, body, b"application/octet-stream",
                     [(b"x-body-length", str(len(body)).encode())])
    elif path == "/big":
        size = int(args.get("size", "1048576"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(size).encode())]})
        sent = 0
        for piece in chunks_of(size):
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    elif path == "/req":
        body = await read_body(receive)
        seen = {
            "method": scope["method"],
            "path": path,
            "query": query,
            "scheme": scope["scheme"],
            "protocol": "HTTP/" + scope["http_version"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": len(body or b""),
        }
        await answer(200, json.dumps(seen).encode(), b"application/json")
    elif path == "/slow":
        await asyncio.sleep(float(args.get("s", "1")))
        await answer(200, b"slow done\n")
    else:
        await answer(404, b"not found\n")
