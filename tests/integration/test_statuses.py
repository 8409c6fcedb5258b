"""Statuses and error codes a DBA can act on (issue 10): each statement's
status and code against what the client was told, by real drivers."""

import subprocess

import pytest

from helpers import Run
from lab.logs import parse_mariadb_slow_log

pytestmark = pytest.mark.integration


def _pg_conninfo(pg):
    return f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"


def test_postgres_error_codes_are_what_the_client_got(pg, pg_machine):
    """Every failure's SQLSTATE as psycopg received it; successes have none."""
    import psycopg
    pg.psql("DROP TABLE IF EXISTS ec_t; CREATE TABLE ec_t (id int PRIMARY KEY, v varchar(3))")
    statements = ["SELECT no_such_column_ec", "SELECT 1/0", "INSERT INTO ec_t VALUES (1, 'x')",
                  "INSERT INTO ec_t VALUES (1, 'y')", "INSERT INTO ec_t VALUES (2, 'toolong')",
                  "SELECT * FROM no_such_table_ec", "SELECT 'fine_ec'", "SELECT pg_sleep(0.5)"]
    client = {}
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(_pg_conninfo(pg), autocommit=True) as conn:
            conn.execute("SET statement_timeout = '50ms'")
            for q in statements:
                try:
                    conn.execute(q)
                    client[q] = None
                except psycopg.Error as e:
                    client[q] = e.sqlstate
    got = {e["query"]: e for e in run.events() if e["query"] in client}
    assert set(got) == set(client)
    assert {q: got[q]["error_code"] for q in client} == client
    assert {q: got[q]["status"] for q in client} == {q: "error" if c else "ok" for q, c in client.items()}
    assert client["SELECT pg_sleep(0.5)"] == "57014" and client["SELECT 1/0"] == "22012"


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_postgres_error_at_commit_marks_the_statement(pg, pg_machine, protocol):
    """A deferred foreign key fails at commit. With the extended protocol an
    autocommit statement commits at Sync, after its Execute's window
    (defect 4); with the simple one, inside the Query message."""
    import psycopg
    pg.psql("DROP TABLE IF EXISTS dc_child, dc_parent; CREATE TABLE dc_parent (id int PRIMARY KEY); "
            "CREATE TABLE dc_child (pid int REFERENCES dc_parent DEFERRABLE INITIALLY DEFERRED)")
    codes = []
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(_pg_conninfo(pg), autocommit=True) as conn:
            for i in range(3):
                if protocol == "extended":
                    try:
                        conn.execute("INSERT INTO dc_child VALUES (%s)", (1000 + i,))
                        codes.append(None)
                    except psycopg.Error as e:
                        codes.append(e.sqlstate)
                else:  # psql sends a simple Query
                    r = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "-c",
                                        f"INSERT INTO dc_child VALUES ({1000 + i})"],
                                       env=pg.env, capture_output=True, text=True, timeout=60)
                    codes.append("23503" if "foreign key" in r.stderr else r.stderr or None)
            conn.execute("SELECT 'after_dc'")
    assert codes == ["23503"] * 3
    events = [e for e in run.events() if "dc_child" in e["query"] or e["query"] == "SELECT 'after_dc'"]
    inserts = [e for e in events if "dc_child" in e["query"]]
    assert [(e["status"], e["error_code"]) for e in inserts] == [("error", "23503")] * 3
    assert events[-1]["query"] == "SELECT 'after_dc'" and events[-1]["status"] == "ok"


def test_postgres_pipeline_failure_is_its_own_statements(pg, pg_machine):
    """In a pipeline the statement before a failure has finished (the
    server logged its duration), and the failure is the next message's,
    with its own text: one failing at Bind (a bad parameter) and one at
    Execute (division by zero), against what psycopg raised."""
    import psycopg
    failing = {"SELECT %s::int AS pl_bind": ("pl", "22P02"), "SELECT 1 / %s::int AS pl_exec": (0, "22012")}
    raised = []
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(_pg_conninfo(pg), autocommit=True) as conn:
            for q, (arg, _) in failing.items():
                try:
                    with conn.pipeline():
                        conn.execute("SELECT 'pl_before', %s::int", (1,))
                        conn.execute(q, (arg,))
                except psycopg.Error as e:
                    raised.append(e.sqlstate)
            conn.execute("SELECT 'pl_after'")
    assert raised == [code for _, code in failing.values()]
    got = [(e["query"], e["status"], e["error_code"]) for e in run.events() if "pl_" in e["query"]]
    before = ("SELECT 'pl_before', $1::int", "ok", None)
    assert got == [before, ("SELECT $1::int AS pl_bind", "error", "22P02"),
                   before, ("SELECT 1 / $1::int AS pl_exec", "error", "22012"),
                   ("SELECT 'pl_after'", "ok", None)]


def test_postgres_digest_counts_errors_by_code(pg, pg_machine):
    with Run(["postgres", "--digest", "-j", "-p", pg.pid, "1"]) as run:
        for _ in range(3):
            pg.psql("SELECT 1/0", check=False)
        pg.psql("SELECT 1/1")
        import time
        time.sleep(1.5)
    rows = run.events()[-1]["rows"]  # the whole run
    div = [r for r in rows if "/" in r["fingerprint"] and r["fingerprint"].startswith("select")]
    assert div, [r["fingerprint"] for r in rows]
    assert sum(r["failed"] for r in div) == 3
    merged = {}
    for r in div:
        for code, n in r["errors"].items():
            merged[code] = merged.get(code, 0) + n
    assert merged == {"22012": 3}


def _maria_conn(maria):
    import pymysql
    return pymysql.connect(unix_socket=str(maria.sock), user="root", database="sbtest", autocommit=True)


def test_mariadb_status_is_the_final_ok_or_err(maria, my_machine):
    """Notes, handled errors and strict-mode errors: the status is what the
    client received (defect 6), with its error number."""
    import pymysql
    maria.sql("CREATE OR REPLACE TABLE st_t (v varchar(3), n tinyint, i int)", db="sbtest")
    subprocess.run(maria.client_args() + ["--delimiter=//", "sbtest", "-e",
                   "CREATE OR REPLACE PROCEDURE st_handled() BEGIN "
                   "DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END; SELECT * FROM st_missing; END//"],
                   check=True, capture_output=True, timeout=60)
    statements = ["DROP TABLE IF EXISTS st_not_there", "CALL st_handled()",
                  "INSERT INTO st_t (v) VALUES ('toolong')", "INSERT INTO st_t (n) VALUES (1000)",
                  "INSERT INTO st_t (i) VALUES ('abc')", "SELECT no_such_column_st",
                  "INSERT INTO st_t (v, n, i) VALUES ('ok', 1, 1)", "SELECT 'fine_st'"]
    client = {}
    with Run(["mysql", "-m", "0", "-j", "-p", maria.pid]) as run:
        conn = _maria_conn(maria)
        with conn.cursor() as cur:
            for q in statements:
                try:
                    cur.execute(q)
                    cur.fetchall()
                    client[q] = None
                except pymysql.MySQLError as e:
                    client[q] = str(e.args[0])
        conn.close()
    assert client["INSERT INTO st_t (v) VALUES ('toolong')"] == "1406"  # strict mode is MariaDB's default
    assert client["DROP TABLE IF EXISTS st_not_there"] is None and client["CALL st_handled()"] is None
    got = {e["query"]: e for e in run.events() if e["query"] in client}
    assert set(got) == set(client)
    assert {q: got[q]["error_code"] for q in client} == client
    assert {q: got[q]["status"] for q in client} == {q: "error" if c else "ok" for q, c in client.items()}


def test_mariadb_multi_statement_failure_keeps_its_own_text(maria, my_machine):
    """A multi-statement query stops at a failing statement: that statement
    is reported with its own text, not with the ones after it, and a packet
    starting with blanks keeps its first statement whole (defect 8). The
    slow log is the reference for texts."""
    log = maria.slow_log_on(maria.dir / f"multi-{my_machine}.log")
    try:
        with Run(["mysql", "-m", "0", "-j", "-p", maria.pid]) as run:
            for sql in ("   SELECT 'w1'; SELECT 'w2'//", "SELECT 'm1'; SELECT no_such_col_m; SELECT 'm3'//"):
                subprocess.run(maria.client_args() + ["--delimiter=//", "sbtest", "-e", sql],
                               capture_output=True, timeout=60)
    finally:
        maria.slow_log_off()
    logged = [e.query for e in parse_mariadb_slow_log(log.read_text(errors="replace"))
              if "'w" in e.query or "'m" in e.query or "_m" in e.query]
    events = [e for e in run.events() if "'w" in e["query"] or "'m" in e["query"] or "_m" in e["query"]]
    assert [e["query"] for e in events] == logged == ["SELECT 'w1'", "SELECT 'w2'", "SELECT 'm1'",
                                                      "SELECT no_such_col_m"]
    assert [(e["status"], e["error_code"]) for e in events] == [("ok", None)] * 3 + [("error", "1054")]


def test_mariadb_digest_counts_errors_by_code(maria, my_machine):
    import pymysql
    maria.sql("CREATE OR REPLACE TABLE dg_t (v varchar(3))", db="sbtest")
    with Run(["mysql", "--digest", "-j", "-p", maria.pid, "1"]) as run:
        conn = _maria_conn(maria)
        refused = []
        with conn.cursor() as cur:
            for i in range(4):
                try:
                    cur.execute(f"INSERT INTO dg_t VALUES ('{'x' * (3 + i)}')")
                except pymysql.MySQLError as e:
                    refused.append(str(e.args[0]))
        conn.close()
        import time
        time.sleep(1.5)
    rows = [r for r in run.events()[-1]["rows"] if r["fingerprint"].startswith("insert into dg_t")]  # the whole run
    assert refused == ["1406"] * 3  # the client's own count
    assert sum(r["calls"] for r in rows) == 4 and sum(r["failed"] for r in rows) == 3
    merged = {}
    for r in rows:
        for code, n in r["errors"].items():
            merged[code] = merged.get(code, 0) + n
    assert merged == {"1406": 3}
