"""PostgreSQL's socket method (--method socket) against the server's own
log_min_duration_statement=0 log and the clients' own counts: every
statement the server logged is reported once, with its text (named prepared
statements included) and its status, and its latency is the server's plus
the reading and answering of the request, which is never negative and small.
"""

import statistics

import pytest

from helpers import Run, pg_logged_and_seen, self_signed_cert
from lab.logs import compare

pytestmark = pytest.mark.integration

# The reading of a request and the sending of its answer, which the socket
# method counts and the server's log does not: a median of 6-12 us and a
# 99th percentile of 30-60 us here (see README, "The socket method").
MEDIAN_EXTRA_MS = 0.050
NOISE_MS = 0.005  # the two clocks are read in different places; rounding of the log's 3 decimals


def extra_ms(pairs):
    return [ev["duration_ms"] - entry.duration_ms for entry, ev in pairs]


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_socket_method_matches_server_log(pg, protocol):
    logged, events, run = pg_logged_and_seen(pg, lambda: pg.pgbench("-n", "-M", protocol, "-c", "2", "-t", "100"),
                                             ["--method", "socket"])
    pairs, problems = compare(logged, events, key="pid")
    assert not problems, problems[:10]
    assert len(pairs) >= 2 * 100 * 7
    assert "lost" not in run.stderr and "not followed" not in run.stderr, run.stderr
    extra = extra_ms(pairs)
    # Never shorter than the server's own figure...
    assert min(extra) >= -NOISE_MS, sorted(extra)[:5]
    # ...and longer only by the request's reading and answering.
    assert 0 < statistics.median(extra) <= MEDIAN_EXTRA_MS, statistics.median(extra)
    print(f"{protocol}: {len(pairs)} statements, socket - log: median {statistics.median(extra) * 1000:.1f} us, "
          f"p99 {sorted(extra)[len(extra) * 99 // 100] * 1000:.1f} us, max {max(extra) * 1000:.1f} us")


def test_socket_method_statuses_and_codes(pg):
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"
    codes = []

    def workload():
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for sql in ("SELECT 1/0", "SELECT * FROM no_such_table_here", "SELECT 'x'::int"):
                for prepare in (False, True):  # simple-ish and extended protocol
                    try:
                        conn.execute(sql, prepare=prepare)
                    except psycopg.Error as e:
                        codes.append(e.sqlstate)
            conn.execute("DO $$BEGIN RAISE NOTICE 'only a notice'; END$$")
            conn.execute("SELECT pg_sleep(0.01)")

    with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-p", pg.pid]) as run:
        workload()
    events = run.events()
    failed = [e for e in events if e["status"] == "error"]
    assert [e["error_code"] for e in failed] == codes and len(codes) == 6
    ok = {e["query"]: e for e in events if e["status"] == "ok"}
    assert "DO $$BEGIN RAISE NOTICE 'only a notice'; END$$" in ok  # a notice is not an error
    assert ok["SELECT pg_sleep(0.01)"]["duration_ms"] >= 10


def test_socket_method_hist_counts_pgbench(pg):
    import re
    with Run(["postgres", "--method", "socket", "--hist", "-j", "-p", pg.pid]) as run:
        out = pg.pgbench("-n", "-S", "-M", "prepared", "-c", "2", "-t", "1500")
    doc = run.events()[-1]
    # pgbench's own count of transactions, plus its few setup statements
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert done == 3000
    assert done <= doc["count"] <= done + 10 and doc["lost"] == 0


def test_socket_method_copy_and_long_text(pg):
    """More input during a request (COPY data; a Query longer than the
    backend's 8 kB input buffer) reuses the buffer the text is read from."""
    import psycopg
    conninfo = f"host={pg.sock} port={pg.port} user=postgres dbname=postgres"
    long_sql = "SELECT " + " + ".join(["1"] * 4000) + " AS long_sum"  # 16 kB of text
    with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-s", "8192", "-p", pg.pid]) as run:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE socket_copy (n int, t text)")
            with conn.cursor().copy("COPY socket_copy FROM STDIN") as copy:
                for i in range(20000):
                    copy.write_row((i, "x" * 40))
            n = conn.execute("SELECT count(*) FROM socket_copy").fetchone()[0]
            assert conn.execute(long_sql).fetchone()[0] == 4000
    assert n == 20000
    queries = [e["query"] for e in run.events()]
    assert "COPY socket_copy FROM STDIN" in queries
    assert "SELECT count(*) FROM socket_copy" in queries
    long_ev = [e for e in run.events() if e["query"].startswith("SELECT 1 + 1")]
    # The text as far as the backend's first read of it (its 8 kB buffer).
    assert len(long_ev) == 1 and long_ev[0]["truncated"], long_ev
    got = long_ev[0]["query"]
    assert long_sql.startswith(got) and 8000 <= len(got) < 8192, (len(got), got[-20:])
    assert "not followed" not in run.stderr


class RawClient:
    """PostgreSQL's wire protocol over the server's Unix socket, written out
    by hand so that requests can be pipelined at will: many in one send."""

    def __init__(self, pg):
        import socket
        import struct
        self.struct = struct
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(f"{pg.sock}/.s.PGSQL.{pg.port}")
        params = b"user\0postgres\0database\0postgres\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self.buf = b""
        self.until_ready(1)

    def msg(self, t, body=b""):
        return t + self.struct.pack("!i", 4 + len(body)) + body

    def query(self, sql):
        return self.msg(b"Q", sql.encode() + b"\0")

    def extended(self, sql):
        return (self.msg(b"P", b"\0" + sql.encode() + b"\0" + b"\0\0")
                + self.msg(b"B", b"\0\0" + b"\0\0" * 3) + self.msg(b"E", b"\0" + b"\0\0\0\0")
                + self.msg(b"S"))

    def until_ready(self, n):
        """Reads until n ReadyForQuery messages; returns the types seen."""
        types = []
        while types.count(b"Z") < n:
            while len(self.buf) < 5 or len(self.buf) < 1 + self.struct.unpack("!i", self.buf[1:5])[0]:
                chunk = self.sock.recv(65536)
                assert chunk, "server closed the connection"
                self.buf += chunk
            size = 1 + self.struct.unpack("!i", self.buf[1:5])[0]
            types.append(self.buf[:1])
            self.buf = self.buf[size:]
        return types


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_socket_method_follows_a_pipeline(pg, protocol):
    """150 requests in one send (450 messages with the extended protocol):
    every one is a statement with its own text, the ones behind the first
    starting at the previous answer; none is lost or counted as not
    followed. A request cut by the end of one of the backend's 8 kB reads
    has its text as far as that read, marked truncated."""
    with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-p", pg.pid]) as run:
        c = RawClient(pg)
        make = c.query if protocol == "simple" else c.extended
        c.sock.sendall(b"".join(make(f"SELECT {i} AS pipelined") for i in range(150)))
        types = c.until_ready(150)
        c.sock.sendall(c.query("SELECT 'after the pipeline'"))
        c.until_ready(1)
        c.sock.sendall(c.msg(b"X"))
        c.sock.close()
    assert types.count(b"E") == 0
    events = [e for e in run.events() if e["pid"] != 0]
    assert len(events) == 151, [e["query"][:40] for e in events]
    assert events[-1]["query"] == "SELECT 'after the pipeline'"
    sent = [f"SELECT {i} AS pipelined" for i in range(150)]
    got = [e["query"] for e in events[:150]]
    cut = [i for i, e in enumerate(events[:150]) if e["query"] != sent[i]]
    assert all(events[i]["truncated"] and sent[i].startswith(got[i]) for i in cut), [got[i] for i in cut]
    # 150 requests of 27 (simple) or 76 (extended) bytes: 1 or 2 read boundaries
    assert len(cut) <= 2, [got[i] for i in cut]
    assert not any(e["text_missing"] for e in events)
    assert "not followed" not in run.stderr, run.stderr


def test_socket_method_counts_tls_requests_it_cannot_read():
    """Over TLS the messages cannot be read: each request is counted as not
    followed (shown at exit), never reported wrong; the same server's
    plain connections are still traced."""
    import re
    import shutil

    import psycopg

    from lab.servers import PgServer
    keys = self_signed_cert("dbslower_pg")
    with PgServer(settings={"ssl": "on", "ssl_cert_file": str(keys / "server.crt"),
                            "ssl_key_file": str(keys / "server.key")}) as pg:
        with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-p", pg.pid]) as run:
            with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres sslmode=require",
                                 autocommit=True) as conn:
                assert conn.pgconn.ssl_in_use
                for i in range(30):
                    conn.execute("SELECT %s::int AS over_tls", (i,))
            with psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres",
                                 autocommit=True) as conn:
                conn.execute("SELECT 'in the clear'")
    shutil.rmtree(keys)
    queries = [e["query"] for e in run.events()]
    assert "SELECT 'in the clear'" in queries
    assert not any("over_tls" in q for q in queries)
    m = re.search(r"(\d+) request not followed", run.stderr)
    # a record each: the 30 queries, the Terminate message at close, and
    # TLS 1.3's encrypted handshake messages (application-data records)
    assert m and 31 <= int(m.group(1)) <= 36, run.stderr


def test_socket_method_says_which_texts_it_did_not_read(pg):
    """A cursor's next rows are an Execute of a portal left open, with no
    Query, Parse or Bind to read a text from: the statement is reported
    without text, marked as not read (not as prepared before tracing), and
    counted at exit."""
    with Run(["postgres", "--method", "socket", "-m", "0", "-j", "-p", pg.pid]) as run:
        c = RawClient(pg)
        c.sock.sendall(c.query("BEGIN"))
        c.until_ready(1)
        c.sock.sendall(c.msg(b"P", b"\0SELECT generate_series(1, 3) AS cursor_rows\0\0\0")
                       + c.msg(b"B", b"c1\0\0" + b"\0\0" * 3)
                       + c.msg(b"E", b"c1\0\0\0\0\1") + c.msg(b"S"))
        first = c.until_ready(1)
        c.sock.sendall(c.msg(b"E", b"c1\0\0\0\0\1") + c.msg(b"S"))
        more = c.until_ready(1)
        c.sock.sendall(c.query("COMMIT"))
        c.until_ready(1)
        c.sock.sendall(c.msg(b"X"))
        c.sock.close()
    assert b"s" in first and b"s" in more  # PortalSuspended: one row at a time
    events = [e for e in run.events() if e["pid"] != 0]
    assert [e["query"] for e in events] == ["BEGIN", "SELECT generate_series(1, 3) AS cursor_rows", "", "COMMIT"]
    assert [e["text_missing"] for e in events] == [False, False, True, False]
    assert "1 statements had no text: the socket method did not read it" in run.stderr, run.stderr
    assert "prepared before tracing" not in run.stderr
