"""Decode what the BPF programs produce: ring buffer records into events.

Fourth stage. The record layout mirrors struct query_event in
bpf/dbslower.h; tests/unit/test_layout.py compiles that header and checks
every offset against HEADER_FIELDS.

The ring buffer is read through its own mmap, in batches, rather than
through bcc's per-record ctypes callback, which costs several microseconds
per event (see bench/ and issue 6).
"""

import mmap
import os
import re
import struct
import time

from dbslower.abi import EV_FAILED, EV_NO_TEXT, EV_TEXT_UNREAD, EV_TRUNCATED, KIND_EXIT, format_error_code
from dbslower.discover import load_base, read_memory
from dbslower.quirks import COM_NAMES

# (name, struct format) in declaration order; the text follows.
HEADER_FIELDS = (
    ("start_ns", "Q"), ("duration_ns", "Q"), ("conn_id", "Q"), ("fp", "Q"), ("app_ptr", "Q"),
    ("pid", "I"), ("tid", "I"), ("text_len", "I"), ("db_id", "I"), ("server_id", "I"), ("error_code", "I"),
    ("command", "H"),
    ("flags", "B"), ("kind", "B"),
    ("db", "64s"), ("user", "32s"), ("host", "64s"),
)
HEADER = struct.Struct("<" + "".join(f for _, f in HEADER_FIELDS))
TEXT_OFFSET = HEADER.size


def _field_offsets():
    at, offsets = 0, {}
    for name, fmt in HEADER_FIELDS:
        offsets[name] = (at, struct.calcsize(fmt))
        at += struct.calcsize(fmt)
    return offsets


FIELD_AT = _field_offsets()  # name -> (offset, size) in a record
# The numbers, without the connection strings after them: only MySQL's USDT
# probes fill those, so they are unpacked only when their first byte is set.
_NUMBERS = struct.Struct("<" + "".join(f for _, f in HEADER_FIELDS[:-3]))
_STRINGS = struct.Struct("<" + "".join(f for _, f in HEADER_FIELDS[-3:]))
_USER_AT = FIELD_AT["user"][0]
_HOST_AT = FIELD_AT["host"][0]

# What an event's JSON tail (engine, pid, context, server...) depends on, of
# a record: the same bytes give the same tail within a batch (output.py's
# FastLines). MySQL's context strings are in the record; PostgreSQL's come
# from the backend (its title, the kernel's OIDs and pointers, all here).
_TAIL_KEY = ("conn_id", "app_ptr", "pid", "tid", "db_id", "server_id", "command")


def tail_key_slices(engine):
    """(offset, length) of the record's bytes in the key, neighbours merged."""
    names = _TAIL_KEY + (("db", "user", "host") if engine == "mysql" else ())
    slices = []
    for at, n in sorted(FIELD_AT[name] for name in names):
        if slices and slices[-1][0] + slices[-1][1] == at:
            slices[-1] = (slices[-1][0], slices[-1][1] + n)
        else:
            slices.append((at, n))
    return tuple(slices)


def record_key(buf, off, slices):
    return b"".join(buf[off + at:off + at + n] for at, n in slices)

TEXT_MISSING = "[text unavailable: prepared before tracing]"
TEXT_UNREAD = "[text not read by the socket method]"
# Per-backend caches (titles, servers, JSON tails) hold the connections alive
# at once, not every connection ever seen: emptied above this many, so
# connection churn cannot grow the tracer's memory.
PER_PROCESS_CACHE = 4096

PAGE = mmap.PAGESIZE
_BUSY = 1 << 31
_DISCARD = 1 << 30


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF (kernel/bpf/ringbuf.c).

    Layout: a consumer-position page (writable), then a producer-position
    page and the data area mapped twice in a row, so a record that wraps is
    contiguous. Each record has an 8-byte header: length with BUSY and
    DISCARD bits, then a page offset, and is padded to 8 bytes. x86_64 and
    arm64 loads here are ordered by the kernel's release store of the length.
    """

    def __init__(self, fd, data_bytes):
        self.fd = fd
        self.mask = data_bytes - 1
        self.cons = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.data = mmap.mmap(fd, PAGE + 2 * data_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        # The positions are read and written as whole aligned 64-bit words
        # (native memoryview items). struct's "<Q" goes byte by byte: a torn
        # consumer position, seen mid-carry by a producer, looks megabytes
        # behind, and the kernel then drops records as if the buffer were full.
        self.cons_pos = memoryview(self.cons).cast("B").cast("Q")
        self.prod_pos = memoryview(self.data)[:8].cast("Q")
        self.words = memoryview(self.data).cast("I")  # record headers, without struct's per-call cost

    def read(self, handle, fast=None):
        """Calls handle(buffer, offset, length) for each record; returns the count.

        fast(buffer, cons, prod, mask), when given, takes the records it can
        from position cons on and returns (new position, records taken); the
        record it stopped at goes to handle."""
        data, cons_pos, words = self.data, self.cons_pos, self.words
        cons = cons_pos[0]
        prod = self.prod_pos[0]
        n = 0
        mask = self.mask
        while cons < prod:
            if fast is not None:
                cons, taken = fast(data, cons, prod, mask)
                cons_pos[0] = cons
                if taken:
                    n += taken
                    continue  # up to its batch limit: it may take more
                if cons >= prod:
                    break
            off = PAGE + (cons & mask)
            hdr = words[off >> 2]  # records are 8-byte aligned
            if hdr & _BUSY:
                break
            length = hdr & ~(_BUSY | _DISCARD)
            if not hdr & _DISCARD:
                handle(data, off + 8, length)
                n += 1
            cons += (length + 8 + 7) & ~7
            if (n & 1023) == 0:
                # Hand space back to the producers during long batches.
                cons_pos[0] = cons
        cons_pos[0] = cons
        return n

    def close(self):
        self.cons_pos.release()
        self.prod_pos.release()
        self.words.release()
        self.cons.close()
        self.data.close()


class Event:
    """One decoded record. `context` is (user, db, client, application_name),
    shared by every event of a backend (PostgreSQL) or taken from the record
    (MySQL USDT)."""

    __slots__ = ("engine", "start_ns", "duration_ns", "conn_id", "fp", "pid", "tid",
                 "command", "flags", "kind", "query", "context", "db_id", "server_id", "origin", "server", "app_ptr",
                 "error_code")

    @property
    def truncated(self):
        return bool(self.flags & EV_TRUNCATED)

    @property
    def failed(self):
        return bool(self.flags & EV_FAILED)

    @property
    def text_missing(self):
        """A prepared statement prepared before tracing started, or a text
        the socket method did not read."""
        return bool(self.flags & EV_NO_TEXT) and not self.query

    @property
    def missing_text_marker(self):
        """What the table shows for a missing text: why it is missing."""
        return TEXT_UNREAD if self.flags & EV_TEXT_UNREAD else TEXT_MISSING

    @property
    def command_name(self):
        return COM_NAMES.get(self.command, str(self.command)) if self.command else None

    @property
    def user(self):
        return self.context[0]

    @property
    def db(self):
        return self.context[1]

    @property
    def client(self):
        return self.context[2]

    @property
    def application_name(self):
        return self.context[3]


NO_CONTEXT = (None, None, None, None)


def _cstr(b):
    i = b.find(b"\0")
    return (b if i < 0 else b[:i]).decode("utf-8", "replace") or None


_TITLE_RE = re.compile(r"^postgres: (?:(?P<cluster>[^ ]+): )?(?P<user>\S+) (?P<db>\S+) (?P<client>\S+)")


class PgTitles:
    """Context of PostgreSQL backends: user, database and client from the
    process title ("postgres: alice shop 10.0.0.5(53412) SELECT"), and
    application_name from the backend's memory (the exported GUC variable
    `application_name`, a char *).

    With the kernel's per-process table (SERVER_IDS) an event carries the
    GUC's pointer as it was when the statement started: SET application_name
    stores a new string, so a changed pointer is when the name is read again,
    and a KIND_EXIT note (forget()) is when a PID's entry goes. Without it,
    entries are read again after TTL_NS."""

    TTL_NS = 5_000_000_000

    def __init__(self, app_name_symbols=None, proc="/proc"):
        self.proc = proc
        self.cache = {}  # pid -> [read at ns, (user, db, client), app pointer, application_name, title]
        self.app_names = {}  # pid -> (app pointer, name), from the kernel's KIND_APP notes
        # (st_dev, st_ino) of a server binary -> (vaddr of application_name, position-independent?)
        self.app_name_symbols = app_name_symbols or {}

    def forget(self, pid):
        self.cache.pop(pid, None)
        self.app_names.pop(pid, None)

    def set_app(self, pid, app_ptr, name):
        """A KIND_APP note: the kernel read the name when it changed."""
        self.app_names[pid] = (app_ptr, name)
        hit = self.cache.get(pid)
        if hit is not None and hit[2] == app_ptr:
            hit[3] = name

    def get(self, pid, now_ns, app_ptr=0):
        hit = self.cache.get(pid)
        if hit is None or (not app_ptr and now_ns - hit[0] >= self.TTL_NS):
            if len(self.cache) > PER_PROCESS_CACHE:
                self.cache.clear()
            raw = self.read_raw_title(pid)
            if raw is None and hit is not None:
                return hit[1] + (hit[3],)  # exited after the statement: what we knew
            hit = [now_ns, parse_pg_title(raw) if raw else NO_CONTEXT[:3], None, None, raw]
            self.cache[pid] = hit
            hit[3] = self.application_name(pid, app_ptr)
            hit[2] = app_ptr
        elif app_ptr and app_ptr != hit[2]:
            hit[2] = app_ptr
            hit[3] = self.application_name(pid, app_ptr)
        return hit[1] + (hit[3],)

    def application_name(self, pid, app_ptr=0):
        noted = self.app_names.get(pid)
        if noted and app_ptr and noted[0] == app_ptr:
            return noted[1]
        return self.read_application_name(pid, app_ptr)

    def read_raw_title(self, pid):
        try:
            with open(f"{self.proc}/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def with_database(self, pid, db):
        """(user, db, client, application_name) when the database's name is
        known (from its OID): the title is split around it, so names with
        spaces come out whole; a backend gone before it was read gets db alone."""
        hit = self.cache.get(pid)
        title = hit[4] if hit else None
        parts = split_pg_title(title, db) if title else None
        if parts is None:
            parts = (hit[1][0], db, hit[1][2]) if hit and hit[1][1] == db else (None, db, None)
        if hit is not None:
            hit[1] = parts
        return parts + (hit[3] if hit else None,)

    def read_application_name(self, pid, app_ptr=0):
        """From the backend's memory: the string at app_ptr, or (without it)
        at the GUC's own pointer."""
        ptr = app_ptr
        if not ptr:
            if not self.app_name_symbols:
                return None
            try:
                st = os.stat(f"{self.proc}/{pid}/exe")
            except OSError:
                return None
            spec = self.app_name_symbols.get((st.st_dev, st.st_ino))
            if spec is None:
                return None
            vaddr, pie = spec
            base = load_base(pid, st.st_ino, self.proc) if pie else 0
            if base is None:
                return None
            raw = read_memory(pid, base + vaddr, 8, self.proc)
            ptr = int.from_bytes(raw, "little") if raw else 0
        raw = read_memory(pid, ptr, 64, self.proc) if ptr else None
        return _cstr(raw) if raw else None


_TITLE_PREFIX_RE = re.compile(r"^postgres: (?:[^ ]+: )?")


def split_pg_title(title, db):
    """(user, db, client) from a title, given the database's exact name."""
    m = _TITLE_PREFIX_RE.match(title)
    if not m:
        return None
    rest = title[m.end():]
    i = rest.find(f" {db} ")
    if i <= 0:
        return None
    return (rest[:i], db, rest[i + len(db) + 2:].split(" ", 1)[0] or None)


def parse_pg_title(title):
    """(user, db, client) from a backend's process title."""
    m = _TITLE_RE.match(title)
    if not m:
        return NO_CONTEXT[:3]
    return (m["user"], m["db"], m["client"])


class ServerNames:
    """The server a process belongs to, as a DBA names it: its data
    directory (a PostgreSQL backend's postmaster's, or mysqld's own working
    directory). Cached per PID; a reused PID is a backend of some server too."""

    def __init__(self, engine, proc="/proc"):
        self.engine = engine
        self.proc = proc
        self.cache = {}

    def forget(self, pid):
        self.cache.pop(pid, None)

    def get(self, pid):
        name = self.cache.get(pid)
        if name is None:
            server = pid
            if self.engine == "postgres":
                try:
                    with open(f"{self.proc}/{pid}/stat", "rb") as f:
                        stat = f.read()
                    ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
                    with open(f"{self.proc}/{ppid}/comm", "rb") as f:
                        if f.read().strip() in (b"postgres", b"postmaster"):
                            server = ppid
                except (OSError, ValueError, IndexError):
                    pass
            try:
                name = os.readlink(f"{self.proc}/{server}/cwd")
            except OSError:
                name = ""
            if len(self.cache) > PER_PROCESS_CACHE:
                self.cache.clear()
            self.cache[pid] = name
        return name or None


class Decoder:
    """Turns records into Events. One per run; per-backend work is cached."""

    def __init__(self, engine, context=True, app_name_symbols=None):
        self.engine = engine
        self.titles = PgTitles(app_name_symbols) if engine == "postgres" and context else None
        self.servers = ServerNames(engine) if context else None
        self.contexts = {}  # MySQL: a record's context bytes -> (user, db, client, None)
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()

    def server_of(self, pid):
        """The server of a process, read from /proc (when the kernel did not say)."""
        return self.servers.get(pid) if self.servers is not None else None

    def with_database(self, ev, db):
        if self.titles is None:
            return ev.context
        return self.titles.with_database(ev.pid, db)

    def note_app(self, ev):
        if self.titles is not None:
            self.titles.set_app(ev.pid, ev.app_ptr, ev.query or None)

    def forget(self, pid):
        """A KIND_EXIT note: what was read of this PID is no longer true."""
        if self.titles is not None:
            self.titles.forget(pid)
        if self.servers is not None:
            self.servers.forget(pid)

    def decode(self, buf, off, length):
        (start_ns, duration_ns, conn_id, fp, app_ptr, pid, tid, text_len, db_id, server_id, error_code, command,
         flags, kind) = _NUMBERS.unpack_from(buf, off)
        text_len = min(text_len, length - TEXT_OFFSET)
        raw = buf[off + TEXT_OFFSET:off + TEXT_OFFSET + text_len]
        ev = Event()
        ev.engine = self.engine
        ev.start_ns = start_ns + self.mono_to_wall_ns
        ev.duration_ns = duration_ns
        ev.conn_id = conn_id or None
        ev.fp = fp
        ev.app_ptr = app_ptr
        ev.db_id = db_id
        ev.server_id = server_id
        ev.pid = pid
        ev.tid = tid
        ev.command = command
        ev.flags = flags
        ev.kind = kind
        ev.error_code = format_error_code(self.engine, error_code) if flags & EV_FAILED else None
        if flags & EV_TRUNCATED:
            raw = _whole_characters(raw)
        query = raw.decode("utf-8", "replace")
        if self.engine == "mysql":
            # A statement cut out of a multi-statement packet ends with its ';'.
            query = query.rstrip().rstrip(";").rstrip()
        # PostgreSQL: the text exactly as the server received it, trailing blanks included.
        ev.query = query
        if kind >= KIND_EXIT:  # a note about a process, not a statement
            ev.server, ev.context = None, NO_CONTEXT
            return ev
        ev.server = None  # set by the pipeline: from the kernel's server id, else server_of()
        if self.titles is not None:
            ev.context = self.titles.get(pid, start_ns, app_ptr)
        elif self.engine == "mysql" and (buf[off + _NUMBERS.size] or buf[off + _USER_AT] or buf[off + _HOST_AT]):
            # A connection's statements carry the same bytes: decoded once.
            raw_ctx = buf[off + _NUMBERS.size:off + TEXT_OFFSET]
            ctx = self.contexts.get(raw_ctx)
            if ctx is None:
                db, user, host = _STRINGS.unpack(raw_ctx)
                ctx = (_cstr(user), _cstr(db), _cstr(host), None)
                if len(self.contexts) > PER_PROCESS_CACHE:
                    self.contexts.clear()
                self.contexts[raw_ctx] = ctx
            ev.context = ctx
        else:
            ev.context = NO_CONTEXT
        return ev


def _whole_characters(raw):
    """Text cut at the capture size may end inside a UTF-8 character: drop
    that partial character (it is marked truncated anyway), rather than
    show a replacement character the server never saw."""
    end = len(raw)
    i = end - 1
    while i >= 0 and i > end - 4 and (raw[i] & 0xC0) == 0x80:
        i -= 1  # continuation bytes
    if i < 0:
        return raw
    lead = raw[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return raw[:i] if end - i < need else raw


def wait_readable(fds, timeout_s):
    """Block until a ring buffer has data or the timeout passes."""
    import select
    if not fds:
        time.sleep(timeout_s)
        return
    select.select(fds, [], [], timeout_s)
