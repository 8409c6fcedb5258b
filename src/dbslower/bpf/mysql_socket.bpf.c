/*
 * MySQL and MariaDB, socket method (--method socket): a statement is a
 * command on the server thread's client socket, timed from the recvfrom()
 * that brought the command's payload to the last sendto() of its reply.
 * Syscall tracepoints only, no uprobe.
 *
 * The wire protocol (MySQL's "Client/Server Protocol"; MariaDB's is the same
 * for what is read here): packets of a 3-byte little-endian payload length
 * and a sequence id, then the payload. A command is a packet with sequence
 * id 0 whose first payload byte is the command; COM_QUERY's text follows it,
 * COM_STMT_EXECUTE's 4-byte statement id follows it. The server reads a
 * packet's 4-byte header and then its payload with separate recv() calls,
 * both into the same place of its buffer (sql/net_serv.cc, my_real_read),
 * with MSG_DONTWAIT, polling on EAGAIN (vio/viosocket.c, vio_read); so a
 * command costs 3 tracepoint hits when the thread waited for it (EAGAIN,
 * header, payload) and a reply at least one more (sendto). A reply ends at
 * its last send(), which the server makes before it reads again: a command
 * is reported at the thread's next read, with the last send's time as its
 * end. An error reply is an ERR packet, 0xFF and the 2-byte error code, and
 * it is the reply's last packet; COM_STMT_PREPARE's OK reply carries the
 * statement id that COM_STMT_EXECUTE then names.
 *
 * What it measures, against the server's own slow log: also the reading of
 * the payload and the sending of the reply (a few microseconds). A
 * multi-statement COM_QUERY is one statement (the slow log has a line per
 * statement). The user and database come from the client's handshake
 * response, then COM_INIT_DB and USE statements that succeed: unknown for a
 * connection made before tracing; no client address or connection id. A
 * TLS connection cannot be read, and the server then reads and
 * writes it with read()/write(), which are not traced: each is counted once,
 * at its SSL request (CTR_UNFOLLOWED_CONN); a compressed connection is not
 * followed. An error after the first 16 packets of a reply's last send (rows
 * before it) is not seen; LOAD DATA LOCAL INFILE ends when the server first
 * waits for the file's data.
 *
 * Config: COM_* (quirks.py), MODE, THRESHOLD_NS, TEXT_BYTES.
 */

#define MS_IDLE 0     /* between commands */
#define MS_BODY 1     /* a command's header was read: its payload comes next */
#define MS_RUNNING 2  /* a traced command runs, or its reply is being sent */
#define MS_OTHER 3    /* another command (or a PREPARE) runs or is answered */
#define MS_HANDSHAKE 4 /* the client's handshake response comes next */
/* capability flags (MySQL's include/mysql_com.h, MariaDB's the same bits) */
#define CLIENT_CONNECT_WITH_DB 0x8 /* the handshake response names a database */
#define CLIENT_SSL 0x800           /* the client switches to TLS now */
#define CLIENT_SECURE_CONNECTION 0x8000 /* authentication data: 1-byte length first */
#define CLIENT_PLUGIN_AUTH_LENENC 0x200000 /* authentication data: length-encoded length first */
#define MY_NAME_SCAN 128 /* a user name is found within this many bytes (MariaDB: 80 at most) */
#define MY_WALK_PKTS 16 /* reply packets walked per send to find its last one */

struct my_sock {
	u64 conn_stamp;   /* when this thread's connection was seen starting (0: before tracing) */
	u64 last_send_ns; /* entry of the reply's latest send() */
	u32 conn_fd;
	u32 payload_len;
	u32 payload_left; /* payload bytes still to be read */
	u32 stmt_id;      /* COM_STMT_EXECUTE's statement */
	u32 last_prepared; /* the id the last PREPARE's reply gave */
	u32 walk_skip;    /* bytes of a reply packet that continue into the next send */
	u8 state;         /* MS_* */
	u8 cmd;
	u8 sends;         /* send() calls of the reply so far, at most 2 */
	u8 in_sync;       /* the reply's packet boundaries are known */
	u8 pad[4];
	struct query_event ev;
};

/* Per server thread: a thread serves one command at a time. Entries go when
 * the thread exits (common.bpf.c). */
BPF_HASH(my_sock_state, u32, struct my_sock, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(my_sock_zero, struct my_sock, 1);

struct stmt_key {
	u32 tgid;
	u32 fd;
	u32 stmt_id;
	u32 pad;
};

/* Prepared statements' texts by connection and statement id (owner:
 * my_sock.conn_stamp of the connection that prepared it). MariaDB allows
 * 16382 prepared statements at once (max_prepared_stmt_count); the
 * executions of those beyond KEPT_TEXT_ENTRIES have no text, and are
 * counted. COM_STMT_CLOSE deletes its entry. */
BPF_TABLE("lru_hash", struct stmt_key, struct kept_text, stmt_texts, KEPT_TEXT_ENTRIES);
BPF_PERCPU_ARRAY(stmt_scratch, struct kept_text, 1);

struct conn_key {
	u32 tgid;
	u32 fd;
};

struct conn_ctx {
	char db[CTX_DB_BYTES];
	char user[CTX_USER_BYTES];
};

/* Each connection's user and current database, by server process and
 * socket. A new connection on a reused fd always passes its handshake,
 * which replaces the entry; close() is not traced, so entries of closed
 * connections stay until the LRU takes them: 16384 is over 100 times
 * MariaDB's default max_connections (151). */
BPF_TABLE("lru_hash", struct conn_key, struct conn_ctx, conn_ctxs, 16384);
struct name_buf {
	char b[MY_NAME_SCAN];
};
BPF_PERCPU_ARRAY(name_scratch, struct name_buf, 1);

static __always_inline u32 le24(const u8 *b)
{
	return (u32)b[0] | ((u32)b[1] << 8) | ((u32)b[2] << 16);
}

static __always_inline int traced_command(u8 cmd)
{
	return cmd == COM_QUERY || cmd == COM_STMT_EXECUTE || cmd == COM_STMT_BULK_EXECUTE;
}

/* Commands the server does not answer. */
static __always_inline int unanswered(u8 cmd)
{
	return cmd == COM_QUIT || cmd == COM_STMT_CLOSE || cmd == COM_STMT_SEND_LONG_DATA;
}

/* A PREPARE's reply said OK with its statement id: keep the text for the
 * executions. */
static __always_inline void keep_prepared(struct my_sock *v, u32 tgid, u32 stmt_id)
{
	u32 zero = 0;
	struct kept_text *t = stmt_scratch.lookup(&zero);
	if (!t)
		return;
	u32 n = bounded_len(v->ev.text_len);
	t->owner = v->conn_stamp;
	t->flags = v->ev.flags & EV_TRUNCATED;
	t->text_len = n;
	bpf_probe_read_kernel(t->text, n, v->ev.text);
	struct stmt_key k = {.tgid = tgid, .fd = v->conn_fd, .stmt_id = stmt_id};
	stmt_texts.update(&k, t);
	v->last_prepared = stmt_id;
}

/* The text of the command being reported, into ev (COM_QUERY's was copied
 * while its payload was intact). */
static __always_inline void prepared_text(struct my_sock *v, u32 tgid)
{
	struct stmt_key k = {.tgid = tgid, .fd = v->conn_fd, .stmt_id = v->stmt_id};
	if (take_kept_text(&v->ev, stmt_texts.lookup(&k), v->conn_stamp))
		return;
	v->ev.flags |= EV_NO_TEXT;
	count(CTR_NO_TEXT);
}

/* The client's handshake response (HandshakeResponse41 in MySQL's protocol
 * documentation; MariaDB's is the same up to the database): capabilities,
 * 28 bytes of limits, character set and filler, the user name, the
 * authentication data (its length first), then with CLIENT_CONNECT_WITH_DB
 * the database, each name ending in a NUL. */
static __always_inline void read_handshake(struct my_sock *v, u32 tgid, const u8 *buf, long ret, u32 caps)
{
	struct conn_key k = {.tgid = tgid, .fd = v->conn_fd};
	struct conn_ctx c = {};
	u32 zero = 0;
	struct name_buf *nb = name_scratch.lookup(&zero);
	char *name = nb ? nb->b : 0;
	long n = name && ret > 32 ? bpf_probe_read_user_str(name, MY_NAME_SCAN, buf + 32) : 0;
	if (name && n > 0) {
		bpf_probe_read_kernel_str(c.user, sizeof(c.user), name);
		u64 pos = 32 + n;
		u8 b[3] = {};
		bpf_probe_read_user(b, sizeof(b), buf + pos);
		if (caps & CLIENT_PLUGIN_AUTH_LENENC)
			pos += b[0] < 0xfb ? 1 + b[0] : b[0] == 0xfc ? 3 + (b[1] | ((u32)b[2] << 8)) : ret;
		else if (caps & CLIENT_SECURE_CONNECTION)
			pos += 1 + b[0];
		else
			pos += bpf_probe_read_user_str(name, MY_NAME_SCAN, buf + pos);
		if ((caps & CLIENT_CONNECT_WITH_DB) && pos < (u64)ret)
			bpf_probe_read_user_str(c.db, sizeof(c.db), buf + pos);
	}
	conn_ctxs.update(&k, &c); /* a TLS connection's: nothing known */
}

/* COM_INIT_DB or USE succeeded: the connection's database from now. */
static __always_inline void set_conn_db(struct my_sock *v, u32 tgid, const char *db)
{
	struct conn_key k = {.tgid = tgid, .fd = v->conn_fd};
	struct conn_ctx *c = conn_ctxs.lookup(&k);
	if (c) {
		bpf_probe_read_kernel_str(c->db, sizeof(c->db), db);
		return;
	}
	struct conn_ctx fresh = {};
	bpf_probe_read_kernel_str(fresh.db, sizeof(fresh.db), db);
	conn_ctxs.update(&k, &fresh);
}

static __always_inline int blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A COM_QUERY that succeeded: if it is "USE name" (any case, the name
 * optionally in backquotes), the connection's database changes. */
static __always_inline void apply_use(struct my_sock *v, u32 tgid)
{
	const char *t = v->ev.text;
	if (v->ev.text_len < 5 || (t[0] | 0x20) != 'u' || (t[1] | 0x20) != 's' || (t[2] | 0x20) != 'e' ||
	    !(blank(t[3]) || t[3] == '`'))
		return;
	u32 len = bounded_len(v->ev.text_len), at = 3;
	for (int i = 0; i < 8; i++)
		if (at < len && blank(t[at & (TEXT_BYTES - 1)]))
			at++;
	int quoted = at < len && t[at & (TEXT_BYTES - 1)] == '`';
	at += quoted;
	char db[CTX_DB_BYTES] = {};
	for (int i = 0; i < CTX_DB_BYTES - 1; i++) {
		if (at + i >= len)
			break;
		char c = t[(at + i) & (TEXT_BYTES - 1)];
		if (quoted ? c == '`' : (blank(c) || c == ';'))
			break;
		db[i] = c;
	}
	if (db[0])
		set_conn_db(v, tgid, db);
}

/* The connection's user and database into a statement to report (serve
 * labels every statement by its database). */
static __always_inline void conn_context(struct my_sock *v, u32 tgid)
{
	struct conn_key k = {.tgid = tgid, .fd = v->conn_fd};
	struct conn_ctx *c = conn_ctxs.lookup(&k);
	if (c) {
		bpf_probe_read_kernel(v->ev.db, sizeof(v->ev.db), c->db);
		bpf_probe_read_kernel(v->ev.user, sizeof(v->ev.user), c->user);
	} else {
		v->ev.db[0] = 0;
		v->ev.user[0] = 0;
	}
#if DB_NAME_IDS
	v->ev.db_id = db_name_id(v->ev.db);
#endif
}

/* The thread reads again: the command before ended at its last send.
 * Returns 1 when a statement finished. */
static __always_inline int report_command(struct my_sock *v, u32 tgid)
{
	v->state = MS_IDLE;
	if (!v->sends)
		return 0; /* no reply: nothing to time */
	v->ev.duration_ns = v->last_send_ns - v->ev.start_ns;
#if MODE != MODE_HIST
	if (v->ev.duration_ns >= THRESHOLD_NS && v->cmd != COM_QUERY)
		prepared_text(v, tgid);
	if (v->cmd == COM_QUERY && !(v->ev.flags & EV_FAILED))
		apply_use(v, tgid);
	if (DB_NAME_IDS || v->ev.duration_ns >= THRESHOLD_NS)
		conn_context(v, tgid);
#endif
	finish_statement(&v->ev);
	return 1;
}

/* The command's text: what this read of its payload brought. */
static __always_inline void copy_payload(struct my_sock *v, const u8 *buf, long ret)
{
	u64 n = (u64)ret < v->payload_len ? (u64)ret - 1 : v->payload_len - 1;
	copy_counted(&v->ev, (const char *)(buf + 1), n);
	if (n < v->payload_len - 1)
		v->ev.flags |= EV_TRUNCATED;
}

static __always_inline void start_command(struct my_sock *v, u64 now, u32 tgid, u32 tid, const u8 *buf,
					  long ret)
{
	u8 head[5] = {};
	bpf_probe_read_user(head, sizeof(head), buf);
	u32 arg = (u32)head[1] | ((u32)head[2] << 8) | ((u32)head[3] << 16) | ((u32)head[4] << 24);
	v->cmd = head[0];
	v->sends = 0;
	v->in_sync = 1;
	v->walk_skip = 0;
	start_event(&v->ev, now, tgid, tid);
	v->ev.command = head[0];
	v->ev.fp = 0;
#if SERVER_IDS
	struct proc_info *pp = procs.lookup(&tgid);
	v->ev.server_id = pp ? pp->server_id : 0;
#endif
	if (traced_command(head[0])) {
		v->state = MS_RUNNING;
		/* MariaDB 10.2+: id 0xFFFFFFFF executes the statement prepared
		 * last on the connection (a PREPARE and its EXECUTE sent together). */
		v->stmt_id = arg == 0xFFFFFFFF ? v->last_prepared : arg;
#if MODE != MODE_HIST
		/* The text now: the server builds its reply in the same buffer
		 * (NET::buff), and more of a long payload would overwrite it. */
		if (head[0] == COM_QUERY)
			copy_payload(v, buf, ret);
#endif
		return;
	}
	v->state = unanswered(head[0]) ? MS_IDLE : MS_OTHER;
	if (head[0] == COM_STMT_CLOSE) {
		struct stmt_key k = {.tgid = tgid, .fd = v->conn_fd, .stmt_id = arg};
		stmt_texts.delete(&k);
	}
#if MODE != MODE_HIST
	if (head[0] == COM_STMT_PREPARE)
		copy_payload(v, buf, ret); /* kept for the executions once the reply names the statement */
	if (head[0] == COM_INIT_DB) {
		/* its database, taken when the reply is OK (ev.db is refilled
		 * for every statement reported) */
		u64 n = v->payload_len;
		if (n > CTX_DB_BYTES)
			n = CTX_DB_BYTES;
		asm volatile("" : "+r"(n)); /* keeps the mask the verifier reads (bounded_len) */
		n = (n - 1) & (CTX_DB_BYTES - 1);
		bpf_probe_read_user(v->ev.db, n, buf + 1);
		v->ev.db[n] = 0;
	}
#endif
}

/* A server thread's recv() returned ret. Returns 1 when a statement
 * finished. */
static __always_inline int my_recv(long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct my_sock *v = my_sock_state.lookup(&tid);
	if (!v && !pid_traced(tgid))
		return 0; /* every other process on the host */
	if (ret <= 0) {
		/* EAGAIN: the server waits for its client's next command. */
		if (v && v->state == MS_RUNNING && !v->payload_left)
			return report_command(v, tgid);
		else if (v && v->state == MS_OTHER && !v->payload_left)
			v->state = MS_IDLE;
		return 0;
	}
	struct syscall_args a = exit_syscall_args();
	u64 fd = a.fd, want = a.len;
	const u8 *buf = (const u8 *)a.buf;
	if (!v) {
		u32 zero = 0;
		struct my_sock *init = my_sock_zero.lookup(&zero);
		if (!init)
			return 0;
		if (my_sock_state.update(&tid, init) != 0) {
			count(CTR_INFLIGHT_FULL);
			return 0;
		}
		v = my_sock_state.lookup(&tid);
		if (!v)
			return 0;
		v->conn_fd = fd;
	}
	if (v->payload_left && fd == v->conn_fd) {
		/* A packet's payload (the server reads it after its header). */
		if (v->state == MS_BODY)
			start_command(v, bpf_ktime_get_ns(), tgid, tid, buf, ret);
		if (v->state == MS_HANDSHAKE) {
			/* An SSL request: the handshake response cut after its
			 * 32 bytes of capabilities, then TLS, which the server
			 * reads with read() and writes with write(): none of the
			 * connection's commands can be seen or counted. */
			u32 caps = 0;
			bpf_probe_read_user(&caps, sizeof(caps), buf);
			if (v->payload_len == 32 && (caps & CLIENT_SSL))
				count(CTR_UNFOLLOWED_CONN);
#if MODE != MODE_HIST
			read_handshake(v, tgid, buf, ret, caps);
#endif
			v->state = MS_IDLE;
		}
		v->payload_left = ret >= v->payload_left ? 0 : v->payload_left - ret;
		return 0;
	}
	/* A new packet's header: the server asks for exactly its 4 bytes (a
	 * compressed connection's 7-byte headers are not followed). */
	if (want != 4 || ret != 4)
		return 0;
	u8 h[4] = {};
	bpf_probe_read_user(h, sizeof(h), buf);
	u8 seq = h[3];
	int finished = 0;
	if (seq == 0 && v->state == MS_RUNNING)
		finished = report_command(v, tgid); /* a command sent before the last reply ended */
	if (seq == 1) {
		/* The client's handshake response: a new connection on fd. */
		v->conn_stamp = bpf_ktime_get_ns();
		v->state = MS_HANDSHAKE;
	}
	v->conn_fd = fd;
	v->payload_len = le24(h);
	v->payload_left = v->payload_len;
	if (seq == 0 && v->payload_len)
		v->state = MS_BODY;
	/* Other packets (authentication, LOAD DATA LOCAL's file) are skipped
	 * within the command they belong to. */
	return finished;
}

TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom)
{
	FLOOR_RETURN();
	if (my_recv(args->ret))
		digest_tail(args); /* serve: the digests are updated in fp_chunk (DIGEST_IN_TAIL) */
	return 0;
}

/* Walks the packets of a reply's send from walk_skip on, to its last packet:
 * an ERR packet there fails the command, with its code. */
static __always_inline void walk_reply(struct my_sock *v, const u8 *buf, u64 len)
{
	u64 pos = v->walk_skip;
	if (!v->in_sync)
		return;
	if (pos >= len) {
		v->walk_skip = pos - len;
		return;
	}
	u8 h[7] = {};
	for (int i = 0; i < MY_WALK_PKTS; i++) {
		if (bpf_probe_read_user(h, sizeof(h), buf + pos) != 0) {
			v->in_sync = 0;
			return;
		}
		u64 end = pos + 4 + le24(h);
		if (end >= len) {
			v->walk_skip = end - len;
			if (end == len && h[4] == 0xFF) {
				v->ev.flags |= EV_FAILED;
				v->ev.error_code = (u32)h[5] | ((u32)h[6] << 8);
			}
			return;
		}
		pos = end;
	}
	v->in_sync = 0; /* more packets than walked: the reply's end cannot be read */
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	FLOOR_RETURN();
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct my_sock *v = my_sock_state.lookup(&tid);
	if (!v || args->fd != v->conn_fd || (v->state != MS_RUNNING && v->state != MS_OTHER))
		return 0;
	const u8 *buf = (const u8 *)args->buff;
	u64 len = args->len;
	if (v->state == MS_OTHER) {
		if (MODE != MODE_HIST && (v->cmd == COM_STMT_PREPARE || v->cmd == COM_INIT_DB) && !v->sends) {
			u8 ok[9] = {};
			bpf_probe_read_user(ok, sizeof(ok), buf);
			if (ok[4] == 0 && v->cmd == COM_INIT_DB)
				set_conn_db(v, id >> 32, v->ev.db);
			else if (ok[4] == 0)
				keep_prepared(v, id >> 32, (u32)ok[5] | ((u32)ok[6] << 8) | ((u32)ok[7] << 16) |
							      ((u32)ok[8] << 24));
		}
		v->sends = 1;
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	v->last_send_ns = now;
	if (v->sends < 2)
		v->sends++;
	walk_reply(v, buf, len);
	return 0;
}

static __always_inline int engine_thread_exit(u32 tid)
{
	struct my_sock *v = my_sock_state.lookup(&tid);
	if (!v)
		return 0;
	int open = v->state == MS_RUNNING;
	my_sock_state.delete(&tid);
	return open;
}

static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
}
