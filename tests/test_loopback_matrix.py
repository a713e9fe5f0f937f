"""The loopback promise the way users hit it: a view that calls its own server over HTTP never waits
for the request that made it, whatever came before — fresh servers after a few requests, kept-alive
client sessions, other clients keeping the workers busy, the app's own connection pool, calls nested
two and three deep, IPv6, the any-address, unix sockets, one or two workers, sync and gthread, with
--preload and --max-requests.

Every case is repeated; a hang shows as the server's 504 at --timeout (or a client timeout), and zero
hangs are allowed. FERRICORN_STRESS=N repeats each case N times instead of its default count
(`conftest.repeats`; CI runs the defaults).
gunicorn deadlocks here by design (the field report), so these are ferricorn-only.
"""

import itertools
import os
import socket
import threading
import time
import urllib.request

import httpx
import pytest
import requests

from conftest import EXAMPLES_DIR, free_port, ipv6_available, repeats

pytestmark = pytest.mark.ferricorn_only

SEED_DIR = os.path.join(EXAMPLES_DIR, "seed_app")
# A hang ends at the server's --timeout with a 504: short, so a failing run fails quickly.
SERVER_TIMEOUT = "8"
CLIENT_TIMEOUT = 15
CLIENTS = ["requests", "session", "httpx", "httpx_pool", "urllib"]


def _outcome(fn):
    """Status code of fn(), or the exception's repr: anything but the expected status is a hang."""
    try:
        return fn()
    except Exception as e:  # recorded, asserted by the caller
        return repr(e)


def _assert_no_hangs(results, srv, expected=201):
    bad = [r for r in results if r != expected]
    log = srv.log_text()
    assert not bad, f"{len(bad)} of {len(results)} loopback calls hung or failed: {bad}\n{log}"
    assert "WORKER TIMEOUT" not in log, log


def _serve_seed(start_server, args):
    port = free_port()
    srv = start_server([*args, "--timeout", SERVER_TIMEOUT, "app:site"], app_dir=SEED_DIR,
                       env={"PORT": str(port)}, port=port)
    return srv


def _serve_selfcall(start_server, args, bind=None, self_url=None, app="selfcall:app", ready_addr=None):
    port = free_port()
    env = {"SELF_URL": self_url or f"http://127.0.0.1:{port}", "CALL_TIMEOUT": str(CLIENT_TIMEOUT)}
    cmd = [*(bind or []), *args, "--timeout", SERVER_TIMEOUT, app]
    if bind is None:
        srv = start_server(cmd, env=env, port=port)
    else:
        srv = start_server(cmd, env=env, port=port, bind=False, ready=False)
        srv.wait_ready(addr=ready_addr)
    return srv, port


def _all_at_once(n, call):
    """Run call(i) for i in range(n) in n threads at once; the outcomes in order ("no answer" if one
    never returned)."""
    outcomes = {}

    def one(i):
        outcomes[i] = _outcome(lambda: call(i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT + 5)
    return [outcomes.get(i, "no answer") for i in range(n)]


def _workers(args):
    return int(args[args.index("-w") + 1]) if "-w" in args else 1


def _capacity(args):
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 1
    return _workers(args) * threads


# --- the field report's sequence on fresh servers -----------------------------------------------------

@pytest.mark.stress
@pytest.mark.parametrize("args", [
    ["-w", "1"],
    ["-w", "1", "-k", "gthread", "--threads", "1"],
], ids=["sync", "gthread-1-thread"])
def test_field_report_sequence_on_fresh_servers(start_server, args):
    # The report's steps on a fresh server: POST /hello_world, a few lookups, then the loopback call —
    # after 0 to 5 fast requests, so the call meets every state the admission logic can be in.
    results = []
    for i in range(repeats(20)):
        srv = _serve_seed(start_server, args)
        srv.wait_workers(1)
        base = srv.url
        time.sleep(0.3 if i % 2 else 0)
        for _ in range(i % 6):
            requests.get(base + "/get_hello_world", timeout=CLIENT_TIMEOUT)
        sid = requests.post(base + "/hello_world", timeout=CLIENT_TIMEOUT).json()["session_id"]
        for _ in range(2 + i % 2):
            assert requests.get(base + "/get_hello_world", params={"session_id": sid},
                                timeout=CLIENT_TIMEOUT).status_code == 200
        results.append(_outcome(
            lambda: requests.post(base + "/call_hello_world", timeout=CLIENT_TIMEOUT).status_code))
        _assert_no_hangs(results[-1:], srv)
        srv.cleanup()
    assert len(results) == repeats(20)


@pytest.mark.parametrize("client", ["requests.Session", "httpx.Client", "urllib"])
def test_field_report_sequence_on_one_kept_alive_client(start_server, client):
    # One client session for the whole sequence, again and again: the loopback call arrives while the
    # client's kept-alive connection is open in the only worker.
    srv = _serve_seed(start_server, ["-w", "1"])
    srv.wait_workers(1)
    base = srv.url
    results = []
    if client == "requests.Session":
        c = requests.Session()

        def post(path):
            return c.post(base + path, timeout=CLIENT_TIMEOUT)

        def get(path, **kw):
            return c.get(base + path, timeout=CLIENT_TIMEOUT, **kw)
    elif client == "httpx.Client":
        c = httpx.Client(timeout=CLIENT_TIMEOUT)

        def post(path):
            return c.post(base + path)

        def get(path, **kw):
            return c.get(base + path, **kw)
    else:
        class R:
            def __init__(self, status, body):
                self.status_code, self.body = status, body

            def json(self):
                import json
                return json.loads(self.body)

        def post(path):
            req = urllib.request.Request(base + path, data=b"", method="POST")
            with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as r:
                return R(r.status, r.read())

        def get(path, params=None):
            q = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
            with urllib.request.urlopen(base + path + q, timeout=CLIENT_TIMEOUT) as r:
                return R(r.status, r.read())
    for i in range(repeats(10)):
        sid = post("/hello_world").json()["session_id"]
        for _ in range(i % 4):
            assert get("/get_hello_world", params={"session_id": sid}).status_code == 200
        results.append(_outcome(lambda: post("/call_hello_world").status_code))
    _assert_no_hangs(results, srv)
    assert len(results) == repeats(10)


# --- every worker configuration, with other clients keeping the workers busy -------------------------

CONFIGS = [
    (workers, klass, extra)
    for workers, klass, extra in itertools.product(
        ["1", "2"],
        ["sync", "gthread"],
        [[], ["--preload"], ["--max-requests", "25"]],
    )
]


def _config_args(workers, klass, extra):
    args = ["-w", workers, "-k", klass]
    if klass == "gthread":
        args += ["--threads", "2"]
    return args + list(extra)


@pytest.mark.stress
@pytest.mark.parametrize("workers,klass,extra", CONFIGS,
                         ids=[f"w{w}-{k}{''.join(e) or '-plain'}" for w, k, e in CONFIGS])
def test_loopback_calls_under_load_in_every_configuration(start_server, workers, klass, extra):
    args = _config_args(workers, klass, extra)
    srv, _port = _serve_selfcall(start_server, args)
    srv.wait_workers(_workers(args))
    base = srv.url
    stop = threading.Event()
    load_errors = []
    load_count = [0]

    def fast_client():
        # A kept-alive client sending fast requests for as long as the test runs.
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.get(base + "/fast", timeout=CLIENT_TIMEOUT)
                    if r.status_code != 200:
                        load_errors.append(r.status_code)
                    load_count[0] += 1
                except requests.RequestException as e:
                    load_errors.append(repr(e))

    load = [threading.Thread(target=fast_client) for _ in range(4)]
    for t in load:
        t.start()
    results = []
    try:
        # Loopback calls one after another, through every client, while the load goes on.
        for i in range(repeats(10)):
            via = CLIENTS[i % len(CLIENTS)]
            results.append(_outcome(lambda: requests.post(
                base + f"/call?via={via}", timeout=CLIENT_TIMEOUT).status_code))
        # As many outer calls at once as the server has threads: every thread waits for a nested call.
        for round_ in range(repeats(3)):
            results += _all_at_once(_capacity(args), lambda i: requests.post(
                base + f"/call?via={CLIENTS[(round_ + i) % len(CLIENTS)]}",
                timeout=CLIENT_TIMEOUT).status_code)
    finally:
        stop.set()
        for t in load:
            t.join(CLIENT_TIMEOUT + 5)
    _assert_no_hangs(results, srv)
    assert not load_errors, load_errors
    assert load_count[0] > 0


# --- the app's own connection pool --------------------------------------------------------------------

@pytest.mark.parametrize("via", ["session", "httpx_pool"])
@pytest.mark.parametrize("args", [
    ["-w", "2"],
    ["-w", "1", "-k", "gthread", "--threads", "2"],
], ids=["w2-sync", "w1-gthread-2"])
def test_pooled_connections_opened_while_capacity_was_free(start_server, args, via):
    # A module-level requests.Session / httpx.Client: the pooled connections to the server itself are
    # opened (and accepted) by early calls while capacity is free; later outer calls, all at once, send
    # their nested requests on those kept-alive connections while every thread is busy.
    srv, _port = _serve_selfcall(start_server, args)
    srv.wait_workers(_workers(args))
    base = srv.url
    results = []
    for _ in range(4):  # warm the pools of both workers
        results.append(_outcome(lambda: requests.post(base + f"/call?via={via}",
                                                      timeout=CLIENT_TIMEOUT).status_code))
    for _ in range(repeats(8)):
        results += _all_at_once(_capacity(args), lambda i: requests.post(
            base + f"/call?via={via}", timeout=CLIENT_TIMEOUT).status_code)
    _assert_no_hangs(results, srv)


# --- nested calls ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("args", [
    ["-w", "1"],
    ["-w", "2", "-k", "gthread", "--threads", "2"],
], ids=["w1-sync", "w2-gthread-2"])
def test_nested_loopback_calls(start_server, args, depth):
    # A calls B calls C (calls D): each nested request waits for the next.
    srv, _port = _serve_selfcall(start_server, args)
    srv.wait_workers(_workers(args))
    results = []
    chains = []
    for i in range(repeats(5)):
        via = CLIENTS[i % len(CLIENTS)]
        r = _outcome(lambda: requests.post(srv.url + f"/call?via={via}&depth={depth}",
                                           timeout=CLIENT_TIMEOUT))
        if isinstance(r, str):
            results.append(r)
            continue
        results.append(r.status_code)
        chains.append(r.json().get("chain"))
    _assert_no_hangs(results, srv)
    assert all(len(c) == depth for c in chains), chains


# --- addresses: IPv6, the any-address, unix sockets -----------------------------------------------------

def _address_cases():
    cases = [("any-address", ["-b", "0.0.0.0:{port}"], "http://127.0.0.1:{port}")]
    if ipv6_available():
        cases += [
            ("ipv6", ["-b", "[::1]:{port}"], "http://[::1]:{port}"),
            ("both-localhost", ["-b", "127.0.0.1:{port}", "-b", "[::1]:{port}"], "http://localhost:{port}"),
            ("ipv6-any", ["-b", "[::]:{port}"], "http://[::1]:{port}"),
        ]
    return cases


@pytest.mark.parametrize("name,binds,url", _address_cases(), ids=[c[0] for c in _address_cases()])
@pytest.mark.parametrize("args", [["-w", "1"], ["-w", "2"]], ids=["w1", "w2"])
def test_loopback_calls_through_every_address(start_server, args, name, binds, url):
    port = free_port()
    bind = [b.format(port=port) for b in binds]
    self_url = url.format(port=port)
    family, host = (socket.AF_INET6, "::1") if "[::1]" in url else (socket.AF_INET, "127.0.0.1")
    srv, _ = _serve_selfcall(start_server, args, bind=bind, self_url=self_url,
                             ready_addr=(family, (host, port)))
    srv.wait_workers(_workers(args))
    results = []
    for i in range(repeats(6)):
        via = CLIENTS[i % len(CLIENTS)]
        results.append(_outcome(lambda: httpx.post(self_url + f"/call?via={via}",
                                                   timeout=CLIENT_TIMEOUT).status_code))
    # and all threads busy at once
    results += _all_at_once(_capacity(args), lambda i: httpx.post(
        self_url + "/call?via=session", timeout=CLIENT_TIMEOUT).status_code)
    _assert_no_hangs(results, srv)


@pytest.mark.parametrize("args", [["-w", "1"], ["-w", "2", "-k", "gthread", "--threads", "2"]],
                         ids=["w1-sync", "w2-gthread-2"])
def test_loopback_calls_through_a_unix_socket(start_server, tmp_short, args):
    path = os.path.join(tmp_short, "self.sock")
    srv, _ = _serve_selfcall(start_server, args, bind=["-b", f"unix:{path}"], self_url=f"unix:{path}",
                             ready_addr=(socket.AF_UNIX, path))
    srv.wait_workers(_workers(args))
    transport = httpx.HTTPTransport(uds=path)
    results = []
    with httpx.Client(transport=transport, timeout=CLIENT_TIMEOUT) as c:
        for i in range(repeats(6)):
            via = ["httpx", "session", "urllib"][i % 3]
            results.append(_outcome(lambda: c.post(f"http://localhost/call?via={via}").status_code))

    def outer(i):
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=CLIENT_TIMEOUT) as c:
            return c.post("http://localhost/call?via=httpx").status_code

    results += _all_at_once(_capacity(args), outer)
    _assert_no_hangs(results, srv)
    if _capacity(args) == 1:
        # one thread: every nested call was served on the overflow lane, and said so
        assert "Loopback call: POST /hello from - was sent to this server" in srv.log_text()


# --- Django --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["requests", "session"])
@pytest.mark.parametrize("args", [["-w", "1"], ["-w", "2"]], ids=["w1", "w2"])
def test_django_view_calling_its_own_server(start_server, args, via):
    pytest.importorskip("django")
    srv, _port = _serve_selfcall(start_server, args, app="selfcall_django:application")
    srv.wait_workers(_workers(args))
    results = []
    with requests.Session() as client:
        for i in range(repeats(6)):
            client.get(srv.url + "/fast/", timeout=CLIENT_TIMEOUT)
            results.append(_outcome(lambda: client.post(srv.url + f"/call/?via={via}",
                                                        timeout=CLIENT_TIMEOUT).status_code))
    results += _all_at_once(_capacity(args), lambda i: requests.post(
        srv.url + f"/call/?via={via}", timeout=CLIENT_TIMEOUT).status_code)
    _assert_no_hangs(results, srv)

