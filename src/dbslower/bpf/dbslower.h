/*
 * dbslower: declarations shared by the BPF programs and checked against the
 * Python decoder (tests/unit/test_layout.py compiles this header with gcc).
 *
 * The constants both sides need (ENGINE_*, MODE_*, EV_*, KIND_*, CTR_*,
 * HIST_* and ERROR_CODE_UNKNOWN) are defined once, in dbslower/abi.py, and
 * come first in the program text load.py builds.
 *
 * Configuration comes from #defines set by dbslower/plan.py:
 *   TEXT_BYTES     query bytes captured per statement (default 1024)
 *   THRESHOLD_NS   report statements at least this slow
 *   FILTER_PIDS    1: only processes listed in traced_pids (and their forks)
 *   MODE           MODE_STREAM, MODE_HIST, MODE_DIGEST or MODE_FLOOR
 *   ENGINE         ENGINE_POSTGRES or ENGINE_MYSQL
 *   USE_USDT       1: USDT probes, 0: uprobes on exported functions
 *   SLOW_EVENTS    1 (top): digest mode also streams statements over slow_ns
 *   DIGEST_BY_OPERATION 1 (serve without fingerprint metrics): digests keyed
 *                  by the statement's first word, not its fingerprint
 *   SERVER_IDS     1 (serve): digests per server and PostgreSQL database (MyDatabaseId)
 *   DB_NAME_IDS    1 (serve, MySQL): digests per database, keyed by its name's hash
 * and per engine the rows of dbslower/quirks.py (PG_STATE_RUNNING, DC_*, ...).
 */
#ifndef DBSLOWER_H
#define DBSLOWER_H

#ifndef TEXT_BYTES
#define TEXT_BYTES 1024
#endif
#define CTX_DB_BYTES 64
#define CTX_USER_BYTES 32
#define CTX_HOST_BYTES 64

/* Wire format of one ring buffer record: the header, then text_len bytes. */
struct query_event {
	u64 start_ns;    /* bpf_ktime_get_ns() at the statement's start */
	u64 duration_ns;
	u64 conn_id;     /* MySQL connection id; 0 when unknown */
	u64 fp;          /* kernel fingerprint hash (digest mode) */
	u64 app_ptr;     /* PostgreSQL: the application_name GUC's char * at the statement's
	                  * start; it changes when SET application_name runs (SERVER_IDS) */
	u32 pid;         /* process (tgid) */
	u32 tid;         /* thread */
	u32 text_len;    /* bytes of text that follow the header */
	u32 db_id;       /* PostgreSQL database OID (SERVER_IDS); 0 when unknown */
	u32 server_id;   /* server, numbered by user space (SERVER_IDS); 0 when unknown */
	u32 error_code;  /* failed statements: PostgreSQL's packed SQLSTATE or the MySQL
	                  * error number; ERROR_CODE_UNKNOWN when not seen; 0 otherwise */
	u16 command;     /* MySQL COM_* code; 0 for PostgreSQL */
	u8 flags;        /* EV_* */
	u8 kind;         /* KIND_* */
	char db[CTX_DB_BYTES];     /* MySQL USDT context; empty when unknown */
	char user[CTX_USER_BYTES];
	char host[CTX_HOST_BYTES];
	char text[TEXT_BYTES + 1];
};

/* Log-linear latency buckets: HIST_SUB_BITS linear steps per power of two,
 * so a bucket spans at most 1/2^HIST_SUB_BITS of its lower bound. Values
 * below 2^HIST_MIN_SHIFT ns share the lowest buckets; HIST_OCTAVES reach
 * ~2^38 ns = 275 s, slower lands in the last. */
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS (HIST_OCTAVES * HIST_SUB)

/* Digests are kept per (fingerprint, database): the metrics endpoint labels
 * by database; --digest and top add the databases up. */
struct digest_key {
	u64 fp;         /* kernel fingerprint hash */
	u32 db_id;      /* query_event.db_id */
	u32 server_id;  /* query_event.server_id: OIDs are per cluster */
};

struct hist_key {
	u64 fp;
	u32 db_id;
	u32 server_id;
	u32 bucket;
	u32 failed; /* 0: ok; else the error code (query_event.error_code), so
	             * digests count errors by code and metrics label error_type */
};

/* SERVER_IDS: what the BPF program knows of a server process. */
struct proc_info {
	u64 db_id_addr;   /* PostgreSQL: address of MyDatabaseId in the process; 0 otherwise */
	u64 app_name_addr; /* PostgreSQL: address of the application_name GUC (a char *); 0 otherwise */
	u32 server_id;
	u32 pad;
};

struct digest_stats {
	u64 calls;
	u64 total_ns;
	u64 max_ns;
	u64 failed;
	u64 failed_ns; /* total_ns of the failed statements */
};

#endif
