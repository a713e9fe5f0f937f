"""A small app wrapped in wsgiref.validate.validator, which asserts on any PEP 3333 violation
by the server (environ contents, wsgi.input calls, start_response use, close() of the iterable)."""

from wsgiref.validate import validator


def _inner(environ, start_response):
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        length = environ.get("CONTENT_LENGTH")
        if length:
            data = environ["wsgi.input"].read(int(length))
        else:
            # no length (a chunked body): read until the server says it ended
            assert environ.get("wsgi.input_terminated")
            pieces = []
            while True:
                piece = environ["wsgi.input"].read(65536)
                if not piece:
                    break
                pieces.append(piece)
            data = b"".join(pieces)
        body = b"posted:" + data
    else:
        body = b"validated " + method.encode()
    environ["wsgi.errors"].write("validated app saw " + method + "\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = validator(_inner)
