"""Who killed a worker, said truthfully with several workers and while the server stops (TERM), reloads
(HUP) or recycles workers (--max-requests): the kernel's OOM killer (the kernel log names the pid), another
process (os.kill from the test), or the master (a worker that did not stop within --graceful-timeout) —
and "unknown" where the kernel log cannot be read and the cgroup's OOM counter, which counts every process
of the cgroup, moved.

The OOM kills are real: the server runs in a 300 MiB cgroup v1 memory group (skipped where none can be
made) and a worker allocates past it. Outside kills and SIGSTOP go only to the workers of the server the
test started. Repeats: FERRICORN_STRESS=N (see conftest.repeats)."""

import ctypes
import os
import re
import signal
import threading
import time

import pytest
import requests

from conftest import RawConnection, pid_alive, repeats, wait_for

pytestmark = [pytest.mark.ferricorn_only, pytest.mark.stress]

OOM = "Out of memory: the kernel's OOM killer ended it"
OUTSIDE = "another process killed it"
UNKNOWN = "who sent it is unknown"
BY_MASTER = "The master killed it"


def sigkill_lines(srv):
    """pid -> the master's line about that worker's death by SIGKILL."""
    out = {}
    for line in srv.log_lines():
        m = re.search(r"\] Worker \(pid:(\d+)\) was sent SIGKILL! (.*)$", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def wait_sigkill_line(srv, pid, timeout=30):
    srv.wait_log(rf"Worker \(pid:{pid}\) was sent SIGKILL!", timeout=timeout)
    return sigkill_lines(srv)[pid]


def live_workers(srv, n):
    """The pids of the `n` workers now serving (children that are alive and logged their boot)."""
    def ready():
        booted = set(srv.worker_pids_from_log())
        kids = [p for p in srv.children() if p in booted and pid_alive(p)]
        return kids if len(kids) >= n else None
    return wait_for(ready, 20, message=f"{n} live workers")


def oom_kill_one(srv):
    """Make one worker allocate past the cgroup's limit; return the pid the OOM killer ended."""
    before = set(p for p, why in sigkill_lines(srv).items() if OOM in why)
    with pytest.raises(requests.RequestException):
        requests.get(srv.url + "/alloc?mb=1000", timeout=30)
    found = wait_for(lambda: set(p for p, why in sigkill_lines(srv).items() if OOM in why) - before, 30,
                     message="an OOM kill reported")
    (pid,) = found
    return pid


def outside_kill(srv, pid):
    """SIGKILL from the test; the worker is frozen first, so it cannot exit by itself (a recycling or
    retiring worker might) before the kill lands."""
    os.kill(pid, signal.SIGSTOP)
    assert pid_alive(pid), f"worker {pid} had already exited"
    os.kill(pid, signal.SIGKILL)
    return wait_sigkill_line(srv, pid)


def freeze(pid):
    """Stop a worker (SIGSTOP), as a wedged process: it runs nothing until killed."""
    os.kill(pid, signal.SIGSTOP)
    assert pid_alive(pid), f"worker {pid} had already exited"


def hold(srv, tmp_path, name, s=60):
    """A long request in its own thread; returns once the app runs it, with the pid of its worker."""
    mark = str(tmp_path / name)
    result = {}

    def run():
        try:
            conn = RawConnection(srv.port, timeout=30)
            conn.send(f"GET /hold?s={s}&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            result["response"] = conn.read_response()
        except Exception as e:  # inspected by the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: os.path.exists(mark) and open(mark).read().strip(), 15, message="the long request")
    with open(mark) as f:
        return int(f.read().split()[0]), t, result


def oom_then_outside_rounds(srv, workers, rounds):
    """Each round: the OOM killer ends one worker, then the test kills a sibling that lived through that
    OOM. The first must be blamed on memory, the second must not."""
    for _ in range(rounds):
        siblings = live_workers(srv, workers)
        victim = oom_kill_one(srv)
        assert victim in siblings
        sibling = next(p for p in siblings if p != victim)
        line = outside_kill(srv, sibling)
        assert OUTSIDE in line and OOM not in line, line
        # The cgroup's counter moved during the sibling's life: the line says why that is not its cause.
        assert "were of other processes" in line, line
        live_workers(srv, workers)


@pytest.mark.parametrize("event", ["term", "hup", "max-requests"])
def test_kills_are_attributed_per_worker_through_the_lifecycle(memory_cgroup, start_server, tmp_path, event):
    """-w 3 in a memory cgroup: OOM kills and outside kills of siblings, then the lifecycle event with a
    long request in flight, an outside kill during it and a wedged worker the master must kill. Every
    SIGKILL line names its true sender."""
    graceful = 2
    args = ["-w", "3", "--graceful-timeout", str(graceful), "--timeout", "60", "stuck"]
    if event == "max-requests":
        # gthread: the worker holding the long request goes on serving on its other thread, up to its
        # last request, and then stops with the long one still running.
        args = ["--max-requests", "12", "-k", "gthread", "--threads", "2"] + args
    srv = start_server(args, wrap_cgroup=os.path.join(memory_cgroup, "cgroup.procs"))
    rounds = repeats(2)
    oom_then_outside_rounds(srv, 3, rounds)
    expected_master = set()
    expected_outside = set()

    if event == "term":
        busy, call, result = hold(srv, tmp_path, "held")
        others = [p for p in live_workers(srv, 3) if p != busy]
        wedged, killed = others
        # Both idle: frozen, so they are still there when the stop begins (an idle worker leaves at once).
        freeze(wedged)
        freeze(killed)
        srv.signal(signal.SIGTERM)
        srv.wait_log(r"Waiting up to --graceful-timeout")
        line = outside_kill(srv, killed)
        assert OUTSIDE in line, line
        expected_outside.add(killed)
        expected_master.add(wedged)
        assert srv.wait(20) == 0
        call.join(10)
        r = result.get("response")
        assert r is not None and r.status == 503, result  # the busy worker answered before it left
    elif event == "hup":
        old = live_workers(srv, 3)
        busy, call, result = hold(srv, tmp_path, "held")
        wedged, killed = [p for p in old if p != busy]
        freeze(wedged)
        freeze(killed)
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"Hang up: Master")
        line = outside_kill(srv, killed)  # a retiring worker killed from outside is still not ours
        assert OUTSIDE in line, line
        expected_outside.add(killed)
        # A retiring worker that does not stop is killed after --graceful-timeout and a few seconds.
        line = wait_sigkill_line(srv, wedged, timeout=graceful + 15)
        expected_master.add(wedged)
        call.join(10)
        r = result.get("response")
        assert r is not None and r.status == 503, result
        assert requests.get(srv.url + "/pid", timeout=10).status_code == 200
    else:
        # Recycling under load: every worker restarts after 12 requests; kill some from outside on the
        # way, and wedge one that has begun to recycle.
        from test_lifecycle import Load

        # Killing young workers makes the master wait before it starts more (the crash-loop backoff, up
        # to 10 s each): the load lasts as long as the rounds may take.
        with Load(srv.url, clients=3, limit_s=60 + 15 * rounds):
            for _ in range(rounds):
                for target in live_workers(srv, 3):
                    try:
                        line = outside_kill(srv, target)
                    except AssertionError:
                        continue  # it recycled itself first: take another
                    assert OUTSIDE in line, line
                    expected_outside.add(target)
                    break
            busy, call, result = hold(srv, tmp_path, "held")
            # The held worker takes more requests until its 12th, then stops: wedge it then.
            m = srv.wait_log(rf"\[{busy}\] \[INFO\] Autorestarting worker after current request\.", timeout=30)
            assert m
            freeze(busy)
            expected_master.add(busy)
            wait_sigkill_line(srv, busy, timeout=graceful + 15)
        assert srv.log_text().count("Autorestarting worker after current request.") >= 3

    lines = sigkill_lines(srv)
    for pid in expected_master:
        assert f"{BY_MASTER}: it did not stop within --graceful-timeout {graceful}s" in lines[pid], lines[pid]
    for pid in expected_outside:
        assert OUTSIDE in lines[pid] and OOM not in lines[pid], lines[pid]
    ooms = [p for p, why in lines.items() if OOM in why]
    outside = [p for p, why in lines.items() if OUTSIDE in why]
    by_master = [p for p, why in lines.items() if BY_MASTER in why]
    assert len(ooms) == rounds, lines
    assert len(outside) == rounds + len(expected_outside), lines
    assert set(by_master) == expected_master, lines
    assert not any(UNKNOWN in why for why in lines.values()), lines
    # No other death went unexplained: every SIGKILL was one of these.
    assert len(lines) == len(ooms) + len(outside) + len(by_master), lines


# --- where the kernel log cannot be read --------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _mount(src, target, fstype, flags):
    if _libc.mount(src, target, fstype, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target!r}: {os.strerror(err)}")


def hide_kernel_log(also_cgroups=False):
    """A preexec function: the server gets a mount namespace of its own in which /dev/kmsg is an empty
    stand-in (/dev/null), as in containers that do not show the kernel log; with `also_cgroups`,
    /sys/fs/cgroup is empty too, so no OOM counter is readable either."""
    def setup():
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        _mount(None, b"/", None, MS_REC | MS_PRIVATE)
        _mount(b"/dev/null", b"/dev/kmsg", None, MS_BIND)
        if also_cgroups:
            _mount(b"none", b"/sys/fs/cgroup", b"tmpfs", 0)
    return setup


def _can_hide_kernel_log():
    if not os.path.exists("/dev/kmsg"):
        return False
    pid = os.fork()
    if pid == 0:
        try:
            hide_kernel_log()()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


needs_namespaces = pytest.mark.skipif(not _can_hide_kernel_log(),
                                      reason="cannot make a mount namespace without the kernel log")


@needs_namespaces
def test_without_the_kernel_log_a_moved_counter_leaves_the_cause_unknown(memory_cgroup, start_server):
    """The cgroup's OOM counter is readable, the kernel log is not. A worker that lived through an OOM
    kill in its cgroup and died by SIGKILL may be that victim or not: the log says it is unknown (for the
    victim itself too). A worker spawned after it, killed from outside, saw no OOM: another process."""
    srv = start_server(["-w", "2", "stuck"], wrap_cgroup=os.path.join(memory_cgroup, "cgroup.procs"),
                       preexec=hide_kernel_log())
    for _ in range(repeats(2)):
        before = live_workers(srv, 2)
        with pytest.raises(requests.RequestException):
            requests.get(srv.url + "/alloc?mb=1000", timeout=30)
        victim = wait_for(lambda: [p for p in before if p in sigkill_lines(srv)] or None, 30,
                          message="the OOM death reported")[0]
        line = sigkill_lines(srv)[victim]
        assert UNKNOWN in line and OOM not in line and OUTSIDE not in line, line
        assert re.search(r"the cgroup's OOM kill counter \(\S+memory\.oom_control\) rose from \d+ to \d+ "
                         r"during its life", line), line
        assert "the kernel log (/dev/kmsg), which names the one killed, cannot be read here" in line, line
        sibling = next(p for p in before if p != victim)
        line = outside_kill(srv, sibling)
        assert UNKNOWN in line and OUTSIDE not in line, line
        # Both replacements were spawned after the OOM kill.
        fresh = [p for p in live_workers(srv, 2) if p not in before]
        assert len(fresh) == 2
        line = outside_kill(srv, fresh[0])
        assert re.search(r"Not sent by ferricorn, and no OOM kill recorded in \S+memory\.oom_control: "
                         r"another process killed it", line), line
        live_workers(srv, 2)
    srv.stop()


@needs_namespaces
def test_with_no_oom_record_at_all_an_outside_kill_is_unknown(start_server):
    srv = start_server(["-w", "2", "stuck"], preexec=hide_kernel_log(also_cgroups=True))
    for _ in range(repeats(2)):
        worker = live_workers(srv, 2)[0]
        line = outside_kill(srv, worker)
        assert UNKNOWN in line and OUTSIDE not in line, line
        assert "no OOM record is readable here (no cgroup oom_kill counter, and the kernel log /dev/kmsg " \
               "cannot be read)" in line, line
        assert re.search(r"last RSS \d+\.\d MiB|RSS not sampled yet", line), line
        assert "no request in flight" in line, line
    srv.stop()
