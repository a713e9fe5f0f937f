#!/usr/bin/env python3
"""Write the fuzzers' seed inputs from the HTTP request corpus (shared/http-corpus, see its README).

Every case becomes a seed for `parse_request`; every chunked body in it (the bytes after the first head
that says `Transfer-Encoding`) becomes a seed for `chunked_decoder`; the websocket targets get the
client frames and permessage-deflate offers and payloads listed below. Each seed starts with the byte that
selects the parser options (see `options_from` in src/lib.rs), set from the case's settings; the decoder's
seeds have a second byte that seeds the split points.

    python3 fuzz/seed.py [CORPUS_DIR]   # default: $FERRICORN_HTTP_CORPUS, else ../shared/http-corpus
"""

import base64
import hashlib
import json
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Bits of the selector byte, as options_from reads them.
PERMIT_MISSING_HOST = 0x01
OBS_FOLD = 0x02
STRIP_SPACES = 0x04
UNCONVENTIONAL_METHOD = 0x08  # also turns on casefolding
UNCONVENTIONAL_VERSION = 0x10
HEADER_MAP = {"drop": 0x00, "refuse": 0x40, "dangerous": 0x60}
SMALL_LIMITS = 0x80


def corpus_dir(argv):
    if len(argv) > 1:
        return argv[1]
    return os.environ.get("FERRICORN_HTTP_CORPUS") or os.path.join(REPO, "..", "shared", "http-corpus")


def selector(settings):
    sel = PERMIT_MISSING_HOST
    if settings.get("permit_obsolete_folding"):
        sel |= OBS_FOLD
    if settings.get("strip_header_spaces"):
        sel |= STRIP_SPACES
    if settings.get("permit_unconventional_http_method") or settings.get("casefold_http_method"):
        sel |= UNCONVENTIONAL_METHOD
    if settings.get("permit_unconventional_http_version"):
        sel |= UNCONVENTIONAL_VERSION
    sel |= HEADER_MAP.get(settings.get("header_map", "drop"), 0)
    small = [settings.get(k) for k in ("limit_request_line", "limit_request_fields",
                                       "limit_request_field_size")]
    if any(v is not None and 0 < v < 100 for v in small):
        sel |= SMALL_LIMITS
    return sel


def chunked_bodies(raw):
    """The bytes after each head that announces a chunked body."""
    out = []
    pos = 0
    while True:
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        head = raw[pos:end].lower()
        if b"transfer-encoding" in head and b"chunked" in head:
            out.append(raw[end + 4:])
        pos = end + 4


def write(dirname, data):
    os.makedirs(dirname, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(dirname, name), "wb") as f:
        f.write(data)


# Requests the corpus has none of: protocol upgrades (`RequestHead::upgrade`).
EXTRA_REQUESTS = [
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]


def ws_frame(opcode, payload, fin=True, rsv1=False, mask=b"\x01\x02\x03\x04"):
    """A client's websocket frame (masked, as RFC 6455 requires of clients)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflated(data):
    """A permessage-deflate payload: raw deflate, sync flush, its 00 00 ff ff tail left off."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


# Client frames for `websocket_frames`: text, binary, fragments, control frames, a close, UTF-8 cut
# across fragments, a frame over the 1 KiB limit.
WS_SESSIONS = [
    ws_frame(1, b"hello"),
    ws_frame(2, bytes(range(200))),
    ws_frame(1, b"frag", fin=False) + ws_frame(0, b"ment"),
    ws_frame(9, b"ping") + ws_frame(1, b"after ping"),
    ws_frame(10, b"pong"),
    ws_frame(8, b"\x03\xe8bye"),
    ws_frame(1, "caf\u00e9".encode()) + ws_frame(8, b""),
    ws_frame(1, "\u00e9\u20ac\U0001f600".encode() * 10, fin=False) + ws_frame(0, "x\u20ac".encode()),
    ws_frame(2, b"x" * 3000),
]
# Compressed ones (option bit 0 agrees on permessage-deflate): a small one, a zip bomb, one
# compressed message in two frames, a ping after one.
WS_DEFLATED = [
    ws_frame(1, deflated(b"hello hello hello"), rsv1=True),
    ws_frame(2, deflated(bytes(200000)), rsv1=True),
    ws_frame(1, deflated(b"abcabcabc")[:3], fin=False, rsv1=True) + ws_frame(0, deflated(b"abcabcabc")[3:]),
    ws_frame(1, deflated("\u00fc".encode() * 100), rsv1=True) + ws_frame(9, b""),
]
# For `websocket_deflate`: extension offers and compressed messages.
WS_OFFERS = [
    b"permessage-deflate",
    b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate; server_max_window_bits=10; server_no_context_takeover, permessage-deflate",
    b'x-webkit-deflate-frame\npermessage-deflate; client_no_context_takeover; server_max_window_bits="9"',
]
WS_COMPRESSED = [
    deflated(b"hello hello"),
    deflated(bytes(1000000)),
    deflated(bytes(range(256)) * 20) + deflated(b"more"),
    zlib.compress(b"final")[2:-4],  # a final block
]
# For `static_request`: two bytes of length (x97), then path, Range, Accept-Encoding, tags, date.
STATIC_REQUESTS = [
    b"css/app.css\nbytes=0-99\ngzip, deflate, br\n\"5f3a-1a2b\"\nSun, 06 Nov 1994 08:49:37 GMT",
    b"a/%2e%2e/%2F..%2fetc\nbytes=-500\nbr;q=0, gzip;q=0.5, *;q=0.1\nW/\"x\", \"y,z\"\nSunday, 06-Nov-94 08:49:37 GMT",
    b"%00%5c%zz//./x\nbytes=5-,7-9\nidentity;q=1.000\n*\nSun Nov  6 08:49:37 1994",
    b"base.5af66c1b1797.css\nBytes = 99999999999999999999-\nGZIP;Q=0.001\n\"ab\nnot a date",
]


def main(argv):
    src = corpus_dir(argv)
    counts = {"parse_request": 0, "chunked_decoder": 0, "websocket_frames": 0,
              "websocket_deflate": 0, "static_request": 0}
    for i, fields in enumerate(STATIC_REQUESTS):
        for length in (0, 1, 300 + i):
            write(os.path.join(HERE, "corpus", "static_request"), length.to_bytes(2, "little") + fields)
            counts["static_request"] += 1
    # websocket_frames: an option byte (bit 0 permessage-deflate, bit 1 client_no_context_takeover,
    # bit 2 the 1 KiB limit, bits 3-7 bytes that came with the handshake), a split seed, the frames.
    for i, frames in enumerate(WS_SESSIONS):
        for opts in (0x00, 0x04, 3 << 3):
            write(os.path.join(HERE, "corpus", "websocket_frames"), bytes([opts, i]) + frames)
            counts["websocket_frames"] += 1
    for i, frames in enumerate(WS_DEFLATED):
        for opts in (0x01, 0x03, 0x05):
            write(os.path.join(HERE, "corpus", "websocket_frames"), bytes([opts, i]) + frames)
            counts["websocket_frames"] += 1
    # websocket_deflate: the offer's length, the limit and split seed, the offer, compressed data.
    for offer in WS_OFFERS:
        for i, body in enumerate(WS_COMPRESSED):
            write(os.path.join(HERE, "corpus", "websocket_deflate"),
                  bytes([len(offer), (i * 37 + 5) & 0xFF]) + offer + body)
            counts["websocket_deflate"] += 1
    for raw in EXTRA_REQUESTS:
        write(os.path.join(HERE, "corpus", "parse_request"), bytes([0]) + raw)
        counts["parse_request"] += 1
    for fname in ("valid.json", "invalid.json"):
        with open(os.path.join(src, fname)) as f:
            cases = json.load(f)
        for case in cases:
            raw = base64.b64decode(case["raw_base64"])
            sel = selector(case.get("settings", {}))
            for s in (sel, sel & ~PERMIT_MISSING_HOST):
                write(os.path.join(HERE, "corpus", "parse_request"), bytes([s]) + raw)
                counts["parse_request"] += 1
            for i, body in enumerate(chunked_bodies(raw)):
                for split_seed in (0x00, 0x80 + i):
                    write(os.path.join(HERE, "corpus", "chunked_decoder"),
                          bytes([sel, split_seed]) + body)
                    counts["chunked_decoder"] += 1
    for target, n in counts.items():
        print(f"{target}: {n} seeds in fuzz/corpus/{target}/")


if __name__ == "__main__":
    main(sys.argv)
