"""Elastic capacity (ferricorn only): a gthread worker adds threads while requests wait on busy threads
that wait on I/O, and retires them when unneeded; `--max-workers` lets the master add workers under
starvation and retire them after; gevent/eventlet configs run as gthread with elastic threads.

Each test starts a real server and loads it with real concurrent clients (requests sessions, kept
alive), then reads the log lines and the Prometheus metrics the change must show."""

import re
import time

import pytest
import requests

from conftest import Sessions, free_port, run_cli, wait_for
from test_observability import families, value

pytestmark = pytest.mark.ferricorn_only

GROW = r"Worker \(pid:\d+\) threads: (\d+) -> (\d+) \(up to (\d+)\): \d+ requests? waited"
SHRINK = r"Worker \(pid:\d+\) threads: (\d+) -> (\d+): at most \d+ requests? at once"


def start_with_metrics(start_server, args, **kw):
    mport = free_port()
    srv = start_server([*args, "--metrics-bind", f"127.0.0.1:{mport}"], **kw)
    wait_for(lambda: _scrapes(mport), 10, message="metrics listener")
    return srv, mport


def _scrapes(mport):
    try:
        families(mport)
        return True
    except requests.RequestException:
        return False


def load(url, path, clients, per_client, timeout=30):
    """`clients` threads, each sending `per_client` requests one after another on its own kept-alive
    session; returns (statuses or errors, seconds taken)."""
    t0 = time.monotonic()
    results = Sessions(clients, per_client, lambda s: s.get(url + path, timeout=timeout).status_code,
                       limit_s=timeout * per_client + 10).run()
    return results, time.monotonic() - t0


def scale_events(mport, kind):
    return value(families(mport), "ferricorn_scale_events", "_total", kind=kind)


def test_io_bound_starvation_grows_threads_then_they_retire_and_no_request_fails(start_server):
    srv, mport = start_with_metrics(start_server, [
        "-w", "1", "-k", "gthread", "--threads", "2", "--max-threads", "16",
        "--elastic-idle-timeout", "3", "elastic_app:app"])
    srv.wait_workers(1)
    assert value(families(mport), "ferricorn_threads_total") == 2
    for round_ in range(2):
        # 16 clients x 4 requests of 0.5 s: 16 s on 2 threads, about 1 s once the pool has grown.
        results, took = load(srv.url, "/sleep?s=0.5", clients=16, per_client=4)
        assert results == [200] * 64, results
        assert took < 10, f"round {round_}: {took:.1f}s — the threads did not relieve the starvation"
        grown = [tuple(map(int, m)) for m in re.findall(GROW, srv.log_text())]
        assert grown and all(b > a and c == 16 for a, b, c in grown), srv.log_text()
        assert max(b for _, b, _ in grown) > 2
        # Idle: the added threads retire, back to --threads, and the metrics say so.
        srv.wait_log(SHRINK, timeout=15, count=round_ + 1)
        wait_for(lambda: value(families(mport), "ferricorn_threads_total") == 2, 10,
                 message="threads back to 2")
        shrunk = [tuple(map(int, m)) for m in re.findall(SHRINK, srv.log_text())]
        assert shrunk[-1][1] == 2, shrunk
    assert scale_events(mport, "threads_up") >= 2
    assert scale_events(mport, "threads_down") >= 2
    fams = families(mport)
    assert value(fams, "ferricorn_requests", "_total", worker_class="gthread", method="GET",
                 status="2xx") >= 128
    # The threads that retired were gone, not just idle: the served ones still answer.
    assert requests.get(srv.url + "/who", timeout=5).status_code == 200


def test_threads_grow_while_they_wait_on_io_not_while_they_compute(start_server):
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "2", "--max-threads", "16",
                        "elastic_app:app"])
    srv.wait_workers(1)
    # Six requests that each compute for 1.5 s on two threads: four wait, and the busy threads hold the
    # GIL — more threads would only queue for it.
    results, _ = load(srv.url, "/cpu?s=1.5", clients=6, per_client=1)
    assert results == [200] * 6, results
    log = srv.log_text()
    assert not re.search(GROW, log), log
    assert re.search(r"keeps 2 threads although \d+ requests? wait: the busy threads used "
                     r"\d+\.\d\d of a CPU \(running or waiting for one\), so they compute", log), log
    # The same pool, I/O-bound: it grows.
    results, _ = load(srv.url, "/sleep?s=0.5", clients=8, per_client=3)
    assert results == [200] * 24, results
    assert re.search(GROW, srv.log_text()), srv.log_text()


def test_max_workers_adds_workers_under_starvation_and_retires_them(start_server):
    # A fixed pool of 2 threads (--max-threads 2), so only more workers can relieve the starvation.
    srv, mport = start_with_metrics(start_server, [
        "-w", "1", "--max-workers", "3", "-k", "gthread", "--threads", "2", "--max-threads", "2",
        "--elastic-idle-timeout", "3", "elastic_app:app"])
    (first,) = srv.wait_workers(1)
    results, _ = load(srv.url, "/sleep?s=1", clients=8, per_client=8, timeout=60)
    assert results == [200] * 64, results
    log = srv.log_text()
    ups = re.findall(r"Workers: (\d+) -> (\d+) \(up to --max-workers 3\): all \d+ threads have been busy", log)
    assert ("1", "2") in ups and ("2", "3") in ups, log
    assert len(srv.worker_pids_from_log()) >= 3
    assert value(families(mport), "ferricorn_workers_target") <= 3
    assert scale_events(mport, "workers_up") >= 2
    # Idle: the added workers retire, newest first, down to --workers; the first one stays.
    srv.wait_log(r"Workers: 2 -> 1: no starvation for 3s", timeout=30)
    wait_for(lambda: value(families(mport), "ferricorn_workers") == 1, 15, message="one worker left")
    assert scale_events(mport, "workers_down") >= 2
    assert value(families(mport), "ferricorn_workers_target") == 1
    assert re.search(rf"retiring worker (?!{first}\b)\d+, the newest", srv.log_text())
    assert requests.get(srv.url + "/who", timeout=5).text.split()[0] == str(first)
    assert "Traceback" not in srv.log_text()


def test_ttin_raises_the_base_under_the_elastic_ceiling(start_server):
    import signal

    srv, mport = start_with_metrics(start_server, [
        "-w", "1", "--max-workers", "2", "elastic_app:app"])
    srv.wait_workers(1)
    srv.signal(signal.SIGTTIN)
    srv.wait_workers(2)
    srv.signal(signal.SIGTTIN)  # above --max-workers: the base wins, the ceiling follows it
    srv.wait_workers(3)
    wait_for(lambda: value(families(mport), "ferricorn_workers_target") == 3, 10, message="target 3")
    srv.signal(signal.SIGTTOU)
    wait_for(lambda: value(families(mport), "ferricorn_workers") == 2, 15, message="two workers")


@pytest.mark.parametrize("spelling", ["gevent", "eventlet", "gunicorn.workers.ggevent.GeventWorker"])
def test_gevent_and_eventlet_configs_run_as_gthread_with_elastic_threads(start_server, tmp_path,
                                                                         spelling):
    conf = tmp_path / "conf.py"
    conf.write_text(f'worker_class = "{spelling}"\nworker_connections = 64\nworkers = 1\n')
    srv = start_server(["-c", str(conf), "elastic_app:app"])
    srv.wait_workers(1)
    results, took = load(srv.url, "/sleep?s=0.5", clients=24, per_client=3)
    assert results == [200] * 72, results
    assert took < 15, f"{took:.1f}s: 72 sleeps of 0.5 s were not served concurrently"
    log = srv.log_text()
    # One WARNING says what runs instead (the pool grows from one thread, so the master may also
    # report the starvation of its first second).
    warnings = re.findall(r"\[WARNING\] (worker_class .*)", log)
    assert len(warnings) == 1, warnings
    assert re.match(rf"worker_class \"{re.escape(spelling)}\" runs as gthread: each worker starts 1 "
                    r"thread and adds threads up to 64 \(--worker-connections\) while its views wait "
                    r"on I/O; nothing is monkey-patched", warnings[0]), warnings
    assert re.search(r"threads: \d+ -> \d+ \(up to 64\)", log), log
    assert "Using worker: gthread" in log


@pytest.mark.parametrize("args, says", [
    (["-k", "gthread", "--threads", "4", "--max-threads", "2"],
     "argument --max-threads: 2 is below --threads 4"),
    (["-k", "sync", "--max-threads", "4"], "argument --max-threads: the sync worker class runs no thread pool"),
    (["-k", "asgi", "--max-threads", "4"], "argument --max-threads: the asgi worker class runs no thread pool"),
    (["-w", "3", "--max-workers", "2"], "argument --max-workers: 2 is below --workers 3"),
    (["--max-threads", "lots"], "argument --max-threads: invalid int value: 'lots'"),
    (["--max-workers", "-1"], "argument --max-workers: invalid value: -1"),
    (["--elastic-idle-timeout", "0"], "argument --elastic-idle-timeout: invalid value: 0"),
    (["-k", "tornado"], "worker class 'tornado' is not supported"),
])
def test_bad_elastic_values_exit_2_with_one_line(args, says):
    res = run_cli([*args, "elastic_app:app"])
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err, err


def test_print_config_shows_the_elastic_settings(tmp_path):
    res = run_cli(["--print-config", "-k", "gthread", "--threads", "8", "elastic_app:app"])
    out = res.stdout.decode()
    assert re.search(r"^max_threads\s+= auto$", out, re.M), out
    assert re.search(r"^max_workers\s+= 0$", out, re.M), out
    assert re.search(r"^elastic_idle_timeout\s+= 30$", out, re.M), out
    res = run_cli(["--print-config", "--max-threads", "12", "--threads", "3", "elastic_app:app"])
    assert re.search(r"^max_threads\s+= 12$", res.stdout.decode(), re.M)


def test_loopback_call_with_elastic_threads_runs_on_the_overflow_lane(start_server):
    port = free_port()
    srv = start_server(["-w", "1", "-k", "gthread", "--threads", "1", "--max-threads", "8",
                        "--timeout", "20", "selfcall:app"],
                       env={"SELF_URL": f"http://127.0.0.1:{port}", "CALL_TIMEOUT": "10"}, port=port)
    srv.wait_workers(1)
    for _ in range(3):
        r = requests.post(f"{srv.url}/call?via=requests&depth=1", timeout=30)
        assert r.status_code == 201, r.text
    log = srv.log_text()
    # Recognised (within 0.25 s) before a thread would be added (after 0.5 s of waiting).
    assert "Loopback call: POST /hello" in log, log
    assert not re.search(GROW, log), log
    # Under load the pool grows, and loopback calls still come back.
    results = Sessions(12, 1, lambda s: s.post(f"{srv.url}/call?via=session&depth=1", timeout=30).status_code,
                       limit_s=40).run()
    assert results == [201] * 12, results
