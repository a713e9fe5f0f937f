"""The server as a Unix service: pidfile, process titles, user/group switching, umask, daemon mode,
SO_REUSEPORT, captured output, --reload, systemd socket activation and sd_notify, and the checks on
these settings' values."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (
    _SCRUBBED_ENV, APPS_DIR, IS_GUNICORN, PRODUCT, SERVER_CMD, free_port, get, pid_alive, run_cli,
    wait_for,
)

APP = "sysapp:application"


def _text(port, path):
    return get(port, path).body.decode()


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def _status_ids(pid):
    """(real uid, real gid, supplementary groups) from /proc/PID/status."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.split()
    return int(fields["Uid"][0]), int(fields["Gid"][0]), sorted(int(g) for g in fields["Groups"])


def _worker_pids(srv, n=1):
    return wait_for(lambda: srv.children() if len(srv.children()) >= n else None, 15,
                    message=f"{n} worker(s)")


# ------------------------------------------------------------------------------------------------
# pidfile


def test_pidfile_is_written_and_removed(start_server, tmp_path):
    pidfile = tmp_path / "app.pid"
    srv = start_server(["-p", str(pidfile), APP])
    wait_for(pidfile.exists, 10, message="pidfile")
    assert pidfile.read_text().strip() == str(srv.pid)
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
    assert srv.stop() == 0
    assert not pidfile.exists()


def test_pidfile_naming_a_live_process_refuses_to_start(tmp_path):
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    res = run_cli(["-b", f"127.0.0.1:{free_port()}", "-p", str(pidfile), APP], timeout=20)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert f"Already running on PID {os.getpid()} (or pid file '{pidfile}' is stale)" in err
    # Not ours: left alone.
    assert pidfile.read_text().strip() == str(os.getpid())


@pytest.mark.ferricorn_only
def test_pidfile_refusal_is_one_log_line(tmp_path):
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    res = run_cli(["-p", str(pidfile), APP])
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "[ERROR] Already running on PID" in lines[0], lines


def test_stale_pidfile_is_replaced(start_server, tmp_path):
    # A pid that is not running: a child that already exited.
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{dead.pid}\n")
    srv = start_server(["-p", str(pidfile), APP])
    wait_for(lambda: pidfile.read_text().strip() == str(srv.pid), 10, message="pidfile rewritten")


# ------------------------------------------------------------------------------------------------
# process titles


def _titles_supported():
    if not IS_GUNICORN:
        return True
    try:
        import setproctitle  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _titles_supported(), reason="gunicorn sets titles only with setproctitle")
@pytest.mark.parametrize("name_args, name", [(["-n", "shop-api"], "shop-api"), ([], APP)])
def test_process_titles(start_server, name_args, name):
    srv = start_server([*name_args, "-w", "2", APP])
    workers = _worker_pids(srv, 2)
    wait_for(lambda: _cmdline(srv.pid) == f"{PRODUCT}: master [{name}]", 10,
             message=f"master title, have {_cmdline(srv.pid)!r}")
    for pid in workers:
        wait_for(lambda: _cmdline(pid) == f"{PRODUCT}: worker [{name}]", 10,
                 message=f"worker title, have {_cmdline(pid)!r}")
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(srv.pid)], capture_output=True, text=True)
    if ps.returncode == 0:
        assert ps.stdout.strip() == f"{PRODUCT}: master [{name}]"
    # The app still sees its environment after the title took the space of the original one.
    assert _text(srv.port, "/env?name=PYTHONUNBUFFERED") == "'1'"


# ------------------------------------------------------------------------------------------------
# umask, user and group


@pytest.mark.parametrize("args, mode", [([], 0o777), (["-m", "007"], 0o770), (["--umask", "0o22"], 0o755)])
def test_umask_applies_to_the_unix_socket_file(start_server, tmp_short, args, mode):
    path = os.path.join(tmp_short, "s.sock")
    srv = start_server(["-b", f"unix:{path}", *args, APP], bind=False, ready=False)
    srv.wait_ready(addr=(socket.AF_UNIX, path))
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _nobody_or_skip():
    import grp
    import pwd
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    group = next((g for g in ("nogroup", "nobody") if _group_exists(grp, g)), None)
    if group is None:
        pytest.skip("no group 'nogroup' or 'nobody'")
    return user, group, grp.getgrnam(group).gr_gid


# The standard library of the Python the server runs (the suite runs the server with its own interpreter).
STDLIB = os.path.dirname(os.__file__)


def _readable_by(uid, gid, path):
    """Whether a process of that user and group may list `path` (and enter every directory on the way)."""
    res = subprocess.run(["test", "-r", path, "-a", "-x", path], user=uid, group=gid, extra_groups=[],
                         stdin=subprocess.DEVNULL, capture_output=True)
    return res.returncode == 0


def _stdlib_readable_by_nobody():
    user, _, gid = _nobody_or_skip()
    return _readable_by(user.pw_uid, gid, STDLIB)


def _nobody():
    """`nobody` and its group, for tests whose worker switches to it; skipped when that user cannot
    read this machine's Python (e.g. a pyenv under /root): such a worker cannot import anything."""
    user, group, gid = _nobody_or_skip()
    if not _readable_by(user.pw_uid, gid, STDLIB):
        pytest.skip(f"this machine's Python ({STDLIB}) is not readable by the user nobody, so a worker "
                    "switched to it cannot import anything")
    return user, group, gid


def _group_exists(grp, name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@root_only
def test_workers_switch_user_and_group(start_server):
    user, group, gid = _nobody()
    srv = start_server(["-u", "nobody", "-g", group, APP])
    (worker,) = _worker_pids(srv)
    uid, wgid, _ = _status_ids(worker)
    assert (uid, wgid) == (user.pw_uid, gid)
    assert _status_ids(srv.pid)[:2] == (0, 0), "the master keeps its identity"
    assert _text(srv.port, "/ids").split()[:2] == [str(user.pw_uid), str(gid)]


@root_only
@pytest.mark.ferricorn_only
def test_switched_workers_leave_the_masters_groups_behind(start_server):
    user, group, gid = _nobody()
    # Without -g, the user's own group; no supplementary group of root's survives.
    srv = start_server(["-u", str(user.pw_uid), APP])
    (worker,) = _worker_pids(srv)
    assert _status_ids(worker) == (user.pw_uid, user.pw_gid, [user.pw_gid])


@root_only
def test_initgroups(start_server):
    user, group, gid = _nobody()
    srv = start_server(["-u", "nobody", "-g", group, "--initgroups", APP])
    (worker,) = _worker_pids(srv)
    import grp
    expected = {g.gr_gid for g in grp.getgrall() if "nobody" in g.gr_mem} | {gid}
    assert set(_status_ids(worker)[2]) == expected


@root_only
@pytest.mark.ferricorn_only
def test_worker_that_cannot_read_python_says_so(start_server):
    """A worker switched to a user that cannot read the Python installation says which user and which
    directory stops it, and the server stops as for any boot failure — instead of a traceback ending in
    `ModuleNotFoundError: No module named 'importlib'`."""
    user, group, gid = _nobody_or_skip()
    if _readable_by(user.pw_uid, gid, STDLIB):
        pytest.skip(f"this machine's Python ({STDLIB}) is readable by nobody: nothing to report")
    srv = start_server(["-u", "nobody", "-g", group, APP], ready=False)
    assert srv.wait(20) == 3
    log = srv.log_text()
    (line,) = [ln for ln in log.splitlines() if "cannot read the Python installation" in ln]
    assert "[ERROR] Worker (pid:" in line
    assert f"runs as user nobody (uid {user.pw_uid}), group {group} (gid {gid}) (--user/--group)" in line
    assert f"the standard library {STDLIB} (cannot " in line
    # the first directory on the way that nobody may not enter, with its mode and owner
    blocker = next(d for d in _parents(STDLIB) if not _readable_by(user.pw_uid, gid, d))
    mode = stat.filemode(os.stat(blocker).st_mode)
    assert re.search(rf"cannot (enter|read) {re.escape(blocker)}: {re.escape(mode)} \S+:\S+\)", line), line
    assert "Worker failed to boot." in log
    assert "Traceback" not in log and "ModuleNotFoundError: No module" not in log
    assert "Booting worker" not in log


def _parents(path):
    """`path`'s directories from the top down, `path` last: /a, /a/b, /a/b/c."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


@root_only
@pytest.mark.ferricorn_only
def test_preloaded_app_serves_with_a_warning_about_unreadable_python(start_server):
    # With --preload the master imported the app: the worker serves, and warns that later imports fail.
    user, group, gid = _nobody_or_skip()
    if _readable_by(user.pw_uid, gid, STDLIB):
        pytest.skip(f"this machine's Python ({STDLIB}) is readable by nobody: nothing to report")
    srv = start_server(["--preload", "-u", "nobody", "-g", group, APP])
    srv.wait_log(r"\[WARNING\] Worker \(pid:\d+\) runs as user nobody .* cannot read the Python "
                 rf"installation: the standard library {re.escape(STDLIB)} \(cannot .*--preload")
    for _ in range(3):
        assert _text(srv.port, "/ids").split()[:2] == [str(user.pw_uid), str(gid)]


@root_only
@pytest.mark.ferricorn_only
def test_worker_that_cannot_read_the_app_directory_says_so(start_server, tmp_short):
    user, group, gid = _nobody_or_skip()
    os.chmod(tmp_short, 0o755)
    app_dir = os.path.join(tmp_short, "private")
    os.mkdir(app_dir)
    os.chmod(app_dir, 0o700)
    with open(os.path.join(APPS_DIR, "sysapp.py")) as src, open(os.path.join(app_dir, "sysapp.py"), "w") as dst:
        dst.write(src.read())
    # --preload: the master reads the app; then it is the worker that cannot, whatever else it can read
    srv = start_server(["--preload", "-u", "nobody", "-g", group, APP], app_dir=app_dir)
    srv.wait_log(r"\[WARNING\] Worker \(pid:\d+\) runs as user nobody .* and cannot read .*"
                 rf"the app's directory {re.escape(app_dir)} \(cannot read {re.escape(app_dir)}: "
                 r"drwx------ root:root\)")
    assert _text(srv.port, "/ids").split()[:2] == [str(user.pw_uid), str(gid)]


# ------------------------------------------------------------------------------------------------
# daemon mode


def test_daemon_detaches_and_stops_by_pidfile_pid(tmp_path):
    pidfile = tmp_path / "d.pid"
    errlog = tmp_path / "error.log"
    port = free_port()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    started = time.monotonic()
    res = subprocess.run(
        [*SERVER_CMD, "-D", "-p", str(pidfile), "--error-logfile", str(errlog),
         "-b", f"127.0.0.1:{port}", APP],
        cwd=APPS_DIR, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert time.monotonic() - started < 15
    pid = None
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, message="pidfile")
        pid = int(pidfile.read_text())
        assert pid_alive(pid)
        # A new session, not the caller's.
        assert os.getsid(pid) != os.getsid(0)
        wait_for(lambda: _answers(port), 20, message="daemon answering")
        assert _text(port, "/pid") != str(pid)
        # Daemonized, WINCH stops the workers gracefully and the master stays.
        os.kill(pid, signal.SIGWINCH)
        wait_for(lambda: "graceful stop of workers" in errlog.read_text(), 10, message="WINCH handled")
        wait_for(lambda: not _children(pid), 15, message="workers stopped")
        assert pid_alive(pid)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), 15, message="daemon exit")
        wait_for(lambda: not pidfile.exists(), 5, message="pidfile removed")
        assert "Shutting down: Master" in errlog.read_text()
        pid = None
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _children(pid):
    from conftest import child_pids
    return [p for p in child_pids(pid) if pid_alive(p)]


def _answers(port):
    try:
        return get(port, "/pid", timeout=2).status == 200
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# SO_REUSEPORT, worker tmp dir, captured output


def test_reuse_port_lets_two_servers_share_a_port(start_server):
    port = free_port()
    first = start_server(["--reuse-port", APP], port=port)
    second = start_server(["--reuse-port", APP], port=port)
    assert first.proc.poll() is None and second.proc.poll() is None
    assert "in use" not in second.log_text()
    pids = {_text(port, "/pid") for _ in range(40)}
    assert pids, "the shared port answers"


def test_worker_tmp_dir_is_accepted(start_server, tmp_path):
    srv = start_server(["--worker-tmp-dir", str(tmp_path), APP])
    assert get(srv.port, "/pid").status == 200


def test_capture_output_sends_prints_to_the_error_log(start_server, tmp_path):
    errlog = tmp_path / "error.log"
    srv = start_server(["--capture-output", "--error-logfile", str(errlog), APP])
    assert _text(srv.port, "/print?msg=marker-1") == "printed"
    wait_for(lambda: "stdout:marker-1" in errlog.read_text() and "stderr:marker-1" in errlog.read_text(),
             10, message="captured output in the error log")
    assert "stdout:marker-1" not in srv.stdout_text()


@pytest.mark.ferricorn_only
def test_captured_output_follows_log_rotation(start_server, tmp_path):
    errlog = tmp_path / "error.log"
    srv = start_server(["--capture-output", "--error-logfile", str(errlog), APP])
    _worker_pids(srv)
    os.rename(errlog, tmp_path / "error.log.1")
    srv.signal(signal.SIGUSR1)
    wait_for(errlog.exists, 10, message="log reopened")
    time.sleep(0.5)
    _text(srv.port, "/print?msg=after-rotation")
    wait_for(lambda: "stdout:after-rotation" in errlog.read_text(), 10, message="output in the new file")


# ------------------------------------------------------------------------------------------------
# --reload


APP_TEMPLATE = """
import helper

def application(environ, start_response):
    body = ({version!r} + " " + helper.VALUE).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _write(path, text):
    # Write to a new file and rename it over the old one, as many editors do.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(textwrap.dedent(text))
    os.replace(tmp, path)


@pytest.fixture
def reload_app(tmp_path):
    d = tmp_path / "app"
    d.mkdir()
    _write(d / "reloadme.py", APP_TEMPLATE.format(version="v1"))
    _write(d / "helper.py", "VALUE = 'h1'\n")
    return d


def test_reload_restarts_workers_when_the_app_changes(start_server, reload_app):
    srv = start_server(["--reload", "reloadme:application"], app_dir=str(reload_app))
    assert _text(srv.port, "/") == "v1 h1"
    first = srv.worker_pids_from_log()
    time.sleep(1.2)  # let the watcher see the loaded modules
    _write(reload_app / "reloadme.py", APP_TEMPLATE.format(version="v2"))
    wait_for(lambda: _text(srv.port, "/") == "v2 h1", 20, message="new code served")
    assert re.search(r"Worker reloading: \S*reloadme\.py modified", srv.log_text())
    # A module imported by the app counts too.
    time.sleep(1.2)
    _write(reload_app / "helper.py", "VALUE = 'h2'\n")
    wait_for(lambda: _text(srv.port, "/") == "v2 h2", 20, message="changed import served")
    assert set(srv.worker_pids_from_log()) - set(first), "workers were replaced"
    assert srv.proc.poll() is None


@pytest.mark.parametrize("engine", ["inotify", "poll"])
def test_reload_extra_file(start_server, reload_app, tmp_path, engine):
    if IS_GUNICORN and engine == "inotify":
        pytest.importorskip("inotify", reason="gunicorn's inotify reloader needs the inotify package")
    extra = tmp_path / "settings.toml"
    extra.write_text("a = 1\n")
    srv = start_server(["--reload", "--reload-engine", engine, "--reload-extra-file", str(extra),
                        "reloadme:application"], app_dir=str(reload_app))
    (first,) = _worker_pids(srv)
    time.sleep(1.5)
    extra.write_text("a = 2\n")
    srv.wait_log(r"Worker reloading: \S*settings\.toml modified", timeout=20)
    wait_for(lambda: len(srv.worker_pids_from_log()) >= 2, 20, message="a new worker")
    assert _text(srv.port, "/") == "v1 h1"


@pytest.mark.ferricorn_only
def test_reload_extra_glob_pattern_sees_new_files(start_server, reload_app, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    srv = start_server(["--reload", "--reload-extra-file", str(templates / "*.html"),
                        "reloadme:application"], app_dir=str(reload_app))
    _worker_pids(srv)
    time.sleep(1.5)
    (templates / "notes.txt").write_text("not watched")
    time.sleep(1.5)
    assert "Worker reloading" not in srv.log_text()
    (templates / "index.html").write_text("<p>hi</p>")
    srv.wait_log(r"Worker reloading: \S*index\.html modified", timeout=20)


# ------------------------------------------------------------------------------------------------
# systemd


ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]);"
    "fd == 3 or (os.dup2(fd, 3), os.close(fd));"
    "os.environ['LISTEN_PID'] = str(os.getpid()) if sys.argv[2] == 'self' else sys.argv[2];"
    "os.environ['LISTEN_FDS'] = '1'; os.execvp(sys.argv[3], sys.argv[3:])"
)


@pytest.fixture
def activated(tmp_path):
    """Start the server the way systemd does: the test's listening socket on fd 3, LISTEN_FDS=1 and
    LISTEN_PID set to the server's pid (a wrapper sets it, then execs the server in its own process).
    Returns (process, port, log path)."""
    started = []

    def start(listen_pid, extra_args=()):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        fd = lsock.fileno()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(PYTHONUNBUFFERED="1", XDG_RUNTIME_DIR=str(tmp_path))
        log_path = tmp_path / f"server{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", ACTIVATE, str(fd), listen_pid, *SERVER_CMD, *extra_args, APP],
                cwd=APPS_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(fd,), start_new_session=True,
            )
        lsock.close()
        started.append(proc)
        return proc, port, log_path

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_answering(proc, port, log_path):
    def ready():
        assert proc.poll() is None, f"server exited: {log_path.read_text()}"
        return _answers(port)
    wait_for(ready, 20, message="server answering")


def test_socket_activation_uses_the_passed_socket(activated):
    proc, port, log_path = activated("self")
    _wait_answering(proc, port, log_path)
    assert re.search(rf"Listening at: http://127\.0\.0\.1:{port} ", log_path.read_text())
    # The variables are consumed: the app does not inherit them.
    assert _text(port, "/env?name=LISTEN_FDS") == "None"
    assert _text(port, "/env?name=LISTEN_PID") == "None"
    proc.terminate()
    assert proc.wait(15) == 0


def test_socket_activation_is_ignored_for_another_pid(activated):
    own_port = free_port()
    proc, _, log_path = activated("1", ["-b", f"127.0.0.1:{own_port}"])
    _wait_answering(proc, own_port, log_path)
    assert re.search(rf"Listening at: http://127\.0\.0\.1:{own_port} ", log_path.read_text())
    assert _text(own_port, "/env?name=LISTEN_FDS") == "'1'"


class Notifications:
    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(addr)
        self.sock.settimeout(0.5)
        self.seen = []

    def wait_for(self, key, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.seen):
                if key in msg.split("\n"):
                    del self.seen[: i + 1]
                    return msg
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        raise AssertionError(f"no {key} within {timeout}s; got {self.seen}")

    def close(self):
        self.sock.close()


def test_sd_notify_ready(start_server, tmp_short):
    path = os.path.join(tmp_short, "notify.sock")
    n = Notifications(path)
    try:
        start_server([APP], env={"NOTIFY_SOCKET": path})
        assert "READY=1" in n.wait_for("READY=1")
    finally:
        n.close()


@pytest.mark.ferricorn_only
@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_life_cycle(start_server, tmp_short, abstract):
    if abstract:
        name = f"fcn-notify-{os.getpid()}-{time.monotonic_ns()}"
        n, env_value = Notifications("\0" + name), "@" + name
    else:
        path = os.path.join(tmp_short, "notify.sock")
        n, env_value = Notifications(path), path
    try:
        srv = start_server(["-w", "2", APP], env={"NOTIFY_SOCKET": env_value})
        ready = n.wait_for("READY=1")
        # Sent once the workers are up, with a status line.
        assert len(srv.worker_pids_from_log()) == 2
        assert re.search(r"^STATUS=.+", ready, re.M), ready
        srv.signal(signal.SIGHUP)
        reloading = n.wait_for("RELOADING=1")
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M), reloading
        n.wait_for("READY=1")
        srv.signal(signal.SIGTERM)
        assert "STOPPING=1" in n.wait_for("STOPPING=1")
        assert srv.wait(15) == 0
    finally:
        n.close()


# ------------------------------------------------------------------------------------------------
# bad values


@pytest.mark.ferricorn_only
@pytest.mark.parametrize("args, message", [
    (["-u", "no-such-user-fcn"], "argument -u/--user: no such user: 'no-such-user-fcn'"),
    (["--group", "no-such-group-fcn"], "argument -g/--group: no such group: 'no-such-group-fcn'"),
    (["-m", "0999"], "argument -m/--umask: invalid int value: '0999'"),
    (["-m", "0o1000"], "argument -m/--umask: invalid umask: 512"),
    (["--umask", "abc"], "argument -m/--umask: invalid int value: 'abc'"),
    (["--worker-tmp-dir", "/nonexistent-fcn"], "argument --worker-tmp-dir: '/nonexistent-fcn' is not a directory"),
    (["--reload-engine", "fsevents"], "argument --reload-engine: invalid choice: 'fsevents'"),
    (["--reload-extra-file", "/nonexistent-fcn.toml"], "argument --reload-extra-file: file '/nonexistent-fcn.toml' does not exist"),
    (["--daemon=yes"], "argument -D/--daemon: takes no value"),
])
def test_bad_values_exit_2_with_one_line(args, message):
    res = run_cli([*args, APP])
    err = res.stderr.decode().strip()
    assert res.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ferricorn: error: ") and message in err, err


@pytest.mark.ferricorn_only
def test_bad_values_in_a_config_file(tmp_path):
    conf = tmp_path / "c.conf.py"
    conf.write_text("user = 'no-such-user-fcn'\n")
    res = run_cli(["-c", str(conf), APP])
    err = res.stderr.decode().strip()
    assert res.returncode == 2, err
    assert len(err.splitlines()) == 1 and "no such user: 'no-such-user-fcn'" in err, err


def test_settings_in_print_config(tmp_path):
    conf = tmp_path / "c.conf.py"
    conf.write_text(textwrap.dedent("""
        umask = 0o22
        user = 0
        group = 0
        daemon = False
        reuse_port = True
        capture_output = True
        reload = True
        reload_engine = "poll"
    """))
    res = run_cli(["--print-config", "-c", str(conf), APP])
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()
    for line in ["umask = 18", "user = 0", "group = 0", "daemon = False", "reuse_port = True",
                 "capture_output = True", "reload = True", "reload_engine = poll", "initgroups = False"]:
        name, value = line.split(" = ")
        assert re.search(rf"^{name}\s*= {re.escape(value)}$", out, re.M), (line, out)
    assert "not supported" not in res.stderr.decode()
