"""Hold many loopback TCP connections open (bounded in count and time) while a command runs: the host
with tens of thousands of sockets on which a worker's loopback scan (`worker::loopback`) is measured.

    python3 bench/loopback_scan.py 20000 -- \\
        cargo test --release --lib loopback::tests::scan_time -- --ignored --nocapture

The connections are spread over child processes (each holds both ends of its share, so the per-process
file limit is not hit); every child exits after `--hold` seconds whatever happens.
"""

import argparse
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time

PER_CHILD = 4000


def child(n, hold_s, ready):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * n + 64)), hard))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    addr = srv.getsockname()
    held = []
    for _ in range(n):
        c = socket.create_connection(addr)
        s, _ = srv.accept()
        held += [c, s]
    ready.put(len(held) // 2)
    time.sleep(hold_s)


def main():
    ap = argparse.ArgumentParser(usage="%(prog)s COUNT [--hold S] [-- COMMAND ...]")
    ap.add_argument("count", type=int, help="connections to hold (at most 40000)")
    ap.add_argument("--hold", type=float, default=120, help="seconds the children live at most")
    argv = sys.argv[1:]
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    count = min(args.count, 40000)
    ready = multiprocessing.Queue()
    kids = []
    for start in range(0, count, PER_CHILD):
        p = multiprocessing.Process(target=child, args=(min(PER_CHILD, count - start), args.hold, ready),
                                    daemon=True)
        p.start()
        kids.append(p)
    held = sum(ready.get(timeout=120) for _ in kids)
    with open("/proc/net/tcp") as f:
        lines = sum(1 for _ in f) - 1
    print(f"holding {held} loopback connections; /proc/net/tcp has {lines} entries", flush=True)
    rc = subprocess.call(cmd) if cmd else (time.sleep(args.hold) or 0)
    for p in kids:
        p.terminate()
        p.join(5)
    sys.exit(rc)


if __name__ == "__main__":
    main()
