import pytest

from dbslower import quirks


def test_backend_state_running_by_version():
    assert quirks.pg_state_running(12) == 2
    assert quirks.pg_state_running(17) == 2
    assert quirks.pg_state_running(18) == 3
    with pytest.raises(KeyError):
        quirks.pg_state_running(11)


def test_dispatch_signatures_are_cited_and_distinct():
    syms = [s.symbol for s in quirks.DISPATCH_SIGNATURES]
    assert len(set(syms)) == len(syms)
    for s in quirks.DISPATCH_SIGNATURES:
        assert s.source and s.symbol.startswith("_Z16dispatch_command")
        assert (s.text_mode == quirks.DC_TEXT_PACKET and s.packet_arg and s.len_arg) or \
               (s.text_mode == quirks.DC_TEXT_COM_DATA and s.com_data_arg)


def test_thread_id_offset_from_machine_code():
    assert quirks.thd_thread_id_offset(bytes.fromhex("488b87183f0000c3")) == 0x3F18
    assert quirks.thd_thread_id_offset(bytes.fromhex("488b4718c3")) == 0x18
    assert quirks.thd_thread_id_offset(bytes.fromhex("554889e5")) == -1
    assert quirks.thd_thread_id_offset(None) == -1


# Debian MariaDB 10.11's mariadbd (x86_64), as read from the binary:
MARIADB_THD_CURRENT_STATUS = bytes.fromhex("488b87e062000031d24885c0740c83b8340200000575038b500889d0c30f1f00")


def test_status_offsets_from_thd_current_status():
    from dbslower import quirks
    assert quirks.thd_status_offsets(MARIADB_THD_CURRENT_STATUS) == (0x62e0, 0x234, 5, 8)
    assert quirks.thd_status_offsets(b"\xc3") is None
    assert quirks.thd_status_offsets(MARIADB_THD_CURRENT_STATUS[:14]) is None


def test_member_offsets_from_lea_accessors():
    from dbslower import quirks
    assert quirks.thd_member_address_offset(bytes.fromhex("488d4768c3")) == 0x68        # thd_query_string
    assert quirks.thd_member_address_offset(bytes.fromhex("488d87a0000000c3")) == 0xa0  # thd_current_db
    assert quirks.thd_member_address_offset(bytes.fromhex("488b87183f0000c3")) == -1    # a load, not an address


def test_plansource_offset_per_version():
    from dbslower import quirks
    assert [quirks.pg_plansource_query_string(v) for v in (12, 15, 17, 18)] == [16, 16, 16, 24]


# Debian MariaDB 10.11's mariadbd: thd_start_utime, and the end of
# log_slow_statement's call to slow_log_print (at 0x82a54d, to 0xb7ff40).
MARIADB_THD_START_UTIME = bytes.fromhex("486987e827000040420f00480387f027")
MARIADB_SLOW_LOG_CALL = bytes.fromhex("488b8b20280000e8ee593500")


def test_slow_log_times_from_machine_code():
    code = b"\x90" * 16 + MARIADB_SLOW_LOG_CALL
    base = 0x82a546 - 16
    assert quirks.utime_after_query_offset(code, base, 0xb7ff40) == 0x2820
    assert quirks.utime_after_query_offset(code, base, 0xb7ff44) == -1  # a call elsewhere
    assert quirks.thd_start_time_offset(MARIADB_THD_START_UTIME) == 0x27e8
    assert quirks.thd_start_time_offset(bytes.fromhex("488b87183f0000c3")) == -1
    assert quirks.thd_utime_offset(code, base, 0xb7ff40, MARIADB_THD_START_UTIME) == 0x2810
    # the two disagree about the layout: neither is used
    shifted = MARIADB_THD_START_UTIME[:3] + (0x27e0).to_bytes(4, "little") + MARIADB_THD_START_UTIME[7:]
    assert quirks.thd_utime_offset(code, base, 0xb7ff40, shifted) == -1
    # the argument comes from somewhere else than a THD member load
    other = b"\x90" * 16 + bytes.fromhex("4c89e1909090") + b"\x90" + MARIADB_SLOW_LOG_CALL[7:]
    assert quirks.utime_after_query_offset(other, base, 0xb7ff40) == -1


def test_command_offset_from_thd_current_command():
    assert quirks.thd_command_offset(bytes.fromhex("8b87d8270000c3")) == 0x27d8  # Debian MariaDB 10.11
    assert quirks.thd_command_offset(bytes.fromhex("8b4718c3")) == 0x18
    assert quirks.thd_command_offset(bytes.fromhex("488b87183f0000c3")) == -1  # a 64-bit load
    assert quirks.thd_command_offset(b"") == -1


def test_statement_start_stamp_from_its_accessor():
    # Debian PG 15: GetCurrentStatementStartTimestamp at 0x1e3050 is
    # `mov 0x6a2d99(%rip),%rax; ret`, loading stmtStartTimestamp at 0x885df0
    # (objdump's own reading of the same bytes).
    code = bytes.fromhex("488b05992d6a00c3")
    assert quirks.rip_load_address(code, 0x1E3050) == 0x885DF0
    assert quirks.rip_load_address(bytes.fromhex("488b05f9ffffffc3"), 0x1000) == 0x1000  # backwards
    # another shape (a frame pointer first, or a load into another register): not trusted
    assert quirks.rip_load_address(bytes.fromhex("554889e5488b05992d6a00"), 0x1E3050) is None
    assert quirks.rip_load_address(bytes.fromhex("488b0d992d6a00c3"), 0x1E3050) is None
    assert quirks.rip_load_address(b"", 0) is None
