"""Per-statement cost of each dbslower mode, without a database's noise.

Runs bench/pg_probe_loop.c (a stand-in "postgres" that does what a backend
does for a simple Query, for dbslower's server-times machine) and reports
nanoseconds per statement with no tracer, with the floor (same probes, empty
handlers) and with each mode; the method and its hits per statement are the
tracer's own (-v).
Part of `make bench`; also runnable alone: .venv/bin/python bench/probe_cost.py
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
MODES = {"floor": ["--floor"], "filter": ["-m", "100000"], "stream": ["-m", "0", "-j"],
         "digest": ["--digest", "-j"], "hist": ["--hist", "-j"]}


def measure(loop, repeats):
    out = []
    for _ in range(repeats):
        loop.stdin.write("go\n")
        loop.stdin.flush()
        out.append(float(loop.stdout.readline()))
    return statistics.median(out)


def main(repeats=5, n=200000):
    d = Path(tempfile.mkdtemp(prefix="dbslower-probe-cost-"))
    exe = d / "postgres"
    subprocess.run(["gcc", "-O2", "-o", str(exe),
                    str(ROOT / "bench" / "pg_probe_loop.c")], check=True)
    loop = subprocess.Popen([str(exe), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    loop.stdout.readline()
    results = {"none": measure(loop, repeats)}
    plan = {}
    for mode, args in MODES.items():
        tracer = subprocess.Popen([sys.executable, "-m", "dbslower", "postgres", "-v", "-p", str(loop.pid), *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while not (line := tracer.stderr.readline()).startswith("Tracing"):
            if not line:
                raise SystemExit(f"probe_cost: the {mode} tracer exited before tracing")
            key, _, value = line.strip().partition(": ")
            if key in ("method", "probe hits per statement"):
                plan[key] = value
        results[mode] = measure(loop, repeats)
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=60)
    loop.stdin.close()
    loop.wait()
    lines = [f"Method: {plan.get('method')}; probe hits per statement: {plan.get('probe hits per statement')}", "",
             "| mode | ns per statement | over no tracer | over floor |", "|---|---|---|---|"]
    for mode, ns in results.items():
        over_floor = "-" if mode in ("none", "floor") else f"{ns - results['floor']:.0f}"
        lines.append(f"| {mode} | {ns:.0f} | {ns - results['none']:.0f} | {over_floor} |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
