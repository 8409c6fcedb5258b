"""`dbslower top` used as a person would: tmux runs it against real servers
under load, send-keys types the keys, capture-pane reads the screen."""

import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid

import pytest

from helpers import ENV, ROOT, require, run_cli, uprobes

pytestmark = pytest.mark.integration

# Fingerprint prefixes: the query column is cut to the terminal's width.
POINT = "select abalance from pgbench_accounts"
COUNT = "select count(*) from pgbench_accounts"


def shapes(screen):
    """The table's rows as POINT, COUNT or the text, in screen order."""
    return [next((p for p in (POINT, COUNT) if q.startswith(p)), q) for _, q in table_rows(screen)]


class Tmux:
    def __init__(self, command, width, height):
        require(shutil.which("tmux") is not None, "tmux is not installed (make setup)")
        self.name = f"dbslower-{uuid.uuid4().hex[:8]}"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in
                       {"PYTHONPATH": ENV["PYTHONPATH"], "TERM": "xterm-256color", "LANG": "C.UTF-8"}.items())
        # The shell stays after dbslower exits, so the screen it left behind can be read.
        script = f"env {env} {command}; echo EXIT=$?; sleep 120"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        script], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True, check=True).stdout

    def keys(self, *keys):
        for k in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, k], check=True)
            time.sleep(0.2)

    def wait(self, pred, what, timeout_s=40):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def kill(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def table_rows(screen):
    """Fingerprint rows of the main table, in screen order."""
    rows = []
    for line in screen.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+[\d.-]+\s+[\d.-]+\s+[\d.-]+\s+[\d.-]+\s+\d+\s+(?:(PG|MY) )?(.*)$", line)
        if m:
            rows.append((m[1] or "PG", m[2]))
    return rows



class Load:
    """Two statement shapes at different rates and costs, and a slow one, until stopped."""

    def __init__(self, pg):
        self.pg = pg
        self.stop = threading.Event()
        script = ROOT / "tests" / "data" / f"top-{os.getpid()}.sql"
        script.write_text("\\set b random(1, 1)\nSELECT count(*) FROM pgbench_accounts WHERE bid = :b;\n")
        self.script = script
        self.threads = [threading.Thread(target=self.loop, args=(a,)) for a in (
            ("-n", "-S", "-c", "1", "-T", "2"),
            ("-n", "-f", str(script), "-c", "1", "-T", "2"))]
        self.threads.append(threading.Thread(target=self.sleeps))

    def loop(self, args):
        while not self.stop.is_set():
            self.pg.pgbench(*args)

    def sleeps(self):
        while not self.stop.is_set():
            self.pg.psql("SELECT pg_sleep(0.12) /* top test */")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        self.script.unlink()


def test_top_keys_sort_filter_slow_pane_and_quit(pg):
    before = uprobes()
    with Load(pg):
        tm = Tmux(f"{shlex.quote(str(ROOT / '.venv/bin/python'))} -m dbslower top postgres -p {pg.pid} -m 50",
                  100, 30)
        try:
            s = tm.wait(lambda s: {POINT, COUNT} <= set(shapes(s)), "both fingerprints")
            assert "PostgreSQL" in s and "stmt/s" in s and "p99" in s and "sort: total time" in s
            assert all(len(line) <= 100 for line in s.splitlines())
            tm.keys("c")
            s = tm.wait(lambda s: "sort: calls" in s and shapes(s)[:1] == [POINT], "sorted by calls")
            assert "CALLS/S*" in s
            tm.keys("a")
            s = tm.wait(lambda s: "sort: mean" in s and shapes(s) and shapes(s)[0] != POINT, "sorted by mean")
            assert shapes(s).index(POINT) == len(shapes(s)) - 1  # the cheapest statement comes last
            tm.keys("/", "b", "i", "d", " ", "=", "Enter")
            s = tm.wait(lambda s: "filter: bid =" in s and shapes(s) == [COUNT], "the filter applied")
            tm.keys("/", "Enter")  # an empty filter clears it
            tm.keys("s")
            s = tm.wait(lambda s: "slow statements >= 50 ms" in s and "pg_sleep(0.12)" in s, "the slow pane")
            tm.keys("+")
            tm.wait(lambda s: "slow >= 100 ms" in s, "threshold doubled")
            tm.keys("space")
            tm.wait(lambda s: "[PAUSED]" in s, "paused")
            tm.keys("q")
            s = tm.wait(lambda s: "EXIT=" in s, "dbslower to exit")
            assert "EXIT=0" in s
            # The terminal is restored: the full-screen frame is gone, and no probe is left.
            assert "CALLS/S" not in s and "Traceback" not in s
            assert uprobes() == before
        finally:
            tm.kill()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_top_small_terminal_and_clean_exit_on_signals(pg, maria, how):
    before = uprobes()
    with Load(pg):
        tm = Tmux(f"{shlex.quote(str(ROOT / '.venv/bin/python'))} -m dbslower top -p {pg.pid},{maria.pid}", 80, 24)
        try:
            s = tm.wait(lambda s: table_rows(s), "rows at 80x24")
            lines = s.splitlines()
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert "PostgreSQL" in s and "MySQL/MariaDB" in s  # both engines when none is named
            if how == "ctrl-c":
                tm.keys("C-c")
            else:
                # dbslower itself, not the shell that runs it in the pane
                pids = subprocess.run(["pgrep", "-f", r"^\S*python\S* -m dbslower top -p"], capture_output=True,
                                      text=True).stdout.split()
                assert len(pids) == 1
                for p in pids:
                    os.kill(int(p), 15)
            s = tm.wait(lambda s: "EXIT=" in s, "dbslower to exit")
            assert "EXIT=0" in s and "CALLS/S" not in s
            assert uprobes() == before
        finally:
            tm.kill()


def test_top_once_plain_text(pg, maria):
    """--once: one frame as plain text, both engines, with the slow pane."""
    env = dict(ENV, COLUMNS="120")
    proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "dbslower", "top",
                             "--once", "-i", "6", "-m", "100", "-p", f"{pg.pid},{maria.pid}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = proc.stderr.readline()
    assert line.startswith("Tracing"), line + proc.stderr.read()
    maria.sysbench("oltp_point_select", "--tables=1", "--table-size=10000", "--db-ps-mode=disable",
                   "--events=1000", "--threads=1", "run")
    pg.psql("SELECT pg_sleep(0.15) /* once */")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "\x1b" not in out
    rows = table_rows(out)
    assert ("MY", "select c from sbtest? where id=?") in rows
    assert any(q == "select pg_sleep(?)" for e, q in rows if e == "PG")
    assert "slow statements >= 100 ms" in out and "SELECT pg_sleep(0.15) /* once */" in out


def test_top_needs_a_terminal_or_once():
    r = run_cli(["top"], stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "needs a terminal" in r.stderr and "Traceback" not in r.stderr
