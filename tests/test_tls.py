"""TLS (`--certfile`, `--keyfile`, client certificates, reload), against the real server over real TLS.

Certificates are made at test time with `cryptography`: a CA, server certificates for 127.0.0.1 (one
expired, one for another name), client certificates from the CA and from a CA the server does not know.
Clients verify the server as users do (requests/httpx/`ssl` with the test CA), so a server that offered
the wrong certificate fails the test.
"""

import datetime
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import IS_GUNICORN, Sessions, run_cli, wait_for

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

ferricorn_only = pytest.mark.ferricorn_only


# ---------------------------------------------------------------------------------------------------
# certificates


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferricorn tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn, key, issuer_cn, issuer_key, serial, *, ca=False, san=None, client=False,
          not_before=None, not_after=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject_cn)).issuer_name(_name(issuer_cn))
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(not_before or now - datetime.timedelta(days=1))
         .not_valid_after(not_after or now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key, password=None):
    enc = (serialization.BestAvailableEncryption(password.encode()) if password
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


class Pki:
    """The test's certificates as files in `d`."""

    def __init__(self, d):
        self.dir = d
        ca_key = _key()
        self.ca_cert = _cert("Test CA", ca_key, "Test CA", ca_key, 1, ca=True)
        self.ca = self.write("ca.pem", _pem(self.ca_cert))
        here = [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                x509.DNSName("localhost")]
        self.server_key = _key()
        self.key = self.write("server.key", _key_pem(self.server_key))
        self.key_encrypted = self.write("server-enc.key", _key_pem(self.server_key, "s3cret pass"))

        def server(name, serial, **kw):
            c = _cert("localhost", self.server_key, "Test CA", ca_key, serial, san=here, **kw)
            return self.write(name, _pem(c))

        self.cert = server("server.pem", 0x1001)
        self.cert_renewed = server("server-renewed.pem", 0x1002)
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        self.cert_expired = server("server-expired.pem", 0x1003, not_before=past,
                                   not_after=past + datetime.timedelta(days=30))
        other = _cert("other.example", self.server_key, "Test CA", ca_key, 0x1004,
                      san=[x509.DNSName("other.example")])
        self.cert_other_name = self.write("server-other.pem", _pem(other))
        # Certificate and key in one file (gunicorn's certfile without keyfile).
        self.combined = self.write("combined.pem", _pem(_cert("localhost", self.server_key, "Test CA",
                                                              ca_key, 0x1005, san=here))
                                   + _key_pem(self.server_key))
        alice_key = _key()
        self.alice_cert = _cert("alice", alice_key, "Test CA", ca_key, 0x2001, client=True)
        self.alice = (self.write("alice.pem", _pem(self.alice_cert)),
                      self.write("alice.key", _key_pem(alice_key)))
        rogue_ca_key = _key()
        mallory_key = _key()
        mallory = _cert("mallory", mallory_key, "Rogue CA", rogue_ca_key, 0x3001, client=True)
        self.mallory = (self.write("mallory.pem", _pem(mallory)),
                        self.write("mallory.key", _key_pem(mallory_key)))

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(str(tmp_path_factory.mktemp("pki")))


def tls_args(pki, *extra, cert=None, key=None):
    return ["--certfile", cert or pki.cert, "--keyfile", key or pki.key, *extra]


def client_context(pki, cert=None, alpn=None, check_hostname=True):
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = check_hostname
    if cert:
        ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(port, ctx, host="127.0.0.1", timeout=10.0):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def read_to_end(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def https_get(port, ctx, path="/", host="127.0.0.1"):
    """One GET over a fresh TLS connection; (status line, headers text, body, the TLS socket's facts)."""
    with tls_connect(port, ctx, host=host) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = read_to_end(s)
        facts = {"alpn": s.selected_alpn_protocol(), "version": s.version(),
                 "serial": x509.load_der_x509_certificate(s.getpeercert(True)).serial_number}
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), head.decode(), body, facts


def url(srv, path="/"):
    return f"https://127.0.0.1:{srv.port}{path}"


# ---------------------------------------------------------------------------------------------------
# serving


def test_https_get_verified_with_the_environ_of_a_tls_request(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki), "tlsapp:app"])
    with requests.Session() as s:
        # Several requests on one kept-alive connection, after other traffic.
        for _ in range(3):
            r = s.get(url(srv), verify=pki.ca, timeout=10)
            assert r.status_code == 200 and r.text == "hello over tls\n"
        env = s.get(url(srv, "/env"), verify=pki.ca, timeout=10).json()
    assert env["url_scheme"] == "https"
    assert env["server_port"] == str(srv.port)
    if not IS_GUNICORN:
        assert env["HTTPS"] == "on"
        assert env["SSL_PROTOCOL"] == "TLSv1.3"
        assert env["SSL_CIPHER"].startswith("TLS_")
        assert env["SSL_CLIENT_VERIFY"] == "NONE"
        assert "SSL_CLIENT_S_DN" not in env
        assert "Serving TLS with the certificate subject CN=localhost,O=ferricorn tests, serial 1001" \
            in srv.log_text()


@ferricorn_only  # gunicorn has no setting for a key's password
def test_httpx_and_tls12_with_an_encrypted_key(start_server, pki, tmp_path):
    httpx = pytest.importorskip("httpx")
    conf = tmp_path / "tls.conf.py"
    conf.write_text("keyfile_password = 's3cret pass'\n")
    srv = start_server(["-w", "1", "-c", str(conf), *tls_args(pki, key=pki.key_encrypted),
                        "tlsapp:app"])
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=ctx) as c:
        env = c.get(url(srv, "/env")).json()
    assert env["url_scheme"] == "https"
    assert env["SSL_PROTOCOL"] == "TLSv1.2"
    # The key is EC: an ECDSA suite, under its OpenSSL name.
    assert env["SSL_CIPHER"].startswith("ECDHE-ECDSA-"), env


@ferricorn_only
def test_certificate_and_key_in_one_file(start_server, pki):
    srv = start_server(["-w", "1", "--certfile", pki.combined, "tlsapp:app"])
    _, _, body, facts = https_get(srv.port, client_context(pki), "/")
    assert body == b"hello over tls\n" and facts["serial"] == 0x1005


@ferricorn_only
def test_alpn_negotiates_http11_and_refuses_a_client_without_it(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki), "tlsapp:app"])
    status, _, _, facts = https_get(srv.port, client_context(pki, alpn=["h2", "http/1.1"]))
    assert status == "HTTP/1.1 200 OK"
    assert facts["alpn"] == "http/1.1"
    # No ALPN offered: served all the same.
    status, _, _, facts = https_get(srv.port, client_context(pki))
    assert status == "HTTP/1.1 200 OK" and facts["alpn"] is None
    # Only h2 offered: refused in the handshake (RFC 7301's no_application_protocol).
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        https_get(srv.port, client_context(pki, alpn=["h2"]))


@ferricorn_only
def test_tls13_only_and_chosen_ciphers(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki, "--ssl-version", "TLSv1_3"), "tlsapp:app"])
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        https_get(srv.port, ctx)
    assert https_get(srv.port, client_context(pki))[3]["version"] == "TLSv1.3"
    srv2 = start_server(["-w", "1", *tls_args(pki, "--ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                         "tlsapp:app"])
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(srv2.port, ctx) as s:
        assert s.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


# ---------------------------------------------------------------------------------------------------
# client certificates


@ferricorn_only
def test_required_client_certificate(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki, "--ca-certs", pki.ca, "--cert-reqs", "2"),
                        "tlsapp:app"])
    # Without a certificate: refused (TLS 1.3 tells the client at its first read).
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url(srv, "/env"), verify=pki.ca, timeout=10)
    # A certificate from a CA the server does not trust: refused.
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url(srv, "/env"), verify=pki.ca, cert=pki.mallory, timeout=10)
    # Alice's: served, with her certificate's fields in the environ.
    with requests.Session() as s:
        for _ in range(2):
            env = s.get(url(srv, "/env"), verify=pki.ca, cert=pki.alice, timeout=10).json()
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN"] == "CN=alice,O=ferricorn tests"
    assert env["SSL_CLIENT_I_DN"] == "CN=Test CA,O=ferricorn tests"
    assert env["SSL_CLIENT_S_DN_CN"] == "alice"
    assert env["SSL_CLIENT_M_SERIAL"] == "2001"
    assert env["SSL_CLIENT_V_END"].endswith(" GMT")
    sent = x509.load_pem_x509_certificate(env["SSL_CLIENT_CERT"].encode())
    assert sent == pki.alice_cert


@ferricorn_only
def test_optional_client_certificate(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki, "--ca-certs", pki.ca, "--cert-reqs", "1"),
                        "tlsapp:app"])
    env = requests.get(url(srv, "/env"), verify=pki.ca, timeout=10).json()
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in env
    env = requests.get(url(srv, "/env"), verify=pki.ca, cert=pki.alice, timeout=10).json()
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS" and env["SSL_CLIENT_S_DN_CN"] == "alice"
    # A certificate that does not verify is refused even where one is optional (as OpenSSL does).
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url(srv, "/env"), verify=pki.ca, cert=pki.mallory, timeout=10)


# ---------------------------------------------------------------------------------------------------
# certificates the client refuses


def test_expired_server_certificate_is_refused_by_the_client(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki, cert=pki.cert_expired), "tlsapp:app"])
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        https_get(srv.port, client_context(pki))
    if not IS_GUNICORN:
        assert "The TLS certificate is not valid now: it expired on Jan 31 00:00:00 2020 GMT" \
            in srv.log_text()


def test_wrong_hostname_is_refused_by_the_client(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki, cert=pki.cert_other_name), "tlsapp:app"])
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
        https_get(srv.port, client_context(pki))
    # The same certificate is fine for the name it was made for.
    with tls_connect(srv.port, client_context(pki, check_hostname=False)) as s:
        assert x509.load_der_x509_certificate(s.getpeercert(True)).serial_number == 0x1004


# ---------------------------------------------------------------------------------------------------
# handshakes that never complete, plain HTTP


@ferricorn_only
def test_handshakes_that_never_complete_hold_no_thread_and_are_cut_off(start_server, pki):
    srv = start_server(["-w", "1", "-k", "sync", "--timeout", "3", *tls_args(pki), "tlsapp:app"])
    ctx = client_context(pki)
    hangers = []
    opened = time.monotonic()
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            if i % 2:
                # Half of a ClientHello: a record header announcing more than is sent.
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(16))
            hangers.append(s)
        time.sleep(0.3)
        # The one Python thread is free for a real client all the while.
        started = time.monotonic()
        for _ in range(3):
            status, _, body, _ = https_get(srv.port, ctx)
            assert status == "HTTP/1.1 200 OK" and body == b"hello over tls\n"
        assert time.monotonic() - started < 3.0
        # The hanging ones are cut off after the handshake timeout (--timeout 3), not before.
        for s in hangers:
            s.settimeout(10)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
        waited = time.monotonic() - opened
        assert 2.5 < waited < 10.0, waited
    finally:
        for s in hangers:
            s.close()
    # Still serving after them.
    assert https_get(srv.port, ctx)[0] == "HTTP/1.1 200 OK"


@ferricorn_only
def test_plain_http_on_the_tls_port_is_answered_400_and_closed(start_server, pki):
    srv = start_server(["-w", "1", *tls_args(pki), "tlsapp:app"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_to_end(s)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert data.endswith(b"This port serves HTTPS: use an https:// URL.\n")
    assert https_get(srv.port, client_context(pki))[0] == "HTTP/1.1 200 OK"


# ---------------------------------------------------------------------------------------------------
# reload


@ferricorn_only
def test_hup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken(start_server, pki,
                                                                             tmp_path):
    live = tmp_path / "live.pem"
    live.write_bytes(open(pki.cert, "rb").read())
    srv = start_server(["-w", "2", *tls_args(pki, cert=str(live)), "tlsapp:app"])
    ctx = client_context(pki)
    assert https_get(srv.port, ctx)[3]["serial"] == 0x1001
    # A renewed certificate in place of the old one: HUP, and new connections get it.
    live.write_bytes(open(pki.cert_renewed, "rb").read())
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"Serving TLS with the certificate .*serial 1002", timeout=10)
    wait_for(lambda: all(https_get(srv.port, ctx)[3]["serial"] == 0x1002 for _ in range(6)),
             15, interval=0.3, message="every worker serving the renewed certificate")
    # A broken file: HUP keeps the renewed certificate, with an ERROR.
    live.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"\[ERROR\] Reloading the TLS certificate failed; the current one stays: "
                 r"certfile '.*live.pem'", timeout=10)
    srv.wait_log(r"Booting worker with pid", count=6, timeout=15)
    time.sleep(0.5)
    for _ in range(6):
        assert https_get(srv.port, ctx)[3]["serial"] == 0x1002


# ---------------------------------------------------------------------------------------------------
# bodies and load


def test_file_wrapper_body_over_tls_arrives_intact(start_server, pki):
    size = 5 * 1024 * 1024 + 123
    srv = start_server(["-w", "1", *tls_args(pki), "tlsapp:app"])
    block = bytes((i * 7 + i // 251) % 256 for i in range(65536))
    expected = hashlib.sha256((block * (size // len(block) + 1))[:size]).hexdigest()
    with requests.Session() as s:
        for _ in range(2):
            r = s.get(url(srv, f"/file?size={size}"), verify=pki.ca, timeout=30)
            assert r.status_code == 200 and len(r.content) == size
            assert hashlib.sha256(r.content).hexdigest() == expected


def test_keep_alive_over_tls_under_concurrent_load(start_server, pki):
    srv = start_server(["-w", "2", "-k", "gthread", "--threads", "4", *tls_args(pki), "tlsapp:app"])

    def get(s):
        r = s.get(url(srv), verify=pki.ca, timeout=15)
        return r.status_code, r.text

    results = Sessions(8, 40, get, limit_s=60).run()
    bad = [r for r in results if r != (200, "hello over tls\n")]
    assert not bad, bad[:3]
    assert len(results) == 8 * 40


@ferricorn_only
def test_a_burst_of_tls_connections_spreads_over_the_workers(start_server, pki):
    """Connections that arrive together (h2load, a pool warming up, a load balancer's connections after
    a restart) are all in the backlog before a worker wakes. A handshake holds a unit of its worker's
    capacity, as a plain connection does until its first request, so one worker does not take the
    whole burst while the other has free threads (it took all 16 before). A fresh server each time:
    once its requests have been fast, a worker also accepts beyond its capacity for fairness while
    connections wait (`admission`), and then the share goes by who runs first."""
    ctx = client_context(pki)
    n = 16
    for attempt in range(3):
        srv = start_server(["-w", "2", "-k", "gthread", "--threads", "2", *tls_args(pki),
                            "tlsapp:app"])
        # Every TCP connection is in the backlog (or accepted) before the first ClientHello.
        raws = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(n)]
        try:
            with ThreadPoolExecutor(n) as pool:
                tls = list(pool.map(lambda raw: ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
                                    raws))
            pids = []
            for s in tls:
                with s:
                    s.sendall(b"GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    head, _, body = read_to_end(s).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                pids.append(int(body))
            counts = sorted(pids.count(p) for p in set(pids))
            assert len(counts) == 2 and counts[0] >= n // 4, (attempt, counts)
        finally:
            for raw in raws:
                raw.close()
        srv.cleanup()


# ---------------------------------------------------------------------------------------------------
# ASGI


@ferricorn_only
def test_asgi_over_tls_scope_and_wss(start_server, pki):
    websockets_sync = pytest.importorskip("websockets.sync.client")
    srv = start_server(["-w", "1", "-k", "asgi", "--asgi-lifespan", "off",
                        *tls_args(pki, "--ca-certs", pki.ca, "--cert-reqs", "1"), "tlsapp:asgi"])
    plain = requests.get(url(srv, "/scope"), verify=pki.ca, timeout=10).json()
    assert plain["scheme"] == "https"
    tls = plain["tls"]
    assert tls["tls_version"] == 0x0304 and isinstance(tls["cipher_suite"], int)
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert x509.load_pem_x509_certificate(tls["server_cert"].encode()).serial_number == 0x1001
    with_cert = requests.get(url(srv, "/scope"), verify=pki.ca, cert=pki.alice, timeout=10).json()
    assert with_cert["tls"]["client_cert_name"] == "CN=alice,O=ferricorn tests"
    chain = with_cert["tls"]["client_cert_chain"]
    assert x509.load_pem_x509_certificate(chain[0].encode()) == pki.alice_cert
    # A websocket over TLS (wss), with a client certificate.
    ctx = client_context(pki, cert=pki.alice)
    with websockets_sync.connect(f"wss://127.0.0.1:{srv.port}/ws", ssl=ctx,
                                 open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first == {"scheme": "wss", "client": "CN=alice,O=ferricorn tests"}
        for i in range(20):
            ws.send(f"message {i}")
            assert ws.recv(timeout=10) == f"message {i}"
        big = os.urandom(300_000)
        ws.send(big)
        assert ws.recv(timeout=10) == big


# ---------------------------------------------------------------------------------------------------
# bad settings


def _one_line_error(res):
    err = res.stderr.decode().strip()
    assert res.returncode == 2, (res.returncode, err)
    assert len(err.splitlines()) == 1, err
    return err


@ferricorn_only
@pytest.mark.parametrize("path", ["/wait-disconnect", "/stream"])
def test_asgi_hears_http_disconnect_when_a_tls_client_closes(start_server, pki, tmp_path, path):
    # A TLS client ends with close_notify, then its TCP close: the alert sits unread in the socket while
    # the app waits in `receive` (or streams), and must still become `http.disconnect`. Repeated, on a
    # worker that served other requests first, with and without the close_notify.
    marker = tmp_path / "disc.txt"
    srv = start_server(["-w", "1", "-k", "asgi", "--asgi-lifespan", "off", *tls_args(pki), "tlsapp:asgi"],
                       env={"ASGI_DISCONNECT_MARKER": str(marker)})
    ctx = client_context(pki)
    assert https_get(srv.port, ctx, "/scope")[0] == "HTTP/1.1 200 OK"
    for i, notify in enumerate([True, False, True, True]):
        s = tls_connect(srv.port, ctx)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if path == "/stream":
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.3)
        if notify:
            # Sends close_notify; the wait for the server's own one ends at the timeout.
            s.settimeout(0.3)
            try:
                s = s.unwrap()
            except (ssl.SSLError, OSError):
                pass
        s.close()
        wait_for(lambda: marker.exists() and marker.read_text().count(f"{path} http.disconnect") == i + 1,
                 5, message=f"http.disconnect after close {i} (close_notify: {notify})")
    assert https_get(srv.port, ctx, "/scope")[0] == "HTTP/1.1 200 OK"


@ferricorn_only  # gunicorn wraps the socket in TLS before it reads a PROXY header
def test_proxy_protocol_header_before_the_tls_handshake(start_server, pki):
    # A load balancer sends the PROXY header in the clear, then the ClientHello: the app sees the client
    # the header names; a header is optional; one from a peer outside --proxy-allow-from is refused 403 in
    # the clear, and the server goes on serving.
    from test_proxy_protocol import v1, v2

    srv = start_server(["-w", "1", "--proxy-protocol", "auto", "--proxy-allow-from", "127.0.0.1",
                        *tls_args(pki), "tlsapp:app"])
    ctx = client_context(pki)

    def get_env(header, chunks=1):
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        step = max(1, len(header) // chunks)
        for i in range(0, len(header), step):
            raw.sendall(header[i:i + step])
            time.sleep(0.05 if chunks > 1 else 0)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            for _ in range(2):  # kept alive: the second request has the same client
                s.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(65536)
                head, _, body = head.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    body += s.recv(65536)
                env = json.loads(body)
            return env

    assert get_env(v1("TCP4", "203.0.113.7", "192.0.2.1", 56324, 443))["remote"] == ["203.0.113.7", "56324"]
    env = get_env(v2("2001:db8::7", "2001:db8::1", 4242, 443))
    assert env["remote"] == ["2001:db8::7", "4242"] and env["url_scheme"] == "https"
    # In pieces, as a slow balancer might send it.
    assert get_env(v1("TCP4", "198.51.100.9", "192.0.2.1", 1111, 443), chunks=4)["remote"] == \
        ["198.51.100.9", "1111"]
    # No header: the connection's own peer.
    assert get_env(b"")["remote"][0] == "127.0.0.1"
    # Malformed: 400 in the clear, closed.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        raw.sendall(b"PROXY TCP4 not-an-address\r\n")
        assert read_to_end(raw).startswith(b"HTTP/1.1 400 ")
    assert "Invalid request from ip=127.0.0.1" in srv.log_text()
    assert get_env(v1("TCP4", "203.0.113.8", "192.0.2.1", 2222, 443))["remote"] == ["203.0.113.8", "2222"]


@ferricorn_only
def test_proxy_protocol_over_tls_refuses_an_untrusted_peer(start_server, pki):
    from test_proxy_protocol import v1

    srv = start_server(["-w", "1", "--proxy-protocol", "v1", "--proxy-allow-from", "10.0.0.0/8",
                        *tls_args(pki), "tlsapp:app"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        raw.sendall(v1("TCP4", "203.0.113.7", "192.0.2.1", 56324, 443))
        assert read_to_end(raw).startswith(b"HTTP/1.1 403 ")
    status, _, _, _ = https_get(srv.port, client_context(pki), "/env")
    assert status == "HTTP/1.1 200 OK"


@ferricorn_only
@pytest.mark.parametrize("case", ["missing keyfile", "unknown cipher", "old version",
                                  "cert_reqs without ca_certs", "encrypted key, no password",
                                  "wrong password", "key of another certificate", "not a cert"])
def test_bad_tls_settings_exit_2_with_one_line(pki, tmp_path, case):
    other_key = pki.write("other.key", _key_pem(_key()))
    args = {
        "missing keyfile": tls_args(pki, key=str(tmp_path / "nope.key")),
        "unknown cipher": tls_args(pki, "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-SHA"),
        "old version": tls_args(pki, "--ssl-version", "TLSv1_1"),
        "cert_reqs without ca_certs": tls_args(pki, "--cert-reqs", "2"),
        "encrypted key, no password": tls_args(pki, key=pki.key_encrypted),
        "wrong password": tls_args(pki, "--keyfile-password", "nope", key=pki.key_encrypted),
        "key of another certificate": tls_args(pki, key=other_key),
        "not a cert": tls_args(pki, cert=pki.key),
    }[case]
    err = _one_line_error(run_cli([*args, "tlsapp:app"]))
    want = {
        "missing keyfile": "keyfile '",
        "unknown cipher": "not offered by ferricorn's TLS: DHE-RSA-AES256-SHA (it offers",
        "old version": "older than TLS 1.2",
        "cert_reqs without ca_certs": "set ca_certs",
        "encrypted key, no password": "the key is encrypted: set keyfile_password",
        "wrong password": "wrong keyfile_password",
        "key of another certificate": "certfile '",
        "not a cert": "no certificate in it",
    }[case]
    assert want in err, err
    assert err.startswith("ferricorn: error: "), err


@ferricorn_only
def test_ssl_context_in_a_config_says_it_cannot_apply(start_server, pki, tmp_path):
    conf = tmp_path / "ctx.conf.py"
    conf.write_text("def ssl_context(conf, default_ssl_context_factory):\n"
                    "    raise AssertionError('never called')\n")
    srv = start_server(["-w", "1", "-c", str(conf), *tls_args(pki), "tlsapp:app"])
    assert "setting 'ssl_context' cannot apply: ferricorn's TLS is rustls" in srv.log_text()
    assert https_get(srv.port, client_context(pki))[0] == "HTTP/1.1 200 OK"
