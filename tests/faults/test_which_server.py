"""Two clusters on one host: each event and digest row says which server
(its data directory) it came from; digests are per server unless merged."""

import pytest

from helpers import Run
from lab.servers import PgServer

pytestmark = pytest.mark.integration


def test_events_and_digests_name_their_server(pg):
    with PgServer() as other:
        pids = f"{pg.pid},{other.pid}"
        with Run(["postgres", "-m", "0", "-j", "-p", pids]) as stream, \
                Run(["postgres", "--digest", "-j", "-p", pids]) as digest, \
                Run(["postgres", "--digest", "-j", "--merge-servers", "-p", pids]) as merged, \
                Run(["postgres", "--digest", "-p", pids]) as table:
            for _ in range(3):
                pg.psql("SELECT 'same shape'")
            for _ in range(5):
                other.psql("SELECT 'same shape'")
        servers = {e["server"] for e in stream.events() if e["query"] == "SELECT 'same shape'"}
        assert servers == {str(pg.data), str(other.data)}
        rows = [r for r in digest.events()[-1]["rows"] if r["fingerprint"] == "select ?"]
        assert sorted((r["server"], r["calls"]) for r in rows) == sorted([(str(pg.data), 3), (str(other.data), 5)])
        rows = [r for r in merged.events()[-1]["rows"] if r["fingerprint"] == "select ?"]
        assert [r["calls"] for r in rows] == [5 + 3]
        assert f"(server {pg.data})" in table.stdout and f"(server {other.data})" in table.stdout
