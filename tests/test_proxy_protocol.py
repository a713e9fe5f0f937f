"""PROXY protocol v1 and v2 (`--proxy-protocol`, `--proxy-allow-from`) over real sockets.

A load balancer in TCP mode opens each connection with a header naming the client it relays; the app
must see that client as REMOTE_ADDR/REMOTE_PORT. Headers are optional (plain HTTP still works), refused
with 403 from a peer outside `--proxy-allow-from`, with 400 when malformed, and the connection is closed
then without the app being called.

Where ferricorn follows the specification rather than gunicorn 27 the test is `ferricorn_only`: v1
`UNKNOWN` and v2 `LOCAL` keep the connection's own peer (gunicorn refuses the first with 400 and gives
the app no REMOTE_ADDR for the second), a malformed v2 header is 400 (gunicorn answers 500), and v1
ports with leading zeros are refused.
"""

import ipaddress
import json
import os
import socket
import struct
import tempfile
import time

import pytest

from conftest import IS_GUNICORN, RawConnection, run_cli

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST = b"GET /environ HTTP/1.1\r\nHost: example.com\r\n\r\n"


def v1(proto, src, dst, sport, dport):
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, dst, sport, dport, command=0x1, tlvs=b"", transport=0x1):
    """A version 2 header for TCP over IPv4 or IPv6 (from the addresses' family)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x1 if s.version == 4 else 0x2
    block = s.packed + d.packed + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport]) + \
        struct.pack("!H", len(block)) + block


def v2_local(block=b""):
    return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(block)) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


class ProxyServer:
    """A server under test with the app's call log, for checking what reached the app."""

    def __init__(self, start, args):
        fd, self.calls = tempfile.mkstemp(prefix="fcn-pp-calls-")
        os.close(fd)
        self.srv = start(["-w", "1", "--keep-alive", "5", *args, "testapp"],
                         env={"CALL_LOG": self.calls})
        self.port = self.srv.port

    def calls_so_far(self):
        with open(self.calls) as f:
            return f.read().splitlines()

    def environ(self, data, conn=None):
        """Send `data` (ending in a GET /environ) and return (environ, connection's local port)."""
        own = conn is None
        conn = conn or RawConnection(self.port)
        try:
            local_port = conn.sock.getsockname()[1]
            conn.send(data)
            r = conn.read_final_response()[0]
            assert r.status == 200, r
            return json.loads(r.body), local_port
        finally:
            if own:
                conn.close()

    def refused(self, data, status, **kw):
        """Send `data`; it must be answered with `status`, closed, and never reach the app."""
        before = len(self.calls_so_far())
        with RawConnection(self.port, **kw) as conn:
            conn.send(data)
            t0 = time.monotonic()
            raw = conn.read_until_close()
            assert time.monotonic() - t0 < 5, "the server did not close the connection"
        assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:300]
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower(), head
        lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]
        assert lengths and int(lengths[0]) == len(body), f"more than one response: {raw!r}"
        time.sleep(0.05)
        assert len(self.calls_so_far()) == before, "the app was called"
        return body

    def close(self):
        os.unlink(self.calls)


@pytest.fixture(scope="module")
def servers(module_server):
    made = {}

    def get(*args):
        if args not in made:
            made[args] = ProxyServer(module_server, list(args))
        return made[args]

    yield get
    for s in made.values():
        s.close()


def test_off_by_default_a_proxy_line_is_a_bad_request(servers):
    s = servers()
    s.refused(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST, 400)
    s.refused(v2("192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST, 400)
    env, port = s.environ(REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))


@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_v1_tcp4_and_tcp6(servers, mode):
    s = servers("--proxy-protocol", mode)
    env, _ = s.environ(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "4242")
    # the proxy's side, under gunicorn's keys
    assert (env["PROXY_PROTOCOL"], env["PROXY_ADDR"], env["PROXY_PORT"]) == ("TCP4", "198.51.100.1", "443")
    env, _ = s.environ(v1("TCP6", "2001:db8::7", "2001:db8::1", 65535, 8443) + REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::7", "65535")
    assert (env["PROXY_PROTOCOL"], env["PROXY_ADDR"], env["PROXY_PORT"]) == ("TCP6", "2001:db8::1", "8443")


@pytest.mark.ferricorn_only
def test_v1_unknown_keeps_the_real_peer(servers):
    s = servers("--proxy-protocol", "v1")
    for line in (b"PROXY UNKNOWN\r\n",
                 b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n"):
        env, port = s.environ(line + REQUEST)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))
        assert "PROXY_ADDR" not in env


@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_v2_proxy_ipv4_ipv6_with_tlvs(servers, mode):
    s = servers("--proxy-protocol", mode)
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"tlv-authority.test") + tlv(0x04, b"\0" * 5)
            + tlv(0xE0, b"x" * 300))
    env, _ = s.environ(v2("192.0.2.7", "198.51.100.1", 4242, 443, tlvs=tlvs) + REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "4242")
    env, _ = s.environ(v2("2001:db8::7", "2001:db8::1", 1, 443) + REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::7", "1")
    assert (env["PROXY_ADDR"], env["PROXY_PORT"]) == ("2001:db8::1", "443")
    if not IS_GUNICORN:
        assert env["PROXY_PROTOCOL"] == "TCP6"
    # TLVs are skipped, not passed on to the app
    env, _ = s.environ(v2("192.0.2.7", "198.51.100.1", 4242, 443, tlvs=tlvs) + REQUEST)
    assert not any("tlv-authority" in str(v) for v in env.values())


@pytest.mark.ferricorn_only
def test_v2_local_keeps_the_real_peer(servers):
    s = servers("--proxy-protocol", "v2")
    for header in (v2_local(), v2_local(b"\x01" * 12)):
        env, port = s.environ(header + REQUEST)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))
        assert "PROXY_ADDR" not in env


def test_auto_takes_either_version_or_none(servers):
    s = servers("--proxy-protocol", "auto")
    env, port = s.environ(REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))
    env, _ = s.environ(v1("TCP4", "192.0.2.8", "198.51.100.1", 8, 80) + REQUEST)
    assert env["REMOTE_ADDR"] == "192.0.2.8"
    env, _ = s.environ(v2("192.0.2.9", "198.51.100.1", 9, 80) + REQUEST)
    assert env["REMOTE_ADDR"] == "192.0.2.9"


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_a_single_version_still_takes_plain_http(servers, mode):
    s = servers("--proxy-protocol", mode)
    env, port = s.environ(REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))


def test_the_other_version_is_a_bad_request(servers):
    servers("--proxy-protocol", "v1").refused(v2("192.0.2.7", "198.51.100.1", 1, 2) + REQUEST, 400)
    servers("--proxy-protocol", "v2").refused(
        v1("TCP4", "192.0.2.7", "198.51.100.1", 1, 2) + REQUEST, 400)


@pytest.mark.ferricorn_only  # gunicorn's sync worker closes every connection after one request
def test_header_only_at_the_start_of_a_connection(servers):
    s = servers("--proxy-protocol", "auto")
    with RawConnection(s.port) as conn:
        env, _ = s.environ(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST, conn)
        # kept alive: the next request is from the same client
        env, _ = s.environ(REQUEST, conn)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "4242")
        # a second header is not a header any more, but a malformed request
        conn.send(v1("TCP4", "192.0.2.66", "198.51.100.1", 1, 443) + REQUEST)
        raw = conn.read_until_close()
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]


def test_byte_by_byte(servers):
    s = servers("--proxy-protocol", "auto")
    for header, addr in ((v1("TCP6", "2001:db8::5", "2001:db8::1", 5, 443), "2001:db8::5"),
                         (v2("192.0.2.5", "198.51.100.1", 5, 443, tlvs=tlv(0x04, b"ab")), "192.0.2.5")):
        with RawConnection(s.port) as conn:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in header:
                conn.send(bytes([b]))
                time.sleep(0.001)
            env, _ = s.environ(REQUEST, conn)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (addr, "5")


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 192.168.0.1 192.16...\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n",
    b"PROXY TCP4 not-an-ip 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n",
    pytest.param(b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
                 marks=pytest.mark.ferricorn_only),
    b"PROXY TCP6 192.168.0.1 192.168.0.11 1 443\r\n",
    b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\n",
    # no CRLF within 107 bytes: refused without waiting for more
    b"PROXY UNKNOWN " + b"x" * 200,
], ids=["truncated-address", "bad-ports", "not-an-ip", "port-range", "leading-zero", "family",
        "protocol", "bare-lf", "too-long"])
def test_malformed_v1_is_400_and_closed(servers, data):
    body = servers("--proxy-protocol", "auto").refused(data + REQUEST, 400)
    if not IS_GUNICORN:
        assert body.startswith(b"Invalid PROXY line: ")


@pytest.mark.parametrize("data", [
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x01" * 12,  # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x01" * 12,  # unknown command
    V2_SIGNATURE + b"\x21\x51\x00\x0c" + b"\x01" * 12,  # unknown family
    V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\x01" * 11,  # too short for IPv4
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x01" * 12,  # too short for IPv6
], ids=["version", "command", "family", "short-ipv4", "short-ipv6"])
@pytest.mark.ferricorn_only
def test_malformed_v2_is_400_and_closed(servers, data):
    body = servers("--proxy-protocol", "auto").refused(data + REQUEST, 400)
    assert body.startswith(b"Invalid PROXY header: ")


def test_untrusted_peer_sending_a_header_is_forbidden(servers):
    s = servers("--proxy-protocol", "auto", "--proxy-allow-from", "10.0.0.0/8")
    s.refused(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST, 403)
    s.refused(v2("192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST, 403)
    # without a header the same peer is served as itself
    env, port = s.environ(REQUEST)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(port))


def test_default_allow_list_is_loopback_only(servers):
    s = servers("--proxy-protocol", "auto")
    try:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        probe.close()
    except OSError:
        pytest.skip("cannot use 127.0.0.2 as a source address here")
    before = len(s.calls_so_far())
    with socket.create_connection(("127.0.0.1", s.port), timeout=5,
                                  source_address=("127.0.0.2", 0)) as sock:
        sock.sendall(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 403 "), raw[:200]
    assert len(s.calls_so_far()) == before


def test_unix_socket_peer_is_allowed(start_server, tmp_short):
    path = os.path.join(tmp_short, "pp.sock")
    srv = start_server(["-b", f"unix:{path}", "--proxy-protocol", "v1",
                        "--proxy-allow-from", "10.0.0.1", "testapp"], bind=False, ready=False)
    srv.wait_ready(addr=(socket.AF_UNIX, path))
    with RawConnection(None, family=socket.AF_UNIX, addr=path) as conn:
        conn.send(v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 443) + REQUEST)
        r = conn.read_final_response()[0]
    env = json.loads(r.body)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "4242")


@pytest.mark.ferricorn_only  # gunicorn waits for the line's CRLF without a bound of its own
def test_incomplete_header_times_out_without_an_answer(start_server):
    srv = start_server(["--proxy-protocol", "auto", "--timeout", "2", "testapp"])
    with RawConnection(srv.port, timeout=10) as conn:
        conn.send(b"PROXY TCP4 192.0.2.7 ")
        t0 = time.monotonic()
        raw = conn.read_until_close()
    assert raw == b""
    assert 1.5 < time.monotonic() - t0 < 6


def test_access_log_shows_the_proxied_client(start_server):
    srv = start_server(["--proxy-protocol", "v2", "--access-logfile", "-", "testapp"])
    with RawConnection(srv.port) as conn:
        conn.send(v2("203.0.113.50", "198.51.100.1", 4242, 443) + REQUEST)
        assert conn.read_final_response()[0].status == 200
    deadline = time.monotonic() + 5
    while "203.0.113.50" not in srv.stdout_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '203.0.113.50 - - [' in srv.stdout_text()


def test_settings_in_print_config():
    out = run_cli(["--print-config", "testapp"]).stdout.decode()
    assert "proxy_protocol                     = off" in out.replace("\t", " ")
    assert "proxy_allow_ips" in out and "['127.0.0.1', '::1']" in out
    r = run_cli(["--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8,::1", "--print-config",
                 "testapp"])
    out = r.stdout.decode()
    lines = {line.split("=")[0].strip(): line.split("=", 1)[1].strip()
             for line in out.splitlines() if "=" in line}
    assert lines["proxy_protocol"] == "auto"
    assert lines["proxy_allow_ips"] == "['10.0.0.0/8', '::1']"
    r = run_cli(["--proxy-protocol", "v3", "testapp"])
    assert r.returncode != 0
    if not IS_GUNICORN:
        assert r.returncode == 2 and b"--proxy-protocol" in r.stderr
        r = run_cli(["--proxy-allow-from", "10.0.0.1/8", "testapp"])
        assert r.returncode == 2 and b"host bits" in r.stderr
