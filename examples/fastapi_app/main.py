"""A FastAPI app for the asgi worker: JSON in and out, lifespan state, a websocket echo, and two views
that show what the worker names in its log — one that waits too long, one that blocks the event loop.

    pip install . fastapi && cd examples/fastapi_app && ferricorn -k asgi -t 5 main:app
"""

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app):
    # Open pools and clients here; what is yielded is every request's `request.state`.
    yield {"started": time.time()}


app = FastAPI(lifespan=lifespan)


class Order(BaseModel):
    item: str
    quantity: int = 1


@app.get("/")
async def index(request: Request):
    return {"hello": "world", "up_for": round(time.time() - request.state.started, 1)}


@app.post("/orders")
async def order(o: Order):
    return {"item": o.item, "quantity": o.quantity, "status": "accepted"}


@app.websocket("/ws")
async def echo(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            await ws.send_text(await ws.receive_text())
    except WebSocketDisconnect:
        pass


@app.get("/too-slow")
async def too_slow():
    # Past --timeout the task is cancelled and the log shows this line in its await stack.
    await asyncio.sleep(60)


@app.get("/blocks")
async def blocks():
    # A synchronous call in an async view: the loop stops for every request of the worker, and
    # --asgi-block-threshold names this line.
    time.sleep(2)
    return {"blocked": 2}
