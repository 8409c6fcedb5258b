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
