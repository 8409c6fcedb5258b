"""--digest with more statement shapes than the kernel's table holds: cold
fingerprints give way, a new slow statement still shows, totals stay exact
(the server's own log is the oracle)."""

import pytest

from helpers import Run
from lab.logs import parse_pg_log

pytestmark = pytest.mark.integration

SHAPES = 20_000  # the kernel's digest table holds 16384


def test_digest_keeps_seeing_new_shapes_with_exact_totals(pg, tmp_path):
    script = tmp_path / "shapes.sql"
    script.write_text("".join(f"SELECT {i} AS shape_{i};\n" for i in range(SHAPES)))
    script.chmod(0o644)
    log = pg.log_statements(True)
    start = log.stat().st_size
    try:
        with Run(["postgres", "--digest", "-j", "-p", pg.pid, "2"]) as run:
            pg.psql(f"\\i {script}")
            pg.psql("SELECT pg_sleep(0.3) /* a new shape after the flood */")
        end = log.stat().st_size  # what ran while traced (turning the log off is logged too)
    finally:
        pg.log_statements(False)
    docs = run.events()
    final = docs[-1]
    logged = parse_pg_log(log.read_bytes()[start:end].decode(errors="replace"))
    assert sum(r["calls"] for r in final["rows"]) == len(logged) >= SHAPES
    assert final["lost"] == 0
    other = [r for r in final["rows"] if "(other fingerprints" in r["fingerprint"]]
    assert other and sum(r["calls"] for r in other) >= SHAPES - 16384  # folded or counted while full
    slow = [r for d in docs[:-1] for r in d["rows"] if r["fingerprint"] == "select pg_sleep(?)"]
    assert slow and slow[0]["calls"] == 1 and slow[0]["max_ms"] >= 300
    # Interval documents add up to the whole run, eviction or not.
    assert sum(r["calls"] for d in docs[:-1] for r in d["rows"]) == sum(r["calls"] for r in final["rows"])
    assert all(d["lost"] == 0 for d in docs)
