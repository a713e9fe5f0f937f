"""The Flask app of the loopback-deadlock field report (examples/seed_app), served as in the report."""

import json
import os
import time

import pytest
import requests

from conftest import EXAMPLES_DIR, free_port, get

SEED_DIR = os.path.join(EXAMPLES_DIR, "seed_app")

pytest.importorskip("flask")


def _serve(start_server, workers, via_chdir=False, extra=()):
    port = free_port()
    args = ["-w", str(workers), *extra]
    if via_chdir:
        # started elsewhere; the server changes into the app's directory itself
        args += ["--chdir", SEED_DIR]
        cwd = os.path.dirname(SEED_DIR)
    else:
        cwd = SEED_DIR
    srv = start_server([*args, "app:site"], app_dir=cwd, env={"PORT": str(port)}, port=port)
    srv.wait_workers(workers)
    return srv


@pytest.mark.smoke
@pytest.mark.parametrize("via_chdir", [False, True], ids=["cwd", "chdir"])
def test_call_hello_world_with_two_workers(start_server, via_chdir):
    srv = _serve(start_server, 2, via_chdir)
    r = requests.post(srv.url + "/call_hello_world", timeout=20)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"session_id"}
    assert len(body["session_id"]) == 36
    # the nested response's headers are passed through: its JSON content type (a bytes body
    # returned from a Flask view would otherwise be text/html)
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert "Traceback" not in srv.log_text()


def test_hello_world_and_unknown_session(start_server):
    srv = _serve(start_server, 2)
    r = requests.post(srv.url + "/hello_world", timeout=10)
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert len(sid) == 36
    r = requests.get(srv.url + "/get_hello_world", params={"session_id": "no-such-id"}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": "Invalid or missing session_id"}
    r = requests.get(srv.url + "/get_hello_world", timeout=10)
    assert r.status_code == 404


def test_session_found_with_two_workers(start_server):
    # state_cache lives in each worker process: a lookup answers 200 only on the worker that
    # created the session, 404 on the other. Some of several lookups must find it. Which worker
    # accepts a new connection is the kernel's choice, and a worker still awake from the previous
    # request tends to win the next one: a pause between lookups lets both workers wait alike.
    srv = _serve(start_server, 2)
    sid = requests.post(srv.url + "/hello_world", timeout=10).json()["session_id"]
    statuses = []
    for _ in range(60):
        time.sleep(0.02)
        r = requests.get(srv.url + "/get_hello_world", params={"session_id": sid}, timeout=10)
        statuses.append(r.status_code)
        assert r.status_code in (200, 404)
        if r.status_code == 200:
            assert r.json() == {"message": "Hello, World!", "session_id": sid}
            break
    assert 200 in statuses, statuses


def test_session_lookup_single_worker(start_server):
    # one worker: the same process serves both requests, so the session is always found
    srv = _serve(start_server, 1)
    sids = [requests.post(srv.url + "/hello_world", timeout=10).json()["session_id"] for _ in range(3)]
    assert len(set(sids)) == 3
    for sid in sids:
        r = requests.get(srv.url + "/get_hello_world", params={"session_id": sid}, timeout=10)
        assert r.status_code == 200
        assert json.loads(r.content) == {"message": "Hello, World!", "session_id": sid}


def _admissions(srv):
    """The debug records that say how connections were admitted and closed, and any warning."""
    keep = ("accepted", "Accepted", "closed after", "WARNING", "TIMEOUT")
    return "\n".join(ln for ln in srv.log_lines() if any(k in ln for k in keep))


def _field_report_sequence(srv, client):
    """The report's sequence: create a session, look it up (three times), then the loopback call; the
    nested request's session lives in the same single worker, so it is found too."""
    r = client.post(srv.url + "/hello_world", timeout=15)
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    for _ in range(3):
        r = client.get(srv.url + "/get_hello_world", params={"session_id": sid}, timeout=15)
        assert r.status_code == 200, r.text
        assert r.json() == {"message": "Hello, World!", "session_id": sid}
    r = client.post(srv.url + "/call_hello_world", timeout=15)
    assert r.status_code == 201, f"{r.status_code} {r.text}\n{_admissions(srv)}"
    nested = r.json()["session_id"]
    assert nested != sid
    for s in (nested, sid):
        r = client.get(srv.url + "/get_hello_world", params={"session_id": s}, timeout=15)
        assert r.status_code == 200, r.text
        assert r.json()["session_id"] == s


# Fresh servers per case; SEED_FRESH_SERVERS=20 for a longer run.
FRESH_SERVERS = int(os.environ.get("SEED_FRESH_SERVERS", "4"))


@pytest.mark.smoke
@pytest.mark.ferricorn_only
@pytest.mark.parametrize("client_kind", ["connections", "session"])
@pytest.mark.parametrize("worker_args", [[], ["--threads", "2"]], ids=["sync", "gthread"])
def test_field_report_sequence_works_with_one_worker(start_server, worker_args, client_kind):
    """With `-w 1` (the only worker count under which the app's per-process sessions work), the whole
    field report works: sessions are found, and the loopback call answers instead of deadlocking. On
    several fresh servers, each after other traffic (the fast requests a user's first tries make), with a
    new connection per request or one kept-alive session."""
    for i in range(FRESH_SERVERS):
        # --timeout well under the client's: a hung loopback call shows as a 504 here, not a stall
        # (debug level: a failure's log shows how each connection was admitted)
        srv = _serve(start_server, 1, extra=["--timeout", "10", "--log-level", "debug", *worker_args])
        for _ in range(i + 1):
            assert get(srv.port, "/get_hello_world").status == 404
        time.sleep(0.2 * i)
        if client_kind == "session":
            with requests.Session() as s:
                _field_report_sequence(srv, s)
        else:
            _field_report_sequence(srv, requests)
        assert "WORKER TIMEOUT" not in srv.log_text()
        assert srv.stop() == 0


def test_two_workers_lose_sessions(start_server):
    """What the example's README warns about: with the report's advice, `-w 2`, each worker keeps its own
    `state_cache`, so a session is found only by the worker that created it."""
    srv = _serve(start_server, 2)
    sid = requests.post(srv.url + "/hello_world", timeout=10).json()["session_id"]
    statuses = set()
    for _ in range(200):
        time.sleep(0.02)  # both workers waiting alike (see test_session_found_with_two_workers)
        r = requests.get(srv.url + "/get_hello_world", params={"session_id": sid}, timeout=10)
        statuses.add(r.status_code)
        if statuses == {200, 404}:
            break
    assert statuses == {200, 404}, statuses
