"""``ferricornctl doctor`` on the example Django stack (PostgreSQL, nginx, ferricorn;
``examples/django_project/stack``): brought up with misaligned settings (ferricorn's timeout 4 s behind
nginx's 2 s read timeout, /static/ proxied to Django), real slow queries through nginx, then the report
must name the nginx timeout, the route causing the timeouts (waiting in the database driver) and the
static files served by the app; the aligned stack must name none of them.

Skipped when the stack script or what it needs (nginx, PostgreSQL, Django, psycopg) is missing, as
``test_django_stack.py`` is. The client command comes from FERRICORNCTL (default ``ferricornctl``).
"""

import json
import os
import shlex
import shutil
import subprocess
import threading

import pytest
import requests

from conftest import EXAMPLES_DIR, wait_for

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
