/*
 * MySQL and MariaDB uprobes where the THD's own statement times can be
 * located (THD_UTIME_OFFSET, THD_COMMAND_OFFSET: MariaDB, see quirks.py):
 * one probe hit per statement.
 *
 * log_slow_statement(THD *thd) runs once for each statement the slow log
 * can show: each statement of a multi-statement COM_QUERY, a CALL once
 * (sql/sql_parse.cc dispatch_command; sql/sp_head.cc calls it for a
 * procedure's own statements only when log_slow_disabled_statements allows
 * "sp"), right after THD::update_server_status() took the statement's end
 * time. Everything is read from the THD there:
 *  - the command, thd->m_command: COM_QUERY, COM_STMT_EXECUTE and
 *    COM_STMT_BULK_EXECUTE are statements;
 *  - its times, thd->start_utime to thd->utime_after_query: the very values
 *    the slow log's Query_time is computed from, microseconds of the clock
 *    of bpf_ktime_get_ns();
 *  - the connection id, and (mysql_thd.bpf.c) status, database and text.
 * A COM_STMT_EXECUTE's text is its prepared statement's: execute(this) notes
 * `this` for the thread, and a statement uses it when it ran after the
 * statement's start (so a failed EXECUTE that never reached it does not take
 * the previous one's).
 *
 * No probe sees a statement start, so a statement still running when its
 * thread exits (the server killed) is not counted (CTR_EXITED).
 */

struct my_exec {
	u64 ps;     /* the Prepared_statement the thread executed last... */
	u64 at_ns;  /* ...and when */
};

/* Per server thread that executed a prepared statement; deleted when the
 * thread exits (common.bpf.c). As many as the inflight tables of the other
 * machines: one per connection thread. */
BPF_HASH(ps_running, u32, struct my_exec, INFLIGHT_ENTRIES);
/* The statement being reported: too big for the BPF stack. */
BPF_PERCPU_ARRAY(report_scratch, struct query_event, 1);

int my_slow_log(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!pid_traced(tgid))
		return 0;
	u64 thd = PT_REGS_PARM1(ctx);
	u32 cmd = 0;
	bpf_probe_read_user(&cmd, sizeof(cmd), (void *)(thd + THD_COMMAND_OFFSET));
	if (!traced_command(cmd))
		return 0;
	u64 t[3] = {}; /* start_utime, utime_after_lock, utime_after_query */
	bpf_probe_read_user(t, sizeof(t), (void *)(thd + THD_UTIME_OFFSET));
	if (!t[0] || t[0] > t[2] || t[2] * 1000 > now) {
		/* not stamped for this statement: nothing to measure it by */
		count(CTR_NO_TIMES);
		return 0;
	}
	u32 zero = 0;
	struct query_event *ev = report_scratch.lookup(&zero);
	if (!ev)
		return 0;
	start_bare_event(ev, t[0] * 1000, tgid, tid);
	ev->duration_ns = (t[2] - t[0]) * 1000;
	ev->command = cmd;
#if THD_CONN_ID_OFFSET >= 0
	bpf_probe_read_user(&ev->conn_id, sizeof(u64), (void *)(thd + THD_CONN_ID_OFFSET));
#endif
	u64 ps = 0;
	if (cmd != COM_QUERY) {
		struct my_exec *x = ps_running.lookup(&tid);
		/* start_utime is truncated to the microsecond */
		if (x && x->at_ns + 1000 > ev->start_ns)
			ps = x->ps;
	}
	thd_statement_details(ev, thd, ps);
	finish_statement_cached(ev, ps);
	digest_tail(ctx);
	return 0;
}

/* Prepared_statement::execute(String *expanded_query, bool open_cursor) */
int my_ps_execute(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 id = bpf_get_current_pid_tgid();
	if (!pid_traced(id >> 32))
		return 0;
	u32 tid = (u32)id;
	struct my_exec x = {.ps = PT_REGS_PARM1(ctx), .at_ns = bpf_ktime_get_ns()};
	struct my_exec *kept = ps_running.lookup(&tid);
	if (kept)
		*kept = x; /* in place: an update would copy in a new element each time */
	else if (ps_running.update(&tid, &x) != 0)
		count(CTR_INFLIGHT_FULL);
	return 0;
}

static __always_inline int engine_thread_exit(u32 tid)
{
	ps_running.delete(&tid);
	return 0;
}
