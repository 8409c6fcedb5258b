"""--hist and --digest on real servers: exact call counts, and grouping
checked against pt-fingerprint (MariaDB) and pg_stat_statements (PostgreSQL)."""

import re

import pytest

from helpers import ROOT, Run
from lab.servers import PgServer

pytestmark = pytest.mark.integration


def final(run):
    docs = run.events()
    assert docs, run.stderr
    return docs[-1]


def test_pg_digest_counts_exactly(pg):
    with Run(["postgres", "--digest", "-j", "-p", pg.pid]) as run:
        pg.pgbench("-n", "-S", "-c", "2", "-j", "2", "-t", "3000")
        pg.pgbench("-n", "-M", "extended", "-S", "-c", "2", "-j", "2", "-t", "500")
    doc = final(run)
    rows = {r["fingerprint"]: r for r in doc["rows"]}
    assert doc["lost"] == 0
    assert rows["select abalance from pgbench_accounts where aid = ?"]["calls"] == 6000
    assert rows["select abalance from pgbench_accounts where aid = $1"]["calls"] == 1000
    r = rows["select abalance from pgbench_accounts where aid = ?"]
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["fingerprint_id"].startswith("0x") and r["sample"].startswith("SELECT abalance")
    assert abs(r["mean_ms"] * r["calls"] - r["total_ms"]) < 0.01


def test_pg_digest_intervals(pg):
    with Run(["postgres", "--digest", "-j", "-p", pg.pid, "1"]) as run:
        pg.pgbench("-n", "-S", "-c", "2", "-T", "3")
    docs = run.events()
    assert len(docs) >= 3
    key = "select abalance from pgbench_accounts where aid = ?"
    per_interval = sum(r["calls"] for d in docs[:-1] for r in d["rows"] if r["fingerprint"] == key)
    whole = sum(r["calls"] for r in docs[-1]["rows"] if r["fingerprint"] == key)
    assert whole == per_interval > 0  # the last document before the final one is the partial interval
    assert all({"interval_start", "interval_end", "engine", "lost", "rows"} <= set(d) for d in docs)


def test_pg_hist_counts_and_table(pg):
    with Run(["postgres", "--hist", "-j", "-p", pg.pid]) as run:
        pg.pgbench("-n", "-S", "-c", "2", "-t", "1000")
    doc = final(run)
    assert doc["count"] >= 2000 and doc["lost"] == 0
    assert sum(b["count"] for b in doc["buckets"]) == doc["count"]
    assert doc["p50_ms"] <= doc["p95_ms"] <= doc["p99_ms"] <= doc["max_ms"]
    with Run(["postgres", "--hist", "-p", pg.pid, "1", "2"]) as run:
        pg.pgbench("-n", "-S", "-c", "1", "-T", "3")
        run.proc.wait(timeout=60)  # it stops by itself after two intervals
    out = run.stdout
    assert out.count("usecs") == 2 and out.count("p50 ") == 2  # two intervals, then it stops
    assert run.returncode == 0


def test_mysql_digest_prepared_counts_exactly(maria):
    with Run(["mysql", "--digest", "-j", "-p", maria.pid]) as run:
        maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--db-ps-mode=auto",
                       "--events=2000", "--threads=2", "run")
        maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--db-ps-mode=disable",
                       "--events=1000", "--threads=2", "run")
    rows = {r["fingerprint"]: r for r in final(run)["rows"]}
    assert rows["select c from sbtest? where id=?"]["calls"] == 3000


def test_mysql_digest_groups_like_pt_fingerprint(maria):
    """The corpus of tests/unit/test_fingerprint.py, executed on MariaDB: each
    pt-fingerprint group is one digest row with all of its statements, so the
    kernel's hash never merged what pt-fingerprint keeps apart."""
    import pymysql
    from dbslower.fingerprint import mysql_fingerprint
    text = (ROOT / "tests" / "data" / "mysql_corpus.sql").read_text()
    corpus = [q.strip() for q in text.split(";\n") if q.strip() and not q.startswith("--- ")]
    conn = pymysql.connect(unix_socket=str(maria.sock), user="root", database="sbtest", autocommit=True)
    try:
        with Run(["mysql", "--digest", "-j", "-p", maria.pid]) as run:
            with conn.cursor() as cur:
                for q in corpus:
                    try:
                        cur.execute(q)
                        cur.fetchall()
                    except pymysql.MySQLError:
                        pass  # most tables do not exist: a failed statement still counts
    finally:
        conn.close()
    expected = {}
    for q in corpus:
        fp = mysql_fingerprint(q)
        expected[fp] = expected.get(fp, 0) + 1
    rows = {r["fingerprint"]: r["calls"] for r in final(run)["rows"]}
    got = {fp: rows.get(fp) for fp in expected}
    # USE is a statement, but pymysql's USE text goes through COM_QUERY too
    assert got == expected


@pytest.fixture(scope="module")
def pgss():
    server = PgServer(settings={"shared_preload_libraries": "pg_stat_statements",
                                "pg_stat_statements.track": "top"}).start()
    server.psql("CREATE EXTENSION pg_stat_statements")
    server.pgbench("-i", "-s", "1", "-q")
    yield server
    server.stop()


PG_MIXED = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i}",
    "select  abalance\n from pgbench_accounts where aid={i} /* app {i} */",
    "SELECT count(*) FROM pgbench_accounts WHERE aid BETWEEN {i} AND {i} + 10",
    "SELECT * FROM pgbench_branches WHERE bid IN (1, {i}, 3)",
    "SELECT bid, 'x{i}'::text, -{i}, {i}.5 FROM pgbench_branches WHERE bid = -{i}",
    "UPDATE pgbench_tellers SET tbalance = tbalance + {i} WHERE tid = 1",
    'SELECT "bid" FROM pgbench_branches WHERE bid = {i}',
    "SELECT aid FROM pgbench_accounts WHERE aid < {i} ORDER BY aid DESC LIMIT {i}",
    "SELECT tid FROM pgbench_tellers WHERE tid = {i} AND true",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({i}, 1, {i}, -{i}, now())",
]


def test_pg_digest_groups_like_pg_stat_statements(pgss):
    """Every pg_stat_statements entry (a queryid) matches one digest row with
    the same number of calls, after a mixed workload."""
    pgss.psql("SELECT pg_stat_statements_reset()")
    statements = [t.format(i=i) for i in range(1, 21) for t in PG_MIXED]
    script = ";\n".join(statements) + ";\n"
    with Run(["postgres", "--digest", "-j", "-p", pgss.pid]) as run:
        import subprocess
        from lab.servers import PG_BIN
        subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script,
                       env=pgss.env, check=True, capture_output=True, text=True, timeout=120)
        pgss.pgbench("-n", "-c", "2", "-t", "200")
    rows = final(run)["rows"]
    entries = pgss.psql("SELECT calls, query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
                        " AND query NOT IN ('BEGIN', 'END', 'COMMIT')")
    from dbslower.fingerprint import postgres_fingerprint

    def key(fp):
        # pg_stat_statements shows constants as $n; dbslower shows them as ?
        return re.sub(r"\$\d+", "?", fp)

    theirs = {}
    for line in entries.splitlines():
        calls, query = line.split("|", 1)
        theirs.setdefault(key(postgres_fingerprint(query)), []).append(int(calls))
    ours = {}
    for r in rows:
        if r["fingerprint"] in ("begin", "end", "commit"):
            continue
        ours[key(r["fingerprint"])] = ours.get(key(r["fingerprint"]), 0) + r["calls"]
    assert len(theirs) >= 12
    for k, calls in theirs.items():
        assert len(calls) == 1, f"dbslower merges pg_stat_statements entries {k!r}: {calls}"
        assert ours.get(k) == calls[0], (k, ours.get(k), calls[0])
