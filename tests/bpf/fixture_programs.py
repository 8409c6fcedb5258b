import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import ROOT, require, require_root

FIXTURES = ROOT / "tests" / "fixtures"


class Fixture:
    """A fixture program, started and fed one line per statement."""

    def __init__(self, exe):
        self.exe = exe
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self):
        return self.proc.pid

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def build(source, name, compiler):
    require_root()
    require(shutil.which(compiler) is not None, f"{compiler} is missing")
    d = Path(tempfile.mkdtemp(prefix="dbslower-fixture-"))
    exe = d / name
    r = subprocess.run([compiler, "-O2", "-g0", "-rdynamic", "-o", str(exe), str(FIXTURES / source)],
                       capture_output=True, text=True)
    require(r.returncode == 0, f"cannot build {source}: {r.stderr[-500:]}")
    return exe




def running(source, compiler):
    """A generator for a pytest fixture: the fixture program built and running."""
    exe = build(source, "mysqld", compiler)
    f = Fixture(exe)
    yield f
    f.stop()
    shutil.rmtree(exe.parent)
