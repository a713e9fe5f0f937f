"""Application objects reachable through every APP_MODULE form.

`factories` -> application, `factories:site`, `factories:create_app()`,
`factories:make_app('hi', kw=1)`. Each answers with a text naming the form used.
"""


def _app(text):
    body = text.encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


application = _app("default application")
site = _app("named object site")


def create_app():
    return _app("factory without arguments")


def make_app(greeting, kw=0):
    return _app(f"factory with arguments: {greeting} {kw}")
