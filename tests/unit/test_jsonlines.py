"""The compiled JSON-lines helper (src/dbslower/_jsonlines.c) against the
Python writer it stands in for, on the same ring buffer records: every
line byte for byte, and the records it must leave to Python."""

import contextlib
import json
import os
import struct

import pytest

from dbslower import _jsonlines  # noqa: F401  (the install must have built it: no fallback here)
from dbslower.abi import EV_FAILED, EV_NO_TEXT, EV_TEXT_UNREAD, EV_TRUNCATED, KIND_EXIT, KIND_QUERY, KIND_SAMPLE
from dbslower.decode import HEADER, PAGE, Decoder, RingReader, record_key
from dbslower.output import JsonWriter, Output

RING_BYTES = 1 << 19
BASE_NS = 1_795_000_000_999_999_000  # monotonic ns of the first record; seconds roll over in the batch


class BytesOut(Output):
    """Output's buffering (write, write_encoded, room) without a descriptor."""

    def __init__(self):
        self.texts, self.chunks, self.size, self.dropped, self.nonblocking = [], [], 0, 0, False

    def value(self):
        return b"".join(self.chunks + ["".join(self.texts).encode("utf-8", "replace")])


def record(text, pid=100, tid=100, start_ns=BASE_NS, duration_ns=1_234_567, flags=0, kind=KIND_QUERY, fp=0,
           command=3, conn_id=7, db=b"", user=b"", host=b"", text_len=None, error_code=0):
    head = HEADER.pack(start_ns, duration_ns, conn_id, fp, 0, pid, tid, len(text) if text_len is None else text_len,
                       0, 0, error_code, command, flags, kind, db, user, host)
    return head + text


def ring(records):
    """A ring buffer's data pages as the consumer maps them (no wrap)."""
    buf = bytearray(PAGE + RING_BYTES)
    pos = 0
    for rec in records:
        struct.pack_into("<II", buf, PAGE + pos, len(rec), 0)
        buf[PAGE + pos + 8:PAGE + pos + 8 + len(rec)] = rec
        pos += (len(rec) + 8 + 7) & ~7
    return bytes(buf), pos


@contextlib.contextmanager
def ring_reader(records):
    """decode.RingReader over a memfd holding the records: the consumer
    page, the producer page (its position), then the data."""
    data, end = ring(records)
    fd = os.memfd_create("ring")
    try:
        os.ftruncate(fd, 2 * PAGE + 2 * RING_BYTES)
        os.pwrite(fd, struct.pack("<Q", end), PAGE)
        os.pwrite(fd, data[PAGE:], 2 * PAGE)
        reader = RingReader(fd, RING_BYTES)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        os.close(fd)


def write_lines(engine, reader, decoder, fast):
    """The records read as Source.drain reads them: Python decodes each
    record the helper leaves (every record without it) and lends the helper
    its tail. Returns (the lines, records the helper took, queries Python took)."""
    reader.cons_pos[0] = 0
    out = BytesOut()
    writer = JsonWriter(out)
    helper = writer.fast_lines(engine, decoder.mono_to_wall_ns) if fast else None
    slow = []

    def handle(buf, off, length):
        ev = decoder.decode(buf, off, length)
        ev.server = "srv"
        slow.append(ev.query)
        if ev.kind == KIND_QUERY:
            writer.on_event(ev)
            if helper is not None:
                helper.learn(record_key(buf, off, helper.key_slices), ev)

    n = reader.read(handle, helper)
    return out.value(), n - len(slow), slow


def both(engine, records, decoder=None):
    """(Python's lines, the helper's lines, records the helper took)."""
    decoder = decoder or Decoder(engine, context=False)
    with ring_reader(records) as reader:
        expected, _, _ = write_lines(engine, reader, decoder, fast=False)
        got, taken, _ = write_lines(engine, reader, decoder, fast=True)
    return expected, got, taken


def helper_after_first(engine, buf, decoder=None):
    """A helper that was lent the first record's tail, and Python's lines.
    Lines compared with another writer's need the same decoder: its clock
    offset (mono_to_wall_ns) is taken when it is made."""
    decoder = decoder or Decoder(engine, context=False)
    out = BytesOut()
    writer = JsonWriter(out)
    helper = writer.fast_lines(engine, decoder.mono_to_wall_ns)
    first = decoder.decode(buf, PAGE + 8, struct.unpack_from("<I", buf, PAGE)[0])
    first.server = "srv"
    helper.learn(record_key(buf, PAGE + 8, helper.key_slices), first)
    return helper, out


def test_plain_statements_byte_for_byte():
    texts = [b"SELECT 1", b'SELECT "x", \'\\\' FROM t', b"a\nb\rc\td\x08e\x0cf\x00g\x01h\x1fi\x7fj",
             "SELECT 'é', '€', '𝄞', 'ß'".encode(), b"", b"   trailing blanks kept  "]
    records = []
    for i in range(300):
        records.append(record(texts[i % len(texts)], pid=100 + i % 3, tid=100 + i % 3,
                              start_ns=BASE_NS + i * 7_777_777, duration_ns=[0, 999_999, 1_000_000, 123_456_789_012][i % 4]))
    expected, got, taken = both("postgres", records)
    assert got == expected
    assert taken == 300 - 3  # the first record of each backend teaches the helper its tail
    lines = [json.loads(line) for line in got.splitlines()]
    assert len(lines) == 300 and lines[2]["query"] == "a\nb\rc\td\be\ff\x00g\x01h\x1fi\x7fj"
    assert len({line["ts"][:19] for line in lines}) > 2  # the batch crossed seconds


@pytest.mark.parametrize("text", [b"\xc0\x80", b"x\xed\xa0\x80", b"\xf5\x80\x80\x80", b"cut \xe2\x82", b"\xff",
                                  b"\xe0\x9f\xbf", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_is_left_to_python(text):
    records = [record(b"SELECT 1"), record(text), record(b"SELECT 2")]
    expected, got, taken = both("postgres", records)
    assert got == expected and "\ufffd" in got.decode()
    assert taken == 1  # SELECT 2: the helper stopped at the invalid text only


def test_records_that_need_python():
    records = [record(b"SELECT 1"),
               record(b"SELECT 2", flags=EV_FAILED, error_code=1064),
               record(b"SELECT 3 cut", flags=EV_TRUNCATED),
               record(b"", flags=EV_NO_TEXT),
               record(b"", flags=EV_NO_TEXT | EV_TEXT_UNREAD),
               record(b"SELECT 4", fp=0xABC),
               record(b"SELECT 5", kind=KIND_SAMPLE),
               record(b"", kind=KIND_EXIT),
               record(b"SELECT 6"),
               record(b"SELECT 7", text_len=10_000)]  # longer than the record: cut to it, as the decoder does
    expected, got, taken = both("postgres", records)
    assert got == expected
    assert taken == 2  # SELECT 6 and 7


def test_mysql_strips_like_the_decoder_and_keys_on_its_context():
    texts = [b"SELECT 1;", b"SELECT 2 ; \n", b"SELECT 3;;", b"SELECT 4\x1c", b"SELECT 5 \xc2\xa0", b"SELECT '\xc3\xa9'",
             b"SELECT 6\xc2\x85;", b";", b"  "]
    records = [record(t, db=b"shop", user=b"alice", host=b"10.0.0.1") for t in texts]
    records += [record(b"SELECT 7;", db=b"other", user=b"alice", host=b"10.0.0.1")]
    expected, got, taken = both("mysql", records)
    assert got == expected
    lines = [json.loads(line) for line in got.splitlines()]
    assert [line["query"] for line in lines[:4]] == ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"]
    assert lines[-1]["db"] == "other" and lines[0]["db"] == "shop"
    # Python takes: the first statement (it teaches the tail), U+00A0 and
    # U+0085 where a strip looks, and the other database's first statement.
    assert taken == len(records) - 4


def test_stops_at_room_and_keeps_order():
    records = [record(b"SELECT %d" % i) for i in range(50)]
    decoder = Decoder("postgres", context=False)
    expected, _, _ = both("postgres", records, decoder)
    buf, end = ring(records)
    fast, out = helper_after_first("postgres", buf, decoder)
    out.LIMIT_BYTES = 1000  # room for a few lines
    cons, n = fast(buf, 0, end, RING_BYTES - 1)
    assert 0 < n < 50 and out.size >= 1000 - 400
    assert out.value() == b"".join(expected.splitlines(keepends=True)[:n])
    assert fast(buf, cons, end, RING_BYTES - 1) == (cons, 0)  # no room: each further record goes to Python


def test_busy_record_ends_the_batch():
    records = [record(b"SELECT 1"), record(b"SELECT 2"), record(b"SELECT 3")]
    buf, end = ring(records)
    second = PAGE + ((len(records[0]) + 8 + 7) & ~7)
    buf = bytearray(buf)
    struct.pack_into("<I", buf, second, len(records[1]) | (1 << 31))  # still being written
    fast, _ = helper_after_first("postgres", buf)
    cons, n = fast(buf, 0, end, RING_BYTES - 1)
    assert (cons, n) == (second - PAGE, 1)


def test_ring_reader_hands_the_fast_path_each_batch():
    """RingReader.read with a fast path: every record once, in order, across
    the helper's stops (its batch limit and the records it leaves)."""
    records = [record(b"SELECT %d" % i, flags=EV_FAILED if i % 700 == 5 else 0) for i in range(1500)]
    with ring_reader(records) as r:
        got, taken, slow = write_lines("postgres", r, Decoder("postgres", context=False), fast=True)
        lines = [json.loads(line)["query"] for line in got.splitlines()]
        assert taken + len(slow) == 1500
        assert lines == ["SELECT %d" % i for i in range(1500)]
        assert slow == ["SELECT 0", "SELECT 5", "SELECT 705", "SELECT 1405"]
        assert r.cons_pos[0] == r.prod_pos[0]
