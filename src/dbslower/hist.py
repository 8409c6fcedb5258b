"""Log-linear latency buckets, as computed in the kernel (bpf/buckets.h),
and the percentiles and rendering built on them.

Each power of two from 1024 ns up is split into 16 equal buckets, so a
bucket is at most 1/16 (6.25%) of its lower bound wide; reporting its
midpoint is within about 3% of any value in it. Values under 1024 ns share
16 buckets 64 ns wide.
"""

from dbslower.abi import HIST_MIN_SHIFT as MIN_SHIFT, HIST_OCTAVES as OCTAVES, HIST_SUB_BITS as SUB_BITS

SUB = 1 << SUB_BITS
BUCKETS = OCTAVES * SUB


def bucket(ns):
    if ns < (1 << MIN_SHIFT):
        return ns >> (MIN_SHIFT - SUB_BITS)
    msb = ns.bit_length() - 1
    octave = msb - MIN_SHIFT + 1
    sub = (ns >> (msb - SUB_BITS)) & (SUB - 1)
    return min(octave * SUB + sub, BUCKETS - 1)


def bounds(b):
    """[low, high) of bucket b in ns."""
    octave, sub = divmod(b, SUB)
    if octave == 0:
        width = 1 << (MIN_SHIFT - SUB_BITS)
        return sub * width, (sub + 1) * width
    base = 1 << (octave + MIN_SHIFT - 1)
    width = base >> SUB_BITS
    return base + sub * width, base + (sub + 1) * width


def percentiles(counts, qs, max_ns=None):
    """counts: {bucket: n}. Returns the value at each quantile q (0..1), in ns,
    as the midpoint of the bucket holding it (never above max_ns)."""
    total = sum(counts.values())
    out = []
    if not total:
        return [None for _ in qs]
    ordered = sorted(counts.items())
    for q in qs:
        rank = max(1, -(-q * total // 1))  # ceil(q * total), at least 1
        seen = 0
        for b, n in ordered:
            seen += n
            if seen >= rank:
                lo, hi = bounds(b)
                v = (lo + hi) / 2
                if max_ns is not None:
                    v = min(v, max_ns)
                out.append(v)
                break
    return out


def approx_max(counts):
    """Upper bound of the highest non-empty bucket, in ns."""
    nonzero = [b for b, n in counts.items() if n]
    return bounds(max(nonzero))[1] if nonzero else None


def diff(now, before):
    """Per-bucket counts since the `before` snapshot (kernel counters only grow)."""
    return {b: n - before.get(b, 0) for b, n in now.items() if n - before.get(b, 0)}


def render(counts, width=40):
    """bcc-style text histogram, one row per power of two, in microseconds."""
    rows = {}
    for b, n in counts.items():
        lo, _ = bounds(b)
        us = lo / 1000
        p = 0
        while (1 << (p + 1)) <= us:
            p += 1
        key = 0 if us < 1 else p
        rows[key] = rows.get(key, 0) + n
    if not rows:
        return ["     (no statements)"]
    top = max(rows.values())
    lines = [f"{'usecs':>23} : {'count':<9} distribution"]
    for p in range(0, max(rows) + 1):
        lo = 0 if p == 0 else 1 << p
        hi = (1 << (p + 1)) - 1
        n = rows.get(p, 0)
        if p < min(rows):
            continue
        bar = "*" * int(round(width * n / top)) if top else ""
        lines.append(f"{lo:>10} -> {hi:<10}: {n:<9} |{bar:<{width}}|")
    return lines
