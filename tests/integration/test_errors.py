"""Bad input and missing prerequisites: one clear line each, a non-zero exit
code, no traceback, nothing left attached."""

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import ENV, ROOT, require, require_root, run_cli

pytestmark = pytest.mark.integration

TRACEFS = Path("/sys/kernel/tracing/uprobe_events")


def uprobe_events():
    try:
        return TRACEFS.read_text()
    except OSError:
        return ""


def assert_clean_error(r, code, *needles):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("dbslower: ") for line in lines), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["oracle"], "invalid choice"),
    (["postgres", "-m", "-1"], "must be a finite number >= 0"),
    (["postgres", "-m", "abc"], "not a number"),
    (["postgres", "-p", "12x"], "invalid PID"),
    (["postgres", "5"], "interval and count need --hist or --digest"),
    (["postgres", "-s", "100"], "text size 100 is not one of"),
    (["mysql", "--hist", "--digest"], "not allowed with argument"),
])
def test_bad_arguments(args, needle):
    r = run_cli(args)
    assert_clean_error(r, 2, needle)


def test_not_a_server_pid():
    require_root()
    before = uprobe_events()
    r = run_cli(["postgres", "-p", str(os.getpid())])
    assert_clean_error(r, 7, f"PID {os.getpid()}", "is not a postgres server")
    r = run_cli(["mysql", "-p", "4194303"])
    assert_clean_error(r, 7, "no process with PID 4194303")
    assert uprobe_events() == before


def test_binary_without_probes():
    require_root()
    r = run_cli(["mysql", "-x", "/bin/true"])
    assert_clean_error(r, 8, "neither MySQL USDT probes nor a known dispatch_command")
    r = run_cli(["postgres", "-x", "/bin/true"])
    assert_clean_error(r, 8, "neither PostgreSQL's USDT probes nor the exported functions")
    r = run_cli(["postgres", "-x", "/no/such/binary"])
    assert_clean_error(r, 2, "/no/such/binary: no such file")


def test_no_server_running():
    """In a PID namespace of its own (its /proc shows no server), whatever
    else runs on the host."""
    require_root()
    require(shutil.which("unshare") is not None, "unshare (util-linux) is missing")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "dbslower", "mysql"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert_clean_error(r, 6, "no running mysqld or mariadbd process found", "start the server")


def _copy_tree_for_user():
    """The package, readable by an unprivileged user wherever the checkout is."""
    d = Path(tempfile.mkdtemp(prefix="dbslower-src-"))
    shutil.copytree(ROOT / "src" / "dbslower", d / "dbslower")
    for p in (d, *d.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return d


def test_not_root():
    require_root()
    from lab.servers import ensure_user
    pw = ensure_user("dbslower_pg")
    src = _copy_tree_for_user()
    try:
        def demote():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        r = subprocess.run(["/usr/bin/python3", "-m", "dbslower", "postgres"], capture_output=True, text=True,
                           env=dict(ENV, PYTHONPATH=str(src)), preexec_fn=demote, cwd="/", timeout=60)
    finally:
        shutil.rmtree(src)
    assert_clean_error(r, 3, "must run as root", "CAP_SYS_ADMIN")


def _in_private_mounts(script):
    """Runs the CLI in a private mount namespace where `script` has hidden
    part of the system (the host's mounts are untouched)."""
    require(shutil.which("unshare") is not None, "unshare (util-linux) is missing")
    cmd = f"{script}; exec {sys.executable} -m dbslower postgres -d 1"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd],
                          capture_output=True, text=True, env=ENV, timeout=120)


def test_missing_headers_and_tracefs_reported_together():
    require_root()
    mod = f"/lib/modules/{platform.release()}"
    r = _in_private_mounts(
        f"mount -t tmpfs none {mod} && "
        "mount -t tmpfs none /sys/kernel/tracing && "
        "(mount -t tmpfs none /sys/kernel/debug 2>/dev/null || true)")
    assert_clean_error(r, 4, "tracefs is not mounted", "kernel headers for", "apt-get install linux-headers")
    assert len(r.stderr.strip().splitlines()) == 2


def test_missing_headers_alone():
    require_root()
    mod = f"/lib/modules/{platform.release()}"
    r = _in_private_mounts(f"mount -t tmpfs none {mod}")
    assert_clean_error(r, 5, "kernel headers for", "apt-get install linux-headers")
