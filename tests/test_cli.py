"""The command line: APP_MODULE forms, binds, worker settings, paths, env, config checks, errors."""

import json
import os
import re
import socket
import threading

import pytest
import requests

from conftest import (
    APPS_DIR, PRODUCT, RawConnection, child_pids, free_port, get, ipv6_available,
    print_config, run_cli, wait_for,
)

# ---------------------------------------------------------------------------------------------
# APP_MODULE


@pytest.mark.parametrize("module,expected", [
    ("factories:site", "named object site"),
    ("factories", "default application"),
    ("factories:create_app()", "factory without arguments"),
    ("factories:make_app('hi', kw=1)", "factory with arguments: hi 1"),
], ids=["module:name", "module", "factory()", "factory(args)"])
def test_app_module_forms(start_server, module, expected):
    srv = start_server([module])
    r = get(srv.port, "/")
    assert r.status == 200
    assert r.body.decode() == expected


def test_app_module_missing_object_fails(start_server):
    srv = start_server(["factories:no_such_object"], ready=False)
    code = srv.wait(20)
    assert code is not None and code != 0, srv.log_text()
    assert "no_such_object" in srv.log_text()


# ---------------------------------------------------------------------------------------------
# binds


def test_bind_repeated(start_server):
    second = free_port()
    srv = start_server(["-b", f"127.0.0.1:{second}", "testapp"])
    srv.wait_ready(addr=(socket.AF_INET, ("127.0.0.1", second)))
    for port in (srv.port, second):
        r = get(port, "/hello")
        assert r.status == 200 and r.body == b"Hello, World!"
    log = srv.log_text()
    assert f"127.0.0.1:{srv.port}" in log and f"127.0.0.1:{second}" in log


def test_bind_ipv6(start_server):
    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this machine")
    port6 = free_port(socket.AF_INET6, "::1")
    srv = start_server(["-b", f"[::1]:{port6}", "testapp"])
    srv.wait_ready(addr=(socket.AF_INET6, ("::1", port6)))
    with RawConnection(None, family=socket.AF_INET6, addr=("::1", port6)) as c:
        c.send(b"GET /environ HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
        r = c.read_final_response()[0]
    assert r.status == 200
    env = json.loads(r.body)
    assert env["REMOTE_ADDR"] == "::1"
    assert f"http://[::1]:{port6}" in srv.log_text()


def test_bind_unix_socket(start_server, tmp_short):
    path = os.path.join(tmp_short, "srv.sock")
    srv = start_server(["-b", f"unix:{path}", "testapp"], bind=False, ready=False)
    srv.wait_ready(addr=(socket.AF_UNIX, path))
    with RawConnection(None, family=socket.AF_UNIX, addr=path) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        r = c.read_final_response()[0]
    assert r.status == 200 and r.body == b"Hello, World!"
    assert f"unix:{path}" in srv.log_text()


def _print_config(args, env=None):
    return print_config([*args, "testapp"], env=env)


def test_default_bind_in_print_config():
    s = _print_config([])
    assert "127.0.0.1:8000" in s["bind"]
    assert "0.0.0.0" not in s["bind"]


def test_port_env_sets_default_bind():
    s = _print_config([], env={"PORT": "8123"})
    assert "0.0.0.0:8123" in s["bind"]
    s = _print_config(["-b", "127.0.0.1:8124"], env={"PORT": "8123"})
    assert "127.0.0.1:8124" in s["bind"] and "8123" not in s["bind"]


def test_port_env_listens_on_all_interfaces(start_server):
    port = free_port()
    srv = start_server(["testapp"], bind=False, env={"PORT": str(port)}, port=port)
    assert f"Listening at: http://0.0.0.0:{port}" in srv.log_text()
    assert get(port, "/hello").status == 200


# ---------------------------------------------------------------------------------------------
# workers


def _assert_worker_count(srv, n):
    pids = srv.wait_workers(n)
    wait_for(lambda: len(child_pids(srv.pid)) >= n, 10, message=f"{n} worker processes")
    # no extra worker shows up afterwards
    assert len(srv.worker_pids_from_log()) == n, srv.log_text()
    assert sorted(pids) == sorted(p for p in child_pids(srv.pid) if p in pids)
    assert len(child_pids(srv.pid)) == n


def test_workers_flag(start_server):
    srv = start_server(["-w", "3", "testapp"])
    _assert_worker_count(srv, 3)


def test_web_concurrency(start_server):
    srv = start_server(["testapp"], env={"WEB_CONCURRENCY": "2"})
    _assert_worker_count(srv, 2)


def test_workers_flag_beats_web_concurrency(start_server):
    srv = start_server(["--workers", "3", "testapp"], env={"WEB_CONCURRENCY": "2"})
    _assert_worker_count(srv, 3)


def _concurrent_sleeps(srv, n, seconds):
    results = [None] * n
    errors = []

    def one(i):
        try:
            r = requests.get(srv.url + "/sleep", params={"s": seconds}, timeout=20)
            results[i] = r.json()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


@pytest.mark.parametrize("worker_args", [["-k", "gthread", "--threads", "4"],
                                         ["-k", "sync", "--threads", "4"],
                                         ["--threads", "4"]],
                         ids=["gthread", "sync+threads", "threads"])
def test_threads_overlap_in_one_worker(start_server, worker_args):
    srv = start_server(["-w", "1", *worker_args, "testapp"])
    results = _concurrent_sleeps(srv, 4, 1.0)
    assert len({r["pid"] for r in results}) == 1
    # every request started before any of them finished: they ran side by side
    assert max(r["start"] for r in results) < min(r["end"] for r in results), results
    env = get(srv.port, "/environ").body
    assert json.loads(env)["wsgi.multithread"] is True


def test_sync_single_thread_does_not_overlap(start_server):
    srv = start_server(["-w", "1", "-k", "sync", "testapp"])
    results = sorted(_concurrent_sleeps(srv, 3, 0.4), key=lambda r: r["start"])
    for a, b in zip(results, results[1:]):
        assert b["start"] >= a["end"], results


# ---------------------------------------------------------------------------------------------
# paths and environment


def test_chdir(start_server, tmp_path):
    srv = start_server(["--chdir", APPS_DIR, "testapp"], app_dir=str(tmp_path))
    assert get(srv.port, "/hello").body == b"Hello, World!"


def test_pythonpath(start_server, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "extra_mod.py").write_text("VALUE = 'from pythonpath'\n")
    (tmp_path / "pp_app.py").write_text(
        "import extra_mod\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [extra_mod.VALUE.encode()]\n"
    )
    srv = start_server(["--pythonpath", f"{APPS_DIR},{other}", "testapp"], app_dir=str(tmp_path))
    assert get(srv.port, "/hello").body == b"Hello, World!"
    srv2 = start_server(["--pythonpath", str(other), "pp_app"], app_dir=str(tmp_path))
    assert get(srv2.port, "/").body == b"from pythonpath"


def test_env_flag(start_server):
    srv = start_server(["-e", "FCN_ONE=first", "--env", "FCN_TWO=second=with=equals", "testapp"])
    assert json.loads(get(srv.port, "/env?name=FCN_ONE").body)["value"] == "first"
    assert json.loads(get(srv.port, "/env?name=FCN_TWO").body)["value"] == "second=with=equals"
    assert json.loads(get(srv.port, "/env?name=FCN_THREE").body)["value"] is None


# ---------------------------------------------------------------------------------------------
# --check-config, --print-config, --version, --help


def test_check_config_good_app():
    res = run_cli(["--check-config", "testapp"])
    assert res.returncode == 0, res.stderr.decode()


@pytest.mark.smoke
def test_check_config_bad_app():
    res = run_cli(["--check-config", "boom"])
    assert res.returncode != 0
    out = (res.stdout + res.stderr).decode()
    assert "boom: this module fails at import time" in out


def test_print_config_lists_settings():
    s = _print_config(["-w", "3", "-k", "gthread", "--threads", "5", "-t", "17", "--keep-alive", "4"])
    assert s["workers"] == "3"
    assert s["threads"] == "5"
    assert s["timeout"] == "17"
    assert s["keepalive"] == "4"
    assert s["worker_class"] == "gthread"
    for name in ("bind", "graceful_timeout", "backlog", "worker_connections", "chdir", "pythonpath",
                 "raw_env", "accesslog", "access_log_format", "errorlog", "loglevel",
                 "limit_request_line", "limit_request_fields", "limit_request_field_size",
                 "forwarded_allow_ips", "proc_name", "pidfile"):
        assert name in s, f"{name} missing from --print-config"


def test_sendfile_setting_as_in_gunicorn(tmp_path):
    """`sendfile` is None unless set; --no-sendfile and `sendfile = False` in the config file turn it off."""
    assert _print_config([])["sendfile"] == "None"
    assert _print_config(["--no-sendfile"])["sendfile"] == "False"
    conf = tmp_path / "sf.conf.py"
    conf.write_text("sendfile = False\n")
    assert _print_config(["-c", str(conf)])["sendfile"] == "False"


@pytest.mark.smoke
def test_version():
    res = run_cli(["-v"])
    assert res.returncode == 0
    out = (res.stdout + res.stderr).decode()
    assert PRODUCT in out
    assert re.search(r"\d+\.\d+", out)
    assert run_cli(["--version"]).returncode == 0


HELP_FLAGS = [
    "-b", "--bind", "-w", "--workers", "-k", "--worker-class", "--threads", "-t", "--timeout",
    "--graceful-timeout", "--keep-alive", "--backlog", "--worker-connections", "--chdir",
    "--pythonpath", "-e", "--env", "--access-logfile", "--access-logformat", "--error-logfile",
    "--log-file", "--log-level", "--limit-request-line", "--limit-request-fields",
    "--limit-request-field_size", "--forwarded-allow-ips", "-n", "--name", "-p", "--pid",
    "--check-config", "--print-config", "-v", "--version", "-c", "--config", "--max-requests",
    "--preload", "--no-sendfile",
]


def test_help_mentions_every_flag():
    res = run_cli(["--help"])
    assert res.returncode == 0
    text = res.stdout.decode()
    missing = [f for f in HELP_FLAGS if not re.search(r"(^|[\s,\[])" + re.escape(f) + r"\b", text)]
    assert not missing, f"--help does not mention {missing}"


@pytest.mark.ferricorn_only
def test_help_mentions_ferricorn_flags():
    text = run_cli(["--help"]).stdout.decode()
    assert "--permit-missing-host" in text


# ---------------------------------------------------------------------------------------------
# extra arguments from the environment


def test_gunicorn_cmd_args_print_config():
    s = _print_config(["--timeout", "19"], env={"GUNICORN_CMD_ARGS": "--workers 3 --timeout 17"})
    assert s["workers"] == "3"
    assert s["timeout"] == "19"  # the command line wins


@pytest.mark.ferricorn_only
def test_ferricorn_cmd_args_print_config():
    s = _print_config(["--timeout", "19"], env={"FERRICORN_CMD_ARGS": "--workers 3 --timeout 17"})
    assert s["workers"] == "3"
    assert s["timeout"] == "19"


def _env_args_server(start_server, var):
    srv = start_server(["-w", "1", "testapp"],
                       env={var: "-w 2 -e FROM_ENV_ARGS=yes --graceful-timeout 3"})
    assert json.loads(get(srv.port, "/env?name=FROM_ENV_ARGS").body)["value"] == "yes"
    srv.wait_workers(1)
    # -w 1 on the command line beats -w 2 from the variable
    wait_for(lambda: len(child_pids(srv.pid)) == 1, 5, message="one worker")
    assert len(srv.worker_pids_from_log()) == 1


def test_gunicorn_cmd_args_server(start_server):
    _env_args_server(start_server, "GUNICORN_CMD_ARGS")


@pytest.mark.ferricorn_only
def test_ferricorn_cmd_args_server(start_server):
    _env_args_server(start_server, "FERRICORN_CMD_ARGS")


# ---------------------------------------------------------------------------------------------
# bad command lines


BAD_ARGS = [
    (["-w", "abc", "testapp"], ["-w", "--workers"], "abc"),
    (["--timeout", "x", "testapp"], ["-t", "--timeout"], "x"),
    (["--no-such-flag", "testapp"], ["--no-such-flag"], None),
    (["-b", "127.0.0.1:99999", "testapp"], ["-b", "--bind"], "99999"),
]
BAD_IDS = ["workers", "timeout", "unknown", "bind-port"]


@pytest.mark.parametrize("args,flags,value", BAD_ARGS, ids=BAD_IDS)
def test_bad_argument_fails(args, flags, value):
    res = run_cli(args, timeout=20)
    err = res.stderr.decode()
    assert res.returncode != 0
    assert "Listening at" not in err


@pytest.mark.ferricorn_only
@pytest.mark.parametrize("args,flags,value", BAD_ARGS, ids=BAD_IDS)
def test_bad_argument_one_line_exit_2(args, flags, value):
    res = run_cli(args, timeout=20)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert any(f in lines[0] for f in flags), err
    assert value is None or value in lines[0]
    assert res.stdout == b""
