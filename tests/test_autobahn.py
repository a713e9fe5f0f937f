"""Websocket conformance: the Autobahn testsuite's fuzzingclient (every case; of permessage-deflate's
12.* and 13.*, the two smallest message sizes) against the asgi worker serving apps/asgi_ws_echo.py,
through tests/autobahn/run.py. No case may fail. Skipped only when the testsuite cannot be provisioned
(it needs a Python 2.7)."""

import os
import sys

import pytest

from conftest import SERVER_CMD

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "autobahn"))
import run as autobahn  # noqa: E402

pytestmark = pytest.mark.ferricorn_only


def test_autobahn_fuzzingclient_cases_pass(tmp_path):
    wstest = autobahn.provision(autobahn.default_env())
    if not wstest:
        pytest.skip("the Autobahn testsuite cannot be provisioned here (no Python 2.7, or no package index)")
    table, failed, _ = autobahn.run(wstest, str(tmp_path), server_cmd=SERVER_CMD, limit=600)
    print(autobahn.render(table))
    assert sum(sum(row.values()) for row in table.values()) >= 320, table
    assert failed == [], "failed cases: %s; reports under %s" % (failed, tmp_path)
