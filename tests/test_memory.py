"""Bounded memory: 1 GiB through one worker in either direction keeps its resident set within 64 MiB of
what it was before, and a body the app does not read is drained or cut off, never buffered whole.

The worker's VmRSS (/proc/<pid>/status) is sampled every 20 ms while the bytes flow; the growth is the
highest sample minus the level measured after a warm-up exchange of the same kind.
"""

import json
import socket
import threading
import time
import zlib

import pytest

from conftest import RawConnection, rss

GIB = 1 << 30
MIB = 1 << 20
RSS_BUDGET = 64 * MIB
PIECE = 65536
PATTERN = bytes(range(256)) * (PIECE // 256)  # what /download repeats
BLOCK = PATTERN * 16  # 1 MiB, what the uploads repeat


class RssSampler:
    """Samples a process's VmRSS in a background thread until stopped."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self):
        return max(self.samples)


@pytest.fixture(scope="module")
def big(module_server):
    srv = module_server(["-w", "1", "--timeout", "300", "--keep-alive", "5", "bigio"])
    with RawConnection(srv.port) as c:
        c.send(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        srv.worker_pid = json.loads(c.read_response().body)["pid"]
    return srv


def baseline(srv, warm):
    """The worker's RSS after `warm()` has run an exchange of the kind under test."""
    warm()
    time.sleep(0.2)
    return max(rss(srv.worker_pid) for _ in range(3))


def expected_crc(total, block):
    crc = 0
    full, rest = divmod(total, len(block))
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(block[:rest], crc)


def upload(srv, total, chunked=False, timeout=240):
    """Stream `total` bytes of BLOCK to /upload; return the app's answer."""
    with RawConnection(srv.port, timeout=timeout) as c:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        left = total
        while left:
            piece = BLOCK[:min(left, len(BLOCK))]
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
        if chunked:
            c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


def download(srv, total, timeout=240):
    """GET /download of `total` bytes; decode the chunked body on the fly, keeping only its length and
    CRC-32. Returns (length, crc)."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    try:
        sock.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % total)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data, f"closed inside the head: {bytes(buf)!r}"
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        buf = bytearray(rest)
        length = crc = 0
        scratch = bytearray(1 << 20)
        view = memoryview(scratch)

        def fill():
            n = sock.recv_into(view)
            assert n, "closed inside the body"
            buf.extend(view[:n])

        while True:
            while b"\r\n" not in buf:
                fill()
            i = buf.index(b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0], 16)
            del buf[:i + 2]
            if size == 0:
                while not buf.startswith(b"\r\n"):  # no trailers are sent
                    fill()
                return length, crc
            while len(buf) < size + 2:
                fill()
            crc = zlib.crc32(buf[:size], crc)
            length += size
            assert buf[size:size + 2] == b"\r\n"
            del buf[:size + 2]
    finally:
        sock.close()


def test_upload_1gib_in_64k_reads(big):
    base = baseline(big, lambda: upload(big, 8 * MIB))
    with RssSampler(big.worker_pid) as s:
        t0 = time.monotonic()
        got = upload(big, GIB)
        elapsed = time.monotonic() - t0
    assert got["length"] == GIB
    assert got["crc32"] == expected_crc(GIB, BLOCK)
    assert got["biggest"] <= PIECE
    assert len(s.samples) >= 10, f"too few samples ({len(s.samples)}) in {elapsed:.1f}s"
    growth = s.peak - base
    assert growth < RSS_BUDGET, f"worker RSS grew by {growth / MIB:.1f} MiB during a 1 GiB upload"


def test_chunked_upload_1gib(big):
    base = baseline(big, lambda: upload(big, 8 * MIB, chunked=True))
    with RssSampler(big.worker_pid) as s:
        got = upload(big, GIB, chunked=True)
    assert (got["length"], got["crc32"]) == (GIB, expected_crc(GIB, BLOCK))
    growth = s.peak - base
    assert growth < RSS_BUDGET, f"worker RSS grew by {growth / MIB:.1f} MiB during a chunked upload"


def test_download_1gib_from_generator(big):
    base = baseline(big, lambda: download(big, 8 * MIB))
    with RssSampler(big.worker_pid) as s:
        t0 = time.monotonic()
        length, crc = download(big, GIB)
        elapsed = time.monotonic() - t0
    assert length == GIB
    assert crc == expected_crc(GIB, PATTERN)
    assert len(s.samples) >= 10, f"too few samples ({len(s.samples)}) in {elapsed:.1f}s"
    growth = s.peak - base
    assert growth < RSS_BUDGET, f"worker RSS grew by {growth / MIB:.1f} MiB during a 1 GiB download"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_unread_upload_not_buffered(big, chunked):
    """The app reads 64 KiB of a 256 MiB upload and answers: the rest is drained or the connection cut,
    and either way never held in memory."""
    total = 256 * MIB
    base = baseline(big, lambda: upload(big, 8 * MIB))
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
    errors = []
    with RssSampler(big.worker_pid) as s, RawConnection(big.port, timeout=60) as c:
        c.send(b"POST /partial?n=65536 HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")

        def send_body():
            try:
                for _ in range(total // len(BLOCK)):
                    c.sock.sendall(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK) if chunked else BLOCK)
                if chunked:
                    c.sock.sendall(b"0\r\n\r\n")
            except OSError as e:  # the server stopped reading: expected
                errors.append(e)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        r = c.read_response()
        assert r.status == 200, r
        assert json.loads(r.body) == {"read": 65536}
        t0 = time.monotonic()
        assert c.read_until_close() == b""
        closed_after = time.monotonic() - t0
        sender.join(60)
        assert not sender.is_alive()
    growth = s.peak - base
    assert growth < RSS_BUDGET, f"worker RSS grew by {growth / MIB:.1f} MiB for an unread upload"
    assert closed_after < 30


@pytest.mark.ferricorn_only  # gunicorn's sync worker closes every connection anyway
def test_small_unread_body_drained_and_connection_kept(big):
    with RawConnection(big.port, timeout=30) as c:
        body = BLOCK[:512 * 1024]
        c.send(b"POST /partial?n=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
               + body)
        r = c.read_response()
        assert (r.status, json.loads(r.body)) == (200, {"read": 1000})
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"hello")
