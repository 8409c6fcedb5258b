"""pytest fixtures: the real servers the integration tests share."""

from pathlib import Path
import shutil

import pytest

from helpers import require, require_root


@pytest.fixture(scope="session")
def pg():
    require_root()
    from lab.servers import PG_BIN, PgServer
    require((PG_BIN / "postgres").exists(), "PostgreSQL 15 is not installed (make setup)")
    server = PgServer().start()
    server.pgbench("-i", "-s", "1", "-q")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def maria():
    require_root()
    from lab.servers import MariaServer, mariadbd_path
    require(Path(mariadbd_path()).exists(), "MariaDB is not installed (make setup)")
    require(shutil.which("sysbench") is not None, "sysbench is not installed (make setup)")
    server = MariaServer().start()
    server.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "prepare")
    yield server
    server.stop()


@pytest.fixture(params=["slowlog", "dispatch"])
def my_machine(request, monkeypatch):
    """Runs a MariaDB test with each uprobe machine: the default one, timed by
    the THD's own slow-log times at log_slow_statement, and the one MySQL
    needs (dispatch_command to Protocol::end_statement), forced on MariaDB."""
    import helpers
    from dbslower.plan import FORCE_DISPATCH_ENV
    if request.param == "dispatch":
        monkeypatch.setitem(helpers.ENV, FORCE_DISPATCH_ENV, "1")
    return request.param


@pytest.fixture(params=["server-times", "status"])
def pg_machine(request, monkeypatch):
    """Runs a PostgreSQL test with each machine of bpf/postgres.bpf.c: the
    default one, whose windows start at the server's own statement stamp,
    and the one for builds where that stamp is not located (windows open at
    the backend's state reports), forced."""
    import helpers
    from dbslower.plan import FORCE_STATUS_ENV
    if request.param == "status":
        monkeypatch.setitem(helpers.ENV, FORCE_STATUS_ENV, "1")
    return request.param
