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
