"""Strict request framing over a real socket: every rule that keeps a proxy and ferricorn from reading
the same bytes as different requests, the header limits, and gunicorn's opt-in relaxations.

A refused request must get its status in a single response that closes the connection, and the app
(tests/apps/recorder.py, which logs every call with the client's port) must never be called — neither
for the bad request nor for the valid request pipelined after it. Legal but unusual input must be served
with exactly the fields and body the client sent.
"""

import json
import os
import socket
import time

import pytest

from conftest import RawConnection, Server

HOST = b"Host: example.com\r\n"
# Sent right after every refused request: it must never be answered nor reach the app.
PIPELINED = b"GET /after-the-bad-one HTTP/1.1\r\nHost: example.com\r\n\r\n"


class Recorded:
    """A server running the recorder app, and what the app saw."""

    def __init__(self, srv, log):
        self.srv = srv
        self.port = srv.port
        self.log = log

    def records(self, client_port=None):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            rows = [json.loads(line) for line in f.read().splitlines()]
        return [r for r in rows if client_port is None or r["port"] == client_port]


def _recorded(factory, tmp_dir, args):
    log = os.path.join(tmp_dir, "calls.jsonl")
    srv = factory(["-w", "1", "--keep-alive", "5", "--timeout", "10", *args, "recorder"],
                  env={"RECORDER_LOG": log})
    return Recorded(srv, log)


@pytest.fixture(scope="module")
def strict(module_server, tmp_path_factory):
    """Default settings: every relaxation off."""
    return _recorded(module_server, str(tmp_path_factory.mktemp("strict")), [])


@pytest.fixture(scope="module")
def limited(module_server, tmp_path_factory):
    return _recorded(module_server, str(tmp_path_factory.mktemp("limited")),
                     ["--limit-request-line", "100", "--limit-request-fields", "5",
                      "--limit-request-field_size", "60"])


@pytest.fixture(scope="module")
def relaxed(module_server, tmp_path_factory):
    """gunicorn's relaxations that do not interfere with each other, on one server."""
    return _recorded(module_server, str(tmp_path_factory.mktemp("relaxed")),
                     ["--permit-obsolete-folding", "--strip-header-spaces",
                      "--permit-unconventional-http-method", "--permit-unconventional-http-version",
                      "--header-map", "refuse"])


@pytest.fixture(scope="module")
def casefolding(module_server, tmp_path_factory):
    return _recorded(module_server, str(tmp_path_factory.mktemp("casefold")),
                     ["--permit-unconventional-http-method", "--casefold-http-method",
                      "--header-map", "dangerous"])


def exchange(server, data, half_close=True, timeout=10.0):
    """Send `data` on a fresh connection (then half-close), read until the server closes.
    Returns (client port, bytes received, seconds until the close)."""
    with RawConnection(server.port, timeout=timeout) as c:
        port = c.sock.getsockname()[1]
        try:
            c.send(data)
            if half_close:
                c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse and close before it has read everything
        t0 = time.monotonic()
        out = c.read_until_close()
        return port, out, time.monotonic() - t0


def assert_refused(server, data, status, pipelined=PIPELINED):
    port, out, elapsed = exchange(server, data + pipelined)
    assert elapsed < 8, "the server did not close the connection"
    assert out.startswith(b"HTTP/1.1 %d " % status), f"expected {status} for {data!r}, got {out[:200]!r}"
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep, out
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    assert fields.get(b"connection") == b"close", head
    # exactly one response: its body, then the close
    assert int(fields[b"content-length"]) == len(body), f"more than one response: {out!r}"
    assert server.records(port) == [], f"the app was called for {data!r}"


def serve(server, data, count=1):
    """Send `data` (one or more pipelined requests); return the app's records, one per response."""
    with RawConnection(server.port, timeout=10) as c:
        port = c.sock.getsockname()[1]
        c.send(data)
        responses = [c.read_response() for _ in range(count)]
    assert [r.status for r in responses] == [200] * count, responses
    records = server.records(port)
    assert len(records) == count, records
    assert [json.loads(r.body) for r in responses] == records
    return records


def post(headers, body=b"", target=b"/", version=b"HTTP/1.1", host=True):
    return (b"POST " + target + b" " + version + b"\r\n" + (HOST if host else b"") + headers
            + b"\r\n" + body)


CHUNKED = b"Transfer-Encoding: chunked\r\n"
# Where gunicorn is more lenient than ferricorn (or answers with another status).
STRICTER = pytest.mark.ferricorn_only


def stricter(*values):
    return pytest.param(*values, marks=STRICTER)


# ----------------------------------------------------------------------------------------------
# Content-Length and Transfer-Encoding


def test_content_length_with_transfer_encoding(strict):
    assert_refused(strict, post(b"Content-Length: 5\r\n" + CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED + b"Content-Length: 5\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 400)
    # gunicorn's chunked_02: a tab-prefixed chunked (OWS, so it is chunked) beside Content-Length
    assert_refused(strict, post(b"Content-Length: 12\r\nTransfer-Encoding: \tchunked\r\n",
                                b"5\r\nhello\r\n6\r\n world\r\n\r\n"), 400)


@pytest.mark.parametrize("value", [
    b"-1", b"+1", b"-0", b"0x10", b"1_0", b"1 0", b"1\t0", b"5, 5", b"5,5", b"5,", b"1e3", b"5.0",
    b"", b"abc", b"\xd9\xa3",
    # past 2**64 - 1 (gunicorn reads any length of digits)
    stricter(b"18446744073709551616"), stricter(b"99999999999999999999999999"),
], ids=lambda v: repr(v)[2:-1] or "empty")
def test_content_length_not_plain_digits(strict, value):
    assert_refused(strict, post(b"Content-Length: " + value + b"\r\n", b"hello"), 400)


def test_content_length_repeated(strict):
    assert_refused(strict, post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400)
    # gunicorn refuses a repeat even with the same value
    assert_refused(strict, post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400)


@pytest.mark.parametrize("te,status", [
    # gunicorn takes gzip, deflate and compress (and hands the body on still coded); ferricorn answers 501
    stricter(b"gzip", 501),
    (b"identity", 400),  # does not end in chunked: no way to find the end of the body
    (b"chunked, gzip", 400),
    (b"chunked, identity", 400),
    (b"chunked, chunked", 400),
    stricter(b"gzip, chunked, chunked", 501),
    stricter(b", chunked", 400),  # gunicorn skips empty list elements
    stricter(b"chunked,", 400),
    (b"br, chunked", 501),
    (b"x-custom", 501),
    (b"gzip;q=1, chunked", 501),
    stricter(b"\x85chunked", 400),  # NEL is not whitespace
    stricter(b"chunked\xa0", 400),  # nor is NBSP
    (b"\x0bchunked", 400),  # VT is a control byte
    (b"\x0cchunked", 400),
    stricter(b"\"chunked\"", 400),
], ids=lambda v: repr(v)[2:-1] if isinstance(v, bytes) else str(v))
def test_transfer_encoding_refused(strict, te, status):
    assert_refused(strict, post(b"Transfer-Encoding: " + te + b"\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
                   status)


def test_chunked_twice_in_two_fields(strict):
    assert_refused(strict, post(CHUNKED + CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED + b"Transfer-Encoding: gzip\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
                   400)


@pytest.mark.ferricorn_only  # gunicorn reads a body framed this way (its sync worker then closes)
def test_chunked_on_http10(strict):
    assert_refused(strict, post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n", version=b"HTTP/1.0", host=False),
                   400)


def test_transfer_encoding_hidden_by_whitespace(strict):
    # space before the colon: a lenient hop would see Transfer-Encoding, a strict one a bad name
    assert_refused(strict, post(b"Transfer-Encoding : chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 400)
    assert_refused(strict, post(b"Transfer-Encoding\t: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 400)
    # a folded line: some hops glue it to the field before, others read a field of its own
    assert_refused(strict, post(b"X-A: 1\r\n Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
                   400)


def test_whitespace_before_the_first_field(strict):
    assert_refused(strict, b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400)


# ----------------------------------------------------------------------------------------------
# chunked bodies


@pytest.mark.parametrize("size_line", [
    b"zz", b"0x5", b"-5", b"+5", b" 5", b"5 ", b"6_0", b"", b"5\t", b"\xd9\xa3",
    stricter(b"10000000000000000"),  # 2**64: overflows
    stricter(b"fffffffffffffffff"),
], ids=lambda v: repr(v)[2:-1] or "empty")
def test_chunk_size_not_plain_hex(strict, size_line):
    assert_refused(strict, post(CHUNKED, size_line + b"\r\nhello\r\n0\r\n\r\n"), 400)


def test_chunk_data_longer_than_its_size(strict):
    assert_refused(strict, post(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED, b"5\r\nhello\n0\r\n\r\n"), 400)


@pytest.mark.parametrize("ext", [
    b";ext=val\rue", b";a\rb", b";", b";=v", b";a=", b";a=\"open", b";a=b c", b";a\x00",
], ids=lambda v: repr(v)[2:-1])
def test_chunk_extension_malformed(strict, ext):
    assert_refused(strict, post(CHUNKED, b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"), 400)


@pytest.mark.ferricorn_only  # gunicorn answers the first two with 400 too, the other two not at all
@pytest.mark.parametrize("cut", [
    b"5\r\nhello\r\n0\r\n",  # the trailer section's CRLF never comes
    b"5\r\nhello\r\n0\r\n\r",
    b"5\r\nhel",
    b"5\r\nhello\r\n",
], ids=["no-final-crlf", "half-final-crlf", "mid-chunk", "no-last-chunk"])
def test_body_ends_early(strict, cut):
    """The client stops inside the chunked body and half-closes: it can still read, so it gets one 400
    that closes the connection, and the app — which would only have seen a truncated body — is never
    called."""
    port, out, elapsed = exchange(strict, post(CHUNKED, cut))
    assert elapsed < 8, "the server did not close the connection"
    assert out.startswith(b"HTTP/1.1 400 "), out
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n", head
    assert body == b"Request ended before its body was complete", out
    assert strict.records(port) == []


@pytest.mark.parametrize("name", [
    b"Content-Length", b"Transfer-Encoding", b"Host", b"Authorization", b"TE", b"Trailer",
    # RFC 9110 section 6.5.1 forbids these too; gunicorn's list stops short of them
    stricter(b"Cookie"), stricter(b"Content-Encoding"), stricter(b"Connection"), stricter(b"Expect"),
])
def test_forbidden_trailer_fields(strict, name):
    assert_refused(strict, post(CHUNKED, b"5\r\nhello\r\n0\r\n" + name + b": 1\r\n\r\n"), 400)


def test_malformed_trailer_lines(strict):
    assert_refused(strict, post(CHUNKED, b"0\r\nX: 1\r\n 2\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED, b"0\r\nX : 1\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED, b"0\r\nX: a\x01\r\n\r\n"), 400)
    assert_refused(strict, post(CHUNKED, b"0\r\nnocolon\r\n\r\n"), 400)


# ----------------------------------------------------------------------------------------------
# header fields


def test_obs_fold_refused(strict):
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\r\nLong: one\r\n two\r\n\r\n", 400)
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\r\nLong: one\r\n\ttwo\r\n\r\n", 400)


@pytest.mark.parametrize("name", [
    b"Ba d", b"Bad\x00", b"B(ad)", b"Bad]", b"B\xe4d", b"Bad{", b"B\"ad", b"", b"Bad/", b"B,ad",
    b"Bad=", b"B@d", b"Bad\x7f", b"\x0bBad",
], ids=lambda v: repr(v)[2:-1] or "empty")
def test_non_token_header_names(strict, name):
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\r\n" + name + b": x\r\n\r\n", 400)


@pytest.mark.parametrize("value", [
    b"a\rb", b"a\x00b", b"a\x07b", b"a\x1bb", b"a\x7fb", b"a\x0bb", b"a\x01", b"\x1f",
], ids=lambda v: repr(v)[2:-1])
def test_controls_in_header_values(strict, value):
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-V: " + value + b"\r\n\r\n", 400)


def test_bare_line_feeds(strict):
    # gunicorn's invalid_field_value_01: an LF inside a value would start a new field for some hops
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: x\r\nNewline: a\nContent-Length: 26\r\n"
                           b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400)
    assert_refused(strict, b"GET / HTTP/1.1\nHost: example.com\n\n", 400)
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\n\r\n", 400)


def test_no_colon(strict):
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: example.com\r\nJustAName\r\n\r\n", 400)


# ----------------------------------------------------------------------------------------------
# request line


@pytest.mark.parametrize("line", [
    b"GET  / HTTP/1.1",
    b"GET /  HTTP/1.1",
    b" GET / HTTP/1.1",
    b"GET / HTTP/1.1 ",
    b"GET /a b HTTP/1.1",
    b"GET\t/ HTTP/1.1",
    b"GET /\t HTTP/1.1",
    b"GET / ",
    b"GET /",
    b"GET",
    b"GET /a\x00 HTTP/1.1",
    b"GET /caf\xc3\xa9 HTTP/1.1",
    b"GET /a\x7f HTTP/1.1",
    b"GET * HTTP/1.1",
    b"POST * HTTP/1.1",
    b"GET example.com:443 HTTP/1.1",
    b"GET foo/bar HTTP/1.1",
    stricter(b"CONNECT /path HTTP/1.1"),  # CONNECT takes authority-form only
    b"g\xc3\xa9t / HTTP/1.1",
    b"GET: / HTTP/1.1",
    b"GE(T / HTTP/1.1",
], ids=lambda v: repr(v)[2:-1])
def test_malformed_request_lines(strict, line):
    assert_refused(strict, line + b"\r\nHost: example.com\r\n\r\n", 400)


@pytest.mark.parametrize("version", [
    b"HTTP/1", b"HTTP/1.", b"HTTP/1.1.1", b"http/1.1", b"HTTP/11.1", b"HTTP/1.10", b"HTTP/1.x",
    b"HTTP /1.1", b"HTTP/ 1.1", b"HTTP/-1.1", b"HTTPS/1.1", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/3.0",
    b"HTTP/111", b"HTTP/1.1\x00",
], ids=lambda v: repr(v)[2:-1])
def test_bad_versions(strict, version):
    assert_refused(strict, b"GET / " + version + b"\r\nHost: example.com\r\n\r\n", 400)


@pytest.mark.ferricorn_only  # RFC 9112 section 3.2; gunicorn accepts it
def test_http11_without_host(strict):
    assert_refused(strict, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)


def test_two_host_fields(strict):
    assert_refused(strict, b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400)
    assert_refused(strict, b"GET / HTTP/1.0\r\nHost: a.example\r\nhost: a.example\r\n\r\n", 400)


# ----------------------------------------------------------------------------------------------
# limits (--limit-request-line 100, --limit-request-fields 5, --limit-request-field_size 60)


@STRICTER  # gunicorn 27 answers 414 (the corpus, from gunicorn 26, says 400)
def test_request_line_limit(limited):
    target = b"/" + b"a" * (100 - len(b"GET / HTTP/1.1"))
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == 100
    serve(limited, line + b"\r\n" + HOST + b"\r\n")
    assert_refused(limited, b"GET " + target + b"a HTTP/1.1\r\n" + HOST + b"\r\n", 400)
    # no line end at all: refused once the limit is passed, without waiting for more
    port, out, _ = exchange(limited, b"GET /" + b"a" * 5000, half_close=False)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert limited.records(port) == []


def test_request_fields_limit(limited):
    fields = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(4))
    (rec,) = serve(limited, b"GET / HTTP/1.1\r\n" + HOST + fields + b"\r\n")
    assert rec["fields"]["HTTP_X_3"] == "3"
    assert_refused(limited, b"GET / HTTP/1.1\r\n" + HOST + fields + b"X-4: 4\r\n\r\n", 431)


def test_request_field_size_limit(limited):
    # a field line counts with its CRLF: this one is exactly 60 bytes
    value = b"v" * (60 - len(b"X-Long: \r\n"))
    line = b"X-Long: " + value + b"\r\n"
    assert len(line) == 60
    (rec,) = serve(limited, b"GET / HTTP/1.1\r\n" + HOST + line + b"\r\n")
    assert rec["fields"]["HTTP_X_LONG"] == value.decode()
    assert_refused(limited, b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: " + value + b"v\r\n\r\n", 431)


@STRICTER  # gunicorn waits for the end of the line
def test_request_field_size_limit_before_line_end(limited):
    port, out, _ = exchange(limited, b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: " + b"v" * 5000,
                            half_close=False)
    assert out.startswith(b"HTTP/1.1 431 "), out[:100]
    assert limited.records(port) == []


@STRICTER  # gunicorn 27 answers 414
def test_default_request_line_limit(strict):
    target = b"/" + b"a" * (4094 - len(b"GET / HTTP/1.1"))
    serve(strict, b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert_refused(strict, b"GET " + target + b"a HTTP/1.1\r\n" + HOST + b"\r\n", 400)


def test_default_field_limits(strict):
    fields = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(99))
    serve(strict, b"GET / HTTP/1.1\r\n" + HOST + fields + b"\r\n")
    assert_refused(strict, b"GET / HTTP/1.1\r\n" + HOST + fields + b"X-99: 1\r\n\r\n", 431)
    value = b"v" * (8190 - len(b"X-Long: \r\n"))
    serve(strict, b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: " + value + b"\r\n\r\n")
    assert_refused(strict, b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: " + value + b"v\r\n\r\n", 431)


# ----------------------------------------------------------------------------------------------
# legal but unusual input is served


def test_chunk_extensions_and_trailers_served(strict):
    body = (b"5;a=b;c=\"d e\" ; f\r\nhello\r\n6 ;g=\"h\\\"i\"\r\n world\r\n000\r\n"
            b"X-Checksum: abc\r\nVary: *\r\n\r\n")
    (rec,) = serve(strict, post(CHUNKED, body))
    assert rec["body"] == "hello world"
    assert "HTTP_X_CHECKSUM" not in rec["fields"]  # trailers never become request headers


def test_obs_text_in_values_served(strict):
    (rec,) = serve(strict, b"GET / HTTP/1.1\r\n" + HOST + b"X-Name: caf\xe9 \xff\x80\r\n\r\n")
    assert rec["fields"]["HTTP_X_NAME"] == "caf\xe9 \xff\x80"


@pytest.mark.parametrize("target,path,query", [
    (b"http://example.com/p/q?x=1", "/p/q", "x=1"),
    (b"https://user:pw@example.com:8443/a%20b?", "/a b", ""),
    (b"http://[::1]:8080/v6", "/v6", ""),
], ids=["http", "userinfo", "ipv6"])
def test_absolute_form_served(strict, target, path, query):
    (rec,) = serve(strict, b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (rec["raw_uri"], rec["path_info"], rec["query"]) == (target.decode(), path, query)


def test_asterisk_and_authority_forms_served(strict):
    (rec,) = serve(strict, b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n")
    assert rec["raw_uri"] == "*"
    (rec,) = serve(strict, b"CONNECT example.com:443 HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (rec["method"], rec["raw_uri"]) == ("CONNECT", "example.com:443")


@STRICTER  # gunicorn echoes the version
@pytest.mark.parametrize("minor", [b"2", b"9"])
def test_later_http1_versions_answered_as_11(strict, minor):
    with RawConnection(strict.port) as c:
        c.send(b"GET /v HTTP/1." + minor + b"\r\n" + HOST + b"Connection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.raw.startswith(b"HTTP/1.1 200 "), r.raw[:50]
        assert b"HTTP/1." + minor not in r.raw.split(b"\r\n\r\n")[0]


@STRICTER  # gunicorn's sync worker answers one request per connection
def test_pipelined_requests_served_in_order(strict):
    data = (b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\n"
            + post(b"Content-Length: 3\r\n", b"abc", target=b"/2")
            + post(CHUNKED, b"3\r\ndef\r\n0\r\n\r\n", target=b"/3")
            + b"GET /4 HTTP/1.1\r\n" + HOST + b"\r\n")
    recs = serve(strict, data, count=4)
    assert [(r["raw_uri"], r["body"]) for r in recs] == [
        ("/1", ""), ("/2", "abc"), ("/3", "def"), ("/4", "")]


def test_tab_before_chunked_is_whitespace(strict):
    """RFC 9110 OWS includes HTAB: `Transfer-Encoding:\\tchunked` alone is plain chunked framing."""
    (rec,) = serve(strict, post(b"Transfer-Encoding:\tchunked\t\r\n", b"5\r\nhello\r\n0\r\n\r\n"))
    assert rec["body"] == "hello"


@pytest.mark.ferricorn_only  # gunicorn hands the body to the app still coded, as if it were the body
@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"compress", b"GZIP", b"x-gzip"])
def test_content_codings_as_transfer_codings_refused(strict, coding):
    """A transfer coding other than chunked is not decoded: the request is refused with 501 (RFC 9112
    section 6.1) instead of handing the app compressed bytes as its body."""
    assert_refused(strict, post(b"Transfer-Encoding: " + coding + b", chunked\r\n",
                                b"3\r\nxyz\r\n0\r\n\r\n"), 501)


def test_identity_before_chunked_served(strict):
    (rec,) = serve(strict, post(b"Transfer-Encoding: identity, chunked\r\n", b"3\r\nxyz\r\n0\r\n\r\n"))
    assert rec["body"] == "xyz"


# ----------------------------------------------------------------------------------------------
# gunicorn's relaxations, each off by default (see the tests above) and on when asked for


def test_permit_obsolete_folding(relaxed):
    (rec,) = serve(relaxed, b"GET / HTTP/1.1\r\n" + HOST + b"Long: one\r\n two\r\n\t three \r\n\r\n")
    assert rec["fields"]["HTTP_LONG"] == "one two three"


def test_strip_header_spaces(relaxed):
    (rec,) = serve(relaxed, b"GET / HTTP/1.1\r\n" + HOST + b"X-Name : v\r\n\r\n")
    assert rec["fields"]["HTTP_X_NAME"] == "v"
    # and Content-Length spelled that way frames the body
    (rec,) = serve(relaxed, post(b"Content-Length : 3\r\n", b"xyz"))
    assert rec["body"] == "xyz"


@pytest.mark.parametrize("method", [b"get", b"-blargh", b"X", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"M#"])
def test_permit_unconventional_http_method(strict, relaxed, method):
    request = method + b" / HTTP/1.1\r\n" + HOST + b"\r\n"
    assert_refused(strict, request, 400)
    (rec,) = serve(relaxed, request)
    assert rec["method"] == method.decode()


def test_casefold_http_method(casefolding):
    (rec,) = serve(casefolding, b"get /x HTTP/1.1\r\n" + HOST + b"\r\n")
    assert rec["method"] == "GET"
    (rec,) = serve(casefolding, b"-blargh /x HTTP/1.1\r\n" + HOST + b"\r\n")
    assert rec["method"] == "-BLARGH"
    # the asterisk-form rule sees the folded method
    (rec,) = serve(casefolding, b"options * HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (rec["method"], rec["raw_uri"]) == ("OPTIONS", "*")


@STRICTER  # gunicorn echoes the version
@pytest.mark.parametrize("version,answer", [
    (b"HTTP/2.0", b"HTTP/1.1"), (b"HTTP/3.1", b"HTTP/1.1"), (b"HTTP/0.9", b"HTTP/1.0"),
])
def test_permit_unconventional_http_version(strict, relaxed, version, answer):
    request = b"GET / " + version + b"\r\n" + HOST + b"Connection: close\r\n\r\n"
    assert_refused(strict, request, 400)
    with RawConnection(relaxed.port) as c:
        c.send(request)
        r = c.read_response()
        assert r.status == 200
        # answered in the HTTP/1.x the server speaks, never in the version the client named
        assert r.raw.startswith(answer + b" 200 "), r.raw[:40]


def test_header_map_drop_by_default(strict):
    (rec,) = serve(strict, b"GET / HTTP/1.0\r\nX_Forwarded_For: evil\r\nContent_Length: 9\r\n"
                           b"X-Forwarded-For: good\r\n\r\n")
    assert rec["fields"].get("HTTP_X_FORWARDED_FOR") == "good"
    assert "HTTP_CONTENT_LENGTH" not in rec["fields"]


def test_header_map_refuse(relaxed):
    assert_refused(relaxed, b"GET / HTTP/1.1\r\n" + HOST + b"X_Forwarded_For: evil\r\n\r\n", 400)
    assert_refused(relaxed, post(CHUNKED, b"0\r\nX_Trailer: 1\r\n\r\n"), 400)


def test_header_map_dangerous(casefolding):
    (rec,) = serve(casefolding, b"GET / HTTP/1.0\r\nX_Custom_Thing: kept\r\n\r\n")
    assert rec["fields"].get("HTTP_X_CUSTOM_THING") == "kept"


def test_relaxations_are_named_like_gunicorn():
    """The flags exist on the command line and in --print-config under gunicorn's names."""
    srv = Server(["--print-config", "--permit-obsolete-folding", "--strip-header-spaces",
                  "--permit-unconventional-http-method", "--permit-unconventional-http-version",
                  "--casefold-http-method", "--header-map", "refuse", "recorder"], bind=False)
    try:
        assert srv.wait(30) == 0, srv.log_text()
        lines = dict(line.split(" = ", 1) for line in srv.stdout_text().splitlines() if " = " in line)
        lines = {k.strip(): v.strip() for k, v in lines.items()}
    finally:
        srv.cleanup()
    for name in ("permit_obsolete_folding", "strip_header_spaces", "casefold_http_method",
                 "permit_unconventional_http_method", "permit_unconventional_http_version"):
        assert lines[name] == "True", name
    assert lines["header_map"] == "refuse"
