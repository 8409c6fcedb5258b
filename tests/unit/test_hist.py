import random

from dbslower import hist


def test_buckets_are_ordered_and_contain_their_values():
    rnd = random.Random(7)
    for _ in range(20000):
        v = rnd.randrange(0, 2 ** rnd.randrange(1, 38))
        b = hist.bucket(v)
        lo, hi = hist.bounds(b)
        assert lo <= v < hi
    assert all(hist.bounds(b)[1] == hist.bounds(b + 1)[0] for b in range(hist.BUCKETS - 1))


def test_relative_error_of_bucket_midpoints_is_small():
    for v in range(1024, 10**7, 997):
        lo, hi = hist.bounds(hist.bucket(v))
        mid = (lo + hi) / 2
        assert abs(mid - v) / v <= 0.0625 / 2 + 1e-9


def test_percentiles():
    counts = {}
    values = list(range(1, 1001))  # 1..1000 us
    for us in values:
        b = hist.bucket(us * 1000)
        counts[b] = counts.get(b, 0) + 1
    p50, p95, p99 = hist.percentiles(counts, (0.5, 0.95, 0.99), max_ns=1_000_000)
    assert abs(p50 - 500_000) / 500_000 < 0.04
    assert abs(p95 - 950_000) / 950_000 < 0.04
    assert abs(p99 - 990_000) / 990_000 < 0.04
    assert hist.percentiles({}, (0.5,)) == [None]


def test_diff_and_render():
    assert hist.diff({1: 5, 2: 3}, {1: 5, 2: 1}) == {2: 2}
    lines = hist.render({hist.bucket(50_000): 10, hist.bucket(200_000): 5})
    assert lines[0].split()[:2] == ["usecs", ":"]
    assert any(line.strip().startswith("32 -> 63") for line in lines)
