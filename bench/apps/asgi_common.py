"""Shared by the raw ASGI apps: the lifespan protocol (answered at once, so every server's startup
and shutdown go through it the same way) and a helper that drains a request body."""


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive):
    """The whole request body, from as many http.request messages as the server sends."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
