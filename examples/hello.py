"""The smallest WSGI application: `ferricorn -b 127.0.0.1:8000 hello` from this directory."""

BODY = b"Hello, World!"


def application(environ, start_response):
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(BODY))),
    ])
    return [BODY]
