"""make deb, installed on this machine as a user would: the command on PATH,
its man page (every --help option in it), completion, the unit, a real trace
from the installed command; then removed with nothing left behind."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, require, require_root

pytestmark = pytest.mark.integration


def sh(*args, **kw):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, **kw)


def help_options():
    """Every option string of dbslower's three --help texts (-h itself is in
    the synopsis; hidden options are not in --help)."""
    import argparse
    from dbslower.cli import build_parser, build_serve_parser, build_top_parser
    out = set()
    for p in (build_parser(), build_top_parser(), build_serve_parser()):
        for a in p._actions:
            if a.help == argparse.SUPPRESS:
                continue
            out.update(["-h"] if isinstance(a, argparse._HelpAction) else a.option_strings)
    return out


def test_man_page_has_every_option(tmp_path):
    require(shutil.which("man") is not None, "man is missing (make setup)")
    r = sh(ROOT / ".venv/bin/python", ROOT / "scripts/manpage.py", tmp_path / "dbslower.1")
    assert r.returncode == 0, r.stderr
    text = sh("man", "-l", tmp_path / "dbslower.1", env=dict(os.environ, MANWIDTH="200")).stdout
    text = re.sub(r".\x08", "", text)
    missing = [o for o in sorted(help_options()) if o not in text]
    assert not missing, missing
    for section in ("NAME", "SYNOPSIS", "EXAMPLES", "WHAT IS MEASURED", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section


def test_deb_installs_runs_and_removes_cleanly(pg):
    require_root()
    require(shutil.which("dpkg-deb") is not None and shutil.which("apt-get") is not None, "dpkg/apt missing")
    assert not Path("/usr/bin/dbslower").exists(), "a dbslower package is already installed"
    r = sh("make", "-C", ROOT, "deb")
    assert r.returncode == 0, r.stdout + r.stderr
    from dbslower import __version__
    arch = sh("dpkg", "--print-architecture").stdout.strip()
    deb = ROOT / "build" / f"dbslower_{__version__}_{arch}.deb"
    assert deb.exists()
    files = [line.split()[-1].lstrip(".") for line in sh("dpkg-deb", "-c", deb).stdout.splitlines()]
    r = sh("apt-get", "install", "-y", "--no-install-recommends", deb,
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # the installed command, not this checkout
        r = sh("dbslower", "--version", env=env)
        assert r.returncode == 0 and r.stdout.strip() == f"dbslower {__version__}", r
        assert sh("man", "-w", "dbslower", env=env).stdout.strip() == "/usr/share/man/man1/dbslower.1.gz"
        # bash completion through argcomplete's protocol (what the installed script answers)
        comp = subprocess.run(["sh", "-c", "dbslower 8>&1 9>/dev/null"],
                              env=dict(env, _ARGCOMPLETE="1", COMP_LINE="dbslower se", COMP_POINT="11",
                                       _ARGCOMPLETE_IFS="\n"),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert comp.stdout.split() == ["serve"], comp
        assert Path("/usr/share/bash-completion/completions/dbslower").exists()
        r = sh("systemd-analyze", "verify", "/lib/systemd/system/dbslower.service")
        assert r.returncode == 0 and "dbslower" not in r.stderr, r.stderr
        assert Path("/etc/dbslower/dbslower.toml").exists()
        # The JSON writer's compiled helper, importable by Debian's Python.
        r = sh("/usr/bin/python3", "-c", "import dbslower._jsonlines as j; print(j.__file__)", env=env, cwd="/")
        assert r.returncode == 0 and r.stdout.startswith("/usr/lib/python3/dist-packages/dbslower/"), r
        # A short real trace from the installed command.
        proc = subprocess.Popen(["dbslower", "postgres", "-p", str(pg.pid), "-m", "0", "-j", "-d", "8"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        assert line.startswith("Tracing"), line + proc.stderr.read()
        pg.psql("SELECT 'from the installed package'")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "from the installed package" in out
        r = sh("dbslower", "serve", "--check", "-p", pg.pid, env=env)
        assert r.returncode == 0, r.stderr
    finally:
        r = sh("apt-get", "purge", "-y", "dbslower", env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        assert r.returncode == 0, r.stderr
    left = [f for f in files if f and not f.endswith("/") and os.path.lexists(f)]
    assert not left, left
    for d in ("/usr/lib/python3/dist-packages/dbslower", "/etc/dbslower", "/usr/share/dbslower",
              "/usr/share/doc/dbslower"):
        assert not os.path.exists(d), d
    assert sh("dpkg", "-s", "dbslower").returncode != 0
