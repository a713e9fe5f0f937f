"""The app of tests/test_http_edges.py: HTTP/1.1 at its edges (interim statuses from the app, CONNECT,
absolute-form targets, responses sent while the client is still uploading).

Every call is appended as one JSON line to the file named by EDGES_LOG (method, RAW_URI and the client
port), so a test can tell which requests reached the app. Routes:

- ``/interim?status=103+Early+Hints``: calls start_response with that (non-final) status, then returns a
  body.
- ``/sleep?s=N``: sleeps N seconds without reading the body (for ``--timeout``).
- anything else: reads the whole body and answers 200 with a JSON picture of the environ's host facts
  (HTTP_HOST, SERVER_NAME, SERVER_PORT, wsgi.url_scheme, HTTP_X_FORWARDED_HOST) and the body's length.
  A CONNECT to ``deny.example:443`` is answered 405 instead.
"""

import json
import os
import time
from urllib.parse import parse_qs


def _record(environ):
    path = os.environ.get("EDGES_LOG")
    if not path:
        return
    line = json.dumps({
        "port": int(environ.get("REMOTE_PORT") or 0),
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
    })
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def application(environ, start_response):
    _record(environ)
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    if path == "/interim":
        start_response(query.get("status", "103 Early Hints"),
                       [("Link", "</style.css>; rel=preload; as=style")])
        return [b"the body of an interim response"]
    if path == "/sleep":
        time.sleep(float(query.get("s", "10")))
        body = b"slept\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if environ["REQUEST_METHOD"] == "CONNECT" and environ.get("RAW_URI") == "deny.example:443":
        body = b"no tunnels here\n"
        start_response("405 Method Not Allowed",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    size = len(environ["wsgi.input"].read())
    out = json.dumps({
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "http_host": environ.get("HTTP_HOST"),
        "server_name": environ.get("SERVER_NAME"),
        "server_port": environ.get("SERVER_PORT"),
        "url_scheme": environ.get("wsgi.url_scheme"),
        "forwarded_host": environ.get("HTTP_X_FORWARDED_HOST"),
        "body_length": size,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
