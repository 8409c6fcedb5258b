"""dbslower killed with SIGKILL under load, in each mode: no BPF program or
map, no uprobe and no USDT semaphore is left behind, and a new run starts."""

import json
import os
import shutil
import signal
import threading
import time

import pytest

from helpers import DBSLOWER, ENV, pg_usdt_semaphore, require, run_cli, uprobes
from lab.servers import wait_for

pytestmark = pytest.mark.integration

OUR_PROGRAMS = {"pg_status", "pg_execute", "pg_msg_end", "pg_abort", "fp_chunk",
                "tracepoint__sched__sched_process_fork", "tracepoint__sched__sched_process_exit",
                "tracepoint__sched__sched_process_exec", "tracepoint__syscalls__sys_exit_recvfrom",
                "tracepoint__syscalls__sys_enter_sendto"}


def programs():
    """How many BPF programs of the kinds dbslower loads exist (other tools' too)."""
    import subprocess
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return sum(1 for p in json.loads(out) if p.get("name") in OUR_PROGRAMS)


@pytest.mark.parametrize("mode", [["-m", "0", "-j"], ["--hist", "1"], ["--digest", "1"], ["serve"],
                                  ["serve", "--method", "socket"]])
def test_sigkill_leaves_nothing(pg, mode):
    require(shutil.which("bpftool") is not None, "bpftool is missing (make setup)")
    import subprocess
    before = (programs(), pg_usdt_semaphore(pg.pid), uprobes())
    if mode[0] == "serve":
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = DBSLOWER + ["serve", "-p", str(pg.pid), "--listen", f"127.0.0.1:{port}", *mode[1:]]
    else:
        argv = DBSLOWER + ["postgres", "-p", str(pg.pid), *mode]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        while not proc.stderr.readline().startswith(b"Tracing"):
            assert proc.poll() is None, proc.stderr.read()
        assert programs() > before[0]
        if "socket" not in mode:  # the kernel set it (ref_ctr_offset; once per probe, whoever else traces)
            assert pg_usdt_semaphore(pg.pid) >= 1
        load = threading.Thread(target=pg.pgbench, args=("-n", "-S", "-c", "2", "-T", "3"))
        load.start()
        time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        load.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: programs() == before[0], 10, "the programs to be freed")
    assert pg_usdt_semaphore(pg.pid) == before[1]
    assert uprobes() == before[2]
    r = run_cli(["postgres", "-p", pg.pid, "-m", "0", "-d", "1"])
    assert r.returncode == 0 and r.stderr.startswith("Tracing"), r.stderr
