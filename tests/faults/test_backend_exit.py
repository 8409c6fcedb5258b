"""A backend that dies mid-statement: no phantom statement when its PID is
reused, and a long statement survives heavy connection churn."""

import threading
import time

import psycopg
import pytest

from helpers import Run, require
from lab.servers import wait_for

pytestmark = pytest.mark.integration

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def connect(pg):
    return psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres", autocommit=True)


def background(pg, sql):
    """Runs sql on its own connection in a thread; returns (thread, backend pid)."""
    conn = connect(pg)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def run():
        try:
            conn.execute(sql)
        except psycopg.Error:
            pass
        finally:
            conn.close()
    t = threading.Thread(target=run)
    t.start()
    return t, pid


def test_reused_pid_reports_no_phantom_statement(pg):
    require(open(NS_LAST_PID).read().strip().isdigit(), "ns_last_pid is not writable here")
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        t, victim = background(pg, "SELECT pg_sleep(30) /* terminated */")
        time.sleep(2)  # well inside its statement
        with connect(pg) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        t.join(30)
        wait_for(lambda: not __import__("os").path.exists(f"/proc/{victim}"), 30, "the backend to exit")
        reused = None
        for _ in range(50):  # another fork on the host may take the PID first: try again
            with open(NS_LAST_PID, "w") as f:
                f.write(str(victim - 1))
            conn = connect(pg)
            if conn.execute("SELECT pg_backend_pid()").fetchone()[0] == victim:
                reused = conn
                break
            conn.close()
        assert reused, "could not get the terminated backend's PID again"
        with reused:
            reused.execute("SELECT 'after reuse'")
        time.sleep(0.5)
    events = [e for e in run.events() if e["pid"] == victim]
    assert [e["query"] for e in events if "after reuse" in e["query"]] == ["SELECT 'after reuse'"]
    assert all(e["duration_ms"] < 1000 for e in events), [(e["query"], e["duration_ms"]) for e in events]
    assert not any("terminated" in e["query"] for e in events)
    assert "1 statements did not finish" in run.stderr


def test_long_statement_survives_ten_thousand_new_connections(pg, tmp_path):
    script = tmp_path / "one.sql"
    script.write_text("SELECT 1;\n")
    with Run(["postgres", "-m", "1000", "-j", "-p", pg.pid]) as run:
        t, pid = background(pg, "SELECT pg_sleep(120) /* outlives the churn */")
        t0 = time.monotonic()
        pg.pgbench("-n", "-C", "-c", "1", "-t", "10000", "-f", script)
        churn_s = time.monotonic() - t0
        with connect(pg) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join(30)
        time.sleep(0.5)
    long = [e for e in run.events() if "outlives the churn" in e["query"]]
    assert len(long) == 1, run.stderr
    assert long[0]["status"] == "error"  # cancelled, as the server says
    assert long[0]["duration_ms"] >= churn_s * 1000


@pytest.mark.parametrize("method", ["auto", "socket"])
def test_parallel_workers_are_not_unfinished_statements(pg, method):
    """Parallel workers report the leader's text as running and exit without
    going idle: their exits are not statements that did not finish."""
    with Run(["postgres", "--method", method, "-m", "0", "-j", "-p", pg.pid]) as run:
        with connect(pg) as conn:
            conn.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
                         "SET min_parallel_table_scan_size = 0; SET min_parallel_index_scan_size = 0; "
                         "SET max_parallel_workers_per_gather = 2")
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT count(*) FROM pgbench_accounts"))
            assert "Workers Planned: 2" in plan, plan
            launched = 0
            for _ in range(3):
                rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "
                                    "SELECT count(*) FROM pgbench_accounts /* parallel */").fetchall()
                launched += sum(int(r[0].split(":")[1]) for r in rows if "Workers Launched" in r[0])
        time.sleep(0.5)
    assert launched > 0, "no parallel worker was launched"
    parallel = [e for e in run.events() if "/* parallel */" in e["query"]]
    assert len(parallel) == 3 and all(e["status"] == "ok" for e in parallel), parallel
    assert "did not finish" not in run.stderr, run.stderr
