"""Websocket echo: accepts every session and sends each message back as it came (text as text, bytes
as bytes). Plain HTTP requests get the hello response (the harness's readiness probe)."""

from asgi_common import lifespan
from asgi_hello import END, START

ACCEPT = {"type": "websocket.accept"}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        await send(ACCEPT)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":  # websocket.disconnect
                return
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
    elif kind == "http":
        await send(START)
        await send(END)
    elif kind == "lifespan":
        await lifespan(receive, send)
