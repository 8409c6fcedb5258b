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
