"""Stop requests that keep coming while dbslower is already stopping (a user
pressing Ctrl-C again, a supervisor repeating SIGTERM, a run ending by its
count as the test harness signals it): the exit status stays 0, nothing is
printed as a traceback and nothing is left attached. CI once saw -2 here: the
signal landed while the interpreter was shutting down."""

import signal
import subprocess
import time

import pytest

from helpers import DBSLOWER, ENV, uprobes

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_while_stopping_exit_zero(pg, sig):
    before = uprobes()
    # "1 1": one interval, then the run ends by itself; the storm covers that
    # end, the detach and the interpreter's shutdown.
    proc = subprocess.Popen(DBSLOWER + ["postgres", "--hist", "-p", str(pg.pid), "1", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    for line in proc.stderr:
        if line.startswith(b"Tracing"):
            break
    sent = 0
    while proc.poll() is None:
        try:
            proc.send_signal(sig)
            sent += 1
        except ProcessLookupError:
            break
        time.sleep(0.002)
    err = proc.communicate(timeout=60)[1].decode()
    assert sent > 10
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert uprobes() == before
