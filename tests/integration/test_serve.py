"""`dbslower serve` on real servers: a real Prometheus scrapes it, servers
restart, start later and go away, a server runs in its own mount namespace,
the log is rotated, literals are redacted, and it runs without root."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import DBSLOWER, ENV, ROOT, require, run_cli, uprobes
from lab.logs import parse_pg_log
from lab.servers import MariaServer, PgServer, wait_for

pytestmark = pytest.mark.integration


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Serve:
    """A running `dbslower serve`; its stderr lines are collected."""

    def __init__(self, *args, env=None, prefix=(), ready=True):
        self.port = free_port()
        self.args = ["serve", "--listen", f"127.0.0.1:{self.port}", "--interval", "0.5",
                     "--rediscover", "0.5", *map(str, args)]
        self.err_path = Path(tempfile.mkstemp(prefix="dbslower-serve-err-")[1])
        self.out_path = Path(tempfile.mkstemp(prefix="dbslower-serve-out-")[1])
        self.proc = subprocess.Popen([*prefix, *DBSLOWER, *self.args], stdout=open(self.out_path, "wb"),
                                     stderr=open(self.err_path, "wb"), env=env or ENV)
        if ready:
            self.wait_stderr("Tracing", 60)

    final = None  # (stdout, stderr) once the files are gone

    @property
    def stderr(self):
        return self.final[1] if self.final else self.err_path.read_text(errors="replace")

    @property
    def stdout(self):
        return self.final[0] if self.final else self.out_path.read_text(errors="replace")

    def wait_stderr(self, needle, timeout_s=30, count=1):
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr}")
            return self.stderr.count(needle) >= count
        wait_for(seen, timeout_s, f"{needle!r} from serve; stderr so far: {self.stderr}")

    def metrics(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()

    def count(self, system, **labels):
        """Summed _count of db_server_operation_duration_seconds for these labels."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith("db_server_operation_duration_seconds_count{"):
                continue
            lab = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if lab["db_system_name"] == system and all(lab.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def fingerprint_count(self, summary):
        """_count of dbslower_query_duration_seconds for one fingerprint."""
        for line in self.metrics().splitlines():
            if line.startswith("dbslower_query_duration_seconds_count{") and \
                    f'db_query_summary="{summary}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_count(self, system, expected, timeout_s=20, **labels):
        try:
            wait_for(lambda: self.count(system, **labels) >= expected, timeout_s,
                     f"{expected} {system} {labels} statements in the metrics")
        except Exception as e:
            raise AssertionError(f"{e}; have {self.count(system, **labels)}; stderr: {self.stderr}") from None
        time.sleep(1.2)  # two more intervals: nothing more arrives
        return self.count(system, **labels)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.final = (self.stdout, self.stderr)
        self.err_path.unlink(missing_ok=True)
        self.out_path.unlink(missing_ok=True)


class Prometheus:
    """The Debian prometheus server scraping one target every second."""

    def __init__(self, target_port):
        require(shutil.which("prometheus") is not None, "prometheus is not installed (make setup)")
        self.dir = Path(tempfile.mkdtemp(prefix="dbslower-prom-"))
        self.port = free_port()
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: dbslower\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"))
        wait_for(lambda: self._up(), 60, "prometheus to scrape dbslower")

    def _up(self):
        try:
            r = self.query('up{job="dbslower"}')
        except OSError:
            return False
        return bool(r) and r[0]["value"][1] == "1"

    def query(self, expr):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def scalar(self, expr):
        r = self.query(expr)
        return float(r[0]["value"][1]) if r else None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def p99(values):
    values = sorted(values)
    return values[max(0, -(-len(values) * 99 // 100) - 1)]


def test_prometheus_counts_exact_and_p99_matches_server_log(pg, maria):
    """A real Prometheus scrapes serve every second: summed _count per engine
    equals what pgbench and sysbench ran, and its p99 is the log's within 10%."""
    n_pg, n_my = 4000, 3000
    log = pg.log_statements(True)
    start = log.stat().st_size
    with Serve("-p", f"{pg.pid},{maria.pid}") as serve:
        prom = Prometheus(serve.port)
        try:
            out = pg.pgbench("-n", "-S", "-c", "2", "-j", "2", "-t", n_pg // 2)
            assert f"number of transactions actually processed: {n_pg}/{n_pg}" in out
            # A tail of 0-4 ms statements, so that p99 is compared where a few
            # microseconds between the server's clock and the probe's do not count.
            sleeps = Path(tempfile.mkdtemp(prefix="dbslower-sleeps-")) / "sleeps.sql"
            sleeps.write_text("SELECT pg_sleep(random() * 0.004);\n")
            pg.pgbench("-n", "-f", sleeps, "-c", "2", "-t", "250")
            shutil.rmtree(sleeps.parent)
            maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--db-ps-mode=disable",
                           f"--events={n_my}", "--threads=2", "run")
            logged = parse_pg_log(log.read_text(errors="replace")[start:])
            serve.wait_count("postgresql", len(logged))
            serve.wait_count("mariadb", n_my)
            expr = 'sum by (db_system_name) (db_server_operation_duration_seconds_count)'
            wait_for(lambda: (prom.scalar(expr.replace("sum by (db_system_name) (", 'sum(').replace(
                ")", '{db_system_name="postgresql"})', 1)) or 0) >= len(logged), 30, "prometheus to catch up")
            time.sleep(2)
            got = {r["metric"]["db_system_name"]: float(r["value"][1]) for r in prom.query(expr)}
            # pgbench -S: its transactions, plus the scale check it sends first.
            selects = [x for x in logged if x.query.startswith("SELECT abalance")]
            assert len(selects) == n_pg
            assert got["postgresql"] == len(logged)
            assert got["mariadb"] == n_my
            q = prom.scalar('histogram_quantile(0.99, sum by (le) '
                            '(db_server_operation_duration_seconds_bucket{db_system_name="postgresql"}))')
            ref = p99([x.duration_ms for x in logged]) / 1000
            assert abs(q - ref) <= 0.10 * ref, (q, ref)
            by_op = {r["metric"]["db_operation_name"]: float(r["value"][1]) for r in prom.query(
                'sum by (db_operation_name) (db_server_operation_duration_seconds_count'
                '{db_system_name="postgresql",db_namespace="postgres"})')}
            assert by_op["SELECT"] == len(logged)
            my_ops = {r["metric"]["db_operation_name"]: float(r["value"][1]) for r in prom.query(
                'sum by (db_operation_name) (db_server_operation_duration_seconds_count{db_system_name="mariadb"})')}
            assert my_ops == {"SELECT": n_my}
            assert prom.scalar('dbslower_build_info') == 1
            assert prom.scalar('sum(dbslower_events_lost_total)') == 0
            assert prom.scalar('sum(dbslower_targets)') == 2
            assert prom.scalar('process_resident_memory_bytes{job="dbslower"}') > 0
            # The dashboard's queries run as Grafana would send them, over these series.
            dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"]
                    for var, value in (("$system", ".*"), ("$database", ".*"), ("$job", ".*"),
                                       ("$__rate_interval", "1m")):
                        expr = expr.replace(var, value)
                    result = prom.query(expr)
                    if "duration_seconds_bucket" in expr or "duration_seconds_count" in expr:
                        assert result, (panel["title"], expr)
        finally:
            prom.stop()
        assert serve.stop() == 0
    pg.log_statements(False)


# Statements whose db_operation_name a DBA would expect, labelled by hand:
# leading blanks, parentheses and comments do not hide the first keyword.
LABELLED = [
    ("SELECT 1", "SELECT"),
    ("  select 2", "SELECT"),
    ("(SELECT 3)", "SELECT"),
    ("/* app=web,traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' */ SELECT 4", "SELECT"),
    ("-- a note\nSELECT 5", "SELECT"),
    ("/*/ odd but valid */ SELECT 6", "SELECT"),
    ("SELECT 7 /* " + "x" * 300 + " */", "SELECT"),
    ("WITH t AS (SELECT 1) SELECT * FROM t", "WITH"),
    ("VALUES (1), (2)", "VALUES"),
    ("SHOW work_mem", "SHOW"),
    ("BEGIN", "BEGIN"),
    ("CREATE TEMP TABLE labelled (x int)", "CREATE"),
    ("INSERT INTO labelled VALUES (1)", "INSERT"),
    ("update labelled SET x = 2", "UPDATE"),
    ("DELETE FROM labelled", "DELETE"),
    ("DROP TABLE labelled", "DROP"),
    ("COMMIT", "COMMIT"),
    ("SELECTX 1", "OTHER"),   # a syntax error: counted, with its own first word
]


@pytest.mark.parametrize("keys", ["operation", "fingerprint"])
def test_operation_names_follow_the_first_keyword(pg, keys):
    """db_operation_name per statement, by hand, both ways serve can key its
    kernel digests: by operation (the default) and by fingerprint
    (--fingerprint-metrics). Counts per operation are exact."""
    import psycopg
    rounds = 5
    extra = ["--fingerprint-metrics"] if keys == "fingerprint" else []
    expected = {}
    for _, op in LABELLED:
        expected[op] = expected.get(op, 0) + rounds
    with Serve("-p", pg.pid, *extra) as serve:
        with psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            for _ in range(rounds):
                for text, _ in LABELLED:
                    try:
                        conn.execute(text)
                    except psycopg.errors.SyntaxError:
                        pass
        serve.wait_count("postgresql", sum(expected.values()))
        got = {}
        for line in serve.metrics().splitlines():
            if line.startswith("db_server_operation_duration_seconds_count{"):
                lab = dict(re.findall(r'(\w+)="([^"]*)"', line))
                op = lab["db_operation_name"]
                got[op] = got.get(op, 0) + float(line.rsplit(" ", 1)[1])
        assert got == expected
        failed = serve.count("postgresql", db_operation_name="OTHER", error_type="_OTHER")
        assert failed == rounds
        # and by the server's code: psycopg's SyntaxError is SQLSTATE 42601
        errors = [line for line in serve.metrics().splitlines() if line.startswith("dbslower_statement_errors_total{")]
        assert len(errors) == 1 and 'db_response_status_code="42601"' in errors[0], errors
        assert 'db_operation_name="OTHER"' in errors[0] and float(errors[0].rsplit(" ", 1)[1]) == rounds
        assert serve.stop() == 0


@pytest.mark.parametrize("method", ["auto", "socket"])
def test_follows_a_server_started_later_restarted_and_gone(method):
    """-x a binary no server runs yet: the server started later is found, its
    restart (new postmaster) keeps being counted, and when it goes away serve
    detaches and keeps running, with the counts it had. The socket method's
    PID filter follows the new postmaster and its backends."""
    from lab.servers import wheel_pg_bindir
    bindir = wheel_pg_bindir("pgserver")
    before = uprobes()
    with Serve("-x", bindir / "postgres", "--method", method) as serve:
        assert "no server yet" in serve.stderr
        pg = PgServer(bindir=bindir, user="dbslower_wheel").start()
        try:
            serve.wait_stderr("tracing postgresql")
            pg.pgbench("-i", "-s", "1", "-q")
            serve.wait_count("postgresql", 1)
            base = serve.count("postgresql", db_operation_name="SELECT")
            pg.pgbench("-n", "-S", "-t", "500")
            after_first = serve.wait_count("postgresql", base + 500, db_operation_name="SELECT")
            old_pid = pg.pid
            pg.restart()
            assert pg.pid != old_pid
            pg.pgbench("-n", "-S", "-t", "700")
            assert serve.wait_count("postgresql", after_first + 700, db_operation_name="SELECT") >= after_first + 700
        finally:
            pg.stop()
        serve.wait_stderr("detached from")
        assert serve.proc.poll() is None
        assert serve.count("postgresql") >= after_first + 700  # folded, not lost
        assert serve.stop() == 0
    assert uprobes() == before


def test_follows_a_restarted_postmaster_given_with_p():
    """The server's log is the oracle: every SELECT it logged, before and
    after the restart, is counted once."""
    with PgServer() as pg:
        pg.pgbench("-i", "-s", "1", "-q")
        log = pg.log_statements(True)
        start = log.stat().st_size

        def logged_selects():
            return sum(1 for x in parse_pg_log(log.read_text(errors="replace")[start:])
                       if x.query.lstrip().upper().startswith("SELECT"))
        with Serve("-p", pg.pid) as serve:
            pg.pgbench("-n", "-S", "-t", "300")
            n = serve.wait_count("postgresql", 300, db_operation_name="SELECT")
            assert n == logged_selects()
            pg.restart()
            time.sleep(1.5)  # a rediscovery
            pg.pgbench("-n", "-S", "-t", "400")
            total = serve.wait_count("postgresql", n + 400, db_operation_name="SELECT")
            assert total == logged_selects()
            assert serve.stop() == 0


def test_server_in_its_own_mount_namespace():
    """A postmaster whose binary exists only inside its mount namespace (as in
    a container): found through /proc/PID/root and traced, once per inode."""
    require(shutil.which("unshare") is not None, "unshare is missing")
    pg = PgServer()  # initdb on the host; the cluster is then run from inside the namespace
    pg.start()
    pg.pgbench("-i", "-s", "1", "-q")
    pg.shutdown()
    ns_root = "/mnt"  # a tmpfs over it exists only inside the namespace
    inner = f"{ns_root}/dbslower-ns"
    script = (f"mount -t tmpfs tmpfs {ns_root} && mkdir -p {inner}/lib/postgresql/15 {inner}/share/postgresql/15 && "
              f"mount --bind /usr/lib/postgresql/15 {inner}/lib/postgresql/15 && "
              f"mount --bind /usr/share/postgresql/15 {inner}/share/postgresql/15 && "
              f"exec setpriv --reuid={pg.user} --regid={pg.user} --clear-groups "
              f"{inner}/lib/postgresql/15/bin/postgres " + " ".join(pg._args[1:]))
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=open(pg.log, "ab"), stderr=subprocess.STDOUT, env=pg.env, cwd=pg.dir)
    try:
        wait_for(lambda: subprocess.run(["/usr/lib/postgresql/15/bin/pg_isready", "-q"], env=pg.env).returncode == 0,
                 60, "the namespaced postmaster")
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert exe.startswith(inner) and not os.path.exists(exe)  # not on the host
        with Serve("-p", proc.pid, "-m", "0", "--log", "-") as serve:
            pg.pgbench("-n", "-S", "-t", "250")
            serve.wait_count("postgresql", 250, db_operation_name="SELECT")
            assert serve.stop() == 0
        events = [json.loads(line) for line in serve.stdout.splitlines()]
        assert sum(1 for e in events if e["query_summary"] == "select abalance from pgbench_accounts where aid = ?") == 250
        assert "/proc/" in serve.stderr  # attached through the process's root
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        shutil.rmtree(pg.dir, ignore_errors=True)


def test_log_redaction_trace_context_and_sighup_reopen(pg, tmp_path):
    log = tmp_path / "slow.jsonl"
    with Serve("-p", pg.pid, "-m", "0", "--log", log) as serve:
        pg.psql("DROP ROLE IF EXISTS dbslower_pw")
        pg.psql("CREATE ROLE dbslower_pw LOGIN PASSWORD 'hunter2secret'")
        pg.psql("SELECT 42 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/")
        wait_for(lambda: "0af7651916cd43dd8448eb211c80319c" in log.read_text(), 20, "the traced statement")
        rotated = tmp_path / "slow.jsonl.1"
        log.rename(rotated)
        serve.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        pg.psql("SELECT 'after rotation'")
        wait_for(lambda: log.exists() and "select ?" in log.read_text(), 20, "a line in the reopened log")
        assert serve.proc.poll() is None
        assert "hunter2secret" not in serve.metrics()
        assert serve.stop() == 0
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert not any("hunter2secret" in json.dumps(e) for e in old)
    assert any(e["query"] == "create role dbslower_pw login password ?" for e in old)
    traced = [e for e in old if e["trace_id"]]
    assert traced and traced[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert traced[0]["span_id"] == "b7ad6b7169203331" and traced[0]["db"] == "postgres"
    assert "after rotation" not in rotated.read_text()
    # The test could fail: without redaction the literal is there.
    with Serve("-p", pg.pid, "-m", "0", "--log", "-", "--no-redact") as serve:
        pg.psql("SELECT 'visible literal'")
        wait_for(lambda: "visible literal" in serve.stdout, 20, "the unredacted literal")
        serve.stop()


def test_check_and_config(pg, tmp_path):
    before = uprobes()
    r = run_cli(["serve", "--check", "-p", pg.pid])
    assert r.returncode == 0, r.stderr
    assert "probe plan for PostgreSQL" in r.stderr and "check passed" in r.stderr
    assert uprobes() == before
    cfg = tmp_path / "dbslower.toml"
    cfg.write_text(f'threshold = 5\nlisten = "127.0.0.1:1"\npid = [{pg.pid}]\nredact = false\n')
    port = free_port()
    with Serve("--config", cfg, "--log", "-", "--listen", f"127.0.0.1:{port}") as serve:
        assert f"127.0.0.1:{port}" in serve.stderr  # the flag won over the file
        pg.psql("SELECT pg_sleep(0.01), 'kept'")
        wait_for(lambda: "'kept'" in serve.stdout, 20, "the statement over the file's 5 ms")
        # A slow statement's whole text, though under the threshold only
        # its first bytes are read (its first word is all the metrics need).
        pg.psql("SELECT 'fast and long' /* " + "x" * 700 + " */")
        pg.psql("SELECT pg_sleep(0.01) /* " + "y" * 700 + " end of the long text */")
        wait_for(lambda: "end of the long text" in serve.stdout, 20, "the long statement's whole text")
        serve.stop()
    logged = [json.loads(line) for line in serve.stdout.splitlines()]
    assert [len(e["query"]) for e in logged if "y" * 700 in e["query"]] == [749]
    assert not any("fast and long" in e["query"] for e in logged)
    cfg.write_text("threshhold = 5\n")
    r = run_cli(["serve", "--config", cfg])
    assert r.returncode == 2 and "unknown keys threshhold" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["serve", "--listen", "nowhere"])
    assert r.returncode == 2 and "listen must be HOST:PORT" in r.stderr


def test_runs_unprivileged_with_capabilities(pg, tmp_path):
    """The capabilities contrib/dbslower.service grants are enough: serve as
    an unprivileged user (setpriv), NoNewPrivileges set, counts exact."""
    require(shutil.which("setpriv") is not None, "setpriv is missing")
    unit = (ROOT / "contrib" / "dbslower.service").read_text()
    caps = re.search(r"^AmbientCapabilities=(.*)$", unit, re.M)[1].split()
    assert caps == re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M)[1].split()
    names = ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
    from lab.servers import ensure_user
    ensure_user("dbslower_agent")
    os.chmod(ROOT, 0o755)
    prefix = ["setpriv", "--reuid=dbslower_agent", "--regid=dbslower_agent", "--clear-groups",
              f"--inh-caps={names}", f"--ambient-caps={names}", f"--bounding-set=-all,{names}", "--no-new-privs"]
    env = dict(ENV, HOME=str(tmp_path))
    with Serve("-p", pg.pid, "--fingerprint-metrics", env=env, prefix=prefix) as serve:
        status = Path(f"/proc/{serve.proc.pid}/status").read_text()
        assert re.search(r"^Uid:\s+(\d+)", status, re.M)[1] != "0"
        assert re.search(r"^NoNewPrivs:\s+1", status, re.M)
        pg.pgbench("-n", "-S", "-t", "600")
        serve.wait_count("postgresql", 600, db_operation_name="SELECT")
        assert serve.fingerprint_count("select abalance from pgbench_accounts where aid = ?") == 600
        assert serve.stop() == 0


def test_systemd_unit_verifies(tmp_path):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (make setup)")
    unit = (ROOT / "contrib" / "dbslower.service").read_text()
    # Verify the unit as shipped, with ExecStart pointing at this checkout's command.
    local = unit.replace("/usr/bin/dbslower", str(ROOT / ".venv" / "bin" / "dbslower"))
    path = tmp_path / "dbslower.service"
    path.write_text(local)
    # Its Documentation= is checked with man(1): the page as `make man` builds it.
    (tmp_path / "man" / "man1").mkdir(parents=True)
    subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/manpage.py"),
                    str(tmp_path / "man" / "man1" / "dbslower.1")], check=True)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                       env=dict(os.environ, MANPATH=str(tmp_path / "man")))
    assert r.returncode == 0, r.stderr
    assert "dbslower.service" not in r.stderr, r.stderr  # no warning about our unit
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert option in unit


def test_log_rate_budget_sheds_lines_not_counts(pg):
    """Over its budget the log samples, and says how many it left out; the
    metrics still count every statement."""
    with Serve("-p", pg.pid, "-m", "0", "--log", "-", "--log-rate", "20", "--fingerprint-metrics") as serve:
        pg.pgbench("-n", "-S", "-t", "3000")
        summary = "select abalance from pgbench_accounts where aid = ?"
        wait_for(lambda: serve.fingerprint_count(summary) >= 3000, 20, "the metrics")
        time.sleep(1.2)
        assert serve.fingerprint_count(summary) == 3000
        text = serve.metrics()
        written = float(re.search(r"^dbslower_log_written_total (\S+)", text, re.M)[1])
        sampled = float(re.search(r"^dbslower_log_sampled_out_total (\S+)", text, re.M)[1])
        assert serve.stop() == 0
    lines = serve.stdout.splitlines()
    assert len(lines) == written < 3000
    assert sampled > 0 and written + sampled >= 3000


def test_failed_statements_counted_by_the_servers_code(maria):
    """MariaDB's error numbers, as PyMySQL reports them, per operation."""
    import pymysql
    codes = {}
    with Serve("-p", maria.pid) as serve:
        conn = pymysql.connect(unix_socket=str(maria.sock), user="root", database="sbtest", autocommit=True)
        with conn.cursor() as cur:
            for sql in ["SELECT * FROM no_such_table"] * 3 + ["SELECTX 1"] * 2 + ["SELECT 1"]:
                try:
                    cur.execute(sql)
                except pymysql.MySQLError as e:
                    key = (sql.split()[0].upper() if sql.startswith("SELECT ") else "OTHER", str(e.args[0]))
                    codes[key] = codes.get(key, 0) + 1
        conn.close()
        serve.wait_count("mariadb", 4, db_operation_name="SELECT")
        got = {}
        text = serve.metrics()
        for line in text.splitlines():
            if line.startswith("dbslower_statement_errors_total{") and 'db_system_name="mariadb"' in line:
                lab = dict(re.findall(r'(\w+)="([^"]*)"', line))
                got[(lab["db_operation_name"], lab["db_response_status_code"])] = float(line.rsplit(" ", 1)[1])
        assert serve.stop() == 0
    assert codes == {("SELECT", "1146"): 3, ("OTHER", "1064"): 2}
    assert got == codes, [line for line in text.splitlines() if "mariadb" in line and "bucket" not in line]


def test_socket_method_counts_exact_per_protocol(pg, maria, tmp_path):
    """serve --method socket: the histograms count every statement the
    servers' own logs have, in PostgreSQL's simple, extended and prepared
    protocols and MariaDB's text and binary protocols, the database is known
    on PostgreSQL, failures are counted by SQLSTATE, and a slow statement is
    logged with its whole text."""
    import psycopg
    n = 600
    log = pg.log_statements(True)
    start = log.stat().st_size
    slow_log = tmp_path / "slow.jsonl"
    with Serve("-p", f"{pg.pid},{maria.pid}", "--method", "socket", "-m", "100", "--no-redact",
               "--log", slow_log) as serve:
        assert "postgres via socket; mariadb /usr/sbin/mariadbd via socket" in serve.stderr, serve.stderr
        for protocol in ("simple", "extended", "prepared"):
            out = pg.pgbench("-n", "-S", "-M", protocol, "-c", "2", "-j", "2", "-t", n // 2)
            assert f"number of transactions actually processed: {n}/{n}" in out
        with psycopg.connect(host=str(pg.sock), port=pg.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            for _ in range(3):
                with pytest.raises(psycopg.errors.UndefinedTable):
                    conn.execute("SELECT * FROM no_such_table")
            conn.execute("SELECT pg_sleep(0.15) /* " + "z" * 500 + " the slow one */")
        for ps_mode in ("disable", "auto"):
            maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", f"--db-ps-mode={ps_mode}",
                           f"--events={n}", "--threads=2", "run")
        logged = parse_pg_log(log.read_text(errors="replace")[start:])
        assert sum(x.query.startswith("SELECT abalance") for x in logged) == 3 * n
        serve.wait_count("postgresql", len(logged) + 3)  # the log has no line for a failed statement
        serve.wait_count("mariadb", 2 * n)
        wait_for(lambda: "the slow one" in slow_log.read_text(), 20, "the slow statement in the log")
        assert serve.count("postgresql", db_namespace="postgres") == len(logged) + 3
        assert serve.count("mariadb", db_operation_name="SELECT") == 2 * n
        errors = [line for line in serve.metrics().splitlines()
                  if line.startswith("dbslower_statement_errors_total{") and "postgresql" in line]
        assert len(errors) == 1 and 'db_response_status_code="42P01"' in errors[0] and errors[0].endswith(" 3.0")
        assert serve.stop() == 0
    pg.log_statements(False)
    slow = [json.loads(line) for line in slow_log.read_text().splitlines()]
    assert [e["query"] for e in slow] == ["SELECT pg_sleep(0.15) /* " + "z" * 500 + " the slow one */"]
    assert 150 <= slow[0]["duration_ms"] < 300


@pytest.mark.parametrize("method", ["auto", "socket"])
def test_mariadb_statements_labelled_by_database(maria, method):
    """db_namespace on MariaDB: the database a connection named when it
    connected, then what COM_INIT_DB (PyMySQL's select_db) and USE changed it
    to; a failed COM_INIT_DB changes nothing. Counted against what each client
    ran. A connection made before tracing: its database with the server's
    probes, unknown (empty) to the socket method, which sees no handshake."""
    import mysql.connector
    import pymysql
    for db in ("shop", "crm", "hr"):
        maria.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    maria.sql("CREATE USER IF NOT EXISTS 'reporting_user_with_a_long_name'@'localhost' IDENTIFIED BY 's3cret'; "
              "GRANT ALL ON *.* TO 'reporting_user_with_a_long_name'@'localhost'")
    early = pymysql.connect(unix_socket=str(maria.sock), user="root", database="sbtest", autocommit=True)
    ran = {}

    def run(conn, db, n):
        cur = conn.cursor()
        for i in range(n):
            cur.execute(f"SELECT {i} + 1")
            cur.fetchall()
        ran[db] = ran.get(db, 0) + n

    with Serve("-p", maria.pid, "--method", method) as serve:
        run(early, "sbtest" if method == "auto" else "", 6)
        # a password (20 bytes of authentication data before the database)
        c1 = pymysql.connect(unix_socket=str(maria.sock), user="reporting_user_with_a_long_name",
                             password="s3cret", database="shop", autocommit=True)
        run(c1, "shop", 7)
        c1.select_db("crm")
        run(c1, "crm", 5)
        c1.cursor().execute("USE `hr`")
        run(c1, "hr", 4)
        with pytest.raises(pymysql.MySQLError):
            c1.select_db("no_such_db")
        run(c1, "hr", 2)
        c1.close()
        # another driver, and a connection that names no database first
        c2 = mysql.connector.connect(unix_socket=str(maria.sock), user="root")
        run(c2, "", 3)
        c2.cmd_init_db("shop")
        run(c2, "shop", 1)
        c2.close()
        total = sum(ran.values())
        serve.wait_count("mariadb", total, db_operation_name="SELECT")
        got = {}
        for line in serve.metrics().splitlines():
            if line.startswith("db_server_operation_duration_seconds_count{") and 'mariadb' in line \
                    and 'db_operation_name="SELECT"' in line:
                lab = dict(re.findall(r'(\w+)="([^"]*)"', line))
                got[lab["db_namespace"]] = got.get(lab["db_namespace"], 0) + float(line.rsplit(" ", 1)[1])
        assert serve.stop() == 0
    early.close()
    assert got == ran
