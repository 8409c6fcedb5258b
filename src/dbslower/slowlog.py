"""The slow-statement log of `dbslower serve`: JSON lines, one per statement
over the threshold, with the fields of `-j` plus the ones a log shipper
needs (README, "Run it as a service", maps each to OpenTelemetry). A sink of
the pipeline. Literals are redacted by default; bind values are never read.
"""

import json
import time

from dbslower.fingerprint import fingerprint_id, redact, trace_context
from dbslower.output import event_dict


class RateBudget:
    """Token bucket: at most `per_s` lines a second, bursts of one second."""

    def __init__(self, per_s):
        self.per_s = per_s
        self.tokens = float(per_s)
        self.last = time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.per_s, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SlowLog:
    """open_stream() returns the stream to write to; it is called again on
    reopen() (SIGHUP, after logrotate moved the file)."""

    def __init__(self, open_stream, redact_text=True, rate_per_s=1000, metrics=None):
        self.open_stream = open_stream
        self.out = open_stream()
        self.redact = redact_text
        self.budget = RateBudget(rate_per_s) if rate_per_s else None
        self.metrics = metrics
        self.reopen_requested = False
        self.pending = 0

    def _count(self, name):
        if self.metrics is not None:
            self.metrics.count(name)

    def on_event(self, ev):
        if self.budget is not None and not self.budget.take():
            self._count("log_sampled_out")
            return
        src = ev.origin
        d = event_dict(ev)
        tc = trace_context(ev.query)
        fp = src.book.summary_of(ev)
        if self.redact:
            d["query"] = redact(ev.engine, ev.query)
        d["db_system_name"] = src.system_name
        d["fingerprint_id"] = fingerprint_id(fp) if fp else None
        d["query_summary"] = fp
        d["trace_id"], d["span_id"] = tc if tc else (None, None)
        d["container_id"], d["pid_in_container"] = src.container_of(ev.pid)
        if ev.truncated:
            self._count("text_truncated")
        self.out.write(json.dumps(d, ensure_ascii=False) + "\n")
        self._count("log_written")
        self.pending += 1

    def flush(self):
        if self.pending:
            self.out.flush()
            self.pending = 0

    def reopen(self):
        self.reopen_requested = True

    def poll(self):
        if self.reopen_requested:
            self.reopen_requested = False
            self.flush()
            old, self.out = self.out, self.open_stream()
            if old is not self.out:
                old.close()
        return False
