"""The WSGI application most tests run: one route per behaviour under test.

Routes answer with plain text or JSON the tests can check. Side effects the client cannot see (the
iterable's close() being called, a request reaching the app) are appended to files named by the
environment variables CLOSE_LOG and CALL_LOG.
"""

import hashlib
import io
import json
import os
import sys
import time
from urllib.parse import parse_qs


def _record(var, line):
    path = os.environ.get(var)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _send(start_response, body, status="200 OK", ctype="text/plain", extra=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra])
    return [body]


def _json(start_response, obj, status="200 OK"):
    return _send(start_response, json.dumps(obj), status, "application/json")


def _describe(value):
    """A JSON-friendly picture of an environ value."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple):
        return list(value)
    return {"type": type(value).__name__,
            "methods": sorted(m for m in ("read", "readline", "readlines", "__iter__", "write",
                                          "writelines", "flush") if hasattr(value, m)),
            "callable": callable(value)}


def environ_dump(environ, start_response):
    out = {k: _describe(v) for k, v in environ.items()}
    return _json(start_response, out)


def hello(environ, start_response):
    return _send(start_response, b"Hello, World!", extra=[("X-Out", "out-value")])


def pid(environ, start_response):
    return _send(start_response, str(os.getpid()))


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    return _send(start_response, body, ctype="application/octet-stream",
                 extra=[("X-Received-Length", str(len(body)))])


def noread(environ, start_response):
    return _send(start_response, b"body left unread")


def sleep(environ, start_response):
    q = _query(environ)
    start = time.time()
    if "mark" in q:
        with open(q["mark"], "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(float(q.get("s", "1")))
    return _json(start_response, {"pid": os.getpid(), "start": start, "end": time.time()})


def stream(environ, start_response):
    n = int(_query(environ).get("n", "5"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(n):
            yield f"chunk-{i}\n".encode()

    return gen()


def exit_now(environ, start_response):
    os._exit(int(_query(environ).get("code", "7")))


def error(environ, start_response):
    raise RuntimeError("deliberate failure in the error route")


def getenv(environ, start_response):
    name = _query(environ)["name"]
    return _json(start_response, {"name": name, "value": os.environ.get(name)})


def input_ops(environ, start_response):
    op = _query(environ)["op"]
    inp = environ["wsgi.input"]
    if op == "readn":
        parts = [inp.read(3), inp.read(4), inp.read(1), inp.read(100000), inp.read(5)]
    elif op == "read":
        parts = [inp.read(), inp.read()]
    elif op == "readline":
        parts = []
        for _ in range(100):
            line = inp.readline()
            parts.append(line)
            if not line:
                break
    elif op == "readline_n":
        parts = [inp.readline(2), inp.readline(2), inp.readline(100), inp.readline(), inp.readline()]
    elif op == "readlines":
        parts = inp.readlines()
    elif op == "iter":
        parts = list(inp)
    else:
        return _send(start_response, "unknown op", "400 Bad Request")
    return _json(start_response, [p.decode("latin-1") for p in parts])


def sha256(environ, start_response):
    inp = environ["wsgi.input"]
    h = hashlib.sha256()
    total = reads = 0
    while True:
        piece = inp.read(65536)
        if not piece:
            break
        assert len(piece) <= 65536
        h.update(piece)
        total += len(piece)
        reads += 1
    return _json(start_response, {"sha256": h.hexdigest(), "length": total, "reads": reads})


def exc_before(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "yes")])
    try:
        raise ValueError("early failure")
    except ValueError:
        body = b"replaced response"
        start_response("503 Replaced", [("Content-Type", "text/plain"),
                                         ("Content-Length", str(len(body)))], sys.exc_info())
        return [body]


def exc_after(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first-part;"
        try:
            raise ValueError("late failure after the headers")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        yield b"must-not-be-sent"

    return gen()


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "17")])
    write(b"part1-")
    write(b"part2-")
    return [b"part3"]


def pattern(n, salt=0):
    """`n` bytes that differ at every position mod 251, so a lost, repeated or reordered piece shows."""
    block = bytes((i + salt) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


def large(environ, start_response):
    """Large bodies in every shape the server frames: ?shape=list|parts|iter|write, ?size=bytes per
    piece, ?count=pieces, ?declared=Content-Length to send (fewer bytes than the body truncates it)."""
    q = _query(environ)
    shape, size, count = q.get("shape", "list"), int(q.get("size", "100000")), int(q.get("count", "3"))
    pieces = [pattern(size, salt=i) for i in range(1 if shape == "list" else count)]
    headers = [("Content-Type", "application/octet-stream")]
    if "declared" in q:
        headers.append(("Content-Length", q["declared"]))
    write = start_response("200 OK", headers)
    if shape in ("list", "parts"):
        return pieces
    if shape == "write":
        for piece in pieces[:-1]:
            write(piece)
        return pieces[-1:]
    return iter(pieces)


class Tracked:
    """An iterable response that records its close() call (and how far iteration went)."""

    def __init__(self, tag, chunks, chunk_size=16, fail_at=None, delay=0.0):
        self.tag = tag
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.fail_at = fail_at
        self.delay = delay
        self.sent = 0

    def __iter__(self):
        for i in range(self.chunks):
            if i == self.fail_at:
                raise RuntimeError(f"iteration failure in {self.tag}")
            if self.delay:
                time.sleep(self.delay)
            self.sent += 1
            yield (b"%08d" % i) * (self.chunk_size // 8)

    def close(self):
        _record("CLOSE_LOG", f"close {self.tag} sent={self.sent}")


def closing(environ, start_response):
    q = _query(environ)
    mode = q.get("mode", "ok")
    tag = q.get("tag", mode)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    if mode == "ok":
        return Tracked(tag, 4)
    if mode == "raise":
        return Tracked(tag, 4, fail_at=2)
    if mode == "slow":
        # about 128 MB over at most 10 s: far more than socket buffers hold
        return Tracked(tag, 2000, chunk_size=65536, delay=0.005)
    raise ValueError(mode)


def length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hel", b"lo"]


def hop(environ, start_response):
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("Keep-Alive", "timeout=99, max=1000"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
        ("X-Kept", "kept"),
    ])
    return [b"hop-by-hop body"]


def badheader(environ, start_response):
    kind = _query(environ).get("kind", "value")
    if kind == "value":
        headers = [("X-Bad", "a\r\nX-Injected: yes")]
    elif kind == "lf":
        headers = [("X-Bad", "a\nX-Injected: yes")]
    else:
        headers = [("X-Bad\r\nX-Injected", "yes")]
    start_response("200 OK", [("Content-Type", "text/plain"), *headers])
    return [b"should not be sent"]


def file_route(environ, start_response):
    path = _query(environ)["path"]
    f = open(path, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f, 8192)


class _UpperFile(io.FileIO):
    """A real file whose read() upper-cases: what arrives tells whether the body was read through Python
    (upper case) or sent from the descriptor with sendfile (as stored)."""

    def read(self, size=-1):
        return super().read(size).upper()


def upper_file_route(environ, start_response):
    f = _UpperFile(_query(environ)["path"], "r")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(os.fstat(f.fileno()).st_size))])
    return environ["wsgi.file_wrapper"](f, 4096)


def early_hints(environ, start_response):
    hints = environ.get("wsgi.early_hints")
    if hints is not None:
        hints([("Link", "</style.css>; rel=preload; as=style"), ("Link", "</app.js>; rel=preload; as=script")])
    # After the response started, a hint is ignored.
    out = _send(start_response, b"<html>hinted</html>")
    if hints is not None:
        hints([("Link", "</late.css>; rel=preload")])
    return out


ROUTES = {
    "/early-hints": early_hints,
    "/hello": hello,
    "/large": large,
    "/pid": pid,
    "/echo": echo,
    "/noread": noread,
    "/sleep": sleep,
    "/stream": stream,
    "/exit": exit_now,
    "/error": error,
    "/env": getenv,
    "/input": input_ops,
    "/sha256": sha256,
    "/exc-before": exc_before,
    "/exc-after": exc_after,
    "/write": write_callable,
    "/closing": closing,
    "/length": length,
    "/hop": hop,
    "/badheader": badheader,
    "/upper-file": upper_file_route,
    "/file": file_route,
}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    _record("CALL_LOG", f"{environ.get('REQUEST_METHOD')} {path}")
    if path.startswith("/environ"):
        return environ_dump(environ, start_response)
    handler = ROUTES.get(path)
    if handler is None:
        return _send(start_response, b"not found", "404 Not Found")
    return handler(environ, start_response)
