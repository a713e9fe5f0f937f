"""Error log and access log: line format, the lines operators rely on, files, levels, atoms."""

import base64
import re
import signal

import pytest
import requests

from conftest import (
    LOG_LINE_RE, PRODUCT, RawConnection, child_pids, get, parse_log_lines, raw_request,
)

ACCESS_TIME = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def _index(lines, pattern):
    rx = re.compile(pattern)
    for i, (_, _, _, msg) in enumerate(lines):
        if rx.search(msg):
            return i
    raise AssertionError(f"no log line matches {pattern!r}:\n" + "\n".join(m for *_, m in lines))


@pytest.mark.parametrize("worker_args,worker_name", [([], "sync"),
                                                     (["-k", "gthread", "--threads", "2"], "gthread")])
def test_lifecycle_lines_and_format(start_server, worker_args, worker_name):
    srv = start_server(["-w", "2", *worker_args, "testapp"])
    pids = srv.wait_workers(2)
    assert sorted(pids) == sorted(child_pids(srv.pid))
    assert get(srv.port, "/hello").status == 200
    assert srv.stop(signal.SIGTERM, timeout=15) == 0
    lines = parse_log_lines(srv.log_text())  # every line has the [time] [pid] [LEVEL] shape

    i_start = _index(lines, rf"^Starting {PRODUCT} \d+\.\d+")
    i_listen = _index(lines, rf"^Listening at: http://127\.0\.0\.1:{srv.port} \({srv.pid}\)$")
    i_using = _index(lines, rf"^Using worker: {worker_name}$")
    i_boot = [_index(lines, rf"^Booting worker with pid: {p}$") for p in pids]
    i_signal = _index(lines, r"^Handling signal: term$")
    i_exit = [_index(lines, rf"^Worker exiting \(pid: {p}\)$") for p in pids]
    i_down = _index(lines, r"^Shutting down: Master$")
    assert i_start < i_listen < i_using < min(i_boot)
    assert max(i_boot) < i_signal < min(i_exit)
    assert max(i_exit) < i_down
    for i in (i_start, i_listen, i_using, i_signal, i_down):
        assert lines[i][1] == srv.pid, lines[i]  # logged by the master
        assert lines[i][2] == "INFO"


def test_error_logfile(start_server, tmp_path):
    path = tmp_path / "error.log"
    srv = start_server(["--error-logfile", str(path), "testapp"])
    srv.wait_log(r"Booting worker with pid", text=lambda: path.read_text() if path.exists() else "")
    assert get(srv.port, "/error").status == 500
    srv.wait_log(r"Error handling request GET /error", text=lambda: path.read_text())
    assert srv.stop(timeout=15) == 0
    text = path.read_text()
    assert f"Listening at: http://127.0.0.1:{srv.port}" in text
    assert "Shutting down: Master" in text
    assert "Listening at" not in srv.log_text()
    assert "Error handling request" not in srv.log_text()


def test_log_level_warning_hides_info(start_server):
    srv = start_server(["--log-level", "warning", "testapp"])
    assert get(srv.port, "/hello").status == 200
    assert get(srv.port, "/error").status == 500
    srv.wait_log(r"\[ERROR\] Error handling request GET /error")
    assert srv.stop(timeout=15) == 0
    log = srv.log_text()
    assert "[INFO]" not in log, log
    assert "Listening at" not in log and "Booting worker" not in log



# ---------------------------------------------------------------------------------------------
# --log-level debug


def _records(text):
    """The error log as records (time, pid, level, message): a line that does not start a record (the
    `  name: value` lines after `Current configuration:`) belongs to the record before it."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE_RE.match(line)
        if m:
            out.append([m.group(1), int(m.group(2)), m.group(3), m.group(4)])
        else:
            assert out, f"the log starts with a continuation line {line!r}"
            out[-1][3] += "\n" + line
    return out


def _messages(records, level, pattern, pid=None):
    rx = re.compile(pattern)
    return [m for _, p, lv, m in records if lv == level and rx.search(m) and pid in (None, p)]


@pytest.mark.parametrize("worker_args", [[], ["-k", "gthread", "--threads", "2"]], ids=["sync", "gthread"])
def test_debug_level_shows_configuration_boot_and_each_request(start_server, worker_args):
    """gunicorn's debug records: the effective configuration, `Arbiter booted`, and `METHOD PATH` per
    request, logged by the worker that runs it (its default `pre_request` hook)."""
    srv = start_server(["-w", "1", "--log-level", "debug", "--keep-alive", "5", *worker_args, "testapp"])
    (worker,) = srv.wait_workers(1)
    # other traffic first, then a kept-alive session: every request gets its line, once
    assert get(srv.port, "/pid").status == 200
    paths = [f"/hello?n={i}" for i in range(6)] + ["/echo"] * 3
    with requests.Session() as s:
        for p in paths:
            r = s.post(srv.url + p, data=b"x") if p == "/echo" else s.get(srv.url + p)
            assert r.status_code == 200
    assert get(srv.port, "/error").status == 500
    srv.wait_log(r"Error handling request GET /error")
    assert srv.stop(timeout=15) == 0
    records = _records(srv.log_text())

    (config,) = _messages(records, "DEBUG", r"^Current configuration:", pid=srv.pid)
    settings = dict(line[2:].split(": ", 1) for line in config.splitlines()[1:])
    assert all(line.startswith("  ") for line in config.splitlines()[1:]), config
    assert settings["workers"] == "1" and settings["loglevel"] == "debug"
    assert settings["keepalive"] == "5"
    assert settings["bind"] == f"['127.0.0.1:{srv.port}']"
    assert len(settings) > 50, config  # every setting, not a selection

    msgs = [m for *_, m in records]
    order = [next(i for i, m in enumerate(msgs) if re.match(p, m)) for p in (
        r"Current configuration:", rf"Starting {PRODUCT} ", r"Arbiter booted$", r"Listening at: ")]
    assert order == sorted(order), msgs[:10]
    assert _messages(records, "DEBUG", r"^Arbiter booted$", pid=srv.pid)

    # the path without its query, as gunicorn's req.path
    assert len(_messages(records, "DEBUG", r"^GET /hello$", pid=worker)) == 6
    assert len(_messages(records, "DEBUG", r"^POST /echo$", pid=worker)) == 3
    assert len(_messages(records, "DEBUG", r"^GET /pid$", pid=worker)) == 1
    assert len(_messages(records, "DEBUG", r"^GET /error$", pid=worker)) == 1


def test_info_level_has_no_debug_records(start_server):
    srv = start_server(["-w", "1", "--threads", "2", "testapp"])
    srv.wait_workers(1)
    with requests.Session() as s:
        for _ in range(5):
            assert s.get(srv.url + "/hello").status_code == 200
    assert raw_request(srv.port, b"G@T /hello HTTP/1.1\r\nHost: x\r\n\r\n").status == 400
    srv.signal(signal.SIGHUP)
    srv.wait_workers(2)
    assert srv.stop(timeout=15) == 0
    assert "[DEBUG]" not in srv.log_text()
    assert "Current configuration" not in srv.log_text()


def test_config_file_pre_request_replaces_the_debug_line(start_server, tmp_path):
    # gunicorn's per-request debug record is its default pre_request hook: a hook of the config file
    # takes its place.
    conf = tmp_path / "conf.py"
    conf.write_text("def pre_request(worker, req):\n    worker.log.info('hooked %s', req.path)\n")
    srv = start_server(["-c", str(conf), "--log-level", "debug", "testapp"])
    for _ in range(3):
        assert get(srv.port, "/hello").status == 200
    srv.wait_log(r"\[INFO\] hooked /hello$", count=3)
    assert srv.stop(timeout=15) == 0
    records = _records(srv.log_text())
    assert not _messages(records, "DEBUG", r"^GET /hello$")
    (config,) = _messages(records, "DEBUG", r"^Current configuration:")
    assert re.search(r"^  pre_request: <.*pre_request.*>$", config, re.M), config


def test_debug_configuration_again_after_hup(start_server, tmp_path):
    # As gunicorn re-runs its setup on HUP: the configuration read again is logged again, and a level
    # raised to debug by the reload counts at once.
    conf = tmp_path / "conf.py"
    conf.write_text("loglevel = 'info'\nworkers = 1\n")
    srv = start_server(["-c", str(conf), "testapp"])
    srv.wait_workers(1)
    assert "Current configuration" not in srv.log_text()
    conf.write_text("loglevel = 'debug'\nworkers = 2\n")
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"\[DEBUG\] Current configuration:")
    srv.wait_workers(3)
    assert srv.stop(timeout=15) == 0
    (config,) = _messages(_records(srv.log_text()), "DEBUG", r"^Current configuration:", pid=srv.pid)
    assert "\n  workers: 2" in config and "\n  loglevel: debug" in config


@pytest.mark.ferricorn_only
def test_debug_level_follows_each_connection(start_server):
    """ferricorn's own debug records: each connection accepted (and how it was admitted) and closed,
    with how many requests it carried and why it ended; the worker's threads at boot; its SIGTERM."""
    srv = start_server(["-w", "1", "--threads", "2", "--log-level", "debug", "--keep-alive", "1",
                        "testapp"])
    (worker,) = srv.wait_workers(1)
    # 1. a kept-alive connection left idle past --keep-alive
    idle = RawConnection(srv.port)
    for _ in range(3):
        idle.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.read_response().status == 200
    idle_port = idle.sock.getsockname()[1]
    # 2. a client that asks to close
    with RawConnection(srv.port) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.read_response().status == 200
        close_port = c.sock.getsockname()[1]
        c.read_until_close()
    # 3. a client that closes between requests
    with RawConnection(srv.port) as c:
        for _ in range(2):
            c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
        eof_port = c.sock.getsockname()[1]
    # 4. an invalid request
    with RawConnection(srv.port) as c:
        c.send(b"GET /hello HTTP/1.1\r\n\r\n")
        assert c.read_response().status == 400
        bad_port = c.sock.getsockname()[1]
    srv.wait_log(rf"Connection from 127\.0\.0\.1:{idle_port} closed after 3 requests: idle for --keep-alive$")
    idle.close()
    srv.wait_log(rf"Connection from 127\.0\.0\.1:{eof_port} closed after 2 requests: the client closed it$")
    srv.wait_log(rf"Connection from 127\.0\.0\.1:{close_port} closed after 1 request: the client asked for it")
    srv.wait_log(rf"Connection from 127\.0\.0\.1:{bad_port} closed after 0 requests: the request was refused$")
    for port in (idle_port, close_port, eof_port, bad_port):
        srv.wait_log(rf"\[{worker}\] \[DEBUG\] Connection from 127\.0\.0\.1:{port} accepted on "
                     rf"127\.0\.0\.1:{srv.port} \(a thread is free for it\)$")
    srv.wait_log(rf"\[{worker}\] \[DEBUG\] Worker \(pid:{worker}\) serving: 2 app threads \(gthread\), "
                 r"up to 1000 connections$")
    assert srv.stop(timeout=15) == 0
    srv.wait_log(rf"\[DEBUG\] Worker \(pid:{worker}\) got SIGTERM: finishing its 0 open connection\(s\)")
    srv.wait_log(r"\[DEBUG\] 1 workers$")


def test_refused_requests_are_logged_with_the_client(start_server):
    """A request the server refuses (bad head, bad body framing, bad chunked body read ahead) gets
    its 4xx and one WARNING naming the client and the violation, as gunicorn logs them; the app
    never sees it."""
    srv = start_server(["-w", "1", "--access-logfile", "-", "testapp"])
    bad = [
        (b"GET /hello HTTP/1.1\r\n\r\n", 400, "Missing Host header (400)"),
        (b"G@T /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400, "Invalid HTTP method (400)"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
         400, "Duplicate Content-Length (400)"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         400, "Invalid chunk size (400)"),
    ]
    for data, status, what in bad:
        r = raw_request(srv.port, data)
        assert r.status == status, (data, r.status)
        srv.wait_log(r"\[WARNING\] Invalid request from ip=127\.0\.0\.1: " + re.escape(what) + "$")
    assert get(srv.port, "/hello").status == 200
    srv.wait_log(r'"GET /hello HTTP/1\.1" 200 ', text=srv.stdout_text)
    # none of them reached the app, so none has an access line
    assert "/echo" not in srv.stdout_text()
    assert srv.stop(timeout=15) == 0
    parse_log_lines(srv.log_text())


# ---------------------------------------------------------------------------------------------
# access log


def _request_then_flush(srv):
    """A request, then a failing one: once the failure is logged the first request's access line
    (written by the same single worker, after its response) would be there too."""
    r = raw_request(srv.port, b"GET /hello?y=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\r\n"
                              b"Connection: close\r\n\r\n")
    assert r.status == 200
    assert get(srv.port, "/error").status == 500
    srv.wait_log(r"Error handling request GET /error")


def test_access_log_off_by_default(start_server):
    srv = start_server(["-w", "1", "testapp"])
    _request_then_flush(srv)
    both = srv.stdout_text() + srv.log_text()
    assert "GET /hello" not in both


def test_access_log_default_format(start_server):
    srv = start_server(["-w", "1", "--access-logfile", "-", "testapp"])
    _request_then_flush(srv)
    line_re = (r"^127\.0\.0\.1 - - " + ACCESS_TIME
               + r' "GET /hello\?y=1 HTTP/1\.1" 200 13 "-" "ua"$')
    srv.wait_log(line_re, text=srv.stdout_text)
    # the failing request is logged too, with its status
    srv.wait_log(r'^127\.0\.0\.1 - - .* "GET /error HTTP/1\.1" 500 ', text=srv.stdout_text)
    assert "GET /hello" not in srv.log_text()


def test_access_logfile_path(start_server, tmp_path):
    path = tmp_path / "access.log"
    srv = start_server(["-w", "1", "--access-logfile", str(path), "testapp"])
    _request_then_flush(srv)
    srv.wait_log(r'"GET /hello\?y=1 HTTP/1\.1" 200 13 "-" "ua"$',
                 text=lambda: path.read_text() if path.exists() else "")
    assert "GET /hello" not in srv.stdout_text()


ATOMS_FORMAT = (
    'h=%(h)s l=%(l)s u=%(u)s t=%(t)s r="%(r)s" m=%(m)s U=%(U)s q=%(q)s H=%(H)s s=%(s)s B=%(B)s '
    'b=%(b)s f="%(f)s" a="%(a)s" T=%(T)s M=%(M)s D=%(D)s L=%(L)s p=%(p)s hi=%({x-custom}i)s '
    'ho=%({x-out}o)s ev=%({remote_addr}e)s quote="%({x-quote}i)s" missing=%({x-missing}i)s'
)

ATOMS_RE = re.compile(
    r"^h=127\.0\.0\.1 l=- u=alice t=" + ACCESS_TIME
    + r' r="GET /hello\?y=1 HTTP/1\.1" m=GET U=/hello q=y=1 H=HTTP/1\.1 s=200 B=13 b=13'
    r' f="http://referer\.example/page" a="agent \\"quoted\\" ua" T=(?P<T>\d+) M=(?P<M>\d+)'
    r" D=(?P<D>\d+) L=(?P<L>\d+\.\d{6}) p=<(?P<p>\d+)> hi=custom-value ho=out-value"
    r' ev=127\.0\.0\.1 quote="say \\"hi\\"" missing=-$'
)


def test_access_log_every_atom(start_server):
    srv = start_server(["-w", "1", "--access-logfile", "-", "--access-logformat", ATOMS_FORMAT,
                        "testapp"])
    (worker,) = srv.wait_workers(1)
    auth = base64.b64encode(b"alice:secret").decode()
    r = raw_request(srv.port, (
        "GET /hello?y=1 HTTP/1.1\r\nHost: x\r\n"
        "Referer: http://referer.example/page\r\n"
        'User-Agent: agent "quoted" ua\r\n'
        "X-Custom: custom-value\r\n"
        'X-Quote: say "hi"\r\n'
        f"Authorization: Basic {auth}\r\n"
        "Connection: close\r\n\r\n").encode())
    assert r.status == 200
    srv.wait_log(r"^h=127", text=srv.stdout_text)
    lines = [line for line in srv.stdout_text().splitlines() if line.startswith("h=")]
    assert len(lines) == 1
    m = ATOMS_RE.match(lines[0])
    assert m, f"access line does not match:\n{lines[0]}"
    assert int(m.group("p")) == worker
    d = int(m.group("D"))
    assert int(m.group("M")) == d // 1000
    assert int(m.group("T")) == d // 1000000
    assert m.group("L") == "%d.%06d" % (d // 1000000, d % 1000000)
