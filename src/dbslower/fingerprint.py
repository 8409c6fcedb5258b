"""Query fingerprints: the text of a query with its literals abstracted, so
executions that differ only in values group together.

MySQL: the algorithm of percona-toolkit's pt-fingerprint (QueryRewriter::
fingerprint), re-expressed in Python regular expressions, so dbslower's
digest groups exactly as pt-query-digest does, and its IDs match pt-query-
digest's "Query ID" (the last 16 hex digits of the fingerprint's MD5).

PostgreSQL: a tokenizer for PostgreSQL's lexical rules (quoted identifiers
keep their case, $n parameters stay, dollar-quoted and E'' strings are
literals, a minus sign before a number in operand position is part of the
constant), so grouping follows pg_stat_statements' queryid as closely as
text allows. Deliberate differences are listed in the README.

Both collapse IN (...) and VALUES (...), (...) lists, as pt-fingerprint does.
Text cut off at the capture limit still groups: a dangling string or
comment is closed at the end of the text.
"""

import hashlib
import re

from dbslower.abi import OP_LETTERS, OP_SCAN_BYTES

# ---- MySQL: pt-fingerprint ---------------------------------------------------

_MY_MYSQLDUMP = re.compile(r"SELECT /\*!40001 SQL_NO_CACHE \*/ \* FROM `")
_MY_PTTOOL = re.compile(r"/\*\w+\.\w+:[0-9]/[0-9]\*/")
_MY_CALL = re.compile(r"\s*(call\s+\S+)\(", re.I)
_MY_MULTI_INSERT = re.compile(r"((?:INSERT|REPLACE)(?: IGNORE)?\s+INTO.+?VALUES\s*\(.*?\))\s*,\s*\(", re.I | re.S)
_MY_MLC = re.compile(r"/\*[^!].*?\*/", re.S | re.M)
_MY_OLC = re.compile(r"(?:--|#)[^'\"\r\n]*(?=[\r\n]|$)")
_MY_USE = re.compile(r"use \S+$", re.I)
_MY_ESC_QUOTE = re.compile(r"\\[\"']")
_MY_DQ = re.compile(r'".*?"', re.S)
_MY_SQ = re.compile(r"'.*?'", re.S)
_MY_NUM = re.compile(r"[0-9+-][0-9a-f.xb+-]*")
_MY_NUM_TAIL = re.compile(r"[xb.+-]\?")
_MY_WS = re.compile(r"[ \n\t\r\f]+")
_MY_NULL = re.compile(r"\bnull\b")
_MY_LISTS = re.compile(r"\b(in|values?)(?:[\s,]*\([\s?,]*\))+")
_MY_UNION = re.compile(r"\b(select\s.*?)(?:(\sunion(?:\sall)?)\s\1)+")
_MY_LIMIT = re.compile(r"\blimit \?(?:, ?\?| offset \?)?")
_MY_ORDER_BY = re.compile(r"\bORDER BY ", re.I)
_MY_ASC = re.compile(r"(.+?)\s+ASC", re.I | re.S)


def _close_cut_off(query):
    """A query cut at the capture limit may end inside a string: close it,
    so the rest is still abstracted rather than grouped by its content."""
    if query.count("'") % 2:
        query += "'"
    return query


def mysql_fingerprint(query):
    q = query
    if _MY_MYSQLDUMP.match(q):
        return "mysqldump"
    if _MY_PTTOOL.search(q):
        return "percona-toolkit"
    if q.startswith("administrator command: "):
        return q
    m = _MY_CALL.match(q)
    if m:
        return m.group(1).lower()
    m = _MY_MULTI_INSERT.match(q)
    if m:
        q = m.group(1)
    q = _MY_MLC.sub("", q)
    q = _MY_OLC.sub("", q)
    if _MY_USE.match(q):
        return _MY_USE.sub("use ?", q)
    q = _MY_ESC_QUOTE.sub("", q)
    q = _MY_DQ.sub("?", q)
    q = _MY_SQ.sub("?", q)
    q = _MY_NUM.sub("?", q)
    q = _MY_NUM_TAIL.sub("?", q)
    q = q.lstrip()
    if q.endswith("\n"):
        q = q[:-1]
    q = _MY_WS.sub(" ", q)
    q = q.lower()
    q = _MY_NULL.sub("?", q)
    q = _MY_LISTS.sub(r"\1(?+)", q)
    q = _MY_UNION.sub(r"\1 /*repeat\2*/", q)
    q = _MY_LIMIT.sub("limit ?", q, count=1)
    m = _MY_ORDER_BY.search(q)
    if m:
        head, tail = q[:m.end()], q[m.end():]
        while True:
            new = _MY_ASC.sub(r"\1", tail, count=1)
            if new == tail:
                break
            tail = new
        q = head + tail
    return q


# ---- PostgreSQL: tokenizer -----------------------------------------------------

_PG_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lcomment>--[^\n]*)
  | (?P<bcomment>/\*)
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$)
  | (?P<param>\$\d+)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*(?:'|$))
  | (?P<bstring>[bBxX]'[^']*(?:'|$))
  | (?P<ustring>[uU]&'(?:[^']|'')*(?:'|$))
  | (?P<string>'(?:[^']|'')*(?:'|$))
  | (?P<qident>"(?:[^"]|"")*(?:"|$))
  | (?P<number>(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<ident>[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*)
  | (?P<op>::|<=|>=|<>|!=|\|\||->>|->|\#>>|\#>|@>|<@|[-+*/<>=~!@\#%^&|`?.,;:()\[\]{}])
  | (?P<other>.)
""", re.X | re.S)

# Words after which a '-' starts a signed constant rather than a subtraction.
_PG_UNARY_AFTER = {
    "select", "where", "and", "or", "not", "when", "then", "else", "case", "in", "values",
    "return", "returning", "limit", "offset", "by", "like", "ilike", "between", "is", "set",
    "on", "having", "as", "from", "array", "any", "all", "some", "interval",
}
_PG_LITERAL_WORDS = {"true", "false", "null"}


def _pg_tokens(query):
    pos, n = 0, len(query)
    while pos < n:
        m = _PG_TOKEN.match(query, pos)
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "bcomment":
            # PostgreSQL block comments nest.
            depth, i = 1, m.end()
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            pos = i
            continue
        if kind == "dollar":
            end = query.find(text, m.end())
            pos = n if end < 0 else end + len(text)
            yield "literal", "?"
            continue
        pos = m.end()
        if kind in ("ws", "lcomment"):
            continue
        if kind in ("string", "estring", "bstring", "ustring", "number"):
            yield "literal", "?"
        elif kind == "ident":
            low = text.lower()
            yield ("literal", "?") if low in _PG_LITERAL_WORDS else ("ident", low)
        elif kind == "qident":
            yield "ident", text
        elif kind == "param":
            yield "param", text
        else:
            yield "op", text


def _collapse_lists(tokens):
    """IN (?, ?, ...) and VALUES (...), (...) with only literals/params: one (?+)."""
    out, i = [], 0
    while i < len(tokens):
        kind, text = tokens[i]
        out.append((kind, text))
        if kind == "ident" and text in ("in", "values") and i + 1 < len(tokens) and tokens[i + 1][1] == "(":
            j = i + 1
            ok_end = None
            while j < len(tokens) and tokens[j][1] == "(":
                k = j + 1
                while k < len(tokens) and (tokens[k][0] in ("literal", "param") or tokens[k][1] == ","):
                    k += 1
                if k < len(tokens) and tokens[k][1] == ")" and k > j + 1:
                    ok_end = k
                    j = k + 1
                    if j < len(tokens) and tokens[j][1] == "," and j + 1 < len(tokens) and tokens[j + 1][1] == "(":
                        j += 1
                        continue
                break
            if ok_end is not None:
                out.append(("op", "(?+)"))
                i = ok_end + 1
                continue
        i += 1
    return out


def postgres_fingerprint(query):
    tokens = []
    for kind, text in _pg_tokens(query):
        # -5 after an operator or keyword is one constant, as the parser folds it.
        if kind == "literal" and tokens and tokens[-1] == ("op", "-"):
            before = tokens[-2] if len(tokens) > 1 else ("op", "(")
            if before[0] == "op" and before[1] not in (")", "]") or \
                    (before[0] == "ident" and before[1] in _PG_UNARY_AFTER):
                tokens.pop()
        tokens.append((kind, text))
    while tokens and tokens[-1][1] == ";":
        tokens.pop()
    return _join(_collapse_lists(tokens))


_NO_SPACE_BEFORE = {",", ")", ".", "::", "]", ";", "(?+)"}
_NO_SPACE_AFTER = {"(", ".", "::", "["}


def _join(tokens):
    """Tokens as text: one space between tokens, none around . :: and inside
    brackets. Whitespace in the original never matters."""
    out = []
    prev = None
    for kind, text in tokens:
        if prev is not None and text not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER \
                and not (text == "(" and kind == "op" and prev_kind == "ident"):
            out.append(" ")
        out.append(text)
        prev, prev_kind = text, kind
    return "".join(out)


def fingerprint(engine, query):
    return mysql_fingerprint(query) if engine == "mysql" else postgres_fingerprint(query)


def fingerprint_id(fp):
    """pt-query-digest's Query ID: 0x and the last 16 hex digits of the MD5."""
    return "0x" + hashlib.md5(fp.encode("utf-8", "replace")).hexdigest()[-16:].upper()


def redact(engine, query):
    """The query with every literal replaced by ?: its fingerprint, which
    abstracts strings, numbers and comments (a password in
    `ALTER USER ... PASSWORD 'secret'` included) and never keeps a value."""
    return fingerprint(engine, query)


# W3C trace context, as sqlcommenter and OpenTelemetry instrumentations put it
# in a SQL comment: /*traceparent='00-<trace-id>-<span-id>-<flags>'*/
# (values may be URL-encoded, so a dash may be %2D).
_TRACEPARENT = re.compile(
    r"traceparent\s*=\s*'?([0-9a-f]{2})(?:-|%2d)([0-9a-f]{32})(?:-|%2d)([0-9a-f]{16})(?:-|%2d)([0-9a-f]{2})",
    re.I)


def trace_context(query):
    """(trace_id, span_id) from a traceparent in the query's comments, or None."""
    if "traceparent" not in query:
        return None
    m = _TRACEPARENT.search(query)
    if not m or m[1].lower() == "ff" or set(m[2]) == {"0"} or set(m[3]) == {"0"}:
        return None  # version ff and all-zero ids are invalid (W3C Trace Context 3.2)
    return m[2].lower(), m[3].lower()


# db.operation.name: the statement's first keyword, from a bounded set so the
# label cannot grow without limit; anything else is OTHER.
OPERATIONS = frozenset("""
SELECT INSERT UPDATE DELETE MERGE REPLACE WITH VALUES TABLE BEGIN START COMMIT END ROLLBACK ABORT
SAVEPOINT RELEASE PREPARE EXECUTE DEALLOCATE CALL DO SET RESET SHOW EXPLAIN CREATE ALTER DROP
TRUNCATE RENAME GRANT REVOKE COPY VACUUM ANALYZE CLUSTER REINDEX LOCK UNLOCK LISTEN NOTIFY
UNLISTEN DECLARE FETCH MOVE CLOSE DISCARD CHECKPOINT REFRESH COMMENT USE LOAD HANDLER XA FLUSH
KILL OPTIMIZE CHECK REPAIR DESCRIBE DESC HELP
""".split())


# The first word: after blanks, '(' and comments, starting within the first
# OP_SCAN_BYTES bytes; the rule of the kernel's operation keys
# (bpf/fingerprint.h, operation_key), so both ways of keying digests name an
# operation alike.
_FIRST_WORD = re.compile(rb"(?:[ \t\n\r\f\v(]|/\*.*?\*/|--[^\n]*(?:\n|$))*([A-Za-z]*)", re.S)


def operation_name(text):
    """db.operation.name of a statement's text or fingerprint."""
    head = text.encode("utf-8", "replace")[:OP_SCAN_BYTES + OP_LETTERS + 1]
    m = _FIRST_WORD.match(head)
    if m.start(1) >= OP_SCAN_BYTES:
        return "OTHER"
    word = m[1].decode().upper()
    return word if word in OPERATIONS else "OTHER"
