"""--hist and --digest: summaries aggregated in the kernel, read once per
interval. Output stage: writes to the stream it is given.

Per statement, the kernel only bumps counters (bpf/dbslower.c,
finish_statement and fp_chunk); user space reads the maps once per interval
and reads the ring buffer only for the first text of each new kernel
fingerprint. So the cost does not grow with the statement rate.
"""

import json
import time

from dbslower import hist
from dbslower.decode import KIND_SAMPLE, Decoder, RingReader, wait_readable
from dbslower.discover import ENGINE_LABEL
from dbslower.fingerprint import fingerprint, fingerprint_id
from dbslower.output import escape_control

QUANTILES = (0.50, 0.95, 0.99)


def _iso(ns):
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem // 1000:06d}Z"


def _ms(ns):
    return None if ns is None else round(ns / 1e6, 6)


class DigestBook:
    """Kernel fingerprints merged into user-space fingerprints."""

    def __init__(self, engine):
        self.engine = engine
        self.samples = {}   # kernel fp -> sample text
        self.user_fp = {}   # kernel fp -> user fingerprint

    def add_sample(self, ev):
        if ev.fp not in self.samples:
            self.samples[ev.fp] = ev.query
            self.user_fp.pop(ev.fp, None)

    def group(self, kfp):
        fp = self.user_fp.get(kfp)
        if fp is None:
            sample = self.samples.get(kfp)
            if sample is None:
                return f"(text not captured: kernel fingerprint {kfp:#018x})"
            fp = fingerprint(self.engine, sample)
            self.user_fp[kfp] = fp
        return fp

    def rows(self, stats, hists, prev_stats=None, prev_hists=None):
        """Rows for the counts since the previous snapshot (or all)."""
        prev_stats = prev_stats or {}
        prev_hists = prev_hists or {}
        groups = {}
        for kfp, (calls, total_ns, max_ns, failed) in stats.items():
            p = prev_stats.get(kfp, (0, 0, 0, 0))
            d_calls = calls - p[0]
            if d_calls <= 0:
                continue
            key = self.group(kfp)
            g = groups.setdefault(key, {"calls": 0, "total_ns": 0, "failed": 0, "max_ns": 0,
                                        "hist": {}, "sample": self.samples.get(kfp), "max_cum": 0})
            g["calls"] += d_calls
            g["total_ns"] += total_ns - p[1]
            g["failed"] += failed - p[3]
            g["max_cum"] = max(g["max_cum"], max_ns)
            h = hist.diff(hists.get(kfp, {}), prev_hists.get(kfp, {}))
            for b, n in h.items():
                g["hist"][b] = g["hist"].get(b, 0) + n
        rows = []
        grand_total = sum(g["total_ns"] for g in groups.values()) or 1
        for fp, g in groups.items():
            approx = hist.approx_max(g["hist"])
            max_ns = g["max_cum"] if approx is None else min(g["max_cum"], approx)
            p50, p95, p99 = hist.percentiles(g["hist"], QUANTILES, max_ns)
            rows.append({
                "fingerprint_id": fingerprint_id(fp), "fingerprint": fp, "calls": g["calls"],
                "failed": g["failed"], "total_ms": _ms(g["total_ns"]),
                "pct": round(100.0 * g["total_ns"] / grand_total, 2),
                "mean_ms": _ms(g["total_ns"] / g["calls"]), "p50_ms": _ms(p50), "p95_ms": _ms(p95),
                "p99_ms": _ms(p99), "max_ms": _ms(max_ns), "sample": g["sample"],
            })
        rows.sort(key=lambda r: (-r["total_ms"], r["fingerprint_id"]))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows


def digest_table(engine, start_ns, end_ns, rows, lost, top):
    calls = sum(r["calls"] for r in rows)
    total = sum(r["total_ms"] for r in rows)
    lines = [f"# {ENGINE_LABEL[engine]} digest {_iso(start_ns)} - {_iso(end_ns)}: "
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
        "interval_start": _iso(start_ns), "interval_end": _iso(end_ns), "engine": engine,
        "lost": lost, "count": total, "failed": failed,
        "p50_ms": _ms(p50), "p95_ms": _ms(p95), "p99_ms": _ms(p99), "max_ms": _ms(max_ns or None),
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


def run_summary(args, plan, tracer, out, announce, stop):
    """Prints a summary every interval (count times), or once at the end.
    With JSON, a final document covers the whole run."""
    decoder = Decoder(args.engine, context=False)
    book = DigestBook(args.engine)
    readers = [RingReader(lt.ring_fd, plan.ringbuf_pages * 4096) for lt in tracer.loaded]
    fds = [r.fd for r in readers]

    def on_record(buf, off, length):
        ev = decoder.decode(buf, off, length)
        if ev.kind == KIND_SAMPLE:
            book.add_sample(ev)

    def drain():
        for r in readers:
            r.read(on_record)

    def lost():
        c = tracer.counters()
        return (c[0] + c[1]) if c else 0

    def snapshot():
        drain()
        return tracer.read_hist() if args.mode == "hist" else tracer.read_digests()

    def emit(start_ns, end_ns, snap, prev):
        if args.mode == "hist":
            counts, failed, max_ns = snap
            if prev:
                counts = hist.diff(counts, prev[0])
                failed -= prev[1]
                approx = hist.approx_max(counts)
                max_ns = min(max_ns, approx) if approx else 0
            doc = hist_doc(args.engine, start_ns, end_ns, counts, failed, max_ns, lost())
            out.write(json.dumps(doc) + "\n" if args.json else hist_table(doc))
        else:
            rows = book.rows(snap[0], snap[1], *(prev or (None, None)))
            if args.json:
                out.write(json.dumps({"interval_start": _iso(start_ns), "interval_end": _iso(end_ns),
                                      "engine": args.engine, "lost": lost(), "rows": rows},
                                     ensure_ascii=False) + "\n")
            else:
                out.write(digest_table(args.engine, start_ns, end_ns, rows, lost(),
                                       20 if args.top is None else args.top))
        out.flush()

    announce()
    run_start = time.time_ns()
    start_mono = time.monotonic()
    deadline = start_mono + args.duration if args.duration else None
    interval_start, prev, printed = run_start, None, 0
    next_at = start_mono + args.interval if args.interval else None
    while not stop.set:
        now = time.monotonic()
        if deadline and now >= deadline:
            break
        if next_at and now >= next_at:
            snap = snapshot()
            end = time.time_ns()
            emit(interval_start, end, snap, prev)
            prev, interval_start, printed = snap, end, printed + 1
            next_at += args.interval
            if args.count and printed >= args.count:
                break
            continue
        wake = min(x for x in (next_at, deadline, now + 0.2) if x is not None)
        wait_readable(fds, max(0.0, wake - now))
        drain()
    snap, end = snapshot(), time.time_ns()
    if args.json and args.interval and (not args.count or printed < args.count):
        emit(interval_start, end, snap, prev)  # the partial last interval
    if args.json or not args.interval:
        emit(run_start, end, snap, None)
    return 0
