"""I/O-bound ASGI view: awaits asyncio.sleep(0.01) (a stand-in for a database or upstream call),
then says hello."""

import asyncio

from asgi_common import lifespan
from asgi_hello import END, START


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await asyncio.sleep(0.01)
    await send(START)
    await send(END)
