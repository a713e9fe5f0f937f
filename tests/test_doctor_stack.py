"""``ferricornctl doctor`` on the example Django stack (PostgreSQL, nginx, ferricorn;
``examples/django_project/stack``): brought up with misaligned settings (ferricorn's timeout 4 s behind
nginx's 2 s read timeout, /static/ proxied to Django), real slow queries through nginx, then the report
must name the nginx timeout, the route causing the timeouts (waiting in the database driver) and the
static files served by the app; the aligned stack must name none of them.

Skipped when the stack script or what it needs (nginx, PostgreSQL, Django, psycopg) is missing, as
``test_django_stack.py`` is. The client command comes from FERRICORNCTL (default ``ferricornctl``).
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time

import pytest
import requests

from conftest import EXAMPLES_DIR, free_port, wait_for

STACK_SCRIPT = os.path.join(EXAMPLES_DIR, "django_project", "stack")
CTL_CMD = shlex.split(os.environ.get("FERRICORNCTL", "ferricornctl"))

if not os.path.exists(STACK_SCRIPT):
    pytest.skip("examples/django_project/stack is not in this tree", allow_module_level=True)

# The stack's driver and its prerequisites check live with the stack's own tests.
from test_django_stack import Stack, _missing  # noqa: E402

pytestmark = [pytest.mark.ferricorn_only]
if _missing():
    pytestmark.append(pytest.mark.skip(reason=f"needs {', '.join(_missing())}"))

MISALIGNED = {"STACK_TIMEOUT": "4", "STACK_NGINX_READ_TIMEOUT": "2", "STACK_NGINX_STATIC": "0",
              "STACK_GRACEFUL_TIMEOUT": "10"}
# The stack's defaults for these, with a short timeout so that the test stays short.
ALIGNED = {"STACK_TIMEOUT": "3", "STACK_NGINX_READ_TIMEOUT": "20", "STACK_NGINX_STATIC": "1",
           "STACK_GRACEFUL_TIMEOUT": "10"}
FINDINGS = ("nginx-timeout-shorter", "route-causes-timeouts", "static-served-by-app")


@pytest.fixture
def stack_with():
    stacks = []

    def up(settings):
        s = Stack()
        s.env.update(settings)
        stacks.append(s)
        s.run("up")
        return s

    yield up
    for s in stacks:
        down = s.run("down", check=False, timeout=120)
        shutil.rmtree(s.dir, ignore_errors=True)
        assert down.returncode == 0, f"stack down failed:\n{down.stdout}\n{down.stderr}"


def doctor(stack):
    res = subprocess.run(
        CTL_CMD + ["doctor", "-s", stack.path("ferricorn.ctl"), "--nginx-config",
                   stack.path("nginx.conf"), "--probe", stack.url("/"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode in (0, 1), f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    report = json.loads(res.stdout)
    assert report["sources"]["ferricorn"]["ok"], report["sources"]
    assert report["sources"]["nginx"]["ok"], report["sources"]
    assert report["sources"]["error_log"]["ok"], report["sources"]
    return report


def by_id(report):
    found = {}
    for f in report["findings"]:
        found.setdefault(f["id"], []).append(f)
    return found


def test_misaligned_stack(stack_with):
    s = stack_with(MISALIGNED)
    results = []

    def slow():
        results.append(requests.get(s.url("/slow-query/?seconds=8"), timeout=30))

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    static = requests.get(s.url("/static/catalog/style.css"), timeout=10)
    for t in threads:
        t.join(40)
    # nginx answered first, with its own 504, while the workers went on.
    assert [r.status_code for r in results] == [504] * 3
    assert all("nginx" in r.headers.get("Server", "") for r in results), [r.headers for r in results]
    wait_for(lambda: s.log("ferricorn-error.log").count(
        "Request exceeded --timeout 4s: GET /slow-query/") >= 3, 20,
        message="three timeouts in ferricorn's error log")

    report = doctor(s)
    found = by_id(report)
    assert report["exit_status"] == 1
    for fid in FINDINGS:
        assert fid in found, (fid, sorted(found))

    read = [f for f in found["nginx-timeout-shorter"] if f["severity"] == "critical"]
    assert read and "proxy_read_timeout 2s <= timeout 4s" in read[0]["title"], found
    assert s.path("nginx.conf") in read[0]["evidence"][0]
    assert "proxy_read_timeout 9s" in read[0]["fix"]

    route = found["route-causes-timeouts"][0]
    assert "/slow-query/ (3 of 3 timeouts" in route["title"], route
    assert "database" in route["title"], route
    assert any("views.py" in e and "slow_query" in e for e in route["evidence"]), route
    assert found["stuck-in-database"][0]["severity"] == "critical"

    evidence = found["static-served-by-app"][0]["evidence"]
    assert any("location /static/" in e and "proxies it" in e for e in evidence), evidence
    if static.status_code == 200:
        # Django served it: the access log shows it too.
        assert any("/static/catalog/style.css" in e for e in evidence), evidence
    assert report["probes"][0]["statuses"] == [200] * 5


def test_aligned_stack(stack_with):
    s = stack_with(ALIGNED)
    # Real traffic, none of it past the timeout.
    assert requests.get(s.url("/slow-query/?seconds=1"), timeout=10).status_code == 200
    assert requests.get(s.url("/static/catalog/style.css"), timeout=10).status_code == 200
    report = doctor(s)
    found = by_id(report)
    for fid in FINDINGS + ("nginx-send-timeout-shorter", "nginx-upstream-mismatch",
                           "stuck-in-database"):
        assert fid not in found, (fid, found.get(fid))
    assert report["nginx"]["static"][0]["served_by"] == "nginx"
    assert report["server"]["timeout"] == 3


# ---- the database step (--database-url, --django-settings) against the stack's PostgreSQL ----

DB_STACK = {"STACK_TIMEOUT": "25", "STACK_NGINX_READ_TIMEOUT": "60", "STACK_GRACEFUL_TIMEOUT": "10"}
HOLD = 14  # seconds /lock-hold/ keeps the row locked


def psql_as_postgres(stack, sql):
    """Run SQL as the cluster's superuser over the stack's unix socket (local connections are trusted)."""
    psql = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]
    cmd = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", stack.path("pgsocket"),
           "-p", str(stack.pg_port), "-U", "postgres", "-d", "demo", "-c", sql]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def doctor_db(stack, *args):
    res = subprocess.run(
        CTL_CMD + ["doctor", "-s", stack.path("ferricorn.ctl"), "--no-nginx", "--json", *args],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode in (0, 1), f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    report = json.loads(res.stdout)
    # The rest of the report is there whatever the database step did.
    for source in ("ferricorn", "host", "error_log", "access_log"):
        assert report["sources"][source]["ok"], (source, report["sources"])
    return report


def database_lines(report):
    """The findings that speak of the database step (not the log rules, which name the driver)."""
    return [f for f in report["findings"]
            if f["id"].startswith("db") or f["title"].startswith("database")]


def in_flight(stack, path_prefix):
    res = subprocess.run(CTL_CMD + ["-s", stack.path("ferricorn.ctl"), "--json", "show", "workers"],
                         capture_output=True, text=True, timeout=30)
    data = json.loads(res.stdout)
    return [r for w in data["workers"] for r in w["in_flight"] if r["path"].startswith(path_prefix)]


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_database_step_names_the_blocking_backend_and_its_request(stack_with, worker_class):
    s = stack_with(dict(DB_STACK, STACK_WORKER_CLASS=worker_class,
                        STACK_THREADS="2" if worker_class == "gthread" else "1"))
    password = s.db_password()
    url = f"postgresql://demo:{password}@127.0.0.1:{s.pg_port}/demo"
    # Traffic before the incident, on both workers.
    for _ in range(6):
        assert requests.get(s.url("/"), timeout=10).status_code == 200
    # ... but not at the moment the lock is taken: a transaction is tied to a request only when that
    # request was the one running in its worker as the transaction began.
    time.sleep(0.3)

    r = requests.get(s.url(f"/lock-hold/?seconds={HOLD}"), timeout=10)
    assert r.status_code == 200 and r.json()["locked_book"] == 1, r.text
    hold_worker = r.json()["worker"]
    held_at = time.monotonic()
    # Nothing else runs in the holder's worker when its transaction begins (the transaction is tied
    # to the request that was running then).
    time.sleep(0.6)
    results = {}

    def get(name, path):
        results[name] = requests.get(s.url(path), timeout=40)

    waits = [threading.Thread(target=get, args=("wait", "/lock-wait/"))]
    waits[0].start()
    wait_for(lambda: in_flight(s, "/lock-wait/"), 10, message="/lock-wait/ in flight")
    time.sleep(0.5)
    waits.append(threading.Thread(target=get, args=("slow", "/slow-query/?seconds=9")))
    waits[1].start()
    wait_for(lambda: any(r["elapsed"] >= 1.5 for r in in_flight(s, "/slow-query/")), 10,
             message="/slow-query/ in flight for 1.5 s")
    holder = psql_as_postgres(s, "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'")
    assert holder.isdigit(), holder

    try:
        # 1. With the URL: the waiting request, the holder backend, the request the lock came from.
        report = doctor_db(s, "--database-url", url)
        assert report["sources"]["database"]["ok"], report["sources"]["database"]
        assert password not in json.dumps(report), "the password must not be printed"
        found = by_id(report)
        blocked = found["db-request-blocked"]
        assert len(blocked) == 1, blocked
        title = blocked[0]["title"]
        assert blocked[0]["severity"] == "critical"
        assert re.match(
            rf"GET /lock-wait/ has waited \d+(\.\d)? s on a row lock held by backend {holder} "
            rf"\(idle in transaction since \d\d:\d\d:\d\d, from GET /lock-hold/\?seconds={HOLD}, "
            rf"which finished \d+(\.\d)? s ago in worker {hold_worker}: the transaction outlived its request\)$",
            title), title
        assert any(e.startswith("GET /lock-wait/: ") and "catalog/views.py:" in e
                   for e in blocked[0]["evidence"]), blocked
        assert f"pg_terminate_backend({holder})" in blocked[0]["fix"]
        slow = found["db-request-slow-query"]
        assert len(slow) == 1, slow
        assert re.match(r"GET /slow-query/\?seconds=9 has waited \d+(\.\d)? s on its query \(backend \d+, "
                        r"running since \d\d:\d\d:\d\d\)$", slow[0]["title"]), slow[0]["title"]
        assert any("pg_sleep" in e for e in slow[0]["evidence"]), slow
        assert "db-idle-in-transaction" not in found, "the holder is named once"
        assert report["exit_status"] == 1
        sessions = {x["pid"]: x for x in report["database"]["sessions"]}
        assert sessions[int(holder)]["worker"] == hold_worker
        assert any(x["request"] == "GET /lock-wait/" for x in sessions.values()), sessions

        # 2. The same from the Django settings the server runs with (DJANGO_SETTINGS_MODULE and the
        # credentials come from the config file's raw_env; nothing in this environment names them).
        report = doctor_db(s, "--django-settings")
        assert report["sources"]["database"]["ok"], report["sources"]["database"]
        assert report["sources"]["database"]["detail"].startswith(
            f"Django settings demo.settings: demo@127.0.0.1:{s.pg_port}/demo"), report["sources"]
        assert any(f"held by backend {holder} " in f["title"]
                   for f in by_id(report)["db-request-blocked"]), report["findings"]

        # 3. A database that cannot be reached: one line, and the rest of the report.
        report = doctor_db(s, "--database-url", f"postgresql://demo@127.0.0.1:{free_port()}/demo")
        lines = database_lines(report)
        assert len(lines) == 1, lines
        assert lines[0]["severity"] == "info" and lines[0]["id"] == "source-skipped"
        assert "Connection refused" in lines[0]["title"] and lines[0]["title"].endswith("; skipped")
        assert not report["sources"]["database"]["ok"]

        # 4. A role without the right to see other roles' sessions: one line, and the rest.
        psql_as_postgres(s, "DROP ROLE IF EXISTS doctor_nopriv; "
                            "CREATE ROLE doctor_nopriv LOGIN PASSWORD 'nopriv-pw'")
        report = doctor_db(s, "--database-url",
                           f"postgresql://doctor_nopriv:nopriv-pw@127.0.0.1:{s.pg_port}/demo")
        lines = database_lines(report)
        assert len(lines) == 1, (lines, report["database"])
        assert lines[0]["id"] == "database-role-limited" and lines[0]["severity"] == "info"
        assert "role doctor_nopriv sees only its own sessions" in lines[0]["title"]
        assert "pg_read_all_stats" in lines[0]["title"]
    finally:
        for t in waits:
            t.join(40)
    # Once the holder's transaction ended, the waiting request went through.
    assert results["wait"].status_code == 200, results["wait"].text
    assert results["slow"].status_code == 200
    assert time.monotonic() - held_at >= HOLD - 1
