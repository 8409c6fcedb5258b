from dbslower import decode
from dbslower.decode import HEADER, TEXT_OFFSET, Decoder, parse_pg_title


def test_pg_titles():
    assert parse_pg_title("postgres: alice shop 10.0.0.5(53412) SELECT") == ("alice", "shop", "10.0.0.5(53412)")
    assert parse_pg_title("postgres: 15/main: bob db [local] idle") == ("bob", "db", "[local]")
    assert parse_pg_title("postgres: checkpointer") == (None, None, None)


def record(text, **kw):
    values = dict(start_ns=5, duration_ns=7, conn_id=42, fp=0, app_ptr=0, pid=1, tid=2, text_len=len(text), db_id=0, server_id=0,
                  error_code=0, command=3, flags=0, kind=1, db=b"shop", user=b"alice", host=b"localhost")
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


def test_text_cut_inside_a_character_ends_at_the_last_whole_one():
    from dbslower.abi import EV_TRUNCATED
    text = "SELECT 'añ€😀'".encode()
    for cut in range(len(text) + 1):
        buf = record(text[:cut], flags=EV_TRUNCATED)
        ev = Decoder("postgres", context=False).decode(buf, 0, len(buf))
        assert "\ufffd" not in ev.query, cut
        assert text.decode().startswith(ev.query)
        assert len(ev.query.encode()) >= cut - 3


def test_postgres_text_keeps_trailing_blanks():
    buf = record(b"SELECT 1 \t\n")
    assert Decoder("postgres", context=False).decode(buf, 0, len(buf)).query == "SELECT 1 \t\n"


def test_pg_title_split_around_a_known_database_name():
    from dbslower.decode import split_pg_title
    assert split_pg_title("postgres: ann lee sales db 10.0.0.5(53412) SELECT", "sales db") == \
        ("ann lee", "sales db", "10.0.0.5(53412)")
    assert split_pg_title("postgres: 15/main: bob shop [local] idle", "shop") == ("bob", "shop", "[local]")
    assert split_pg_title("postgres: checkpointer", "shop") is None


def test_error_codes_decode_as_the_servers_name_them():
    from dbslower.abi import EV_FAILED, ERROR_CODE_UNKNOWN, pg_packed_sqlstate
    # MAKE_SQLSTATE('4','2','P','0','1') as src/include/utils/elog.h packs it
    packed = (4 | 2 << 6 | (ord("P") - 48) << 12 | 0 << 18 | 1 << 24)
    assert pg_packed_sqlstate("42P01") == packed
    buf = record(b"SELECT * FROM nope", flags=EV_FAILED, error_code=packed)
    assert Decoder("postgres", context=False).decode(buf, 0, len(buf)).error_code == "42P01"
    buf = record(b"INSERT", flags=EV_FAILED, error_code=1406)
    assert Decoder("mysql", context=False).decode(buf, 0, len(buf)).error_code == "1406"
    buf = record(b"INSERT", flags=EV_FAILED, error_code=ERROR_CODE_UNKNOWN)
    assert Decoder("mysql", context=False).decode(buf, 0, len(buf)).error_code is None
    buf = record(b"INSERT", flags=0, error_code=1406)
    assert Decoder("mysql", context=False).decode(buf, 0, len(buf)).error_code is None
