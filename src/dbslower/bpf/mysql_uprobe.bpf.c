/*
 * MySQL and MariaDB without USDT probes (Debian's MariaDB, MySQL 8): uprobes
 * on exported functions.
 *
 * dispatch_command() entry starts each command; its signature differs by
 * server, and the argument positions come from the table in
 * dbslower/quirks.py as DC_* defines. A statement's end time is taken at the
 * last Protocol::end_statement() before it is reported, and it is reported
 * where the server decides whether to slow-log it, log_slow_statement()
 * (FINISH_AT_SLOW_LOG), so what is reported is what the slow log can show:
 * each statement of a multi-statement COM_QUERY (the next one starts there),
 * a CALL once. No return probe; builds without log_slow_statement report at
 * dispatch_command's return.
 *
 * Its time runs from dispatch_command's entry (for COM_STMT_EXECUTE,
 * Prepared_statement::execute(this), which links the command to its text
 * and runs after the server's THD::set_time()) to the last
 * Protocol::end_statement() before it is reported. Where the THD's own
 * times can be located, mysql_slowlog.bpf.c is used instead (one hit per
 * statement). Status, text and database: mysql_thd.bpf.c; without
 * THD_QUERY_OFFSET the COM_QUERY packet is copied at dispatch_command, and
 * without THD_DA_OFFSET my_message_sql() calls mark failures (ERROR_SINK),
 * minus the flags that mean a note or warning in this server
 * (NOT_ERROR_FLAGS).
 */

#define ARG(ctx, n) ((n) == 1 ? PT_REGS_PARM1(ctx) : (n) == 2 ? PT_REGS_PARM2(ctx) : \
		     (n) == 3 ? PT_REGS_PARM3(ctx) : (n) == 4 ? PT_REGS_PARM4(ctx) : \
		     (n) == 5 ? PT_REGS_PARM5(ctx) : PT_REGS_PARM6(ctx))

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

/* The statement ended at now: its details from the THD. */
static __always_inline void end_my_statement(struct my_inflight *v, u64 now)
{
	v->ev.duration_ns = now - v->ev.start_ns;
	thd_statement_details(&v->ev, v->thd, v->ps);
}

/* Reports the statement: it ended at the last Protocol::end_statement(), or
 * now where that is not probed. */
static __always_inline void report_statement(struct my_inflight *v, u64 now)
{
	end_my_statement(v, v->end_ns ? v->end_ns : now);
	finish_statement_cached(&v->ev, v->ps);
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
