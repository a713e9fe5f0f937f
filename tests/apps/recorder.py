"""An app that records every call it gets, for tests that must know exactly what reached the app.

Each call appends one JSON line to the file named by the environment variable RECORDER_LOG: the
request as the WSGI environ shows it (method, RAW_URI, PATH_INFO, QUERY_STRING, SERVER_PROTOCOL, the
client port, every HTTP_* / CONTENT_* key) and the whole body, read from wsgi.input in 64 KiB pieces.
The response is 200 with the same JSON as its body, so a test can also check it on the wire.
"""

import json
import os


def _record(line):
    path = os.environ.get("RECORDER_LOG")
    if not path:
        return
    # One write(2) on an O_APPEND descriptor: lines from concurrent threads never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8") + b"\n")
    finally:
        os.close(fd)


def application(environ, start_response):
    pieces = []
    inp = environ["wsgi.input"]
    while True:
        piece = inp.read(65536)
        if not piece:
            break
        pieces.append(piece)
    body = b"".join(pieces)
    fields = {k: v for k, v in environ.items()
              if isinstance(v, str) and (k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH"))}
    record = {
        "port": int(environ.get("REMOTE_PORT") or 0),
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "path_info": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "fields": fields,
        "body": body.decode("latin-1"),
    }
    line = json.dumps(record)
    _record(line)
    out = line.encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
