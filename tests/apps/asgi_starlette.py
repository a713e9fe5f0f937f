"""A Starlette app for the asgi worker's tests: HTTP routes (path params, a JSON body) and a websocket route."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute


async def hello(request):
    return PlainTextResponse("hello from starlette")


async def user(request):
    return JSONResponse({"user": request.path_params["name"], "q": request.query_params.get("q")})


async def echo_json(request):
    body = await request.json()
    return JSONResponse({"got": body, "n": len(body)})


async def ws_echo(websocket):
    await websocket.accept()
    while True:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await websocket.send_text("starlette: " + msg["text"])
        else:
            await websocket.send_bytes(msg["bytes"][::-1])


app = Starlette(routes=[
    Route("/", hello),
    Route("/users/{name}", user),
    Route("/json", echo_json, methods=["POST"]),
    WebSocketRoute("/ws", ws_echo),
])
