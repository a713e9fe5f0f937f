"""Views for the elastic-capacity tests (tests/test_elastic.py): one that waits with the GIL released,
one that computes holding it, and which process and thread served a request.

- ``/sleep?s=0.5``: ``time.sleep`` (an I/O wait: the GIL is released)
- ``/cpu?s=1``: a pure-Python loop for that long (the GIL is held, apart from the interpreter's switches)
- ``/who``: ``pid thread-ident``
"""

import os
import threading
import time
from urllib.parse import parse_qs


def _seconds(environ, default):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    return float(q.get("s", [default])[0])


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(_seconds(environ, 0.5))
    elif path == "/cpu":
        until = time.monotonic() + _seconds(environ, 1.0)
        n = 0
        while time.monotonic() < until:
            n += 1
    body = f"{os.getpid()} {threading.get_ident()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
