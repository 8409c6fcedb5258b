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


def test_shipped_serve_configuration_names_every_setting_with_its_default():
    """contrib/dbslower.toml (installed as /etc/dbslower/dbslower.toml) loads,
    and documents every serve setting (commented-out keys count) at its default."""
    import re
    from dataclasses import fields
    from pathlib import Path

    from dbslower.serve import Settings, load_config, merge_settings
    path = Path(__file__).resolve().parents[2] / "contrib" / "dbslower.toml"
    values = load_config(path)
    mentioned = set(re.findall(r"^#? ?(\w+) = ", path.read_text(), re.M))
    assert mentioned == {f.name for f in fields(Settings)}
    defaults = Settings()
    assert {k: v for k, v in values.items() if getattr(defaults, k) != v} == {"log": "/var/log/dbslower/slow.jsonl"}
    assert merge_settings(values, {}).method == "auto"


@pytest.mark.parametrize("settings, wrong", [({"method": "sockets"}, "method must be one of"),
                                             ({"method": "socket", "fingerprint_metrics": True},
                                              "cannot have fingerprint_metrics")])
def test_serve_method_setting_is_checked(settings, wrong):
    from dbslower.serve import merge_settings
    with pytest.raises(UsageError, match=wrong):
        merge_settings(settings, {})
