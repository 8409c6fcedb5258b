/*
 * MySQL and MariaDB without USDT probes (Debian's MariaDB, MySQL 8): uprobes
 * on exported functions.
 *
 * dispatch_command() entry starts each command; its signature differs by
 * server, and the argument positions come from the table in
 * dbslower/quirks.py as DC_* defines. A statement is reported where the
 * server decides whether to slow-log it, log_slow_statement()
 * (FINISH_AT_SLOW_LOG), so what is reported is what the slow log can show:
 * each statement of a multi-statement COM_QUERY (the next one starts there),
 * a CALL once. No return probe; builds without log_slow_statement report at
 * dispatch_command's return.
 *
 * Its times: where the THD's start_utime and utime_after_query can be
 * located (THD_UTIME_OFFSET, MariaDB), the very values the slow log's
 * Query_time is computed from, read when it is reported: 2 probe hits per
 * COM_QUERY. Otherwise from dispatch_command's entry to the last
 * Protocol::end_statement() before it is reported, which also runs for each
 * result set of a procedure inside a CALL: 3 hits.
 *
 * Read when it is reported, from the THD (offsets taken from the server's own
 * exported accessors, see quirks.py), and only for statements that will be
 * reported:
 *  - the text, thd->query_string: the statement as the server logs it,
 *    cut at its end inside a multi-statement packet (THD_QUERY_OFFSET);
 *    without it, the COM_QUERY packet is copied at dispatch_command;
 *  - the current database, thd->db (THD_DB_OFFSET), read for every
 *    statement in serve, whose metrics are labelled by it (db_namespace);
 * and for every statement, its status: the diagnostics area's final state,
 * the one Protocol::end_statement() sends as OK or ERR (THD_DA_OFFSET).
 * Without it, my_message_sql() calls mark failures (ERROR_SINK), minus the
 * flags that mean a note or warning in this server (NOT_ERROR_FLAGS).
 *
 * Prepared statements: Prepared_statement::prepare(this, text, len) saves
 * the text by (process, this) until ~Prepared_statement; execute(this, ...)
 * links the running command to it, and starts it (after the server's
 * THD::set_time()).
 */

#define ARG(ctx, n) ((n) == 1 ? PT_REGS_PARM1(ctx) : (n) == 2 ? PT_REGS_PARM2(ctx) : \
		     (n) == 3 ? PT_REGS_PARM3(ctx) : (n) == 4 ? PT_REGS_PARM4(ctx) : \
		     (n) == 5 ? PT_REGS_PARM5(ctx) : PT_REGS_PARM6(ctx))

struct ps_key {
	u64 ps;
	u32 tgid;
	u32 pad;
};

struct ps_text {
	u64 fp;         /* its kernel fingerprint, once hashed (digest mode); 0 before */
	u32 len;
	u8 truncated;
	u8 pad[3];
	char text[TEXT_BYTES + 1];
};

/* One entry per prepared statement alive in the traced servers; deleted by
 * ~Prepared_statement. PS_ENTRIES is MariaDB's max_prepared_stmt_count
 * default (16382), rounded up. A full table is counted (CTR_MAP_FULL). */
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
		struct my_inflight *idle = inflight.lookup(&tid);
		if (idle)
			idle->state = MY_IDLE;
		return 0;
	}
	struct my_inflight *v = start_inflight(now, id);
	if (!v)
		return 0;
	v->ev.command = cmd;
	v->thd = ARG(ctx, DC_THD_ARG);
#if THD_CONN_ID_OFFSET >= 0
	bpf_probe_read_user(&v->ev.conn_id, sizeof(u64), (void *)(v->thd + THD_CONN_ID_OFFSET));
#endif
#if THD_QUERY_OFFSET < 0
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
	copy_counted(&v->ev, packet, len);
#endif
	return 0;
}

#if THD_DB_OFFSET >= 0
/* thd->db: the current database when the statement ended, as the slow log
 * names it */
static __always_inline void read_thd_db(struct my_inflight *v)
{
	u64 db = 0;
	bpf_probe_read_user(&db, sizeof(db), (void *)(v->thd + THD_DB_OFFSET));
	if (db)
		bpf_probe_read_user_str(v->ev.db, sizeof(v->ev.db), (void *)db);
	else
		v->ev.db[0] = 0;
}
#endif

/* The statement's end: its status, its database for serve's labels, and
 * for one to report, its text. */
static __always_inline void end_my_statement(struct my_inflight *v, u64 now)
{
	u32 tgid = v->ev.pid;
	v->ev.duration_ns = now - v->ev.start_ns;
#if THD_DA_OFFSET >= 0
	u64 da = 0;
	u32 status = 0;
	bpf_probe_read_user(&da, sizeof(da), (void *)(v->thd + THD_DA_OFFSET));
	if (da)
		bpf_probe_read_user(&status, sizeof(status), (void *)(da + DA_STATUS_OFFSET));
	if (da && status == DA_ERROR_STATUS) {
		v->ev.flags |= EV_FAILED;
		bpf_probe_read_user(&v->ev.error_code, sizeof(u32), (void *)(da + DA_ERRNO_OFFSET));
	}
#endif
#if DB_NAME_IDS && THD_DB_OFFSET >= 0
	read_thd_db(v);
	v->ev.db_id = db_name_id(v->ev.db);
#endif
	if (v->ev.duration_ns < THRESHOLD_NS || MODE == MODE_HIST)
		return;
	int full = needs_full_text(v->ev.duration_ns);
	if (v->ev.command == COM_QUERY) {
#if THD_QUERY_OFFSET >= 0
		u64 q[2] = {};
		bpf_probe_read_user(q, sizeof(q), (void *)(v->thd + THD_QUERY_OFFSET));
		copy_counted(&v->ev, (const char *)q[0], full || q[1] < OP_PREFIX_BYTES ? q[1] : OP_PREFIX_BYTES);
#endif
	} else {
		struct ps_key k = {.ps = v->ps, .tgid = tgid};
		struct ps_text *t = v->ps ? ps_texts.lookup(&k) : 0;
		if (t && t->fp && !full) {
			v->ev.fp = t->fp; /* its digest key is known: no text needed */
		} else if (t) {
			u32 n = bounded_len(t->len);
			bpf_probe_read_kernel(v->ev.text, n, t->text);
			v->ev.text_len = n;
			v->ev.fp = t->fp;
			if (t->truncated)
				v->ev.flags |= EV_TRUNCATED;
		} else {
			v->ev.flags |= EV_NO_TEXT;
			count(CTR_NO_TEXT);
		}
	}
#if THD_DB_OFFSET >= 0 && !DB_NAME_IDS
	if (full)
		read_thd_db(v);
#endif
}

/* Reports the statement. With THD_UTIME_OFFSET, its times are the slow
 * log's own: thd->start_utime to thd->utime_after_query, microseconds of the
 * same clock as bpf_ktime_get_ns() (quirks.py); a value that cannot be one
 * (not set, or not yet set for this statement) leaves our own. Otherwise it
 * ended at the last Protocol::end_statement(), or now where that is not
 * probed. */
static __always_inline void report_statement(struct my_inflight *v, u64 now)
{
#if THD_UTIME_OFFSET >= 0
	u64 t[3] = {}; /* start_utime, utime_after_lock, utime_after_query */
	bpf_probe_read_user(t, sizeof(t), (void *)(v->thd + THD_UTIME_OFFSET));
	if (t[0] && t[0] <= t[2] && t[2] * 1000 <= now) {
		v->ev.start_ns = t[0] * 1000;
		now = t[2] * 1000;
	}
#else
	if (v->end_ns)
		now = v->end_ns;
#endif
	end_my_statement(v, now);
	finish_statement_cached(&v->ev, v->ps);
}

/* A prepared statement's text was hashed: keep its fingerprint with it. */
static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
	struct ps_key k = {.ps = cache_key, .tgid = tgid};
	struct ps_text *t = ps_texts.lookup(&k);
	if (t)
		t->fp = fp;
}

/* Protocol::end_statement(): the server has just taken the statement's end
 * time (THD::update_server_status) and is about to send its OK, EOF or ERR
 * packet. It also runs for each result set a procedure's SELECTs send inside
 * a CALL, so the last call before the statement is logged is its end. */
int my_stmt_end(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (v && v->state != MY_IDLE)
		v->end_ns = bpf_ktime_get_ns();
	return 0;
}

/* The running statement is reported; in a COM_QUERY another statement of
 * the same packet may follow, and it starts now (if none does, the next
 * command starts afresh). */
static __always_inline int report_running(struct pt_regs *ctx)
{
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v || v->state == MY_IDLE)
		return 0;
	report_statement(v, now);
	if (v->ev.command == COM_QUERY) {
		v->state = MY_NEXT;
		v->end_ns = 0;
		v->ev.start_ns = now;
		v->ev.flags = 0;
		v->ev.error_code = 0;
	} else {
		v->state = MY_IDLE;
	}
	digest_tail(ctx);
	return 0;
}

#if FINISH_AT_SLOW_LOG
/* log_slow_statement(THD *thd): the server decides whether to slow-log the
 * statement that just ended, once per statement the slow log can show: each
 * statement of a multi-statement query, a CALL as a whole (sql/sql_parse.cc
 * dispatch_command; sql/sp_head.cc calls it for a procedure's own statements
 * only when log_slow_disabled_statements allows "sp"). The statement's
 * status, text and database are still in the THD. */
int my_slow_log(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	return report_running(ctx);
}
#else
/* dispatch_command's return, where log_slow_statement is not exported */
int my_dispatch_return(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	return report_running(ctx);
}
#endif

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
	if (v && v->state == MY_OPEN && v->ev.command != COM_QUERY && !v->ps) {
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

#if ERROR_SINK
/* my_message_sql(uint error, const char *str, myf MyFlags) */
int my_error(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 flags = PT_REGS_PARM3(ctx);
	if (flags & NOT_ERROR_FLAGS)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (v && v->state == MY_OPEN) {
		v->ev.flags |= EV_FAILED;
		if (!v->ev.error_code)
			v->ev.error_code = (u32)PT_REGS_PARM1(ctx);
	}
	return 0;
}
#endif
