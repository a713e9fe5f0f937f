"""ASGI POST echo: reads the whole request body (every http.request message) and sends it back in
one message with a Content-Length."""

from asgi_common import lifespan, read_body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
