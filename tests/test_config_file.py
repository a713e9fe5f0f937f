"""The Python config file: `-c FILE`, `-c file:PATH`, `-c python:MODULE`, the default
`./gunicorn.conf.py` (and `./ferricorn.conf.py`), precedence against `*_CMD_ARGS` and the command
line, value conversion, errors, `--check-config` and `--print-config`."""

import json
import os
import re
import socket
import textwrap
import threading

import pytest
import requests

from conftest import APPS_DIR, child_pids, free_port, get, print_config, run_cli, wait_for


def write(directory, name, text):
    path = os.path.join(str(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def env_value(srv, name):
    return json.loads(get(srv.port, f"/env?name={name}").body)["value"]


# ---------------------------------------------------------------------------------------------
# settings take effect in a running server


def test_settings_from_file_take_effect(start_server, tmp_path):
    port, second = free_port(), free_port()
    access = tmp_path / "access.log"
    conf = write(tmp_path, "server.conf.py", f"""
        bind = ["127.0.0.1:{port}", "127.0.0.1:{second}"]
        workers = 2
        raw_env = ["FCN_FROM_FILE=yes", "FCN_OTHER=a=b"]
        accesslog = {str(access)!r}
        wsgi_app = "testapp"
    """)
    srv = start_server(["-c", conf], bind=False, port=port)
    srv.wait_ready(addr=(socket.AF_INET, ("127.0.0.1", second)))
    for p in (port, second):
        assert get(p, "/hello").body == b"Hello, World!"
    assert env_value(srv, "FCN_FROM_FILE") == "yes"
    assert env_value(srv, "FCN_OTHER") == "a=b"
    srv.wait_workers(2)
    wait_for(lambda: len(child_pids(srv.pid)) == 2, 10, message="two workers")
    assert len(srv.worker_pids_from_log()) == 2
    wait_for(lambda: access.exists() and "GET /hello" in access.read_text(), 10,
             message="the access log line")


def test_worker_class_and_threads_from_file(start_server, tmp_path):
    conf = write(tmp_path, "threads.conf.py", """
        workers = 1
        worker_class = "gthread"
        threads = 4
    """)
    srv = start_server(["-c", conf, "testapp"])
    assert "Using worker: gthread" in srv.log_text()
    results = []

    def one():
        results.append(requests.get(srv.url + "/sleep", params={"s": 1.0}, timeout=20).json())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    # all four ran side by side in the one worker
    assert len({r["pid"] for r in results}) == 1
    assert max(r["start"] for r in results) < min(r["end"] for r in results), results


def test_wsgi_app_from_file_and_command_line_wins(start_server, tmp_path):
    conf = write(tmp_path, "app.conf.py", 'wsgi_app = "factories:site"\n')
    srv = start_server(["-c", conf])
    assert get(srv.port, "/").body == b"named object site"
    srv2 = start_server(["-c", conf, "factories:create_app()"])
    assert get(srv2.port, "/").body == b"factory without arguments"


# ---------------------------------------------------------------------------------------------
# which file is read


def test_default_gunicorn_conf_py_in_working_directory(start_server, tmp_path):
    write(tmp_path, "gunicorn.conf.py", f"""
        chdir = {APPS_DIR!r}
        raw_env = ["FCN_DEFAULT_CONF=picked up"]
        wsgi_app = "testapp"
    """)
    srv = start_server([], app_dir=str(tmp_path))
    assert env_value(srv, "FCN_DEFAULT_CONF") == "picked up"
    s = print_config([], cwd=str(tmp_path))
    assert s["raw_env"] == "['FCN_DEFAULT_CONF=picked up']"


def test_named_config_replaces_the_default(tmp_path):
    write(tmp_path, "gunicorn.conf.py", "workers = 3\n")
    other = write(tmp_path, "other.py", "timeout = 11\n")
    s = print_config(["-c", other, "--chdir", APPS_DIR, "testapp"], cwd=str(tmp_path))
    assert (s["workers"], s["timeout"]) == ("1", "11")


@pytest.mark.ferricorn_only
def test_ferricorn_conf_py_wins_over_gunicorn_conf_py(tmp_path):
    write(tmp_path, "gunicorn.conf.py", "workers = 3\ntimeout = 11\n")
    s = print_config(["--chdir", APPS_DIR, "testapp"], cwd=str(tmp_path))
    assert (s["workers"], s["timeout"], s["config"]) == ("3", "11", "./gunicorn.conf.py")
    write(tmp_path, "ferricorn.conf.py", "workers = 4\n")
    s = print_config(["--chdir", APPS_DIR, "testapp"], cwd=str(tmp_path))
    # only the winning file is read
    assert (s["workers"], s["timeout"], s["config"]) == ("4", "30", "./ferricorn.conf.py")


def test_python_module_config(start_server, tmp_path):
    write(tmp_path, "confpkg/__init__.py", "")
    write(tmp_path, "confpkg/helper.py", "ENV = ['FCN_MODULE_CONF=from module']\n")
    write(tmp_path, "confpkg/settings.py", f"""
        from confpkg.helper import ENV
        raw_env = ENV
        chdir = {APPS_DIR!r}
        wsgi_app = "testapp"
    """)
    srv = start_server(["-c", "python:confpkg.settings"], app_dir=str(tmp_path))
    assert env_value(srv, "FCN_MODULE_CONF") == "from module"


def test_file_prefix_and_config_from_cmd_args(tmp_path):
    conf = write(tmp_path, "x.conf.py", "workers = 3\n")
    assert print_config(["-c", f"file:{conf}", "testapp"])["workers"] == "3"
    s = print_config(["testapp"], env={"GUNICORN_CMD_ARGS": f"-c {conf}"})
    assert s["workers"] == "3"


def test_file_and_name_are_set_like_a_module(tmp_path):
    conf = write(tmp_path, "where.conf.py", """
        import os
        raw_env = ["DIR=" + os.path.dirname(__file__), "NAME=" + __name__]
    """)
    s = print_config(["-c", conf, "testapp"])
    assert s["raw_env"] == f"['DIR={tmp_path}', 'NAME=__config__']"


def test_config_can_import_from_working_directory(tmp_path):
    write(tmp_path, "shared_settings.py", "WORKERS = 5\n")
    conf = write(tmp_path, "gunicorn.conf.py", "from shared_settings import WORKERS as workers\n")
    s = print_config(["-c", conf, "--chdir", APPS_DIR, "testapp"], cwd=str(tmp_path))
    assert s["workers"] == "5"


# ---------------------------------------------------------------------------------------------
# precedence: defaults < file < GUNICORN_CMD_ARGS < FERRICORN_CMD_ARGS < command line

PRECEDENCE_CONF = """
    workers = 2
    timeout = 10
    keepalive = 3
    graceful_timeout = 4
    max_requests = 5
"""


def test_precedence_file_cmd_args_command_line(tmp_path):
    conf = write(tmp_path, "p.conf.py", PRECEDENCE_CONF)
    s = print_config(["-c", conf, "--graceful-timeout", "9", "testapp"],
                     env={"GUNICORN_CMD_ARGS": "--timeout 20 --keep-alive 5 --graceful-timeout 6",
                          "WEB_CONCURRENCY": "7"})
    got = [s[k] for k in ("workers", "timeout", "keepalive", "graceful_timeout", "max_requests")]
    assert got == ["2", "20", "5", "9", "5"]


@pytest.mark.ferricorn_only
def test_precedence_with_ferricorn_cmd_args(tmp_path):
    conf = write(tmp_path, "p.conf.py", PRECEDENCE_CONF)
    s = print_config(["-c", conf, "--graceful-timeout", "9", "testapp"],
                     env={"GUNICORN_CMD_ARGS": "--timeout 20 --keep-alive 5 --graceful-timeout 6",
                          "FERRICORN_CMD_ARGS": "--keep-alive 7 --graceful-timeout 8"})
    got = [s[k] for k in ("workers", "timeout", "keepalive", "graceful_timeout", "max_requests")]
    assert got == ["2", "20", "7", "9", "5"]


def test_command_line_beats_file_in_a_running_server(start_server, tmp_path):
    conf = write(tmp_path, "w.conf.py", "workers = 3\nraw_env = ['FCN_P=file']\n")
    srv = start_server(["-c", conf, "-w", "1", "-e", "FCN_P=cli", "testapp"])
    assert env_value(srv, "FCN_P") == "cli"
    srv.wait_workers(1)
    wait_for(lambda: len(child_pids(srv.pid)) == 1, 5, message="one worker")
    assert len(srv.worker_pids_from_log()) == 1


# ---------------------------------------------------------------------------------------------
# --print-config and value conversion


def test_print_config_reflects_the_file(tmp_path):
    conf = write(tmp_path, "all.conf.py", """
        bind = ("127.0.0.1:8123", "unix:/tmp/fcn-test.sock")
        workers = 3
        threads = 2
        timeout = 45
        keepalive = 0
        preload_app = True
        max_requests = 1000
        max_requests_jitter = 50
        raw_env = ["A=1", "B=2"]
        accesslog = "-"
        access_log_format = '%(h)s "%(r)s" %(s)s'
        errorlog = "-"
        loglevel = "warning"
        proc_name = "from-file"
        forwarded_allow_ips = "10.0.0.1,10.0.0.2"
        secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
        limit_request_line = 1000
    """)
    s = print_config(["-c", conf, "testapp"])
    expected = {
        "bind": "['127.0.0.1:8123', 'unix:/tmp/fcn-test.sock']",
        "workers": "3",
        "threads": "2",
        "timeout": "45",
        "keepalive": "0",
        "preload_app": "True",
        "max_requests": "1000",
        "max_requests_jitter": "50",
        "raw_env": "['A=1', 'B=2']",
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s',
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "from-file",
        "forwarded_allow_ips": "['10.0.0.1', '10.0.0.2']",
        "secure_scheme_headers": "{'X-FORWARDED-PROTO': 'https'}",
        "limit_request_line": "1000",
    }
    assert {k: s.get(k) for k in expected} == expected


def test_single_string_bind_and_string_numbers(tmp_path):
    conf = write(tmp_path, "s.conf.py", 'bind = "127.0.0.1:8124"\nworkers = "4"\n')
    s = print_config(["-c", conf, "testapp"])
    assert (s["bind"], s["workers"]) == ("['127.0.0.1:8124']", "4")


def test_unknown_names_are_ignored(tmp_path):
    conf = write(tmp_path, "u.conf.py", """
        import os, sys
        Workers = 5
        not_a_setting = object()
        _private = 1
        def helper(a, b, c, d, e):
            pass
        class Thing:
            pass
    """)
    res = run_cli(["--print-config", "-c", str(conf), "testapp"])
    assert res.returncode == 0, res.stderr.decode()
    assert re.search(r"^workers\s*=\s*1$", res.stdout.decode(), re.M)


@pytest.mark.ferricorn_only
def test_unsupported_gunicorn_setting_is_named(tmp_path):
    conf = write(tmp_path, "d.conf.py", "syslog = True\nworkers = 2\n")
    res = run_cli(["--print-config", "-c", conf, "testapp"])
    assert res.returncode == 0, res.stderr.decode()
    err = res.stderr.decode()
    assert "'syslog'" in err and "not supported" in err, err
    assert re.search(r"^workers\s*=\s*2$", res.stdout.decode(), re.M)


def test_hooks_are_collected_and_printed(tmp_path):
    write(tmp_path, "hookmod.py", "def ready(server):\n    pass\n")
    conf = write(tmp_path, "h.conf.py", """
        def on_starting(server):
            pass
        def post_fork(server, worker):
            pass
        def post_request(worker, req, environ):
            pass
        when_ready = "hookmod.ready"
    """)
    # the import string is resolved while the file is read, from the working directory
    s = print_config(["-c", conf, "--chdir", APPS_DIR, "testapp"], cwd=str(tmp_path))
    assert s["on_starting"] == "<on_starting()>"
    assert s["post_fork"] == "<post_fork()>"
    assert s["when_ready"] == "<ready()>"
    assert s["post_request"].startswith("<")


# ---------------------------------------------------------------------------------------------
# errors


def test_raising_config_prints_traceback_exit_1(tmp_path):
    conf = write(tmp_path, "raises.conf.py", """
        workers = 2
        def compute():
            raise RuntimeError("config file refuses to load")
        timeout = compute()
    """)
    res = run_cli(["-c", conf, "testapp"])
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "Traceback" in err, err
    assert "RuntimeError: config file refuses to load" in err
    assert "raises.conf.py" in err and "in compute" in err
    assert "Listening at" not in err


def test_syntax_error_in_config_exit_1(tmp_path):
    conf = write(tmp_path, "syntax.conf.py", "workers = (\n")
    res = run_cli(["-c", conf, "testapp"])
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "SyntaxError" in err and "syntax.conf.py" in err


def test_missing_config_file(tmp_path):
    res = run_cli(["-c", str(tmp_path / "absent.conf.py"), "testapp"])
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "absent.conf.py" in err


def test_missing_config_module():
    res = run_cli(["-c", "python:no_such_config_module_here", "testapp"])
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "no_such_config_module_here" in err


def test_config_calling_sys_exit_keeps_its_status(tmp_path):
    conf = write(tmp_path, "exit.conf.py", "import sys\nsys.exit(3)\n")
    assert run_cli(["-c", conf, "testapp"]).returncode == 3


# refused by both servers while the file is read
BAD_VALUES = [
    ('workers = "abc"', "workers", "abc"),
    ("timeout = 1.5", "timeout", "1.5"),
    ("def on_starting(a, b):\n    pass", "on_starting", None),
    ("post_fork = 42", "post_fork", "42"),
]
BAD_IDS = ["workers-str", "float", "hook-arity", "hook-not-callable"]
# refused by ferricorn while the file is read (gunicorn accepts them, or fails later)
MORE_BAD_VALUES = [
    ("workers = 0", "workers", "0"),
    ('bind = ["127.0.0.1:99999"]', "bind", "99999"),
    ('bind = ["127.0.0.1:8000", 8001]', "bind", "8001"),
    ('raw_env = ["NOEQUALS"]', "raw_env", "NOEQUALS"),
    ('loglevel = "loud"', "loglevel", "loud"),
    ("secure_scheme_headers = {'X-A': 1}", "secure_scheme_headers", "1"),
    ("max_requests = 10 ** 30", "max_requests", "1000000000000000000000000000000"),
]
MORE_BAD_IDS = ["workers-0", "bind-port", "bind-int", "raw_env", "loglevel", "dict-value",
                "huge-int"]


@pytest.mark.parametrize("text,name,value", BAD_VALUES, ids=BAD_IDS)
def test_bad_value_names_the_setting(tmp_path, text, name, value):
    conf = write(tmp_path, "bad.conf.py", text + "\n")
    res = run_cli(["-c", conf, "testapp"])
    err = res.stderr.decode()
    assert res.returncode != 0
    assert name in err, err
    assert "Listening at" not in err


@pytest.mark.ferricorn_only
@pytest.mark.parametrize("text,name,value", BAD_VALUES + MORE_BAD_VALUES,
                         ids=BAD_IDS + MORE_BAD_IDS)
def test_bad_value_one_line_exit_2(tmp_path, text, name, value):
    conf = write(tmp_path, "bad.conf.py", text + "\n")
    res = run_cli(["-c", conf, "testapp"])
    err = res.stderr.decode()
    assert res.returncode == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert f"setting '{name}'" in lines[0] and "bad.conf.py" in lines[0], err
    if value is not None:
        assert value in lines[0], err


# ---------------------------------------------------------------------------------------------
# --check-config


def test_check_config_with_config_file(tmp_path):
    good = write(tmp_path, "good.conf.py", 'workers = 2\nwsgi_app = "testapp"\n')
    res = run_cli(["--check-config", "-c", good])
    assert res.returncode == 0, res.stderr.decode()

    bad_app = write(tmp_path, "bad_app.conf.py", 'wsgi_app = "boom"\n')
    res = run_cli(["--check-config", "-c", bad_app])
    assert res.returncode == 1
    assert "boom: this module fails at import time" in (res.stdout + res.stderr).decode()

    raising = write(tmp_path, "raising.conf.py", "raise ValueError('broken config')\n")
    res = run_cli(["--check-config", "-c", raising, "testapp"])
    assert res.returncode == 1
    assert "broken config" in res.stderr.decode()


def test_check_config_set_in_the_file(tmp_path):
    conf = write(tmp_path, "check.conf.py", 'check_config = True\nwsgi_app = "testapp"\n')
    res = run_cli(["-c", conf], timeout=20)
    assert res.returncode == 0, res.stderr.decode()
    assert "Listening at" not in res.stderr.decode()
