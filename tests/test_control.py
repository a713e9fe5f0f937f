"""The control socket and ``ferricornctl``: where the socket is created and with which mode, every
command (show workers/stats/config/listeners, worker add/remove/kill, reload, reopen, shutdown), JSON
output, gunicorn's wire protocol, and that a silent control client never stalls the master.

The client command comes from the environment variable FERRICORNCTL (default ``ferricornctl``).
"""

import json
import os
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest
import requests

from conftest import get, pid_alive, wait_for

pytestmark = pytest.mark.ferricorn_only

CTL_CMD = shlex.split(os.environ.get("FERRICORNCTL", "ferricornctl"))
APP = "stuck:application"


def ctl_path(srv):
    """The default socket: the fixture points XDG_RUNTIME_DIR at the server's work directory."""
    return os.path.join(srv.workdir, "ferricorn.ctl")


def ctl(srv, *args, socket_path=None, env=None, timeout=30):
    """Run ferricornctl against `srv` (through -s unless `socket_path` is False)."""
    cmd = list(CTL_CMD)
    if socket_path is not False:
        cmd += ["-s", socket_path or ctl_path(srv)]
    base = dict(os.environ)
    base.update(env or {})
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=base)


def ctl_ok(srv, *args, **kw):
    res = ctl(srv, *args, **kw)
    assert res.returncode == 0, f"ferricornctl {args} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def ctl_json(srv, *args, **kw):
    return json.loads(ctl_ok(srv, "--json", *args, **kw))


def current_workers(srv):
    """Pids of the workers the master counts (not the retiring ones)."""
    return sorted(w["pid"] for w in ctl_json(srv, "show", "workers")["workers"] if not w["retiring"])


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# where the socket is


def test_default_socket_is_private_and_found_by_default(start_server):
    srv = start_server([APP])
    path = ctl_path(srv)
    wait_for(lambda: is_socket(path), 5, message="the control socket")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    srv.wait_log(r"Control socket listening at " + re.escape(path))
    # Without -s, ferricornctl finds it by the same rule.
    out = ctl_json(srv, "show", "stats", socket_path=False, env={"XDG_RUNTIME_DIR": srv.workdir})
    assert out["pid"] == srv.pid
    assert srv.stop() == 0
    assert not os.path.exists(path), "the socket file outlived the server"


def test_explicit_control_socket(start_server, tmp_short):
    path = os.path.join(tmp_short, "app.ctl")
    srv = start_server([APP, "--control-socket", path])
    wait_for(lambda: is_socket(path), 5, message="the control socket")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert not os.path.exists(ctl_path(srv))
    assert ctl_json(srv, "show", "stats", socket_path=path)["pid"] == srv.pid
    assert srv.stop() == 0
    assert not os.path.exists(path)


def test_control_socket_mode(start_server, tmp_short):
    path = os.path.join(tmp_short, "app.ctl")
    start_server([APP, "--control-socket", path, "--control-socket-mode", "0660"])
    wait_for(lambda: is_socket(path), 5, message="the control socket")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


def test_no_control_socket(start_server):
    srv = start_server([APP, "--no-control-socket"])
    assert get(srv.port, "/").status == 200
    time.sleep(0.3)
    assert not os.path.exists(ctl_path(srv))
    res = ctl(srv, "show", "workers")
    assert res.returncode == 1
    assert "cannot connect to" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_explicit_socket_that_cannot_be_created_stops_the_start(start_server, tmp_short):
    blocker = os.path.join(tmp_short, "file")
    open(blocker, "w").close()
    srv = start_server([APP, "--control-socket", os.path.join(blocker, "x.ctl")], ready=False)
    assert srv.wait(20) not in (None, 0)
    assert "control socket" in srv.log_text()


def test_default_socket_that_cannot_be_created_is_only_a_warning(start_server, tmp_short):
    blocker = os.path.join(tmp_short, "file")
    open(blocker, "w").close()
    # No XDG_RUNTIME_DIR: the fallback is $HOME/.ferricorn/, here under a regular file.
    srv = start_server([APP], env={"XDG_RUNTIME_DIR": "", "HOME": blocker})
    assert get(srv.port, "/").status == 200
    srv.wait_log(r"\[WARNING\] Control socket not created at .*ferricorn\.ctl")


def test_live_socket_is_not_taken_over(start_server, tmp_short):
    path = os.path.join(tmp_short, "app.ctl")
    first = start_server([APP, "--control-socket", path])
    wait_for(lambda: is_socket(path), 5, message="the control socket")
    second = start_server([APP, "--control-socket", path], ready=False)
    assert second.wait(20) not in (None, 0)
    assert f"another server (pid {first.pid}) is listening on it" in second.log_text()
    assert ctl_json(first, "show", "stats", socket_path=path)["pid"] == first.pid


def _server_line(srv, socket_path):
    return (f"pid {srv.pid}, listening at http://127.0.0.1:{srv.port} "
            f"(control socket {socket_path})")


def test_servers_sharing_the_default_socket_each_get_one(start_server, tmp_short):
    """A server that finds the default socket held by another live server gets its own beside it
    (`ferricorn.PID.ctl`) and says so; a bare ferricornctl names the server it talks to, and points at
    the others or picks the only one left."""
    env = {"XDG_RUNTIME_DIR": tmp_short}
    default = os.path.join(tmp_short, "ferricorn.ctl")
    a = start_server([APP], env=env)
    a.wait_log(r"Control socket listening at " + re.escape(default))
    b = start_server([APP], env=env)
    own_b = os.path.join(tmp_short, f"ferricorn.{b.pid}.ctl")
    b.wait_log(rf"\[WARNING\] Control socket {re.escape(default)} belongs to another server "
               rf"\(pid {a.pid}\): this server's is {re.escape(own_b)} instead \(ferricornctl -s "
               rf"{re.escape(own_b)}, or --control-socket PATH to choose one\)$")
    b.wait_log(r"Control socket listening at " + re.escape(own_b) + "$")
    assert stat.S_IMODE(os.lstat(own_b).st_mode) == 0o600
    c = start_server([APP], env=env)
    own_c = os.path.join(tmp_short, f"ferricorn.{c.pid}.ctl")
    c.wait_log(r"Control socket listening at " + re.escape(own_c) + "$")
    for srv in (a, b, c):  # each is reached at its own socket, after other traffic
        assert get(srv.port, "/").status == 200

    # bare: the default socket's server, named, and the others pointed at
    res = ctl(a, "show", "stats", socket_path=False, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "Server: " + _server_line(a, default)
    assert re.search(rf"^PID:\s+{a.pid}$", res.stdout, re.M)
    assert res.stderr == ("ferricornctl: note: other servers have control sockets beside it: "
                          f"{', '.join(sorted([own_b, own_c]))} (choose one with -s)\n")
    res = ctl(b, "--json", "show", "stats", socket_path=own_b)
    assert res.returncode == 0 and json.loads(res.stdout)["pid"] == b.pid
    assert res.stderr == "ferricornctl: server " + _server_line(b, own_b) + "\n"
    assert ctl_json(b, "show", "config", socket_path=own_b)["control_socket"] == own_b
    assert ctl_json(a, "show", "config", socket_path=default)["control_socket"] == default

    # the default's server gone: with two left, the user must choose; with one, that one
    assert a.stop() == 0
    assert not os.path.exists(default)
    res = ctl(a, "show", "stats", socket_path=False, env=env)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"ferricornctl: no server at {default}, and several beside it: "
                          f"{', '.join(sorted([own_b, own_c]))}; choose one with -s\n")
    assert c.stop() == 0
    assert not os.path.exists(own_c)
    res = ctl(b, "show", "stats", socket_path=False, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "Server: " + _server_line(b, own_b)
    assert res.stderr == f"ferricornctl: note: no server at {default}; talking to the only one beside it\n"
    # a server started now takes the free default again
    d = start_server([APP], env=env)
    d.wait_log(r"Control socket listening at " + re.escape(default) + "$")
    assert json.loads(ctl_ok(d, "--json", "show", "stats", socket_path=False, env=env))["pid"] == d.pid
    assert b.stop() == 0
    assert not os.path.exists(own_b)


def test_parent_process_socket_is_taken_over(start_server, tmp_short):
    # A master re-executed by USR2 is the old master's child: it takes the control socket over. Here the
    # test process plays the old master (the server is its child).
    path = os.path.join(tmp_short, "app.ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)
        old.listen(1)
        srv = start_server([APP, "--control-socket", path])
        srv.wait_log(r"Control socket taken over from the master that started this one")
        assert ctl_json(srv, "show", "stats", socket_path=path)["pid"] == srv.pid
    assert srv.stop() == 0
    assert not os.path.exists(path)


def test_usr2_new_master_takes_the_socket_over(start_server):
    srv = start_server([APP, "-w", "1"])
    srv.wait_workers(1)
    path = ctl_path(srv)
    new_master = None
    try:
        srv.signal(signal.SIGUSR2)
        srv.wait_log(r"Control socket taken over from the master that started this one "
                     rf"\(pid {srv.pid}\)", timeout=20)
        new_master = ctl_json(srv, "show", "stats")["pid"]
        assert new_master != srv.pid
        srv.wait_workers(2, timeout=20)
        # The old master goes and leaves the new master's socket in place.
        assert srv.stop() == 0
        assert is_socket(path)
        srv.wait_log(r"Master has been promoted\.")
        assert ctl_json(srv, "show", "stats")["pid"] == new_master
        ctl_ok(srv, "shutdown")
        wait_for(lambda: not pid_alive(new_master), 15, message="the new master to stop")
        assert not os.path.exists(path)
    finally:
        if new_master and pid_alive(new_master):
            os.kill(new_master, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# show


def _slow_request(port, seconds):
    """Start GET /sleep on a connection of our own; return (socket, its local port)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds + 20)
    s.sendall(f"GET /sleep?s={seconds} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return s, s.getsockname()[1]


@pytest.mark.smoke
def test_show_workers_names_the_request_in_flight(start_server):
    srv = start_server([APP, "-w", "2"])
    srv.wait_workers(2)
    sock, client_port = _slow_request(srv.port, 5)
    try:
        def busy():
            data = ctl_json(srv, "show", "workers")
            return [w for w in data["workers"] if w["in_flight"]] and data

        data = wait_for(busy, 10, interval=0.2, message="a worker busy with the request")
        assert data["count"] == 2
        (w,) = [w for w in data["workers"] if w["in_flight"]]
        assert w["state"] == "busy"
        assert w["pid"] in srv.children()
        assert w["rss"] > 0 and w["uptime"] >= 0 and w["requests"] == 0 and not w["retiring"]
        (req,) = w["in_flight"]
        assert req["method"] == "GET"
        assert req["path"].startswith("/sleep")
        assert req["client"] == f"127.0.0.1:{client_port}"
        assert 0 <= req["elapsed"] < 10

        time.sleep(1.2)
        text = ctl_ok(srv, "show", "workers")
        lines = text.splitlines()
        assert lines[0] == (f"Server: pid {srv.pid}, listening at http://127.0.0.1:{srv.port} "
                            f"(control socket {ctl_path(srv)})"), text
        assert lines[1].split()[:5] == ["PID", "AGE", "STATE", "REQUESTS", "RSS"], text
        (row_index,) = [i for i, line in enumerate(lines) if line.startswith(f"{w['pid']} ")]
        assert " busy " in lines[row_index], text
        detail = lines[row_index + 1]
        m = re.search(
            r"^\s+thread 0: GET /sleep\?s=5 from 127\.0\.0\.1:(\d+), running (\d+\.\d)s$", detail
        )
        assert m, text
        assert int(m.group(1)) == client_port and float(m.group(2)) >= 1.0
        assert "Total: 2 workers, 1 busy" in text
    finally:
        sock.close()


def test_show_stacks_names_where_each_request_is(start_server):
    # gthread, after other traffic on a kept-alive connection: two requests in flight in one worker,
    # a third started after them, and the finished ones listed.
    srv = start_server([APP, "-w", "1", "-k", "gthread", "--threads", "3"])
    srv.wait_workers(1)
    with requests.Session() as session:
        for i in range(5):
            assert session.get(f"{srv.url}/pid?n={i}", timeout=10).status_code == 200
    socks = [_slow_request(srv.port, 6)[0] for _ in range(2)]
    try:
        def both_stacked():
            data = ctl_json(srv, "show", "stacks")
            (w,) = data["workers"]
            stacked = [t for t in w["threads"] if t["stack"]]
            return len(stacked) == 2 and w

        w = wait_for(both_stacked, 10, interval=0.2, message="two requests with their stacks")
        assert w["pid"] in srv.children()
        assert w["snapshot_age"] < 2
        for t in w["threads"]:
            assert t["path"] == "/sleep?s=6" and t["method"] == "GET"
            assert t["stack"][0].startswith("Stack (most recent call first)"), t["stack"]
            assert any(re.search(r'File ".*/stuck\.py", line \d+ in sleeping_view$', line)
                       for line in t["stack"]), t["stack"]
        recent = [r["path"] for r in w["recent"]]
        assert recent[-5:] == [f"/pid?n={i}" for i in range(5)], recent
        assert all(r["started"] >= r["finished"] >= 0 for r in w["recent"])

        # A request newer than the snapshot is listed without a stack until the next one, which
        # every `show stacks` asks for: the client waits for it.
        third = _slow_request(srv.port, 6)[0]
        socks.append(third)
        wait_for(lambda: len(ctl_json(srv, "show", "workers")["workers"][0]["in_flight"]) == 3, 10,
                 message="three requests in flight")
        (w,) = ctl_json(srv, "show", "stacks")["workers"]
        assert len(w["threads"]) == 3 and all(t["stack"] for t in w["threads"]), w

        server_line, text = ctl_ok(srv, "show", "stacks").split("\n", 1)
        assert server_line.startswith(f"Server: pid {srv.pid}, "), server_line
        assert text.startswith(f"Worker {w['pid']} (stacks taken "), text
        assert len(re.findall(r"^  thread \d: GET /sleep\?s=6 from 127\.0\.0\.1:\d+, running \d+\.\ds$",
                              text, re.M)) == 3, text
        assert text.count("in sleeping_view") == 3, text
        assert "  recently finished (newest first):\n    GET /pid?n=4 (thread " in text, text
    finally:
        for sock in socks:
            sock.close()


def test_show_stats_config_listeners(start_server):
    srv = start_server([APP, "-w", "2", "--timeout", "17"])
    srv.wait_workers(2)
    assert get(srv.port, "/").status == 200

    stats = ctl_json(srv, "show", "stats")
    assert stats["pid"] == srv.pid
    assert stats["workers_current"] == 2 and stats["workers_target"] == 2
    assert stats["workers_spawned"] == 2 and stats["reloads"] == 0
    assert stats["uptime"] >= 0
    wait_for(lambda: ctl_json(srv, "show", "stats")["requests"] >= 1, 5, message="requests counted")
    text = ctl_ok(srv, "show", "stats")
    assert re.search(rf"^PID:\s+{srv.pid}$", text, re.M), text
    assert re.search(r"^Workers current:\s+2$", text, re.M), text

    text = ctl_ok(srv, "show", "config")
    assert re.search(r"^workers\s+= 2$", text, re.M), text
    assert re.search(r"^timeout\s+= 17$", text, re.M), text
    config = ctl_json(srv, "show", "config")
    assert config["workers"] == 2 and config["timeout"] == 17 and config["preload_app"] is False

    text = ctl_ok(srv, "show", "listeners")
    assert f"http://127.0.0.1:{srv.port}" in text
    listeners = ctl_json(srv, "show", "listeners")
    assert listeners["count"] == 1
    assert listeners["listeners"][0]["address"] == f"http://127.0.0.1:{srv.port}"
    assert listeners["listeners"][0]["type"] == "tcp"

    assert "worker kill PID" in ctl_ok(srv, "help")


# ---------------------------------------------------------------------------------------------
# actions


@pytest.mark.smoke
def test_worker_add_and_remove(start_server):
    srv = start_server([APP, "-w", "1"])
    srv.wait_workers(1)
    out = ctl_ok(srv, "worker", "add", "2")
    assert "1 -> 3" in out
    wait_for(lambda: len(srv.children()) == 3, 10, message="3 workers")
    wait_for(lambda: len(current_workers(srv)) == 3, 5, message="3 workers shown")
    srv.wait_log(r"Control command: worker add 2")

    reply = ctl_json(srv, "worker", "remove", "1")
    assert reply == {"removed": 1, "previous": 3, "total": 2}
    wait_for(lambda: len(srv.children()) == 2, 10, message="2 workers")
    assert ctl_json(srv, "show", "stats")["workers_target"] == 2


def test_worker_kill_is_replaced(start_server):
    srv = start_server([APP, "-w", "2"])
    srv.wait_workers(2)
    before = wait_for(lambda: len(current_workers(srv)) == 2 and current_workers(srv), 5,
                      message="2 workers")
    victim = before[0]
    out = ctl_ok(srv, "worker", "kill", str(victim))
    assert str(victim) in out

    def replaced():
        now = current_workers(srv)
        return len(now) == 2 and victim not in now and before[1] in now

    wait_for(replaced, 15, interval=0.2, message="the killed worker replaced")
    assert get(srv.port, "/").status == 200

    res = ctl(srv, "worker", "kill", "999999")
    assert res.returncode == 1 and "not found" in res.stderr


def test_reopen(start_server, tmp_path):
    access = str(tmp_path / "access.log")
    srv = start_server([APP, "--access-logfile", access])
    assert get(srv.port, "/first").status == 200
    wait_for(lambda: os.path.exists(access) and "/first" in open(access).read(), 5,
             message="the access line")
    os.rename(access, access + ".1")
    ctl_ok(srv, "reopen")
    srv.wait_log(r"Control command: reopen")

    def logged_again():
        get(srv.port, "/second")
        return os.path.exists(access) and "/second" in open(access).read()

    wait_for(logged_again, 10, interval=0.3, message="the access log reopened")


def test_reload_starts_new_workers(start_server):
    srv = start_server([APP, "-w", "2"])
    srv.wait_workers(2)
    before = set(wait_for(lambda: len(current_workers(srv)) == 2 and current_workers(srv), 5,
                          message="2 workers"))
    assert "Reloading" in ctl_ok(srv, "reload")

    def fresh():
        now = set(current_workers(srv))
        return len(now) == 2 and not (now & before)

    wait_for(fresh, 15, interval=0.2, message="new workers after reload")
    srv.wait_log(r"Hang up: Master")
    assert ctl_json(srv, "show", "stats")["reloads"] == 1
    assert get(srv.port, "/").status == 200


@pytest.mark.parametrize("mode", ["graceful", "quick"])
def test_shutdown(start_server, mode):
    srv = start_server([APP, "-w", "2"])
    srv.wait_workers(2)
    workers = srv.children()
    out = ctl_ok(srv, "shutdown", mode)
    # the server it stopped is named first
    assert out.splitlines() == [
        f"Server: pid {srv.pid}, listening at http://127.0.0.1:{srv.port} (control socket {ctl_path(srv)})",
        f"Shutting down ({mode})",
    ]
    assert srv.wait(15) == 0
    assert "Shutting down: Master" in srv.log_text()
    assert not os.path.exists(ctl_path(srv))
    wait_for(lambda: not any(pid_alive(p) for p in workers), 5, message="workers gone")


# ---------------------------------------------------------------------------------------------
# robustness and protocol


def test_silent_clients_do_not_stall_the_master(start_server):
    srv = start_server([APP, "-w", "1"])
    (worker,) = srv.wait_workers(1)
    path = ctl_path(srv)
    silent = []
    try:
        # More silent clients than the server keeps, and one stuck in the middle of a request.
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            silent.append(s)
        partial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        partial.connect(path)
        partial.sendall(struct.pack(">I", 100) + b'{"id": 1, "comm')
        silent.append(partial)

        # The master still supervises: a killed worker is replaced at once ...
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: [p for p in srv.children() if p != worker], 5, message="a new worker")
        assert get(srv.port, "/").status == 200
        # ... and still answers other control clients.
        t0 = time.monotonic()
        assert ctl_json(srv, "show", "stats")["pid"] == srv.pid
        assert time.monotonic() - t0 < 5
        # The half-sent request is given up on.
        partial.settimeout(15)
        assert partial.recv(100) == b""
    finally:
        for s in silent:
            s.close()


def _call(sock, message):
    payload = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(payload)) + payload)
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        assert chunk, "connection closed"
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        assert chunk, "connection closed"
        body += chunk
    return json.loads(body)


def test_wire_protocol_is_gunicorns(start_server):
    srv = start_server([APP, "-w", "1"])
    srv.wait_workers(1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(ctl_path(srv))
        # Several requests on one connection, arguments split as gunicornc sends them.
        reply = _call(s, {"id": 7, "command": "show workers", "args": []})
        assert reply["id"] == 7 and reply["status"] == "ok"
        assert reply["data"]["count"] == 1
        assert {"pid", "age", "booted", "last_heartbeat"} <= set(reply["data"]["workers"][0])
        reply = _call(s, {"id": 8, "command": "worker add", "args": ["1"]})
        assert reply == {"id": 8, "status": "ok", "data": {"added": 1, "previous": 1, "total": 2}}
        reply = _call(s, {"id": 9, "command": "frobnicate", "args": []})
        assert reply["id"] == 9 and reply["status"] == "error" and "frobnicate" in reply["error"]
    srv.wait_workers(2)


def test_gunicorns_client_library_works(start_server):
    client = pytest.importorskip("gunicorn.ctl.client")
    srv = start_server([APP, "-w", "1"])
    srv.wait_workers(1)
    with client.ControlClient(ctl_path(srv), timeout=10) as c:
        assert c.send_command("show stats")["pid"] == srv.pid
        assert c.send_command("worker add", ["1"])["total"] == 2
    srv.wait_workers(2)


def test_usage_errors(start_server):
    srv = start_server([APP])
    for args in (["frob"], [], ["worker", "add", "x"], ["shutdown", "now"]):
        res = ctl(srv, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
    res = ctl(srv, "show", "workers", socket_path="/nonexistent/dir/x.ctl")
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    # gunicornc's single-string form.
    assert json.loads(ctl_ok(srv, "-j", "-c", "show stats"))["pid"] == srv.pid
