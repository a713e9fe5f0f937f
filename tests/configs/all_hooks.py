"""A gunicorn.conf.py that defines every server hook and records each call (one JSON line per call) in
the file named by HOOK_RECORD."""

import json
import os

_RECORD = os.environ["HOOK_RECORD"]


def _note(hook, **fields):
    fields["hook"] = hook
    fields["pid"] = os.getpid()
    with open(_RECORD, "a") as f:
        f.write(json.dumps(fields) + "\n")


def _server(server):
    # gunicorn calls nworkers_changed once while setting up, before the server has a pid.
    return {"server_pid": getattr(server, "pid", None), "num_workers": server.num_workers,
            "cfg_workers": server.cfg.workers}


def _worker(worker):
    return {"worker_pid": worker.pid, "worker_ppid": worker.ppid, "age": worker.age,
            "alive": worker.alive, "nr": worker.nr}


def on_starting(server):
    server.log.info("on_starting hook says %s", "hello")
    _note("on_starting", **_server(server))


def on_reload(server):
    _note("on_reload", **_server(server))


def when_ready(server):
    _note("when_ready", **_server(server))


def pre_fork(server, worker):
    _note("pre_fork", **_server(server), **_worker(worker))


def post_fork(server, worker):
    _note("post_fork", **_server(server), **_worker(worker))


def post_worker_init(worker):
    worker.log.info("post_worker_init in %d", worker.pid)
    _note("post_worker_init", **_worker(worker))


def worker_int(worker):
    _note("worker_int", **_worker(worker))


def worker_abort(worker):
    _note("worker_abort", **_worker(worker))


def pre_exec(server):
    _note("pre_exec", **_server(server))


def pre_request(worker, req):
    _note("pre_request", method=req.method, uri=req.uri, path=req.path, query=req.query,
          version=list(req.version), headers=req.headers, **_worker(worker))


def post_request(worker, req, environ, resp):
    _note("post_request", method=req.method, path=req.path, status=resp.status,
          status_code=resp.status_code, resp_headers=resp.headers, sent=resp.sent,
          remote_addr=environ.get("REMOTE_ADDR"), **_worker(worker))


def child_exit(server, worker):
    _note("child_exit", **_server(server), **_worker(worker))


def worker_exit(server, worker):
    _note("worker_exit", **_server(server), **_worker(worker))


def nworkers_changed(server, new_value, old_value):
    _note("nworkers_changed", new=new_value, old=old_value, **_server(server))


def on_exit(server):
    _note("on_exit", **_server(server))
