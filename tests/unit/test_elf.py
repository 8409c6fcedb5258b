"""ELF reading against a small program built here with <sys/sdt.h>."""

import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import require
from dbslower.elf import ElfFile

SRC = r"""
#include <sys/sdt.h>
int hits;
__attribute__((noinline)) void exported_fn(const char *s) { hits += s[0]; }
int main(int argc, char **argv) {
    DTRACE_PROBE1(postgresql, statement__status, argv[0]);
    DTRACE_PROBE(postgresql, query__execute__start);
    exported_fn(argv[0]);
    return 0;
}
"""


def test_symbols_and_usdt_notes():
    require(shutil.which("gcc") is not None, "gcc is missing")
    require(any(Path(p).exists() for p in ("/usr/include/sys/sdt.h", "/usr/include/x86_64-linux-gnu/sys/sdt.h")),
            "sys/sdt.h is missing (systemtap-sdt-dev)")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "p.c"
        src.write_text(SRC)
        exe = Path(d) / "p"
        subprocess.run(["gcc", "-O1", "-rdynamic", "-o", str(exe), str(src)], check=True)
        with ElfFile(exe) as elf:
            syms = elf.symbols()
            assert "exported_fn" in syms and syms["exported_fn"].value > 0
            probes = {(p.provider, p.name): p for p in elf.usdt_probes()}
            assert ("postgresql", "statement__status") in probes
            assert ("postgresql", "query__execute__start") in probes
            assert probes[("postgresql", "statement__status")].args.startswith("8@")
            code = elf.read_at_vaddr(syms["exported_fn"].value, 4)
            assert code and len(code) == 4
