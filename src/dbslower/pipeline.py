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

from dbslower.aggregate import DigestBook, by_fingerprint, digest_report, hist_report, other_fp
from dbslower.abi import (CTR_EXITED, CTR_INFLIGHT_FULL, CTR_LOST_EVENTS, CTR_MAP_FULL, CTR_NO_TEXT, CTR_TEXT_UNREAD,
                          CTR_NO_TIMES, CTR_UNFOLLOWED, CTR_UNFOLLOWED_CONN, KIND_APP, KIND_EXIT, KIND_QUERY, KIND_SAMPLE, add_buckets, add_stats)
from dbslower.decode import (PAGE, PER_PROCESS_CACHE, TEXT_MISSING, TEXT_UNREAD, Decoder, RingReader, parse_pg_title,
                             record_key, wait_readable)
from dbslower.discover import (container_id, namespace_pid, pg_database_names, process_cwd, read_memory,
                               symbol_address)
from dbslower.fingerprint import redact
from dbslower.load import close_tracers
from dbslower.plan import DIGEST_MODES, TRACE_INHERIT, TRACE_SELF, app_name_symbols

# Index in the kernel's `counters` array (bpf/dbslower.h, CTR_*) -> reason.
LOSS_REASONS = {CTR_LOST_EVENTS: "ring buffer full", CTR_MAP_FULL: "aggregation map full",
                CTR_INFLIGHT_FULL: "in-flight table full",
                CTR_UNFOLLOWED: "request not followed (socket method: TLS, or message boundaries lost)",
                CTR_UNFOLLOWED_CONN: "connection not followed (socket method: TLS; none of its statements is seen)",
                CTR_NO_TIMES: "statement the server had not timed"}
LOST_REPORT_EVERY_S = 5.0  # stream mode: at most one "lost" line this often
# Digest maps: above this fill, cold entries are folded away, down to EVICT_TO,
# leaving room for a burst of new shapes before the next look.
EVICT_ABOVE, EVICT_TO = 0.75, 0.5
# The BPF program writes records without waking the reader (bpf/common.bpf.c,
# send_record): the loop looks at the ring buffers at least this often.
READER_POLL_S = 0.1
MAINTAIN_EVERY_S = 0.25  # how often a filling digest map is looked at


OVERFLOW_FP = other_fp("OTHER")  # the kernel's fp 0: counted while its table was full


def _merged(raw, folded, only_server=0):
    """Kernel maps plus the folded entries, as new dicts; the kernel's
    overflow entries (fp 0) under their pseudo fingerprint, and server 0
    as only_server when that is known."""
    stats, hists = {}, {}
    for (fp, db, srv), v in raw[0].items():
        add_stats(stats.setdefault((fp or OVERFLOW_FP, db, srv or only_server), [0, 0, 0, 0, 0]), v)
    for (fp, db, srv, code), h in raw[1].items():
        add_buckets(hists.setdefault((fp or OVERFLOW_FP, db, srv or only_server, code), {}), h)
    for k, v in folded[0].items():
        add_stats(stats.setdefault(k, [0, 0, 0, 0, 0]), v)
    for k, h in folded[1].items():
        add_buckets(hists.setdefault(k, {}), h)
    return stats, hists


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
        flavors = sorted({t.binary.flavor for t in plan.targets})
        # db.system.name: postgresql, mariadb or mysql
        self.system_name = flavors[0] if len(flavors) == 1 else ("postgresql" if self.engine == "postgres" else "mysql")
        self.prev = None          # the snapshot of the previous interval
        self.raw = None           # digest modes: the kernel's maps as last read
        self.prev_raw = None      # ... as read for `prev`
        self.folded = ({}, {})    # evicted digests, under pseudo fingerprints (raw keys)
        self.last_calls = {}      # raw key -> calls, at the previous eviction check
        self.evicted = 0
        self.next_full_look = 0.0
        self.new_fingerprints = 0  # samples (one per new kernel fingerprint) since the last snapshot
        # serve (SERVER_IDS): what the kernel's numbers mean
        self.servers = {}         # server id -> discover.Server
        self.db_names = {}        # (server id, database OID) -> name
        self.containers = {}      # server id -> container id
        self._pid_containers = {}
        self.merge_servers = False  # --digest/top: one row per fingerprint for all servers
        self.redact = False         # --redact: literals replaced by ? before any sink sees the text
        self._fast = (None, None)   # (the sink's factory, its FastLines for this source)
        self._db_reread = {}      # server id -> when its pg_database may be read again
        self._seeded = set()      # pids in the kernel's procs map
        self._examined = set()    # backends whose database OID was read

    def register(self, servers, procs, server_id):
        """SERVER_IDS: numbers the servers (server_id(pid) -> its number),
        seeds each server process and its running backends into the kernel's
        `procs` map (new backends inherit at fork), adds them to the PID
        filter when the plan has one (-p, or the socket method), and learns
        PostgreSQL database names."""
        target = self.plan.targets[0]
        engine = self.engine
        seeding = bool(self.plan.cflags(target).get("SERVER_IDS"))
        info = {}
        for srv in servers:
            sid = server_id(srv.pid)
            srv.datadir = srv.datadir or process_cwd(srv.pid)
            self.servers[sid] = srv
            cid = self.container_of(srv.pid)[0]
            if cid:
                self.containers[sid] = cid
            addr = app = 0
            if engine == "postgres":
                if target.db_id_symbol:
                    addr = symbol_address(srv.pid, srv.binary, target.db_id_symbol) or 0
                if target.app_name_symbol:
                    app = symbol_address(srv.pid, srv.binary, target.app_name_symbol) or 0
            info[srv.pid] = (addr, app, sid)
            if engine == "postgres" and srv.datadir:
                for oid, name in pg_database_names(srv.datadir).items():
                    self.db_names[(sid, oid)] = name
        # The servers first: from then on their forks inherit the entry; then
        # the backends, read again so that none forked in between is missed.
        new = {pid: v for pid, v in info.items() if pid not in self._seeded}
        if new and seeding:
            self.tracer.seed_procs(new)
        if info and new:
            from dbslower.discover import list_processes
            procs = list_processes()
        children, new_filter = {}, {}
        for p in procs.values():
            if p.ppid in info and p.pid not in self._seeded:
                children[p.pid] = info[p.ppid]
        for pid in list(new) + list(children):
            self._seeded.add(pid)
            if self.plan.filter_pids:
                new_filter[pid] = TRACE_INHERIT if pid in info and engine == "postgres" else TRACE_SELF
        if children and seeding:
            self.tracer.seed_procs(children)
        if new_filter:
            self.tracer.add_filter_pids(new_filter)
        for pid, (addr, _app, sid) in info.items():
            if addr:
                self._learn_databases(sid, addr, [p.pid for p in procs.values() if p.ppid == pid])
        alive = set(procs)
        self._seeded &= alive  # exited processes' kernel entries went at their exit
        self._examined &= alive

    def _database_name(self, sid, oid):
        """Reads the server's pg_database again for an OID not known yet (a
        database created later), at most once a second per server. (MySQL's
        database keys are named by the statements that carry them.)"""
        srv = self.servers.get(sid)
        now = time.monotonic()
        if self.engine != "postgres" or srv is None or not srv.datadir or now < self._db_reread.get(sid, 0):
            return None
        self._db_reread[sid] = now + 1.0
        for o, name in pg_database_names(srv.datadir).items():
            self.db_names.setdefault((sid, o), name)
        return self.db_names.get((sid, oid))

    def _learn_databases(self, sid, addr, backends):
        """(server, database OID) -> name, from each backend's MyDatabaseId
        and its process title."""
        for pid in backends:
            if pid in self._examined:
                continue
            self._examined.add(pid)
            oid = _read_u32(pid, addr)
            if not oid or (sid, oid) in self.db_names:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            except OSError:
                continue
            db = parse_pg_title(title)[1]
            if db:
                self.db_names[(sid, oid)] = db

    def _only_server(self):
        """The server id when this source traces one server: statements that
        ran between the probes' attach and the seeding of the kernel's procs
        map (server 0) are then that server's."""
        return next(iter(self.servers)) if len(self.servers) == 1 else 0

    def server_name(self, sid):
        srv = self.servers.get(sid or self._only_server())
        return srv.describe() if srv else None

    def container_of(self, pid):
        """(container id or None, PID inside the container or None)."""
        hit = self._pid_containers.get(pid)
        if hit is None:
            if len(self._pid_containers) > PER_PROCESS_CACHE:
                self._pid_containers.clear()
            hit = (container_id(pid) or None, namespace_pid(pid))
            self._pid_containers[pid] = hit
        return hit

    def close(self):
        close_sources([self])

    def _close_readers(self):
        for r in self.readers:
            r.close()
        self.readers = []

    def fds(self):
        return [r.fd for r in self.readers]

    def drain(self, on_event, fast_lines=None):
        """Decodes the records that arrived and hands each statement to
        on_event. fast_lines (a sink's factory, output.JsonWriter.fast_lines)
        may take the plain records without decoding them: then each record
        handled here lends it its JSON tail."""
        decode, book = self.decoder.decode, self.book
        fast = None
        if fast_lines is not None and not self.redact:
            if self._fast[0] != fast_lines:
                self._fast = (fast_lines, fast_lines(self.engine, self.decoder.mono_to_wall_ns))
            fast = self._fast[1]
        if fast is not None:
            fast.forget()  # what a tail encodes may have changed since the last batch
            learn, slices = fast.learn, fast.key_slices

        db_names = self.db_names
        server_name = self.server_name
        single = len(self.servers) == 1
        forget, note_app = self.decoder.forget, self.decoder.note_app
        with_database, server_of = self.decoder.with_database, self.decoder.server_of
        only = self._only_server()

        redacting = self.redact
        names = {}  # server id -> name, for this batch (servers are registered between batches)

        def handle(buf, off, length):
            ev = decode(buf, off, length)
            ev.origin = self
            if redacting and ev.kind in (KIND_QUERY, KIND_SAMPLE) and ev.query:
                ev.query = redact(self.engine, ev.query)
            sid = ev.server_id
            if sid or single:
                name = names.get(sid)
                if name is None:
                    name = names[sid] = server_name(sid)
                ev.server = name
            else:
                ev.server = server_of(ev.pid)
            if ev.db_id:
                # The kernel read the database's OID: its name comes from the
                # cluster's pg_database, so it is right even for a backend that
                # exited before this was decoded, and for names with spaces.
                key = (ev.server_id or only, ev.db_id)
                name = db_names.get(key) or self._database_name(*key)
                if name is None and ev.context[1]:
                    db_names[key] = name = ev.context[1]
                if name is not None and (ev.context[1] != name or ev.context[0] is None):
                    ev.context = with_database(ev, name)
            if ev.kind == KIND_EXIT:
                forget(ev.pid)
                if fast is not None:
                    fast.forget()
                return
            if ev.kind == KIND_APP:
                note_app(ev)
                if fast is not None:
                    fast.forget()
                return
            if ev.kind == KIND_SAMPLE:
                book.add_sample(ev)
                self.new_fingerprints += 1
            elif ev.kind == KIND_QUERY:
                if ev.fp:
                    book.add_context(ev)
                on_event(ev)
                if fast is not None:
                    learn(record_key(buf, off, slices), ev)
        return sum(r.read(handle, fast) for r in self.readers)

    def lost_by_reason(self):
        c = self.tracer.counters()
        return {reason: c[i] for i, reason in LOSS_REASONS.items() if i < len(c) and c[i]}

    def lost(self):
        return sum(self.lost_by_reason().values())

    def _counter(self, i):
        c = self.tracer.counters()
        return c[i] if len(c) > i else 0

    def exited(self):
        """Statements whose process or thread exited before they finished."""
        return self._counter(CTR_EXITED)

    def texts_missing(self):
        """Statements reported without text: prepared before tracing."""
        return self._counter(CTR_NO_TEXT)

    def texts_unread(self):
        """Statements reported without text: the socket method did not read it."""
        return self._counter(CTR_TEXT_UNREAD)

    def snapshot(self):
        """Cumulative kernel aggregates, and the losses so far."""
        if self.mode == "hist":
            return self.tracer.read_hist(), self.lost()
        if self.mode in DIGEST_MODES:
            self.raw = self.tracer.read_digest_maps()
            self.new_fingerprints = 0
            stats, hists = _merged(self.raw, self.folded, self._only_server())
            if self.mode == "serve":
                return (stats, hists), self.lost()
            return by_fingerprint(stats, hists, per_server=not self.merge_servers), self.lost()
        return None, self.lost()

    def maintenance_due(self, now):
        """A map far from full is looked at only every 10 s. How full it is
        comes from the last look plus the new fingerprints seen since (each
        sends a sample), so a burst of new shapes is looked at in time."""
        if self.raw is None or now >= self.next_full_look:
            self.next_full_look = now + 10.0
            return True
        return len(self.raw[0]) + self.new_fingerprints >= 0.25 * self.tracer.digest_capacity()[0]

    def set_prev(self, snap):
        self.prev = snap
        self.prev_raw = self.raw

    def evict_cold(self):
        """When the kernel's digest maps fill up, takes the entries that did
        not grow since the last look out of them, and folds their counts into
        one pseudo fingerprint per operation (aggregate.other_fp), so new
        statement shapes keep being counted and every total stays exact.
        Needs self.raw, read by snapshot() just before."""
        if self.mode not in DIGEST_MODES or self.raw is None:
            return 0
        raw_stats, raw_hists = self.raw
        last, self.last_calls = self.last_calls, {k: v[0] for k, v in raw_stats.items()}
        cap_stats, cap_hist = self.tracer.digest_capacity()
        n_stats = sum(1 for k in raw_stats if k[0])
        n_hist = sum(len(h) for k, h in raw_hists.items() if k[0])
        if n_stats < EVICT_ABOVE * cap_stats and n_hist < EVICT_ABOVE * cap_hist:
            return 0
        # Coldest first: unchanged since the last look, then the fewest calls.
        order = sorted((k for k in raw_stats if k[0]), key=lambda k: (last.get(k) != raw_stats[k][0], raw_stats[k][0]))
        fill = max(n_stats / cap_stats, n_hist / cap_hist)
        n = max(1, int(len(order) * (1 - EVICT_TO / fill)))
        victims = set(order[:n])
        hist_keys = [(fp, db, srv, failed, b) for (fp, db, srv, failed), h in raw_hists.items()
                     if (fp, db, srv) in victims for b in h]
        stats, hists = self.tracer.take_digests(victims, hist_keys)
        f_stats, f_hists = self.folded
        prev_stats, prev_hists, prev_errors = (self.prev[0] if self.prev and self.prev[0] and self.mode != "serve"
                                               else ({}, {}, {}))
        p_stats, p_hists = self.prev_raw if self.prev_raw else ({}, {})
        only = self._only_server()
        for key, v in stats.items():
            fp, db, srv = key
            srv = srv or only
            pseudo = other_fp(self.book.operation(fp))
            add_stats(f_stats.setdefault((pseudo, db, srv), [0, 0, 0, 0, 0]), v)
            # The last interval report counted part of it under its own
            # fingerprint: that part moves to the pseudo one in `prev`, so
            # the next interval reports only what came after.
            before = p_stats.get(key)
            pkey = (fp, 0 if self.merge_servers else srv)
            if before and pkey in prev_stats:
                pr = prev_stats[pkey]
                for i in (0, 1, 3):
                    pr[i] -= before[i]
                po = prev_stats.setdefault((pseudo, pkey[1]), [0, 0, 0, 0])
                for i in (0, 1, 3):
                    po[i] += before[i]
        for (fp, db, srv0, failed, b), n_b in hists.items():
            srv = srv0 or only
            pseudo = other_fp(self.book.operation(fp))
            h = f_hists.setdefault((pseudo, db, srv, failed), {})
            h[b] = h.get(b, 0) + n_b
            before = p_hists.get((fp, db, srv0, failed), {}).get(b, 0)
            pkey = (fp, 0 if self.merge_servers else srv)
            if before and pkey in prev_hists:
                prev_hists[pkey][b] = prev_hists[pkey].get(b, 0) - before
                ph = prev_hists.setdefault((pseudo, pkey[1]), {})
                ph[b] = ph.get(b, 0) + before
                if failed and pkey in prev_errors:
                    prev_errors[pkey][failed] = prev_errors[pkey].get(failed, 0) - before
                    pe = prev_errors.setdefault((pseudo, pkey[1]), {})
                    pe[failed] = pe.get(failed, 0) + before
        alive = {k[0] for k in raw_stats if k not in victims}
        for fp in {k[0] for k in victims} - alive:
            self.book.forget(fp)
        self.evicted += len(stats)
        return len(stats)

    def report(self, start_ns, end_ns, snap, prev):
        data, lost = snap
        pdata, plost = prev if prev else (None, 0)
        if self.mode == "hist":
            r = hist_report(self.engine, start_ns, end_ns, lost - plost, data, pdata)
        else:
            r = digest_report(self.engine, self.book, start_ns, end_ns, lost - plost, data, pdata,
                              server_name=self.server_name)
        r.method = self.method
        return r


def close_sources(sources):
    """Stops reading these sources and detaches all their probes at once."""
    for src in sources:
        src._close_readers()
    close_tracers([src.tracer for src in sources])


def _read_u32(pid, addr):
    raw = read_memory(pid, addr, 4)
    return int.from_bytes(raw, "little") if raw else 0


def _sum_losses(parts):
    total = {}
    for part in parts:
        for reason, n in part.items():
            total[reason] = total.get(reason, 0) + n
    return total


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
    rediscover: called every rediscover_s seconds; returns (added, removed)
    sources, so servers that start, restart or go away are followed.
    """

    def __init__(self, sources, sinks, interval_s=None, count=None, duration_s=None, notify=None,
                 rediscover=None, rediscover_s=2.0):
        self.sources = list(sources)
        self.sinks = sinks
        self.interval_s = interval_s
        self.count = count
        self.duration_s = duration_s
        self.notify = notify or (lambda line: None)
        self.rediscover = rediscover
        self.rediscover_s = rediscover_s
        self.summaries = any(s.mode in ("hist", "digest", "top", "serve") for s in sources) or bool(rediscover)
        self.wants_reports = any(hasattr(s, "on_interval") or hasattr(s, "on_end") for s in sinks)
        self.final_missing = 0
        self.final_unread = 0
        self.final_exited = 0
        self.final_kernel_losses = []

    def _drain(self):
        on_event = [s.on_event for s in self.sinks if hasattr(s, "on_event")]
        if len(on_event) == 1:
            handle = on_event[0]
        else:
            def handle(ev):
                for fn in on_event:
                    fn(ev)
        # One writer may take plain records straight from the ring buffer.
        writers = [s for s in self.sinks if hasattr(s, "on_event")]
        fast_lines = getattr(writers[0], "fast_lines", None) if len(writers) == 1 else None
        got = sum(src.drain(handle, fast_lines) for src in self.sources)
        if got:
            _call(self.sinks, "flush")
        return got

    def _snapshots(self):
        self._drain()  # the samples of new fingerprints first
        return [src.snapshot() for src in self.sources], time.time_ns()

    def _reports(self, start_ns, end_ns, snaps, since_prev):
        if not self.wants_reports:
            return []
        return [src.report(start_ns, end_ns, snap, src.prev if since_prev else None)
                for src, snap in zip(self.sources, snaps)]

    def _fds(self):
        fds = [fd for src in self.sources for fd in src.fds()]
        return fds + [fd for s in self.sinks if hasattr(s, "fds") for fd in s.fds()]

    def _follow(self):
        added, removed = self.rediscover()
        for src in removed:
            snap = src.snapshot()
            _call(self.sinks, "on_source_removed", src, snap)
            self.sources.remove(src)
        close_sources(removed)
        self.sources += added

    def run(self, stop):
        sinks = self.sinks
        fds = self._fds()
        _call(sinks, "start")
        run_start = time.time_ns()
        start_mono = time.monotonic()
        deadline = start_mono + self.duration_s if self.duration_s else None
        next_at = start_mono + self.interval_s if self.interval_s else None
        next_discovery = start_mono + self.rediscover_s if self.rediscover else None
        digesting = [src for src in self.sources if src.mode in DIGEST_MODES]
        next_maintain = start_mono + MAINTAIN_EVERY_S if digesting or self.rediscover else None
        interval_start, reported = run_start, 0
        lost_said, lost_check = 0, start_mono + LOST_REPORT_EVERY_S
        while not stop.set:
            now = time.monotonic()
            if deadline and now >= deadline:
                break
            if next_discovery and now >= next_discovery:
                self._follow()
                fds = self._fds()
                next_discovery = now + self.rediscover_s
                continue
            if next_maintain and now >= next_maintain:
                next_maintain = now + MAINTAIN_EVERY_S
                if not (next_at and next_at - now < MAINTAIN_EVERY_S):  # a report comes sooner: it looks
                    # Between reports: keep room in the digest maps.
                    self._drain()
                    for src in self.sources:
                        if src.mode in DIGEST_MODES and src.maintenance_due(now):
                            src.snapshot()
                            src.evict_cold()
                    continue
            if next_at and now >= next_at:
                snaps, end = self._snapshots()
                stop_now = _call(sinks, "on_snapshots", list(zip(self.sources, snaps)))
                stop_now |= _call(sinks, "on_interval", self._reports(interval_start, end, snaps, True))
                for src, snap in zip(self.sources, snaps):
                    src.set_prev(snap)
                    src.evict_cold()
                if stop_now:
                    break
                interval_start, reported = end, reported + 1
                next_at += self.interval_s
                if next_at < now:  # fell behind (a stalled terminal): skip, don't burst
                    next_at = now + self.interval_s
                if self.count and reported >= self.count:
                    break
                continue
            if not self.summaries and now >= lost_check:
                lost_check = now + LOST_REPORT_EVERY_S
                lost = sum(self.losses().values())
                if lost > lost_said:
                    self.notify(f"{lost - lost_said} events lost in the last {LOST_REPORT_EVERY_S:g} s "
                                f"({lost} in all): {self._loss_detail()}")
                    lost_said = lost
            wake = min(x for x in (next_at, deadline, next_discovery, next_maintain, now + READER_POLL_S) if x is not None)
            got = self._drain()
            if got:
                # Let records accumulate: fewer, larger batches cost less CPU.
                time.sleep(min(0.01, max(0.0, wake - now)))
            else:
                wait_readable(fds, max(0.0, wake - now))
            if _call(sinks, "poll"):
                break
        # Counters first, then the last events: each counted statement's event is
        # then in the ring buffer, so the counts never exceed what was read.
        self.final_missing = sum(src.texts_missing() for src in self.sources)
        self.final_unread = sum(src.texts_unread() for src in self.sources)
        self.final_exited = sum(src.exited() for src in self.sources)
        self.final_kernel_losses = [src.lost_by_reason() for src in self.sources]
        snaps, end = self._snapshots()
        _call(sinks, "on_snapshots", list(zip(self.sources, snaps)))
        partial = None
        if self.summaries and self.interval_s and (not self.count or reported < self.count):
            partial = self._reports(interval_start, end, snaps, True)
        whole = self._reports(run_start, end, snaps, False) if self.summaries else []
        _call(sinks, "on_end", partial, whole)
        return 0

    def losses(self):
        """{reason: count}: the kernel's counters and the sinks' own (output blocked)."""
        return _sum_losses([src.lost_by_reason() for src in self.sources] +
                           [s.lost() for s in self.sinks if hasattr(s, "lost")])

    def final_losses(self):
        """At the end: the kernel's counters as read when the run stopped,
        and the sinks' own, which can grow while the output drains."""
        return _sum_losses(self.final_kernel_losses + [s.lost() for s in self.sinks if hasattr(s, "lost")])

    def _loss_detail(self, losses=None):
        losses = self.losses() if losses is None else losses
        return ", ".join(f"{n} {reason}" for reason, n in losses.items()) or "none"

    def missing_text_line(self):
        n = self.final_missing
        return (f"{n} statements had no text: prepared before tracing started "
                f"(they are shown as {TEXT_MISSING})") if n else None

    def unread_text_line(self):
        n = self.final_unread
        return (f"{n} statements had no text: the socket method did not read it, in a request that "
                f"starts with neither Query, Parse nor Bind (they are shown as {TEXT_UNREAD})") if n else None

    def exited_line(self):
        n = self.final_exited
        return (f"{n} statements did not finish: their backend or thread exited first "
                f"(killed or terminated); they are not reported") if n else None

    def loss_line(self, losses=None):
        """One line for the end of a run, or None when nothing was lost."""
        losses = self.losses() if losses is None else losses
        lost = sum(losses.values())
        return f"{lost} events lost ({self._loss_detail(losses)})" if lost else None
