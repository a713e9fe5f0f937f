"""A small app for the process-level tests (test_system.py): who the worker runs as, what it sees in
its environment, and output written to stdout/stderr. It imports only modules the server has already
loaded, so it also boots in a worker that switched to an unprivileged user."""

import os
import sys


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)
    if path == "/ids":
        body = "%d %d %s" % (os.getuid(), os.getgid(), ",".join(str(g) for g in sorted(os.getgroups())))
    elif path == "/env":
        body = repr(os.environ.get(query.get("name", ""), None))
    elif path == "/print":
        msg = query.get("msg", "hello")
        print("stdout:" + msg, flush=True)
        print("stderr:" + msg, file=sys.stderr, flush=True)
        body = "printed"
    else:
        body = str(os.getpid())
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
