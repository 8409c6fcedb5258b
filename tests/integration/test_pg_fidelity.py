"""dbslower against PostgreSQL's own log_min_duration_statement=0 log:
every statement the server logged appears exactly once, with a duration
within max(10%, 0.3 ms) of the server's (parse+bind+execute summed)."""

import pytest

from helpers import pg_logged_and_seen
from lab.logs import compare, median_bias_ms, within

pytestmark = pytest.mark.integration


def check(pg, workload, min_statements, extra=()):
    logged, events, _ = pg_logged_and_seen(pg, workload, extra)
    pairs, problems = compare(logged, events, key="pid")
    assert not problems, problems[:10]
    assert len(pairs) >= min_statements
    off = [(entry.query, entry.duration_ms, ev["duration_ms"]) for entry, ev in pairs
           if not within(ev["duration_ms"], entry.duration_ms)]
    # dbslower stamps a statement's end on entry to check_log_duration(),
    # a few instructions before the server reads its clock; returning from
    # the probe's trap is a point where the kernel may switch tasks, so on this
    # loaded 2-core machine a backend is now and then descheduled in between
    # and the server's figure grows by that time slice. Those rare cases (and
    # only those: ours shorter) are the listed exception; see README.
    longer = [o for o in off if o[2] > o[1]]
    assert not longer, longer[:10]
    # Listed exception (README, "Latency"): a task switch between the
    # server's clock read and the probe's. Allowed for at most 1% of statements.
    assert len(off) <= max(3, len(pairs) // 100), (len(off), len(pairs), off[:10])
    # No systematic offset: the median signed difference is within 20 us.
    assert abs(median_bias_ms(pairs)) <= 0.020, median_bias_ms(pairs)


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_matches_server_log(pg, pg_machine, protocol):
    check(pg, lambda: pg.pgbench("-n", "-M", protocol, "-c", "2", "-t", "100"), 2 * 100 * 7)


def test_psycopg_prepared_and_pipeline_match_server_log(pg, pg_machine):
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"

    def workload():
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for i in range(50):
                conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i + 1,), prepare=True)
            with conn.pipeline():
                for i in range(50):
                    conn.execute("SELECT bid FROM pgbench_branches WHERE bid = %s", (1,))
                    conn.execute("UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid = %s", (i % 10 + 1,))
            with conn.transaction():
                conn.execute("SELECT count(*) FROM pgbench_history")

    check(pg, workload, 150)


def asyncpg_prepares_ahead(server):
    """asyncpg prepares a statement in a round trip of its own and runs
    other statements before executing it."""
    import asyncio
    import asyncpg
    # Parse analysis of a 300-branch UNION takes about a millisecond (7 kB of text).
    slow_parse = " UNION ALL ".join(f"SELECT {i} AS n" for i in range(300))

    async def run():
        conn = await asyncpg.connect(host=str(server.sock), port=server.port, user="postgres", database="postgres")
        try:
            for _ in range(5):
                stmt = await conn.prepare(slow_parse)
                for i in range(3):
                    assert await conn.fetchval("SELECT 1 + $1::int", i) == 1 + i
                assert len(await stmt.fetch()) == 300
        finally:
            await conn.close()

    asyncio.run(run())


def test_asyncpg_parse_time_goes_to_the_statement_it_parsed(pg, pg_machine):
    """The Parse's time belongs to the prepared statement (the server's log
    names it), not to whatever runs next on the connection (issue 10,
    defect 1)."""
    check(pg, lambda: asyncpg_prepares_ahead(pg), 20, extra=["-s", "8192"])


def test_first_statement_of_new_connections_matches_server_log(pg, pg_machine):
    """A new connection per transaction (pgbench -C): the first statement of
    a connection used to come out 0.3-0.7 ms short (issue 10, defect 2)."""
    check(pg, lambda: pg.pgbench("-n", "-S", "-C", "-c", "2", "-t", "150"), 2 * 150)


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_durations_are_the_server_logs_own(pg, protocol):
    """The default machine times a message from the server's own start stamp
    to check_log_duration's entry, on the server's clock: a statement's
    figure is the server's, less the probe's trap and the few instructions
    before the server reads its clock. pgbench's TPC-B-like script: writes,
    commits, 7 statements a transaction."""
    logged, events, run = pg_logged_and_seen(pg, lambda: pg.pgbench("-n", "-M", protocol, "-c", "2", "-t", "300"),
                                             extra=["-v"])
    assert "#define PG_SERVER_TIMES 1" in run.stderr
    pairs, problems = compare(logged, events, key="pid")
    assert not problems, problems[:10]
    assert len(pairs) >= 2 * 300 * 7
    diff_us = sorted((ev["duration_ms"] - entry.duration_ms) * 1000 for entry, ev in pairs)
    # The log prints whole microseconds, cut: ours may exceed it by less than
    # one per line summed (Parse, Bind, Execute).
    windows = {"simple": 1, "prepared": 2, "extended": 3}[protocol]
    assert diff_us[-1] < windows, diff_us[-10:]
    # The median statement is the server's to within a microsecond (measured:
    # +0.04 to +0.5, the log's cut against our end a trap earlier).
    median = diff_us[len(diff_us) // 2]
    assert abs(median) < 1.0, median
    # Ours is shorter by more than a few microseconds only when the backend
    # was switched out between our end and the server's clock read (the
    # listed exception, README "Latency"; mostly a time slice, over 30 us):
    # measured 0.4-0.9% of messages on this 2-core machine, allowed 1%. With
    # the KVM guest's halt polling on (bench/run.py turns it on for its runs
    # only) it was 4-6% in `prepared` (three runs): keep it off for tests.
    assert sum(d < -10 for d in diff_us) <= len(pairs) * windows // 100, diff_us[:20]
