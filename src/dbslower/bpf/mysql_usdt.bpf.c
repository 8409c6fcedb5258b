/*
 * MySQL 5.x and MariaDB built with ENABLE_DTRACE: the USDT probes
 * query__start(query, connid, db, user, host) and query__done(status)
 * (sql/probes_mysql.d) bound each statement. Prepared statements
 * (COM_STMT_EXECUTE) have no such probe, and the error code is not given.
 */

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
#if DB_NAME_IDS
	v->ev.db_id = db_name_id(v->ev.db);
#endif
	return 0;
}

int my_query_done(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	u64 now = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v || v->state != MY_OPEN)
		return 0;
	/* bcc reads an argument only into a variable of its exact size:
	 * query__done(int status), per sql/probes_mysql.d */
	int status = 0;
	bpf_usdt_readarg(1, ctx, &status);
	if (status != 0)
		v->ev.flags |= EV_FAILED;
	v->ev.duration_ns = now - v->ev.start_ns;
	finish_statement(&v->ev);
	v->state = MY_IDLE;
	digest_tail(ctx);
	return 0;
}

static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
	/* no statement keeps its fingerprint here */
}
