"""make soak: dbslower left running under a hostile load, its memory watched.

For --minutes (default 30): a PostgreSQL 15 server gets a load with ever-new
statement shapes (every statement a new fingerprint) and connection churn (a
new connection every 50 statements), plus pgbench -S; three tracers run at
once: streaming every statement (-m 0 -j to /dev/null), --digest every 10 s,
and serve (scraped every second like Prometheus). Every 10 s: each tracer's
RSS, serve's kernel digest-table occupancy and loss counters. The result file
(bench/results/soak-*.md and .json) says whether each RSS stayed within 10% of
its value after the first minute.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab.servers import PG_BIN, PgServer  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
PORT = 19481
SAMPLE_EVERY_S = 10


def rss_mb(pid):
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m[1]) / 1024


def start(args):
    proc = subprocess.Popen([sys.executable, "-m", "dbslower", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"dbslower {args} exited: {proc.stderr.read().decode()}")
        if line.startswith(b"Tracing"):
            break
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # keep the pipe drained
    return proc


SHAPES_PER_S = 1000  # fills the kernel's 16384-entry digest table in about 16 s, again and again


def shapes(pg, stop, counter):
    """Ever-new fingerprints at SHAPES_PER_S, a new connection every 50 statements."""
    import psycopg
    i = 0
    t0 = time.monotonic()
    while not stop.is_set():
        with psycopg.connect(f"host={pg.sock} port={pg.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            for _ in range(50):
                conn.execute(f"SELECT {i} AS shape_{i}")
                i += 1
        counter[0] = i
        ahead = i / SHAPES_PER_S - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("make soak must run as root")
    samples = []
    with PgServer(settings={"max_connections": "300"}) as pg:
        pg.pgbench("-i", "-s", "2", "-q")
        tracers = {
            "stream": start(["postgres", "-m", "0", "-j", "-p", str(pg.pid)]),
            "digest": start(["postgres", "--digest", "-j", "-p", str(pg.pid), "10"]),
            "serve": start(["serve", "-p", str(pg.pid), "--listen", f"127.0.0.1:{PORT}"]),
        }
        stop = threading.Event()
        counter = [0]
        load = [threading.Thread(target=shapes, args=(pg, stop, counter))]
        bench = subprocess.Popen([str(PG_BIN / "pgbench"), "-n", "-S", "-c", "1", "-R", "2000",
                                  "-T", str(int(args.minutes * 60) + 30)], env=pg.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for t in load:
            t.start()
        t0 = time.monotonic()
        last_scrape = ""

        def scrape():
            nonlocal last_scrape
            while not stop.wait(1.0):
                try:
                    last_scrape = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5).read().decode()
                except OSError:
                    pass
        threading.Thread(target=scrape, daemon=True).start()
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(SAMPLE_EVERY_S)
                s = {"t_s": round(time.monotonic() - t0), "shapes_run": counter[0]}
                for name, proc in tracers.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{name} exited with {proc.returncode}")
                    s[f"{name}_rss_mb"] = round(rss_mb(proc.pid), 1)
                s["serve_digest_entries"] = metric(last_scrape, "dbslower_digest_entries", table="digests")
                s["serve_hist_entries"] = metric(last_scrape, "dbslower_digest_entries", table="digest_hist")
                s["serve_lost"] = metric(last_scrape, "dbslower_events_lost_total")
                s["serve_statements"] = metric(last_scrape, "db_server_operation_duration_seconds_count")
                samples.append(s)
                print(json.dumps(s), flush=True)
        finally:
            stop.set()
            bench.terminate()
            for t in load:
                t.join(30)
            for proc in tracers.values():
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
    return report(args, samples)


def report(args, samples):
    base = next((s for s in samples if s["t_s"] >= 60), samples[0])
    lines = [f"# dbslower soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"{args.minutes:g} minutes; PostgreSQL 15; load: a new statement shape every statement (1000/s) and a new "
             "connection every 50 (psycopg), plus pgbench -S at 2000/s; tracers at once: -m 0 -j (streaming), "
             "--digest 10, serve (scraped every second). Sampled every 10 s.", "",
             "| tracer | RSS after 1 min (MB) | max RSS later (MB) | growth | within 10% |", "|---|---|---|---|---|"]
    ok = True
    for name in ("stream", "digest", "serve"):
        key = f"{name}_rss_mb"
        later = max(s[key] for s in samples if s["t_s"] >= base["t_s"])
        growth = later / base[key] - 1
        ok &= growth <= 0.10
        lines.append(f"| {name} | {base[key]:.1f} | {later:.1f} | {growth:+.1%} | {'yes' if growth <= 0.10 else 'NO'} |")
    last = samples[-1]
    lines += ["", f"Statement shapes run: {last['shapes_run']}; serve counted {last['serve_statements']:.0f} "
                  f"statements, lost {last['serve_lost']:.0f}; its digest table held "
                  f"{min(s['serve_digest_entries'] for s in samples):.0f}-"
                  f"{max(s['serve_digest_entries'] for s in samples):.0f} entries (capacity 16384), "
                  f"the bucket table {max(s['serve_hist_entries'] for s in samples):.0f} at most (capacity 131072).",
              "", f"Result: {'RSS flat (within 10%) for every tracer' if ok else 'RSS GREW beyond 10%'}."]
    stamp = time.strftime("%Y%m%d-%H%M")
    out = ROOT / "bench" / "results" / f"soak-{stamp}.md"
    out.write_text("\n".join(lines) + "\n")
    (ROOT / "bench" / "results" / f"soak-{stamp}.json").write_text(json.dumps(samples, indent=0))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
