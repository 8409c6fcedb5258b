"""PostgreSQL 15 (Debian, with USDT) driven by psql, pgbench and psycopg."""

import collections
import json
import subprocess
import threading
import time

import pytest

from helpers import ENV, Run, pg_usdt_semaphore, run_cli

pytestmark = pytest.mark.integration


def selects(events):
    return [e for e in events if e["query"].startswith("SELECT abalance")]


@pytest.mark.parametrize("protocol,attach_env", [("simple", {}), ("extended", {}), ("prepared", {}),
                                                 ("extended", {"DBSLOWER_PERF_UPROBES": "1"})],
                         ids=["simple", "extended", "prepared", "extended-perf-events"])
def test_pgbench_every_select_once(pg, protocol, attach_env):
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid], env=dict(ENV, **attach_env)) as run:
        pg.pgbench("-n", "-M", protocol, "-S", "-c", "4", "-t", "250")
    run.stop()
    assert run.returncode == 0, run.stderr
    got = selects(run.events())
    dupes = collections.Counter((e["pid"], e["ts"], e["query"]) for e in got)
    assert len(got) == 1000, ([k for k, v in dupes.items() if v > 1][:5], collections.Counter(e["pid"] for e in got))
    if protocol == "simple":
        assert all(e["query"].startswith("SELECT abalance FROM pgbench_accounts WHERE aid = ") for e in got)
    else:
        assert {e["query"] for e in got} == {"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"}
    assert "via usdt" in run.stderr


def test_sleep_latency_threshold_and_json(pg):
    with Run(["postgres", "-p", pg.pid, "-m", "50", "-j"]) as run:
        pg.psql("SELECT pg_sleep(0.2)")
        pg.psql("SELECT pg_sleep(0.01)")  # under the threshold
        pg.psql("SELECT 1")
    run.stop()
    events = run.events()
    assert [e["query"] for e in events] == ["SELECT pg_sleep(0.2)"]
    e = events[0]
    assert 200 <= e["duration_ms"] < 260
    assert e["engine"] == "postgres" and e["truncated"] is False and e["status"] == "ok"
    assert e["ts"].endswith("Z") and e["ts"][10] == "T"
    assert isinstance(e["pid"], int) and isinstance(e["tid"], int)


def test_context_from_process_title(pg):
    import psycopg
    tcp = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres application_name=probe_app"
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j"]) as run:
        with psycopg.connect(tcp, autocommit=True) as conn:
            conn.execute("SELECT 'context probe'")
            import time
            time.sleep(1)  # the backend outlives the decoding of its event
    e = [e for e in run.events() if e["query"] == "SELECT 'context probe'"][0]
    assert e["user"] == "postgres" and e["db"] == "postgres"
    assert e["client"].startswith("127.0.0.1(")
    assert e["application_name"] == "probe_app"


def test_connections_opened_after_start_and_concurrency(pg):
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        threads = [threading.Thread(target=pg.psql, args=(f"SELECT {i}, pg_sleep(0.05)",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    run.stop()
    got = [e for e in run.events() if e["query"].endswith("pg_sleep(0.05)")]
    assert sorted(e["query"] for e in got) == sorted(f"SELECT {i}, pg_sleep(0.05)" for i in range(8))
    assert len({e["pid"] for e in got}) == 8
    assert all(e["duration_ms"] >= 50 for e in got)


def test_failed_statement_is_flagged(pg):
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j"]) as run:
        pg.psql("SELECT no_such_column_here", check=False)
        pg.psql("SET statement_timeout = '50ms'; SELECT pg_sleep(1)", check=False)
        pg.psql("SELECT 'fine'")
    run.stop()
    by_query = {e["query"]: e for e in run.events()}
    assert by_query["SELECT no_such_column_here"]["status"] == "error"
    cancelled = by_query["SET statement_timeout = '50ms'; SELECT pg_sleep(1)"]
    assert cancelled["status"] == "error" and 50 <= cancelled["duration_ms"] < 900
    assert by_query["SELECT 'fine'"]["status"] == "ok"


def test_table_escapes_control_characters_and_marks_truncation(pg):
    long_query = "SELECT '" + "x" * 3000 + "'"
    with Run(["postgres", "-p", pg.pid, "-m", "0"]) as run:
        pg.psql("SELECT 'a\nb\tc\x1b[31m' AS q")
        pg.psql(long_query)
    run.stop()
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["TIME", "PID", "MS", "QUERY"]
    esc = [line for line in lines if "AS q" in line]
    assert len(esc) == 1 and "a\\nb\\tc\\x1b[31m" in esc[0] and "\x1b" not in run.stdout
    longs = [line for line in lines if "xxxx" in line]
    assert len(longs) == 1 and longs[0].endswith("[...]")


def test_text_bytes_flag_and_truncated_json(pg):
    q = "SELECT '" + "y" * 5000 + "'"
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j", "-s", "8192"]) as run:
        pg.psql(q)
    run.stop()
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j"]) as run2:
        pg.psql(q)
    run2.stop()
    full = [e for e in run.events() if "yyyy" in e["query"]]
    cut = [e for e in run2.events() if "yyyy" in e["query"]]
    assert full[0]["query"] == q and full[0]["truncated"] is False
    assert len(cut[0]["query"].encode()) == 1024 and cut[0]["truncated"] is True


def test_duration_flag_ends_the_run(pg):
    r = run_cli(["postgres", "-p", pg.pid, "-d", "1", "-j"], timeout_s=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("Tracing PostgreSQL queries slower than 1 ms")


def test_sigterm_ends_cleanly(pg):
    import signal
    run = Run(["postgres", "-p", pg.pid, "-m", "0"])
    pg.psql("SELECT 42")
    run.stop(sig=signal.SIGTERM)
    assert run.returncode == 0
    assert "Traceback" not in run.stderr
    assert any("SELECT 42" in line for line in run.stdout.splitlines())


def test_verbose_says_method_and_why(pg):
    r = run_cli(["postgres", "-p", pg.pid, "-v", "-d", "0.5"])
    assert r.returncode == 0, r.stderr
    assert "method: usdt, because binary has the USDT probe query__execute__start" in r.stderr
    assert "stmtStartTimestamp" in r.stderr and "#define PG_SERVER_TIMES 1" in r.stderr
    assert "probe hits per statement: simple Query 3 (PortalRun, check_log_duration, the backend's send" in r.stderr
    # one link per USDT probe and uprobe listed
    sites = [line for line in r.stderr.splitlines() if line.strip().startswith(("usdt ", "uprobe "))]
    assert f"attached as: {len(sites)} uprobe_multi links" in r.stderr, sites


def test_pid_filter_excludes_other_clusters(pg):
    """Two clusters on the same binary: -p traces only the one asked for."""
    from lab.servers import PgServer
    with PgServer() as other:
        with Run(["postgres", "-m", "0", "-j", "-p", other.pid]) as run:
            pg.psql("SELECT 'from the first cluster'")
            other.psql("SELECT 'from the second cluster'")
        run.stop()
    queries = {e["query"] for e in run.events()}
    assert "SELECT 'from the second cluster'" in queries
    assert "SELECT 'from the first cluster'" not in queries


def test_several_clusters_discovered(pg):
    from lab.servers import PgServer
    with PgServer() as other:
        with Run(["postgres", "-m", "0", "-j"]) as run:
            pg.psql("SELECT 'one'")
            other.psql("SELECT 'two'")
        run.stop()
    assert str(pg.pid) in run.stderr and str(other.pid) in run.stderr
    queries = [e["query"] for e in run.events()]
    assert queries.count("SELECT 'one'") == 1 and queries.count("SELECT 'two'") == 1


def test_psycopg_prepared_and_pipeline(pg):
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for i in range(20):
                conn.execute("SELECT %s::int + 1 AS prepared_probe", (i,), prepare=True)
            with conn.pipeline():
                for i in range(30):
                    conn.execute("SELECT %s::int * 2 AS pipelined_probe", (i,))
    run.stop()
    events = run.events()
    prepared = [e for e in events if "prepared_probe" in e["query"]]
    piped = [e for e in events if "pipelined_probe" in e["query"]]
    assert len(prepared) == 20 and {e["query"] for e in prepared} == {"SELECT $1::int + 1 AS prepared_probe"}
    assert len(piped) == 30 and {e["query"] for e in piped} == {"SELECT $1::int * 2 AS pipelined_probe"}


def test_json_lines_are_valid_under_load(pg):
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j"]) as run:
        pg.pgbench("-n", "-S", "-c", "2", "-T", "2")
    run.stop()
    for line in run.stdout.splitlines():
        obj = json.loads(line)
        assert {"ts", "engine", "pid", "tid", "duration_ms", "query", "truncated"} <= set(obj)
    assert "lost" not in run.stderr


def test_json_lines_from_the_compiled_helper_count_and_context(pg):
    """The helper (_jsonlines.c) writes most lines of a busy stream: one per
    transaction pgbench counted, each with its backend's context."""
    import re
    with Run(["postgres", "-p", pg.pid, "-m", "0", "-j", "-v"]) as run:
        out = pg.pgbench("-n", "-S", "-c", "2", "-t", "3000")
    assert "JSON lines: the compiled helper" in run.stderr
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    selects = [e for e in run.events() if e["query"].startswith("SELECT abalance FROM pgbench_accounts WHERE aid = ")]
    assert done == 6000 and len(selects) == done
    assert len({e["pid"] for e in selects}) == 2
    assert {(e["user"], e["db"], e["application_name"], e["status"]) for e in selects} == {
        ("postgres", "postgres", "pgbench", "ok")}
    assert all(e["duration_ms"] > 0 for e in selects)


def test_application_name_follows_set_and_pid_reuse_gets_fresh_context(pg):
    """pgjdbc sets application_name right after connecting: each statement
    shows the name in force when it ran, not one cached for seconds; each
    one the name the server's own log line (%a) gives it, SET included."""
    import re
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"
    statements = ["SELECT 'one'", "SET application_name = 'second'", "SELECT 'two'",
                  "SET application_name = 'third'", "SELECT 'three'"]
    log = pg.log_statements(True)
    start = log.stat().st_size
    try:
        pg.psql("ALTER SYSTEM SET log_line_prefix = '@@%p@@ [%a] '")
        pg.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
            for query in statements:  # simple protocol, a psql session each
                pg.psql(query)
            for prepare in (False, True):  # psycopg: simple protocol, then Parse/Bind/Execute
                with psycopg.connect(conninfo, autocommit=True, application_name="first") as conn:
                    for query in statements:
                        conn.execute(query, prepare=prepare)
        with open(log, errors="replace") as f:
            f.seek(start)
            logged = re.findall(r"^@@\d+@@ \[(.*?)\] LOG:  duration: [0-9.]+ ms  (?:statement|execute [^:]*): (.*)$",
                                f.read(), re.M)
    finally:
        pg.log_statements(False)
    events = [(e["application_name"], e["query"]) for e in run.events()]
    assert events == logged and len(events) == 3 * len(statements)
    for session in (1, 2):
        names = {q: n for n, q in events[session * len(statements):(session + 1) * len(statements)]}
        assert (names["SELECT 'one'"], names["SELECT 'two'"], names["SELECT 'three'"]) == ("first", "second", "third")
        assert names["SET application_name = 'second'"] == "second"


@pytest.mark.parametrize("attach_env", [{}, {"DBSLOWER_PERF_UPROBES": "1"}], ids=["links", "perf-events"])
def test_usdt_probe_held_by_bcc_trace_falls_back_to_uprobes(pg, attach_env):
    """bcc's trace sets query__execute__start's semaphore through /proc/PID/mem;
    the kernel then refuses our kernel-managed semaphore on that site. The
    run says why and traces through the exported functions instead."""
    import signal
    import shutil
    trace = shutil.which("trace-bpfcc")
    assert trace, "bcc's trace-bpfcc is not installed (make setup)"
    from lab.servers import PG_BIN
    holder = subprocess.Popen([trace, "-p", str(pg.pid), f"u:{PG_BIN / 'postgres'}:query__execute__start"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # trace prints its header once attached (it compiles first)
        header = holder.stdout.readline()
        assert header.split()[:2] == [b"PID", b"TID"], header + holder.stderr.read()
        assert pg_usdt_semaphore(pg.pid) > 0
        with Run(["postgres", "-v", "-m", "0", "-j", "-p", pg.pid], env=dict(ENV, **attach_env)) as run:
            pg.psql("SELECT 'while trace holds the probe'")
        assert [e["query"] for e in run.events()] == ["SELECT 'while trace holds the probe'"]
        assert "method: uprobe, because USDT probes could not be enabled" in run.stderr
        assert ("perf-event uprobes" if attach_env else "uprobe_multi links") in run.stderr
        assert "another tool may be tracing them" in run.stderr
    finally:
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=60)



def test_statement_running_when_tracing_starts_adds_nothing_to_the_next(pg, pg_machine):
    """Statements already running when tracing starts ran their portal
    unseen: their time must not pass for a Bind's and be added to the
    connection's next statement, on either protocol (psycopg sends
    Parse/Bind/Execute/Sync, psql simple Queries)."""
    import time
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        running = threading.Thread(target=conn.execute, args=("SELECT pg_sleep(%s::float8) AS before_ext", (6,)))
        running.start()
        psql = subprocess.Popen([str(pg.bindir / "psql"), "-X", "-q", "-f", "-"], env=pg.env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        psql.stdin.write("SELECT pg_sleep(6) AS before_simple;\nSELECT 'after_simple';\n")
        psql.stdin.close()
        time.sleep(0.5)
        with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
            # both still running once tracing has started
            assert running.is_alive() and psql.poll() is None
            running.join(timeout=60)
            conn.execute("SELECT 'after_ext'")
            assert psql.wait(timeout=60) == 0
    got = {e["query"].rstrip(";"): e["duration_ms"] for e in run.events()}  # psql -f keeps the semicolon
    assert got["SELECT 'after_ext'"] < 1000 and got["SELECT 'after_simple'"] < 1000, got
    # a statement seen only in part is either whole or absent, never cut short
    assert all(ms >= 6000 for q, ms in got.items() if "before_" in q), got
