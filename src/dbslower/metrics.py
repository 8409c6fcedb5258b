"""The Prometheus endpoint of `dbslower serve`: a sink of the pipeline.

Counts come from the kernel's cumulative digests (bpf/common.bpf.c,
digest_update), read once per interval by the pipeline; collect() only hands
out the families built from the latest read, so a scrape never touches the
BPF maps and costs the same whatever the statement rate. Exposition is
prometheus_client's; metric and label names follow OpenTelemetry's database
semantic conventions in Prometheus form (db.system.name -> db_system_name).
"""

import threading
import time

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from dbslower import hist
from dbslower.abi import format_error_code

# Bucket bounds: 8 per power of two from 2^13 ns (8.2 us) to 2^35 ns (34 s),
# each the upper bound of a kernel bucket (hist.py: 16 per power of two), so
# every kernel count falls in exactly one Prometheus bucket and nothing is
# interpolated at export. A bucket spans at most 12.5% of its lower bound.
LE_NS = [1 << 13] + [(1 << o) + k * ((1 << o) >> 3) for o in range(13, 35) for k in range(1, 9)]
LE_TEXT = [format(ns / 1e9, ".9g") for ns in LE_NS]


def _le_index():
    out = []
    for b in range(hist.BUCKETS):
        hi = hist.bounds(b)[1]
        out.append(next((i for i, le in enumerate(LE_NS) if le >= hi), len(LE_NS)))
    return out


LE_INDEX = _le_index()

ERROR_TYPE_UNKNOWN = "_OTHER"  # OpenTelemetry's value when the error has no known code
SUMMARY_CHARS = 120


class _Acc:
    """A histogram's cumulative state: per-bucket counts, sum (ns), count."""
    __slots__ = ("buckets", "sum_ns", "count")

    def __init__(self):
        self.buckets = [0] * (len(LE_NS) + 1)
        self.sum_ns = 0
        self.count = 0

    def add(self, other):
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.sum_ns += other.sum_ns
        self.count += other.count

    def buckets_text(self):
        out, cum = [], 0
        for le, n in zip(LE_TEXT, self.buckets):
            cum += n
            out.append((le, cum))
        out.append(("+Inf", self.count))
        return out


def _merge(into, accs):
    for key, acc in accs.items():
        into.setdefault(key, _Acc()).add(acc)


def _add_counts(into, counts):
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


class MetricsSink:
    """Collector and pipeline sink. Sources removed while serving (a server
    gone, a binary replaced) are folded into the totals so no counter goes
    backwards."""

    def __init__(self, version, container_label=False, fingerprint_metrics=False,
                 top_fingerprints=50, fingerprint_ttl_s=600.0):
        self.version = version
        self.container_label = container_label
        self.fingerprint_metrics = fingerprint_metrics
        self.top_fingerprints = top_fingerprints
        self.fingerprint_ttl_s = fingerprint_ttl_s
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self)
        self.lock = threading.Lock()
        self.families = []
        self.folded_ops = {}     # label tuple -> _Acc, from sources no longer attached
        self.folded_fps = {}     # (system, fingerprint) -> _Acc
        self.folded_lost = {}    # reason -> count
        self.folded_errors = {}  # statement labels + (status code,) -> count
        self.folded_missing = 0
        self.fp_last_change = {}  # (system, fingerprint) -> (count, monotonic time it last grew)
        self.counters = {"attach_errors": 0, "text_truncated": 0, "log_sampled_out": 0, "log_written": 0}
        self.sources = []

    # --- pipeline sink ----------------------------------------------------
    def on_snapshots(self, items):
        ops, fps, lost, errors = {}, {}, dict(self.folded_lost), dict(self.folded_errors)
        for src, snap in items:
            o, f, e = self._accumulate(src, snap)
            _merge(ops, o)
            _merge(fps, f)
            _add_counts(errors, e)
            for reason, n in src.lost_by_reason().items():
                lost[reason] = lost.get(reason, 0) + n
        _merge(ops, self.folded_ops)
        _merge(fps, self.folded_fps)
        families = self._families(ops, fps, lost, errors, [src for src, _ in items])
        with self.lock:
            self.families = families

    def on_source_removed(self, src, snap):
        o, f, e = self._accumulate(src, snap)
        _merge(self.folded_ops, o)
        _merge(self.folded_fps, f)
        _add_counts(self.folded_errors, e)
        for reason, n in src.lost_by_reason().items():
            self.folded_lost[reason] = self.folded_lost.get(reason, 0) + n
        self.folded_missing += src.texts_missing()

    def count(self, name, n=1):
        self.counters[name] += n

    # --- prometheus_client collector --------------------------------------
    def collect(self):
        with self.lock:
            return list(self.families)

    # ----------------------------------------------------------------------
    def _accumulate(self, src, snap):
        """Per label set, per fingerprint, and failed statements per label set
        and status code, from one source's cumulative maps."""
        data = snap[0]
        if not data:
            return {}, {}, {}
        stats, hists = data
        system = src.system_name
        ops, fps, errors = {}, {}, {}
        keys = {}

        def key_for(kfp, db_id, server_id, failed):
            k = (kfp, db_id, server_id, failed)
            if k not in keys:
                fp = src.book.group(kfp)
                labels = (system, src.db_names.get((server_id, db_id), ""), src.book.operation(kfp),
                          ERROR_TYPE_UNKNOWN if failed else "")
                if self.container_label:
                    labels += (src.containers.get(server_id, ""),)
                keys[k] = (labels, fp)
            return keys[k]

        for (kfp, db_id, server_id, failed), h in hists.items():
            labels, fp = key_for(kfp, db_id, server_id, failed)
            if failed:
                # The histogram keys keep each error's code; the statement
                # sums do not, so codes get a counter of their own.
                code = format_error_code(src.engine, failed) or ERROR_TYPE_UNKNOWN
                ekey = labels[:3] + labels[4:] + (code,)
                errors[ekey] = errors.get(ekey, 0) + sum(h.values())
            acc = ops.setdefault(labels, _Acc())
            facc = fps.setdefault((system, fp), _Acc()) if self.fingerprint_metrics else None
            for b, n in h.items():
                i = LE_INDEX[b]
                acc.buckets[i] += n
                acc.count += n
                if facc is not None:
                    facc.buckets[i] += n
                    facc.count += n
        for (kfp, db_id, server_id), (calls, total_ns, max_ns, failed, failed_ns) in stats.items():
            for is_failed, ns in ((0, total_ns - failed_ns), (1, failed_ns)):
                if ns or (is_failed and failed):
                    labels, fp = key_for(kfp, db_id, server_id, is_failed)
                    ops.setdefault(labels, _Acc()).sum_ns += ns
            if self.fingerprint_metrics:
                fps.setdefault((system, src.book.group(kfp)), _Acc()).sum_ns += total_ns
        return ops, fps, errors

    def _families(self, ops, fps, lost, errors, sources):
        labels = ["db_system_name", "db_namespace", "db_operation_name", "error_type"]
        if self.container_label:
            labels.append("container_id")
        h = HistogramMetricFamily("db_server_operation_duration_seconds",
                                  "Duration of database statements as the server ran them, "
                                  "measured in the server process", labels=labels)
        for key, acc in sorted(ops.items()):
            h.add_metric(list(key), acc.buckets_text(), acc.sum_ns / 1e9)
        out = [h]
        e = CounterMetricFamily("dbslower_statement_errors", "Failed statements by the server's status "
                                "code (SQLSTATE, MySQL error number; _OTHER when unknown)",
                                labels=labels[:3] + labels[4:] + ["db_response_status_code"])
        for key, n in sorted(errors.items()):
            e.add_metric(list(key), n)
        out.append(e)
        if self.fingerprint_metrics:
            out.append(self._fingerprint_family(fps))
        c = CounterMetricFamily("dbslower_events_lost", "Statements or events dbslower could not "
                                "count or report, by reason", labels=["reason"])
        for reason in sorted(set(lost) | {"ring buffer full", "aggregation map full"}):
            c.add_metric([reason], lost.get(reason, 0))
        out.append(c)
        out.append(CounterMetricFamily("dbslower_text_truncated", "Logged statements whose text was "
                                       "cut at the capture size", value=self.counters["text_truncated"]))
        out.append(CounterMetricFamily("dbslower_text_missing", "Statements counted without their text "
                                       "(MySQL: prepared before tracing started)",
                                       value=self.folded_missing + sum(src.texts_missing() for src in sources)))
        out.append(CounterMetricFamily("dbslower_attach_errors", "Server binaries dbslower failed to "
                                       "load or attach probes to", value=self.counters["attach_errors"]))
        out.append(CounterMetricFamily("dbslower_log_written", "Slow statements written to the log",
                                       value=self.counters["log_written"]))
        out.append(CounterMetricFamily("dbslower_log_sampled_out", "Slow statements left out of the log "
                                       "because their rate exceeded the log budget (metrics still count "
                                       "them)", value=self.counters["log_sampled_out"]))
        t = GaugeMetricFamily("dbslower_targets", "Server binaries with probes attached",
                              labels=["db_system_name", "method"])
        per = {}
        for src in sources:
            per[(src.system_name, src.method)] = per.get((src.system_name, src.method), 0) + 1
        for (system, method), n in sorted(per.items()):
            t.add_metric([system, method], n)
        out.append(t)
        occ = GaugeMetricFamily("dbslower_digest_entries", "Entries in the kernel's digest tables "
                                "(cold ones are folded away above 75% of capacity)", labels=["table"])
        cap = GaugeMetricFamily("dbslower_digest_capacity", "Capacity of the kernel's digest tables, "
                                "per attached binary", labels=["table"])
        n_stats = sum(len(src.raw[0]) for src in sources if src.raw)
        n_hist = sum(sum(len(h) for h in src.raw[1].values()) for src in sources if src.raw)
        occ.add_metric(["digests"], n_stats)
        occ.add_metric(["digest_hist"], n_hist)
        if sources:
            c_stats, c_hist = sources[0].tracer.digest_capacity()
            cap.add_metric(["digests"], c_stats)
            cap.add_metric(["digest_hist"], c_hist)
        out += [occ, cap]
        b = GaugeMetricFamily("dbslower_build_info", "dbslower's version", labels=["version"])
        b.add_metric([self.version], 1)
        out.append(b)
        return out

    def _fingerprint_family(self, fps):
        now = time.monotonic()
        for key, acc in fps.items():
            seen = self.fp_last_change.get(key)
            if seen is None or acc.count != seen[0]:
                self.fp_last_change[key] = (acc.count, now)
        live = [k for k in fps if now - self.fp_last_change[k][1] <= self.fingerprint_ttl_s]
        top = set(sorted(live, key=lambda k: -fps[k].sum_ns)[:self.top_fingerprints])
        from dbslower.fingerprint import fingerprint_id
        f = HistogramMetricFamily("dbslower_query_duration_seconds",
                                  f"Statement duration per query fingerprint, the top "
                                  f"{self.top_fingerprints} by total time; the rest as fingerprint_id=other",
                                  labels=["db_system_name", "fingerprint_id", "db_query_summary"])
        other = {}
        for key, acc in sorted(fps.items()):
            system, fp = key
            if key in top:
                f.add_metric([system, fingerprint_id(fp), fp[:SUMMARY_CHARS]], acc.buckets_text(), acc.sum_ns / 1e9)
            else:
                other.setdefault(system, _Acc()).add(acc)
        for system, acc in sorted(other.items()):
            f.add_metric([system, "other", ""], acc.buckets_text(), acc.sum_ns / 1e9)
        return f


def serve_http(sink, host, port):
    """Serves GET /metrics from a daemon thread; returns the server (its
    shutdown() stops it). prometheus_client's WSGI app does the exposition;
    the request log is silenced (the agent's stderr is for its own lines)."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    httpd = make_server(host, port, make_wsgi_app(sink.registry), server_class=Server, handler_class=Quiet)
    # shutdown() waits for the loop to see its flag: at most poll_interval,
    # which counts against the second a stop request may take.
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics",
                     daemon=True).start()
    return httpd
