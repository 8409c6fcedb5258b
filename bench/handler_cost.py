"""Time spent in dbslower's BPF handlers per statement, from the kernel's own
accounting: with kernel.bpf_stats_enabled, each program's run_time_ns and
run_cnt (bpftool prog show) count every run, tail calls included in the
caller. No other load changes these figures, so they need no baseline run.
The probe traps themselves are not included (see probe_cost.py for those).

Part of `make bench`; also runnable alone: .venv/bin/python bench/handler_cost.py [postgres] [mysql]
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab.servers import MariaServer, PgServer  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
MODES = {"filter": ["-m", "100000"], "digest": ["--digest"], "serve": ["serve", "--listen", "127.0.0.1:19557"],
         "serve-fp": ["serve", "--fingerprint-metrics", "--listen", "127.0.0.1:19557"]}
# The socket method: its syscall tracepoints also run for every other
# process's recvfrom/sendto (pgbench's and sysbench's too), and that time counts here.
SOCKET_MODES = {"socket-filter": ["--method", "socket", "-m", "100000"],
                "socket-hist": ["--method", "socket", "--hist"],
                "socket-serve": ["serve", "--method", "socket", "--listen", "127.0.0.1:19557"]}
SOCKET_PREFIX = "tracepoint__sys"  # bpftool shows 15 characters of tracepoint__syscalls__sys_*
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
# A long statement, as ORMs and sqlcommenter-style tags make them: pgbench's
# select with a 900-byte trailing comment (pg-long rows).
LONG_SELECT = ("\\set aid random(1, 100000 * :scale)\n"
               "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* " + "x" * 900 + " */;\n")
LONG_MODES = ("filter", "serve", "serve-fp")


def _programs(prefix):
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    tot = {}
    for p in json.loads(out):
        name = p.get("name", "")
        if name.startswith(prefix):
            t = tot.setdefault(name, [0, 0])
            t[0] += p.get("run_time_ns", 0)
            t[1] += p.get("run_cnt", 0)
    return tot


def _traced(engine, pid, mode, prefix, workload):
    args = {**MODES, **SOCKET_MODES}[mode]
    if args[0] != "serve":
        args = [engine] + args
    p = subprocess.Popen([sys.executable, "-m", "dbslower"] + args + ["-p", str(pid)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            line = p.stderr.readline()
            if not line or line.startswith(b"Tracing"):
                break
        statements = workload()
        return _programs(prefix), statements
    finally:
        p.send_signal(2)
        p.wait(timeout=60)


def _row(workload, mode, progs, statements):
    per_stmt = sum(ns for ns, _ in progs.values()) / statements
    parts = ", ".join(f"{n} {c / statements:.2f}×{ns / c:.0f}" for n, (ns, c) in sorted(progs.items()) if c)
    return f"| {workload} | {mode} | {per_stmt:.0f} | {parts} |"


def _postgres_rows(seconds):
    rows = []
    with PgServer() as pg:
        pg.pgbench("-i", "-s", "1", "-q")
        for proto in ("simple", "extended", "prepared"):
            for mode in [*MODES, *SOCKET_MODES]:
                def run():
                    out = pg.pgbench("-n", "-S", "-M", proto, "-c", "2", "-T", str(seconds))
                    return int(next(line for line in out.splitlines()
                                    if "number of transactions actually processed" in line).split(":")[1].split("/")[0])
                # outside the digest modes the default method reports at the
                # backend's send, a syscall tracepoint (bpf/postgres.bpf.c)
                prefix = SOCKET_PREFIX if mode in SOCKET_MODES else ("pg_", SOCKET_PREFIX)
                progs, n = _traced("postgres", pg.pid, mode, prefix, run)
                rows.append(_row(f"pg-{proto}", mode, progs, n))
        script = pg.dir / "long.sql"
        script.write_text(LONG_SELECT)
        for mode in LONG_MODES:
            def run():
                out = pg.pgbench("-n", "-f", str(script), "-c", "2", "-T", str(seconds))
                return int(next(line for line in out.splitlines()
                                if "number of transactions actually processed" in line).split(":")[1].split("/")[0])
            progs, n = _traced("postgres", pg.pid, mode, ("pg_", SOCKET_PREFIX), run)
            rows.append(_row("pg-long", mode, progs, n))
    return rows


def _mariadb_rows(seconds):
    rows = []
    with MariaServer() as maria:
        maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "prepare")
        # mariadb-point: prepared statements (COM_STMT_EXECUTE), whose
        # fingerprint the kernel keeps; mariadb-query: the same SELECT as text
        # (COM_QUERY), as make bench's throughput runs send it, hashed each time.
        for workload, ps_mode in (("mariadb-point", "auto"), ("mariadb-query", "disable")):
            for mode in [*MODES, *SOCKET_MODES]:
                def run():
                    out = maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--threads=2",
                                         f"--db-ps-mode={ps_mode}", f"--time={seconds}", "run")
                    return int(next(line for line in out.splitlines() if "queries:" in line).split()[1])
                prefix = SOCKET_PREFIX if mode in SOCKET_MODES else "my_"
                progs, n = _traced("mysql", maria.pid, mode, prefix, run)
                rows.append(_row(workload, mode, progs, n))
    return rows


def main(seconds=4, engines=("postgres", "mysql")):
    rows = []
    before = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        if "postgres" in engines:
            rows += _postgres_rows(seconds)
        if "mysql" in engines:
            rows += _mariadb_rows(seconds)
    finally:
        STATS.write_text(before)
    head = ["| workload | mode | BPF ns per statement | per program: runs per statement × ns per run |",
            "|---|---|---|---|"]
    return "\n".join(head + rows)


if __name__ == "__main__":
    # optional arguments: the engines to measure (postgres, mysql)
    print(main(engines=tuple(sys.argv[1:]) or ("postgres", "mysql")))
