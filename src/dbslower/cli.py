"""dbslower command line. The only module that prints or exits."""

import argparse
import contextlib
import io
import os
import signal
import sys
import time

from dbslower import __version__
from dbslower.discover import ENGINE_LABEL
from dbslower.errors import DbslowerError, PreflightFailed, UsageError

EXAMPLES = """examples:
    dbslower postgres                # PostgreSQL queries slower than 1 ms
    dbslower postgres -m 0 -j        # every query, as JSON lines
    dbslower mysql -m 10             # MySQL/MariaDB queries slower than 10 ms
    dbslower postgres -p 1234        # only the cluster of postmaster 1234
    dbslower mysql -x /usr/sbin/mariadbd   # every process running this binary
    dbslower postgres -d 30 --context      # 30 s, with user, db, client columns
    dbslower postgres --hist 5       # latency histogram every 5 s
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


def build_parser():
    p = _Parser(
        prog="dbslower",
        description="Trace PostgreSQL and MySQL/MariaDB queries slower than a threshold, "
                    "live, with eBPF. Needs no server configuration change or restart.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("engine", choices=["postgres", "mysql"],
                   help="database engine (mysql covers MySQL and MariaDB); "
                        "'dbslower top' is the live view")
    p.add_argument("interval", nargs="?", type=_positive_float,
                   help="with --hist/--digest: seconds between summaries (default: one at the end)")
    p.add_argument("count", nargs="?", type=_positive_int,
                   help="with --hist/--digest: number of summaries")
    p.add_argument("-m", "--threshold", type=_nonneg_float, metavar="MS",
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
    p.add_argument("-m", "--threshold", type=_nonneg_float, default=100.0, metavar="MS",
                   help="slow pane: statements at least this slow, in milliseconds (default 100)")
    p.add_argument("-p", "--pid", type=_pids, action="append", metavar="PID",
                   help="show only these server processes (repeat, or comma-separate)")
    p.add_argument("-x", "--exe", metavar="PATH", help="every process running this server binary")
    p.add_argument("-d", "--duration", type=_positive_float, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-s", "--text-bytes", type=int, default=1024, metavar="BYTES",
                   help="query text captured per statement: 1024 (default), 2048, 4096 or 8192")
    p.add_argument("--once", action="store_true",
                   help="print one frame as plain text after one interval and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print the probe plan to stderr first")
    return p


def build_manpage_parser():
    """Every command in one parser, for the man page and shell completion."""
    p = build_parser()
    sub = p.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    sub.add_parser("top", parents=[build_top_parser(add_help=False)], add_help=False,
                   help="full-screen live view (see dbslower top -h)",
                   description=build_top_parser().description, epilog=TOP_EXAMPLES,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    return p


def _check_text_bytes(args):
    from dbslower.plan import TEXT_BYTES_CHOICES
    if args.text_bytes not in TEXT_BYTES_CHOICES:
        raise UsageError(f"text size {args.text_bytes} is not one of {', '.join(map(str, TEXT_BYTES_CHOICES))}")


def parse_top_args(argv):
    args = build_top_parser().parse_args(argv)
    args.command = "top"
    args.pids = [p for group in (args.pid or []) for p in group]
    args.mode = "top"
    _check_text_bytes(args)
    return args


def parse_args(argv):
    if argv and argv[0] == "top":
        return parse_top_args(argv[1:])
    args = build_parser().parse_intermixed_args(argv)
    args.command = "trace"
    summary = args.hist or args.digest
    if not summary and args.interval is not None:
        raise UsageError("interval and count need --hist or --digest")
    if args.threshold is None:
        args.threshold = 0.0 if summary else 1.0
    args.pids = [p for group in (args.pid or []) for p in group]
    args.mode = "hist" if args.hist else "digest" if args.digest else "floor" if args.floor else "stream"
    if args.top is not None and args.top < 0:
        raise UsageError("--top cannot be negative")
    _check_text_bytes(args)
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


def describe_plan(plan, tracer):
    lines = [f"dbslower {__version__}: probe plan for {ENGINE_LABEL[plan.engine]}"]
    for t in plan.targets:
        ver = ".".join(map(str, t.binary.version)) if t.binary.version else "unknown"
        lines.append(f"  binary {t.binary.path} ({t.binary.flavor} {ver}, version from {t.binary.version_source or 'nowhere'})")
        lines.append(f"    method: {t.method}, because {t.reason}")
        for p in t.probes:
            lines.append(f"    {p.kind:<9} {p.site} -> {p.fn}")
        for n in t.notes:
            lines.append(f"    note: {n}")
        lines.append(f"    processes: {', '.join(map(str, t.pids)) or 'none yet'}")
    if plan.filter_pids:
        lines.append(f"  kernel PID filter: {', '.join(map(str, sorted(plan.filter_pids)))} (and their new backends)")
    for t in plan.targets:
        lines.append(f"----- BPF program for {t.binary.path} -----")
        lines.append(tracer.program_text(t))
    return "\n".join(lines)


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
    from dbslower.discover import find_servers_by_engine
    from dbslower.load import Tracer, preflight
    from dbslower.pipeline import Source
    from dbslower.plan import make_plan

    preflight()
    found = find_servers_by_engine(engines, pids=args.pids, binary=args.exe)
    sources = []
    for engine, servers in found.items():
        plan = make_plan(engine, servers, binary=args.exe, pids=args.pids,
                         threshold_ns=int(round(args.threshold * 1e6)) if mode != "top" else 0,
                         text_bytes=args.text_bytes, mode=mode)
        tracer = Tracer(plan)
        if args.verbose:
            _stderr(describe_plan(plan, tracer))
        stack.enter_context(tracer)
        sources.append(Source(plan, tracer, context=context))
    return sources


def run(args, out):
    from dbslower.pipeline import Pipeline

    stop = StopFlag().install()
    with contextlib.ExitStack() as stack:
        sources = open_sources(args, stack, args.mode, [args.engine],
                               context=args.mode in ("stream", "floor"))
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
        pipeline = Pipeline(sources, sinks, interval_s=args.interval, count=args.count,
                            duration_s=args.duration, notify=lambda line: _stderr(f"dbslower: {line}"))
        _stderr(banner(args, plan))
        pipeline.run(stop)
        out.flush()
        lost = pipeline.loss_line()
        if lost and args.mode in ("stream", "floor"):
            _stderr(f"dbslower: {lost}")
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace",
                           write_through=False, line_buffering=False) if hasattr(sys.stdout, "buffer") else sys.stdout
    try:
        args = parse_args(argv)
        return run_top(args, out) if args.command == "top" else run(args, out)
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
    except Exception as e:  # a bug: still one line; the probes are detached by now
        _stderr(f"dbslower: internal error: {e!r} (please report it; DBSLOWER_DEBUG=1 shows the traceback)")
        if os.environ.get("DBSLOWER_DEBUG"):
            import traceback
            traceback.print_exc()
        return 1
