import pytest

from dbslower.cli import build_parser, parse_args
from dbslower.errors import UsageError


def test_defaults_follow_bcc_conventions():
    a = parse_args(["postgres"])
    assert a.threshold == 1.0 and a.mode == "stream" and a.pids == [] and a.text_bytes == 1024
    assert parse_args(["mysql", "--hist"]).threshold == 0.0
    a = parse_args(["mysql", "--digest", "5", "3", "-p", "10,11", "-p", "12"])
    assert (a.interval, a.count, a.pids, a.mode) == (5.0, 3, [10, 11, 12], "digest")
    assert parse_args(["postgres", "-m", "0.5"]).threshold == 0.5
    assert "examples:" in build_parser().format_help()


@pytest.mark.parametrize("argv", [["postgres", "-m", "-1"], ["postgres", "5"], ["nosql"],
                                  ["postgres", "-p", "0"], ["mysql", "--digest", "--top", "-1"],
                                  ["postgres", "-d", "0"]])
def test_bad_arguments_raise_usage_error(argv):
    with pytest.raises(UsageError):
        parse_args(argv)
