"""dbslower command line. The only module that prints or exits."""
# PYTHON_ARGCOMPLETE_OK

import argparse
import contextlib
import io
import os
import signal
import sys
import time

from dbslower import __version__
from dbslower.discover import ENGINE_LABEL
from dbslower.errors import DbslowerError, NoServer, PreflightFailed, UsageError

EXAMPLES = """examples:
    dbslower postgres                # PostgreSQL queries slower than 1 ms
    dbslower postgres -m 0 -j        # every query, as JSON lines
    dbslower mysql -m 10             # MySQL/MariaDB queries slower than 10 ms
    dbslower postgres -p 1234        # only the cluster of postmaster 1234
    dbslower mysql -x /usr/sbin/mariadbd   # every process running this binary
    dbslower postgres -d 30 --context      # 30 s, with user, db, client columns
    dbslower postgres --hist 5       # latency histogram every 5 s
    dbslower postgres --method socket -m 5   # cheaper: timed at the backends' sockets
    dbslower mysql --method socket --hist   # cheaper: timed at the server's sockets
    dbslower mysql --digest 10 3     # per-fingerprint digest, 3 times 10 s
"""



def _pids(value):
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise argparse.ArgumentTypeError(f"invalid PID {part!r}")
        out.append(int(part))
    return out


def _nonneg_float(value):
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if v < 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {value!r}")
    return v


def _threshold_ms(value):
    """A threshold in ms: at most an hour, so its ns fit the kernel's u64."""
    v = _nonneg_float(value)
    if v > 3_600_000:
        raise argparse.ArgumentTypeError(f"must be at most 3600000 ms (an hour): {value!r}")
    return v


def _positive_float(value):
    v = _nonneg_float(value)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _positive_int(value):
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message, "see 'dbslower -h'")


def build_parser(engine=True, add_help=True):
    p = _Parser(
        prog="dbslower", add_help=add_help,
        description="Trace PostgreSQL and MySQL/MariaDB queries slower than a threshold, "
                    "live, with eBPF. Needs no server configuration change or restart.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    if engine:
        p.add_argument("engine", choices=["postgres", "mysql"],
                       help="database engine (mysql covers MySQL and MariaDB); "
                            "'dbslower top' is the live view")
    p.add_argument("interval", nargs="?", type=_positive_float,
                   help="with --hist/--digest: seconds between summaries (default: one at the end)")
    p.add_argument("count", nargs="?", type=_positive_int,
                   help="with --hist/--digest: number of summaries")
    p.add_argument("-m", "--threshold", type=_threshold_ms, metavar="MS",
                   help="report queries at least this slow, in milliseconds "
                        "(default 1; 0 traces every query; default 0 with --hist/--digest)")
    p.add_argument("-p", "--pid", type=_pids, action="append", metavar="PID",
                   help="trace only these server processes (repeat, or comma-separate); "
                        "a PostgreSQL postmaster means its whole cluster")
    p.add_argument("-x", "--exe", metavar="PATH",
                   help="trace every process running this server binary, now and later")
    p.add_argument("-d", "--duration", type=_positive_float, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-j", "--json", action="store_true", help="write JSON lines to stdout")
    p.add_argument("-s", "--text-bytes", type=int, default=1024, metavar="BYTES",
                   help="query text captured per statement: 1024 (default), 2048, 4096 or 8192")
    p.add_argument("-c", "--context", action="store_true",
                   help="table: add STATUS, USER, DB and CLIENT columns")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--hist", action="store_true", help="print latency histograms")
    mode.add_argument("--digest", action="store_true", help="print per-query-fingerprint digests")
    p.add_argument("--top", type=int, metavar="N",
                   help="--digest: rows to show (default 20 in the table, all in JSON; 0: all)")
    p.add_argument("--merge-servers", action="store_true",
                   help="--digest: one row per fingerprint for all servers (default: per server)")
    p.add_argument("--redact", action="store_true",
                   help="replace every literal in the reported text with ? (bind values are never read)")
    p.add_argument("--method", choices=["auto", "socket"], default="auto",
                   help="'socket' times each request at the server's client socket with syscall "
                        "tracepoints (cheaper; includes reading and answering it; no --digest); "
                        "'auto' (default) uses the server's USDT probes or exported functions")
    # bench/ only: attach the same probes with handlers that do nothing
    mode.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the probe plan and the BPF program to stderr")
    p.add_argument("--version", action="version", version=f"dbslower {__version__}")
    return p


TOP_EXAMPLES = """examples:
    dbslower top                     # both engines, every server on the host
    dbslower top postgres -p 1234    # one PostgreSQL cluster
    dbslower top mysql -m 50         # slow pane: MySQL/MariaDB statements over 50 ms
    dbslower top --once -i 5         # one frame over 5 s as plain text, then exit

keys: t c a 5 p x e sort by total time, calls, mean, p95, p99, max, errors;
/ filter by text, database or user; space pause; s slow pane;
+ and - double or halve the slow threshold; h help; q quit.
"""


def build_top_parser(add_help=True):
    p = _Parser(
        prog="dbslower top", add_help=add_help,
        description="Full-screen live view of the statements taking the time, per query "
                    "fingerprint, aggregated in the kernel and refreshed every interval.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TOP_EXAMPLES)
    p.add_argument("engine", nargs="?", choices=["postgres", "mysql"],
                   help="database engine (default: both, every server found)")
    p.add_argument("-i", "--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="refresh interval (default 1)")
    p.add_argument("-m", "--threshold", type=_threshold_ms, default=100.0, metavar="MS",
                   help="slow pane: statements at least this slow, in milliseconds (default 100)")
    p.add_argument("-p", "--pid", type=_pids, action="append", metavar="PID",
                   help="show only these server processes (repeat, or comma-separate)")
    p.add_argument("-x", "--exe", metavar="PATH", help="every process running this server binary")
    p.add_argument("-d", "--duration", type=_positive_float, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-s", "--text-bytes", type=int, default=1024, metavar="BYTES",
                   help="query text captured per statement: 1024 (default), 2048, 4096 or 8192")
    p.add_argument("--merge-servers", action="store_true",
                   help="one row per fingerprint for all servers of an engine (default: per server)")
    p.add_argument("--redact", action="store_true",
                   help="slow pane: replace every literal in the text with ?")
    p.add_argument("--once", action="store_true",
                   help="print one frame as plain text after one interval and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print the probe plan to stderr first")
    return p


SERVE_EXAMPLES = """examples:
    dbslower serve                   # every server on the host; metrics on 127.0.0.1:9479
    dbslower serve --log - -m 250    # also log statements over 250 ms as JSON lines to stdout
    dbslower serve --config /etc/dbslower/dbslower.toml
    dbslower serve --check           # load and attach everything, print the plan, detach
    dbslower serve --listen 0.0.0.0:9479   # reachable from other hosts: asked for explicitly

The configuration file is TOML with the long option names as keys
(threshold, listen, log, pid, exe, redact, ...); options given on the
command line win. SIGHUP reopens the log file; SIGTERM detaches and exits 0.
"""


def build_serve_parser(add_help=True):
    from dbslower.serve import DEFAULT_LISTEN
    p = _Parser(
        prog="dbslower serve", add_help=add_help,
        description="Run as an always-on agent: trace every PostgreSQL and MySQL/MariaDB server "
                    "on the host, follow servers that start, restart or go away, serve "
                    "Prometheus metrics and log slow statements.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SERVE_EXAMPLES)
    p.add_argument("-m", "--threshold", type=_threshold_ms, metavar="MS",
                   help="log statements at least this slow, in milliseconds (default 100)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help=f"metrics endpoint address (default {DEFAULT_LISTEN}, loopback only)")
    p.add_argument("--log", metavar="PATH", help="slow-statement log: a file, or - for stdout (default: none)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration; options given here win over it")
    p.add_argument("--check", action="store_true",
                   help="load and attach to every server found, print the plan, detach and exit")
    p.add_argument("-p", "--pid", type=_pids, action="append", metavar="PID",
                   help="trace only these servers (a PostgreSQL postmaster is followed across restarts "
                        "by its data directory)")
    p.add_argument("-x", "--exe", metavar="PATH", help="trace only processes running this server binary")
    red = p.add_mutually_exclusive_group()
    red.add_argument("--redact", dest="redact", action="store_true", default=None,
                     help="replace literals in logged text with ? (the default)")
    red.add_argument("--no-redact", dest="redact", action="store_false",
                     help="log statement text as the server received it")
    p.add_argument("--interval", type=_positive_float, metavar="SECONDS",
                   help="seconds between reads of the kernel's aggregates (default 1)")
    p.add_argument("--rediscover", type=_positive_float, metavar="SECONDS",
                   help="seconds between looks for new, restarted or vanished servers (default 2)")
    p.add_argument("-s", "--text-bytes", type=int, metavar="BYTES",
                   help="query text captured per statement: 1024 (default), 2048, 4096 or 8192")
    p.add_argument("--log-rate", type=int, metavar="N",
                   help="log at most N slow statements a second; the rest are counted (default 1000)")
    p.add_argument("--fingerprint-metrics", action="store_true", default=None,
                   help="also export dbslower_query_duration_seconds per query fingerprint")
    p.add_argument("--top-fingerprints", type=_positive_int, metavar="K",
                   help="with --fingerprint-metrics: the K fingerprints with the most total time (default 50)")
    p.add_argument("--fingerprint-ttl", type=_positive_float, metavar="SECONDS",
                   help="with --fingerprint-metrics: drop a fingerprint's series after this long unseen (default 600)")
    p.add_argument("--container-label", action="store_true", default=None,
                   help="add a container_id label to db_server_operation_duration_seconds")
    p.add_argument("--method", choices=["auto", "socket"], default=None,
                   help="socket: time statements at the servers' sockets, cheaper per statement; "
                        "not for TLS connections (default auto: the servers' own probes)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each probe plan to stderr")
    return p


def build_manpage_parser():
    """Every command in one parser, for the man page and shell completion."""
    p = build_parser()
    sub = p.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    sub.add_parser("top", parents=[build_top_parser(add_help=False)], add_help=False,
                   help="full-screen live view (see dbslower top -h)",
                   description=build_top_parser().description, epilog=TOP_EXAMPLES,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_parser("serve", parents=[build_serve_parser(add_help=False)], add_help=False,
                   help="always-on agent: Prometheus metrics and a slow-statement log (see dbslower serve -h)",
                   description=build_serve_parser().description, epilog=SERVE_EXAMPLES,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    return p


def build_completion_parser():
    """The command line as bash completion sees it: the engines and the
    commands as first word, then each one's options (argcomplete)."""
    p = _Parser(prog="dbslower")
    sub = p.add_subparsers(dest="command")
    for engine in ("postgres", "mysql"):
        sub.add_parser(engine, parents=[build_parser(engine=False, add_help=False)])
    sub.add_parser("top", parents=[build_top_parser(add_help=False)])
    sub.add_parser("serve", parents=[build_serve_parser(add_help=False)])
    return p


def parse_serve_args(argv):
    from dbslower.serve import load_config, merge_settings
    args = build_serve_parser().parse_args(argv)
    flags = {k: getattr(args, k) for k in ("threshold", "listen", "log", "exe", "redact", "interval",
                                            "rediscover", "text_bytes", "log_rate", "fingerprint_metrics",
                                            "top_fingerprints", "fingerprint_ttl", "container_label", "method")}
    flags["pid"] = [p for group in args.pid for p in group] if args.pid else None
    config = load_config(args.config) if args.config else {}
    args.settings = merge_settings(config, flags)
    args.command = "serve"
    return args


def _check_text_bytes(args):
    from dbslower.plan import TEXT_BYTES_CHOICES
    if args.text_bytes not in TEXT_BYTES_CHOICES:
        raise UsageError(f"text size {args.text_bytes} is not one of {', '.join(map(str, TEXT_BYTES_CHOICES))}")


def parse_top_args(argv):
    args = build_top_parser().parse_args(argv)
    args.command = "top"
    args.pids = [p for group in (args.pid or []) for p in group]
    if args.pids and args.exe:
        raise UsageError("-p and -x cannot be combined", "give the processes with -p, or the binary with -x")
    args.mode = "top"
    _check_text_bytes(args)
    return args


def parse_args(argv):
    if argv and argv[0] == "top":
        return parse_top_args(argv[1:])
    if argv and argv[0] == "serve":
        return parse_serve_args(argv[1:])
    args = build_parser().parse_intermixed_args(argv)
    args.command = "trace"
    summary = args.hist or args.digest
    if not summary and args.interval is not None:
        raise UsageError("interval and count need --hist or --digest")
    if args.threshold is None:
        args.threshold = 0.0 if summary else 1.0
    args.pids = [p for group in (args.pid or []) for p in group]
    if args.pids and args.exe:
        raise UsageError("-p and -x cannot be combined", "give the processes with -p, or the binary with -x")
    args.mode = "hist" if args.hist else "digest" if args.digest else "floor" if args.floor else "stream"
    if args.top is not None and args.top < 0:
        raise UsageError("--top cannot be negative")
    _check_text_bytes(args)
    from dbslower.plan import check_method
    check_method(args.mode, args.exe, args.method)
    if args.json and args.top is None:
        args.top = 0
    return args


def _stderr(msg):
    print(msg, file=sys.stderr, flush=True)


def _describe_targets(plan):
    parts = []
    for t in plan.targets:
        who = ", ".join(map(str, t.pids)) if t.pids else "processes started later"
        parts.append(f"{t.binary.path} [{who}] via {t.method}")
    return "; ".join(parts)


def banner(args, plan):
    what = {"stream": f"queries slower than {args.threshold:g} ms",
            "hist": "query latency histograms", "digest": "query digests",
            "floor": "nothing (benchmark floor: empty handlers)"}[args.mode]
    if args.mode in ("hist", "digest") and args.threshold > 0:
        what += f" (queries of {args.threshold:g} ms or more)"
    return f"Tracing {ENGINE_LABEL[args.engine]} {what} in {_describe_targets(plan)}. Hit Ctrl-C to end."


def describe_plan(plan, tracer, program=True):
    lines = [f"dbslower {__version__}: probe plan for {ENGINE_LABEL[plan.engine]}"]
    for t in plan.targets:
        ver = ".".join(map(str, t.binary.version)) if t.binary.version else "unknown"
        lines.append(f"  binary {t.binary.path} ({t.binary.flavor} {ver}, version from {t.binary.version_source or 'nowhere'})")
        lines.append(f"    method: {t.method}, because {t.reason}")
        lines.append(f"    probe hits per statement: {t.hits}")
        lines.append(f"    attached as: {tracer.attached_as(t)}")
        for p in t.probes:
            lines.append(f"    {p.kind:<9} {p.site} -> {p.fn}")
        for n in t.notes:
            lines.append(f"    note: {n}")
        lines.append(f"    processes: {', '.join(map(str, t.pids)) or 'none yet'}")
    if plan.filter_pids:
        lines.append(f"  kernel PID filter: {', '.join(map(str, sorted(plan.filter_pids)))} (and their new backends)")
    for t in plan.targets if program else ():
        lines.append(f"----- BPF program for {t.binary.path} -----")
        lines.append(tracer.program_text(t))
    return "\n".join(lines)


class TargetWatch:
    """-p: ends the run when every traced process has gone (a restarted
    server has a new PID), so that silence never looks like health."""

    def __init__(self, pids):
        from dbslower.discover import start_time
        self.start_time = start_time
        self.ids = {pid: start_time(pid) for pid in pids}
        self.next_look = 0.0
        self.gone = False

    def poll(self):
        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + 1.0
        self.gone = all(self.start_time(pid) != st for pid, st in self.ids.items())
        return self.gone

    def line(self):
        pids = ", ".join(map(str, self.ids))
        return (f"the traced process{'es' if len(self.ids) > 1 else ''} ({pids}) exited; a restarted server "
                f"has a new PID: run dbslower again, or use 'dbslower serve -p', which follows restarts")


class StopFlag:
    """Set by SIGINT/SIGTERM. The main loop polls it, so a signal never lands
    in the middle of a ring buffer batch (which would be read twice)."""

    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        self.set = True

    def install(self):
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)
        return self


def open_sources(args, stack, mode, engines, context=True):
    """Discover, plan and load for each engine; the tracers detach when the
    ExitStack closes. With several engines, one that has no server is
    skipped, unless none has one."""
    from dbslower.discover import find_servers_by_engine, list_processes
    from dbslower.load import load_plan, preflight
    from dbslower.pipeline import Source

    preflight()
    found = find_servers_by_engine(engines, pids=args.pids, binary=args.exe)
    procs = list_processes()
    sources = []
    for engine, servers in found.items():
        plan, tracer = load_plan(engine, servers, binary=args.exe, pids=args.pids,
                                 threshold_ns=int(round(args.threshold * 1e6)) if mode != "top" else 0,
                                 text_bytes=args.text_bytes, mode=mode,
                                 method=getattr(args, "method", "auto"))
        stack.callback(tracer.close)
        if args.verbose:
            _stderr(describe_plan(plan, tracer))
        src = Source(plan, tracer, context=context)
        ids = {}
        src.register(servers, procs, lambda pid: ids.setdefault(pid, len(ids) + 1))
        src.merge_servers = getattr(args, "merge_servers", False)
        src.redact = getattr(args, "redact", False)
        sources.append(src)
    return sources


def run(args, out):
    from dbslower.output import Output
    from dbslower.pipeline import Pipeline

    stop = StopFlag().install()
    streaming = args.mode in ("stream", "floor")
    if streaming and hasattr(sys.stdout, "fileno"):
        out = Output(sys.stdout.fileno())
    try:
        with contextlib.ExitStack() as stack:
            sources = open_sources(args, stack, args.mode, [args.engine], context=streaming)
            plan = sources[0].plan
            if args.mode == "hist":
                from dbslower.summary import HistSink
                sinks = [HistSink(out, args.json, args.interval)]
            elif args.mode == "digest":
                from dbslower.summary import DigestSink
                sinks = [DigestSink(out, args.json, args.interval, args.top)]
            else:
                from dbslower.output import JsonWriter, TableWriter
                sinks = [JsonWriter(out) if args.json else TableWriter(out, context=args.context)]
            if args.verbose and args.json and streaming:
                from dbslower.output import json_lines_writer
                _stderr(json_lines_writer())
            watch = TargetWatch(args.pids) if args.pids else None
            pipeline = Pipeline(sources, sinks + ([watch] if watch else []), interval_s=args.interval,
                                count=args.count, duration_s=args.duration,
                                notify=lambda line: _stderr(f"dbslower: {line}"))
            _stderr(banner(args, plan))
            pipeline.run(stop)
        # The probes are detached now; only then wait for a slow reader.
        if isinstance(out, Output):
            out.drain()
        else:
            out.flush()
    finally:
        if isinstance(out, Output):
            out.close()
    lost = pipeline.loss_line(pipeline.final_losses())
    if lost and streaming:
        _stderr(f"dbslower: {lost}")
    for line in (pipeline.missing_text_line(), pipeline.unread_text_line(), pipeline.exited_line()):
        if line:
            _stderr(f"dbslower: {line}")
    if watch and watch.gone:
        _stderr(f"dbslower: {watch.line()}")
        return NoServer.exit_code
    return 0


def run_top(args, out):
    import shutil

    from dbslower.pipeline import Pipeline
    from dbslower.top import Frame, OnceSink, ScreenSink

    if not args.once and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("dbslower top needs a terminal", "use --once for plain text")
    engines = [args.engine] if args.engine else ["postgres", "mysql"]
    stop = StopFlag().install()
    with contextlib.ExitStack() as stack:
        sources = open_sources(args, stack, "top", engines)

        def set_slow_ns(ns):
            for src in sources:
                src.tracer.set_slow_threshold(ns)
        set_slow_ns(int(round(args.threshold * 1e6)))
        frame = Frame([s.engine for s in sources], args.interval, args.threshold)
        what = " and ".join(f"{ENGINE_LABEL[s.engine]} in {_describe_targets(s.plan)}" for s in sources)
        _stderr(f"Tracing {what} for a live view. Hit Ctrl-C to end.")
        if args.once:
            sink = OnceSink(frame, out, shutil.get_terminal_size((120, 40)).columns)
        else:
            sink = ScreenSink(frame, set_slow_ns)
            stack.callback(sink.close)
        Pipeline(sources, [sink], interval_s=args.interval, count=1 if args.once else None,
                 duration_s=args.duration).run(stop)
    return 0


def run_serve(args, out):
    from dbslower.errors import ListenFailed
    from dbslower.load import preflight
    from dbslower.metrics import MetricsSink, serve_http
    from dbslower.pipeline import Pipeline
    from dbslower.serve import Fleet
    from dbslower.slowlog import SlowLog

    s = args.settings
    preflight()
    stop = StopFlag().install()
    notify = (lambda line: _stderr(f"dbslower: {line}"))
    metrics = MetricsSink(__version__, container_label=s.container_label,
                          fingerprint_metrics=s.fingerprint_metrics, top_fingerprints=s.top_fingerprints,
                          fingerprint_ttl_s=s.fingerprint_ttl)
    fleet = Fleet(s, notify, on_attach_error=lambda: metrics.count("attach_errors"))
    with contextlib.ExitStack() as stack:
        stack.callback(fleet.close)
        added, _ = fleet.sync()
        if args.verbose or args.check:
            for src in added:
                _stderr(describe_plan(src.plan, src.tracer, program=args.verbose))
        if args.check:
            if metrics.counters["attach_errors"]:
                return 9
            if not added:
                from dbslower.errors import NoServer
                raise NoServer("no PostgreSQL, MySQL or MariaDB server to attach to",
                               "start one; serve itself waits for servers, --check does not")
            _stderr(f"dbslower: check passed: {len(added)} server binaries attached and detached")
            return 0
        host, port = s.listen_address()
        try:
            httpd = serve_http(metrics, host, port)
        except OSError as e:
            raise ListenFailed(f"cannot listen on {s.listen}: {e.strerror}",
                               "choose another address with --listen HOST:PORT") from None
        stack.callback(httpd.shutdown)
        sinks = [metrics]
        if s.log:
            if s.log == "-":
                def open_log():
                    return out
            else:
                def open_log():
                    try:
                        return open(s.log, "a", encoding="utf-8")
                    except OSError as e:
                        raise UsageError(f"cannot open the log {s.log}: {e.strerror}") from None
            slowlog = SlowLog(open_log, redact_text=s.redact, rate_per_s=s.log_rate, metrics=metrics)
            signal.signal(signal.SIGHUP, lambda signum, frame: slowlog.reopen())
            sinks.append(slowlog)
        pipeline = Pipeline(list(fleet.sources.values()), sinks, interval_s=s.interval, notify=notify,
                            rediscover=fleet.sync, rediscover_s=s.rediscover)
        what = "; ".join(f"{src.system_name} {src.plan.targets[0].binary.path} via {src.method}"
                         for src in fleet.sources.values()) or "no server yet (watching for one)"
        _stderr(f"Tracing {what}; metrics on http://{s.listen}/metrics"
                f"{', slow statements over ' + format(s.threshold, 'g') + ' ms to ' + s.log if s.log else ''}."
                f" Hit Ctrl-C to end.")
        pipeline.run(stop)
        out.flush()
    return 0


def main(argv=None):
    if "_ARGCOMPLETE" in os.environ:  # bash completion (argcomplete): answers, then exits
        import argcomplete
        argcomplete.autocomplete(build_completion_parser())
    argv = sys.argv[1:] if argv is None else argv
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace",
                           write_through=False, line_buffering=False) if hasattr(sys.stdout, "buffer") else sys.stdout
    try:
        args = parse_args(argv)
        runner = {"top": run_top, "serve": run_serve}.get(args.command, run)
        return runner(args, out)
    except PreflightFailed as e:
        for p in e.problems:
            _stderr(f"dbslower: {p.line()}")
        return e.exit_code
    except DbslowerError as e:
        _stderr(f"dbslower: {e.line()}")
        return e.exit_code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Reader went away (e.g. piped to head): not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:  # the output's disk is full, a file cannot be opened, ...
        where = f" ({e.filename})" if e.filename else ""
        _stderr(f"dbslower: cannot go on: {e.strerror or e}{where}; the probes are detached")
        return 1
    except Exception as e:  # a bug: still one line; the probes are detached by now
        _stderr(f"dbslower: internal error: {e!r} (please report it; DBSLOWER_DEBUG=1 shows the traceback)")
        if os.environ.get("DBSLOWER_DEBUG"):
            import traceback
            traceback.print_exc()
        return 1
    finally:
        # Done and detached. Python puts SIG_DFL back for its own handlers while
        # the interpreter shuts down (not for SIG_IGN), so a Ctrl-C or SIGTERM
        # landing then killed a clean exit with the signal (status -2 in CI).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
