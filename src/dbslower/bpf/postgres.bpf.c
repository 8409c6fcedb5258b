/*
 * PostgreSQL: one event per executed statement, on every protocol.
 *
 * A "window" is one protocol message a backend works on: a simple Query,
 * Parse, Bind or Execute (src/backend/tcop/postgres.c, exec_simple_query,
 * exec_parse_message, exec_bind_message, exec_execute_message). Each ends by
 * calling check_log_duration(), which takes the end timestamp of the
 * server's own log_min_duration_statement line. Windows that ran a portal
 * (PortalRun: USDT query__execute__start, or a uprobe on PortalRun) are a
 * simple Query or an Execute; those without one are Parse or Bind. So an
 * extended-protocol statement's latency is parse + bind + execute, which is
 * what the server's log lines add up to:
 *  - a Parse's time goes to the prepared statement it created (named or
 *    unnamed): SaveCachedPlan(plansource) runs in every Parse, and the Bind
 *    that later uses the statement reports plansource->query_string as its
 *    text, so the time waits in a slot keyed by that pointer (PARSE_SLOTS
 *    per backend: drivers that prepare ahead, as asyncpg does, run other
 *    statements in between);
 *  - a Bind's time goes to the statement executed next.
 *
 * Where a window starts, two machines (PG_SERVER_TIMES):
 *
 * 1: the server's own start. PostgresMain stamps stmtStartTimestamp
 *    (SetCurrentStatementStartTimestamp, src/backend/access/transam/xact.c)
 *    when it takes a Query, Parse, Bind or Execute message, and the log
 *    line's duration is check_log_duration's clock minus that stamp. It is a
 *    static variable; plan.py finds it in the exported accessor
 *    GetCurrentStatementStartTimestamp(), and the statement's text in the
 *    exported debug_query_string, which every exec_* function sets to its
 *    text first and clears last. Both are read at check_log_duration, so no
 *    probe marks a window's start: a window is the server's own stamp to
 *    the end of check_log_duration's entry, on the server's clock
 *    (gettimeofday: bpf_ktime_get_tai_ns() minus the TAI offset).
 *
 * 0: a window runs from pgstat_report_activity(STATE_RUNNING, text) (USDT
 *    statement__status, its first statement since PG 14) to
 *    check_log_duration; the backend reports that for every message above,
 *    and again, idle, before ReadyForQuery. For builds whose accessor has
 *    another shape.
 *
 * A statement that executed is done when its last window closes, but it is
 * reported after the backend's Sync: an autocommit statement sent with the
 * extended protocol commits there, after its Execute's window, and an error
 * there (a deferred constraint) must still mark it failed. Machine 1 reports
 * it at the backend's next send() (the sendto syscall tracepoint, as cheap
 * as a probe gets; ReadyForQuery() flushes with send(); in the digest modes
 * the tracepoint has its own fingerprint chain, DIGEST_TP_CHAIN); machine 0
 * at the backend's next state report. Either also
 * reports it when the backend's next message starts (pipelines).
 *
 * Errors: the backend's error recovery in PostgresMain calls
 * AbortCurrentTransaction(), so a uprobe there marks the open (or done)
 * statement failed; this covers query cancels too. The error's SQLSTATE is
 * the argument of the errcode() call that follows errstart_cold(), which
 * every ereport(ERROR, ...) with a constant level calls
 * (src/include/utils/elog.h, PG 13+); an elog(ERROR) without errcode() is
 * XX000, as the server reports it. Machine 1 learns at errstart_cold that
 * the error is inside a message (debug_query_string is set; recovery clears
 * it before AbortCurrentTransaction) and which message (stmtStartTimestamp
 * newer than the last window's: a new one; the same: the commit at Sync).
 *
 * The text is read only when a statement will be reported (or fails): when
 * its last window closes, the text reported for that window is still valid.
 *
 * Config: PG_SERVER_TIMES with PG_END_VADDR, PG_ERRSTART_VADDR (the file
 * addresses of check_log_duration and errstart_cold), PG_STMT_START_VADDR,
 * PG_DEBUG_QUERY_VADDR, PG_WORKER_NUMBER_VADDR (of stmtStartTimestamp,
 * debug_query_string, ParallelWorkerNumber) and PG_TAI_OFFSET_NS; or
 * USE_USDT and PG_STATE_RUNNING (BackendState value of STATE_RUNNING, per
 * version). PG_PARSE_SLOTS (1: SaveCachedPlan is probed) with
 * PG_PLANSOURCE_QUERY_STRING (offset of CachedPlanSource.query_string).
 * DIGEST_TP_CHAIN (common.bpf.c) in the digest modes of machine 1.
 */

#define PARSE_SLOTS 4
/* TimestampTz counts microseconds from 2000-01-01 UTC (src/include/datatype/timestamp.h) */
#define PG_EPOCH_UNIX_US 946684800000000ULL

struct pg_inflight {
	u64 window_start_ns; /* machine 0: 0 when no message is being processed */
	u64 pending_ns;      /* earlier windows of this statement */
	u64 text_ptr;        /* the text reported for the latest window (machine 1: read
	                      * when needed, see window_text) */
	u64 saved_src;       /* SaveCachedPlan in the current window: its query_string */
	u64 parse_src[PARSE_SLOTS]; /* a Parse's statement (its query_string)... */
	u64 parse_ns[PARSE_SLOTS];  /* ...and the Parse's time, until a Bind uses it */
	u64 last_start_us;   /* machine 1: stmtStartTimestamp of the last window closed */
	u64 msg_start_us;    /* machine 1: ...and of the message an error was raised in */
	u32 parse_next;      /* the slot a new Parse takes when none is free */
	u8 executed;         /* a portal ran in the current window */
	u8 has_text;         /* the statement has started (its first window opened) */
	u8 text_copied;      /* ev.text holds its text */
	u8 done;             /* its last window closed: reported at the next state report */
	u8 error_pending;    /* errstart_cold() ran: errcode() calls are the error's */
	u8 client;           /* a client backend (see engine_thread_exit) */
	u8 in_msg;           /* machine 1: an ERROR was raised in a message not closed yet */
	u8 pad[5];
	struct pg_backend backend;
	struct query_event ev;
};

BPF_HASH(inflight, u32, struct pg_inflight, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(inflight_zero, struct pg_inflight, 1);

/* Thread tid's entry, made when it has none and its process is traced.
 * NULL when it is not, or the table is full: counted when a statement is
 * lost that way (lost_if_full). */
static __always_inline struct pg_inflight *thread_entry(u32 tgid, u32 tid, int lost_if_full)
{
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v)
		return v; /* made only for a traced process: no filter lookup at every hit */
	if (!pid_traced(tgid))
		return 0;
	u32 zero = 0;
	struct pg_inflight *init = inflight_zero.lookup(&zero);
	if (!init || inflight.update(&tid, init) != 0) {
		if (lost_if_full)
			count(CTR_INFLIGHT_FULL);
		return 0;
	}
	return inflight.lookup(&tid);
}

/* The statement will leave the kernel with its text (and application_name). */
static __always_inline void copy_text(struct pg_inflight *v, const char *text)
{
	v->text_copied = 1;
	copy_cstr(&v->ev, text);
	pg_app(&v->ev, &v->backend, v->ev.pid, v->ev.tid);
}

static __always_inline void end_statement(struct pg_inflight *v)
{
	v->ev.duration_ns = v->pending_ns;
	finish_statement(&v->ev);
	v->pending_ns = 0;
	v->has_text = 0;
	v->executed = 0;
	v->done = 0;
	v->error_pending = 0;
	v->ev.flags = 0;
	v->ev.error_code = 0;
}

/* errstart_cold() ran for this statement: the errcode() calls that follow
 * are its error's; an elog(ERROR) makes none (XX000). */
static __always_inline void error_starts(struct pg_inflight *v)
{
	v->error_pending = 1;
	v->ev.error_code = PG_ERRCODE_INTERNAL;
}

/* The closing window's text: read now from the pointer at text_at in user
 * memory (machine 1: debug_query_string, read only by a window that needs
 * its text), or held in text_ptr already (text_at NULL: machine 0). */
static __always_inline const char *window_text(struct pg_inflight *v, const void *text_at)
{
	if (text_at)
		bpf_probe_read_user(&v->text_ptr, sizeof(v->text_ptr), text_at);
	return (const char *)v->text_ptr;
}

#if PG_PARSE_SLOTS
/* A Parse's window closed: keep its time for the Bind of its statement. */
static __always_inline void keep_parse(struct pg_inflight *v, u64 src, u64 ns)
{
	u32 i = v->parse_next % PARSE_SLOTS;
	for (u32 k = 0; k < PARSE_SLOTS; k++) {
		if (v->parse_src[k] == src || v->parse_src[k] == 0) {
			i = k;
			break;
		}
	}
	v->parse_next = i + 1;
	i &= PARSE_SLOTS - 1;
	v->parse_src[i] = src;
	v->parse_ns[i] = ns;
}

/* A Bind's window closed: the time of the Parse of the statement it binds,
 * if kept (a Bind reports its statement's query_string as its text). */
static __always_inline u64 take_parse(struct pg_inflight *v, const void *text_at)
{
	u64 kept = 0;
	for (u32 k = 0; k < PARSE_SLOTS; k++)
		kept |= v->parse_src[k];
	if (!kept)
		return 0; /* no Parse waits (prepared once, or simple protocol): no text to read */
	u64 src = (u64)window_text(v, text_at);
	for (u32 k = 0; k < PARSE_SLOTS; k++) {
		if (v->parse_src[k] == src) {
			v->parse_src[k] = 0;
			return v->parse_ns[k];
		}
	}
	return 0;
}
#endif

/* A window of ns closed: it ends its statement (a portal ran, or it failed),
 * or its time waits for the statement that follows. text_at: see window_text. */
static __always_inline void close_window(struct pg_inflight *v, u64 ns, const void *text_at)
{
	if (v->executed || (v->ev.flags & EV_FAILED)) {
		v->pending_ns += ns;
		v->done = 1;
#if MODE != MODE_HIST
		if (v->pending_ns >= THRESHOLD_NS && !v->text_copied) {
			const char *text = window_text(v, text_at);
			/* serve: a statement under its slow threshold is only
			 * counted, by its first word */
			if (needs_full_text(v->pending_ns)) {
				copy_text(v, text);
			} else {
				v->text_copied = 1;
				copy_op_prefix(&v->ev, text);
			}
		}
#endif
		return;
	}
#if PG_PARSE_SLOTS
	if (v->saved_src) {
		keep_parse(v, v->saved_src, ns);
		v->saved_src = 0;
		v->has_text = 0; /* the statement starts at its Bind */
		return;
	}
	ns += take_parse(v, text_at);
#endif
	v->pending_ns += ns;
}

/* The first window of a statement: it started start_ns ago (ktime). */
static __always_inline void start_statement(struct pg_inflight *v, u64 start_ns, u32 tgid, u32 tid)
{
	v->has_text = 1;
	v->text_copied = 0;
	start_event(&v->ev, start_ns, tgid, tid);
	pg_context(&v->ev, &v->backend, tgid);
}

#if PG_SERVER_TIMES
/* Where a global at file address vaddr is in this process: a uprobe runs
 * with the probed function's address (at file address fn_vaddr) in IP. */
static __always_inline void *global_at(struct pt_regs *ctx, u64 fn_vaddr, u64 vaddr)
{
	return (void *)(PT_REGS_IP(ctx) - fn_vaddr + vaddr);
}

/* Now on the server's clock (gettimeofday), in ns since the Unix epoch. */
static __always_inline u64 server_clock_ns(void)
{
	return bpf_ktime_get_tai_ns() - PG_TAI_OFFSET_NS;
}

/* When every probe was attached, on the server's clock (ns; set by load.py
 * once they all are, 0 before). A window that started earlier may have run
 * its portal unseen: unless a portal or a Parse's SaveCachedPlan was seen in
 * it, it is not taken for a Bind's time (which would go to the next
 * statement); it belongs to a statement that ran before tracing. */
BPF_ARRAY(pg_traced_since, u64, 1);

static __always_inline int started_traced(u64 start_ns)
{
	u32 zero = 0;
	u64 *since = pg_traced_since.lookup(&zero);
	return since && *since && start_ns >= *since;
}

/* How long ago (ns) the message stamped start_us started; 0 when the stamp
 * cannot be this message's: unset, in the future, or before boot. */
static __always_inline u64 since_stamp_ns(u64 start_us, u64 clock_ns, u64 now)
{
	u64 start_ns = (start_us + PG_EPOCH_UNIX_US) * 1000;
	if (!start_us || start_ns > clock_ns || clock_ns - start_ns > now)
		return 0;
	return clock_ns - start_ns;
}

/* check_log_duration(char *msec_str, bool was_logged): end of a message */
int pg_msg_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 clock_ns = server_clock_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct pg_inflight *v = thread_entry(tgid, tid, 1);
	if (!v)
		return 0;
	u64 start_us = 0;
	bpf_probe_read_user(&start_us, sizeof(start_us), global_at(ctx, PG_END_VADDR, PG_STMT_START_VADDR));
	if (v->done)
		end_statement(v); /* a pipelined statement: this message came after it */
	v->client = 1;
	v->in_msg = 0;
	v->error_pending = 0;
	u64 ns = since_stamp_ns(start_us, clock_ns, now);
	if (!ns) {
		count(CTR_NO_TIMES);
	} else if (!v->executed && !v->saved_src && !started_traced(clock_ns - ns)) {
		/* began before tracing: its portal may have run unseen */
	} else {
		v->last_start_us = start_us;
		if (!v->has_text)
			start_statement(v, now - ns, tgid, tid);
		close_window(v, ns, global_at(ctx, PG_END_VADDR, PG_DEBUG_QUERY_VADDR));
	}
	v->executed = 0;
	v->saved_src = 0;
	digest_tail(ctx);
	return 0;
}

/* The backend answers: a done statement's transaction has ended (Sync). */
static __always_inline void pg_report(u32 tid)
{
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v || v->error_pending)
		return; /* the error's report is flushed before the abort reports it */
	v->saved_src = 0; /* SaveCachedPlan by a commit's triggers is no Parse */
	if (v->done)
		end_statement(v);
	else if (!v->executed)
		/* Idle after a Bind with no Execute: keep its time for the
		 * next statement, which the server's parse+bind+execute sum
		 * includes, but start that statement at its own window. */
		v->has_text = 0;
}

/* ReadyForQuery() flushes with send(); so does every other reply, which
 * finds no done statement, or one whose commit has run. */
TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	FLOOR_RETURN();
	pg_report((u32)bpf_get_current_pid_tgid());
	digest_tail_tp(args);
	return 0;
}

/* errstart_cold(int elevel, const char *domain): an ERROR or worse starts */
int pg_errstart(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!pid_traced(tgid))
		return 0;
	u64 text = 0, start_us = 0;
	bpf_probe_read_user(&text, sizeof(text), global_at(ctx, PG_ERRSTART_VADDR, PG_DEBUG_QUERY_VADDR));
	struct pg_inflight *v;
	if (!text) {
		/* Between messages: the commit at Sync of a done statement. */
		v = inflight.lookup(&tid);
		if (v && v->done)
			error_starts(v);
		return 0;
	}
	/* A parallel worker runs its leader's statement, with its text: the
	 * leader reports it (src/backend/access/transam/parallel.c). */
	int worker = -1;
	bpf_probe_read_user(&worker, sizeof(worker), global_at(ctx, PG_ERRSTART_VADDR, PG_WORKER_NUMBER_VADDR));
	if (worker >= 0)
		return 0;
	bpf_probe_read_user(&start_us, sizeof(start_us), global_at(ctx, PG_ERRSTART_VADDR, PG_STMT_START_VADDR));
	v = thread_entry(tgid, tid, 1);
	if (!v)
		return 0;
	if (v->done && start_us != v->last_start_us)
		end_statement(v); /* done before this message started */
	if (!v->done) {
		v->in_msg = 1;
		v->msg_start_us = start_us;
		v->text_ptr = text;
	}
	error_starts(v);
	digest_tail(ctx);
	return 0;
}

/* AbortCurrentTransaction(void): error recovery of the message in flight,
 * or of the statement whose commit failed at Sync after its last window.
 * Either is reported now: nothing later changes it. */
int pg_abort(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 clock_ns = server_clock_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	int failed = v->done;
	if (v->in_msg) {
		v->in_msg = 0;
		v->client = 1;
		v->saved_src = 0;
		v->last_start_us = v->msg_start_us;
		u64 ns = since_stamp_ns(v->msg_start_us, clock_ns, now);
		failed = ns != 0;
		if (!ns) {
			count(CTR_NO_TIMES);
			v->has_text = 0;
			v->pending_ns = 0;
			v->executed = 0;
		} else {
			u32 code = v->ev.error_code;
			if (!v->has_text)
				start_statement(v, now - ns, tgid, tid);
			v->ev.error_code = code;
			v->pending_ns += ns;
			/* error recovery frees the message's memory later */
			copy_text(v, (const char *)v->text_ptr);
		}
	}
	if (failed) {
		v->ev.flags |= EV_FAILED;
		end_statement(v);
	}
	v->error_pending = 0;
	digest_tail(ctx);
	return 0;
}

#else /* !PG_SERVER_TIMES */

static __always_inline int on_status(const char *text, int running)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!pid_traced(tgid))
		return 0;
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v) {
		if (v->window_start_ns) {
			close_window(v, now - v->window_start_ns, 0);
			v->window_start_ns = 0;
		}
		if (v->done)
			end_statement(v);
		if (!running || !text)
			/* Idle after a Bind with no Execute: keep its time for
			 * the next statement, which the server's parse+bind+
			 * execute sum includes, but not its text, which may
			 * belong to another statement. */
			v->has_text = 0;
	} else {
		/* A statement is lost; an idle report is not. */
		v = thread_entry(tgid, tid, running && text);
		if (!v)
			return 0;
	}
	if (!running || !text) {
		/* Parallel workers (ParallelQueryMain) and autovacuum workers
		 * (autovac_report_activity) report STATE_RUNNING with a text
		 * too, but never idle; a client backend reports idle before
		 * its first command (PostgresMain starts with
		 * send_ready_for_query set) and after each. */
		v->client = 1;
		return 0;
	}
	v->window_start_ns = now;
	v->executed = 0;
	v->saved_src = 0;
	v->text_ptr = (u64)text;
	if (!v->has_text) {
		/* First window of a statement: it starts here. */
		v->error_pending = 0;
		start_statement(v, now, tgid, tid);
	}
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
#endif

/* check_log_duration(char *msec_str, bool was_logged): end of a message */
int pg_msg_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns) {
		close_window(v, now - v->window_start_ns, 0);
		v->window_start_ns = 0;
	}
	return 0;
}

/* AbortCurrentTransaction(void): error recovery of the statement in flight,
 * or of the one whose commit failed at Sync after its last window */
int pg_abort(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	if (v->window_start_ns) {
		v->ev.flags |= EV_FAILED;
		/* Copy the text now: error recovery frees the message's memory
		 * before the window closes. */
		if (!v->text_copied)
			copy_text(v, (const char *)v->text_ptr);
	} else if (v->done) {
		v->ev.flags |= EV_FAILED;
	}
	v->error_pending = 0;
	return 0;
}

/* errstart_cold(int elevel, const char *domain): an ERROR or worse starts */
int pg_errstart(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && (v->window_start_ns || v->done))
		error_starts(v);
	return 0;
}
#endif /* PG_SERVER_TIMES */

/* USDT query__execute__start, or PortalRun(Portal portal, ...) */
int pg_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
#if PG_SERVER_TIMES
	/* Parallel workers do not run portals: a client backend's window. */
	struct pg_inflight *v = thread_entry(id >> 32, tid, 0);
	if (v) {
		v->executed = 1;
		v->client = 1;
	}
#else
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		v->executed = 1;
#endif
	return 0;
}

#if PG_PARSE_SLOTS
/* SaveCachedPlan(CachedPlanSource *plansource): a Parse saves its statement */
int pg_plan_saved(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
#if PG_SERVER_TIMES
	struct pg_inflight *v = thread_entry(id >> 32, tid, 0);
	if (!v || v->executed)
		return 0; /* PREPARE or PL/pgSQL inside a statement */
#else
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v || !v->window_start_ns || v->executed)
		return 0; /* not a Parse message: PREPARE or PL/pgSQL inside a statement */
#endif
	u64 src = 0;
	bpf_probe_read_user(&src, sizeof(src), (void *)(PT_REGS_PARM1(ctx) + PG_PLANSOURCE_QUERY_STRING));
	v->saved_src = src;
	return 0;
}
#endif

/* errcode(int sqlerrcode): the SQLSTATE of the report being built */
int pg_errcode(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->error_pending)
		v->ev.error_code = (u32)PT_REGS_PARM1(ctx);
	return 0;
}

/*
 * Only a client backend's open statement is one that did not finish.
 * Parallel and autovacuum workers run statements too (with their leader's
 * text, or their own), and exit when done; a backend is known as a client
 * once it reports idle (machine 0) or runs a portal or ends a message
 * (machine 1). A backend connected before tracing is known from then.
 */
static __always_inline int engine_thread_exit(u32 tid)
{
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	int open = v->client && (v->has_text || v->done || v->executed || v->in_msg);
	inflight.delete(&tid);
	return open;
}

static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
	/* no statement keeps its fingerprint here */
}
