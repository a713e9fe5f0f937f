"""Views for the `ferricornctl doctor` tests: a slow view (app code), an external call that never gets
an answer (network wait), and everything else answered at once (static files included, as an app that
serves them would)."""

import time
import urllib.request
from urllib.parse import parse_qs


def _arg(environ, name, default):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def _ok(start_response, body=b"ok\n", ctype="text/plain"):
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep/":
        time.sleep(float(_arg(environ, "s", "30")))
        return _ok(start_response)
    if path == "/external/":
        # An HTTP call without a timeout to a server that accepts and never answers.
        port = int(_arg(environ, "port", "9"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            return _ok(start_response, r.read())
    if path.startswith("/static/"):
        return _ok(start_response, b"body { color: red }\n", "text/css")
    return _ok(start_response)
