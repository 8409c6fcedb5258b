import io
import json

from dbslower.abi import EV_FAILED, EV_TRUNCATED
from dbslower.decode import Event
from dbslower.output import JsonWriter, TableWriter, escape_control, event_dict


def event(query="SELECT 1", flags=0, command=0, error_code=None):
    ev = Event()
    ev.error_code = error_code
    ev.engine, ev.start_ns, ev.duration_ns = "postgres", 1_795_000_000_123_456_789, 1_234_567
    ev.conn_id, ev.fp, ev.pid, ev.tid, ev.command, ev.flags, ev.kind = None, 0, 10, 11, command, flags, 1
    ev.context = (None, None, None, None)
    ev.server = None
    ev.query = query
    return ev


def test_escape_control_keeps_one_line_and_no_escape_sequences():
    s = escape_control("a\nb\tc\x1b[2J\x7f\u0085\\")
    assert s == "a\\nb\\tc\\x1b[2J\\x7f\\x85\\\\"
    assert "\n" not in s and "\x1b" not in s


def test_json_writer_fields():
    out = io.StringIO()
    JsonWriter(out).on_event(event('SELECT "x", \'é\'\n', flags=EV_TRUNCATED | EV_FAILED, error_code="42P01"))
    obj = json.loads(out.getvalue())
    assert obj["ts"] == "2026-11-18T11:06:40.123456Z"  # 1795000000 s after the epoch, in UTC
    assert obj["duration_ms"] == 1.234567 and obj["query"] == 'SELECT "x", \'é\'\n'
    assert obj["truncated"] is True and obj["status"] == "error" and obj["error_code"] == "42P01"
    assert obj["engine"] == "postgres" and obj["pid"] == 10 and obj["tid"] == 11
    assert obj["conn_id"] is None and obj["command"] is None


def test_table_writer_one_line_with_units():
    out = io.StringIO()
    w = TableWriter(out)
    w.start()
    w.on_event(event("SELECT\n1", flags=EV_TRUNCATED))
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TIME", "PID", "MS", "QUERY"]
    assert len(lines) == 2 and lines[1].endswith("SELECT\\n1 [...]") and "1.235" in lines[1]


def test_event_dict_is_what_json_writer_writes():
    for flags, code in ((0, None), (EV_TRUNCATED | EV_FAILED, "1406")):
        ev = event("SELECT 'x'\t", flags=flags, command=3, error_code=code)
        ev.context = ("alice", "shop", "10.0.0.1", "app")
        out = io.StringIO()
        JsonWriter(out).on_event(ev)
        assert json.loads(out.getvalue()) == event_dict(ev)


def test_table_says_why_a_text_is_missing():
    from dbslower.abi import EV_NO_TEXT, EV_TEXT_UNREAD
    out = io.StringIO()
    w = TableWriter(out)
    w.on_event(event("", flags=EV_NO_TEXT))
    w.on_event(event("", flags=EV_NO_TEXT | EV_TEXT_UNREAD))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("[text unavailable: prepared before tracing]")
    assert lines[1].endswith("[text not read by the socket method]")
