"""A 1 MiB file sent through wsgi.file_wrapper.

The file is bench/work/1mib.bin, created at import if missing. A server without
wsgi.file_wrapper (granian has none) gets the PEP 3333 fallback: an iterator of 64 KiB blocks.
"""

import os

SIZE = 1024 * 1024
BLOCK = 64 * 1024
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "work", "1mib.bin")


def _ensure_file():
    if os.path.exists(PATH) and os.path.getsize(PATH) == SIZE:
        return
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    tmp = f"{PATH}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write((bytes(range(256)) * (SIZE // 256)))
    os.replace(tmp, PATH)  # atomic: several workers may import at once


_ensure_file()
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(SIZE))]


def _blocks(f):
    try:
        while True:
            block = f.read(BLOCK)
            if not block:
                return
            yield block
    finally:
        f.close()


def app(environ, start_response):
    f = open(PATH, "rb")
    start_response("200 OK", HEADERS)
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(f, BLOCK)
    return _blocks(f)
