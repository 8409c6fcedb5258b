"""The event layout is declared once, in bpf/dbslower.h; the Python decoder
must agree with it byte for byte. So must the latency buckets."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import ROOT, require
from dbslower import abi, decode, hist

BPF_DIR = ROOT / "src" / "dbslower" / "bpf"
PRELUDE = """
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
#define __always_inline inline
"""


def compile_and_run(body):
    require(shutil.which("gcc") is not None, "gcc is missing")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text(PRELUDE + abi.c_header() + body)
        exe = Path(d) / "t"
        subprocess.run(["gcc", "-O1", f"-I{BPF_DIR}", "-o", str(exe), str(src)], check=True,
                       capture_output=True, text=True)
        return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_event_header_matches_decoder():
    fields = [name for name, _ in decode.HEADER_FIELDS]
    prints = "\n".join(
        f'printf("{n} %zu %zu\\n", offsetof(struct query_event, {n}), sizeof(((struct query_event *)0)->{n}));'
        for n in fields)
    out = compile_and_run('#include "dbslower.h"\nint main(void) {\n' + prints +
                          '\nprintf("text %zu 0\\n", offsetof(struct query_event, text));\nreturn 0; }\n')
    got = {}
    for line in out.splitlines():
        name, off, size = line.split()
        got[name] = (int(off), int(size))
    offset = 0
    import struct
    for name, fmt in decode.HEADER_FIELDS:
        size = struct.calcsize("<" + fmt)
        assert got[name] == (offset, size), (name, got[name], offset, size)
        offset += size
    assert got["text"][0] == decode.TEXT_OFFSET == decode.HEADER.size


def test_constants_come_from_one_place():
    """The C side defines none of the shared constants itself: each is
    written from dbslower/abi.py at the head of the program text."""
    from dbslower.load import program_text
    for path in BPF_DIR.iterdir():
        text = path.read_text()
        for name in abi.c_defines():
            assert f"#define {name} " not in text, (path.name, name)
    text = program_text({"TEXT_BYTES": 1024}, ["common.bpf.c", "postgres.bpf.c"])
    assert text.startswith(abi.c_header())
    assert '#line 1 "common.bpf.c"' in text and '#line 1 "postgres.bpf.c"' in text


@pytest.mark.parametrize("seed", [1, 2])
def test_bucket_function_matches_kernel(seed):
    import random
    rnd = random.Random(seed)
    values = [0, 1, 63, 64, 1023, 1024, 1025, 2047, 2048, 10**6, 2**38, 2**40, 2**63]
    values += [rnd.randrange(0, 2**rnd.randrange(1, 45)) for _ in range(2000)]
    body = ('#include "buckets.h"\nint main(void) {\nunsigned long long v[] = {'
            + ",".join(f"{v}ULL" for v in values) + '};\nfor (unsigned i = 0; i < sizeof(v)/sizeof(v[0]); i++) '
            'printf("%u\\n", hist_bucket(v[i]));\nreturn 0; }\n')
    got = [int(x) for x in compile_and_run(body).split()]
    assert got == [hist.bucket(v) for v in values]
    consts = compile_and_run('#include "dbslower.h"\nint main(void) { printf("%d %d %d %d\\n", '
                             'HIST_SUB_BITS, HIST_MIN_SHIFT, HIST_OCTAVES, HIST_BUCKETS); return 0; }\n')
    assert [int(x) for x in consts.split()] == [hist.SUB_BITS, hist.MIN_SHIFT, hist.OCTAVES, hist.BUCKETS]


def test_counter_indexes_match():
    from dbslower import pipeline
    out = compile_and_run('#include "dbslower.h"\nint main(void) { printf("%d %d %d %d %d %d %d %d %d\\n", '
                          'CTR_LOST_EVENTS, CTR_MAP_FULL, CTR_NO_TEXT, CTR_EXITED, CTR_INFLIGHT_FULL, CTR_UNFOLLOWED, '
                          'CTR_UNFOLLOWED_CONN, CTR_NO_TIMES, CTR_COUNT); return 0; }\n')
    lost, full, no_text, exited, inflight, unfollowed, unfollowed_conn, no_times, count = (int(x) for x in out.split())
    assert set(pipeline.LOSS_REASONS) == {lost, full, inflight, unfollowed, unfollowed_conn, no_times}
    assert pipeline.LOSS_REASONS[no_times].startswith("statement the server had not timed")
    assert pipeline.LOSS_REASONS[unfollowed_conn].startswith("connection not followed")
    assert pipeline.LOSS_REASONS[lost] == "ring buffer full"
    assert pipeline.LOSS_REASONS[unfollowed].startswith("request not followed")
    assert (pipeline.CTR_NO_TEXT, pipeline.CTR_EXITED) == (no_text, exited)
    assert max(pipeline.LOSS_REASONS) < count
