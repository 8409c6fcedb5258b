"""Render events: the one-line-per-query table and JSON lines.

Last stage. Writers take a text stream and never flush per event; the
caller flushes once per batch.
"""

import fcntl
import json
import os
import time

from dbslower.abi import EV_FAILED, EV_NO_TEXT, EV_TRUNCATED, KIND_QUERY
from dbslower.decode import FIELD_AT, PAGE, PER_PROCESS_CACHE, TEXT_MISSING, TEXT_OFFSET, tail_key_slices

try:
    from dbslower import _jsonlines  # compiled by the install (setup.py)
except ImportError:  # running from a source tree that was not built
    _jsonlines = None

# Control characters (C0, DEL, C1) would break the one-line-per-query table
# or drive the terminal (ESC sequences): show them escaped instead.
_ESCAPES = {i: f"\\x{i:02x}" for i in list(range(0x20)) + list(range(0x7f, 0xa0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", ord("\\"): "\\\\"})


def escape_control(text):
    return text.translate(_ESCAPES)


class _TsCache:
    """ISO-8601 UTC timestamps; the seconds part is formatted once per second."""

    def __init__(self):
        self.sec = None
        self.prefix = ""
        self.hms = ""

    def _set(self, sec):
        self.sec = sec
        t = time.gmtime(sec)
        self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", t)
        self.hms = time.strftime("%H:%M:%S", time.localtime(sec))

    def iso(self, ns):
        sec, rem = divmod(ns, 1_000_000_000)
        if sec != self.sec:
            self._set(sec)
        return f"{self.prefix}.{rem // 1000:06d}Z"

    def clock(self, ns):
        sec = ns // 1_000_000_000
        if sec != self.sec:
            self._set(sec)
        return self.hms


_ISO = _TsCache()


def event_dict(ev):
    """One event as the dict JsonWriter writes (tests/unit/test_output.py
    checks the two agree); for the slower paths that add fields."""
    user, db, client, app = ev.context
    return {"ts": _ISO.iso(ev.start_ns), "duration_ms": round(ev.duration_ns / 1e6, 6), "query": ev.query,
            "truncated": bool(ev.flags & EV_TRUNCATED), "text_missing": ev.text_missing,
            "status": "error" if ev.flags & EV_FAILED else "ok", "error_code": ev.error_code,
            "engine": ev.engine, "pid": ev.pid, "tid": ev.tid, "command": ev.command_name,
            "conn_id": ev.conn_id, "user": user, "db": db, "client": client, "application_name": app,
            "server": ev.server}


# A statement that succeeded with its whole text: most of them.
_PLAIN_STATUS = '"truncated":false,"text_missing":false,"status":"ok","error_code":null,'


class JsonWriter:
    """One JSON object per line. Per event it encodes only what changes per
    statement; the fields a backend or thread shares are encoded once."""

    def __init__(self, out):
        self.out = out
        self.ts = _TsCache()
        self._str = json.encoder.encode_basestring  # C implementation
        self._dumps = json.JSONEncoder(ensure_ascii=False).encode
        self._tail = {}

    def start(self):
        pass

    def flush(self):
        self.out.flush()

    def lost(self):
        return self.out.lost() if hasattr(self.out, "lost") else {}

    def _tail_for(self, ev):
        key = (ev.engine, ev.pid, ev.tid, ev.command, ev.conn_id, ev.context, ev.server)
        tail = self._tail.get(key)
        if tail is None:
            d = self._dumps
            user, db, client, app = ev.context
            tail = (f'"engine":"{ev.engine}","pid":{ev.pid},"tid":{ev.tid},"command":{d(ev.command_name)},'
                    f'"conn_id":{d(ev.conn_id)},"user":{d(user)},"db":{d(db)},"client":{d(client)},'
                    f'"application_name":{d(app)},"server":{d(ev.server)}}}\n')
            if len(self._tail) > PER_PROCESS_CACHE:
                self._tail.clear()
            self._tail[key] = tail
        return tail

    def fast_lines(self, engine, mono_to_wall_ns):
        """The compiled writer for one source's records (FastLines), or None
        without the helper or with an output that takes only text."""
        if _jsonlines is None or not hasattr(self.out, "write_encoded"):
            return None
        return FastLines(self, engine, mono_to_wall_ns)

    def on_event(self, ev):
        flags = ev.flags
        ts = self.ts
        sec, rem = divmod(ev.start_ns, 1_000_000_000)
        if sec != ts.sec:
            ts._set(sec)
        ms, frac = divmod(ev.duration_ns, 1_000_000)  # integer arithmetic: faster than a float's format
        if flags & (EV_FAILED | EV_NO_TEXT | EV_TRUNCATED):
            status = (f'"truncated":{"true" if flags & EV_TRUNCATED else "false"},'
                      f'"text_missing":{"true" if flags & EV_NO_TEXT and not ev.query else "false"},'
                      f'"status":"{"error" if flags & EV_FAILED else "ok"}",'
                      f'"error_code":{"null" if ev.error_code is None else chr(34) + ev.error_code + chr(34)},')
        else:
            status = _PLAIN_STATUS
        self.out.write(
            f'{{"ts":"{ts.prefix}.{rem // 1000:06d}Z","duration_ms":{ms}.{frac:06d},'
            f'"query":{self._str(ev.query)},{status}{self._tail_for(ev)}')


def json_lines_writer():
    """For -v: what writes the JSON lines of plain statements."""
    if _jsonlines is None:
        return "JSON lines: in Python (about 4x the CPU per event): dbslower._jsonlines is not built (make setup)"
    return "JSON lines: the compiled helper dbslower._jsonlines, Python for the records it leaves"


class FastLines:
    """Streams a source's plain records to JSON lines in C (_jsonlines.c)
    without an Event each: 0.6 us of tracer CPU per streamed event instead
    of 2.8 (pgbench -S, py-spy; README, Performance). Python decodes the other records, and the first record of each
    tail key in a batch, whose tail it then lends to the helper (learn).
    Tails are forgotten at each batch and at each note about a process,
    as the context they encode may change between batches."""

    _LAYOUT = {name: FIELD_AT[name][0] for name in ("start_ns", "duration_ns", "fp", "text_len", "flags", "kind")}

    def __init__(self, writer, engine, mono_to_wall_ns):
        self.writer = writer
        self.out = writer.out
        self.key_slices = tail_key_slices(engine)
        self.tails = {}
        layout = dict(self._LAYOUT, text=TEXT_OFFSET, kind_query=KIND_QUERY)
        self.formatter = _jsonlines.Formatter(layout, self.key_slices, self.tails, _PLAIN_STATUS.encode(),
                                              engine == "mysql", mono_to_wall_ns)

    def forget(self):
        self.tails.clear()

    def learn(self, key, ev):
        self.tails[key] = self.writer._tail_for(ev).encode("utf-8", "replace")

    def __call__(self, data, cons, prod, mask):
        cons, taken, lines = self.formatter.lines(data, cons, prod, mask, PAGE, self.out.room())
        if taken:
            self.out.write_encoded(lines)
        return cons, taken


class TableWriter:
    def __init__(self, out, context=False):
        self.out = out
        self.context = context
        self.ts = _TsCache()

    def flush(self):
        self.out.flush()

    def lost(self):
        return self.out.lost() if hasattr(self.out, "lost") else {}

    def start(self):
        if self.context:
            self.out.write(f"{'TIME':<9} {'PID':<7} {'MS':>10} {'STATUS':<6} {'USER':<12} {'DB':<12} {'CLIENT':<21} QUERY\n")
        else:
            self.out.write(f"{'TIME':<9} {'PID':<7} {'MS':>10} QUERY\n")
        self.out.flush()

    def on_event(self, ev):
        q = ev.missing_text_marker if ev.text_missing else escape_control(ev.query)
        if ev.truncated:
            q += " [...]"
        head = f"{self.ts.clock(ev.start_ns):<9} {ev.pid:<7} {ev.duration_ns / 1e6:>10.3f} "
        if self.context:
            head += (f"{'ERROR' if ev.failed else 'ok':<6} {_cell(ev.user, 12)} {_cell(ev.db, 12)} "
                     f"{_cell(ev.client, 21)} ")
        elif ev.failed:
            q = f"[ERROR {ev.error_code}] " + q if ev.error_code else "[ERROR] " + q
        self.out.write(head + q + "\n")


def _cell(value, width):
    return f"{escape_control(value or '-')[:width]:<{width}}"


class Output:
    """Standard output that never blocks the tracer.

    Text goes into a bounded buffer and is written with non-blocking writes
    when stdout is a pipe or socket, so a stalled reader can neither hold the
    probes attached after a stop request nor stop the ring buffer from being
    read. When the buffer is full, further events are dropped and counted
    (`dropped`), and shown with the other losses. Terminals and files are
    written as usual (a terminal's flag is shared with the shell, and a file
    does not block)."""

    LIMIT_BYTES = 16 << 20  # as much as the kernel's ring buffer holds

    def __init__(self, fd):
        import stat
        self.fd = fd
        self.texts = []   # written since the last flush, not yet encoded
        self.chunks = []  # encoded, not yet taken by the reader
        self.size = 0
        self.dropped = 0
        self.nonblocking = False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self.saved_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, self.saved_flags | os.O_NONBLOCK)
            self.nonblocking = True

    def write(self, text):
        if self.size >= self.LIMIT_BYTES:
            self.dropped += 1  # writers write one event per call
            return
        # Encoded once per flush, not per event; characters count as bytes
        # here, so the limit may be passed by what multi-byte text adds.
        self.texts.append(text)
        self.size += len(text)

    def room(self):
        """Bytes that can still be buffered before events are dropped."""
        return self.LIMIT_BYTES - self.size

    def write_encoded(self, data):
        """Lines already encoded (FastLines), after what was written before."""
        self._encode_texts()
        self.chunks.append(data)
        self.size += len(data)

    def _encode_texts(self):
        if self.texts:
            self.chunks.append("".join(self.texts).encode("utf-8", "replace"))
            self.texts = []

    def flush(self):
        """Writes what the reader takes now; True when nothing is left."""
        self._encode_texts()
        if not self.chunks:
            return True
        data = b"".join(self.chunks)
        self.chunks = []
        done = 0
        view = memoryview(data)  # slices without copies
        try:
            while done < len(data):
                n = os.write(self.fd, view[done:done + (1 << 20)])
                if n <= 0:
                    break
                done += n
        except BlockingIOError:
            pass
        rest = data[done:]
        self.chunks = [rest] if rest else []
        self.size = len(rest)
        return not rest

    def drain(self, stalled_after_s=1.0):
        """At exit: waits while the reader keeps taking data; gives up (and
        counts the rest as dropped) once it took nothing for stalled_after_s."""
        import select
        last_progress = time.monotonic()
        while not self.flush():
            before = self.size
            select.select([], [self.fd], [], 0.1)
            if self.size < before or self.flush():
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stalled_after_s:
                rest = b"".join(self.chunks)
                self.dropped += rest.count(b"\n")
                self.chunks, self.size = [], 0
                return False
        return True

    def lost(self):
        return {"output blocked (reader too slow)": self.dropped} if self.dropped else {}

    def close(self):
        if self.nonblocking:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self.saved_flags)
            except OSError:
                pass
            self.nonblocking = False
