/*
 * dbslower's BPF program, for both engines (ENGINE_POSTGRES or ENGINE_MYSQL).
 *
 * It is one file because bcc rewrites map calls such as
 * `events.ringbuf_output(...)` only in the main source file, not in headers;
 * pure helpers live in buckets.h and fingerprint.h.
 *
 * Never dereferences kernel structures: only pt_regs and user memory.
 * Configuration: -D flags from dbslower/plan.py, documented in dbslower.h.
 */
#include <uapi/linux/ptrace.h>
#include "dbslower.h"
#include "buckets.h"

#ifndef THRESHOLD_NS
#define THRESHOLD_NS 1000000ULL
#endif
#ifndef MODE
#define MODE MODE_STREAM
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
/* Statements in flight: one entry per server thread or backend running one.
 * Entries go when their thread exits (sched_process_exit below), so this
 * bounds concurrent connections, not connections over time; 8192 is above
 * any max_connections seen in practice. A statement that finds no room is
 * counted (CTR_INFLIGHT_FULL), never dropped silently. */
#ifndef INFLIGHT_ENTRIES
#define INFLIGHT_ENTRIES 8192
#endif
#ifndef SERVER_IDS
#define SERVER_IDS 0
#endif
#ifndef SLOW_EVENTS
#define SLOW_EVENTS 0
#endif
#ifndef DIGEST_ENTRIES
#define DIGEST_ENTRIES 16384
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, CTR_COUNT);

/* A length the verifier can see is at most TEXT_BYTES. The empty asm hides
 * the clamped value from the compiler, so it cannot pass the unclamped
 * register to the helper, and it must keep the mask the verifier reads. */
static __always_inline u32 bounded_len(u64 len)
{
	if (len > TEXT_BYTES)
		len = TEXT_BYTES;
	asm volatile("" : "+r"(len));
	return len & (TEXT_BYTES * 2 - 1);
}

/* Copies a NUL-terminated string of user memory into ev->text, marking it
 * truncated only when there really was more (one byte past the buffer). */
static __always_inline void copy_cstr(struct query_event *ev, const char *text)
{
	int n = bpf_probe_read_user_str(ev->text, TEXT_BYTES + 1, text);
	if (n <= 0) {
		ev->text_len = 0;
		ev->flags |= EV_NO_TEXT;
		return;
	}
	ev->text_len = n - 1;
	if (n == TEXT_BYTES + 1) {
		char more = 0;
		bpf_probe_read_user(&more, 1, text + TEXT_BYTES);
		if (more)
			ev->flags |= EV_TRUNCATED;
	}
}

/* The benchmark's floor: the same probe sites, handlers that do nothing. */
#if MODE == MODE_FLOOR
#define FLOOR_RETURN() return 0
#else
#define FLOOR_RETURN() do {} while (0)
#endif

static __always_inline void count(int which)
{
	u64 *c = counters.lookup(&which);
	if (c)
		(*c)++;
}

#if FILTER_PIDS
/* tgid -> TRACE_SELF or TRACE_INHERIT. Seeded from user space; children of
 * TRACE_INHERIT processes (PostgreSQL backends forked by the postmaster) are
 * added as they fork, so connections opened later are traced too. Sized for
 * every process of the traced servers: a connection is a process in
 * PostgreSQL, and 65536 is above any max_connections seen in practice. */
#define TRACE_SELF 1
#define TRACE_INHERIT 2
BPF_HASH(traced_pids, u32, u8, 65536);

static __always_inline int pid_traced(u32 tgid)
{
	return traced_pids.lookup(&tgid) != 0;
}
#else
static __always_inline int pid_traced(u32 tgid)
{
	return 1;
}
#endif

#if SERVER_IDS
/* serve: tgid -> the server it belongs to (numbered by user space) and, in
 * PostgreSQL, where MyDatabaseId (an exported Oid) is in that process.
 * Backends are forked from the postmaster without exec, so they share its
 * addresses; user space seeds each postmaster (or mysqld) and the backends
 * that already run, and fork copies the entry to new ones. Same size as
 * traced_pids. */
BPF_HASH(procs, u32, struct proc_info, 65536);
/* KIND_EXIT and KIND_APP notes are built here: too big for the BPF stack. */
BPF_PERCPU_ARRAY(note_scratch, struct query_event, 1);

/* A note to user space about process tgid; text: a string of at most 64
 * bytes (application_name's maximum, NAMEDATALEN), or none. */
static __always_inline void send_note(u8 kind, u32 tgid, u32 tid, u64 app_ptr, const char *text)
{
	u32 zero = 0;
	struct query_event *note = note_scratch.lookup(&zero);
	if (!note)
		return;
	note->kind = kind;
	note->pid = tgid;
	note->tid = tid;
	note->app_ptr = app_ptr;
	note->text_len = 0;
	if (text) {
		int n = bpf_probe_read_user_str(note->text, 64, text);
		note->text_len = n > 0 ? n - 1 : 0;
	}
	if (events.ringbuf_output(note, offsetof(struct query_event, text) + 64, 0) < 0)
		count(CTR_LOST_EVENTS);
}
#endif

#if FILTER_PIDS || SERVER_IDS
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	u32 parent = args->parent_pid;
	u32 child = args->child_pid;
#if FILTER_PIDS
	u8 *mode = traced_pids.lookup(&parent);
	if (mode && *mode == TRACE_INHERIT) {
		u8 self = TRACE_SELF;
		traced_pids.update(&child, &self);
	}
#endif
#if SERVER_IDS
	struct proc_info *pp = procs.lookup(&parent);
	if (pp) {
		struct proc_info copy = *pp;
		procs.update(&child, &copy);
	}
#endif
	return 0;
}
#endif

#if MODE == MODE_HIST
BPF_PERCPU_ARRAY(hist, u64, HIST_BUCKETS);
/* [0]: failed statements, [1]: the slowest statement's ns */
BPF_PERCPU_ARRAY(hist_extra, u64, 2);
#endif


#if MODE == MODE_DIGEST
BPF_HASH(digests, struct digest_key, struct digest_stats, DIGEST_ENTRIES);
/* 16384 statement shapes at once; user space folds cold ones away above 75%
 * (pipeline.py, Source.evict_cold). 8 buckets per shape on average. */
BPF_HASH(digest_hist, struct hist_key, u64, DIGEST_ENTRIES * 8);
/* While `digests` is full (a burst of new shapes faster than user space
 * folds), statements are counted here without their fingerprint (fp 0),
 * per database and server: 1024 such pairs, and their buckets. */
BPF_HASH(digest_overflow, struct digest_key, struct digest_stats, 1024);
BPF_HASH(overflow_hist, struct hist_key, u64, 16384);
#include "fingerprint.h"

/* A finished statement waiting for its fingerprint. Hashing runs in
 * fp_chunk, tail-called FP_CHUNK bytes at a time from the end of the probe
 * handler that finished the statement. */
struct fp_work {
	u32 pending;
	u32 pos;
	u32 state;
	char prev;
	char last_out;
	u16 pad;
	u64 hash;
	struct query_event ev;
};
BPF_PERCPU_ARRAY(fp_work, struct fp_work, 1);
BPF_PROG_ARRAY(fp_chain, 1);
#if SLOW_EVENTS
/* top: statements at least slow_ns[0] - 1 ns long are also streamed, with
 * their fingerprint; 0 means not set yet. A map, not a -D flag, so the
 * threshold can change while the program runs. */
BPF_ARRAY(slow_ns, u64, 1);
#endif
#endif

/*
 * A statement has finished. ev holds its header and text; the caller has set
 * duration_ns and flags. Streams it, or aggregates it, per MODE.
 */
static __always_inline void finish_statement(struct query_event *ev)
{
	if (ev->duration_ns < THRESHOLD_NS)
		return;
#if MODE == MODE_STREAM
	u32 len = bounded_len(ev->text_len);
	ev->kind = KIND_QUERY;
	if (events.ringbuf_output(ev, offsetof(struct query_event, text) + len, 0) < 0)
		count(CTR_LOST_EVENTS);
#elif MODE == MODE_HIST
	u32 b = hist_bucket(ev->duration_ns);
	u64 *c = hist.lookup(&b);
	if (c)
		(*c)++;
	u32 slot = 0;
	u64 *x = hist_extra.lookup(&slot);
	if (x && (ev->flags & EV_FAILED))
		(*x)++;
	slot = 1;
	x = hist_extra.lookup(&slot);
	if (x && ev->duration_ns > *x)
		*x = ev->duration_ns;
#elif MODE == MODE_DIGEST
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (!w)
		return;
	if (w->pending)
		count(CTR_LOST_EVENTS); /* another handler on this CPU left one unfinished */
	bpf_probe_read_kernel(&w->ev, offsetof(struct query_event, text) + bounded_len(ev->text_len), ev);
	w->pending = 1;
	w->pos = 0;
	w->state = FP_PLAIN;
	w->prev = 0;
	w->last_out = 0;
	w->hash = FNV_OFFSET;
#endif
}

#if MODE == MODE_DIGEST
/* Adds one to a statement's bucket, in digest_hist or, while the digest
 * table is full, overflow_hist. (bcc allows no map calls in a macro.) */
static __always_inline void count_bucket(struct hist_key *hk, int overflow)
{
	u64 one = 1;
	u64 *c = overflow ? overflow_hist.lookup(hk) : digest_hist.lookup(hk);
	if (c) {
		__sync_fetch_and_add(c, 1);
		return;
	}
	/* insert fails with -EEXIST when another CPU won the race */
	int err = overflow ? overflow_hist.insert(hk, &one) : digest_hist.insert(hk, &one);
	if (err == 0)
		return;
	c = overflow ? overflow_hist.lookup(hk) : digest_hist.lookup(hk);
	if (c)
		__sync_fetch_and_add(c, 1);
	else
		count(CTR_MAP_FULL);
}

static __always_inline void digest_update(struct query_event *ev, u64 fp)
{
	u32 failed = (ev->flags & EV_FAILED) ? 1 : 0;
	struct digest_key dk = {.fp = fp, .db_id = ev->db_id, .server_id = ev->server_id};
	struct hist_key hk = {.fp = fp, .db_id = ev->db_id, .server_id = ev->server_id,
			      .bucket = hist_bucket(ev->duration_ns), .failed = failed};
	int overflow = 0;
	struct digest_stats *st = digests.lookup(&dk);
	if (!st) {
		struct digest_stats zero = {};
		/* insert fails with -EEXIST when another CPU won the race */
		int first = digests.insert(&dk, &zero) == 0;
		st = digests.lookup(&dk);
		if (!st) {
			/* Full: counted without its fingerprint until user space
			 * makes room. */
			dk.fp = 0;
			hk.fp = 0;
			st = digest_overflow.lookup(&dk);
			if (!st) {
				digest_overflow.insert(&dk, &zero);
				st = digest_overflow.lookup(&dk);
			}
			if (!st) {
				count(CTR_MAP_FULL);
				return;
			}
			overflow = 1;
		} else if (first) {
			/* The first statement of a fingerprint carries its text. */
			ev->kind = KIND_SAMPLE;
			ev->fp = fp;
			u32 len = bounded_len(ev->text_len);
			if (events.ringbuf_output(ev, offsetof(struct query_event, text) + len, 0) < 0)
				count(CTR_LOST_EVENTS);
		}
	}
	__sync_fetch_and_add(&st->calls, 1);
	__sync_fetch_and_add(&st->total_ns, ev->duration_ns);
	if (ev->duration_ns > st->max_ns)
		st->max_ns = ev->duration_ns;
	if (failed) {
		__sync_fetch_and_add(&st->failed, 1);
		__sync_fetch_and_add(&st->failed_ns, ev->duration_ns);
	}
#if SLOW_EVENTS
	u32 slot = 0;
	u64 *slow = slow_ns.lookup(&slot);
	if (slow && *slow && ev->duration_ns + 1 >= *slow) {
		ev->kind = KIND_QUERY;
		ev->fp = fp;
		u32 n = bounded_len(ev->text_len);
		if (events.ringbuf_output(ev, offsetof(struct query_event, text) + n, 0) < 0)
			count(CTR_LOST_EVENTS);
	}
#endif
	count_bucket(&hk, overflow);
}

/* Hashes the next FP_CHUNK bytes of the pending statement, then tail-calls
 * itself for the rest, or records the statement under its fingerprint. */
int fp_chunk(struct pt_regs *ctx)
{
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (!w || !w->pending)
		return 0;
	u32 len = bounded_len(w->ev.text_len);
	if (len > FP_MAX_BYTES)
		len = FP_MAX_BYTES;
	/* The state machine's state round-trips through map memory, whose
	 * contents the verifier does not track: kept in registers, each
	 * constant state would be a separate verifier state per iteration,
	 * and the loop would exhaust the verifier's budget. */
	volatile u32 *vstate = &w->state;
	volatile char *vlast = &w->last_out;
	char prev = w->prev;
	u64 hash = w->hash;
	u32 pos = w->pos;
	for (u32 i = 0; i < FP_CHUNK; i++) {
		u32 p = pos + i;
		if (p >= len)
			break;
		char c = w->ev.text[p & (TEXT_BYTES - 1)];
		char last_out = *vlast;
		*vstate = fp_byte(*vstate, c, prev, &hash, &last_out);
		*vlast = last_out;
		prev = c;
	}
	pos += FP_CHUNK;
	w->prev = prev;
	w->hash = hash;
	w->pos = pos;
	if (pos < len)
		fp_chain.call(ctx, 0); /* does not return unless it fails */
	w->pending = 0;
	digest_update(&w->ev, hash | 1); /* never 0, which means "no fingerprint" */
	return 0;
}

/* Every probe handler ends with this: a statement it finished is hashed by
 * the tail-called fp_chunk, after the handler's own map updates are done. */
static __always_inline void digest_tail(struct pt_regs *ctx)
{
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (w && w->pending)
		fp_chain.call(ctx, 0);
}
#else
static __always_inline void digest_tail(struct pt_regs *ctx)
{
}
#endif

#if ENGINE == ENGINE_POSTGRES
/*
 * PostgreSQL: one event per executed statement, on every protocol.
 *
 * A backend reports every protocol message it starts working on through
 * pgstat_report_activity(STATE_RUNNING, text): simple Query, Parse, Bind and
 * Execute alike (src/backend/tcop/postgres.c, exec_simple_query,
 * exec_parse_message, exec_bind_message, exec_execute_message). It reports
 * again, with no text, when it goes idle before ReadyForQuery. The USDT probe
 * statement__status is the first statement of that function
 * (src/backend/utils/activity/backend_status.c in PG 14+), so both give the
 * same edges.
 *
 * A "window" runs from that report to the entry of check_log_duration(),
 * which every exec_* function above calls last, and which takes the end
 * timestamp of the server's own log_min_duration_statement line. Windows
 * that ran a portal (PortalRun: USDT query__execute__start, or a uprobe on
 * PortalRun) are a simple Query or an Execute; windows without one are Parse
 * or Bind, and their time is carried into the next statement that executes.
 * So an extended-protocol statement's latency is parse + bind + execute,
 * which is what the server's log lines add up to. A window that never
 * reaches check_log_duration (an error) closes at the next report.
 *
 * The text is read only when a statement is reported (or fails): at
 * check_log_duration() the latest window's text is still valid.
 *
 * Errors: the backend's error recovery in PostgresMain calls
 * AbortCurrentTransaction() before it reports idle, so a uprobe there marks
 * the open window as failed (this covers query cancels too).
 *
 * Config: USE_USDT (1: USDT probes, 0: uprobes on exported functions),
 * PG_STATE_RUNNING (BackendState value of STATE_RUNNING, per version).
 */

struct pg_inflight {
	u64 window_start_ns; /* 0 when no message is being processed */
	u64 pending_ns;      /* earlier windows of this statement */
	u64 text_ptr;        /* the text reported for the latest window */
	u8 executed;         /* a portal ran in the current window */
	u8 has_text;         /* the statement has started (its first window opened) */
	u8 text_copied;      /* ev.text holds its text */
	u8 pad[5];
	u64 last_app_ptr;    /* application_name's pointer already sent in a KIND_APP note */
	struct query_event ev;
};

BPF_HASH(inflight, u32, struct pg_inflight, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(inflight_zero, struct pg_inflight, 1);

static __always_inline void copy_text(struct pg_inflight *v, const char *text)
{
	v->text_copied = 1;
	copy_cstr(&v->ev, text);
}

static __always_inline void end_statement(struct pg_inflight *v)
{
	v->ev.duration_ns = v->pending_ns;
#if MODE != MODE_HIST
	/* The text is read only for statements that will be reported. The
	 * latest window's text is still valid here: check_log_duration() runs
	 * inside the exec_* function that reported it. */
	if (v->pending_ns >= THRESHOLD_NS && !v->text_copied)
		copy_text(v, (const char *)v->text_ptr);
#endif
	finish_statement(&v->ev);
	v->pending_ns = 0;
	v->has_text = 0;
	v->executed = 0;
	v->ev.flags = 0;
}

static __always_inline void close_window(struct pg_inflight *v, u64 now)
{
	v->pending_ns += now - v->window_start_ns;
	v->window_start_ns = 0;
	if (v->executed || (v->ev.flags & EV_FAILED))
		end_statement(v);
}

static __always_inline int on_status(const char *text, int running)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!pid_traced(tgid))
		return 0;
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		close_window(v, now);
	if (!running || !text) {
		/* Idle after a Parse or Bind with no Execute (say, a prepare on
		 * its own Sync): keep its time for the next statement, which
		 * the server's parse+bind+execute sum includes, but not its
		 * text, which may belong to another statement. */
		if (v)
			v->has_text = 0;
		return 0;
	}
	if (!v) {
		u32 zero = 0;
		struct pg_inflight *init = inflight_zero.lookup(&zero);
		if (!init)
			return 0;
		if (inflight.update(&tid, init) != 0) {
			count(CTR_INFLIGHT_FULL);
			return 0;
		}
		v = inflight.lookup(&tid);
		if (!v)
			return 0;
	}
	v->window_start_ns = now;
	v->executed = 0;
	v->text_ptr = (u64)text;
	if (!v->has_text) {
		/* First window of a statement: it starts here. */
		v->has_text = 1;
		v->text_copied = 0;
		v->ev.start_ns = now;
		v->ev.pid = tgid;
		v->ev.tid = tid;
		v->ev.flags = 0;
		v->ev.text_len = 0;
		v->ev.db_id = 0;
		v->ev.server_id = 0;
#if SERVER_IDS
		struct proc_info *pp = procs.lookup(&tgid);
		v->ev.app_ptr = 0;
		if (pp) {
			v->ev.server_id = pp->server_id;
			if (pp->db_id_addr)
				bpf_probe_read_user(&v->ev.db_id, sizeof(v->ev.db_id), (void *)pp->db_id_addr);
			if (pp->app_name_addr)
				bpf_probe_read_user(&v->ev.app_ptr, sizeof(v->ev.app_ptr), (void *)pp->app_name_addr);
		}
		if (v->ev.app_ptr != v->last_app_ptr) {
			/* A new connection, or SET application_name: send the name
			 * now, while the backend surely lives, once per change. */
			v->last_app_ptr = v->ev.app_ptr;
			send_note(KIND_APP, tgid, tid, v->ev.app_ptr, (const char *)v->ev.app_ptr);
		}
#endif
	}
	return 0;
}

static __always_inline int on_execute(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		v->executed = 1;
	return 0;
}

#if USE_USDT
int pg_status(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 text = 0;
	bpf_usdt_readarg(1, ctx, &text);
	on_status((const char *)text, text != 0);
	digest_tail(ctx);
	return 0;
}

int pg_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	return on_execute();
}
#else
/* pgstat_report_activity(BackendState state, const char *cmd_str) */
int pg_status(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	int state = (int)PT_REGS_PARM1(ctx);
	const char *text = (const char *)PT_REGS_PARM2(ctx);
	on_status(text, state == PG_STATE_RUNNING);
	digest_tail(ctx);
	return 0;
}

/* PortalRun(Portal portal, ...) */
int pg_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	return on_execute();
}
#endif

/* check_log_duration(char *msec_str, bool was_logged): end of a message */
int pg_msg_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		close_window(v, now);
	digest_tail(ctx);
	return 0;
}

/* AbortCurrentTransaction(void): error recovery of the statement in flight */
int pg_abort(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns) {
		v->ev.flags |= EV_FAILED;
		/* Copy the text now: error recovery frees the message's memory
		 * before the window closes. */
		if (!v->text_copied)
			copy_text(v, (const char *)v->text_ptr);
	}
	return 0;
}
#endif /* ENGINE_POSTGRES */

#if ENGINE == ENGINE_MYSQL
/*
 * MySQL and MariaDB: one event per statement run through COM_QUERY,
 * COM_STMT_EXECUTE or COM_STMT_BULK_EXECUTE.
 *
 * Uprobe path (no USDT: Debian's MariaDB, MySQL 8): dispatch_command()
 * entry and return bound each command. The reported time runs from the
 * first probe after the server stamps the statement's start (THD::set_time()
 * in dispatch_command): mysql_parse() for COM_QUERY, Prepared_statement::
 * execute() for COM_STMT_EXECUTE, else dispatch_command() itself; to
 * Protocol::end_statement(), right after it stamps the end. Stamping after
 * the server, not before, keeps a task switch on the return from a probe's
 * trap inside both the server's window and ours. Its signature differs by server; the
 * argument positions come from the table in dbslower/quirks.py as DC_* flags.
 *  - COM_QUERY text is copied at entry (packet, or COM_DATA's query field).
 *  - Several statements in one COM_QUERY: MariaDB calls mysql_parse() once
 *    per statement and slow-logs each on its own, so with SPLIT_MULTI each
 *    further mysql_parse() call ends the previous statement.
 *  - Prepared statements: Prepared_statement::prepare(this, text, len) saves
 *    the text by (process, this) until ~Prepared_statement; execute(this,..)
 *    links the running command to it.
 *  - Errors: my_message_sql() is the server's error sink; calls without the
 *    note/warning flags mark the statement failed.
 *
 * USDT path (MySQL 5.x, MariaDB with ENABLE_DTRACE): query__start(query,
 * connid, db, user, host) and query__done(status).
 */

struct my_inflight {
	u64 end_ns;   /* last Protocol::end_statement() entry: the statement's end */
	u64 stmt_ptr; /* start of the current statement inside a multi-statement packet */
	u64 ps;       /* Prepared_statement* being executed */
	u32 nparse;
	u32 pad;
	struct query_event ev;
};

struct ps_key {
	u64 ps;
	u32 tgid;
	u32 pad;
};

struct ps_text {
	u32 len;
	u8 truncated;
	u8 pad[3];
	char text[TEXT_BYTES + 1];
};

BPF_HASH(inflight, u32, struct my_inflight, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(inflight_zero, struct my_inflight, 1);

static __always_inline struct my_inflight *start_inflight(u64 now, u64 id)
{
	u32 tid = (u32)id, zero = 0;
	struct my_inflight *init = inflight_zero.lookup(&zero);
	if (!init)
		return 0;
	if (inflight.update(&tid, init) != 0) {
		count(CTR_INFLIGHT_FULL);
		return 0;
	}
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	v->ev.start_ns = now;
	v->ev.pid = id >> 32;
	v->ev.tid = tid;
#if SERVER_IDS
	u32 tgid = id >> 32;
	struct proc_info *pp = procs.lookup(&tgid);
	if (pp)
		v->ev.server_id = pp->server_id;
#endif
	return v;
}

/* Copies len bytes of statement text (not NUL-terminated) into ev. */
static __always_inline void copy_counted(struct query_event *ev, const char *text, u64 len)
{
	if (len > TEXT_BYTES)
		ev->flags |= EV_TRUNCATED;
	u32 n = bounded_len(len);
	if (bpf_probe_read_user(ev->text, n, text) < 0) {
		ev->flags |= EV_NO_TEXT;
		n = 0;
	}
	ev->text_len = n;
}

#if USE_USDT
int my_query_start(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!pid_traced(id >> 32))
		return 0;
	struct my_inflight *v = start_inflight(now, id);
	if (!v)
		return 0;
	u64 query = 0, connid = 0, db = 0, user = 0, host = 0;
	bpf_usdt_readarg(1, ctx, &query);
	bpf_usdt_readarg(2, ctx, &connid);
	bpf_usdt_readarg(3, ctx, &db);
	bpf_usdt_readarg(4, ctx, &user);
	bpf_usdt_readarg(5, ctx, &host);
	v->ev.conn_id = connid;
	v->ev.command = COM_QUERY;
	copy_cstr(&v->ev, (const char *)query);
	if (db)
		bpf_probe_read_user_str(v->ev.db, sizeof(v->ev.db), (void *)db);
	if (user)
		bpf_probe_read_user_str(v->ev.user, sizeof(v->ev.user), (void *)user);
	if (host)
		bpf_probe_read_user_str(v->ev.host, sizeof(v->ev.host), (void *)host);
	return 0;
}

int my_query_done(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	/* bcc reads an argument only into a variable of its exact size:
	 * query__done(int status), per sql/probes_mysql.d */
	int status = 0;
	bpf_usdt_readarg(1, ctx, &status);
	if (status != 0)
		v->ev.flags |= EV_FAILED;
	v->ev.duration_ns = now - v->ev.start_ns;
	finish_statement(&v->ev);
	inflight.delete(&tid);
	digest_tail(ctx);
	return 0;
}

#else /* uprobes */

#define ARG(ctx, n) ((n) == 1 ? PT_REGS_PARM1(ctx) : (n) == 2 ? PT_REGS_PARM2(ctx) : \
		     (n) == 3 ? PT_REGS_PARM3(ctx) : (n) == 4 ? PT_REGS_PARM4(ctx) : \
		     (n) == 5 ? PT_REGS_PARM5(ctx) : PT_REGS_PARM6(ctx))

BPF_HASH(ps_texts, struct ps_key, struct ps_text, PS_ENTRIES);
BPF_PERCPU_ARRAY(ps_zero, struct ps_text, 1);

static __always_inline int traced_command(u32 cmd)
{
	return cmd == COM_QUERY || cmd == COM_STMT_EXECUTE || cmd == COM_STMT_BULK_EXECUTE;
}

int my_dispatch_entry(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!pid_traced(id >> 32))
		return 0;
	u32 cmd = (u32)ARG(ctx, DC_CMD_ARG);
	if (!traced_command(cmd)) {
		u32 tid = (u32)id;
		inflight.delete(&tid);
		return 0;
	}
	struct my_inflight *v = start_inflight(now, id);
	if (!v)
		return 0;
	v->ev.command = cmd;
#if THD_CONN_ID_OFFSET >= 0
	u64 thd = ARG(ctx, DC_THD_ARG);
	bpf_probe_read_user(&v->ev.conn_id, sizeof(u64), (void *)(thd + THD_CONN_ID_OFFSET));
#endif
	if (cmd != COM_QUERY)
		return 0;
#if DC_TEXT_MODE == DC_TEXT_PACKET
	const char *packet = (const char *)ARG(ctx, DC_PACKET_ARG);
	u64 len = (u32)ARG(ctx, DC_LEN_ARG);
#else
	/* COM_DATA: union whose com_query member starts {const char *query; unsigned length;} */
	const char *com_data = (const char *)ARG(ctx, DC_COMDATA_ARG);
	const char *packet = 0;
	u32 len = 0;
	bpf_probe_read_user(&packet, sizeof(packet), com_data);
	bpf_probe_read_user(&len, sizeof(len), com_data + 8);
#endif
	v->stmt_ptr = (u64)packet;
	copy_counted(&v->ev, packet, len);
	return 0;
}

int my_dispatch_return(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	v->ev.duration_ns = (v->end_ns ? v->end_ns : now) - v->ev.start_ns;
	if (v->ev.command != COM_QUERY && v->ev.duration_ns >= THRESHOLD_NS) {
		struct ps_key k = {.ps = v->ps, .tgid = tgid};
		struct ps_text *t = v->ps ? ps_texts.lookup(&k) : 0;
		if (t) {
			u32 n = bounded_len(t->len);
			bpf_probe_read_kernel(v->ev.text, n, t->text);
			v->ev.text_len = n;
			if (t->truncated)
				v->ev.flags |= EV_TRUNCATED;
		} else {
			v->ev.flags |= EV_NO_TEXT;
			count(CTR_NO_TEXT);
		}
	}
	finish_statement(&v->ev);
	inflight.delete(&tid);
	digest_tail(ctx);
	return 0;
}

#if SPLIT_MULTI
/* mysql_parse(THD *thd, char *rawbuf, uint length, Parser_state *) */
int my_parse(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v || v->ev.command != COM_QUERY)
		return 0;
	u64 raw = PT_REGS_PARM2(ctx);
	u64 len = (u32)PT_REGS_PARM3(ctx);
	if (v->nparse++ == 0) {
		/* alloc_query() copied the packet: later statements point into
		 * this copy, not into the packet seen at dispatch_command. */
		v->stmt_ptr = raw;
		v->ev.start_ns = now;
		return 0;
	}
	/* The previous statement ends where this one starts. */
	if (raw > v->stmt_ptr && raw - v->stmt_ptr < v->ev.text_len)
		v->ev.text_len = raw - v->stmt_ptr;
	v->ev.duration_ns = (v->end_ns ? v->end_ns : now) - v->ev.start_ns;
	v->end_ns = 0;
	finish_statement(&v->ev);
	v->ev.start_ns = now;
	v->ev.flags = 0;
	v->stmt_ptr = raw;
	copy_counted(&v->ev, (const char *)raw, len);
	digest_tail(ctx);
	return 0;
}
#endif

/* Protocol::end_statement(): the server has just taken a statement's end
 * time and is about to answer the client. The last call before a statement
 * is reported is its end. */
int my_stmt_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (v)
		v->end_ns = bpf_ktime_get_ns();
	return 0;
}

/* Prepared_statement::prepare(const char *packet, uint packet_length) */
int my_ps_prepare(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(tgid))
		return 0;
	struct ps_key k = {.ps = PT_REGS_PARM1(ctx), .tgid = tgid};
	u32 zero = 0;
	struct ps_text *init = ps_zero.lookup(&zero);
	if (!init)
		return 0;
	if (ps_texts.update(&k, init) != 0) {
		count(CTR_MAP_FULL);
		return 0;
	}
	struct ps_text *t = ps_texts.lookup(&k);
	if (!t)
		return 0;
	const char *text = (const char *)PT_REGS_PARM2(ctx);
	u64 len = (u32)PT_REGS_PARM3(ctx);
	t->truncated = len > TEXT_BYTES;
	u32 n = bounded_len(len);
	if (bpf_probe_read_user(t->text, n, text) < 0)
		n = 0;
	t->len = n;
	return 0;
}

/* Prepared_statement::execute(String *expanded_query, bool open_cursor) */
int my_ps_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (v && v->ev.command != COM_QUERY && !v->ps) {
		v->ps = PT_REGS_PARM1(ctx);
		v->ev.start_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* Prepared_statement::~Prepared_statement(): `this` may be reused after it */
int my_ps_destroy(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	struct ps_key k = {.ps = PT_REGS_PARM1(ctx), .tgid = bpf_get_current_pid_tgid() >> 32};
	ps_texts.delete(&k);
	return 0;
}

/* my_message_sql(uint error, const char *str, myf MyFlags) */
int my_error(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 flags = PT_REGS_PARM3(ctx);
	if (flags & (ME_NOTE | ME_WARNING))
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (v)
		v->ev.flags |= EV_FAILED;
	return 0;
}
#endif
#endif /* ENGINE_MYSQL */

/*
 * Per-thread and per-process state goes with its thread or process, so a
 * reused PID starts clean: a statement left open by a killed or terminated
 * backend would otherwise be closed by the next process given that PID, as
 * a phantom statement with another process's text. Such a statement never
 * finished, so it is not reported; it is counted (CTR_EXITED).
 */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	void *v = inflight.lookup(&tid);
	if (v) {
#if ENGINE == ENGINE_POSTGRES
		if (((struct pg_inflight *)v)->has_text)
			count(CTR_EXITED);
#else
		count(CTR_EXITED);
#endif
		inflight.delete(&tid);
	}
	/* Only the group leader's exit ends the process. */
	if (tid != tgid)
		return 0;
#if FILTER_PIDS
	traced_pids.delete(&tgid);
#endif
#if SERVER_IDS
	if (procs.lookup(&tgid)) {
		procs.delete(&tgid);
		/* User space caches what it read of this process (title, server):
		 * tell it the PID is free, so a process reusing it is read afresh. */
		send_note(KIND_EXIT, tgid, tid, 0, 0);
	}
#endif
	return 0;
}
