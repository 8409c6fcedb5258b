"""Builds dbslower(1): the options from the argument parsers (argparse-manpage),
so the page cannot drift from --help, plus hand-written sections
(man/sections.roff). Usage: manpage.py OUTPUT"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from build_manpages.manpage import Manpage  # noqa: E402  (Debian: python3-argparse-manpage)

from dbslower import __version__  # noqa: E402
from dbslower.cli import EXAMPLES, SERVE_EXAMPLES, TOP_EXAMPLES, build_manpage_parser  # noqa: E402


def examples():
    """The examples of every --help, as an EXAMPLES section."""
    out = [".SH EXAMPLES"]
    for text in (EXAMPLES, TOP_EXAMPLES, SERVE_EXAMPLES):
        for line in text.splitlines():
            if line.startswith("    dbslower"):
                cmd, _, why = line.strip().partition("#")
                out += [".TP", ".B " + cmd.strip().replace("-", "\\-"), why.strip()]
    return "\n".join(out) + "\n"


def main(out_path):
    page = str(Manpage(build_manpage_parser()))
    head, _, _ = page.partition(".SH AUTHORS")  # the generated tail names no real author or URL
    head = head.replace('.TH dbslower "1" Manual', f'.TH DBSLOWER 1 "" "dbslower {__version__}" "User Commands"', 1)
    head = head.replace(".SH NAME\ndbslower\n", ".SH NAME\ndbslower \\- live slow statements of PostgreSQL and "
                        "MySQL/MariaDB, traced with eBPF\n", 1)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(head + examples() + (ROOT / "man" / "sections.roff").read_text())


if __name__ == "__main__":
    main(sys.argv[1])
