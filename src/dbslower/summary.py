"""--hist and --digest sinks: the summaries printed once per interval (or
once at the end) as tables or JSON documents. Output stage; fed by the
pipeline with aggregate.Report objects.
"""

import json

from dbslower import hist
from dbslower.aggregate import QUANTILES, iso, ms
from dbslower.discover import ENGINE_LABEL
from dbslower.output import escape_control

PRIVATE_ROW_KEYS = ("hist", "contexts")  # kept for top and the endpoint, not printed


def digest_table(engine, start_ns, end_ns, rows, lost, top, server=None):
    calls = sum(r["calls"] for r in rows)
    total = sum(r["total_ms"] for r in rows)
    where = f" (server {server})" if server else ""
    lines = [f"# {ENGINE_LABEL[engine]} digest{where} {iso(start_ns)} - {iso(end_ns)}: "
             f"{calls} statements, {total:.3f} ms total, {len(rows)} fingerprints, {lost} lost",
             f"# {'Rank':>4} {'Query ID':<18} {'Total ms':>12} {'%':>6} {'Calls':>9} {'Mean ms':>9} "
             f"{'P50 ms':>9} {'P95 ms':>9} {'P99 ms':>9} {'Max ms':>9}  Query"]
    for r in rows[:top] if top else rows:
        q = escape_control(r["fingerprint"])
        if len(q) > 120:
            q = q[:117] + "..."
        fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
        lines.append(f"  {r['rank']:>4} {r['fingerprint_id']:<18} {r['total_ms']:>12.3f} {r['pct']:>5.1f}% "
                     f"{r['calls']:>9} {fmt(r['mean_ms'])} {fmt(r['p50_ms'])} {fmt(r['p95_ms'])} "
                     f"{fmt(r['p99_ms'])} {fmt(r['max_ms'])}  {q}")
    if top and len(rows) > top:
        lines.append(f"# ... {len(rows) - top} more fingerprints (--top 0 shows all)")
    return "\n".join(lines) + "\n\n"


def hist_doc(engine, start_ns, end_ns, counts, failed, max_ns, lost):
    total = sum(counts.values())
    p50, p95, p99 = hist.percentiles(counts, QUANTILES, max_ns or None)
    return {
        "interval_start": iso(start_ns), "interval_end": iso(end_ns), "engine": engine,
        "lost": lost, "count": total, "failed": failed,
        "p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "max_ms": ms(max_ns or None),
        "buckets": [{"low_ns": hist.bounds(b)[0], "high_ns": hist.bounds(b)[1], "count": n}
                    for b, n in sorted(counts.items()) if n],
    }


def hist_table(doc):
    lines = [f"{doc['interval_end'][11:19]}  {ENGINE_LABEL[doc['engine']]}: {doc['count']} statements, "
             f"{doc['failed']} failed, {doc['lost']} lost"]
    counts = {hist.bucket(b["low_ns"]): b["count"] for b in doc["buckets"]}
    lines += hist.render(counts)
    if doc["count"]:
        lines.append(f"     p50 {doc['p50_ms']:.3f} ms   p95 {doc['p95_ms']:.3f} ms   "
                     f"p99 {doc['p99_ms']:.3f} ms   max {doc['max_ms']:.3f} ms")
    return "\n".join(lines) + "\n\n"


def public_row(row):
    return {k: v for k, v in row.items() if k not in PRIVATE_ROW_KEYS}


class _SummarySink:
    """Writes each interval's reports; at the end, the unfinished interval
    (JSON only) and the whole run (JSON, or when there are no intervals)."""

    def __init__(self, out, json_out, interval_s):
        self.out = out
        self.json = json_out
        self.interval_s = interval_s

    def on_interval(self, reports):
        for r in reports:
            self.out.write(self.render(r))
        self.out.flush()

    def on_end(self, partial, whole):
        if self.json and partial:
            self.on_interval(partial)
        if self.json or not self.interval_s:
            self.on_interval(whole)


class HistSink(_SummarySink):
    def render(self, r):
        doc = hist_doc(r.engine, r.start_ns, r.end_ns, r.hist, r.failed, r.max_ns, r.lost)
        return json.dumps(doc) + "\n" if self.json else hist_table(doc)


class DigestSink(_SummarySink):
    def __init__(self, out, json_out, interval_s, top):
        super().__init__(out, json_out, interval_s)
        self.top = top

    def render(self, r):
        if self.json:
            return json.dumps({"interval_start": iso(r.start_ns), "interval_end": iso(r.end_ns),
                               "engine": r.engine, "lost": r.lost,
                               "rows": [public_row(row) for row in r.rows]}, ensure_ascii=False) + "\n"
        top = 20 if self.top is None else self.top
        servers = list(dict.fromkeys(row["server"] for row in r.rows)) or [None]
        if len(servers) == 1:
            return digest_table(r.engine, r.start_ns, r.end_ns, r.rows, r.lost, top, servers[0])
        out = []
        for server in servers:  # one table per server, the busiest first
            rows = [dict(row) for row in r.rows if row["server"] == server]
            for i, row in enumerate(rows, 1):
                row["rank"] = i
            out.append(digest_table(r.engine, r.start_ns, r.end_ns, rows, r.lost, top, server))
        return "".join(out)
