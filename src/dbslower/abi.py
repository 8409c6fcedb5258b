"""Constants the BPF programs and Python both need, defined once, here.

load.py writes them as #define lines at the head of the program text it
compiles (and -v prints); tests/unit/test_layout.py compiles bpf/dbslower.h
with the same lines. The struct layouts stay in bpf/dbslower.h, checked
against decode.HEADER_FIELDS by that test.
"""

ENGINE_POSTGRES, ENGINE_MYSQL = 1, 2
ENGINES = {"postgres": ENGINE_POSTGRES, "mysql": ENGINE_MYSQL}

MODE_STREAM, MODE_HIST, MODE_DIGEST, MODE_FLOOR = 0, 1, 2, 3

# query_event.flags
EV_TRUNCATED = 1
EV_FAILED = 2
EV_NO_TEXT = 4  # the statement's text was not available: prepared before tracing...
EV_TEXT_UNREAD = 8  # ...or, with EV_NO_TEXT, not read by the socket method

# query_event.kind
KIND_QUERY = 1   # one finished statement
KIND_SAMPLE = 2  # digest mode: first text seen for a kernel fingerprint
KIND_EXIT = 3    # a server process exited: its PID may be reused (header only)
KIND_APP = 4     # PostgreSQL: a backend's application_name (text) at pointer app_ptr

# Index in the per-CPU `counters` array.
CTR_LOST_EVENTS = 0    # ring buffer full
CTR_MAP_FULL = 1       # an aggregation map had no room
CTR_NO_TEXT = 2        # prepared statement text not found
CTR_EXITED = 3         # a statement's process or thread exited before it finished
CTR_INFLIGHT_FULL = 4  # no room to follow a statement (inflight table full)
CTR_UNFOLLOWED = 5     # socket method: a request it could not read (TLS) or follow
CTR_UNFOLLOWED_CONN = 6  # socket method: a connection it cannot read (MySQL over TLS)
CTR_TEXT_UNREAD = 7    # socket method: a statement reported without its text (see EV_TEXT_UNREAD)
CTR_NO_TIMES = 8       # a statement the server had not timed (bpf/mysql_slowlog.bpf.c, bpf/postgres.bpf.c)
CTR_COUNT = 9

# The socket methods without -p: the longest binary path (with its NUL) the
# kernel matches at exec to follow a newly started server (bpf/common.bpf.c).
EXEC_PATH_BYTES = 128

# query_event.error_code of a failed statement whose code was not seen (a
# PostgreSQL error raised with a non-constant level, MySQL without a status
# source); 0 means "no error".
ERROR_CODE_UNKNOWN = 0xFFFFFFFF

# Latency buckets (bpf/buckets.h, dbslower/hist.py): HIST_SUB_BITS linear
# steps per power of two from 2^HIST_MIN_SHIFT ns, HIST_OCTAVES of them.
HIST_SUB_BITS = 4
HIST_MIN_SHIFT = 10
HIST_OCTAVES = 28

# Digest keys of whole operations (bpf/fingerprint.h, operation_key): the
# first word's letters, 5 bits each, shifted left once and tagged. Even, so
# they never meet a kernel fingerprint (odd). The kernel makes them with
# DIGEST_BY_OPERATION; user space folds evicted fingerprints into them.
OP_KEY_TAG = 1 << 62
OP_KEY_LONG = 1 << 61  # the word had more than OP_LETTERS letters
OP_LETTERS = 12        # 60 bits; no operation keyword is longer than 10
OP_SCAN_BYTES = 256    # the word must start within the text's first 256 bytes


def operation_key(word):
    """The digest key of the statements whose first word is `word` (letters)."""
    packed = 0
    for ch in word[:OP_LETTERS].lower():
        packed = (packed << 5) | (ord(ch) - ord("a") + 1)
    return OP_KEY_TAG | (OP_KEY_LONG if len(word) > OP_LETTERS else 0) | (packed << 1)


def operation_word(key):
    """The first word of an operation key, upper case ("" when the statement
    had none; None when key is not an operation key). A word cut at
    OP_LETTERS ends with "+"."""
    if not key or key & 1 or not key & OP_KEY_TAG:
        return None
    packed = (key & (OP_KEY_LONG - 1)) >> 1
    letters = []
    while packed:
        letters.append(chr(ord("A") - 1 + (packed & 31)))
        packed >>= 5
    return "".join(reversed(letters)) + ("+" if key & OP_KEY_LONG else "")


def add_stats(row, v):
    """Adds one digest_stats value v, (calls, total_ns, max_ns, failed,
    failed_ns) as in bpf/dbslower.h, into row, a list of the same five."""
    row[0] += v[0]
    row[1] += v[1]
    row[2] = max(row[2], v[2])
    row[3] += v[3]
    row[4] += v[4]


def add_buckets(out, h):
    """Adds the bucket counts {bucket: n} of h into out."""
    for b, n in h.items():
        out[b] = out.get(b, 0) + n


def pg_sqlstate(code):
    """A PostgreSQL error code as the server packs it (MAKE_SQLSTATE in
    src/include/utils/elog.h: five characters, 6 bits each, the first in the
    low bits, each stored as ch - '0') -> its five-character SQLSTATE."""
    return "".join(chr(((code >> (6 * i)) & 0x3F) + ord("0")) for i in range(5))


def pg_packed_sqlstate(sqlstate):
    """The inverse of pg_sqlstate."""
    return sum(((ord(ch) - ord("0")) & 0x3F) << (6 * i) for i, ch in enumerate(sqlstate))


def format_error_code(engine, code):
    """The code a DBA knows: the SQLSTATE on PostgreSQL, the error number on
    MySQL/MariaDB; None when the statement did not fail or the code is unknown."""
    if not code or code == ERROR_CODE_UNKNOWN:
        return None
    return pg_sqlstate(code) if engine == "postgres" else str(code)


def c_defines():
    """{name: value} for the BPF program's #define lines."""
    names = ("ENGINE_POSTGRES", "ENGINE_MYSQL", "MODE_STREAM", "MODE_HIST", "MODE_DIGEST", "MODE_FLOOR",
             "EV_TRUNCATED", "EV_FAILED", "EV_NO_TEXT", "EV_TEXT_UNREAD", "KIND_QUERY", "KIND_SAMPLE", "KIND_EXIT", "KIND_APP",
             "CTR_LOST_EVENTS", "CTR_MAP_FULL", "CTR_NO_TEXT", "CTR_EXITED", "CTR_INFLIGHT_FULL", "CTR_UNFOLLOWED",
             "CTR_UNFOLLOWED_CONN", "CTR_TEXT_UNREAD", "CTR_NO_TIMES", "CTR_COUNT",
             "HIST_SUB_BITS", "HIST_MIN_SHIFT", "HIST_OCTAVES", "OP_LETTERS", "OP_SCAN_BYTES", "EXEC_PATH_BYTES")
    out = {n: globals()[n] for n in names}
    out["ERROR_CODE_UNKNOWN"] = f"{ERROR_CODE_UNKNOWN}U"
    out["OP_KEY_TAG"] = f"{OP_KEY_TAG}ULL"
    out["OP_KEY_LONG"] = f"{OP_KEY_LONG}ULL"
    out["PG_ERRCODE_INTERNAL"] = pg_packed_sqlstate("XX000")  # ERRCODE_INTERNAL_ERROR: elog(ERROR) without errcode()
    return out


def c_header():
    return "".join(f"#define {k} {v}\n" for k, v in c_defines().items())
