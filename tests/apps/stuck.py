"""Views that get stuck in the ways the field reports describe, for the diagnostics tests."""

import os
import socket
import time
from urllib.parse import parse_qs

_HOLD = []


def _arg(environ, name, default):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def _ok(start_response, body=b"ok\n"):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def sleeping_view(environ, start_response):
    time.sleep(float(_arg(environ, "s", "30")))
    return _ok(start_response)


def blocked_in_recv(environ, start_response):
    # An external call with no timeout: nobody ever answers on this socket.
    a, b = socket.socketpair()
    _HOLD.append((a, b))
    a.recv(1)
    return _ok(start_response)


def swallowing_loop(environ, start_response):
    # Code that catches everything, so an exception-based abort can never end it.
    deadline = time.monotonic() + float(_arg(environ, "s", "60"))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except BaseException:
            pass
    return _ok(start_response)


def allocate(environ, start_response):
    # Touch every page so the memory is really resident.
    mb = int(_arg(environ, "mb", "100"))
    for _ in range(mb):
        _HOLD.append(bytearray(os.urandom(1)) * (1024 * 1024))
    return _ok(start_response, b"allocated %d MiB\n" % mb)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        return sleeping_view(environ, start_response)
    if path == "/recv":
        return blocked_in_recv(environ, start_response)
    if path == "/swallow":
        return swallowing_loop(environ, start_response)
    if path == "/alloc":
        return allocate(environ, start_response)
    if path == "/pid":
        return _ok(start_response, str(os.getpid()).encode())
    if path == "/hold":
        return holding_view(environ, start_response)
    if path == "/drip":
        return dripping_view(environ, start_response)
    return _ok(start_response)


# Views for the graceful-stop tests (below the others, so the line numbers in the docs' excerpts hold).


def _mark(environ):
    # `mark=PATH`: append this worker's pid to PATH when the view starts, so a test knows it runs.
    path = _arg(environ, "mark", "")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


def holding_view(environ, start_response):
    # /sleep that says when it starts; `s=0` makes it a fast request that says it ran.
    _mark(environ)
    time.sleep(float(_arg(environ, "s", "30")))
    return _ok(start_response, str(os.getpid()).encode())


def dripping_view(environ, start_response):
    # A response that starts, then stalls: its head and first chunk go out before the sleep.
    _mark(environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first\n"
    time.sleep(float(_arg(environ, "s", "30")))
    yield b"second\n"
