"""Shared test helpers (imported as `helpers`; fixtures are in conftest.py).

Tiers: tests/unit needs nothing; tests/bpf needs root and BPF, and builds small
fixture programs; tests/integration needs root and starts real servers.
Under CI=true a missing prerequisite fails the test instead of skipping it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

IN_CI = os.environ.get("CI") == "true"
DBSLOWER = [sys.executable, "-m", "dbslower"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")


def require(condition, why):
    """Skip when a prerequisite is missing on a developer machine; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {why}")
    pytest.skip(why)  # outside CI only: under CI=true require() fails above


def uprobes():
    """The kernel's uprobe_events (tracefs): what is attached through it."""
    try:
        return Path("/sys/kernel/tracing/uprobe_events").read_text()
    except OSError:
        return ""


def pg_usdt_semaphore(pid):
    """The value of the semaphore of the USDT probe dbslower uses in
    PostgreSQL (query__execute__start) in process pid."""
    from dbslower.discover import file_key, load_base
    from dbslower.elf import ElfFile
    exe = f"/proc/{pid}/exe"
    with ElfFile(exe) as elf:
        sem = next(p.semaphore for p in elf.usdt_probes() if p.name == "query__execute__start")
        pie = elf.e_type == 3
    base = load_base(pid, file_key(exe)[1]) if pie else 0
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return int.from_bytes(os.pread(fd, 2, base + sem), "little")
    finally:
        os.close(fd)


def self_signed_cert(owner):
    """A directory with server.crt and server.key (a self-signed certificate
    for localhost) that the server's user `owner` can read, unlike pytest's
    tmp directories. The caller removes it."""
    import tempfile
    keys = Path(tempfile.mkdtemp(prefix="dbslower-tls-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", keys / "server.key", "-out", keys / "server.crt"], check=True, capture_output=True)
    for f in (keys, keys / "server.key", keys / "server.crt"):
        shutil.chown(f, owner)
    (keys / "server.key").chmod(0o600)
    return keys


def require_root():
    require(os.geteuid() == 0, "needs root")


class Run:
    """A dbslower process started in the background and stopped on request."""

    def __init__(self, args, ready_timeout_s=60, env=None):
        self.args = [str(a) for a in args]
        self.out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dbslower-test-{os.getpid()}-{time.monotonic_ns()}.out"
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(DBSLOWER + self.args, stdout=self.out, stderr=subprocess.PIPE,
                                     env=env or ENV)
        self.stderr_lines = []
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            text = line.decode("utf-8", "replace")
            self.stderr_lines.append(text)
            if text.startswith("Tracing"):
                return
        self.stop()
        raise AssertionError(f"dbslower {' '.join(self.args)} never printed Tracing: {''.join(self.stderr_lines)}")

    def stop(self, sig=signal.SIGINT, timeout_s=60):
        if self.out.closed:
            return self
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rest = self.proc.communicate(timeout=timeout_s)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest = self.proc.communicate()[1]
        self.stderr_lines.append(rest.decode("utf-8", "replace"))
        self.out.close()
        self.stdout = self.out_path.read_text(encoding="utf-8")
        self.out_path.unlink()
        self.stderr = "".join(self.stderr_lines)
        self.returncode = self.proc.returncode
        return self

    def events(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_cli(args, timeout_s=120, env=None, **kw):
    return subprocess.run(DBSLOWER + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout_s, env=env or ENV, **kw)


def pg_logged_and_seen(pg, workload, extra=()):
    """Runs workload() with the server logging every statement
    (log_min_duration_statement=0) and `dbslower postgres -m 0 -j` tracing it.
    Returns (the server's log entries, dbslower's events, the Run), both
    without the statements that switch the logging."""
    from lab.logs import parse_pg_log
    log = pg.log_statements(True)
    start = log.stat().st_size
    try:
        with Run(["postgres", "-m", "0", "-j", "-p", pg.pid, *extra]) as run:
            workload()
    finally:
        pg.log_statements(False)
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        logged = parse_pg_log(f.read())

    def workload_only(q):
        return not any(s in q for s in ("log_min_duration_statement", "pg_reload_conf", "log_line_prefix"))
    events = [e for e in run.events() if workload_only(e["query"])]
    return [entry for entry in logged if workload_only(entry.query)], events, run
