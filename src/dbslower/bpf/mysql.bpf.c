/*
 * MySQL and MariaDB, either method: the per-thread statement state. One
 * event per statement run through COM_QUERY (each statement of a
 * multi-statement query on its own, where the server logs each),
 * COM_STMT_EXECUTE or COM_STMT_BULK_EXECUTE. The state machines are in
 * mysql_uprobe.bpf.c and mysql_usdt.bpf.c.
 */

#define MY_IDLE 0 /* nothing to report */
#define MY_OPEN 1 /* a statement is running */
#define MY_NEXT 2 /* COM_QUERY: a statement was reported; another may follow */

struct my_inflight {
	u64 thd;        /* the THD running the statement (uprobes) */
	u64 ps;         /* Prepared_statement* being executed */
	u64 end_ns;     /* the last Protocol::end_statement(): the statement's end */
	u8 state;       /* MY_* */
	u8 pad[7];
	struct query_event ev;
};

/* One entry per server thread that ran a traced command, kept between its
 * commands (inserting one copies the whole text buffer) and deleted when the
 * thread exits. */
BPF_HASH(inflight, u32, struct my_inflight, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(inflight_zero, struct my_inflight, 1);

static __always_inline struct my_inflight *start_inflight(u64 now, u64 id)
{
	u32 tid = (u32)id, zero = 0;
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v) {
		struct my_inflight *init = inflight_zero.lookup(&zero);
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
	v->thd = 0;
	v->ps = 0;
	v->end_ns = 0;
	v->state = MY_OPEN;
	start_bare_event(&v->ev, now, id >> 32, tid);
	return v;
}

static __always_inline int engine_thread_exit(u32 tid)
{
	struct my_inflight *v = inflight.lookup(&tid);
	if (!v)
		return 0;
	int open = v->state == MY_OPEN;
	inflight.delete(&tid);
	return open;
}
