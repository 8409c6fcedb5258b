"""The one run loop. Every mode (table, JSON, --hist, --digest, top) is a set
of sinks fed by it: events from the ring buffers as they arrive, and reports
built from the kernel's aggregates once per interval.

Stage after decode and aggregate; it never imports a sink. A sink is any
object with some of these methods (all optional):

    start()                  the probes are attached
    on_event(ev)             a statement (KIND_QUERY record) was decoded
    flush()                  end of a batch of events
    on_interval(reports)     one Report per engine, for the interval just ended
    on_end(partial, whole)   at the end: the unfinished interval's reports
                             (None when there is none to show) and the whole run's
    fds()                    file descriptors that should wake the loop (keyboard)
    poll()                   called when the loop wakes; returns True to stop
"""

import time

from dbslower.aggregate import DigestBook, digest_report, hist_report
from dbslower.decode import KIND_QUERY, KIND_SAMPLE, PAGE, Decoder, RingReader, wait_readable
from dbslower.plan import app_name_symbols

# Index in the kernel's `counters` array -> reason shown to the user.
LOSS_REASONS = ("ring buffer full", "aggregation map full")
LOST_REPORT_EVERY_S = 5.0  # stream mode: at most one "lost" line this often


class Source:
    """One engine's loaded programs: their ring buffers, decoder and digests."""

    def __init__(self, plan, tracer, context=True):
        self.engine = plan.engine
        self.mode = plan.mode
        self.plan = plan
        self.tracer = tracer
        self.decoder = Decoder(plan.engine, context=context, app_name_symbols=app_name_symbols(plan))
        self.book = DigestBook(plan.engine)
        self.readers = [RingReader(lt.ring_fd, plan.ringbuf_pages * PAGE) for lt in tracer.loaded]
        self.method = ", ".join(sorted({t.method for t in plan.targets}))

    def fds(self):
        return [r.fd for r in self.readers]

    def drain(self, on_event):
        decode, book = self.decoder.decode, self.book

        def handle(buf, off, length):
            ev = decode(buf, off, length)
            if ev.kind == KIND_SAMPLE:
                book.add_sample(ev)
            elif ev.kind == KIND_QUERY:
                if ev.fp:
                    book.add_context(ev)
                on_event(ev)
        return sum(r.read(handle) for r in self.readers)

    def lost_by_reason(self):
        c = self.tracer.counters()
        return {reason: c[i] for i, reason in enumerate(LOSS_REASONS) if i < len(c) and c[i]}

    def lost(self):
        return sum(self.lost_by_reason().values())

    def snapshot(self):
        """Cumulative kernel aggregates, and the losses so far."""
        if self.mode == "hist":
            return self.tracer.read_hist(), self.lost()
        if self.mode in ("digest", "top"):
            return self.tracer.read_digests(), self.lost()
        return None, self.lost()

    def report(self, start_ns, end_ns, snap, prev):
        data, lost = snap
        pdata, plost = prev if prev else (None, 0)
        if self.mode == "hist":
            r = hist_report(self.engine, start_ns, end_ns, lost - plost, data, pdata)
        else:
            r = digest_report(self.engine, self.book, start_ns, end_ns, lost - plost, data, pdata)
        r.method = self.method
        return r


def _call(sinks, name, *args):
    stop = False
    for s in sinks:
        fn = getattr(s, name, None)
        if fn is not None and fn(*args):
            stop = True
    return stop


class Pipeline:
    """Runs until stopped, the duration ends, or `count` intervals were reported.

    interval_s: seconds between reports (summary modes); None: only at the end.
    notify: called with a line for the user (losses while streaming).
    """

    def __init__(self, sources, sinks, interval_s=None, count=None, duration_s=None, notify=None):
        self.sources = sources
        self.sinks = sinks
        self.interval_s = interval_s
        self.count = count
        self.duration_s = duration_s
        self.notify = notify or (lambda line: None)
        self.summaries = any(s.mode in ("hist", "digest", "top") for s in sources)

    def _drain(self):
        on_event = [s.on_event for s in self.sinks if hasattr(s, "on_event")]
        if len(on_event) == 1:
            handle = on_event[0]
        else:
            def handle(ev):
                for fn in on_event:
                    fn(ev)
        got = sum(src.drain(handle) for src in self.sources)
        if got:
            _call(self.sinks, "flush")
        return got

    def _snapshots(self):
        self._drain()  # the samples of new fingerprints first
        return [src.snapshot() for src in self.sources], time.time_ns()

    def run(self, stop):
        sinks = self.sinks
        fds = [fd for src in self.sources for fd in src.fds()]
        fds += [fd for s in sinks if hasattr(s, "fds") for fd in s.fds()]
        _call(sinks, "start")
        run_start = time.time_ns()
        start_mono = time.monotonic()
        deadline = start_mono + self.duration_s if self.duration_s else None
        next_at = start_mono + self.interval_s if self.interval_s else None
        interval_start, prev, reported = run_start, None, 0
        lost_said, lost_check = 0, start_mono + LOST_REPORT_EVERY_S
        while not stop.set:
            now = time.monotonic()
            if deadline and now >= deadline:
                break
            if next_at and now >= next_at:
                snaps, end = self._snapshots()
                reports = [src.report(interval_start, end, snap, p)
                           for src, snap, p in zip(self.sources, snaps, prev or [None] * len(snaps))]
                if _call(sinks, "on_interval", reports):
                    break
                prev, interval_start, reported = snaps, end, reported + 1
                next_at += self.interval_s
                if next_at < now:  # fell behind (a stalled terminal): skip, don't burst
                    next_at = now + self.interval_s
                if self.count and reported >= self.count:
                    break
                continue
            if not self.summaries and now >= lost_check:
                lost_check = now + LOST_REPORT_EVERY_S
                lost = sum(src.lost() for src in self.sources)
                if lost > lost_said:
                    self.notify(f"{lost - lost_said} events lost in the last {LOST_REPORT_EVERY_S:g} s "
                                f"({lost} in all): {self._loss_detail()}")
                    lost_said = lost
            wake = min(x for x in (next_at, deadline, now + 0.2) if x is not None)
            got = self._drain()
            if got:
                # Let records accumulate: fewer, larger batches cost less CPU.
                time.sleep(min(0.01, max(0.0, wake - now)))
            else:
                wait_readable(fds, max(0.0, wake - now))
            if _call(sinks, "poll"):
                break
        snaps, end = self._snapshots()
        partial = None
        if self.summaries and self.interval_s and (not self.count or reported < self.count):
            partial = [src.report(interval_start, end, snap, p)
                       for src, snap, p in zip(self.sources, snaps, prev or [None] * len(snaps))]
        whole = [src.report(run_start, end, snap, None) for src, snap in zip(self.sources, snaps)] \
            if self.summaries else []
        _call(sinks, "on_end", partial, whole)
        return 0

    def _loss_detail(self):
        total = {}
        for src in self.sources:
            for reason, n in src.lost_by_reason().items():
                total[reason] = total.get(reason, 0) + n
        return ", ".join(f"{n} {reason}" for reason, n in total.items()) or "none"

    def loss_line(self):
        """One line for the end of a run, or None when nothing was lost."""
        lost = sum(src.lost() for src in self.sources)
        return f"{lost} events lost ({self._loss_detail()})" if lost else None
