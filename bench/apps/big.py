"""A 100 KiB response body, built once at import."""

BODY = bytes(range(256)) * 400  # 102400 bytes
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
