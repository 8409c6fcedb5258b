"""Bad input and a hostile environment: one clear line, a non-zero exit, no
traceback, nothing left attached; odd text reported as the server saw it."""

import json
import subprocess
import sys

import pytest

from helpers import ENV, Run, run_cli, uprobes

pytestmark = pytest.mark.integration



def clean_error(r, code, needle):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    assert all(line.startswith("dbslower: ") for line in r.stderr.splitlines() if line.strip())


@pytest.mark.parametrize("args, needle", [
    (["postgres", "-m", "1e308"], "must be at most 3600000 ms"),
    (["postgres", "-m", "1e14"], "must be at most 3600000 ms"),
    (["postgres", "-m", "nan"], "finite number"),
    (["postgres", "-p", "-5"], "invalid PID"),
    (["postgres", "-p", "99999999999999999999"], "no process with PID"),
    (["postgres", "-s", "7"], "text size 7"),
    (["postgres", "-p", "1", "-x", "/bin/true"], "-p and -x cannot be combined"),
    (["top", "-p", "1", "-x", "/bin/true"], "-p and -x cannot be combined"),
    (["serve", "-m", "-1"], "must be a finite number"),
    (["serve", "--interval", "0"], "must be > 0"),
    (["mysql", "--method", "socket", "--digest"], "no digests"),
    (["postgres", "--method", "socket", "--digest"], "no digests"),
    (["postgres", "--method", "socket", "-x", "/bin/true"], "not a binary"),
    (["postgres", "--method", "udp"], "invalid choice"),
])
def test_hostile_arguments(args, needle):
    r = run_cli(args)
    clean_error(r, 7 if "no process" in needle else 2, needle)


def test_full_disk_is_one_clear_line(pg):
    before = uprobes()
    mnt = "/mnt"
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && exec {sys.executable} -m dbslower postgres "
              f"-m 0 -j -p {pg.pid} -d 8 > {mnt}/out")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stderr=subprocess.PIPE, env=ENV, text=True)
    line = proc.stderr.readline()
    assert line.startswith("Tracing"), line + proc.stderr.read()
    pg.pgbench("-n", "-S", "-t", "3000")
    err = proc.stderr.read()
    proc.wait(30)
    assert proc.returncode == 1, err
    assert "No space left on device" in err and "Traceback" not in err and "internal error" not in err
    assert uprobes() == before


def test_odd_text_reported_as_the_server_saw_it(pg):
    import psycopg
    big = "SELECT '" + "x" * (1 << 20) + "'"
    odd = "SELECT 'tab\there', 'esc\x1b[2J', 'naïve' "
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid, "-s", "1024"]) as run:
        with psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres") as conn:
            conn.execute(big, prepare=False)
            conn.execute(odd, prepare=False)
    events = run.events()
    cut = next(e for e in events if e["query"].startswith("SELECT 'xxx"))
    assert cut["truncated"] and len(cut["query"].encode()) == 1024
    assert next(e for e in events if "tab" in e["query"])["query"] == odd  # trailing blank kept
    with Run(["postgres", "-m", "0", "-p", pg.pid]) as table:
        with psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres") as conn:
            conn.execute("SELECT 'esc\x1b[2J\nnewline'", prepare=False)
    line = next(x for x in table.stdout.splitlines() if "newline" in x)
    assert "\x1b" not in line and "\\x1b[2J\\nnewline" in line


def test_invalid_utf8_from_a_sql_ascii_database(pg):
    """A SQL_ASCII database takes any bytes: the JSON stays valid, the bytes
    that are not UTF-8 show as U+FFFD, and the table shows no raw control."""
    import psycopg
    pg.psql("DROP DATABASE IF EXISTS ascii_db")
    pg.psql("CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    pg.psql("CHECKPOINT")  # database names are read from pg_database on disk (README)
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=ascii_db"
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SET client_encoding = 'SQL_ASCII'")
            cur = psycopg.ClientCursor(conn)
            cur.execute(b"SELECT 'caf\xe9 \xff\xfe', 'ok'")
    events = [e for e in run.events() if "'ok'" in e["query"]]
    assert len(events) == 1 and events[0]["query"] == "SELECT 'caf\ufffd \ufffd\ufffd', 'ok'"
    assert events[0]["db"] == "ascii_db"


def test_names_with_spaces(pg):
    """A role and a database whose names have spaces: reported whole, also for
    a connection that ended before its events were read."""
    import psycopg
    pg.psql('DROP DATABASE IF EXISTS "sales db"')
    pg.psql('DROP ROLE IF EXISTS "ann lee"')
    pg.psql('CREATE ROLE "ann lee" LOGIN SUPERUSER')
    pg.psql('CREATE DATABASE "sales db"')
    pg.psql("CHECKPOINT")  # database names are read from pg_database on disk (README)
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as run:
        with psycopg.connect(host=str(pg.sock), port=pg.port, user="ann lee", dbname="sales db",
                             autocommit=True) as conn:
            conn.execute("SELECT 'spaces'")
            import time
            time.sleep(0.5)  # this one is read while the backend lives
            conn.execute("SELECT 'spaces, late'")
    got = {e["query"]: (e["user"], e["db"]) for e in run.events() if "spaces" in e["query"]}
    assert got["SELECT 'spaces'"] == ("ann lee", "sales db")
    assert got["SELECT 'spaces, late'"] == ("ann lee", "sales db")


def test_redact_in_every_mode(pg):
    """--redact: no literal reaches the table, JSON or a digest's sample."""
    secret = "SELECT 'hunter2', 42 /* secret comment */"
    with Run(["postgres", "-m", "0", "-j", "--redact", "-p", pg.pid]) as stream, \
            Run(["postgres", "-m", "0", "--redact", "-p", pg.pid]) as table, \
            Run(["postgres", "--digest", "-j", "--redact", "-p", pg.pid]) as digest:
        pg.psql(secret)
    for run in (stream, table, digest):
        assert "hunter2" not in run.stdout and "secret comment" not in run.stdout
    assert any(e["query"] == "select ?, ?" for e in stream.events())
    assert any(r["sample"] == "select ?, ?" for r in digest.events()[-1]["rows"])
    with Run(["postgres", "-m", "0", "-j", "-p", pg.pid]) as plain:
        pg.psql(secret)
    assert "hunter2" in plain.stdout  # without --redact the text is as the server saw it
