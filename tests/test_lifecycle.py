"""Worker lifecycle under load, as gunicorn users rely on it: HUP reloads (configuration included) and
--max-requests recycling without a single failed request; TTIN/TTOU; USR1; crash-loop backoff."""

import os
import re
import signal
import threading
import time

import pytest
import requests

from conftest import ClientThreads, stop_pid, wait_for


class Load(ClientThreads):
    """`clients` threads, each with its own keep-alive session, requesting until stopped (bounded by a
    deadline). Counts answers and failures."""

    def __init__(self, url, clients=8, path="/pid", limit_s=60):
        super().__init__(clients, limit_s)
        self.url = url + path
        self.ok = 0
        self.errors = []
        self.pids = set()
        self.closes = 0

    def _run(self, _i):
        with requests.Session() as s:
            while self.running():
                try:
                    r = s.get(self.url, timeout=10)
                    with self._lock:
                        if r.status_code == 200:
                            self.ok += 1
                            self.pids.add(r.text)
                        else:
                            self.errors.append(r.status_code)
                        if r.headers.get("Connection", "").lower() == "close":
                            self.closes += 1
                except requests.RequestException as e:
                    with self._lock:
                        self.errors.append(repr(e))


def test_hup_under_load_fails_no_request(start_server):
    srv = start_server(["-w", "2", "-k", "gthread", "--threads", "2", "--graceful-timeout", "10",
                        "stuck"])
    srv.wait_workers(2)
    with Load(srv.url) as load:
        time.sleep(0.5)
        for i in range(4):
            srv.signal(signal.SIGHUP)
            srv.wait_workers(2 * (i + 2), timeout=20)
            time.sleep(0.7)
    assert load.errors == [], (load.errors[:5], srv.log_text())
    assert load.ok > 100
    assert len(load.pids) >= 4  # requests were served by old and new workers
    assert srv.log_text().count("Hang up: Master") == 4


def test_max_requests_recycles_under_load_without_failures(start_server):
    srv = start_server(["-w", "2", "--max-requests", "40", "--max-requests-jitter", "10", "stuck"])
    srv.wait_workers(2)
    with Load(srv.url, clients=8) as load:
        wait_for(lambda: len(srv.worker_pids_from_log()) >= 8 or None, 30, message="8 workers booted")
    assert load.errors == [], load.errors[:5]
    assert "Autorestarting worker after current request." in srv.log_text()
    # The last response of a recycled worker told its keep-alive client to close.
    assert load.closes >= 1
    # Each response body is the pid that served it: many workers took turns.
    assert len(load.pids) >= 6


def test_hup_reads_the_config_file_again(start_server, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("workers = 1\nraw_env = ['GREETING=first']\n")
    srv = start_server(["-c", str(conf), "testapp"])
    srv.wait_workers(1)
    assert requests.get(srv.url + "/env?name=GREETING", timeout=10).json()["value"] == "first"
    conf.write_text("workers = 2\nraw_env = ['GREETING=second']\n")
    srv.signal(signal.SIGHUP)
    srv.wait_workers(3)  # the first, then two new ones
    wait_for(lambda: requests.get(srv.url + "/env?name=GREETING", timeout=10).json()["value"]
             == "second" or None, 15, message="new configuration served")
    assert len(srv.children()) >= 2


@pytest.mark.ferricorn_only
def test_broken_config_on_hup_keeps_the_old_one(start_server, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("workers = 1\n")
    srv = start_server(["-c", str(conf), "testapp"])
    srv.wait_workers(1)
    conf.write_text("workers = 'many'\n")
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"Reloading the configuration failed; keeping the current one")
    srv.wait_workers(2)
    assert requests.get(srv.url + "/hello", timeout=10).status_code == 200


def test_ttin_and_ttou(start_server):
    srv = start_server(["-w", "1", "stuck"])
    srv.wait_workers(1)
    # Signals of one kind sent back to back may merge into one delivery: space them.
    srv.signal(signal.SIGTTIN)
    wait_for(lambda: len(srv.children()) == 2 or None, 15, message="2 workers")
    srv.signal(signal.SIGTTIN)
    wait_for(lambda: len(srv.children()) == 3 or None, 15, message="3 workers")
    srv.signal(signal.SIGTTOU)
    wait_for(lambda: len(srv.children()) == 2 or None, 15, message="2 workers")
    for _ in range(3):
        srv.signal(signal.SIGTTOU)
        time.sleep(0.5)
    wait_for(lambda: len(srv.children()) == 1 or None, 15, message="never below 1 worker")
    time.sleep(1.5)
    assert len(srv.children()) == 1


def test_usr1_reopens_the_log_files(start_server, tmp_path):
    errlog = tmp_path / "error.log"
    acclog = tmp_path / "access.log"
    srv = start_server(["-w", "1", "--error-logfile", str(errlog), "--access-logfile", str(acclog),
                        "stuck"])
    wait_for(lambda: errlog.exists() and "Booting worker" in errlog.read_text() or None, 15,
             message="error log written")
    requests.get(srv.url + "/", timeout=10)
    wait_for(lambda: acclog.exists() and acclog.read_text() or None, 10, message="access log")
    os.rename(errlog, tmp_path / "error.log.1")
    os.rename(acclog, tmp_path / "access.log.1")
    srv.signal(signal.SIGUSR1)
    wait_for(lambda: errlog.exists() or None, 10, message="error log reopened")
    wait_for(lambda: (requests.get(srv.url + "/again", timeout=10) and acclog.exists()
                      and "/again" in acclog.read_text()) or None, 10, message="access log reopened")
    # Lines logged after the reopen land in the new file.
    srv.signal(signal.SIGTTIN)
    wait_for(lambda: "Booting worker" in errlog.read_text() or None, 10, message="new error log used")


@pytest.mark.ferricorn_only
def test_crash_loop_backs_off(start_server):
    srv = start_server(["-w", "1", "crashy"], ready=False)
    srv.wait_log(r"Workers are dying right after they start \(\d+ in a row\): waiting \d+\.\ds", timeout=15)
    time.sleep(4)
    boots = len(re.findall(r"Booting worker", srv.log_text()))
    # Without a backoff a crash loop spawns hundreds of workers in a few seconds.
    assert boots < 20, boots
    assert srv.proc.poll() is None


def test_usr2_upgrade_fails_no_request(start_server, tmp_path):
    pidfile = tmp_path / "master.pid"
    srv = start_server(["-w", "2", "-p", str(pidfile), "stuck"])
    srv.wait_workers(2)
    old_master = srv.pid
    new_master = None
    try:
        with Load(srv.url) as load:
            time.sleep(0.5)
            srv.signal(signal.SIGUSR2)
            # The new master logs its own "Listening at" line with its pid, then boots two workers.
            m = wait_for(lambda: re.findall(r"Listening at: \S+ \((\d+)\)", srv.log_text())[1:] or None,
                         20, message="a new master")
            new_master = int(m[0])
            assert new_master != old_master
            srv.wait_workers(4, timeout=20)
            assert (tmp_path / "master.pid.2").read_text().strip() == str(new_master)
            time.sleep(0.5)
            # The old master goes; the new one keeps serving on the same sockets.
            assert srv.stop() == 0
            time.sleep(1.5)
        assert load.errors == [], load.errors[:5]
        assert load.ok > 50
        wait_for(lambda: "Master has been promoted." in srv.log_text() or None, 10, message="promotion")
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() == str(new_master) or None, 10,
                 message="pidfile renamed")
        assert requests.get(srv.url + "/pid", timeout=10).status_code == 200
    finally:
        if new_master:
            stop_pid(new_master)


def test_int_during_graceful_stop_makes_it_quick(start_server):
    srv = start_server(["-w", "1", "--graceful-timeout", "30", "--timeout", "60", "stuck"])
    srv.wait_workers(1)
    def in_flight():
        try:
            requests.get(srv.url + "/sleep?s=20", timeout=30)
        except requests.ConnectionError:
            pass  # a quick stop drops it: that is the point

    t = threading.Thread(target=in_flight, daemon=True)
    t.start()
    time.sleep(0.5)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    time.sleep(0.5)
    srv.signal(signal.SIGINT)
    assert srv.wait(15) == 0
    assert time.monotonic() - started < 10
    assert "Quick shutdown requested" in srv.log_text()


def test_hup_with_preload_keeps_the_preloaded_app(start_server, tmp_path):
    (tmp_path / "preloaded.py").write_text(
        "import os, time\n"
        "LOADED_IN = os.getpid()\n"
        "def application(environ, start_response):\n"
        "    body = ('%d %d' % (LOADED_IN, os.getpid())).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    srv = start_server(["-w", "1", "--preload", "preloaded"], app_dir=str(tmp_path))
    (first,) = srv.wait_workers(1)
    loaded_in, served_by = map(int, requests.get(srv.url + "/", timeout=10).text.split())
    assert loaded_in == srv.pid and served_by == first  # imported once, in the master
    srv.signal(signal.SIGHUP)
    pids = srv.wait_workers(2)
    wait_for(lambda: requests.get(srv.url + "/", timeout=10).text.split()[1] == str(pids[-1]) or None, 15,
             message="the new worker to serve")
    loaded_in, _ = map(int, requests.get(srv.url + "/", timeout=10).text.split())
    assert loaded_in == srv.pid  # still the app the master preloaded, as in gunicorn
