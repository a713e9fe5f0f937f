"""A pure ASGI websocket echo app for conformance runs (tests/autobahn): every websocket is accepted and
every text or bytes message goes back as it came; plain HTTP gets a one-line answer. An echo the client
left before getting (its close crossed the message) is dropped."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"websocket echo\n"})
        return
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            reply = {"type": "websocket.send", "text": msg["text"]}
        else:
            reply = {"type": "websocket.send", "bytes": msg.get("bytes") or b""}
        try:
            await send(reply)
        except OSError:
            return
