"""Parsers for the servers' own statement logs, the reference the fidelity
tests and the benchmark compare dbslower against."""

import re
from dataclasses import dataclass

PG_LOG_PREFIX = "@@%p@@ "  # log_line_prefix used by the lab servers
_PG_LINE = re.compile(r"^@@(\d+)@@ LOG:  duration: ([0-9.]+) ms  (statement|parse|bind|execute)( [^:]*)?: (.*)$")


@dataclass
class Logged:
    key: int          # backend PID (PostgreSQL) or connection id (MariaDB)
    duration_ms: float
    query: str


def parse_pg_log(text):
    """Statements from a log written with log_min_duration_statement=0 and
    PG_LOG_PREFIX. An extended-protocol statement is one entry whose time is
    its parse, bind and execute times added up: the server names the
    prepared statement on each line ("parse s1", "bind s1/portal",
    "execute s1"), so a parse is added at the bind of the statement it
    parsed, and a bind at the next execute of the same backend."""
    out, pending, parsed, cur = [], {}, {}, None
    for line in text.splitlines():
        if line.startswith("@@"):
            cur = None
            m = _PG_LINE.match(line)
            if not m:
                continue
            pid, ms, kind, name, query = int(m[1]), float(m[2]), m[3], (m[4] or "").strip(), m[5]
            if kind == "parse":
                parsed[(pid, name)] = ms
                continue
            if kind == "bind":
                ms += parsed.pop((pid, name.split("/")[0]), 0.0)
                pending[pid] = pending.get(pid, 0.0) + ms
                continue
            cur = Logged(pid, ms + pending.pop(pid, 0.0), query)
            out.append(cur)
        elif cur is not None and line.startswith("\t"):
            cur.query += "\n" + line[1:]
    return out


_MY_THREAD = re.compile(r"^# Thread_id: (\d+)")
_MY_TIME = re.compile(r"^# Query_time: ([0-9.]+)")


def parse_mariadb_slow_log(text):
    """Statements from a MariaDB slow log written with long_query_time=0."""
    out = []
    tid = qtime = None
    body = []

    def flush():
        if tid is not None and qtime is not None and body:
            q = "\n".join(body).strip()
            if q.endswith(";"):
                q = q[:-1]
            if not q.startswith("# administrator command"):
                out.append(Logged(tid, qtime * 1000.0, q))

    for line in text.splitlines():
        if line.startswith("# User@Host:") or line.startswith("# Time:"):
            flush()
            tid = qtime = None
            body = []
            continue
        m = _MY_THREAD.match(line)
        if m:
            tid = int(m[1])
            continue
        m = _MY_TIME.match(line)
        if m:
            qtime = float(m[1])
            continue
        if line.startswith("#") and not body:
            if line.startswith("# administrator command"):
                body.append(line)
            continue
        if not body and (line.startswith("SET timestamp=") or line.startswith("use ")):
            continue
        if qtime is not None:
            body.append(line)
    flush()
    return out


_LITERAL = re.compile(r"'(?:[^'\\]|\\.|'')*'|\b\d+(?:\.\d+)?\b")


def strip_literals(query):
    """Query text with literals as '?' (a server log shows a prepared
    statement's parameters substituted; dbslower shows the placeholders)."""
    return _LITERAL.sub("?", query)


def within(measured_ms, reference_ms, rel=0.10, abs_ms=0.3):
    return abs(measured_ms - reference_ms) <= max(rel * reference_ms, abs_ms)


def compare(logged, events, key, normalize=lambda q: q):
    """Matches each logged statement to dbslower events of the same backend
    or connection, in order. Returns (pairs, problems): pairs of
    (Logged, event) and a list of human-readable mismatches."""
    by_key = {}
    for e in events:
        by_key.setdefault(e[key], []).append(e)
    logged_by_key = {}
    for entry in logged:
        logged_by_key.setdefault(entry.key, []).append(entry)
    pairs, problems = [], []
    for k, entries in logged_by_key.items():
        got = by_key.pop(k, [])
        if len(got) != len(entries):
            problems.append(f"{key}={k}: server logged {len(entries)} statements, dbslower saw {len(got)}")
        for entry, ev in zip(entries, got):
            if normalize(entry.query) != normalize(ev["query"]):
                problems.append(f"{key}={k}: text differs: logged {entry.query!r}, saw {ev['query']!r}")
                break
            pairs.append((entry, ev))
    for k, got in by_key.items():
        problems.append(f"{key}={k}: dbslower saw {len(got)} statements the server did not log, e.g. {got[0]['query']!r}")
    return pairs, problems


def median_bias_ms(pairs, measured=lambda ev: ev["duration_ms"]):
    """Median of (dbslower - server) over matched pairs, in ms: a systematic
    offset shows here even when every statement is within tolerance."""
    import statistics
    return statistics.median(measured(ev) - entry.duration_ms for entry, ev in pairs)
