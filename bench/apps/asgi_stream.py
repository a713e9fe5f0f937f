"""A 100 KiB response streamed as 4 body messages of 25 KiB (more_body), without a Content-Length:
the server frames it (chunked under HTTP/1.1)."""

from asgi_common import lifespan

CHUNK = bytes(range(256)) * 100  # 25600 bytes
CHUNKS = 4  # 102400 bytes in all
START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/octet-stream")]}
MORE = {"type": "http.response.body", "body": CHUNK, "more_body": True}
LAST = {"type": "http.response.body", "body": CHUNK}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await send(START)
    for _ in range(CHUNKS - 1):
        await send(MORE)
    await send(LAST)
