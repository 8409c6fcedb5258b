/*
 * PostgreSQL: one event per executed statement, on every protocol.
 *
 * A backend reports every protocol message it starts working on through
 * pgstat_report_activity(STATE_RUNNING, text): simple Query, Parse, Bind and
 * Execute alike (src/backend/tcop/postgres.c, exec_simple_query,
 * exec_parse_message, exec_bind_message, exec_execute_message). It reports
 * again, with no text, when it goes idle before ReadyForQuery. The USDT probe
 * statement__status is the first statement of that function
 * (src/backend/utils/activity/backend_status.c in PG 14+), so both methods
 * (USE_USDT) give the same edges.
 *
 * A "window" runs from that report to the entry of check_log_duration(),
 * which every exec_* function above calls last, and which takes the end
 * timestamp of the server's own log_min_duration_statement line. Windows
 * that ran a portal (PortalRun: USDT query__execute__start, or a uprobe on
 * PortalRun) are a simple Query or an Execute; those without one are Parse
 * or Bind. So an extended-protocol statement's latency is parse + bind +
 * execute, which is what the server's log lines add up to:
 *  - a Parse's time goes to the prepared statement it created (named or
 *    unnamed): SaveCachedPlan(plansource) runs in every Parse, and the Bind
 *    that later uses the statement reports plansource->query_string as its
 *    text, so the time waits in a slot keyed by that pointer (PARSE_SLOTS
 *    per backend: drivers that prepare ahead, as asyncpg does, run other
 *    statements in between);
 *  - a Bind's time goes to the statement executed next.
 *
 * A statement that executed is done when its last window closes, but it is
 * reported at the backend's next state report: an autocommit statement sent
 * with the extended protocol commits at Sync, after its Execute's window,
 * and an error there (a deferred constraint) must still mark it failed.
 *
 * Errors: the backend's error recovery in PostgresMain calls
 * AbortCurrentTransaction() before it reports idle, so a uprobe there marks
 * the open (or done) statement failed; this covers query cancels too. The
 * error's SQLSTATE is the argument of the errcode() call that follows
 * errstart_cold(), which every ereport(ERROR, ...) with a constant level
 * calls (src/include/utils/elog.h, PG 13+); an elog(ERROR) without errcode()
 * is XX000, as the server reports it.
 *
 * The text is read only when a statement will be reported (or fails): when
 * its last window closes, the text reported for that window is still valid.
 *
 * Config: USE_USDT, PG_STATE_RUNNING (BackendState value of STATE_RUNNING,
 * per version), PG_PARSE_SLOTS (1: SaveCachedPlan is probed) with
 * PG_PLANSOURCE_QUERY_STRING (offset of CachedPlanSource.query_string).
 */

#define PARSE_SLOTS 4

struct pg_inflight {
	u64 window_start_ns; /* 0 when no message is being processed */
	u64 pending_ns;      /* earlier windows of this statement */
	u64 text_ptr;        /* the text reported for the latest window */
	u64 saved_src;       /* SaveCachedPlan in the current window: its query_string */
	u64 parse_src[PARSE_SLOTS]; /* a Parse's statement (its query_string)... */
	u64 parse_ns[PARSE_SLOTS];  /* ...and the Parse's time, until a Bind uses it */
	u64 last_app_ptr;    /* application_name's pointer already sent in a KIND_APP note */
	u32 parse_next;      /* the slot a new Parse takes when none is free */
	u8 executed;         /* a portal ran in the current window */
	u8 has_text;         /* the statement has started (its first window opened) */
	u8 text_copied;      /* ev.text holds its text */
	u8 done;             /* its last window closed: reported at the next state report */
	u8 error_pending;    /* errstart_cold() ran: errcode() calls are the error's */
	u8 client;           /* reported idle: a client backend (see engine_thread_exit) */
	u8 pad[6];
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
	finish_statement(&v->ev);
	v->pending_ns = 0;
	v->has_text = 0;
	v->executed = 0;
	v->done = 0;
	v->error_pending = 0;
	v->ev.flags = 0;
	v->ev.error_code = 0;
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

/* A Bind of the statement whose text is at src: its Parse's time, if kept. */
static __always_inline u64 take_parse(struct pg_inflight *v, u64 src)
{
	for (u32 k = 0; k < PARSE_SLOTS; k++) {
		if (v->parse_src[k] == src) {
			v->parse_src[k] = 0;
			return v->parse_ns[k];
		}
	}
	return 0;
}
#endif

static __always_inline void close_window(struct pg_inflight *v, u64 now)
{
	u64 ns = now - v->window_start_ns;
	v->window_start_ns = 0;
	if (v->executed || (v->ev.flags & EV_FAILED)) {
		v->pending_ns += ns;
		v->done = 1;
#if MODE != MODE_HIST
		if (v->pending_ns >= THRESHOLD_NS && !v->text_copied) {
			/* serve: a statement under its slow threshold is only
			 * counted, by its first word */
			if (needs_full_text(v->pending_ns)) {
				copy_text(v, (const char *)v->text_ptr);
			} else {
				v->text_copied = 1;
				copy_op_prefix(&v->ev, (const char *)v->text_ptr);
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
	ns += take_parse(v, v->text_ptr);
#endif
	v->pending_ns += ns;
}

static __always_inline int on_status(const char *text, int running)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!pid_traced(tgid))
		return 0;
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v) {
		if (v->window_start_ns)
			close_window(v, now);
		if (v->done)
			end_statement(v);
		if (!running || !text)
			/* Idle after a Bind with no Execute: keep its time for
			 * the next statement, which the server's parse+bind+
			 * execute sum includes, but not its text, which may
			 * belong to another statement. */
			v->has_text = 0;
	} else {
		u32 zero = 0;
		struct pg_inflight *init = inflight_zero.lookup(&zero);
		if (!init)
			return 0;
		if (inflight.update(&tid, init) != 0) {
			/* A statement is lost; an idle report is not. */
			if (running && text)
				count(CTR_INFLIGHT_FULL);
			return 0;
		}
		v = inflight.lookup(&tid);
		if (!v)
			return 0;
	}
	if (!running || !text) {
		v->client = 1;
		return 0;
	}
	v->window_start_ns = now;
	v->executed = 0;
	v->saved_src = 0;
	v->text_ptr = (u64)text;
	if (!v->has_text) {
		/* First window of a statement: it starts here. */
		v->has_text = 1;
		v->text_copied = 0;
		v->error_pending = 0;
		start_event(&v->ev, now, tgid, tid);
		pg_context(&v->ev, &v->last_app_ptr, tgid, tid);
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

/* USDT query__execute__start, or PortalRun(Portal portal, ...) */
int pg_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		v->executed = 1;
	return 0;
}

/* check_log_duration(char *msec_str, bool was_logged): end of a message */
int pg_msg_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (v && v->window_start_ns)
		close_window(v, now);
	return 0;
}

#if PG_PARSE_SLOTS
/* SaveCachedPlan(CachedPlanSource *plansource): a Parse saves its statement */
int pg_plan_saved(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v || !v->window_start_ns || v->executed)
		return 0; /* not a Parse message: PREPARE or PL/pgSQL inside a statement */
	u64 src = 0;
	bpf_probe_read_user(&src, sizeof(src), (void *)(PT_REGS_PARM1(ctx) + PG_PLANSOURCE_QUERY_STRING));
	v->saved_src = src;
	return 0;
}
#endif

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
	if (v && (v->window_start_ns || v->done)) {
		v->error_pending = 1;
		v->ev.error_code = PG_ERRCODE_INTERNAL;
	}
	return 0;
}

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
 * Only a client backend's open statement is one that did not finish. Parallel
 * workers (ParallelQueryMain) and autovacuum workers (autovac_report_activity)
 * report STATE_RUNNING with a text too, and exit without ever reporting idle;
 * a client backend reports idle before its first command (PostgresMain starts
 * with send_ready_for_query set) and after each, in src/backend/tcop/postgres.c.
 * A backend connected before tracing is known once it first goes idle.
 */
static __always_inline int engine_thread_exit(u32 tid)
{
	struct pg_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	int open = v->client && (v->has_text || v->done);
	inflight.delete(&tid);
	return open;
}

static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
	/* no statement keeps its fingerprint here */
}
