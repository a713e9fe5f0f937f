"""An app whose import takes longer than the server's --timeout (a slow startup)."""

import os
import time


def _load_models():
    time.sleep(float(os.environ.get("SLOW_BOOT_SECONDS", "30")))


_load_models()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
