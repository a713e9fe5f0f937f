"""A frame-level HTTP/2 client for the conformance and attack tests, on the `h2` package's frame and
HPACK layers (`hyperframe`, `hpack`) over a raw socket (cleartext prior knowledge, or TLS with ALPN).

It sends exactly the bytes a test asks for, valid or not, and reads the server's frames one by one, so
a test can show which frame the server answered with (GOAWAY and its error code, RST_STREAM on which
stream, a response's HEADERS and DATA). `request()` is the well-behaved path: one request on a new
stream, flow-control windows given back as DATA arrives.
"""

import socket
import ssl
import struct
import time

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6


def raw_frame(ftype, flags, stream_id, payload):
    """A frame's bytes built by hand (for frames hyperframe refuses to serialize)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


def hpack_int(value, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 5.1) with `first` holding the bits above the prefix."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = bytearray([first | top])
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal_block(headers):
    """Literal-without-indexing fields, no Huffman (RFC 7541 6.2.2), names and values sent byte for
    byte as given (latin-1): the way to send what an encoder would refuse or normalise."""
    out = b""
    for name, value in headers:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        out += b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v
    return out


class Closed(Exception):
    """The server closed the connection (`reset`: with a TCP reset, which may have discarded frames
    that were already on their way, such as a GOAWAY before the close of a socket with unread data)."""

    def __init__(self, message, reset=False):
        super().__init__(message)
        self.reset = reset


class Wire:
    """One HTTP/2 connection to the server under test."""

    def __init__(self, port, tls=None, timeout=10.0, host="127.0.0.1", rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
            if sock.selected_alpn_protocol() != "h2":
                sock.close()
                raise AssertionError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.server_settings = {}
        self.next_stream = 1
        self.closed = False

    # -- sending
    def send(self, *frames):
        data = b"".join(f if isinstance(f, (bytes, bytearray)) else f.serialize() for f in frames)
        self.sock.sendall(data)

    def try_send(self, *frames):
        """send(), but a connection the server already closed is not an error (returns False)."""
        try:
            self.send(*frames)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return False

    def new_stream(self):
        sid = self.next_stream
        self.next_stream += 2
        return sid

    def block(self, headers):
        """An HPACK header block for `headers` (a list of (name, value) pairs, bytes or str)."""
        return self.enc.encode(headers)

    def headers(self, sid, headers, end_stream=True, end_headers=True, block=None):
        f = HeadersFrame(sid)
        f.data = self.block(headers) if block is None else block
        flags = set()
        if end_stream:
            flags.add("END_STREAM")
        if end_headers:
            flags.add("END_HEADERS")
        f.flags = flags
        return f

    def data(self, sid, payload, end_stream=True):
        f = DataFrame(sid)
        f.data = payload
        f.flags = {"END_STREAM"} if end_stream else set()
        return f

    def settings(self, ack=False, values=None):
        f = SettingsFrame(0)
        if ack:
            f.flags = {"ACK"}
        f.settings = dict(values or {})
        return f

    def handshake(self, settings=None, ack_server=True):
        """Preface and SETTINGS; read until the server's SETTINGS (acknowledged) and the ACK of ours."""
        f = SettingsFrame(0)
        f.settings = dict(settings or {})
        self.send(PREFACE, f)
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            fr = self.read_frame()
            if isinstance(fr, SettingsFrame):
                if "ACK" in fr.flags:
                    got_ack = True
                else:
                    self.server_settings.update(fr.settings)
                    got_settings = True
                    if ack_server:
                        self.send(self.settings(ack=True))
            elif isinstance(fr, GoAwayFrame):
                raise AssertionError(f"GOAWAY in the handshake: code {fr.error_code}")
        return self

    # -- receiving
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no frame from the server in time") from None
        except (ConnectionResetError, ssl.SSLError, OSError) as e:
            self.closed = True
            raise Closed(str(e), reset=True) from None
        if not chunk:
            self.closed = True
            raise Closed("end of stream")
        self.buf += chunk

    def read_frame(self, timeout=None):
        """The next frame; HEADERS/CONTINUATION blocks decoded into `.decoded` once complete."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < 9:
            self._fill(deadline)
        frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
        while len(self.buf) < 9 + length:
            self._fill(deadline)
        body, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
        frame.parse_body(memoryview(body))
        if isinstance(frame, HeadersFrame):
            block = frame.data
            while "END_HEADERS" not in frame.flags:
                cont = self.read_frame(timeout)
                assert isinstance(cont, ContinuationFrame), cont
                block += cont.data
                if "END_HEADERS" in cont.flags:
                    frame.flags.add("END_HEADERS")
            frame.decoded = [(k.decode() if isinstance(k, bytes) else k,
                              v.decode() if isinstance(v, bytes) else v)
                             for k, v in self.dec.decode(block, raw=True)]
        if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            ack = PingFrame(0)
            ack.flags = {"ACK"}
            ack.opaque_data = frame.opaque_data
            self.try_send(ack)
        return frame

    def frames_until(self, predicate, timeout=None):
        """Frames read until `predicate(frame)` is true (that frame last). Closed/TimeoutError raise."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        out = []
        while True:
            fr = self.read_frame(max(0.01, deadline - time.monotonic()))
            out.append(fr)
            if predicate(fr):
                return out

    def expect_goaway(self, code, timeout=None):
        """A connection error: GOAWAY with `code` (one code or a tuple), then the connection closes."""
        codes = code if isinstance(code, tuple) else (code,)
        try:
            frames = self.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout)
        except Closed as e:
            if e.reset:
                return None  # the GOAWAY may have been lost to the reset (h2spec accepts a close)
            raise AssertionError(f"connection closed without GOAWAY (expected code {codes})") from None
        ga = frames[-1]
        assert ga.error_code in codes, f"GOAWAY code {ga.error_code}, expected {codes}"
        self.expect_closed()
        return ga

    def expect_closed(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.read_frame(max(0.01, deadline - time.monotonic()))
        except Closed:
            return
        except TimeoutError:
            raise AssertionError("the server kept the connection open after GOAWAY") from None

    def expect_rst(self, sid, code, timeout=None):
        """A stream error: RST_STREAM on `sid` with `code` (no GOAWAY on the way)."""
        codes = code if isinstance(code, tuple) else (code,)

        def done(f):
            if isinstance(f, GoAwayFrame):
                raise AssertionError(f"GOAWAY (code {f.error_code}) where a stream error was expected")
            return isinstance(f, RstStreamFrame) and f.stream_id == sid

        try:
            rst = self.frames_until(done, timeout)[-1]
        except Closed:
            raise AssertionError("connection closed where a stream error was expected") from None
        assert rst.error_code in codes, f"RST_STREAM code {rst.error_code}, expected {codes}"
        return rst

    def expect_refused_request(self, sid, timeout=None):
        """A malformed request (RFC 9113 8.1.1): RST_STREAM PROTOCOL_ERROR on `sid`, or a 4xx response
        the app did not make. Returns "rst" or the status."""
        def done(f):
            if isinstance(f, GoAwayFrame):
                raise AssertionError(f"GOAWAY (code {f.error_code}) for a malformed request")
            if isinstance(f, RstStreamFrame) and f.stream_id == sid:
                return True
            return isinstance(f, HeadersFrame) and f.stream_id == sid
        try:
            last = self.frames_until(done, timeout)[-1]
        except Closed:
            raise AssertionError("connection closed for a malformed request") from None
        if isinstance(last, RstStreamFrame):
            assert last.error_code == PROTOCOL_ERROR, f"RST_STREAM code {last.error_code}"
            return "rst"
        status = int(dict(last.decoded)[":status"])
        assert 400 <= status < 500, f"malformed request answered {status}"
        return status

    def response(self, sid, timeout=None, window_updates=True):
        """(status, headers dict, body, trailers) of stream `sid`, read to its END_STREAM."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        headers, body, trailers = None, b"", None
        while True:
            fr = self.read_frame(max(0.01, deadline - time.monotonic()))
            if isinstance(fr, GoAwayFrame) and fr.error_code != NO_ERROR:
                raise AssertionError(f"GOAWAY code {fr.error_code} while reading stream {sid}")
            if fr.stream_id != sid:
                continue
            if isinstance(fr, RstStreamFrame):
                raise AssertionError(f"stream {sid} reset with code {fr.error_code}")
            if isinstance(fr, HeadersFrame):
                if headers is None or dict(headers).get(":status", "").startswith("1"):
                    headers = fr.decoded
                else:
                    trailers = dict(fr.decoded)
            elif isinstance(fr, DataFrame):
                body += fr.data
                n = fr.flow_controlled_length
                if window_updates and n:
                    ups = [WindowUpdateFrame(0, window_increment=n)]
                    if "END_STREAM" not in fr.flags:
                        ups.append(WindowUpdateFrame(sid, window_increment=n))
                    self.try_send(*ups)
            if "END_STREAM" in fr.flags:
                h = dict(headers or [])
                return int(h.get(":status", 0)), h, body, trailers

    def request(self, path="/", method="GET", body=None, headers=(), authority=None, scheme="http",
                timeout=None):
        """One request on a new stream; returns response()'s tuple."""
        sid = self.new_stream()
        hs = [(":method", method), (":scheme", scheme), (":path", path),
              (":authority", authority or "127.0.0.1"), *headers]
        self.send(self.headers(sid, hs, end_stream=body is None))
        if body is not None:
            self.send(self.data(sid, body, end_stream=True))
        return self.response(sid, timeout)

    def ping(self, payload=b"pingpong", timeout=None):
        """A PING answered by its ACK (the connection is still served)."""
        p = PingFrame(0)
        p.opaque_data = payload
        self.send(p)
        frames = self.frames_until(
            lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == payload,
            timeout)
        return frames[-1]

    def goaway(self, code=NO_ERROR):
        ga = GoAwayFrame(0)
        ga.last_stream_id = 0
        ga.error_code = code
        return ga

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rst(sid, code=CANCEL):
    f = RstStreamFrame(sid)
    f.error_code = code
    return f


def window_update(sid, increment):
    return WindowUpdateFrame(sid, window_increment=increment)


def continuation(sid, block, end_headers=False):
    f = ContinuationFrame(sid)
    f.data = block
    f.flags = {"END_HEADERS"} if end_headers else set()
    return f


def ping_frame(payload=b"\0" * 8, ack=False):
    p = PingFrame(0)
    p.opaque_data = payload
    if ack:
        p.flags = {"ACK"}
    return p
