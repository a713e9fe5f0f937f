"""A 1 MiB file (bench/work/1mib.bin, created by file.py's import if missing) through the ASGI
`http.response.pathsend` extension when the server advertises it in scope["extensions"]; otherwise
the file is read (one read of the whole file, from the page cache) and sent as one body message.
The `x-bench-path` response header says which way was taken (the harness records it)."""

import file  # noqa: F401 - creates the file
from asgi_common import lifespan
from file import PATH, SIZE

PATH = __import__("os").path.realpath(PATH)  # pathsend wants an absolute path
HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", str(SIZE).encode())]
START_PATHSEND = {"type": "http.response.start", "status": 200,
                  "headers": HEADERS + [(b"x-bench-path", b"pathsend")]}
START_READ = {"type": "http.response.start", "status": 200, "headers": HEADERS + [(b"x-bench-path", b"read")]}
PATHSEND = {"type": "http.response.pathsend", "path": PATH}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if "http.response.pathsend" in (scope.get("extensions") or {}):
        await send(START_PATHSEND)
        await send(PATHSEND)
        return
    with open(PATH, "rb") as f:
        data = f.read()
    await send(START_READ)
    await send({"type": "http.response.body", "body": data})
