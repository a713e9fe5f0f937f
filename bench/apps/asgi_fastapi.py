"""FastAPI JSON hello: the smallest real-framework ASGI view (FastAPI's default JSONResponse)."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello():
    return {"message": "Hello, World!"}
