"""Worker lifecycle under load, as gunicorn users rely on it: HUP reloads (configuration included) and
--max-requests recycling without a single failed request; TTIN/TTOU; USR1; crash-loop backoff."""

import os
import re
import signal
import threading
import time

import pytest
import requests

from conftest import wait_for


class Load:
    """`clients` threads, each with its own keep-alive session, requesting until stopped (bounded by a
    deadline). Counts answers and failures."""

    def __init__(self, url, clients=8, path="/pid", limit_s=60):
        self.url = url + path
        self.ok = 0
        self.errors = []
        self.pids = set()
        self.closes = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + limit_s
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        with requests.Session() as s:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
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

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(15)


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
    assert load.errors == [], load.errors[:5]
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
