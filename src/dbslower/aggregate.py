"""Aggregates read from the kernel, turned into per-interval reports.

Fifth stage (after decode): the kernel keeps cumulative counters (bpf/
common.bpf.c, finish_statement and digest_update); a report is the difference
between two reads, so nothing is lost between intervals. Used by every sink
that shows summaries: --hist, --digest, top (and the metrics endpoint).
"""

import time
from dataclasses import dataclass, field

from dbslower import abi, hist
from dbslower.abi import EV_NO_TEXT, format_error_code
from dbslower.decode import TEXT_MISSING
from dbslower.fingerprint import OPERATIONS, fingerprint, fingerprint_id, operation_name

QUANTILES = (0.50, 0.95, 0.99)
CONTEXTS_PER_FINGERPRINT = 8  # (user, db) pairs remembered per fingerprint, for filtering


# Fingerprints evicted from the kernel's full digest table are folded into one
# row per operation, under that operation's key (abi.operation_key: the key
# serve's kernel itself uses when it digests by operation), so totals stay
# exact and metrics keep their db_operation_name.
OTHER_TEXT = "(other fingerprints, evicted from the kernel's table)"


def other_fp(operation):
    return abi.operation_key(operation)


def other_operation(kfp):
    """The operation (a db_operation_name) of an operation key, or None for
    a kernel fingerprint."""
    word = abi.operation_word(kfp)
    if word is None:
        return None
    return word if word in OPERATIONS else "OTHER"


def by_fingerprint(stats, hists, per_server=True):
    """Raw digests keyed (fp, db_id, server_id[, error code]) added up per
    (fp, server_id), or per (fp, 0) with per_server=False:
    {key: [calls, total_ns, max_ns, failed]}, {key: {bucket: count}} and
    {key: {error code: failed statements}}."""
    out_stats, out_hists, out_errors = {}, {}, {}
    for (fp, _db, server), v in stats.items():
        row = out_stats.setdefault((fp, server if per_server else 0), [0, 0, 0, 0])
        row[0] += v[0]
        row[1] += v[1]
        row[2] = max(row[2], v[2])
        row[3] += v[3]
    for (fp, _db, server, code), h in hists.items():
        key = (fp, server if per_server else 0)
        out = out_hists.setdefault(key, {})
        for b, n in h.items():
            out[b] = out.get(b, 0) + n
        if code:
            errors = out_errors.setdefault(key, {})
            errors[code] = errors.get(code, 0) + sum(h.values())
    return out_stats, out_hists, out_errors


def iso(ns):
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem // 1000:06d}Z"


def ms(ns):
    return None if ns is None else round(ns / 1e6, 6)


class DigestBook:
    """Kernel fingerprints merged into user-space fingerprints, with the
    sample text of each and the (user, db) contexts it was seen in."""

    def __init__(self, engine):
        self.engine = engine
        self.samples = {}   # kernel fp -> sample text
        self.user_fp = {}   # kernel fp -> user fingerprint
        self.contexts = {}  # kernel fp -> [(user, db), ...]

    def add_sample(self, ev):
        if ev.fp not in self.samples:
            self.samples[ev.fp] = TEXT_MISSING if (ev.flags & EV_NO_TEXT and not ev.query) else ev.query
            self.user_fp.pop(ev.fp, None)
        self.add_context(ev)

    def add_context(self, ev):
        seen = self.contexts.setdefault(ev.fp, [])
        ctx = (ev.context[0], ev.context[1])
        if ctx != (None, None) and ctx not in seen and len(seen) < CONTEXTS_PER_FINGERPRINT:
            seen.append(ctx)

    def forget(self, kfp):
        """A kernel fingerprint left the kernel's table."""
        self.samples.pop(kfp, None)
        self.user_fp.pop(kfp, None)
        self.contexts.pop(kfp, None)

    def operation(self, kfp):
        """db_operation_name of a digest key."""
        return other_operation(kfp) or operation_name(self.group(kfp))

    def summary_of(self, ev):
        """The fingerprint of an event's statement: its kernel fingerprint's
        group, or, where the kernel keyed it by operation only, its own."""
        if ev.fp and other_operation(ev.fp) is None:
            return self.group(ev.fp)
        return fingerprint(self.engine, ev.query) if ev.query else None

    def group(self, kfp):
        op = other_operation(kfp)
        if op:
            return f"{op.lower()} {OTHER_TEXT}"
        fp = self.user_fp.get(kfp)
        if fp is None:
            sample = self.samples.get(kfp)
            if sample is None:
                return f"(text not captured: kernel fingerprint {kfp:#018x})"
            fp = sample if sample == TEXT_MISSING else fingerprint(self.engine, sample)
            self.user_fp[kfp] = fp
        return fp

    def rows(self, snap, prev=None, server_name=None):
        """Rows for the counts since the previous snapshot (or all), most
        total time first; snapshots are by_fingerprint()'s (stats, hists,
        errors), keyed (kernel fp, server id), and a row is one fingerprint
        on one server (server_name(id) names it). Each row keeps its bucket
        counts under "hist", and its failures by error code under "errors"."""
        stats, hists, errors = snap
        prev_stats, prev_hists, prev_errors = prev or ({}, {}, {})
        server_name = server_name or (lambda sid: None)
        groups = {}
        for skey, (calls, total_ns, max_ns, failed) in stats.items():
            kfp, sid = skey
            p = prev_stats.get(skey, (0, 0, 0, 0))
            d_calls = calls - p[0]
            if d_calls <= 0:
                continue
            key = (sid, self.group(kfp))
            g = groups.setdefault(key, {"calls": 0, "total_ns": 0, "failed": 0, "hist": {}, "errors": {},
                                        "sample": self.samples.get(kfp), "max_cum": 0, "contexts": []})
            g["calls"] += d_calls
            g["total_ns"] += total_ns - p[1]
            g["failed"] += failed - p[3]
            g["max_cum"] = max(g["max_cum"], max_ns)
            for ctx in self.contexts.get(kfp, ()):
                if ctx not in g["contexts"]:
                    g["contexts"].append(ctx)
            h = hist.diff(hists.get(skey, {}), prev_hists.get(skey, {}))
            for b, n in h.items():
                g["hist"][b] = g["hist"].get(b, 0) + n
            was = prev_errors.get(skey, {})
            for code, n in errors.get(skey, {}).items():
                if n > was.get(code, 0):
                    name = format_error_code(self.engine, code) or "unknown"
                    g["errors"][name] = g["errors"].get(name, 0) + n - was.get(code, 0)
        rows = []
        grand_total = sum(g["total_ns"] for g in groups.values()) or 1
        for (sid, fp), g in groups.items():
            approx = hist.approx_max(g["hist"])
            max_ns = g["max_cum"] if approx is None else min(g["max_cum"], approx)
            p50, p95, p99 = hist.percentiles(g["hist"], QUANTILES, max_ns)
            rows.append({
                "fingerprint_id": fingerprint_id(fp), "fingerprint": fp, "calls": g["calls"],
                "failed": g["failed"], "errors": g["errors"], "total_ms": ms(g["total_ns"]),
                "pct": round(100.0 * g["total_ns"] / grand_total, 2),
                "mean_ms": ms(g["total_ns"] / g["calls"]), "p50_ms": ms(p50), "p95_ms": ms(p95),
                "p99_ms": ms(p99), "max_ms": ms(max_ns), "sample": g["sample"],
                "server": server_name(sid), "contexts": g["contexts"], "hist": g["hist"],
            })
        rows.sort(key=lambda r: (-r["total_ms"], r["fingerprint_id"], r["server"] or ""))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows


@dataclass
class Report:
    """What one engine did over one period (an interval, or the whole run)."""
    engine: str
    start_ns: int
    end_ns: int
    lost: int                   # events lost in this period, every reason
    hist: dict                  # bucket -> count, every statement of the period
    failed: int
    max_ns: int
    rows: list = field(default_factory=list)  # digest rows (digest and top modes)
    method: str = ""

    @property
    def count(self):
        return sum(self.hist.values())

    def percentiles(self):
        return hist.percentiles(self.hist, QUANTILES, self.max_ns or None)

    def seconds(self):
        return max((self.end_ns - self.start_ns) / 1e9, 1e-9)


def hist_report(engine, start_ns, end_ns, lost, snap, prev):
    """Report from cumulative --hist snapshots (counts, failed, max_ns)."""
    counts, failed, max_ns = snap
    if prev:
        counts = hist.diff(counts, prev[0])
        failed -= prev[1]
        approx = hist.approx_max(counts)
        max_ns = min(max_ns, approx) if approx else 0
    return Report(engine, start_ns, end_ns, lost, counts, failed, max_ns)


def digest_report(engine, book, start_ns, end_ns, lost, snap, prev, server_name=None):
    """Report from cumulative digest snapshots ({(fp, server): stats},
    {(fp, server): {bucket: n}})."""
    rows = book.rows(snap, prev, server_name=server_name)
    merged, failed, max_ns = {}, 0, 0
    for r in rows:
        for b, n in r["hist"].items():
            merged[b] = merged.get(b, 0) + n
        failed += r["failed"]
        max_ns = max(max_ns, int(r["max_ms"] * 1e6) if r["max_ms"] is not None else 0)
    return Report(engine, start_ns, end_ns, lost, merged, failed, max_ns, rows)
