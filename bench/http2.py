#!/usr/bin/env python3
"""HTTP/2 rows: ferricorn's HTTP/2 beside granian's (`--http 2`) and gunicorn's, loaded with h2load.

    bench/.venv/bin/python bench/http2.py                       # after bench/run has set up bench/.venv
    bench/.venv/bin/python bench/http2.py --repeats 3 --duration 5 --transports h2c,tls --apps hello,flask

Each server runs 2 workers on 127.0.0.1 (the WSGI servers with 4 threads each where they have threads:
ferricorn and gunicorn `-k gthread --threads 4`, granian `--blocking-threads 4`), over cleartext prior
knowledge (`h2c`: ferricorn and gunicorn `--http2-cleartext prior-knowledge`, granian `--http 2`) and over
TLS with ALPN h2 (`tls`: a self-signed certificate made with openssl). The apps are the bench's `hello`
(raw WSGI, 13 B) and `flask` (Flask JSON hello). h2load runs 1 thread, `--clients` connections with
`--streams` concurrent streams each, for `--duration` seconds after a 1 s warm-up. The servers take turns
load by load, their order rotating each repeat, so a burst of other work on the machine falls on all of
them alike; the tables give the median over the repeats and the ratios of the medians. Results:
bench/results/<date>-h2.md and .json. Target (issue 17): h2 hello ≥ 1.2× granian.

A/B of two ferricorn builds: `--ab-bin DIR` adds the server `ferricorn-ab`, the ferricorn installed in DIR
(a venv's bin), to the run; it takes its turns beside the others like any server (`--servers
ferricorn,ferricorn-ab` for the pair alone), and the report gains an A/B table: each build's median, new ÷
old of the medians and of each repeat's pair of loads (the two ran one after the other, so a burst of
other work falls on both alike), named `--ab-label` (default: the directory).
"""

import argparse
import datetime
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from static import free_port, stop  # bench/static.py: a free loopback port; stop a server's group

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
APPS_DIR = BENCH / "apps"
HOST = "127.0.0.1"
WORKERS = 2
THREADS = 4
APPS = {"hello": "hello:app", "flask": "flask_json:app"}
SERVERS = ("ferricorn", "granian", "gunicorn")
AB = "ferricorn-ab"  # the other ferricorn build of an A/B run (--ab-bin)
TRANSPORTS = ("h2c", "tls")
TARGET = ("hello", 1.2)  # ferricorn ÷ granian on this app, both transports


# --------------------------------------------------------------------------- h2load's output


_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.M)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.M)
_TIME_FOR_REQUEST = re.compile(
    r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", re.M)
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_h2load(text):
    """The numbers of one h2load run's output: req/s of 2xx answers, the request counts, status
    classes, the negotiated protocol and the request time (min/max/mean, µs). Raises ValueError when the output has
    no result (h2load failed to connect, or was cut off)."""
    fin = _FINISHED.search(text)
    req = _REQUESTS.search(text)
    if not fin or not req:
        raise ValueError(f"no h2load result in: {text[-300:]!r}")
    total, started, done, succeeded, failed, errored, timeout = (int(x) for x in req.groups())
    seconds = float(fin.group(1)) * _UNIT_US[fin.group(2)] / 1e6
    out = {
        "seconds": seconds,
        "h2load_rps": float(fin.group(3)),  # every answer h2load counted, whatever its status
        "total": total, "started": started, "done": done, "succeeded": succeeded,
        "failed": failed, "errored": errored, "timeout": timeout,
        "protocol": None, "status": None, "request_us": None,
    }
    st = _STATUS.search(text)
    if st:
        out["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), (int(x) for x in st.groups())))
    proto = _PROTOCOL.search(text)
    if proto:
        out["protocol"] = proto.group(1)
    t = _TIME_FOR_REQUEST.search(text)
    if t:
        g = t.groups()
        out["request_us"] = {k: float(g[i]) * _UNIT_US[g[i + 1]]
                             for k, i in (("min", 0), ("max", 2), ("mean", 4))}
    # req/s counts 2xx answers only (as bench/harness.py does with wrk's)
    ok = out["status"]["2xx"] if out["status"] else succeeded
    out["rps"] = ok / seconds if seconds > 0 else 0.0
    # Errors: requests that did not succeed (h2load's "succeeded" is a 2xx or 3xx answer), and 3xx.
    out["errors"] = (total - succeeded) + (out["status"]["3xx"] if out["status"] else 0)
    return out


# --------------------------------------------------------------------------- servers


def exe_for(server, bin_dir, ab_bin):
    """The server's executable: ferricorn-ab is the ferricorn of the A/B build's bin directory."""
    return ab_bin / "ferricorn" if server == AB else bin_dir / server


def argv_for(server, transport, app, port, bin_dir, tls, ab_bin=None):
    module = APPS[app]
    if server == "granian":
        argv = [str(bin_dir / "granian"), "--interface", "wsgi", "--workers", str(WORKERS),
                "--blocking-threads", str(THREADS), "--http", "2", "--host", HOST, "--port", str(port),
                "--no-ws"]
        if transport == "tls":
            argv += ["--ssl-certificate", tls["cert"], "--ssl-keyfile", tls["key"]]
        return argv + [module]
    argv = [str(exe_for(server, bin_dir, ab_bin)), "-k", "gthread", "-w", str(WORKERS), "--threads", str(THREADS),
            "-b", f"{HOST}:{port}", "--http-protocols", "h2,h1"]
    if transport == "tls":
        argv += ["--certfile", tls["cert"], "--keyfile", tls["key"]]
    else:
        argv += ["--http2-cleartext", "prior-knowledge"]
    return argv + [module]


def url(transport, port):
    return f"{'https' if transport == 'tls' else 'http'}://{HOST}:{port}/"


def h2load(target, *args, timeout=120):
    out = subprocess.run(["h2load", *args, target], capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


def start(server, transport, app, bin_dir, tls, work, ab_bin=None):
    port = free_port()
    tag = f"{server}-{transport}-{app}"
    log = open(work / f"{tag}.log", "ab")
    proc = subprocess.Popen(argv_for(server, transport, app, port, bin_dir, tls, ab_bin), cwd=APPS_DIR,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection((HOST, port), timeout=1):
                pass
            last = h2load(url(transport, port), "-n", "20", "-c", "2", "-m", "2", timeout=20)
            r = parse_h2load(last)
            if r["succeeded"] == 20 and r["protocol"] in ("h2", "h2c"):
                return proc, port
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{tag} did not serve HTTP/2 (log: {work / (tag + '.log')}): {last[-200:]}")


def make_tls(work):
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    # granian reads PKCS#8 keys only; openssl req writes PKCS#8 already
    return {"cert": str(cert), "key": str(key)}


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# --------------------------------------------------------------------------- the report


def target_status(ratios, repeats):
    """Whether ferricorn ÷ granian meets the target on every transport measured."""
    if repeats < 3 or not ratios:
        return "insufficient (fewer than 3 repeats)"
    worst = min(ratios.values())
    return ("met" if worst >= TARGET[1] else "not met") + f" (lowest {worst:.2f}×)"


def report(samples, cfg, versions, note):
    """The markdown tables of a run: `samples` maps (server, transport, app) to a list of results."""
    med = {k: statistics.median(x["rps"] for x in v) for k, v in samples.items() if v}
    lat = {k: statistics.median(x["request_us"]["mean"] for x in v if x["request_us"]) / 1000
           for k, v in samples.items() if v and all(x["request_us"] for x in v)}
    loads = [float(x["loadavg"]) for v in samples.values() for x in v] or [0.0]
    stamp = cfg["date"]
    lines = [
        f"# HTTP/2: ferricorn vs granian and gunicorn, h2load ({stamp})",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        f"{WORKERS} workers each ({THREADS} threads: ferricorn and gunicorn gthread, granian "
        f"blocking threads), h2load -t1 -c{cfg['clients']} -m{cfg['streams']}, {cfg['duration']:g} s "
        f"loads after a 1 s warm-up, {cfg['repeats']} repeats interleaved (order rotating); median "
        "req/s (mean request time, ms) and the ratios of the medians. h2c: cleartext prior knowledge; "
        "tls: ALPN h2, self-signed certificate. The machine is shared: 2 cores with other work running "
        f"during the loads (1-minute load average {min(loads):.2f}–{max(loads):.2f}), so read the "
        "ratios, not the absolute numbers.",
        "",
        "| app | transport | ferricorn | granian | gunicorn | ferricorn ÷ granian | ferricorn ÷ gunicorn |",
        "|---|---|---|---|---|---|---|",
    ]
    hello_ratios = {}

    def cell(k):
        if k not in med:
            return "n/a"
        return f"{med[k]:,.0f} ({lat[k]:.2f})" if k in lat else f"{med[k]:,.0f}"

    def ratio(a, b):
        return f"{med[a] / med[b]:.2f}" if a in med and b in med and med[b] else "n/a"

    for app in cfg["apps"]:
        for t in cfg["transports"]:
            f, g, u = (("ferricorn", t, app), ("granian", t, app), ("gunicorn", t, app))
            lines.append(f"| {app} | {t} | {cell(f)} | {cell(g)} | {cell(u)} | {ratio(f, g)} | "
                         f"{ratio(f, u)} |")
            if app == TARGET[0] and f in med and g in med and med[g]:
                hello_ratios[t] = med[f] / med[g]
    status = target_status(hello_ratios, cfg["repeats"])
    lines += ["", f"Target h2 hello ≥ {TARGET[1]}× granian: **{status}**."]
    if any(k[0] == AB for k in samples):
        lines += ab_table(samples, med, cfg)
    errors = {" ".join(k): sum(x["errors"] for x in v) for k, v in samples.items()}
    lines += ["", "Errors (requests not succeeded or not 2xx, all repeats): "
              + ", ".join(f"{k} {v}" for k, v in errors.items())]
    if cfg.get("skipped"):
        lines += ["", "Not run (`--skip`): " + ", ".join(cfg["skipped"])]
    if cfg.get("failed"):
        lines += ["", "Not measured: " + "; ".join(cfg["failed"])]
    lines += ["", "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()), ""]
    return "\n".join(lines), status


def ab_table(samples, med, cfg):
    """The A/B section: this tree's ferricorn (new) beside the --ab-bin build (old), row by row."""
    label = cfg.get("ab_label") or AB
    lines = ["", f"## A/B: ferricorn (new) ÷ {label} (old)", "",
             "Median req/s (min–max) of each build, new ÷ old of the medians, and new ÷ old of each "
             "repeat's pair of loads.", "",
             "| app | transport | new | old | new ÷ old | per repeat |", "|---|---|---|---|---|---|"]
    for app in cfg["apps"]:
        for t in cfg["transports"]:
            a, b = samples.get(("ferricorn", t, app), []), samples.get((AB, t, app), [])
            if not a or not b:
                lines.append(f"| {app} | {t} | n/a | n/a | n/a | |")
                continue

            def rng(v):
                r = [x["rps"] for x in v]
                return f"{statistics.median(r):,.0f} ({min(r):,.0f}–{max(r):,.0f})"
            by_rep = {x["repeat"]: x["rps"] for x in b}
            pairs = [f"{x['rps'] / by_rep[x['repeat']]:.2f}" for x in a
                     if by_rep.get(x["repeat"])]
            m_a, m_b = med[("ferricorn", t, app)], med[(AB, t, app)]
            lines.append(f"| {app} | {t} | {rng(a)} | {rng(b)} | "
                         f"{m_a / m_b if m_b else 0:.3f} | {', '.join(pairs)} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
    ap.add_argument("--apps", default="hello,flask")
    ap.add_argument("--transports", default="h2c,tls")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--bin", type=Path, default=Path(sys.executable).parent)
    ap.add_argument("--out", default=None, help="results file stem (default <date>-h2)")
    ap.add_argument("--note", default="", help="a sentence at the top of the report")
    ap.add_argument("--ab-bin", type=Path, default=None,
                    help="bin directory of a second ferricorn build: adds the server ferricorn-ab")
    ap.add_argument("--ab-label", default=None, help="the A/B build's name in the report")
    ap.add_argument("--skip", default="",
                    help="server:transport pairs not to run, comma-separated (gunicorn:tls: its TLS h2 "
                         "has stalled h2load past a minute)")
    args = ap.parse_args(argv)
    apps = [a for a in args.apps.split(",") if a]
    transports = [t for t in args.transports.split(",") if t]
    servers = [s for s in args.servers.split(",") if s]
    known_servers = SERVERS + ((AB,) if args.ab_bin else ())
    if args.ab_bin and AB not in servers:
        servers.append(AB)
    for bad, known, what in ((apps, APPS, "app"), (transports, TRANSPORTS, "transport"),
                             (servers, known_servers, "server")):
        for x in bad:
            if x not in known:
                sys.exit(f"http2.py: unknown {what} {x!r} (known: {', '.join(known)})")
    for exe in ["h2load", "openssl"] + [str(exe_for(s, args.bin, args.ab_bin)) for s in servers]:
        if not shutil.which(exe):
            sys.exit(f"http2.py: {exe} not found")
    work = Path(tempfile.mkdtemp(prefix="fcn-bench-h2-"))
    tls = make_tls(work) if "tls" in transports else None
    skip = {tuple(x.split(":", 1)) for x in args.skip.split(",") if ":" in x}
    samples = {(s, t, a): [] for s in servers for t in transports for a in apps
               if (s, t) not in skip}
    failed = []
    for app in apps:
        for t in transports:
            running = {}
            try:
                for s in servers:
                    if (s, t) in skip:
                        continue
                    try:
                        running[s] = start(s, t, app, args.bin, tls, work, args.ab_bin)
                    except RuntimeError as e:
                        failed.append(str(e))
                        print(f"[h2] {e}", flush=True)
                for rep in range(args.repeats):
                    names = [s for s in servers if s in running]
                    k = rep % max(1, len(names))
                    for s in names[k:] + names[:k]:
                        try:
                            out = h2load(url(t, running[s][1]), "-t1", f"-c{args.clients}",
                                         f"-m{args.streams}", "--warm-up-time=1",
                                         f"-D{args.duration:g}", timeout=args.duration + 60)
                            r = parse_h2load(out)
                        except subprocess.TimeoutExpired:
                            failed.append(f"{s} {t} {app} repeat {rep + 1}: h2load did not finish "
                                          f"within {args.duration + 60:g} s (the server stalled)")
                            continue
                        except ValueError as e:
                            failed.append(f"{s} {t} {app} repeat {rep + 1}: {e}")
                            continue
                        r["loadavg"] = loadavg()
                        r["repeat"] = rep + 1
                        samples[(s, t, app)].append(r)
                        print(f"[h2] repeat {rep + 1} {app:<5} {t:<3} {s:<9} {r['rps']:>9.0f} req/s "
                              f"errors {r['errors']} (load {r['loadavg']})", flush=True)
            finally:
                for proc, _ in running.values():
                    stop(proc)
    stamp = datetime.date.today().isoformat()
    versions = {}
    for s in servers:
        out = subprocess.run([str(exe_for(s, args.bin, args.ab_bin)), "--version"],
                             capture_output=True, text=True)
        versions[s] = ((out.stdout + out.stderr).strip().splitlines() or ["?"])[0]
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    versions["h2load"] = (out.stdout.strip().splitlines() or ["?"])[0]
    cfg = {"date": stamp, "repeats": args.repeats, "duration": args.duration, "clients": args.clients,
           "streams": args.streams, "apps": apps, "transports": transports, "failed": failed,
           "ab_label": args.ab_label or (str(args.ab_bin) if args.ab_bin else None),
           "skipped": sorted(f"{s}:{t}" for s, t in skip)}
    text, status = report(samples, cfg, versions, args.note)
    RESULTS.mkdir(exist_ok=True)
    stem = args.out or f"{stamp}-h2"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {**cfg, "versions": versions, "target": status,
         "samples": {" ".join(k): v for k, v in samples.items()}}, indent=1) + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
