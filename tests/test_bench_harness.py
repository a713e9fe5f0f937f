"""The benchmark harness's own logic (bench/harness.py, bench/report.py), without running a benchmark.

What a results file says rests on these parts: which repeats count (a load with errors or non-2xx
answers is a failed repeat, shown with its reason and left out of the medians), when a target may be
read at all (at least 2 good repeats of every cell it compares), how the server and app orders rotate
across repeats, how requests/s are computed from wrk's report (only answers below 400), and who else
used the CPU (the wait for a quiet machine). wrk itself is run for a fraction of a second against a
local server that fails every fourth request; the CPU attribution is checked against a real process
that spins outside the test's process tree.
"""

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import report  # noqa: E402

pytestmark = pytest.mark.ferricorn_only  # the project's own tooling


# --------------------------------------------------------------------------- rotation


def server(name, interface="wsgi", twin_of=None):
    return harness.Server(name, name.split("-")[0], name, "x", [], interface=interface, twin_of=twin_of)


@pytest.mark.parametrize("n,repeats", [(2, 3), (3, 3), (4, 4), (4, 6), (6, 6)])
def test_every_server_takes_every_place_once_there_are_enough_repeats(n, repeats):
    servers = [server(f"s{i}") for i in range(n)]
    orders = [[s.name for u in harness.run_units(servers, rep, repeats) for s in u] for rep in range(repeats)]
    for order in orders:
        assert sorted(order) == sorted(s.name for s in servers)
    for place in range(n):
        assert {order[place] for order in orders[:n]} == {s.name for s in servers}


def test_with_fewer_repeats_than_servers_places_are_spread_over_the_order():
    servers = [server(f"s{i}") for i in range(6)]
    places = {s.name: [] for s in servers}
    for rep in range(3):
        for place, s in enumerate(s for u in harness.run_units(servers, rep, 3) for s in u):
            places[s.name].append(place)
    for name, ps in places.items():
        assert len(set(ps)) == 3, (name, ps)
        assert max(ps) - min(ps) == 4, (name, ps)  # early, middle and late, not three neighbours


def test_apps_rotate_like_servers():
    apps = [a for a in harness.APPS if a.interface == "wsgi"][:3]
    orders = [[a.name for a in harness.app_order(apps, rep, 3)] for rep in range(3)]
    assert [o[0] for o in orders] == [a.name for a in apps]
    assert all(sorted(o) == sorted(a.name for a in apps) for o in orders)


def test_ab_twins_stay_together_and_swap_which_goes_first():
    servers = [server("granian-bt"), server("ferricorn-sync"), server("ferricorn-sync@old", twin_of="ferricorn-sync"),
               server("uvicorn", "asgi"), server("ferricorn-asgi", "asgi")]
    firsts = []
    for rep in range(4):
        units = harness.run_units(servers, rep, 4)
        pair = next(u for u in units if len(u) == 2)
        assert {s.name for s in pair} == {"ferricorn-sync", "ferricorn-sync@old"}
        firsts.append(pair[0].name)
        # each interface rotates on its own: the WSGI units, then the ASGI ones
        ifaces = [u[0].interface for u in units]
        assert ifaces == sorted(ifaces, key=lambda i: i != "wsgi")
    assert firsts == ["ferricorn-sync@old", "ferricorn-sync"] * 2


# --------------------------------------------------------------------------- wrk: only answers below 400


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Keep-alive hello; every fourth request gets a 500."""
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_GET(self):
        with FlakyHandler.lock:
            FlakyHandler.count += 1
            n = FlakyHandler.count
        status = 500 if n % 4 == 0 else 200
        body = b"Hello, World!"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.skipif(not any(os.access(os.path.join(d, "wrk"), os.X_OK) for d in os.environ["PATH"].split(":")),
                    reason="wrk not installed (bench/run installs it)")
def test_wrk_load_counts_only_answers_below_400_and_reports_the_rest():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        app = harness.App("flaky", "x:app", "flaky", ("keepalive",), connections=4)
        w = harness.run_wrk(app, srv.server_address[1], "keepalive", 1)  # wrk takes whole seconds
    finally:
        srv.shutdown()
        srv.server_close()
    out = harness.load_numbers(w, 1.0)
    assert w["requests"] > 20 and w["status"] > 0
    assert out["non2xx"] == w["status"]
    assert out["requests"] == w["requests"] - w["status"]
    assert abs(out["requests"] / w["requests"] - 0.75) < 0.1
    assert out["rps"] == pytest.approx(out["requests"] / (w["duration_us"] / 1e6))
    assert report.load_problem(out) == f"{w['status']} non-2xx"


def test_load_numbers_of_a_clean_load():
    w = {"requests": 1000, "duration_us": 2_000_000, "connect": 0, "read": 0, "write": 0, "status": 0,
         "timeout": 0, "p50_us": 900, "p90_us": 1500, "p99_us": 2500, "max_us": 9000}
    out = harness.load_numbers(w, 2.01)
    assert (out["rps"], out["requests"], out["errors"], out["p99_ms"]) == (500.0, 1000, 0, 2.5)
    assert report.load_problem(out) is None
    assert report.load_problem(dict(out, socket_errors=3)) == "3 socket errors"
    assert report.load_problem(dict(out, requests=0)) == "no answers"


# --------------------------------------------------------------------------- who else used the CPU


def test_other_cpu_charges_exited_children_to_their_parent_and_skips_excluded_pids():
    # pid: (comm, ppid, own ticks, reaped children's ticks, starttime)
    before = {1: ("init", 0, 0, 0, 1), 10: ("cargo", 1, 50, 0, 5), 11: ("rustc", 10, 400, 0, 6),
              12: ("rustc", 10, 100, 0, 7), 20: ("wrk", 30, 10, 0, 8), 30: ("python", 1, 0, 0, 2),
              40: ("old", 1, 70, 0, 9)}
    # rustc 11 exited after 100 more ticks (reaped by cargo: 500 in cargo's children); 12 ran 100 more;
    # pid 40 was reused by another process; 20 and 30 are the harness and its wrk
    after = {1: ("init", 0, 0, 0, 1), 10: ("cargo", 1, 51, 500, 5), 12: ("rustc", 10, 200, 0, 7),
             20: ("wrk", 30, 300, 0, 8), 30: ("python", 1, 0, 0, 2), 40: ("new", 1, 5, 0, 99)}
    hz = harness.CLK_TCK
    top = harness.other_cpu(before, after, exclude={20, 30}, seconds=1.0)
    assert [(o["name"], round(o["cores"] * hz)) for o in top] == [("cargo", 101), ("rustc", 100), ("new", 5)]


def test_other_cpu_takes_off_what_a_whole_exited_subtree_used_before():
    # bash 2 started cargo 3, which started rustc 4 (300 ticks so far); in between rustc ran 50 more
    # and exited (cargo reaped it: 350), then cargo ran 10 more and exited: bash reaped 20 + 10 + 350
    before = {2: ("bash", 1, 5, 0, 1), 3: ("cargo", 2, 20, 0, 2), 4: ("rustc", 3, 300, 0, 3)}
    after = {2: ("bash", 1, 5, 380, 1)}
    top = harness.other_cpu(before, after, exclude=set(), seconds=1.0)
    assert [(o["name"], round(o["cores"] * harness.CLK_TCK)) for o in top] == [("bash", 60)]
    # never more than every CPU for the whole time, whatever the counters say
    after = {2: ("bash", 1, 5, 10**7, 1)}
    top = harness.other_cpu(before, after, exclude=set(), seconds=1.0)
    assert top[0]["cores"] <= os.cpu_count()


SPINNER = """
import ctypes, os, sys, time
if os.fork():
    sys.exit(0)
ctypes.CDLL(None).prctl(15, b"benchspin", 0, 0, 0)
print(os.getpid(), flush=True)
end = time.time() + 8
while time.time() < end:
    pass
"""


@pytest.fixture
def spinner():
    """A process that spins on a CPU outside this test's process tree (its parent exits at once), as
    another session's build would; killed by its pid afterwards (it stops by itself within 8 s)."""
    out = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE, text=True)
    pid = int(out.stdout.readline())
    out.wait()
    yield pid
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def test_wait_quiet_gives_up_at_its_bound_and_names_the_busy_process(spinner):
    t0 = time.perf_counter()
    q = harness.wait_quiet(harness.Quiet(below=0.02, bound=0.6, window=0.3))
    took = time.perf_counter() - t0
    assert not q["quiet"]
    assert 0.6 <= q["waited_s"] + 0.05 and took < 3
    assert q["other_cores"] >= 0.02
    assert "benchspin" in [o["name"] for o in q["top"]], q


def test_wait_quiet_returns_after_one_window_when_the_machine_is_quiet_enough():
    q = harness.wait_quiet(harness.Quiet(below=64, bound=10, window=0.2))
    assert q["quiet"] and q["waited_s"] < 1
    assert harness.wait_quiet(harness.Quiet(bound=0)) is None


def test_the_harness_and_its_children_are_not_others():
    me = os.getpid()
    child = subprocess.Popen([sys.executable, "-c", "import time; end = time.time() + 0.5\nwhile time.time() < end: pass"])
    try:
        s0 = harness.proc_snapshot()
        time.sleep(0.4)
        s1 = harness.proc_snapshot()
    finally:
        child.wait()
    mine = harness.descendants(s0, me) | harness.descendants(s1, me)
    assert child.pid in mine
    assert child.pid not in {pid for pid in s1 if pid not in mine}


# --------------------------------------------------------------------------- report: repeats and targets


def load(rps, p99=2.0, non2xx=0, sock=0, others=0.3):
    return {"rps": rps, "requests": int(rps * 5), "responses": int(rps * 5) + non2xx, "p50_ms": 1.0,
            "p99_ms": p99, "errors": non2xx + sock, "socket_errors": sock, "non2xx": non2xx, "cores": 1.0,
            "cpu_s": 5.0, "wall_s": 5.0, "cpu_us_per_req": 10.0, "other_cores": others, "steal_cores": 0.0,
            "others_top": [{"name": "rustc", "cores": others}], "accept_queue": {"median": 0, "max": 0},
            "quiet": {"waited_s": 30.0, "quiet": False, "other_cores": 0.9, "top": [{"name": "rustc", "cores": 0.8}]}}


def record(srv, rep, loads=None, error=None, app="hello"):
    r = {"server": srv, "app": app, "repeat": rep, "loadavg": 2.0}
    if error:
        r["error"] = error
    else:
        r.update(startup_ms=30.0, idle={"rss": 40, "pss": 15, "procs": 3}, after={"rss": 41, "pss": 16, "procs": 3})
    if loads is not None:
        r["loads"] = loads
    return r


def run(records, repeats=3, servers=("granian-bt", "ferricorn-gthread"), unavailable=None):
    unavailable = unavailable or {}
    return {
        "date": "2026-12-03", "elapsed_s": 60.0, "note": None,
        "environment": {"cpus": 2, "cpu_model": "x", "kernel": "6", "python": "3.11", "commit": "abc",
                        "versions": {"ferricorn": "0.1", "gunicorn": "27", "granian": "2", "flask": "3"},
                        "wrk": "wrk 4", "loadavg_start": 1.0, "loadavg_end": 1.0},
        "settings": {"repeats": repeats, "duration": 5, "warmup": 2, "settle": 1, "mem_loads": 3, "mem_seconds": 10,
                     "quiet": {"below": 0.2, "bound": 30.0, "window": 1.0}},
        "servers": [{"name": s, "label": s, "argv": [], "threads_flag": None, "unavailable": unavailable.get(s),
                     "exe": s, "twin_of": None, "interface": "wsgi"} for s in servers],
        "apps": [{"name": "hello", "title": "hello", "modes": ["keepalive"], "connections": 64, "threads": 4,
                  "interface": "wsgi", "efficiency": True}],
        "ceilings": {}, "records": records, "memtest": [],
    }


def granian(rpss):
    return [record("granian-bt", k + 1, {"keepalive": load(v, p99=3.0)}) for k, v in enumerate(rpss)]


def target_row(raw, name):
    md = report.render(raw)
    return next(line for line in md.splitlines() if line.startswith(f"| {name}"))


def test_failed_repeats_are_shown_left_out_of_the_median_and_make_a_target_insufficient():
    raw = run(granian([100, 90, 110]) + [
        record("ferricorn-gthread", 1, {"keepalive": load(140, p99=1.0)}),
        record("ferricorn-gthread", 2, {"keepalive": load(200, p99=9.0, non2xx=5)}),
        record("ferricorn-gthread", 3, error="exited with code 1 before serving [log: boom]"),
    ])
    st = report.load_stats(raw, "hello", "keepalive", "ferricorn-gthread")
    assert (st["good"], st["n"], st["rps"], st["p99"], st["errors"]) == (1, 3, 140, 1.0, 5)
    assert st["failed"] == [(2, "5 non-2xx"), (3, "exited with code 1 before serving [log: boom]")]
    cell = report.rps_cell(st)
    assert cell.startswith("140 1/3") and "r2 failed: 5 non-2xx" in cell
    assert "r3 failed: exited with code 1 before serving" in cell and "boom" not in cell
    row = target_row(raw, "hello keep-alive ≥ 1.3× best granian")
    assert row.endswith("| insufficient |") and "ferricorn-gthread 1/3" in row
    md = report.render(raw)
    assert "repeat 2, ferricorn-gthread × hello keep-alive: 5 non-2xx" in md
    assert "repeat 3, ferricorn-gthread × hello: exited with code 1 before serving" in md


def test_target_reads_medians_of_good_repeats_with_their_spread():
    good = [record("ferricorn-gthread", k + 1, {"keepalive": load(v, p99=2.0)}) for k, v in enumerate([140, 120, 150])]
    raw = run(granian([100, 90, 110]) + good)
    row = target_row(raw, "hello keep-alive ≥ 1.3× best granian")
    # met on the medians, but ferricorn's worst repeat ÷ granian's best is below the goal: said beside it
    assert "1.40× (ferricorn-gthread 140 3/3 ÷ granian-bt 100 3/3)" in row
    assert row.endswith("| met (within the spread: 1.09–1.67×) |")
    tight = [record("ferricorn-gthread", k + 1, {"keepalive": load(v)}) for k, v in enumerate([140, 145, 150])]
    assert target_row(run(granian([100, 98, 102]) + tight), "hello keep-alive ≥ 1.3× best granian").endswith("| met |")
    assert report.rps_cell(report.load_stats(raw, "hello", "keepalive", "ferricorn-gthread")) == "140 (120–150) 3/3"
    assert target_row(raw, "p99 at c64").endswith("| met |")
    # one failed granian repeat of three: two good ones still carry the target, with the spread of those two
    raw = run(granian([100, 90]) + [record("granian-bt", 3, {"keepalive": load(50, sock=12)})] + good)
    assert report.load_stats(raw, "hello", "keepalive", "granian-bt")["rps"] == 95
    row = target_row(raw, "hello keep-alive ≥ 1.3× best granian")
    assert "1.47×" in row and "| met" in row
    # below the goal
    raw = run(granian([110, 120, 115]) + good)
    assert "| **not met**" in target_row(raw, "hello keep-alive ≥ 1.3× best granian")


def test_a_single_repeat_can_neither_pass_nor_fail_a_target():
    raw = run(granian([100]) + [record("ferricorn-gthread", 1, {"keepalive": load(400)})], repeats=1)
    for name in ("hello keep-alive ≥ 1.3× best granian", "p99 at c64"):
        assert target_row(raw, name).endswith("| insufficient |"), name
    assert "4.00× †" in report.ratios_table(raw)


def test_a_server_dropped_mid_run_shows_its_missing_repeats():
    raw = run(granian([100, 90, 110]) + [
        record("ferricorn-gthread", 1, {"keepalive": load(140)}),
        record("ferricorn-gthread", 2, error="no 200 within 30 s"),
        record("ferricorn-gthread", 3, error="no 200 within 30 s")][:2],
        unavailable={"ferricorn-gthread": "failed to start: no 200 within 30 s"})
    st = report.load_stats(raw, "hello", "keepalive", "ferricorn-gthread")
    assert (st["good"], st["n"]) == (1, 3)
    assert st["failed"][1][0] == 3 and st["failed"][1][1].startswith("not run (dropped: failed to start")
    # a cell with no good repeat at all
    raw["records"] = [r for r in raw["records"] if r["server"] != "ferricorn-gthread" or r["repeat"] != 1]
    st = report.load_stats(raw, "hello", "keepalive", "ferricorn-gthread")
    assert report.rps_cell(st).startswith("failed 0/3")
    assert target_row(raw, "hello keep-alive ≥ 1.3× best granian").endswith("| insufficient |")


def test_errors_count_on_every_row_and_the_noise_is_reported():
    raw = run(granian([100, 90, 110]) + [
        record("ferricorn-gthread", k + 1, {"keepalive": load(140, sock=2 if k == 0 else 0)}) for k in range(3)])
    md = report.render(raw)
    errors = md[md.index("## Errors"):]
    assert "| hello | keep-alive | 0 | 2 socket |" in errors
    assert "Machine noise: 0 of 6 loads started on a quiet machine" in md and "busiest others: rustc 0.30" in md
    assert "**The machine was busy" in md
    noise = md[md.index("## Noise"):]
    assert "not quiet after 30 s (0.90 cores; rustc 0.80)" in noise


def test_ab_slices_combine_into_one_load_with_the_other_work_of_all_slices():
    def piece(rps, wall, rustc):
        w = {"requests": int(rps * wall), "duration_us": int(wall * 1e6), "connect": 0, "read": 0, "write": 0,
             "status": 0, "timeout": 0, "p50_us": 1000, "p90_us": 2000, "p99_us": 3000, "max_us": 5000}
        out = harness.load_numbers(w, wall)
        out.update(wrk=w, cores=1.0, cpu_s=wall, cpu_us_per_req=1e6 / rps, other_cores=rustc, steal_cores=0.0,
                   others_top=[{"name": "rustc", "cores": rustc}], accept_queue={"median": 0, "max": 1})
        return out

    load = harness.combine_slices([piece(1000, 1.0, 0.5), piece(3000, 1.0, 1.5)])
    assert load["rps"] == 2000 and load["requests"] == 4000
    assert load["others_top"] == [{"name": "rustc", "cores": 1.0}] and load["other_cores"] == 1.0
    assert report.load_problem(load) is None


# --------------------------------------------------------------------------- bench/http2.py: h2load


import http2 as h2bench  # noqa: E402  (bench/http2.py)

H2LOAD_OK = """starting benchmark...
spawning thread #0: 2 total client(s). 200 total requests
Application protocol: h2c
progress: 100% done

finished in 23.51ms, 8507.38 req/s, 339.96KB/s
requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 7.99KB (8184) total, 1.83KB (1874) headers (space savings 90.03%), 2.54KB (2600) data
                     min         max         mean         sd        +/- sd
time for request:       68us     11.50ms       853us      2.20ms    96.00%
time for connect:      170us       371us       271us       142us   100.00%
time to 1st byte:    11.75ms     11.86ms     11.81ms        79us   100.00%
req/s           :    4308.52     4585.49     4447.00      195.85   100.00%
"""


def test_h2load_output_of_a_clean_run():
    r = h2bench.parse_h2load(H2LOAD_OK)
    assert r["protocol"] == "h2c"
    assert r["seconds"] == pytest.approx(0.02351)
    assert r["h2load_rps"] == pytest.approx(8507.38)
    assert r["rps"] == pytest.approx(200 / 0.02351)
    assert (r["total"], r["done"], r["succeeded"], r["failed"], r["errored"], r["timeout"]) == \
        (200, 200, 200, 0, 0, 0)
    assert r["status"] == {"2xx": 200, "3xx": 0, "4xx": 0, "5xx": 0}
    assert r["request_us"] == {"min": 68.0, "max": 11500.0, "mean": 853.0}
    assert r["errors"] == 0


def test_h2load_failures_and_non_2xx_are_errors_and_not_counted_in_rps():
    text = H2LOAD_OK.replace("finished in 23.51ms", "finished in 2.00s").replace(
        "200 done, 200 succeeded, 0 failed, 0 errored", "190 done, 155 succeeded, 35 failed, 10 errored"
    ).replace("200 2xx, 0 3xx, 0 4xx, 0 5xx", "150 2xx, 5 3xx, 10 4xx, 20 5xx")
    r = h2bench.parse_h2load(text)
    # h2load's "succeeded" are the 2xx and 3xx answers: the rest of the 200, and the 3xx, are errors
    assert r["errors"] == 45 + 5
    assert r["rps"] == pytest.approx(150 / 2.0)


@pytest.mark.parametrize("text", [
    "",
    "starting benchmark...\nspawning thread #0: 1 total client(s). 10 total requests\n"
    "No protocol negotiated. Aborted.\n",
    "client could not connect to host\nfinished in 1.2ms, 0.00 req/s, 0B/s\n",  # no requests line
])
def test_h2load_output_without_a_result_is_refused(text):
    with pytest.raises(ValueError):
        h2bench.parse_h2load(text)


@pytest.mark.skipif(not any(os.access(os.path.join(d, "h2load"), os.X_OK) for d in os.environ["PATH"].split(":")),
                    reason="h2load not installed (bench/run installs nghttp2-client)")
def test_h2load_run_for_real_against_a_flaky_server():
    # h2load --h1 speaks HTTP/1.1 with the same report as over HTTP/2
    FlakyHandler.count = 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = h2bench.h2load(f"http://127.0.0.1:{srv.server_address[1]}/", "--h1", "-n", "40", "-c", "1",
                             timeout=30)
    finally:
        srv.shutdown()
        srv.server_close()
    r = h2bench.parse_h2load(out)
    assert r["protocol"] == "http/1.1"
    assert r["total"] == 40 and r["done"] == 40 and r["succeeded"] == 30
    assert r["status"]["5xx"] == 10 and r["status"]["2xx"] == 30
    assert r["errors"] == 10
    assert r["rps"] == pytest.approx(30 / r["seconds"])


def test_h2_report_reads_the_target_only_with_three_repeats():
    def sample(rps):
        return {"rps": rps, "errors": 0, "loadavg": "1.0",
                "request_us": {"min": 1.0, "max": 2.0, "mean": 1500.0}}

    samples = {("ferricorn", "h2c", "hello"): [sample(13000), sample(12000), sample(12500)],
               ("granian", "h2c", "hello"): [sample(10000), sample(10000), sample(9000)],
               ("gunicorn", "h2c", "hello"): [sample(2000)] * 3}
    cfg = {"date": "2026-12-03", "repeats": 3, "duration": 5.0, "clients": 16, "streams": 10,
           "apps": ["hello"], "transports": ["h2c"], "failed": []}
    text, status = h2bench.report(samples, cfg, {"ferricorn": "x"}, "")
    assert status == "met (lowest 1.25×)"
    assert "| hello | h2c | 12,500 (1.50) | 10,000 (1.50) | 2,000 (1.50) | 1.25 | 6.25 |" in text
    samples[("granian", "h2c", "hello")] = [sample(11000)] * 3
    assert h2bench.report(samples, cfg, {}, "")[1].startswith("not met")
    cfg["repeats"] = 1
    assert h2bench.report(samples, cfg, {}, "")[1].startswith("insufficient")


def test_h2_ab_table_pairs_each_repeat_of_the_two_builds():
    def sample(rps, rep):
        return {"rps": rps, "repeat": rep, "errors": 0, "loadavg": "0.1",
                "request_us": {"min": 1.0, "max": 2.0, "mean": 1000.0}}
    samples = {("ferricorn", "h2c", "hello"): [sample(120, 1), sample(150, 2), sample(90, 3)],
               (h2bench.AB, "h2c", "hello"): [sample(100, 1), sample(100, 2), sample(60, 3)]}
    cfg = {"date": "2026-12-04", "repeats": 3, "duration": 4.0, "clients": 16, "streams": 10,
           "apps": ["hello"], "transports": ["h2c"], "failed": [], "ab_label": "main"}
    text, _ = h2bench.report(samples, cfg, {}, "")
    assert "## A/B: ferricorn (new) ÷ main (old)" in text
    row = next(line for line in text.splitlines() if line.startswith("| hello | h2c | 120 (90–150)"))
    # medians 120 and 100; each repeat's pair: 1.20, 1.50, 1.50
    assert "| 1.200 | 1.20, 1.50, 1.50 |" in row
