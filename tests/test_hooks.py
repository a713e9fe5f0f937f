"""Server hooks from a config file: each is called at gunicorn's moment with the objects hooks use, and a
hook that raises is logged without taking the server down. Also: the app's `logging.getLogger(
"gunicorn.error")` writes to the error log."""

import json
import os
import signal
import textwrap
import time

import pytest
import requests

from conftest import TESTS_DIR, wait_for

CONFIG = os.path.join(TESTS_DIR, "configs", "all_hooks.py")


def _calls(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _named(calls, hook):
    return [c for c in calls if c["hook"] == hook]


def _wait_hook(path, hook, count=1, timeout=15):
    return wait_for(lambda: len(_named(_calls(path), hook)) >= count or None, timeout,
                    message=f"{hook} x{count}")


def test_every_hook_is_called_with_gunicorns_objects(start_server, tmp_path):
    record = str(tmp_path / "hooks.jsonl")
    srv = start_server(["-c", CONFIG, "-w", "1", "--timeout", "2", "--graceful-timeout", "3",
                        "testapp"], env={"HOOK_RECORD": record})
    (first,) = srv.wait_workers(1)
    master = srv.pid

    # Master start-up and the first worker.
    _wait_hook(record, "post_worker_init")
    calls = _calls(record)
    (starting,) = _named(calls, "on_starting")
    assert starting["pid"] == master and starting["server_pid"] == master
    assert starting["cfg_workers"] == 1
    assert _named(calls, "when_ready")[0]["pid"] == master
    (pre,) = _named(calls, "pre_fork")
    # Before the fork the worker has no pid of its own yet.
    assert pre["pid"] == master and pre["worker_pid"] != first and pre["age"] == 1
    (post,) = _named(calls, "post_fork")
    assert post["pid"] == first and post["worker_pid"] == first and post["worker_ppid"] == master
    (init,) = _named(calls, "post_worker_init")
    assert init["pid"] == first and init["alive"] is True
    assert "on_starting hook says hello" in srv.log_text()
    assert f"post_worker_init in {first}" in srv.log_text()

    # A request.
    r = requests.get(srv.url + "/hello?x=1", headers={"X-Trace": "t1"}, timeout=10)
    assert r.status_code == 200
    _wait_hook(record, "post_request")
    calls = _calls(record)
    (preq,) = _named(calls, "pre_request")
    assert preq["method"] == "GET" and preq["uri"] == "/hello?x=1" and preq["path"] == "/hello"
    assert preq["query"] == "x=1" and preq["version"] == [1, 1]
    assert ["X-TRACE", "t1"] in preq["headers"]
    (postr,) = _named(calls, "post_request")
    assert postr["status_code"] == 200 and postr["status"].startswith("200")
    assert postr["sent"] == len(r.content) and postr["remote_addr"] == "127.0.0.1"
    assert any(k.lower() == "content-type" for k, _ in postr["resp_headers"])

    # TTIN: nworkers_changed.
    srv.signal(signal.SIGTTIN)
    _wait_hook(record, "nworkers_changed", count=2)
    initial, changed = _named(_calls(record), "nworkers_changed")
    assert (initial["new"], initial["old"]) == (1, None)  # at start-up, as gunicorn does
    assert (changed["new"], changed["old"]) == (2, 1)
    srv.wait_workers(2)

    # A worker killed from outside: child_exit in the master.
    os.kill(first, signal.SIGKILL)
    _wait_hook(record, "child_exit")
    (exited,) = _named(_calls(record), "child_exit")
    assert exited["pid"] == master and exited["worker_pid"] == first

    # A request past the timeout: worker_abort in the worker that ran it.
    srv.wait_workers(3)
    try:
        requests.get(srv.url + "/sleep?s=10", timeout=15)  # ferricorn answers 504; gunicorn drops it
    except requests.ConnectionError:
        pass
    _wait_hook(record, "worker_abort")

    # HUP: on_reload.
    srv.signal(signal.SIGHUP)
    _wait_hook(record, "on_reload")

    # TERM: worker_exit in each worker, then on_exit in the master.
    time.sleep(1)
    assert srv.stop() == 0
    calls = _calls(record)
    assert _named(calls, "worker_exit"), calls
    assert all(c["pid"] == c["worker_pid"] for c in _named(calls, "worker_exit"))
    (on_exit,) = _named(calls, "on_exit")
    assert on_exit["pid"] == master


def test_worker_int_on_quick_stop(start_server, tmp_path):
    record = str(tmp_path / "hooks.jsonl")
    srv = start_server(["-c", CONFIG, "-w", "1", "testapp"], env={"HOOK_RECORD": record})
    (worker,) = srv.wait_workers(1)
    _wait_hook(record, "post_worker_init")
    srv.stop(signal.SIGINT)
    (hit,) = _named(_calls(record), "worker_int")
    assert hit["pid"] == worker


@pytest.mark.ferricorn_only  # gunicorn drops the request whose pre_request hook raised
def test_a_raising_hook_is_logged_and_the_server_goes_on(start_server, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(textwrap.dedent("""
        def pre_request(worker, req):
            raise RuntimeError("pre_request exploded")

        def post_fork(server, worker):
            raise ValueError("post_fork exploded")
    """))
    srv = start_server(["-c", str(conf), "-w", "1", "testapp"])
    srv.wait_workers(1)
    r = requests.get(srv.url + "/hello", timeout=10)
    assert r.status_code == 200
    log = srv.log_text()
    assert "Exception in pre_request hook" in log and "RuntimeError: pre_request exploded" in log
    assert "Exception in post_fork hook" in log and "ValueError: post_fork exploded" in log


@pytest.mark.ferricorn_only
def test_a_raising_on_starting_stops_the_server(tmp_path):
    from conftest import run_cli
    conf = tmp_path / "conf.py"
    conf.write_text("def on_starting(server):\n    raise RuntimeError('no start')\n")
    res = run_cli(["-c", str(conf), "-b", "127.0.0.1:0", "testapp"], timeout=20)
    assert res.returncode == 1
    assert "RuntimeError: no start" in res.stderr.decode()


@pytest.mark.ferricorn_only  # gunicorn has no "ferricorn.error" logger
def test_app_logging_through_gunicorns_logger_reaches_the_error_log(start_server, tmp_path):
    app = tmp_path / "logapp.py"
    app.write_text(textwrap.dedent("""
        import logging

        def application(environ, start_response):
            logging.getLogger("gunicorn.error").warning("from the app via %s", "gunicorn.error")
            logging.getLogger("ferricorn.error").error("from the app via ferricorn.error")
            logging.getLogger("gunicorn.error").debug("hidden at info level")
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
    """))
    srv = start_server(["-w", "1", "logapp"], app_dir=str(tmp_path))
    srv.wait_workers(1)
    assert requests.get(srv.url + "/", timeout=10).status_code == 200
    srv.wait_log(r"\[WARNING\] from the app via gunicorn\.error$")
    srv.wait_log(r"\[ERROR\] from the app via ferricorn\.error$")
    assert "hidden at info level" not in srv.log_text()
