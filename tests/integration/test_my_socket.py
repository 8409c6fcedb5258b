"""MariaDB with the socket method (--method socket) against the server's own
slow log (long_query_time=0) and the clients' own counts and error numbers:
every command the server logged is reported once, with its text (prepared
statements included) and its status, and its latency is the server's plus
the reading of the command and the sending of its reply."""

import re
import statistics
import time

import pytest

from helpers import ROOT, Run, require, run_cli, self_signed_cert
from lab.logs import Logged, compare, parse_mariadb_slow_log, strip_literals

pytestmark = pytest.mark.integration

# What the socket method counts and the slow log does not: reading the
# command's payload and sending the reply (see README, "The socket method").
MEDIAN_EXTRA_MS = 0.050
NOISE_MS = 0.002  # the slow log's microseconds and the two clocks' places


@pytest.mark.parametrize("ps_mode", ["disable", "auto"])
def test_socket_method_matches_slow_log(maria, ps_mode):
    """One sysbench connection, so the log's order is the events' order."""
    log = maria.slow_log_on(maria.dir / f"slow-socket-{ps_mode}.log")
    try:
        with Run(["mysql", "--method", "socket", "-m", "0", "-j", "-p", maria.pid]) as run:
            maria.sysbench("oltp_read_only", "--tables=1", "--table-size=10000", f"--db-ps-mode={ps_mode}",
                           "--events=100", "--threads=1", "run")
    finally:
        maria.slow_log_off()
    logged = [Logged(0, e.duration_ms, e.query) for e in parse_mariadb_slow_log(log.read_text(errors="replace"))
              if "slow_query_log" not in e.query]
    events = [dict(e, conn=0) for e in run.events() if "slow_query_log" not in e["query"]]
    pairs, problems = compare(logged, events, key="conn", normalize=strip_literals)
    assert not problems, problems[:10]
    assert len(pairs) >= 100 * 16
    assert "lost" not in run.stderr and "not followed" not in run.stderr and "no text" not in run.stderr, run.stderr
    expected = "COM_STMT_EXECUTE" if ps_mode == "auto" else "COM_QUERY"
    assert sum(ev["command"] == expected for _, ev in pairs) >= 100 * 14
    extra = [ev["duration_ms"] - entry.duration_ms for entry, ev in pairs]
    # Never shorter than the server's own figure...
    assert min(extra) >= -NOISE_MS, sorted(extra)[:5]
    # ...and longer only by reading the command and sending the reply.
    assert 0 < statistics.median(extra) <= MEDIAN_EXTRA_MS, statistics.median(extra)
    print(f"{ps_mode}: {len(pairs)} statements, socket - slow log: median {statistics.median(extra) * 1000:.1f} us, "
          f"p99 {sorted(extra)[len(extra) * 99 // 100] * 1000:.1f} us, max {max(extra) * 1000:.1f} us")


def test_socket_method_statuses_and_codes(maria):
    """Error numbers as PyMySQL received them; warnings and a procedure that
    handles its own error are not errors."""
    import pymysql
    from pymysql.constants import CLIENT
    codes = []
    with Run(["mysql", "--method", "socket", "-m", "0", "-j", "-p", maria.pid]) as run:
        conn = pymysql.connect(unix_socket=str(maria.sock), user="root", autocommit=True,
                               client_flag=CLIENT.MULTI_STATEMENTS)
        cur = conn.cursor()
        for sql in ("CREATE DATABASE IF NOT EXISTS socket_statuses",
                    "DROP TABLE IF EXISTS socket_statuses.t",
                    "CREATE TABLE socket_statuses.t (id INT PRIMARY KEY, c VARCHAR(3))",
                    "DROP TABLE IF EXISTS socket_statuses.missing",
                    "INSERT INTO socket_statuses.t VALUES (1, 'a')",
                    "INSERT INTO socket_statuses.t VALUES (1, 'b')",
                    "INSERT INTO socket_statuses.t VALUES (2, 'abcdef')",
                    "SELECT * FROM socket_statuses.no_such_table",
                    "SELEC 1",
                    "SELECT 1; SELECT * FROM socket_statuses.no_such_table",
                    "SELECT SLEEP(0.01)"):
            try:
                cur.execute(sql)
                while cur.nextset():
                    pass
            except pymysql.MySQLError as e:
                codes.append(str(e.args[0]))
        cur.close()
        # A prepared statement through the binary protocol, and its failure.
        import mysql.connector
        c2 = mysql.connector.connect(unix_socket=str(maria.sock), user="root", autocommit=True)
        pc = c2.cursor(prepared=True)
        pc.execute("SELECT id FROM socket_statuses.t WHERE id = %s", (1,))
        pc.fetchall()
        try:
            pc.execute("INSERT INTO socket_statuses.t VALUES (%s, %s)", (1, "x"))
        except mysql.connector.Error as e:
            codes.append(str(e.errno))
        c2.close()
        conn.close()
        time.sleep(0.2)
    events = run.events()
    failed = [e for e in events if e["status"] == "error"]
    assert [e["error_code"] for e in failed] == codes and len(codes) == 6, (failed, codes)
    ok = {e["query"]: e for e in events if e["status"] == "ok"}
    assert "DROP TABLE IF EXISTS socket_statuses.missing" in ok  # a note, not an error
    assert ok["SELECT SLEEP(0.01)"]["duration_ms"] >= 10
    assert ok["SELECT id FROM socket_statuses.t WHERE id = ?"]["command"] == "COM_STMT_EXECUTE"
    assert failed[-1]["query"] == "INSERT INTO socket_statuses.t VALUES (?, ?)"


def test_socket_method_user_and_database(maria):
    """Each statement's user and database are what its client connected as
    and last switched to: the handshake response's (with and without a
    database, with and without a password before it), then COM_INIT_DB and
    USE when they succeed. A connection made before tracing has none until
    it switches."""
    import mysql.connector
    import pymysql
    for db in ("shop", "crm", "hr"):
        maria.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    user = "reporting_user_with_a_long_name"
    maria.sql(f"CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY 's3cret'; "
              f"GRANT ALL ON *.* TO '{user}'@'localhost'")
    early = pymysql.connect(unix_socket=str(maria.sock), user="root", database="sbtest", autocommit=True)
    expected = []

    def run(conn, who, db, tag):
        cur = conn.cursor()
        cur.execute(f"SELECT '{tag}'")
        cur.fetchall()
        expected.append((f"SELECT '{tag}'", who, db))

    with Run(["mysql", "--method", "socket", "-m", "0", "-j", "-p", maria.pid]) as run_:
        run(early, None, None, "early")
        early.select_db("crm")
        run(early, None, "crm", "early after COM_INIT_DB")
        c1 = pymysql.connect(unix_socket=str(maria.sock), user=user, password="s3cret", database="shop",
                             autocommit=True)
        run(c1, user, "shop", "handshake")
        c1.cursor().execute("use `hr`")
        run(c1, user, "hr", "after USE")
        with pytest.raises(pymysql.MySQLError):
            c1.select_db("no_such_db")
        run(c1, user, "hr", "after a failed COM_INIT_DB")
        c1.close()
        c2 = mysql.connector.connect(unix_socket=str(maria.sock), user="root")
        run(c2, "root", None, "no database")
        c2.cmd_init_db("shop")
        run(c2, "root", "shop", "connector after COM_INIT_DB")
        c2.close()
    early.close()
    got = [(e["query"], e["user"], e["db"]) for e in run_.events() if e["query"].startswith("SELECT '")]
    assert got == expected


def test_socket_method_hist_counts_sysbench(maria):
    with Run(["mysql", "--method", "socket", "--hist", "-j", "-p", maria.pid]) as run:
        maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--db-ps-mode=auto",
                       "--events=3000", "--threads=2", "run")
    doc = run.events()[-1]
    # sysbench's own count, plus the few statements it sends as it connects
    assert 3000 <= doc["count"] <= 3000 + 10 and doc["lost"] == 0, doc


def test_socket_method_prepared_before_tracing_is_marked(maria):
    import json
    import threading
    t = threading.Thread(target=maria.sysbench, args=("oltp_point_select", "--tables=1", "--table-size=10000",
                                                      "--db-ps-mode=auto", "--time=6", "--threads=1", "run"))
    t.start()
    time.sleep(2)
    try:
        run = run_cli(["mysql", "--method", "socket", "-m", "0", "-j", "-p", maria.pid, "-d", "1.5"])
    finally:
        t.join()
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events and all(e["text_missing"] and e["command"] == "COM_STMT_EXECUTE" for e in events)
    m = re.search(r"dbslower: (\d+) statements had no text: prepared before tracing", run.stderr)
    assert m and len(events) - 100 <= int(m[1]) <= len(events), run.stderr


def test_socket_method_direct_execution_has_its_text(maria):
    """The Node.js mariadb driver sends a PREPARE and its EXECUTE together,
    the EXECUTE naming statement id 0xFFFFFFFF (MariaDB 10.2+: the one just
    prepared)."""
    import shutil
    import subprocess
    node_dir = ROOT / "tests" / "node"
    require(shutil.which("node") and (node_dir / "node_modules" / "mariadb").is_dir(),
            "node and the mariadb npm package are not installed (make setup)")
    with Run(["mysql", "--method", "socket", "-m", "0", "-j", "-p", maria.pid]) as run:
        out = subprocess.run(["node", node_dir / "mariadb_execute.js", str(maria.sock)], capture_output=True,
                             text=True, cwd=node_dir, timeout=60)
        assert out.returncode == 0 and "done 3" in out.stdout, out
    executes = [e for e in run.events() if e["command"] == "COM_STMT_EXECUTE"]
    assert [e["query"] for e in executes] == ["SELECT ? + 1 AS n"] * 3
    assert not any(e["text_missing"] for e in executes) and "no text" not in run.stderr


def test_socket_method_counts_tls_connections_it_cannot_read():
    """Over TLS the packets cannot be read (and the server then uses read()
    and write(), not traced): each such connection is counted as not
    followed (shown at exit), its statements never reported wrong; the same
    server's plain connections are still traced."""
    import shutil

    import pymysql

    from lab.servers import MariaServer
    keys = self_signed_cert("dbslower_my")
    with MariaServer(options=[f"--ssl-cert={keys / 'server.crt'}", f"--ssl-key={keys / 'server.key'}"]) as my:
        with Run(["mysql", "--method", "socket", "-m", "0", "-j", "-p", my.pid]) as run:
            for _ in range(2):
                conn = pymysql.connect(unix_socket=str(my.sock), user="root", autocommit=True,
                                       ssl={"check_hostname": False})
                cur = conn.cursor()
                cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
                assert cur.fetchone()[1], "the connection is not encrypted"
                for i in range(10):
                    cur.execute("SELECT %s AS over_tls", (i,))
                    cur.fetchall()
                conn.close()
            plain = pymysql.connect(unix_socket=str(my.sock), user="root", autocommit=True, ssl_disabled=True)
            cur = plain.cursor()
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
            assert not cur.fetchone()[1], "the plain connection is encrypted"
            cur.execute("SELECT 'in the clear'")
            plain.close()
            time.sleep(0.2)
    shutil.rmtree(keys)
    queries = [e["query"] for e in run.events()]
    assert "SELECT 'in the clear'" in queries
    assert not any("over_tls" in q for q in queries)
    m = re.search(r"(\d+) connection not followed", run.stderr)
    assert m and int(m.group(1)) == 2, run.stderr
