/*
 * MySQL and MariaDB uprobes, both machines (mysql_uprobe.bpf.c,
 * mysql_slowlog.bpf.c): what is read from the THD when a statement is
 * reported, and the texts of prepared statements.
 *
 * Read from the THD (offsets taken from the server's own exported
 * accessors, see quirks.py), and only for statements that will be reported:
 *  - the text, thd->query_string: the statement as the server logs it,
 *    cut at its end inside a multi-statement packet (THD_QUERY_OFFSET);
 *  - the current database, thd->db (THD_DB_OFFSET), read for every
 *    statement in serve, whose metrics are labelled by it (db_namespace);
 * and for every statement, its status: the diagnostics area's final state,
 * the one Protocol::end_statement() sends as OK or ERR (THD_DA_OFFSET).
 *
 * Prepared statements: Prepared_statement::prepare(this, text, len) saves
 * the text by (process, this) until ~Prepared_statement; each machine links
 * a COM_STMT_EXECUTE to its `this` at Prepared_statement::execute(this).
 */

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

#if THD_DB_OFFSET >= 0
/* thd->db: the current database when the statement ended, as the slow log
 * names it */
static __always_inline void read_thd_db(struct query_event *ev, u64 thd)
{
	u64 db = 0;
	bpf_probe_read_user(&db, sizeof(db), (void *)(thd + THD_DB_OFFSET));
	if (db)
		bpf_probe_read_user_str(ev->db, sizeof(ev->db), (void *)db);
	else
		ev->db[0] = 0;
}
#endif

/* A statement of thd ended (ev has its duration): its status, its database
 * for serve's labels, and for one to report, its text (a COM_QUERY's from
 * the THD; a prepared statement's kept under ps). */
static __always_inline void thd_statement_details(struct query_event *ev, u64 thd, u64 ps)
{
	u32 tgid = ev->pid;
#if THD_DA_OFFSET >= 0
	u64 da = 0;
	u32 status = 0;
	bpf_probe_read_user(&da, sizeof(da), (void *)(thd + THD_DA_OFFSET));
	if (da)
		bpf_probe_read_user(&status, sizeof(status), (void *)(da + DA_STATUS_OFFSET));
	if (da && status == DA_ERROR_STATUS) {
		ev->flags |= EV_FAILED;
		bpf_probe_read_user(&ev->error_code, sizeof(u32), (void *)(da + DA_ERRNO_OFFSET));
	}
#endif
#if DB_NAME_IDS && THD_DB_OFFSET >= 0
	read_thd_db(ev, thd);
	ev->db_id = db_name_id(ev->db);
#endif
	if (ev->duration_ns < THRESHOLD_NS || MODE == MODE_HIST)
		return;
	int full = needs_full_text(ev->duration_ns);
	if (ev->command == COM_QUERY) {
#if THD_QUERY_OFFSET >= 0
		u64 q[2] = {};
		bpf_probe_read_user(q, sizeof(q), (void *)(thd + THD_QUERY_OFFSET));
		copy_counted(ev, (const char *)q[0], full || q[1] < OP_PREFIX_BYTES ? q[1] : OP_PREFIX_BYTES);
#endif
	} else {
		struct ps_key k = {.ps = ps, .tgid = tgid};
		struct ps_text *t = ps ? ps_texts.lookup(&k) : 0;
		if (t && t->fp && !full) {
			ev->fp = t->fp; /* its digest key is known: no text needed */
		} else if (t) {
			u32 n = bounded_len(t->len);
			bpf_probe_read_kernel(ev->text, n, t->text);
			ev->text_len = n;
			ev->fp = t->fp;
			if (t->truncated)
				ev->flags |= EV_TRUNCATED;
		} else {
			ev->flags |= EV_NO_TEXT;
			count(CTR_NO_TEXT);
		}
	}
#if THD_DB_OFFSET >= 0 && !DB_NAME_IDS
	if (full)
		read_thd_db(ev, thd);
#endif
}

/* A prepared statement's text was hashed: keep its fingerprint with it. */
static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
	struct ps_key k = {.ps = cache_key, .tgid = tgid};
	struct ps_text *t = ps_texts.lookup(&k);
	if (t)
		t->fp = fp;
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

/* Prepared_statement::~Prepared_statement(): `this` may be reused after it */
int my_ps_destroy(struct pt_regs *ctx)
{
	FLOOR_RETURN();
	struct ps_key k = {.ps = PT_REGS_PARM1(ctx), .tgid = bpf_get_current_pid_tgid() >> 32};
	ps_texts.delete(&k);
	return 0;
}
