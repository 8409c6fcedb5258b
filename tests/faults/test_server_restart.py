"""A server restarted while dbslower runs: with -p the PID is gone, and
dbslower says so and exits non-zero; by binary (-x, or discovery) the new
postmaster is traced without a restart of dbslower."""

import time

import pytest

from helpers import Run, uprobes
from lab.servers import PgServer, wait_for, wheel_pg_bindir

pytestmark = pytest.mark.integration



def test_p_target_restarted_exits_nonzero_and_says_why():
    before = uprobes()
    with PgServer() as pg:
        with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
            pg.psql("SELECT 'before restart'")
            old = pg.pid
            pg.restart()
            wait_for(lambda: run.proc.poll() is not None, 20, "dbslower to notice its target is gone")
        assert run.returncode == 6, run.stderr
        assert f"the traced process ({old}) exited" in run.stderr and "dbslower serve -p" in run.stderr
        assert "Traceback" not in run.stderr
        assert any(e["query"] == "SELECT 'before restart'" for e in run.events())
    assert uprobes() == before


def test_x_follows_a_restarted_server():
    bindir = wheel_pg_bindir("pgserver")
    with PgServer(bindir=bindir, user="dbslower_wheel") as pg:
        with Run(["postgres", "-m", "0", "-j", "-x", bindir / "postgres"]) as run:
            pg.psql("SELECT 'before restart'")
            pg.restart()
            pg.psql("SELECT 'after restart'")
            time.sleep(0.5)
        queries = [e["query"] for e in run.events()]
        assert "SELECT 'before restart'" in queries and "SELECT 'after restart'" in queries
        assert run.returncode == 0
