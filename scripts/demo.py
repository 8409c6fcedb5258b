"""make demo: throwaway PostgreSQL and MariaDB servers, a small workload with a
few deliberately slow queries, and dbslower catching them."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab.servers import MariaServer, PgServer  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")


def banner(text):
    print(f"\n=== {text} ===", flush=True)


def trace(args, workload):
    """Runs dbslower with args while workload() runs; its output goes to the terminal."""
    proc = subprocess.Popen([sys.executable, "-m", "dbslower", *args], env=ENV, stderr=subprocess.PIPE)
    line = b""
    deadline = time.monotonic() + 60
    while not line.startswith(b"Tracing") and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    sys.stderr.write(line.decode())
    if proc.poll() is not None:
        sys.stderr.write(proc.stderr.read().decode())
        raise SystemExit("dbslower did not start")
    try:
        workload()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
        sys.stderr.write(rest.decode())


def postgres_demo():
    with PgServer() as pg:
        pg.pgbench("-i", "-s", "2", "-q")

        def workload():
            t = threading.Thread(target=pg.pgbench, args=("-n", "-M", "extended", "-c", "2", "-T", "3"))
            t.start()
            pg.psql("SELECT pg_sleep(0.25) /* deliberately slow */")
            pg.psql("SELECT count(*) FROM pgbench_accounts a JOIN pgbench_accounts b USING (bid) WHERE a.aid < 3000")
            pg.psql("SELECT pg_sleep(0.1), 'a second slow one'")
            t.join()

        banner("PostgreSQL 15: queries slower than 20 ms (pgbench -M extended runs underneath)")
        trace(["postgres", "-m", "20", "--context", "-p", str(pg.pid)], workload)
        banner("PostgreSQL 15: latency histogram of every statement for 3 s")
        trace(["postgres", "--hist", "-p", str(pg.pid)], lambda: pg.pgbench("-n", "-S", "-c", "2", "-T", "3"))
        banner("PostgreSQL 15: top query fingerprints")
        trace(["postgres", "--digest", "-p", str(pg.pid)], lambda: pg.pgbench("-n", "-c", "2", "-T", "3"))


def top_demo(pg, my):
    """dbslower top --once: one frame of the live view, both engines, over 5 s."""
    banner("dbslower top --once -i 5 (the live view, as one plain-text frame): pgbench and sysbench underneath")
    # Long enough for top to compile, attach and see a whole interval.
    load = [threading.Thread(target=pg.pgbench, args=("-n", "-c", "2", "-T", "10")),
            threading.Thread(target=my.sysbench, args=("oltp_read_only", "--tables=1", "--table-size=10000",
                                                       "--db-ps-mode=disable", "--time=10", "--threads=1", "run")),
            # once top is attached, so its slow pane shows it
            threading.Thread(target=lambda: (time.sleep(6), pg.psql("SELECT pg_sleep(0.3) /* deliberately slow */")))]
    for t in load:
        t.start()
    time.sleep(0.5)
    env = dict(ENV, COLUMNS="120")
    subprocess.run([sys.executable, "-m", "dbslower", "top", "--once", "-i", "5", "-m", "100",
                    "-p", f"{pg.pid},{my.pid}"], env=env, check=False)
    for t in load:
        t.join()


def mariadb_demo():
    with MariaServer() as my:
        my.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "prepare")

        def workload():
            t = threading.Thread(target=my.sysbench, args=("oltp_point_select", "--tables=1",
                                 "--table-size=10000", "--db-ps-mode=auto", "--time=3", "--threads=2", "run"))
            t.start()
            my.sql("SELECT SLEEP(0.3) AS deliberately_slow")
            my.sql("SELECT BENCHMARK(3000000, MD5('dbslower'))")
            t.join()

        banner("MariaDB 10.11 (no USDT: uprobes): queries slower than 20 ms")
        trace(["mysql", "-m", "20", "-p", str(my.pid)], workload)
        banner("MariaDB: top query fingerprints (prepared statements and plain queries)")
        trace(["mysql", "--digest", "--top", "5", "-p", str(my.pid)],
              lambda: (my.sysbench("oltp_read_only", "--tables=1", "--table-size=10000", "--db-ps-mode=auto",
                                   "--time=3", "--threads=2", "run")))


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("make demo must run as root")
    postgres_demo()
    mariadb_demo()
    with PgServer() as pg, MariaServer() as my:
        pg.pgbench("-i", "-s", "2", "-q")
        my.sysbench("oltp_read_only", "--tables=1", "--table-size=10000", "prepare")
        top_demo(pg, my)
    print("\ndemo finished", flush=True)
