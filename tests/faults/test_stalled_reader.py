"""A reader that stops reading dbslower's output: the tracer keeps reading
the ring buffer, says while running what it drops, stops at once when asked
(probes detached), and what was read plus what was lost is what ran."""

import json
import os
import signal
import subprocess
import time

import pytest

from helpers import DBSLOWER, ENV, uprobes
from lab.logs import parse_pg_log
from lab.servers import wait_for

pytestmark = pytest.mark.integration



def test_stalled_reader(pg, tmp_path):
    before = uprobes()
    log = pg.log_statements(True)
    start = log.stat().st_size
    err_path = tmp_path / "stderr"
    proc = subprocess.Popen(DBSLOWER + ["postgres", "-m", "0", "-j", "-p", str(pg.pid)], stdout=subprocess.PIPE,
                            stderr=open(err_path, "wb"), env=ENV)  # stdout: a pipe nobody reads, for now
    try:
        wait_for(lambda: "Tracing" in err_path.read_text(), 60, "Tracing")
        pg.pgbench("-n", "-S", "-c", "2", "-j", "2", "-t", "60000")
        # While it runs: a line says events are being dropped.
        wait_for(lambda: "events lost in the last" in err_path.read_text(), 20, "a loss report while running")
        end = log.stat().st_size
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: proc.poll() is not None or uprobes() == before, 10, "the probes to go")
        detach_s = time.monotonic() - t0
        out = proc.stdout.read()  # the reader wakes up: what it gets is whole events
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pg.log_statements(False)
    err = err_path.read_text()
    assert proc.returncode == 0, err
    assert uprobes() == before
    assert detach_s < 5, detach_s  # blocked forever before: the write to the full pipe never returned
    events = [json.loads(line) for line in out.decode().splitlines()]
    final = [line for line in err.splitlines() if line.startswith("dbslower: ") and "events lost (" in line]
    assert final, err
    lost = int(final[-1].split()[1])
    assert "output blocked" in final[-1]
    logged = parse_pg_log(log.read_bytes()[start:end].decode(errors="replace"))
    assert len(events) + lost == len(logged), (len(events), lost, len(logged))
