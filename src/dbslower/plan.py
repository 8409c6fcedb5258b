"""Plan the probes: which method for each server binary, which sites, and
the -D flags for the BPF program. Second stage; imports only discovery.
"""

import os
import time
from dataclasses import dataclass, field

from dbslower import abi, quirks
from dbslower.discover import Binary, file_key, inspect_binary
from dbslower.elf import ElfFile
from dbslower.errors import NoProbes, UsageError

ET_DYN = 3  # ELF type of a position-independent executable
# "1": on MySQL/MariaDB, the dispatch_command machine even where the THD's own
# statement times are located (tests run MySQL's path on MariaDB with it)
FORCE_DISPATCH_ENV = "DBSLOWER_DISPATCH_TIMING"
# "1": on PostgreSQL, windows open at the backend's state reports even where
# the server's own start stamp is located (tests run that machine with it)
FORCE_STATUS_ENV = "DBSLOWER_STATUS_TIMING"
# Plan mode -> the BPF program's MODE; "top" is a digest that also streams
# the statements over an adjustable threshold (SLOW_EVENTS).
# Statements carry their server and (PostgreSQL) database (SERVER_IDS), and
# digests are kept per both; serve also streams the statements over its threshold.
MODES = {"stream": abi.MODE_STREAM, "hist": abi.MODE_HIST, "digest": abi.MODE_DIGEST, "floor": abi.MODE_FLOOR,
         "top": abi.MODE_DIGEST, "serve": abi.MODE_DIGEST}
DIGEST_MODES = ("digest", "top", "serve")
TEXT_BYTES_CHOICES = (1024, 2048, 4096, 8192)
# Digests keyed by operation (bpf/common.bpf.c): one key per operation,
# database and server, e.g. 20 operations in 75 databases, before user space
# folds cold keys away at 75%; per-CPU maps, 208 KiB per CPU with digest_hist.
OPERATION_DIGEST_ENTRIES = 2048
TRACE_SELF, TRACE_INHERIT = 1, 2


@dataclass(frozen=True)
class Probe:
    kind: str      # "usdt", "uprobe", "uretprobe" or "tracepoint" (attached by bcc on load)
    site: str      # USDT probe name or symbol
    fn: str        # BPF function


@dataclass
class Target:
    binary: Binary
    method: str            # "usdt" or "uprobe"
    reason: str
    probes: list
    cflags: dict
    sources: list          # BPF C fragments (bpf/*.bpf.c), joined in this order
    usdt_pid: int = 0      # a process to read USDT semaphores from
    pids: list = field(default_factory=list)   # running server processes
    notes: list = field(default_factory=list)  # what this build cannot give
    ref_ctrs: dict = field(default_factory=dict)  # USDT location -> semaphore file offset
    app_name_symbol: tuple = ()  # PostgreSQL: (vaddr of application_name, position-independent?)
    db_id_symbol: tuple = ()     # PostgreSQL: (vaddr of MyDatabaseId, position-independent?)
    hits: str = ""               # probe hits per statement, for -v and the README


@dataclass
class Plan:
    engine: str
    targets: list
    threshold_ns: int
    text_bytes: int
    mode: str
    filter_pids: dict      # pid -> TRACE_*; empty: no process filter
    # The socket method without -p: binary path -> TRACE_*, for the processes
    # that exec one of them (bpf/common.bpf.c, sched_process_exec)
    follow_exec: dict = field(default_factory=dict)
    ringbuf_pages: int = 4096  # 16 MiB: seconds of every-query streaming at full load
    # Digest modes: "fingerprint", or "operation" where the first word is all
    # the labels need (serve without per-fingerprint metrics): cheaper per statement.
    digest_key: str = "fingerprint"

    def cflags(self, target):
        flags = {
            "TEXT_BYTES": self.text_bytes,
            "THRESHOLD_NS": f"{self.threshold_ns}ULL",
            "MODE": MODES[self.mode],
            "SLOW_EVENTS": 1 if self.mode in ("top", "serve") else 0,
            "DIGEST_BY_OPERATION": 1 if self.by_operation else 0,
            "SERVER_IDS": 0 if self.mode == "floor" else 1,
            # serve labels MySQL statements by database: digests keyed by the name's hash
            "DB_NAME_IDS": 1 if self.mode == "serve" and self.engine == "mysql" else 0,
            "FILTER_PIDS": 1 if self.filter_pids else 0,
            "FOLLOW_EXEC": 1 if self.follow_exec else 0,
            # the socket methods' handlers reach the digests through fp_chunk (bpf/common.bpf.c)
            "DIGEST_IN_TAIL": 1 if target.method == "socket" else 0,
            "DQUOTE_IS_STRING": 1 if self.engine == "mysql" else 0,
            "RINGBUF_PAGES": self.ringbuf_pages,
            # each CPU wakes the reader after writing this much (bpf/common.bpf.c, send_record)
            "RINGBUF_WAKE_BYTES": self.ringbuf_pages * os.sysconf("SC_PAGE_SIZE") // 4 // (os.cpu_count() or 1),
            "ENGINE": abi.ENGINES[self.engine],
        }
        if self.by_operation:
            flags["DIGEST_ENTRIES"] = OPERATION_DIGEST_ENTRIES
        if target.cflags.get("PG_SERVER_TIMES"):
            # CLOCK_TAI - CLOCK_REALTIME, whole seconds: the BPF program
            # reads the server's gettimeofday clock as TAI minus this
            gap_ns = time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(time.CLOCK_REALTIME)
            flags["PG_TAI_OFFSET_NS"] = f"{round(gap_ns / 1e9) * 1_000_000_000}ULL"
        flags.update(target.cflags)
        return flags

    @property
    def by_operation(self):
        return self.mode in DIGEST_MODES and self.digest_key == "operation"


def _pg_target(binary, elf, run_pid, hits, mode):
    syms = elf.symbols()
    notes = []
    server_times = _pg_server_times(elf, syms, mode)
    usdt = {p.name for p in elf.usdt_probes() if p.provider == "postgresql"}
    if server_times:
        # postgres.bpf.c, machine 1: a message's window starts at the
        # server's own stamp, read when it ends.
        cflags = server_times
        usdt_name, fn = quirks.PG_USDT_EXECUTE
        if usdt_name in usdt and run_pid:
            probes = [Probe("usdt", usdt_name, fn)]
            method, reason = "usdt", f"binary has the USDT probe {usdt_name}"
        else:
            probes = [Probe("uprobe", *quirks.PG_EXECUTE_UPROBE)]
            method = "uprobe"
            reason = ("USDT probes need a running server to enable; exported functions instead" if usdt_name in usdt
                      else "no USDT probes in this build; exported PortalRun")
        reason += ("; each message's start is the server's own stamp (stmtStartTimestamp, located through "
                   "GetCurrentStatementStartTimestamp), read at check_log_duration")
        probes += [Probe("uprobe", *quirks.PG_END_UPROBE), Probe("uprobe", *quirks.PG_ERROR_UPROBE)]
        probes += [Probe("uprobe", sym, fn) for sym, fn in quirks.PG_ERROR_CODE_UPROBES.items()]
        probes.append(Probe("tracepoint", "syscalls:sys_enter_sendto", "tracepoint__syscalls__sys_enter_sendto"))
        hits.append("simple Query 3 (PortalRun, check_log_duration, the backend's send, a syscall tracepoint); "
                    "extended Bind/Execute/Sync 4 (2 check_log_duration, PortalRun, the backend's send), "
                    "+2 with a Parse (check_log_duration, SaveCachedPlan); "
                    "+2 for a failed statement (errstart_cold, AbortCurrentTransaction), +1 with its code (errcode)")
    else:
        missing_usdt = [n for n in quirks.PG_USDT_PROBES if n not in usdt]
        if not missing_usdt and run_pid:
            probes = [Probe("usdt", name, fn) for name, fn in quirks.PG_USDT_PROBES.items()]
            method, reason, cflags = "usdt", "binary has USDT probes statement__status and query__execute__start", \
                {"USE_USDT": 1}
        else:
            missing = [s for s in quirks.PG_UPROBES if s not in syms]
            if missing:
                raise NoProbes(f"{binary.path} has neither PostgreSQL's USDT probes nor the exported "
                               f"functions {', '.join(missing)}", "is this a PostgreSQL 12+ server binary?")
            probes = [Probe("uprobe", sym, fn) for sym, fn in quirks.PG_UPROBES.items()]
            cflags = {"USE_USDT": 0, "PG_STATE_RUNNING": _pg_versioned(binary, quirks.pg_state_running)}
            method = "uprobe"
            if missing_usdt:
                reason = "no USDT probes in this build; exported pgstat_report_activity and PortalRun"
            else:
                reason = "USDT probes need a running server to enable; exported functions instead"
        cflags["PG_SERVER_TIMES"] = 0
        reason += ("; each message's window opens at its state report (the server's own start stamp "
                   "is not located in this build)" if not os.environ.get(FORCE_STATUS_ENV)
                   else f"; each message's window opens at its state report ({FORCE_STATUS_ENV} is set)")
        hits.append("simple Query 4 (state report, PortalRun, check_log_duration, idle report); "
                    "extended Bind/Execute/Sync 6 (2 state reports, 2 check_log_duration, PortalRun, idle report), "
                    "+3 with a Parse (state report, check_log_duration, SaveCachedPlan); "
                    "+1 for a failed statement (AbortCurrentTransaction), +2 with its code (errstart_cold, errcode)")
        sym, fn = quirks.PG_END_UPROBE
        if sym in syms:
            probes.append(Probe("uprobe", sym, fn))
        else:
            notes.append(f"{sym} is not exported: a statement ends when the backend reports its next state")
        sym, fn = quirks.PG_ERROR_UPROBE
        if sym in syms:
            probes.append(Probe("uprobe", sym, fn))
        else:
            notes.append(f"{sym} is not exported: failed statements are not flagged")
        if all(s in syms for s in quirks.PG_ERROR_CODE_UPROBES):
            probes += [Probe("uprobe", sym, fn) for sym, fn in quirks.PG_ERROR_CODE_UPROBES.items()]
        else:
            notes.append("errstart_cold/errcode not exported: failed statements have no error code")
    sym, fn = quirks.PG_PLAN_SAVED_UPROBE
    cflags["PG_PARSE_SLOTS"] = 0
    if sym in syms and binary.version:
        try:
            cflags["PG_PLANSOURCE_QUERY_STRING"] = quirks.pg_plansource_query_string(binary.version[0])
            cflags["PG_PARSE_SLOTS"] = 1
            probes.append(Probe("uprobe", sym, fn))
        except KeyError:
            pass
    if not cflags["PG_PARSE_SLOTS"]:
        notes.append("a Parse's time goes to the next statement executed, not to the statement it parsed "
                     f"({sym} not exported, or the version unknown)")
    return method, reason, probes, cflags, notes, ["common.bpf.c", "pg_context.bpf.c", "postgres.bpf.c"]


def _pg_server_times(elf, syms, mode):
    """postgres.bpf.c's PG_SERVER_TIMES flags, or None when this build does
    not give what that machine reads (or FORCE_STATUS_ENV is set)."""
    if os.environ.get(FORCE_STATUS_ENV):
        return None
    accessor = syms.get(quirks.PG_STMT_START_ACCESSOR)
    stmt_start = quirks.rip_load_address(elf.read_at_vaddr(accessor.value, 8), accessor.value) if accessor else None
    needed = [quirks.PG_DEBUG_QUERY, quirks.PG_WORKER_NUMBER, quirks.PG_END_UPROBE[0], quirks.PG_ERROR_UPROBE[0],
              *quirks.PG_ERROR_CODE_UPROBES, quirks.PG_EXECUTE_UPROBE[0]]
    if stmt_start is None or not all(n in syms for n in needed):
        return None
    return {
        "PG_SERVER_TIMES": 1,
        "PG_STMT_START_VADDR": hex(stmt_start),
        "PG_DEBUG_QUERY_VADDR": hex(syms[quirks.PG_DEBUG_QUERY].value),
        "PG_WORKER_NUMBER_VADDR": hex(syms[quirks.PG_WORKER_NUMBER].value),
        "PG_END_VADDR": hex(syms[quirks.PG_END_UPROBE[0]].value),
        "PG_ERRSTART_VADDR": hex(syms["errstart_cold"].value),
        # statements are reported at the sendto tracepoint: in the digest
        # modes it tail-calls its own fp_chunk (bpf/common.bpf.c, load.py)
        "DIGEST_TP_CHAIN": int(mode in DIGEST_MODES),
    }


# The socket methods' sites; bcc attaches TRACEPOINT_PROBE functions itself
# when it loads the program.
SOCKET_PROBES = tuple(Probe("tracepoint", f"syscalls:{tp}", f"tracepoint__syscalls__{tp}")
                      for tp in ("sys_exit_recvfrom", "sys_enter_sendto"))


def _pg_socket_target(binary, elf, run_pid, hits, mode):
    """--method socket: syscall tracepoints on the backends' recvfrom and
    sendto (bpf/postgres_socket.bpf.c); no probe in the binary."""
    hits.append("3 syscall tracepoint hits for a simple Query or an extended-protocol Sync cycle, whatever "
                "its messages (2 recvfrom exits, one of them EAGAIN before the backend waits, and a sendto entry)")
    notes = ["latency includes reading the request and sending the response; an extended-protocol "
             "cycle up to its Sync is one statement; TLS connections cannot be read (counted)"]
    return ("socket", "--method socket: the backends' recvfrom/sendto syscall tracepoints", list(SOCKET_PROBES), {}, notes,
            ["common.bpf.c", "pg_context.bpf.c", "postgres_socket.bpf.c"])


def _my_socket_target(binary, elf, run_pid, hits, mode):
    """--method socket: syscall tracepoints on the server threads' recvfrom
    and sendto (bpf/mysql_socket.bpf.c); no probe in the binary."""
    hits.append("4 syscall tracepoint hits per command (3 recvfrom exits: EAGAIN before the thread waits, "
                "the packet header, its payload; a sendto entry), 3 when the next command is already there; "
                "+1 per further send of a long reply")
    notes = ["latency includes reading the command and sending the reply; a multi-statement query is one "
             "statement; user and database from the handshake, COM_INIT_DB and USE, no connection id; "
             "TLS connections cannot be read (counted)"]
    return ("socket", "--method socket: the server threads' recvfrom/sendto syscall tracepoints", list(SOCKET_PROBES),
            dict(quirks.COM), notes, ["common.bpf.c", "mysql_socket.bpf.c"])


METHODS = ("auto", "socket")
# serve keys its histograms by operation, which a statement without text
# (see the socket fragments) still has a label for; fingerprints it has not.
SOCKET_MODES = ("stream", "hist", "floor", "serve")


def _pg_versioned(binary, table):
    if not binary.version:
        raise NoProbes(f"cannot tell the PostgreSQL version of {binary.path}",
                       "trace the running server with -p so its PG_VERSION can be read")
    try:
        return table(binary.version[0])
    except KeyError:
        raise NoProbes(f"PostgreSQL {binary.version[0]} is not supported (12 or newer)") from None


def _mysql_target(binary, elf, run_pid, hits, mode):
    usdt = {p.name for p in elf.usdt_probes() if p.provider == "mysql"}
    syms = elf.symbols()
    cflags = dict(quirks.COM)  # COM_QUERY, ... as #defines
    cflags.update({"DC_TEXT_PACKET": quirks.DC_TEXT_PACKET, "DC_TEXT_COM_DATA": quirks.DC_TEXT_COM_DATA})
    notes = []
    if all(n in usdt for n in quirks.MY_USDT_PROBES) and run_pid:
        probes = [Probe("usdt", n, fn) for n, fn in quirks.MY_USDT_PROBES.items()]
        notes.append("USDT query probes: prepared statements (COM_STMT_EXECUTE) are not covered, "
                     "and failed statements have no error code")
        hits.append("COM_QUERY 2 (query__start, query__done)")
        return ("usdt", "binary has USDT probes query__start and query__done", probes, cflags, notes,
                ["common.bpf.c", "mysql.bpf.c", "mysql_usdt.bpf.c"])
    sig = next((s for s in quirks.DISPATCH_SIGNATURES if s.symbol in syms), None)
    if sig is None:
        raise NoProbes(f"{binary.path} has neither MySQL USDT probes nor a known dispatch_command",
                       "is this a mysqld or mariadbd binary? dbslower knows "
                       + ", ".join(s.name for s in quirks.DISPATCH_SIGNATURES))
    cflags.update({"DC_CMD_ARG": sig.cmd_arg, "DC_THD_ARG": sig.thd_arg,
                   "DC_TEXT_MODE": sig.text_mode, "DC_PACKET_ARG": sig.packet_arg,
                   "DC_LEN_ARG": sig.len_arg, "DC_COMDATA_ARG": sig.com_data_arg,
                   "PS_ENTRIES": 16384})

    def code(name, n):
        sym = syms.get(name)
        return elf.read_at_vaddr(sym.value, n) if sym else b""

    # What the THD tells when a statement is reported, at offsets read from
    # the server's own exported accessors (quirks.py).
    status = quirks.thd_status_offsets(code(quirks.MY_STATUS_ACCESSOR, 48))
    cflags["THD_DA_OFFSET"] = -1
    if status:
        (cflags["THD_DA_OFFSET"], cflags["DA_STATUS_OFFSET"], cflags["DA_ERROR_STATUS"],
         cflags["DA_ERRNO_OFFSET"]) = status
    cflags["THD_QUERY_OFFSET"] = quirks.thd_member_address_offset(code(quirks.MY_QUERY_ACCESSOR, 8))
    cflags["THD_DB_OFFSET"] = quirks.thd_member_address_offset(code(quirks.MY_DB_ACCESSOR, 8))
    if cflags["THD_DB_OFFSET"] < 0:
        notes.append("no thd_current_db: the database is unknown")
    cflags["THD_CONN_ID_OFFSET"] = quirks.thd_thread_id_offset(code(quirks.MY_THREAD_ID_ACCESSOR, 8))
    if cflags["THD_CONN_ID_OFFSET"] < 0:
        notes.append("connection id unknown on this build")
    cflags["THD_COMMAND_OFFSET"] = quirks.thd_command_offset(code(quirks.MY_COMMAND_ACCESSOR, 8))
    cflags["THD_UTIME_OFFSET"] = -1
    printer = next((s for name, s in syms.items() if name.startswith(quirks.MY_SLOW_LOG_PRINT_PREFIX)), None)
    if quirks.MY_SLOW_LOG in syms and printer:
        slow_log = syms[quirks.MY_SLOW_LOG]
        cflags["THD_UTIME_OFFSET"] = quirks.thd_utime_offset(
            elf.read_at_vaddr(slow_log.value, slow_log.size), slow_log.value, printer.value,
            code(quirks.MY_START_TIME_ACCESSOR, 16))
    ps_probes = [Probe("uprobe", quirks.MY_PS_PREPARE, "my_ps_prepare"),
                 Probe("uprobe", quirks.MY_PS_EXECUTE, "my_ps_execute"),
                 Probe("uprobe", quirks.MY_PS_DESTROY, "my_ps_destroy")]
    if not all(p.site in syms for p in ps_probes):
        ps_probes = []
        notes.append("Prepared_statement methods not exported: prepared statements have no text")

    needed = ("THD_UTIME_OFFSET", "THD_COMMAND_OFFSET", "THD_QUERY_OFFSET", "THD_DA_OFFSET")
    if all(cflags[k] >= 0 for k in needed) and not os.environ.get(FORCE_DISPATCH_ENV):
        # mysql_slowlog.bpf.c: the statement is timed, and everything about
        # it read, where the server decides whether to slow-log it.
        hits.append("COM_QUERY 1 (log_slow_statement, which reads the slow log's own start and end times "
                    "from the THD), COM_STMT_EXECUTE 2 (with Prepared_statement::execute); "
                    "+1 per further statement of a multi-statement query")
        notes.append("no probe at a statement's start: one still running when its server thread exits "
                     "(the server killed) is not counted")
        return ("uprobe", f"no USDT probes (dispatch_command signature {sig.name}); the THD's own statement "
                "times are located, so log_slow_statement alone times each statement",
                [Probe("uprobe", quirks.MY_SLOW_LOG, "my_slow_log")] + ps_probes, cflags, notes,
                ["common.bpf.c", "mysql_thd.bpf.c", "mysql_slowlog.bpf.c"])

    # mysql_uprobe.bpf.c: from dispatch_command to the statement's last
    # Protocol::end_statement.
    probes = [Probe("uprobe", sig.symbol, "my_dispatch_entry")]
    if quirks.MY_STMT_END in syms:
        probes.append(Probe("uprobe", quirks.MY_STMT_END, "my_stmt_end"))
    else:
        notes.append("no Protocol::end_statement: a statement ends when it is reported")
    if quirks.MY_SLOW_LOG in syms:
        probes.append(Probe("uprobe", quirks.MY_SLOW_LOG, "my_slow_log"))
        cflags["FINISH_AT_SLOW_LOG"] = 1
        ends = "Protocol::end_statement, log_slow_statement"
    else:
        probes.append(Probe("uretprobe", sig.symbol, "my_dispatch_return"))
        cflags["FINISH_AT_SLOW_LOG"] = 0
        ends = "Protocol::end_statement, dispatch_command's return" if quirks.MY_STMT_END in syms \
            else "dispatch_command's return"
        notes.append("no log_slow_statement: statements are reported when dispatch_command returns, "
                     "and a multi-statement COM_QUERY is one event")
    probes += ps_probes
    cflags["ERROR_SINK"] = int(not status and quirks.MY_ERROR_SINK in syms)
    if cflags["ERROR_SINK"]:
        probes.append(Probe("uprobe", quirks.MY_ERROR_SINK, "my_error"))
        cflags["NOT_ERROR_FLAGS"] = quirks.NOT_ERROR_FLAGS.get(binary.flavor, 0)
        notes.append("no thd_current_status: failures are taken from my_message_sql")
    elif not status:
        notes.append("neither thd_current_status nor my_message_sql: failed statements are not flagged")
    if cflags["THD_QUERY_OFFSET"] < 0:
        notes.append("no thd_query_string: the text is the whole COM_QUERY packet")
    n = 1 + len(ends.split(", "))
    hits.append(f"COM_QUERY {n} (dispatch_command, {ends}"
                f"{'' if cflags['FINISH_AT_SLOW_LOG'] else ' as a return probe'}), "
                f"COM_STMT_EXECUTE {n + 1} (with Prepared_statement::execute); "
                f"+{n - 1} per further statement of a multi-statement query, "
                "+1 per result set of a procedure (Protocol::end_statement)"
                + (", +1 per error (my_message_sql)" if cflags["ERROR_SINK"] else ""))
    return ("uprobe", f"no USDT probes; dispatch_command signature {sig.name}", probes, cflags, notes,
            ["common.bpf.c", "mysql.bpf.c", "mysql_thd.bpf.c", "mysql_uprobe.bpf.c"])


def plan_target(engine, path, servers, no_usdt=None, method="auto", mode="stream"):
    """Probe plan for one server binary and the running servers using it.
    no_usdt: why USDT probes cannot be used (they failed to enable), if so."""
    datadir = next((s.datadir for s in servers if s.datadir), "")
    binary = inspect_binary(path, engine, datadir)
    run_pid = servers[0].pid if servers and not no_usdt else 0
    with ElfFile(path) as elf:
        build = _pg_target if engine == "postgres" else _mysql_target
        if method == "socket":
            build = _pg_socket_target if engine == "postgres" else _my_socket_target
        hits = []
        method, reason, probes, cflags, notes, sources = build(binary, elf, run_pid, hits, mode)
        if no_usdt:
            reason = f"{no_usdt}; {reason}"
        ref_ctrs = _semaphores(elf, {p.site for p in probes if p.kind == "usdt"})
        syms = elf.symbols() if engine == "postgres" else {}
        app, dbid = syms.get(quirks.PG_APPLICATION_NAME), syms.get(quirks.PG_DATABASE_ID)
        app_name_symbol = (app.value, elf.e_type == ET_DYN) if app else ()
        db_id_symbol = (dbid.value, elf.e_type == ET_DYN) if dbid else ()
    return Target(binary, method, reason, probes, cflags,
                  sources=sources,
                  usdt_pid=run_pid if method == "usdt" else 0,
                  pids=[s.pid for s in servers], notes=notes, ref_ctrs=ref_ctrs,
                  app_name_symbol=app_name_symbol, db_id_symbol=db_id_symbol, hits="; ".join(hits))


def app_name_symbols(plan):
    """(st_dev, st_ino) of each PostgreSQL binary -> its application_name symbol."""
    out = {}
    for t in plan.targets:
        if t.app_name_symbol:
            try:
                st = os.stat(t.binary.path)
            except OSError:
                continue
            out[(st.st_dev, st.st_ino)] = t.app_name_symbol
    return out


def _semaphores(elf, names):
    """For semaphore-guarded USDT probes: each location (as a virtual address
    and as a file offset, whichever the attach uses) -> the semaphore's file
    offset, which the kernel then counts up in every process mapping the
    binary (uprobe ref_ctr_offset, Linux 4.20+)."""
    out = {}
    for p in elf.usdt_probes():
        if p.name in names and p.semaphore:
            sem = elf.file_offset(p.semaphore)
            if sem is None:
                continue
            out[p.pc] = sem
            off = elf.file_offset(p.pc)
            if off is not None:
                out[off] = sem
    return out


def check_method(mode, binary, method, digest_key="fingerprint"):
    """Raises UsageError when the method cannot serve this engine and mode."""
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "socket":
        if mode == "serve" and digest_key != "operation":
            raise UsageError("method socket gives no text for some statements: it cannot have fingerprint_metrics",
                             "drop fingerprint_metrics, or use method auto")
        if mode not in SOCKET_MODES:
            raise UsageError("--method socket gives no text for some statements, so no digests",
                             "use it for slow statements or --hist")
        if binary:
            raise UsageError("--method socket follows running servers' processes, not a binary (-x)",
                             "use -p, or no filter")


def make_plan(engine, servers, binary=None, pids=None, threshold_ns=1_000_000,
              text_bytes=1024, mode="stream", no_usdt=None, method="auto", digest_key="fingerprint"):
    check_method(mode, binary, method, digest_key)
    if digest_key not in ("fingerprint", "operation"):
        raise UsageError(f"unknown digest key {digest_key!r}")
    if text_bytes not in TEXT_BYTES_CHOICES:
        raise UsageError(f"text size {text_bytes} is not one of {', '.join(map(str, TEXT_BYTES_CHOICES))}")
    if threshold_ns < 0:
        raise UsageError("the threshold cannot be negative")
    # One target per binary file: containers that share an image's binary
    # under different paths get one set of probes (uprobes are per inode).
    by_binary, paths = {}, {}
    for s in servers:
        key = file_key(s.binary) or s.binary
        by_binary.setdefault(key, []).append(s)
        paths.setdefault(key, s.binary)
    if binary and not by_binary:
        by_binary[binary] = []
        paths[binary] = binary
    targets = [plan_target(engine, paths[k], group, no_usdt, method, mode)
               for k, group in sorted(by_binary.items(), key=lambda kv: paths[kv[0]])]
    filter_pids, follow_exec = {}, {}
    # The socket method's tracepoints fire for every process: it always
    # follows the servers found, with their forks, and without -p also the
    # servers that start from the same binaries.
    if pids or method == "socket":
        for s in servers:
            if engine == "postgres" and s.role == "server":
                filter_pids[s.pid] = TRACE_INHERIT
                for c in s.children:
                    filter_pids[c] = TRACE_SELF
            else:
                filter_pids[s.pid] = TRACE_SELF
    if method == "socket" and not pids:
        server_mode = TRACE_INHERIT if engine == "postgres" else TRACE_SELF
        follow_exec = {t.binary.path: server_mode for t in targets}
    return Plan(engine, targets, threshold_ns, text_bytes, mode, filter_pids, digest_key=digest_key,
                follow_exec=follow_exec)
