"""A Flask app whose views call their own server over HTTP, the ways real apps do it, for the loopback
matrix (tests/test_loopback_matrix.py).

SELF_URL is the server's own base URL (``http://127.0.0.1:PORT``, ``http://[::1]:PORT``,
``http://localhost:PORT``) or ``unix:/path/to.sock`` for a unix-socket bind.

``POST /call?via=CLIENT&depth=N`` calls ``/call?depth=N-1`` (or ``POST /hello`` at depth 1) through
CLIENT and passes the answer on:
- ``requests``: a new ``requests.post`` per call (a fresh connection each time);
- ``session`` / ``httpx_pool``: a module-level ``requests.Session`` / ``httpx.Client`` shared by every
  request of the worker, so the call goes out on a pooled connection opened by an earlier request;
- ``httpx``: a new ``httpx.Client`` per call;
- ``urllib``: ``urllib.request.urlopen``.
"""

import json
import os
import socket
import threading
import time
import urllib.request
import uuid

import httpx
import requests
from flask import Flask, jsonify, request

SELF_URL = os.environ.get("SELF_URL", "")
UNIX = SELF_URL[len("unix:"):] if SELF_URL.startswith("unix:") else None
# Through a unix socket the host part is only a name for the Host header.
BASE = "http://localhost" if UNIX else SELF_URL
CALL_TIMEOUT = float(os.environ.get("CALL_TIMEOUT", "20"))

app = Flask(__name__)
sessions = {}
_lock = threading.Lock()


def _httpx_client():
    if UNIX:
        return httpx.Client(transport=httpx.HTTPTransport(uds=UNIX), timeout=CALL_TIMEOUT)
    return httpx.Client(timeout=CALL_TIMEOUT)


class _UnixHTTPConnection(urllib.request.http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CALL_TIMEOUT)
        self.sock.connect(UNIX)


class _UnixHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_UnixHTTPConnection, req)


POOL_SESSION = requests.Session()
POOL_HTTPX = _httpx_client()


def _post(via, path):
    """POST BASE+path through the named client: (status, body bytes, content type)."""
    url = BASE + path
    if via == "urllib":
        opener = urllib.request.build_opener(_UnixHandler) if UNIX else urllib.request.build_opener()
        req = urllib.request.Request(url, data=b"", method="POST")
        try:
            with opener.open(req, timeout=CALL_TIMEOUT) as r:
                return r.status, r.read(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type")
    if via in ("httpx", "httpx_pool") or UNIX:
        if via == "httpx_pool" or (UNIX and via == "session"):
            r = POOL_HTTPX.post(url)
        else:
            with _httpx_client() as c:
                r = c.post(url)
        return r.status_code, r.content, r.headers.get("content-type")
    if via == "session":
        r = POOL_SESSION.post(url, timeout=CALL_TIMEOUT)
    else:
        r = requests.post(url, timeout=CALL_TIMEOUT)
    return r.status_code, r.content, r.headers.get("Content-Type")


@app.route("/hello", methods=["POST"])
def hello():
    sid = str(uuid.uuid4())
    with _lock:
        sessions[sid] = {"message": "Hello, World!", "session_id": sid}
    return jsonify({"session_id": sid, "pid": os.getpid()}), 201


@app.route("/hello", methods=["GET"])
def get_hello():
    sid = request.args.get("session_id")
    if not sid or sid not in sessions:
        return jsonify({"error": "Invalid or missing session_id"}), 404
    return jsonify(sessions[sid]), 200


@app.route("/fast")
def fast():
    return "fast\n"


@app.route("/sleep")
def sleep():
    time.sleep(float(request.args.get("s", "1")))
    return "slept\n"


@app.route("/call", methods=["POST"])
def call():
    via = request.args.get("via", "requests")
    depth = int(request.args.get("depth", "1"))
    path = "/hello" if depth <= 1 else f"/call?via={via}&depth={depth - 1}"
    try:
        status, body, ctype = _post(via, path)
    except Exception as e:  # the caller sees what went wrong
        return jsonify({"error": repr(e)}), 502
    data = json.loads(body) if ctype and "json" in ctype else {"raw": body.decode("latin-1")}
    data.setdefault("chain", []).append(os.getpid())
    return jsonify(data), status
