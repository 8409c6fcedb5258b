"""Probe paths no installable server here has, checked against fixture
programs: MySQL's USDT query probes, and the MySQL 5.7/8.x dispatch_command
ABI. Real root and BPF; the fixtures are the only stand-ins."""

import pytest

from fixture_programs import running
from helpers import Run, run_cli

pytestmark = pytest.mark.bpf


@pytest.fixture
def mysql_usdt():
    yield from running("mysql_usdt.c", "gcc")


@pytest.fixture
def mysql57():
    yield from running("mysql57_abi.cc", "g++")


def test_usdt_path_with_context_and_status(mysql_usdt):
    with Run(["mysql", "-m", "0", "-j", "-p", mysql_usdt.pid]) as run:
        mysql_usdt.send("30000 0 SELECT * FROM orders WHERE id = 42")
        mysql_usdt.send("1000 1 SELECT broken")
        mysql_usdt.send("0 0 " + "x" * 3000)
    assert "via usdt" in run.stderr
    events = run.events()
    assert [e["query"][:40] for e in events] == ["SELECT * FROM orders WHERE id = 42", "SELECT broken", "x" * 40]
    first = events[0]
    assert first["conn_id"] == 7 and first["db"] == "shop" and first["user"] == "alice"
    assert first["client"] == "10.1.2.3" and first["status"] == "ok" and first["command"] == "COM_QUERY"
    assert 30 <= first["duration_ms"] < 100
    assert events[1]["status"] == "error"
    assert events[2]["truncated"] is True and len(events[2]["query"]) == 1024


def test_usdt_threshold_in_kernel(mysql_usdt):
    with Run(["mysql", "-m", "20", "-j", "-x", mysql_usdt.exe]) as run:
        mysql_usdt.send("40000 0 SELECT slow")
        mysql_usdt.send("0 0 SELECT fast")
    assert [e["query"] for e in run.events()] == ["SELECT slow"]


def test_mysql57_abi(mysql57):
    r = run_cli(["mysql", "-v", "-d", "0.3", "-p", mysql57.pid])
    assert "dispatch_command signature mysql-5.7" in r.stderr, r.stderr
    with Run(["mysql", "-m", "0", "-j", "-p", mysql57.pid]) as run:
        mysql57.send("25000 3 0 SELECT c FROM sbtest1 WHERE id=5")
        mysql57.send("0 14 0 ping is not a query")
        mysql57.send("0 3 1 SELEC oops")
    events = run.events()
    assert [e["query"] for e in events] == ["SELECT c FROM sbtest1 WHERE id=5", "SELEC oops"]
    assert 25 <= events[0]["duration_ms"] < 100 and events[0]["status"] == "ok"
    assert events[1]["status"] == "error"
    assert all(e["command"] == "COM_QUERY" for e in events)


def test_mysql57_abi_digest(mysql57):
    with Run(["mysql", "--digest", "-j", "-p", mysql57.pid]) as run:
        for i in range(30):
            mysql57.send(f"0 3 0 SELECT c FROM sbtest1 WHERE id={i}")
        for i in range(5):
            mysql57.send(f"0 3 0 SELECT c FROM sbtest1 WHERE id IN ({', '.join(['1'] * (i + 1))})")
    docs = run.events()
    rows = docs[-1]["rows"]
    by_fp = {r["fingerprint"]: r["calls"] for r in rows}
    assert by_fp == {"select c from sbtest? where id=?": 30, "select c from sbtest? where id in(?+)": 5}
