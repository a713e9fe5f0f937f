"""Routes that move a lot of bytes, for the memory and slow-client tests.

- ``/upload``: read wsgi.input in 64 KiB pieces to the end; answer the length and a CRC-32.
- ``/partial?n=N``: read only the first N bytes of the body, then answer.
- ``/download?size=N``: stream N bytes from a generator in 64 KiB pieces, without Content-Length (so
  HTTP/1.1 gets chunked framing); the bytes repeat ``PATTERN``.
- ``/hello``: a small fixed answer.
- ``/pid``: the worker's process id.
"""

import json
import os
import zlib
from urllib.parse import parse_qs

PIECE = 65536
PATTERN = bytes(range(256)) * (PIECE // 256)


def _json(start_response, obj):
    body = json.dumps(obj).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def upload(environ, start_response):
    inp = environ["wsgi.input"]
    total = reads = 0
    crc = 0
    biggest = 0
    while True:
        piece = inp.read(PIECE)
        if not piece:
            break
        total += len(piece)
        reads += 1
        biggest = max(biggest, len(piece))
        crc = zlib.crc32(piece, crc)
    return _json(start_response, {"length": total, "crc32": crc, "reads": reads, "biggest": biggest})


def partial(environ, start_response, n):
    data = environ["wsgi.input"].read(n)
    return _json(start_response, {"read": len(data)})


def download(environ, start_response, size):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def gen():
        left = size
        while left > 0:
            n = min(left, PIECE)
            yield PATTERN[:n]
            left -= n

    return gen()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/upload":
        return upload(environ, start_response)
    if path == "/partial":
        return partial(environ, start_response, int(q.get("n", PIECE)))
    if path == "/download":
        return download(environ, start_response, int(q["size"]))
    if path == "/pid":
        return _json(start_response, {"pid": os.getpid()})
    body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
