#!/usr/bin/env python3
"""ferricorn benchmark harness: every server against every app with wrk, on 127.0.0.1 only.

Run through bench/run, which prepares bench/.venv. See bench/README.md for the method. In A/B mode
(`--ab REF` / `--ab-venv PATH`) a second ferricorn build runs beside this tree's, interleaved with it.
"""

import argparse
import datetime
import http.client
import io
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APPS_DIR = BENCH / "apps"
WRK_DIR = BENCH / "wrk"
WORK = BENCH / "work"
LOGS = WORK / "logs"
RESULTS = BENCH / "results"
VENV_BIN = Path(sys.executable).parent  # bench/.venv/bin when run through bench/run
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
WORKERS = 2
# `--tls`: every server serves HTTPS with this certificate and key (made in bench/work), and every
# client speaks TLS. None: plain HTTP.
TLS = None
# Each family's flags for a certificate and its key.
TLS_FLAGS = {"gunicorn": ("--certfile", "--keyfile"), "ferricorn": ("--certfile", "--keyfile"),
             "granian": ("--ssl-certificate", "--ssl-keyfile"),
             "uvicorn": ("--ssl-certfile", "--ssl-keyfile"), "hypercorn": ("--certfile", "--keyfile")}


# --------------------------------------------------------------------------- apps and servers


@dataclass
class App:
    name: str
    module: str
    title: str
    modes: tuple  # "keepalive" and/or "close"
    connections: int = 64
    threads: int = 4  # Python threads for the servers that have them
    method: str = "GET"
    body: bytes = b""
    expect_len: int = None  # body length of a correct response (None: not checked)
    script: str = None  # wrk lua script in bench/wrk/
    efficiency: bool = True  # False when the app waits rather than computes
    interface: str = "wsgi"  # wsgi | asgi: which servers run it
    ws_connections: dict = None  # websocket rows: {mode: connections}; the load is bench/wsload


POST_BODY = b"x" * 102400
WS_MODES = {"ws16": 16, "ws256": 256}

APPS = [
    App("hello", "hello:app", "hello (raw WSGI, 13 B)", ("keepalive", "close"), expect_len=13),
    App("flask", "flask_json:app", "Flask JSON hello", ("keepalive", "close")),
    App("big", "big:app", "100 KiB response", ("keepalive",), expect_len=102400),
    App("echo", "echo:app", "100 KiB POST echo", ("keepalive",), method="POST", body=POST_BODY,
        expect_len=102400, script="post.lua"),
    App("file", "file:app", "1 MiB file (file_wrapper)", ("keepalive",), expect_len=MIB),
    App("io", "io_sleep:app", "I/O-bound (sleep 10 ms), c256", ("keepalive", "close"),
        connections=256, threads=32, expect_len=13, efficiency=False),
    # ASGI (bench/apps/asgi_*.py), run by the ASGI servers only
    App("asgi-hello", "asgi_hello:app", "ASGI hello (raw ASGI, 13 B)", ("keepalive", "close"), expect_len=13,
        interface="asgi"),
    App("fastapi", "asgi_fastapi:app", "FastAPI JSON hello", ("keepalive",), interface="asgi"),
    App("asgi-stream", "asgi_stream:app", "ASGI 100 KiB streamed (4 body messages)", ("keepalive",),
        expect_len=102400, interface="asgi"),
    App("asgi-echo", "asgi_echo:app", "ASGI 100 KiB POST echo", ("keepalive",), method="POST",
        body=POST_BODY, expect_len=102400, script="post.lua", interface="asgi"),
    App("asgi-file", "asgi_file:app", "ASGI 1 MiB file (pathsend)", ("keepalive",), expect_len=MIB,
        interface="asgi"),
    App("asgi-sleep", "asgi_sleep:app", "ASGI asyncio.sleep(0.01), c256", ("keepalive",), connections=256,
        expect_len=13, efficiency=False, interface="asgi"),
    App("asgi-ws", "asgi_ws:app", "websocket echo (13 B text messages)", ("ws16", "ws256"), expect_len=13,
        efficiency=False, interface="asgi", ws_connections=dict(WS_MODES)),
]
APP_GROUPS = {"wsgi": [a.name for a in APPS if a.interface == "wsgi"],
              "asgi": [a.name for a in APPS if a.interface == "asgi"]}


@dataclass
class Server:
    name: str
    family: str  # gunicorn | granian | ferricorn
    label: str
    exe: str
    args: list  # between the executable and the bind/app arguments
    threads_flag: str = None  # the flag that takes app.threads, if this config has threads
    unavailable: str = None  # reason, when it cannot run
    start_failures: int = 0
    bin_dir: Path = VENV_BIN  # where `exe` is installed
    twin_of: str = None  # A/B mode: the name of this tree's config that this other build is compared with
    interface: str = "wsgi"  # wsgi | asgi: which apps it runs
    bind_flags: bool = False  # --host H --port P (granian, uvicorn) instead of -b H:P

    def argv(self, app, port):
        argv = [str(self.bin_dir / self.exe)] + self.args
        if self.threads_flag:
            argv += [self.threads_flag, str(app.threads)]
        if self.bind_flags or self.family == "granian":
            argv += ["--host", HOST, "--port", str(port)]
        else:
            argv += ["-b", f"{HOST}:{port}"]
        if TLS:
            cert_flag, key_flag = TLS_FLAGS[self.family]
            argv += [cert_flag, TLS["cert"], key_flag, TLS["key"]]
        return argv + [app.module]


def make_servers():
    w = str(WORKERS)
    return [
        Server("gunicorn-sync", "gunicorn", "gunicorn sync", "gunicorn", ["-k", "sync", "-w", w]),
        Server("gunicorn-gthread", "gunicorn", "gunicorn gthread", "gunicorn",
               ["-k", "gthread", "-w", w], threads_flag="--threads"),
        Server("granian", "granian", "granian", "granian", ["--interface", "wsgi", "--workers", w]),
        Server("granian-bt", "granian", "granian bt", "granian", ["--interface", "wsgi", "--workers", w],
               threads_flag="--blocking-threads"),
        Server("ferricorn-sync", "ferricorn", "ferricorn sync", "ferricorn", ["-k", "sync", "-w", w]),
        Server("ferricorn-gthread", "ferricorn", "ferricorn gthread", "ferricorn",
               ["-k", "gthread", "-w", w], threads_flag="--threads"),
        # ASGI: each server in its fastest documented configuration (bench/README.md says why)
        Server("granian-asgi", "granian", "granian asgi", "granian",
               ["--interface", "asgi", "--workers", w] + GRANIAN_ASGI_TUNING, interface="asgi"),
        Server("granian-asgi-rt", "granian", "granian asgi rust-task", "granian",
               ["--interface", "asgi", "--workers", w] + GRANIAN_ASGI_TUNING + ["--task-impl", "rust"],
               interface="asgi"),
        Server("uvicorn", "uvicorn", "uvicorn", "uvicorn",
               ["--workers", w, "--http", "httptools", "--loop", "uvloop", "--ws", "websockets",
                "--no-access-log", "--log-level", "warning"], interface="asgi", bind_flags=True),
        Server("gunicorn-asgi", "gunicorn", "gunicorn asgi", "gunicorn",
               ["-k", "asgi", "-w", w, "--asgi-loop", "uvloop"], interface="asgi"),
        Server("hypercorn", "hypercorn", "hypercorn", "hypercorn", ["-w", w, "-k", "uvloop"], interface="asgi"),
        Server("ferricorn-asgi", "ferricorn", "ferricorn asgi", "ferricorn", ["-k", "asgi", "-w", w],
               interface="asgi"),
    ]


# granian's ASGI interface, tuned: uvloop, HTTP/1 only (no HTTP/2 detection per connection), one
# single-threaded Rust runtime per worker. granian-asgi-rt adds its Rust task implementation (Python
# <= 3.11): faster on hello and FastAPI, slower with request bodies and many websockets, so both run and
# the tables compare with the better of the two per row (bench/README.md has the comparison).
GRANIAN_ASGI_TUNING = ["--loop", "uvloop", "--http", "1", "--runtime-mode", "st"]
SERVER_GROUPS = {"wsgi": ["gunicorn-sync", "gunicorn-gthread", "granian", "granian-bt", "ferricorn-sync",
                          "ferricorn-gthread"],
                 "asgi": ["granian-asgi", "granian-asgi-rt", "uvicorn", "gunicorn-asgi", "hypercorn",
                          "ferricorn-asgi"]}


def ab_twins(servers, ab):
    """A/B mode: a copy of every ferricorn config that runs the other build (`ab["bin"]`), named
    `<config>@<label>`, placed right after the config it is compared with."""
    out = []
    for s in servers:
        out.append(s)
        if s.family == "ferricorn":
            out.append(Server(f"{s.name}@{ab['label']}", s.family, f"{s.label} @{ab['label']}", s.exe,
                              list(s.args), threads_flag=s.threads_flag, bin_dir=Path(ab["bin"]),
                              twin_of=s.name, interface=s.interface))
    return out


def check_available(server):
    if not (server.bin_dir / server.exe).exists():
        if server.twin_of:
            where = " (A/B build; see bench/work/ferricorn-ab-build.log)"
        elif server.family == "ferricorn":
            where = " (build failed? see bench/work/ferricorn-build.log)"
        else:
            where = ""
        server.unavailable = f"`{server.exe}` not installed in {server.bin_dir.parent}{where}"


# --------------------------------------------------------------------------- /proc helpers


def stat_of(pid):
    """(command name, the fields after it) of /proc/<pid>/stat, or None if the process is gone. The
    name is in parentheses and may hold spaces, so the fields start after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.find("(") + 1:raw.rfind(")")], raw[raw.rfind(")") + 2:].split()


def read_stat(pid):
    """(ppid, utime+stime ticks, starttime) of a process, or None if it is gone."""
    st = stat_of(pid)
    if st is None:
        return None
    fields = st[1]
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def process_tree(root):
    """{pid: starttime} of root and all its descendants."""
    snap = proc_snapshot()
    if root not in snap:
        return {}
    return {pid: snap[pid][4] for pid in descendants(snap, root)}


def proc_snapshot():
    """{pid: (comm, ppid, own ticks, reaped children's ticks, starttime)} of every process, from
    /proc/<pid>/stat: who is using the CPU besides the benchmark."""
    out = {}
    for entry in os.listdir("/proc"):
        st = stat_of(entry) if entry.isdigit() else None
        if st is None:
            continue
        comm, fields = st
        out[int(entry)] = (comm, int(fields[1]), int(fields[11]) + int(fields[12]),
                           int(fields[13]) + int(fields[14]), int(fields[19]))
    return out


def descendants(snapshot, root):
    """root and every pid below it in a proc_snapshot."""
    tree, frontier = {root}, [root]
    children = {}
    for pid, st in snapshot.items():
        children.setdefault(st[1], []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def other_cpu(before, after, exclude, seconds, top=5):
    """CPU the processes outside `exclude` (pids) used between two proc_snapshots, by command name,
    in cores (CPU seconds ÷ `seconds`), busiest first, at most `top` names. A process's own ticks
    count, plus what its descendants that exited in between used in between: its reaped children's
    ticks grew by their whole lives' CPU, so what each of them (and their own descendants that exited
    with them) had used before is taken off. Short compiler runs of a build are charged to the build
    tool or shell that started them. No process is charged more than all CPUs for `seconds`."""
    def same(pid):
        return pid in after and after[pid][4] == before[pid][4]

    gone = {}  # surviving ancestor -> ticks its descendants that exited in between had used before
    for pid, st in before.items():
        if same(pid):
            continue
        heir, hops = st[1], 0
        while heir in before and not same(heir) and hops < 64:  # up through ancestors that exited too
            heir, hops = before[heir][1], hops + 1
        gone[heir] = gone.get(heir, 0) + st[2] + st[3]
    cap = seconds * (os.cpu_count() or 1) * CLK_TCK
    by_name = {}
    for pid, (comm, ppid, own, reaped, start) in after.items():
        if pid in exclude:
            continue
        old = before.get(pid)
        if old is not None and old[4] != start:
            old = None  # pid reused
        ticks = own - (old[2] if old else 0)
        if old:
            ticks += min(cap, max(0, reaped - old[3] - gone.get(pid, 0)))
        if ticks > 0:
            by_name[comm] = by_name.get(comm, 0) + ticks
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])
    return [{"name": name, "cores": round(ticks / CLK_TCK / seconds, 3)} for name, ticks in ranked[:top]
            if seconds > 0]


def cpu_ticks(pids):
    out = {}
    for pid in pids:
        st = read_stat(pid)
        if st:
            out[pid] = st[1]
    return out


def memory_mib(pids):
    """Rss and Pss (MiB) summed over pids, from /proc/<pid>/smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss": round(rss / 1024, 1), "pss": round(pss / 1024, 1), "procs": len(pids)}


def tree_memory(root):
    return memory_mib(process_tree(root))


# --------------------------------------------------------------------------- server lifecycle


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(server, app, tag):
    LOGS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(LOGS / f"{log_name(tag)}.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(APPS_DIR), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(server.argv(app, port), cwd=APPS_DIR, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc, port, t0


def make_tls():
    """`--tls`: a self-signed certificate for 127.0.0.1 in bench/work (made once, with openssl)."""
    cert, key = WORK / "tls-cert.pem", WORK / "tls-key.pem"
    if not (cert.exists() and key.exists()):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "365", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
    return {"cert": str(cert), "key": str(key)}


def client_tls_context():
    """The clients' TLS context under `--tls`: the bench's own certificate is not verified."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_socket(port, timeout):
    """A connected client socket, TLS under `--tls`."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    if not TLS:
        return s
    try:
        return client_tls_context().wrap_socket(s, server_hostname=HOST)
    except BaseException:
        s.close()
        raise


def probe(port, timeout=2):
    """Status code of GET / (None if the server does not answer yet)."""
    try:
        with client_socket(port, timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
        return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
    except (OSError, ValueError, IndexError):
        return None


def wait_first_200(proc, port, t0, timeout):
    """Seconds from spawn to the first 200, or raises with the reason."""
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before serving")
        if probe(port) == 200:
            return time.perf_counter() - t0
        time.sleep(0.005)
    raise RuntimeError(f"no 200 within {timeout} s")


def drain(port, timeout=30):
    """Wait until a fresh request is answered, so the queue a finished load left behind (connections
    wrk opened but the server had not yet accepted) is worked off before the next measurement."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if probe(port, timeout=timeout) == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server still busy {timeout} s after a load")


def check_response(app, port):
    """One real request: the app must answer 200 with the expected body. Returns notes for the record
    (the ASGI file app's `x-bench-path`: pathsend or read); a websocket app also gets a short wsload
    run that must echo without errors."""
    if TLS:
        conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=client_tls_context())
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {"Content-Type": "application/octet-stream"} if app.body else {}
        conn.request(app.method, "/", body=app.body or None, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    notes = {}
    if resp.getheader("x-bench-path"):
        notes["file_path"] = resp.getheader("x-bench-path")
    if app.ws_connections:
        w = run_wsload(port, 1, 0.2)
        if w["errors"] or w["connect_errors"] or not w["messages"]:
            raise RuntimeError(f"websocket sanity check failed: {w}")
    if resp.status != 200:
        raise RuntimeError(f"sanity request got {resp.status}")
    if app.expect_len is not None and len(body) != app.expect_len:
        raise RuntimeError(f"sanity request got {len(body)} bytes, expected {app.expect_len}")
    if app.body and body != app.body:
        raise RuntimeError("echo body differs from the request body")
    return notes


def stop_server(proc):
    """TERM the master, then KILL it and any leftover descendant, each by PID."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    leftovers = {pid: start for pid, start in tree.items() if pid != proc.pid}
    deadline = time.time() + 5
    while leftovers and time.time() < deadline:
        leftovers = {pid: start for pid, start in leftovers.items() if alive(pid, start)}
        time.sleep(0.05)
    for pid, start in leftovers.items():
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid, start):
    st = read_stat(pid)
    return st is not None and st[2] == start


def log_name(tag):
    """A server log's file name: an A/B label may be a branch name with slashes."""
    return tag.replace("/", "_")


def log_tail(tag, lines=3):
    try:
        text = (LOGS / f"{log_name(tag)}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# --------------------------------------------------------------------------- load generation


def wrk_script(app):
    """The lua script for an app: its own (if any) followed by the JSON reporter."""
    parts = [(WRK_DIR / app.script).read_text()] if app.script else []
    parts.append((WRK_DIR / "report.lua").read_text())
    WORK.mkdir(exist_ok=True)
    path = WORK / f"wrk-{app.name}.lua"
    path.write_text("\n".join(parts))
    return path


WSLOAD = Path(os.environ.get("WSLOAD") or WORK / "wsload-target" / "release" / "wsload")


def run_wsload(port, connections, duration):
    """bench/wsload: `connections` websocket sessions, each sending a 13-byte text message and
    awaiting its echo in a loop for `duration` seconds. Its JSON line, as a dict."""
    if not WSLOAD.exists():
        raise RuntimeError(f"{WSLOAD} not built (bench/run builds bench/wsload with cargo)")
    argv = [str(WSLOAD), "--url", f"ws://{HOST}:{port}/", "--connections", str(connections),
            "--duration", f"{duration:g}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WSLOAD_JSON "):
            return json.loads(line[len("WSLOAD_JSON "):])
    raise RuntimeError(f"wsload gave no result: {out.stdout[-300:]} {out.stderr[-300:]}")


def run_load(app, port, mode, duration):
    """One load of `mode`, in wrk's result shape (a websocket load's messages count as requests)."""
    if mode not in WS_MODES:
        return run_wrk(app, port, mode, duration)
    w = run_wsload(port, app.ws_connections[mode], duration)
    return {"requests": w["messages"], "duration_us": w["duration_us"], "bytes": 0,
            "connect": w["connect_errors"], "read": w["errors"], "write": 0, "status": 0, "timeout": 0,
            "p50_us": w["p50_us"], "p90_us": w["p90_us"], "p99_us": w["p99_us"], "max_us": w["max_us"],
            "mean_us": None, "connected": w["connected"], "first_error": w["first_error"]}


def warm_up(app, port, duration):
    if app.ws_connections:
        run_wsload(port, min(app.ws_connections.values()), duration)
    else:
        run_wrk(app, port, "keepalive", duration)


def run_wrk(app, port, mode, duration):
    argv = ["wrk", "-t1", f"-c{app.connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
            "-s", str(wrk_script(app))]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv.append(f"{'https' if TLS else 'http'}://{HOST}:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"wrk gave no result: {out.stdout[-300:]} {out.stderr[-300:]}")


def accept_queue(port):
    """Connections waiting in the accept queue of the listener on 127.0.0.1:port (rx_queue of its
    LISTEN line in /proc/net/tcp), or None if there is no such listener."""
    key = f":{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A" and parts[1].endswith(key):
                return int(parts[4].split(":")[1], 16)
    return None


class QueueSampler(threading.Thread):
    """Samples accept_queue(port) 10 times a second, skipping the first second of the load (the first
    quarter of a load shorter than 2 s: an A/B slice).

    wrk counts a connection the server never serves neither as an error nor in its latencies; a
    keep-alive load on a server that leaves connections unaccepted shows up here instead."""

    def __init__(self, port, skip=1.0):
        super().__init__(daemon=True)
        self.port, self.skip, self.samples, self.stop = port, skip, [], threading.Event()

    def run(self):
        if self.stop.wait(self.skip):
            return
        while not self.stop.wait(0.1):
            n = accept_queue(self.port)
            if n is not None:
                self.samples.append(n)

    def result(self):
        self.stop.set()
        self.join()
        s = self.samples
        return {"median": statistics.median(s), "max": max(s)} if s else {"median": 0, "max": 0}


def machine_busy():
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat; steal included: time the
    hypervisor gave to other guests)."""
    return machine_cpu()[0]


def machine_cpu():
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat's cpu line."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK, v[7] / CLK_TCK  # user nice system irq softirq steal


@dataclass
class Quiet:
    """The wait for a quiet machine before each measured load: until everything but this harness and
    its children (the server, wrk) uses less than `below` cores over one `window`, or `bound`
    seconds have passed (0: no wait)."""
    below: float = 0.2
    bound: float = 30.0
    window: float = 1.0


def wait_quiet(quiet):
    """Waits as Quiet says. Returns what the record keeps: seconds waited, whether the machine got
    quiet, the other cores of the last window, and the processes that used CPU during the wait."""
    if quiet.bound <= 0:
        return None
    me = os.getpid()
    start = time.perf_counter()
    first = None
    while True:
        t0, busy0, snap0 = time.perf_counter(), machine_busy(), proc_snapshot()
        if first is None:
            first = (t0, snap0)
        time.sleep(quiet.window)
        t1, busy1, snap1 = time.perf_counter(), machine_busy(), proc_snapshot()
        mine = descendants(snap0, me) | descendants(snap1, me)
        own = sum(snap1[p][2] - snap0[p][2] for p in mine if p in snap0 and p in snap1
                  and snap0[p][4] == snap1[p][4]) / CLK_TCK
        others = max(0.0, busy1 - busy0 - own) / (t1 - t0)
        waited = t1 - start
        if others < quiet.below or waited >= quiet.bound:
            break
    return {"waited_s": round(waited, 1), "quiet": others < quiet.below, "other_cores": round(others, 3),
            "top": other_cpu(first[1], snap1, mine, t1 - first[0])}


def own_cpu():
    """CPU seconds of this harness and of its waited-for children (wrk)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def measure_load(proc, app, port, mode, duration):
    """One timed wrk load plus the CPU the server's process tree used, its accept queue and the
    cores everything else on the machine used meanwhile (other processes and the hypervisor)."""
    drain(port)
    ts0, snap0 = time.perf_counter(), proc_snapshot()
    before = cpu_ticks(process_tree(proc.pid))
    sampler = QueueSampler(port, skip=1.0 if duration >= 2 else duration / 4)
    sampler.start()
    (busy0, steal0), own0 = machine_cpu(), own_cpu()
    t0 = time.perf_counter()
    try:
        w = run_load(app, port, mode, duration)
    finally:
        queue = sampler.result()
    wall = time.perf_counter() - t0
    (busy, steal), own = machine_cpu(), own_cpu()
    busy, steal, own = busy - busy0, steal - steal0, own - own0
    after = cpu_ticks(process_tree(proc.pid))
    snap1 = proc_snapshot()
    me = os.getpid()
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / CLK_TCK
    out = load_numbers(w, wall)
    out.update({
        "cores": used / wall,
        "cpu_s": used,
        # CPU time per answer: far steadier than requests/s on a shared machine (A/B table)
        "cpu_us_per_req": used / out["requests"] * 1e6 if out["requests"] else None,
        # cores used by neither the server, wrk nor the harness: how disturbed this sample was
        "other_cores": max(0.0, busy - used - own) / wall,
        "steal_cores": steal / wall,
        # ... and by whom (processes outside this harness's tree, busiest first)
        "others_top": other_cpu(snap0, snap1, descendants(snap0, me) | descendants(snap1, me),
                                time.perf_counter() - ts0),
        "accept_queue": queue,
        "wrk": w,
    })
    return out


def load_numbers(w, wall):
    """Requests/s and errors of one load from wrk's (or wsload's) JSON line. Only answers count:
    wrk's `requests` includes responses with status >= 400 (its `status` counter), which are taken
    out; the rest (2xx; these apps send no 1xx or 3xx, and the sanity request checked for 200)
    make `requests` and `rps`."""
    seconds = w["duration_us"] / 1e6
    socket_errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    good = max(0, w["requests"] - w["status"])
    return {
        "rps": good / seconds if seconds else 0.0,
        "requests": good,
        "responses": w["requests"],
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "errors": socket_errors + w["status"],
        "socket_errors": socket_errors,
        "non2xx": w["status"],
        "wall_s": wall,
    }


def combine_slices(slices):
    """One load's numbers from the slices of an A/B pair's alternating loads (run_pair): sums for
    counts and times, so requests/s, cores and CPU per request are those of the whole; p50 and p99
    are the medians of the slices' (wrk reports percentiles, which cannot be merged)."""
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["wrk"]["duration_us"] for s in slices) / 1e6
    cpu, wall = sum(s["cpu_s"] for s in slices), sum(s["wall_s"] for s in slices)
    queues = [s["accept_queue"] for s in slices]
    others = {}
    for s in slices:
        for o in s.get("others_top", []):
            others[o["name"]] = others.get(o["name"], 0.0) + o["cores"] * s["wall_s"]
    return {
        "rps": requests / seconds if seconds else 0.0,
        "requests": requests,
        "responses": sum(s.get("responses", s["requests"]) for s in slices),
        "p50_ms": statistics.median(s["p50_ms"] for s in slices),
        "p99_ms": statistics.median(s["p99_ms"] for s in slices),
        "errors": sum(s["errors"] for s in slices),
        "socket_errors": sum(s["socket_errors"] for s in slices),
        "non2xx": sum(s["non2xx"] for s in slices),
        "cores": cpu / wall if wall else 0.0,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_req": cpu / requests * 1e6 if requests else None,
        "other_cores": sum(s["other_cores"] * s["wall_s"] for s in slices) / wall if wall else 0.0,
        "steal_cores": sum(s.get("steal_cores", 0.0) * s["wall_s"] for s in slices) / wall if wall else 0.0,
        "others_top": [{"name": n, "cores": round(c / wall, 3)} for n, c in
                       sorted(others.items(), key=lambda kv: -kv[1])[:5]] if wall else [],
        "accept_queue": {"median": statistics.median(q["median"] for q in queues),
                         "max": max(q["max"] for q in queues)},
        "slices": [{k: s[k] for k in ("rps", "requests", "p99_ms", "cpu_us_per_req", "other_cores",
                                      "errors")} for s in slices],
    }


# --------------------------------------------------------------------------- one server × one app


def run_instance(server, app, cfg, tag):
    """Start, check, measure idle memory, warm up, run each mode's load, measure memory, stop."""
    record = {"server": server.name, "app": app.name, "loadavg": loadavg()}
    proc, port, t0 = start_server(server, app, tag)
    try:
        record["startup_ms"] = wait_first_200(proc, port, t0, cfg.start_timeout) * 1000
        record.update(check_response(app, port))
        time.sleep(cfg.settle)
        record["idle"] = tree_memory(proc.pid)
        warm_up(app, port, cfg.warmup)
        record["loads"] = {}
        for mode in app.modes:  # a mode measured before a failure keeps its numbers
            drain(port)
            quiet = wait_quiet(cfg.quiet)
            record["loads"][mode] = measure_load(proc, app, port, mode, cfg.duration)
            if quiet:
                record["loads"][mode]["quiet"] = quiet
        drain(port)
        time.sleep(cfg.settle)
        record["after"] = tree_memory(proc.pid)
    except Exception as exc:  # noqa: BLE001 - any failure becomes this row's "n/a" with a reason
        record["error"] = f"{exc} [log: {log_tail(tag)}]"
    finally:
        stop_server(proc)
    return record


@dataclass
class Instance:
    """One running server of an A/B pair (run_pair)."""
    server: Server
    tag: str
    record: dict
    proc: subprocess.Popen = None
    port: int = None

    def attempt(self, step):
        """Run step(self) unless this instance has failed; a failure becomes its record's error."""
        if "error" in self.record:
            return
        try:
            step(self)
        except Exception as exc:  # noqa: BLE001 - any failure becomes this row's "n/a" with a reason
            self.record["error"] = f"{exc} [log: {log_tail(self.tag)}]"


def run_pair(pair, app, cfg, rep):
    """A/B: the two builds of one config on one app, both up at once. Each is started (one after the
    other, so their startups do not compete), checked and warmed up; then each mode's load is cut
    into slices of about cfg.ab_slice seconds that alternate between the two, A B B A A B ..., so a
    burst of other work on the machine falls on both builds alike. Returns the two records."""
    insts = [Instance(s, f"r{rep + 1}-{app.name}-{s.name}",
                      {"server": s.name, "app": app.name, "loadavg": loadavg()}) for s in pair]

    def start(i):
        i.proc, i.port, t0 = start_server(i.server, app, i.tag)
        i.record["startup_ms"] = wait_first_200(i.proc, i.port, t0, cfg.start_timeout) * 1000
        i.record.update(check_response(app, i.port))

    try:
        for i in insts:
            i.attempt(start)
        time.sleep(cfg.settle)
        for i in insts:
            i.attempt(lambda i: i.record.__setitem__("idle", tree_memory(i.proc.pid)))
        for i in insts:
            i.attempt(lambda i: warm_up(app, i.port, cfg.warmup))
        n = max(1, round(cfg.duration / cfg.ab_slice))
        for mode in app.modes:
            for i in insts:
                i.attempt(lambda i: drain(i.port))
            quiet = wait_quiet(cfg.quiet)  # once for both builds: their slices follow each other
            slices = {id(i): [] for i in insts}
            for k in range(n):
                for i in insts if k % 2 == 0 else insts[::-1]:
                    i.attempt(lambda i: slices[id(i)].append(
                        measure_load(i.proc, app, i.port, mode, cfg.duration / n)))
            for i in insts:
                i.attempt(lambda i: i.record.setdefault("loads", {}).__setitem__(
                    mode, dict(combine_slices(slices[id(i)]), **({"quiet": quiet} if quiet else {}))))
        for i in insts:
            i.attempt(lambda i: drain(i.port))
        time.sleep(cfg.settle)
        for i in insts:
            i.attempt(lambda i: i.record.__setitem__("after", tree_memory(i.proc.pid)))
    finally:
        for i in insts:
            if i.proc is not None:
                stop_server(i.proc)
    return [i.record for i in insts]


def memory_growth(server, cfg):
    """hello: idle memory, then `loads` keep-alive loads of `seconds` each, then memory again."""
    app = app_by_name("hello" if server.interface == "wsgi" else "asgi-hello")
    tag = f"memtest-{server.name}"
    record = {"server": server.name}
    proc, port, t0 = start_server(server, app, tag)
    try:
        wait_first_200(proc, port, t0, cfg.start_timeout)
        time.sleep(cfg.settle)
        record["idle"] = tree_memory(proc.pid)
        record["rps"] = [measure_load(proc, app, port, "keepalive", cfg.mem_seconds)["rps"]
                         for _ in range(cfg.mem_loads)]
        drain(port)
        time.sleep(cfg.settle)
        record["after"] = tree_memory(proc.pid)
        record["growth_rss"] = record["after"]["rss"] / record["idle"]["rss"] - 1
        record["growth_pss"] = record["after"]["pss"] / record["idle"]["pss"] - 1
    except Exception as exc:  # noqa: BLE001
        record["error"] = f"{exc} [log: {log_tail(tag)}]"
    finally:
        stop_server(proc)
    return record


# --------------------------------------------------------------------------- Python ceiling


def ceiling_environ(app):
    """An environ like a server builds for `GET /` (or the echo POST) on 127.0.0.1."""
    from wsgiref.util import FileWrapper

    env = {
        "REQUEST_METHOD": app.method, "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": HOST, "SERVER_PORT": "8000",
        "REMOTE_ADDR": HOST, "REMOTE_PORT": "50000", "HTTP_HOST": f"{HOST}:8000",
        "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "wsgi.file_wrapper": FileWrapper,
    }
    if app.body:
        env.update(CONTENT_LENGTH=str(len(app.body)), CONTENT_TYPE="application/octet-stream")
    return env


def asgi_ceiling(app, seconds):
    """The ASGI ceiling: `await app(scope, receive, send)` in a loop on one event loop (uvloop when
    installed, as the servers use), with a prebuilt HTTP scope copied per call (no extensions: the
    file app reads its file), receive() giving the body in one message and then http.disconnect,
    send() checking the status and dropping the body. Returns (calls, cpu seconds, wall seconds)."""
    import asyncio

    module, attr = app.module.split(":")
    asgi = getattr(__import__(module), attr)
    headers = [(b"host", f"{HOST}:8000".encode()), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    if app.body:
        headers += [(b"content-length", str(len(app.body)).encode()),
                    (b"content-type", b"application/octet-stream")]
    base = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": app.method, "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
            "root_path": "", "headers": headers, "client": (HOST, 50000), "server": (HOST, 8000),
            "extensions": {}}
    body_msg = {"type": "http.request", "body": app.body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{app.name} answered {message['status']} to the ceiling scope")

    async def call():
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return body_msg
            return {"type": "http.disconnect"}

        scope = dict(base)
        scope["headers"] = list(headers)
        await asgi(scope, receive, send)

    async def main():
        for _ in range(200):  # warm-up
            await call()
        calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            for _ in range(20):
                await call()
            calls += 20
        return calls, time.process_time() - cpu0, time.perf_counter() - wall0

    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def ceiling_worker(app_name, seconds):
    """Runs in a child process: calls the app in a loop on one core and prints calls/s as JSON."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    sys.path.insert(0, str(APPS_DIR))
    app = app_by_name(app_name)
    if app.interface == "asgi":
        calls, cpu, wall = asgi_ceiling(app, seconds)
        print(json.dumps({"per_cpu_s": calls / cpu if cpu else 0.0, "per_wall_s": calls / wall}))
        return
    module, attr = app.module.split(":")
    wsgi = getattr(__import__(module), attr)
    base = ceiling_environ(app)

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"{app_name} answered {status} to the ceiling environ")
        return lambda data: None

    def call():
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(app.body)
        result = wsgi(env, start_response)
        try:
            for _chunk in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()

    for _ in range(200):  # warm-up
        call()
    calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(20):
            call()
        calls += 20
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"per_cpu_s": calls / cpu if cpu else 0.0, "per_wall_s": calls / wall}))


def measure_ceiling(app, cfg):
    if not app.efficiency:
        return {"skipped": "waits rather than computes"}
    samples = []
    for _ in range(cfg.ceiling_repeats):
        out = subprocess.run([sys.executable, __file__, "--ceiling-worker", app.name,
                              "--ceiling-seconds", str(cfg.ceiling_seconds)],
                             cwd=APPS_DIR, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return {"error": out.stderr.strip()[-300:]}
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "per_cpu_s": statistics.median(s["per_cpu_s"] for s in samples),
        "per_wall_s": statistics.median(s["per_wall_s"] for s in samples),
        "samples": samples,
    }


# --------------------------------------------------------------------------- the run


def app_by_name(name):
    return next(a for a in APPS if a.name == name)


def rotation(rep, n, repeats):
    """How far an order of n items is rotated in repeat `rep` (0-based) of `repeats`. With at least n
    repeats, by one more each repeat: a cyclic Latin square, in which after n repeats every item has
    been in every place once. With fewer repeats than items, by n ÷ repeats more each repeat, so each
    item's places are spread over the order (early, middle, late) rather than neighbouring ones."""
    if n <= 1:
        return 0
    if repeats >= n:
        return rep % n
    return (rep * n // repeats) % n


def rotate(items, k):
    return items[k:] + items[:k]


def run_units(servers, rep, repeats):
    """The server order of repeat `rep` (0-based), as units: every server is one unit, except that a
    ferricorn config and its A/B twin form one unit and always run together. The units of each
    interface (WSGI, ASGI) rotate across the repeats as `rotation` says; within a pair the other
    build goes first in repeats 1, 3, ... and this tree's in repeats 2, 4, ... (repeat 1: old, new;
    repeat 2: new, old; ...)."""
    twins = {s.twin_of: s for s in servers if s.twin_of}
    by_iface = {}
    for s in servers:
        if s.twin_of:
            continue
        twin = twins.get(s.name)
        unit = [s] if twin is None else [twin, s] if rep % 2 == 0 else [s, twin]
        by_iface.setdefault(s.interface, []).append(unit)
    out = []
    for units in by_iface.values():
        out += rotate(units, rotation(rep, len(units), repeats))
    return out


def app_order(apps, rep, repeats):
    """The app order of repeat `rep`: rotated like the servers'."""
    return rotate(list(apps), rotation(rep, len(apps), repeats))


def run_matrix(servers, apps, cfg, log):
    """All (repeat, app, server) instances: in each repeat every app in app_order, and for each app
    every server of its interface in run_units order, so order effects even out over the repeats. An
    A/B pair runs through run_pair (alternating slices) unless cfg.ab_slice is 0."""
    records = []
    for rep in range(cfg.repeats):
        units = run_units(servers, rep, cfg.repeats)
        for app in app_order(apps, rep, cfg.repeats):
            for unit in units:
                unit = [s for s in unit if not s.unavailable and s.interface == app.interface]
                if not unit:
                    continue
                if len(unit) == 2 and cfg.ab_slice > 0:
                    recs = run_pair(unit, app, cfg, rep)
                else:
                    recs = [run_instance(s, app, cfg, f"r{rep + 1}-{app.name}-{s.name}") for s in unit]
                for server, rec in zip(unit, recs):
                    rec["repeat"] = rep + 1
                    records.append(rec)
                    log(progress_line(rec, cfg.repeats))
                    note_start_failure(server, rec)
    return records


def note_start_failure(server, rec):
    """Two failed starts make a server unavailable for the rest of the run (saves the time-outs)."""
    if "error" in rec and "startup_ms" not in rec:
        server.start_failures += 1
        if server.start_failures >= 2:
            server.unavailable = f"failed to start: {rec['error']}"


def progress_line(rec, repeats):
    head = f"[{rec['repeat']}/{repeats}] {rec['app']:<6} {rec['server']:<18}"
    if "error" in rec:
        return f"{head} ERROR {rec['error'][:300]}"
    loads = "  ".join(f"{m}: {l['rps']:8.0f} req/s p99 {l['p99_ms']:7.1f} ms err {l['errors']}"
                      f" cpu {l['cores']:.2f} {l['cpu_us_per_req'] or 0:.1f} us/req"
                      f" others {l['other_cores']:.2f}" + quiet_note(l.get("quiet"))
                      for m, l in rec["loads"].items())
    return (f"{head} start {rec['startup_ms']:6.0f} ms  idle {rec['idle']['rss']:.0f} MiB  "
            f"after {rec['after']['rss']:.0f} MiB  {loads}")


def quiet_note(q):
    if not q:
        return ""
    return f" (quiet after {q['waited_s']:g} s)" if q["quiet"] else f" (not quiet after {q['waited_s']:g} s)"


@dataclass
class Config:
    repeats: int
    duration: float
    warmup: float
    settle: float
    mem_loads: int
    mem_seconds: float
    ceiling_seconds: float
    ceiling_repeats: int
    start_timeout: float = 30.0
    quick: bool = False
    ab_slice: float = 1.0  # A/B: seconds per alternating slice of a pair's loads (0: in one piece)
    quiet: Quiet = field(default_factory=Quiet)
    extra: dict = field(default_factory=dict)


def make_config(args):
    if args.quick:
        cfg = Config(repeats=1, duration=2, warmup=1, settle=0.5, mem_loads=3, mem_seconds=2,
                     ceiling_seconds=0.5, ceiling_repeats=1, quick=True)
    else:
        cfg = Config(repeats=3, duration=5, warmup=2, settle=1, mem_loads=3, mem_seconds=10,
                     ceiling_seconds=1, ceiling_repeats=3)
    if args.ab or args.ab_venv:
        cfg.repeats = max(cfg.repeats, AB_MIN_REPEATS)  # a spread needs several samples per build
    if args.ab_slice is not None:
        if args.ab_slice < 0:
            bad(f"--ab-slice {args.ab_slice:g}: seconds must be 0 or more")
        cfg.ab_slice = args.ab_slice
    if args.duration:
        cfg.duration = args.duration
    if args.repeats is not None:
        if args.repeats < 1:
            bad(f"--repeats {args.repeats}: needs at least 1")
        cfg.repeats = args.repeats
    cfg.quiet = Quiet(below=QUIET_BELOW, bound=QUIET_BOUND_QUICK if args.quick else QUIET_BOUND)
    if args.quiet_below is not None:
        if args.quiet_below <= 0:
            bad(f"--quiet-below {args.quiet_below:g}: cores must be more than 0")
        cfg.quiet.below = args.quiet_below
    if args.quiet_wait is not None:
        if args.quiet_wait < 0:
            bad(f"--quiet-wait {args.quiet_wait:g}: seconds must be 0 or more")
        cfg.quiet.bound = args.quiet_wait
    return cfg


QUIET_BELOW = 0.2  # cores other work may use for the machine to count as quiet
QUIET_BOUND = 30.0  # seconds the wait for quiet may take before each load (--quick: 10)
QUIET_BOUND_QUICK = 10.0


AB_MIN_REPEATS = 3
AB_VENV = BENCH / ".venv-ab"  # where bench/run --ab REF builds REF


def ferricorn_build(bin_dir):
    """Version and source commit of the ferricorn installed in a venv (from its direct_url.json:
    `pip install <dir>` records the directory, whose `git describe` names the commit)."""
    code = ("import importlib.metadata as m, json; d = m.distribution('ferricorn'); "
            "print(json.dumps({'version': d.version, 'url': json.loads(d.read_text('direct_url.json') "
            "or '{}').get('url')}))")
    info = {"version": None, "source": None, "commit": None}
    try:
        out = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True,
                             timeout=30)
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return info
    url = info.pop("url", None)
    if url and url.startswith("file://"):
        info["source"] = url[len("file://"):]
        try:
            info["commit"] = subprocess.run(
                ["git", "-C", info["source"], "describe", "--always", "--dirty"],
                capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def ab_setup(args):
    """The other build of an A/B run: {label, venv, bin, version, source, commit}, or None. Exits 2
    with one line when the options are wrong or the venv holds no ferricorn."""
    if not (args.ab or args.ab_venv):
        return None
    if args.ab and args.ab_venv:
        bad("--ab and --ab-venv both given; use one")
    venv = Path(args.ab_venv).resolve() if args.ab_venv else AB_VENV
    bin_dir = venv / "bin"
    if not (bin_dir / "ferricorn").exists():
        hint = " (bench/run --ab REF builds it there)" if args.ab else ""
        bad(f"no ferricorn installed in {venv}{hint}")
    if bin_dir.resolve() == VENV_BIN.resolve():
        bad(f"{venv} is the venv of this run's own build; the A/B build needs a venv of its own")
    if args.ab:
        want = git_commit(args.ab)
        if want is None:
            bad(f"--ab {args.ab}: not a commit in {REPO}")
        try:
            built = (venv / "ab-commit").read_text().strip()
        except OSError:
            built = None
        if built != want:
            bad(f"{venv} holds {built or 'an unknown build'}, not {args.ab} ({want[:12]}); "
                "run through bench/run, which builds it")
    info = ferricorn_build(bin_dir)
    label = args.ab_label or args.ab or info["commit"] or venv.name
    if not label or any(c.isspace() or c in ",@" for c in label):
        bad(f"--ab-label {label!r}: use a name without spaces, commas or '@'")
    return dict(info, label=label, venv=str(venv), bin=str(bin_dir))


def git_commit(ref):
    """The full commit id `ref` names in this repository, or None."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def bad(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(2)


def load_count(servers, apps, cfg):
    """Measured loads of the matrix (each preceded by a wait for quiet); an A/B pair waits once."""
    n = 0
    for app in apps:
        units = [u for u in run_units(servers, 0, 1) if u[0].interface == app.interface]
        n += sum(1 if cfg.ab_slice > 0 else len(u) for u in units) * len(app.modes)
    return n * cfg.repeats


def estimate_seconds(servers, apps, cfg):
    per_start = 2.5 + 2 * cfg.settle + cfg.warmup
    matrix = 0
    for iface in ("wsgi", "asgi"):
        mine = [a for a in apps if a.interface == iface]
        n = len([s for s in servers if s.interface == iface])
        matrix += cfg.repeats * n * (len(mine) * per_start + sum(len(a.modes) for a in mine) * cfg.duration)
    memtest = len(servers) * (3 + cfg.mem_loads * cfg.mem_seconds)
    return matrix + memtest + len(apps) * cfg.ceiling_repeats * (cfg.ceiling_seconds + 0.5)


def environment_info():
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    wrk_version = (cmd(["wrk", "-v"]) or "").split(" [")[:1]
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("ferricorn", "gunicorn", "granian", "flask", "uvicorn",
                                             "hypercorn", "fastapi", "starlette", "uvloop", "httptools",
                                             "websockets")},
        "wrk": wrk_version[0] if wrk_version else None,
        "commit": cmd(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "loadavg_start": loadavg(),
    }


def loadavg():
    """The 1-minute load average: other work on this shared machine shows up here."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="ferricorn vs gunicorn vs granian, with wrk on 127.0.0.1")
    p.add_argument("--quick", action="store_true", help="1 repeat, 2 s loads: a smoke check")
    p.add_argument("--servers", help="comma-separated server configs (default: all)")
    p.add_argument("--apps", help="comma-separated apps (default: all)")
    p.add_argument("--duration", type=float, help="seconds per measured load (default 5, quick 2)")
    p.add_argument("--repeats", type=int, help="repeats of the whole matrix (default 3, quick 1; a "
                   "target needs 2 good repeats of each cell it reads)")
    p.add_argument("--quiet-below", type=float, metavar="CORES",
                   help=f"before each load, wait until other processes use less than this many cores "
                        f"(default {QUIET_BELOW:g})")
    p.add_argument("--quiet-wait", type=float, metavar="S",
                   help=f"... for at most S seconds (default {QUIET_BOUND:g}, quick {QUIET_BOUND_QUICK:g}; "
                        f"0: do not wait)")
    p.add_argument("--out", help="results file stem in bench/results/ (default: the date)")
    p.add_argument("--note", help="a sentence for the top of the report (why this run was made, "
                   "what it is not)")
    p.add_argument("--no-build", action="store_true", help="(bench/run) keep the installed ferricorn")
    p.add_argument("--no-memtest", action="store_true", help="skip the 3-load memory growth test")
    p.add_argument("--render", metavar="JSON", help="rewrite the .md of an earlier run from its .json")
    p.add_argument("--ab", metavar="REF",
                   help="A/B: also run the ferricorn of git REF (bench/run builds it into bench/.venv-ab)")
    p.add_argument("--ab-venv", metavar="PATH",
                   help="A/B: the other ferricorn build is installed in this venv")
    p.add_argument("--ab-slice", type=float, metavar="S",
                   help="A/B: seconds per slice of the two builds' alternating loads (default 1; 0: one "
                        "whole load per build, one server after the other)")
    p.add_argument("--ab-label",
                   help="A/B: the other build's name in server names (default: REF or its commit)")
    p.add_argument("--tls", action="store_true",
                   help="every server serves HTTPS (a self-signed certificate made in bench/work), wrk "
                        "speaks TLS; results go to <date>-tls.*")
    p.add_argument("--ceiling-worker", help=argparse.SUPPRESS)
    p.add_argument("--ceiling-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select(items, names, what, groups=None):
    """The items named (comma-separated; a group name such as `asgi` stands for its members)."""
    if not names:
        return items
    groups = groups or {}
    wanted = [m for n in names.split(",") if n.strip() for m in groups.get(n.strip(), [n.strip()])]
    known = {i.name for i in items}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(known))}; "
                 f"groups: {', '.join(groups)})")
    return [i for i in items if i.name in wanted]


def main():
    args = parse_args()
    if args.ceiling_worker:
        return ceiling_worker(args.ceiling_worker, args.ceiling_seconds)
    import report  # bench/report.py: tables and targets

    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(report.render(json.loads(src.read_text())))
        print(f"[bench] wrote {src.with_suffix('.md')}")
        return 0
    cfg = make_config(args)
    if args.tls:
        global TLS
        WORK.mkdir(exist_ok=True)
        TLS = make_tls()
    ab = ab_setup(args)
    servers = select(make_servers(), args.servers, "servers", SERVER_GROUPS)
    if ab:
        if not any(s.family == "ferricorn" for s in servers):
            bad("A/B mode needs at least one ferricorn config in --servers")
        servers = ab_twins(servers, ab)
    apps = select(APPS, args.apps, "apps", APP_GROUPS)
    if args.servers and not args.apps:  # only the apps the chosen servers can run
        apps = [a for a in apps if any(s.interface == a.interface for s in servers)]
    if args.apps and not args.servers:
        servers = [s for s in servers if any(a.interface == s.interface for a in apps)]
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    for server in servers:
        check_available(server)

    def log(msg):
        print(msg, flush=True)

    runnable = [s for s in servers if not s.unavailable]
    loads = load_count(runnable, apps, cfg)
    log(f"[bench] {len(runnable)} servers x {len(apps)} apps x {cfg.repeats} repeats, "
        f"{cfg.duration:g} s loads; about {estimate_seconds(runnable, apps, cfg) / 60:.1f} min, plus up to "
        f"{loads * cfg.quiet.bound / 60:.1f} min waiting for a quiet machine ({loads} loads, each after "
        f"other work uses < {cfg.quiet.below:g} cores or {cfg.quiet.bound:g} s)")
    for s in servers:
        if s.unavailable:
            log(f"[bench] {s.name}: not available: {s.unavailable}")
    if ab:
        log(f"[bench] A/B: @{ab['label']} = ferricorn {ab['version']} from {ab['venv']}"
            f" (commit {ab['commit'] or 'unknown'}), interleaved with this tree's build")

    started = time.time()
    env_info = environment_info()
    ceilings = {}
    for app in apps:
        ceilings[app.name] = measure_ceiling(app, cfg)
        if "skipped" not in ceilings[app.name]:
            log(f"[ceiling] {app.name:<11} {ceilings[app.name].get('per_cpu_s', 0):10.0f} calls/s per core"
                f"{' ' + ceilings[app.name]['error'] if 'error' in ceilings[app.name] else ''}")
    records = run_matrix(servers, apps, cfg, log)
    memtest = []
    memtest_apps = {a.interface for a in apps if a.name in ("hello", "asgi-hello")}
    if not args.no_memtest and memtest_apps:
        for server in servers:
            if not server.unavailable and server.interface in memtest_apps:
                memtest.append(memory_growth(server, cfg))
                log(f"[memtest] {server.name}: {report.memtest_cell(memtest[-1])}")

    env_info["loadavg_end"] = loadavg()
    raw = {
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "environment": env_info,
        "note": args.note,
        "settings": dict({k: v for k, v in vars(cfg).items() if k not in ("extra", "quiet")},
                         quiet=vars(cfg.quiet)),
        "tls": bool(TLS),
        "wrk": {"threads": 1, "connections": {a.name: a.connections for a in apps}, "timeout_s": 5},
        "servers": [{"name": s.name, "label": s.label, "argv": s.argv(APPS[0], 0)[1:-1],
                     "threads_flag": s.threads_flag, "unavailable": s.unavailable,
                     "exe": str(s.bin_dir / s.exe), "twin_of": s.twin_of, "interface": s.interface}
                    for s in servers],
        "apps": [{"name": a.name, "title": a.title, "modes": list(a.modes),
                  "connections": a.connections, "threads": a.threads, "interface": a.interface,
                  "efficiency": a.efficiency, "ws_connections": a.ws_connections} for a in apps],
        "ceilings": ceilings,
        "records": records,
        "memtest": memtest,
    }
    if ab:
        raw["ab"] = dict(ab, new={"commit": env_info["commit"], "venv": str(VENV_BIN.parent),
                                  "version": env_info["versions"]["ferricorn"]})
    stem = args.out or (raw["date"] + ("-ab" if ab else "") + ("-tls" if TLS else "")
                        + ("-quick" if cfg.quick else ""))
    md_path, json_path = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(raw, indent=1) + "\n")
    md_path.write_text(report.render(raw))
    log(f"[bench] done in {raw['elapsed_s'] / 60:.1f} min: {os.path.relpath(md_path, REPO)} "
        f"(raw: {os.path.relpath(json_path, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
