#!/usr/bin/env python3
"""Websocket conformance: the Autobahn testsuite's fuzzingclient against ferricorn's asgi worker.

    python3 tests/autobahn/run.py                 # every case; of 12.* and 13.* (permessage-deflate),
                                                  # the two smallest message sizes (about 1 min)
    python3 tests/autobahn/run.py --all           # every case in full (about 15 min)
    python3 tests/autobahn/run.py --cases '1.*' '5.*'

What it does, end to end:

1. Provisions the testsuite once: `autobahntestsuite` runs under Python 2.7, so a 2.7 virtualenv is
   made at $AUTOBAHN_ENV (default ~/.cache/ferricorn/autobahn-py27) from the first Python 2.7 found
   ($AUTOBAHN_PYTHON27, `python2.7` on PATH, or a pyenv 2.7), with the versions pinned below.
2. Starts `ferricorn -k asgi -w 1` on a free 127.0.0.1 port serving tests/apps/asgi_ws_echo.py (the
   `ferricorn` on PATH, or $FERRICORN_SERVER).
3. Runs `wstest -m fuzzingclient` on a spec naming that server, bounded by --timeout.
4. Reads the report's index.json and prints one row per section: OK / NON-STRICT / INFORMATIONAL /
   UNIMPLEMENTED / FAILED. A case whose closing handshake failed counts as FAILED.
5. Stops the server it started (by its PID) and exits 1 when a case failed, 2 when the run could
   not be made. (With `--server-arg=--ws-per-message-deflate --server-arg=false`, 12.* and 13.* are
   UNIMPLEMENTED: an extension the server declines is no failure.)

The reports stay in --outdir (default a temporary directory, printed) for reading case by case.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(os.path.dirname(HERE), "apps")

# Versions that install and run under Python 2.7 (pip resolves the rest of the tree to these).
PINS = ["autobahntestsuite==25.10.1", "autobahn==0.10.9", "Twisted==19.10.0", "txaio==2.1.0"]
VIRTUALENV_PIN = "virtualenv<20.22"  # the last virtualenv line that still runs on 2.7

# The default run's cut of 12.* and 13.*: each data set and parameter set with its two smallest
# message sizes (16 and 64 bytes); the larger sizes, up to 128 KiB and 1000 messages each, are --all's.
QUICK_EXCLUDE = ["%d.*.%d" % (section, n) for section in (12, 13) for n in range(3, 19)]
SECTION_NAMES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Misc (auto-fragmentation)",
    "12": "permessage-deflate payloads",
    "13": "permessage-deflate parameters",
}
BEHAVIOURS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def find_python27():
    candidates = [os.environ.get("AUTOBAHN_PYTHON27"), shutil.which("python2.7")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    versions = os.path.join(pyenv_root, "versions")
    if os.path.isdir(versions):
        candidates += [os.path.join(versions, v, "bin", "python")
                       for v in sorted(os.listdir(versions), reverse=True) if v.startswith("2.7")]
    for c in candidates:
        # (a pyenv shim exists on PATH even when no 2.7 is selected: it must run)
        if c and os.path.exists(c) and subprocess.run(
                [c, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"], capture_output=True).returncode == 0:
            return c
    return None


def provision(env_dir):
    """The 2.7 virtualenv's wstest, made when missing. None when it cannot be made."""
    wstest = os.path.join(env_dir, "bin", "wstest")
    if os.path.exists(wstest):
        return wstest
    py27 = find_python27()
    if not py27:
        log("no Python 2.7 found (set AUTOBAHN_PYTHON27): the Autobahn testsuite needs one")
        return None
    log("provisioning the Autobahn testsuite in %s (Python 2.7: %s)" % (env_dir, py27))
    tool = env_dir + "-virtualenv"
    steps = []
    if subprocess.run([py27, "-c", "import virtualenv"], capture_output=True).returncode == 0:
        steps.append(([py27, "-m", "virtualenv", "-q", env_dir], None))
    else:
        steps.append(([py27, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", tool,
                       VIRTUALENV_PIN], None))
        steps.append(([py27, "-m", "virtualenv", "-q", env_dir], {"PYTHONPATH": tool}))
    steps.append(([os.path.join(env_dir, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
                   *PINS], None))
    for cmd, extra in steps:
        env = dict(os.environ, **(extra or {}))
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            log("failed: %s\n%s%s" % (shlex.join(cmd), r.stdout, r.stderr))
            shutil.rmtree(env_dir, ignore_errors=True)
            return None
    return wstest if os.path.exists(wstest) else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc, grace=8.0):
    """TERM the process we started (by its PID), KILL it after `grace`."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def section_of(case_id):
    return case_id.split(".", 1)[0]


def tally(index):
    """{section: {behaviour: count}} from a fuzzingclient index.json, and the failed case ids."""
    table, failed = {}, []
    for agent_cases in index.values():
        for case_id, r in agent_cases.items():
            b = r.get("behavior", "FAILED")
            if b != "FAILED" and r.get("behaviorClose") == "FAILED":
                b = "FAILED"
            row = table.setdefault(section_of(case_id), dict.fromkeys(BEHAVIOURS, 0))
            row[b] = row.get(b, 0) + 1
            if b == "FAILED":
                failed.append(case_id)
    return table, sorted(failed, key=lambda c: [int(p) for p in c.split(".")])


def render(table):
    head = "| section | " + " | ".join(BEHAVIOURS) + " | total |"
    lines = [head, "|" + "---|" * (len(BEHAVIOURS) + 2)]
    totals = dict.fromkeys(BEHAVIOURS, 0)
    for sec in sorted(table, key=int):
        row = table[sec]
        name = "%s %s" % (sec, SECTION_NAMES.get(sec, ""))
        lines.append("| %s | %s | %d |" % (name.strip(), " | ".join(str(row[b]) for b in BEHAVIOURS),
                                            sum(row.values())))
        for b in BEHAVIOURS:
            totals[b] += row[b]
    lines.append("| all | %s | %d |" % (" | ".join(str(totals[b]) for b in BEHAVIOURS), sum(totals.values())))
    return "\n".join(lines)


class RunError(Exception):
    """The run could not be made (no server, wstest failed or ran too long)."""


def run(wstest, outdir, cases=("*",), exclude=QUICK_EXCLUDE, server_cmd=None, server_args=(),
        limit=1200.0):
    """Serve the echo app, run the fuzzingclient on it; ({section: {behaviour: n}}, failed ids, seconds)."""
    os.makedirs(outdir, exist_ok=True)
    port = free_port()
    spec = {
        "outdir": os.path.join(outdir, "reports"),
        "servers": [{"agent": "ferricorn", "url": "ws://127.0.0.1:%d/" % port}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    spec_path = os.path.join(outdir, "fuzzingclient.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=2)
    server_cmd = server_cmd or shlex.split(os.environ.get("FERRICORN_SERVER", "ferricorn"))
    with open(os.path.join(outdir, "server.log"), "wb") as server_log, \
            open(os.path.join(outdir, "wstest.log"), "wb") as wstest_log:
        server = subprocess.Popen(
            [*server_cmd, "-k", "asgi", "-w", "1", "-b", "127.0.0.1:%d" % port, *server_args,
             "asgi_ws_echo:app"],
            cwd=APPS, stdout=server_log, stderr=subprocess.STDOUT,
            # the server's control socket goes under $XDG_RUNTIME_DIR: keep this one's apart
            env=dict(os.environ, XDG_RUNTIME_DIR=outdir, PYTHONUNBUFFERED="1"))
        try:
            if not wait_port(port, server, 30):
                raise RunError("the server did not start; its log: %s" % server_log.name)
            log("ferricorn pid %d on 127.0.0.1:%d; wstest: %s; reports: %s" % (server.pid, port, wstest, outdir))
            started = time.monotonic()
            client = subprocess.Popen([wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=outdir,
                                      stdout=wstest_log, stderr=subprocess.STDOUT)
            try:
                client.wait(limit)
            except subprocess.TimeoutExpired:
                stop(client, 2)
                raise RunError("wstest ran past its limit of %ss: stopped" % limit)
            took = time.monotonic() - started
        finally:
            stop(server)
    index_path = os.path.join(outdir, "reports", "index.json")
    if client.returncode != 0 or not os.path.exists(index_path):
        raise RunError("wstest failed (exit %s); its log: %s" % (client.returncode, wstest_log.name))
    with open(index_path) as f:
        table, failed = tally(json.load(f))
    return table, failed, took


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["*"], help="case patterns (default: all)")
    ap.add_argument("--all", action="store_true", help="every size of 12.* and 13.* (permessage-deflate)")
    ap.add_argument("--outdir", help="where the reports go (default: a temporary directory)")
    ap.add_argument("--timeout", type=float, default=1200, help="bound on the wstest run, seconds")
    ap.add_argument("--server-arg", action="append", default=[], help="an extra ferricorn argument")
    args = ap.parse_args()

    wstest = provision(default_env())
    if not wstest:
        return 2
    outdir = args.outdir or tempfile.mkdtemp(prefix="ferricorn-autobahn-")
    try:
        table, failed, took = run(wstest, outdir, args.cases, () if args.all else QUICK_EXCLUDE,
                                  server_args=args.server_arg, limit=args.timeout)
    except RunError as e:
        log(str(e))
        return 2
    print(render(table))
    print("\n%d cases in %.0f s; reports: %s" % (sum(sum(r.values()) for r in table.values()), took,
                                                 os.path.join(outdir, "reports", "index.html")))
    if failed:
        print("FAILED: " + " ".join(failed))
    return 1 if failed else 0


def default_env():
    return os.environ.get("AUTOBAHN_ENV", os.path.expanduser("~/.cache/ferricorn/autobahn-py27"))


if __name__ == "__main__":
    sys.exit(main())
