from dbslower import decode
from dbslower.decode import HEADER, TEXT_OFFSET, Decoder, parse_pg_title


def test_pg_titles():
    assert parse_pg_title("postgres: alice shop 10.0.0.5(53412) SELECT") == ("alice", "shop", "10.0.0.5(53412)")
    assert parse_pg_title("postgres: 15/main: bob db [local] idle") == ("bob", "db", "[local]")
    assert parse_pg_title("postgres: checkpointer") == (None, None, None)


def record(text, **kw):
    values = dict(start_ns=5, duration_ns=7, conn_id=42, fp=0, pid=1, tid=2, text_len=len(text), db_id=0, server_id=0,
                  command=3, flags=0, kind=1, db=b"shop", user=b"alice", host=b"localhost")
    values.update(kw)
    head = HEADER.pack(*(values[name] for name, _ in decode.HEADER_FIELDS))
    return head + text


def test_decode_mysql_record_with_invalid_utf8_and_statement_tail():
    buf = record(b"SELECT 'caf\xe9' ;  ")
    ev = Decoder("mysql").decode(buf, 0, len(buf))
    assert ev.query == "SELECT 'caf\ufffd'"
    assert (ev.conn_id, ev.db, ev.user, ev.client, ev.command_name) == (42, "shop", "alice", "localhost", "COM_QUERY")
    assert ev.duration_ns == 7 and ev.pid == 1 and ev.tid == 2


def test_decode_never_reads_past_the_record():
    buf = record(b"SELECT 1", text_len=5000) + b"garbage"
    ev = Decoder("mysql").decode(buf, 0, TEXT_OFFSET + 8)
    assert ev.query == "SELECT 1"
