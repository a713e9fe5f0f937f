"""A FastAPI app for the asgi worker's tests: a Pydantic body, a streaming response, a background task,
lifespan state, and a route that calls a blocking function from an async view."""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app):
    yield {"db": "connected"}
    marker = os.environ.get("FASTAPI_SHUTDOWN_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write("lifespan shutdown\n")


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/")
async def root():
    return {"hello": "world"}


@app.post("/items")
async def create(item: Item):
    return {"name": item.name, "total": round(item.price * 2, 2), "tags": item.tags}


@app.get("/state")
async def state(request: Request):
    return {"db": request.state.db}


@app.get("/stream")
async def stream(n: int = 5):
    async def gen():
        for i in range(n):
            await asyncio.sleep(0)
            yield f"line {i}\n"

    return StreamingResponse(gen(), media_type="text/plain")


def write_marker(text):
    marker = os.environ.get("FASTAPI_TASK_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(text + "\n")


@app.post("/background")
async def background(tasks: BackgroundTasks):
    tasks.add_task(write_marker, "background ran")
    return PlainTextResponse("queued")


@app.get("/sync")
def sync_view():
    # A plain `def` view: FastAPI runs it in its thread pool.
    time.sleep(0.01)
    return {"sync": True}


@app.get("/slow")
async def slow(secs: float = 30):
    await asyncio.sleep(secs)
    return {"slept": secs}


@app.websocket("/ws/{name}")
async def ws_route(websocket: WebSocket, name: str):
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"name": name, "echo": data})
    except WebSocketDisconnect:
        pass
