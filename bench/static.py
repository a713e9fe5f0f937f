#!/usr/bin/env python3
"""Static files: ferricorn's `--static-map` beside granian's static route and nginx, in one run.

    bench/.venv/bin/python bench/static.py                  # after bench/run has set up bench/.venv
    /path/to/venv/bin/python bench/static.py --repeats 5 --duration 5

Each server runs 2 workers on 127.0.0.1 and serves the same directory at /static/: a 10 KiB and a
1 MiB file, loaded by wrk (1 thread, 64 kept-alive connections). The servers take turns load by load,
their order rotating each repeat, so a burst of other work on the machine falls on all of them alike;
the tables give the median over the repeats and each server's ratio to nginx. ferricorn and granian are
taken from the interpreter's own bin directory (`--bin` to change it), nginx from /usr/sbin/nginx
(Debian's nginx-light: `apt-get install nginx-light`), each with its access log off, as nginx's
`access_log off` and granian's default. Results: bench/results/<date>-static.md and .json.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPORT_LUA = BENCH / "wrk" / "report.lua"
HOST = "127.0.0.1"
WORKERS = 2
CONNECTIONS = 64
FILES = {"10k": 10 * 1024, "1m": 1024 * 1024}

NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen {host}:{port};
        location /static/ {{ alias {root}/; }}
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def argv_for(name, bin_dir, root, port, work):
    if name == "ferricorn":
        return [str(bin_dir / "ferricorn"), "-w", str(WORKERS), "-b", f"{HOST}:{port}",
                "--static-map", f"/static={root}", "hello:app"]
    if name == "granian":
        return [str(bin_dir / "granian"), "--interface", "wsgi", "--workers", str(WORKERS),
                "--host", HOST, "--port", str(port), "--static-path-route", "/static",
                "--static-path-mount", str(root), "hello:app"]
    conf = work / f"nginx-{port}.conf"
    (work / "tmp").mkdir(exist_ok=True)
    conf.write_text(NGINX_CONF.format(workers=WORKERS, dir=work, host=HOST, port=port, root=root))
    return ["/usr/sbin/nginx", "-c", str(conf), "-p", str(work)]


def fetch(port, path):
    """(status, body) of one GET; http.client decodes chunked bodies (granian sends files chunked)."""
    c = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def start(name, bin_dir, root, work, expect):
    port = free_port()
    log = open(work / f"{name}.log", "ab")
    proc = subprocess.Popen(argv_for(name, bin_dir, root, port, work), cwd=BENCH / "apps",
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            status, body = fetch(port, "/static/10k.bin")
            if status == 200 and hashlib.sha256(body).digest() == expect["10k"]:
                status, body = fetch(port, "/static/1m.bin")
                assert hashlib.sha256(body).digest() == expect["1m"], f"{name}: 1m.bin differs"
                return proc, port
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{name} did not serve /static/10k.bin (log: {work / (name + '.log')})")


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wrk(port, path, duration):
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
            "-s", str(REPORT_LUA), f"http://{HOST}:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk gave no result: {out.stdout[-300:]} {out.stderr[-300:]}")


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--bin", type=Path, default=Path(sys.executable).parent)
    ap.add_argument("--out", default=None, help="results file stem (default <date>-static)")
    args = ap.parse_args()
    for exe in ("wrk", "/usr/sbin/nginx", str(args.bin / "ferricorn"), str(args.bin / "granian")):
        if not shutil.which(exe):
            sys.exit(f"static.py: {exe} not found")
    work = Path(tempfile.mkdtemp(prefix="fcn-bench-static-"))
    work.chmod(0o755)  # nginx's workers run as another user when started by root
    root = work / "root"
    root.mkdir()
    expect = {}
    for key, size in FILES.items():
        data = os.urandom(size)
        (root / f"{key}.bin").write_bytes(data)
        expect[key] = hashlib.sha256(data).digest()
    servers = ["ferricorn", "granian", "nginx"]
    samples = {(s, f): [] for s in servers for f in FILES}
    running = {}
    try:
        for s in servers:
            running[s] = start(s, args.bin, root, work, expect)
        for rep in range(args.repeats):
            order = servers[rep % 3:] + servers[:rep % 3]
            for f in FILES:
                for s in order:
                    r = wrk(running[s][1], f"/static/{f}.bin", args.duration)
                    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
                    r["loadavg"] = loadavg()
                    samples[(s, f)].append(r)
                    print(f"[static] repeat {rep + 1} {f:>3} {s:<9} {r['rps']:>9.0f} req/s "
                          f"p99 {r['p99_us'] / 1000:.2f} ms errors {r['errors']} (load {r['loadavg']})",
                          flush=True)
    finally:
        for proc, _ in running.values():
            stop(proc)
    stamp = datetime.date.today().isoformat()
    stem = args.out or f"{stamp}-static"
    RESULTS.mkdir(exist_ok=True)
    loads = [float(x["loadavg"]) for v in samples.values() for x in v]
    med = {k: statistics.median(x["rps"] for x in v) for k, v in samples.items()}
    p99 = {k: statistics.median(x["p99_us"] for x in v) / 1000 for k, v in samples.items()}
    lines = [
        f"# Static files: ferricorn --static-map vs granian and nginx ({stamp})",
        "",
        f"{WORKERS} workers each, wrk -t1 -c{CONNECTIONS} kept alive, {args.duration:g} s loads, "
        f"{args.repeats} repeats interleaved (order rotating); median req/s (p99 ms), and the ratio to "
        "nginx of the medians. ferricorn and granian run the bench's hello app beside the files; "
        "access logs off. The machine is shared: 2 cores, with other work running during the loads "
        f"(1-minute load average {min(loads):.2f}–{max(loads):.2f}), so read the ratios, not the "
        "absolute numbers.",
        "",
        "| file | ferricorn | granian | nginx | ferricorn ÷ nginx | granian ÷ nginx | ferricorn ÷ granian |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, size in FILES.items():
        cells = [f"{med[(s, f)]:,.0f} ({p99[(s, f)]:.2f})" for s in servers]
        lines.append(
            f"| {size // 1024} KiB | {' | '.join(cells)} | {med[('ferricorn', f)] / med[('nginx', f)]:.2f} | "
            f"{med[('granian', f)] / med[('nginx', f)]:.2f} | "
            f"{med[('ferricorn', f)] / med[('granian', f)]:.2f} |")
    errors = {f"{s} {f}": sum(x["errors"] for x in v) for (s, f), v in samples.items()}
    lines += ["", "Errors (wrk's connect/read/write/status/timeout, all repeats): "
              + ", ".join(f"{k} {v}" for k, v in errors.items()), ""]
    versions = {}
    for name, cmd in (("ferricorn", [str(args.bin / "ferricorn"), "--version"]),
                      ("granian", [str(args.bin / "granian"), "--version"]),
                      ("nginx", ["/usr/sbin/nginx", "-v"])):
        out = subprocess.run(cmd, capture_output=True, text=True)
        versions[name] = (out.stdout + out.stderr).strip().splitlines()[0]
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"date": stamp, "versions": versions, "repeats": args.repeats, "duration": args.duration,
         "samples": {f"{s} {f}": v for (s, f), v in samples.items()}}, indent=1) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
