"""Fingerprint grouping against the tools DBAs trust.

MySQL: every statement of tests/data/mysql_corpus.sql through Debian's
pt-fingerprint; two statements share a dbslower fingerprint exactly when
they share pt-fingerprint's."""

import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import ROOT, require
from dbslower.fingerprint import fingerprint_id, mysql_fingerprint, postgres_fingerprint

CORPUS = ROOT / "tests" / "data" / "mysql_corpus.sql"


def load_corpus():
    text = CORPUS.read_text()
    return [q.strip() for q in text.split(";\n") if q.strip() and not q.strip().startswith("--- ")]


def partition(keys):
    groups = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return sorted(tuple(g) for g in groups.values())


def test_corpus_is_big_and_varied():
    qs = load_corpus()
    assert len(qs) >= 200
    fps = {mysql_fingerprint(q) for q in qs}
    assert 40 <= len(fps) < len(qs)


def test_mysql_grouping_matches_pt_fingerprint():
    require(shutil.which("pt-fingerprint") is not None, "pt-fingerprint (percona-toolkit) is missing")
    qs = load_corpus()
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "q.sql"
        f.write_text("".join(q + ";\n" for q in qs))
        out = subprocess.run(["pt-fingerprint", str(f)], capture_output=True, text=True, check=True).stdout
    theirs = out.splitlines()
    assert len(theirs) == len(qs)
    ours = [mysql_fingerprint(q) for q in qs]
    assert partition(ours) == partition(theirs)
    # Not only the same grouping: the same text, up to trailing blanks.
    assert [o.strip() for o in ours] == [t.strip() for t in theirs]


def test_fingerprint_id_is_pt_query_digest_checksum():
    assert fingerprint_id("select ?") == "0x16219655761820A2"  # md5("select ?")[-16:]


def test_postgres_fingerprint():
    f = postgres_fingerprint
    assert f("SELECT abalance FROM pgbench_accounts WHERE aid = 42;") == \
        f("select   abalance from pgbench_accounts where aid=7") == \
        "select abalance from pgbench_accounts where aid = ?"
    assert f("SELECT $1::int") == "select $1::int"
    assert f('SELECT "Foo" FROM t') != f("SELECT foo FROM t")
    assert f("select a - 1 from t") == f("select a - 2 from t") != f("select a + 1 from t")
    assert f("select -1") == f("select 5")
    assert f("select * from t where a in (1, 2, 3)") == f("select * from t where a in (4)")
    assert f("insert into t values (1, 'a'), (2, 'b')") == f("insert into t values (3, 'c')")
    assert f("select $$x$$, E'a\\'b', 'it''s' /* c /* nested */ */ -- d") == "select ?, ?, ?"
    assert f("select true") == f("select null") == "select ?"
    # cut off inside a string: still one group
    assert f("select 'abc") == f("select 'defgh") == "select ?"


def test_operation_keys_round_trip_and_stay_apart_from_fingerprints():
    from dbslower import abi
    from dbslower.aggregate import other_fp, other_operation
    for word in ("SELECT", "DEALLOCATE", "OTHER", "A", ""):
        key = abi.operation_key(word)
        assert key % 2 == 0 and abi.operation_word(key) == word
    assert abi.operation_word(abi.operation_key("CHECKPOINTXYZW")) == "CHECKPOINTXY+"
    assert other_operation(abi.operation_key("CHECKPOINTXYZW")) == "OTHER"
    assert other_operation(abi.operation_key("select")) == "SELECT"
    assert other_operation(other_fp("COMMIT")) == "COMMIT"
    assert other_operation(0x1234_5678_9abc_def1) is None  # kernel fingerprints are odd
    assert len({abi.operation_key(w) for w in ("SELECT", "SELEC", "ASELECT", "SELECTA")}) == 4
