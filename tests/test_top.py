"""`ferricornctl top`, driven in a pseudo-terminal against a real server: a stuck request shows up
as it happens (highlighted, oldest first), `s` dumps the selected thread's Python stack, `q` quits and
gives the terminal back."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time

import pytest
import requests

from conftest import wait_for
from test_control import CTL_CMD, ctl_path

pytestmark = pytest.mark.ferricorn_only

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Pty:
    """`ferricornctl top` on a pty of 160x40."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.raw = b""

    def read_until(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.raw += chunk
                # The latest screen: what follows the last clear.
                screen = self.raw.decode("utf-8", "replace").rsplit("\x1b[2J", 1)[-1]
                if predicate(screen):
                    return screen
        raise AssertionError("screen never matched; last output:\n"
                             + ANSI.sub("", self.raw.decode("utf-8", "replace")[-4000:]))

    def drain(self):
        """Read what is left after the program ended."""
        while select.select([self.master], [], [], 0.5)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.raw += chunk

    def send(self, keys):
        os.write(self.master, keys)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


def test_top_shows_a_stuck_request_and_its_stack(start_server):
    srv = start_server(["stuck:application", "-w", "2", "--threads", "2", "--timeout", "60"])
    wait_for(lambda: len(srv.children()) == 2, 10, message="two workers")
    # Traffic first, so the rate and latency lines have something to say.
    s = requests.Session()
    for _ in range(20):
        s.get(f"{srv.url}/sleep?s=0", timeout=10)
    stuck = threading.Thread(
        target=lambda: requests.get(f"{srv.url}/sleep?s=12", timeout=40), daemon=True)
    top = Pty(CTL_CMD + ["-s", ctl_path(srv), "top", "--stuck", "2"])
    try:
        # A screen can arrive in more than one read: wait for its worker rows (idle) too.
        top.read_until(lambda s: "ferricorn top" in s and "Latency" in s and "idle" in ANSI.sub("", s))
        stuck.start()
        # The request appears as it runs, then is highlighted once past --stuck.
        top.read_until(lambda s: "GET /sleep?s=12" in s)
        screen = top.read_until(lambda s: "STUCK" in s, timeout=20)
        line = next(l for l in screen.split("\r\n") if "GET /sleep?s=12" in l)
        assert "\x1b[1;37;41m" in line, repr(line)
        plain = ANSI.sub("", line)
        assert plain.startswith(">"), plain  # selected: the oldest row
        age = float(re.search(r"(\d+\.\d)s", plain).group(1))
        assert age >= 2.0
        assert "Requests 2" in ANSI.sub("", screen)  # 20 requests served, counted
        # `s`: the selected thread's Python stack, naming the view it sleeps in.
        top.send(b"s")
        screen = top.read_until(lambda s: "Stack of worker" in s and "sleeping_view" in s)
        assert "stuck.py" in screen
        top.send(b"q")
        assert top.proc.wait(10) == 0
        top.drain()
        # The terminal is given back: the alternate screen is left, the cursor shown.
        assert top.raw.endswith(b"\x1b[?25h\x1b[?1049l")
    finally:
        top.close()


def test_top_once_prints_one_screen(start_server):
    srv = start_server(["stuck:application", "--threads", "2"])
    t = threading.Thread(target=lambda: requests.get(f"{srv.url}/sleep?s=3", timeout=10),
                         daemon=True)
    t.start()
    out = wait_for(lambda: (r := subprocess.run(
        CTL_CMD + ["-s", ctl_path(srv), "top", "--once"], capture_output=True, text=True,
        timeout=20)).returncode == 0 and "/sleep?s=3" in r.stdout and r.stdout, 10,
        message="a frame with the request")
    assert "Workers 1" in ANSI.sub("", out)
    bad = subprocess.run(CTL_CMD + ["-s", ctl_path(srv), "top", "--stuck", "x"],
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode == 2 and "not a positive number" in bad.stderr
    t.join()
