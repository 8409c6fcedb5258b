/*
 * PostgreSQL, socket method (--method socket): a statement is a request on
 * the backend's client socket, timed from the recvfrom() that brought it to
 * the sendto() that carries its ReadyForQuery. Syscall tracepoints only, no
 * uprobe: a simple-protocol statement costs 3 tracepoint hits (two recvfrom
 * exits, one of them EAGAIN before the backend waits, and a sendto entry) of
 * about 0.11 us each here, against 4 uprobe hits of about 0.55 us. The
 * recvfrom's buffer and fd are read from the task's saved user registers
 * at its exit (bpf_task_pt_regs, Linux 5.15+), so its entry is not traced.
 *
 * The wire protocol (PostgreSQL docs, "Frontend/Backend Protocol", message
 * formats): every message after the startup packet is a type byte and a
 * big-endian int32 length that counts itself. A backend reads with recv()
 * into its 8 kB input buffer (src/backend/libpq/pqcomm.c, pq_recvbuf), and
 * ReadyForQuery() flushes its output with send() before it reads again, so a
 * response ends with ReadyForQuery, 'Z' len 5 and a status byte, at the end
 * of one send().
 *
 * The received bytes are parsed as a stream of messages: a Query, or the
 * messages up to a Sync, is a request; a message that continues into the
 * next read is skipped there. At most SOCK_WALK_MSGS headers are read at a
 * read, and as many more at each ReadyForQuery until the read is walked
 * (pipelines). Should boundaries be lost (a header split over two reads),
 * they are found again when the backend is idle (a client waits for
 * ReadyForQuery before it sends more, so an idle backend's next read starts
 * a message); ReadyForQuery messages no followed request explains are
 * counted (CTR_UNFOLLOWED), as are requests that cannot be read (TLS).
 *
 * What it measures, against the server's own log_min_duration_statement:
 * also the reading of the request and the sending of the response (a few
 * microseconds), and an extended-protocol cycle (Parse/Bind/Execute/Sync) is
 * one statement from its first message to its ReadyForQuery, where the log
 * has a line per message. A request that executes nothing (Parse, Describe
 * and Sync only) is not a statement, unless it fails; the time of a Parse
 * sent on its own goes to the first request that binds its statement, as
 * the server's log lines add up. A request pipelined behind another in one
 * read starts when the one before it is answered; where it begins in the
 * read is kept (req_at) for its text.
 *
 * Text: a Query's, or a Parse's in the same request, read from the input
 * buffer when the statement is reported (the buffer is not reused before
 * ReadyForQuery), or when the request starts if more input will follow
 * within it (COPY FROM STDIN, a request split over reads). A Bind of a named
 * prepared statement (pgbench -M prepared, pgjdbc after 5 executions,
 * asyncpg) gets the text its Parse had: named Parses keep their text in
 * `named`, keyed by backend and statement name.
 *
 * Errors: an ErrorResponse is the message before ReadyForQuery, or ends a
 * send of its own (it is flushed when queued); its 'C' field is the SQLSTATE.
 */

#define SOCK_WALK_MSGS 16     /* message headers read per read, or per ReadyForQuery after it */
#define SOCK_REQS 32          /* requests received and not answered (a bit each of exec_mask) */
#define SOCK_SCAN_BYTES 1024  /* an ErrorResponse is found within this many bytes before ReadyForQuery */
#define STMT_NAME_BYTES 64    /* NAMEDATALEN */

#define TEXT_NONE 0
#define TEXT_IN_BATCH 1       /* a Query or Parse in the request: at batch + text_off */
#define TEXT_NAMED 2          /* a Bind of a named statement: its name at batch + text_off */

struct pg_sock {
	u64 created_ns;   /* tells this backend's named statements from those of a dead one with its PID */
	u64 batch;        /* the current request's first message (user memory) */
	struct pg_backend backend;
	u64 parse_hash;   /* a request that only parsed: its statement's name... */
	u64 parse_ns;     /* ...and its time, added to the first request that binds that name */
	u64 added_ns;     /* the current request's share of such a parse */
	u32 conn_fd;      /* the client socket: the fd of the backend's first read */
	u32 text_off;
	u32 skip;         /* bytes of a message that continue into the next read */
	u64 walk_buf;     /* the last read, while messages in it are left to walk... */
	u32 walk_len;
	u32 walk_pos;     /* ...from here */
	u32 exec_mask;    /* bit i: pending request i executes something */
	u64 req_at[SOCK_REQS]; /* where each pending request's first message is (a ring from req_head) */
	u64 open_at;      /* where the request still open began */
	u8 req_head;
	u8 pending;       /* requests received and not yet answered */
	u8 open;          /* messages of a request whose Sync has not come yet */
	u8 open_exec;     /* ...among them an Execute */
	u8 synced;        /* message boundaries known */
	u8 text_kind;     /* TEXT_* of the request in flight */
	u8 seen_request;  /* a ReadyForQuery before any request is the startup's */
	u8 more;          /* walk_buf has messages left to walk */
	u8 tls;           /* the connection is encrypted: nothing to read */
	struct query_event ev;
};

struct named_key {
	u32 tgid;
	u32 pad;
	u64 name_hash;
};

BPF_HASH(sock_state, u32, struct pg_sock, INFLIGHT_ENTRIES);
BPF_PERCPU_ARRAY(sock_zero, struct pg_sock, 1);
/* Named prepared statements (owner: pg_sock.created_ns of the backend that
 * parsed it): pgjdbc keeps up to 256 per connection, pgbench one per script
 * line; KEPT_TEXT_ENTRIES covers dozens of pooled connections at once.
 * Entries of a backend that exits are not deleted: a new backend with the
 * same PID parses a statement before using it, and `owner` tells them apart. */
BPF_TABLE("lru_hash", struct named_key, struct kept_text, named, KEPT_TEXT_ENTRIES);
BPF_PERCPU_ARRAY(named_scratch, struct kept_text, 1);
struct scan_buf {
	char b[SOCK_SCAN_BYTES];
	u32 at;     /* where the message before ReadyForQuery starts */
	char type;  /* its type; 0: not found */
};
BPF_PERCPU_ARRAY(scan_scratch, struct scan_buf, 1);

static __always_inline int frontend_type(u8 t)
{
	switch (t) {
	case 'Q': case 'P': case 'B': case 'E': case 'D': case 'S': case 'H':
	case 'C': case 'F': case 'X': case 'd': case 'c': case 'f': case 'p':
		return 1;
	}
	return 0;
}

static __always_inline u32 be32(const u8 *b)
{
	return ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
}

static __always_inline u64 name_hash(const char *user_name)
{
	char name[STMT_NAME_BYTES] = {};
	bpf_probe_read_user_str(name, sizeof(name), user_name);
	return name_fnv(name, STMT_NAME_BYTES);
}

/* A named Parse: keep its text for the Binds that use the name. */
static __always_inline void keep_named(struct pg_sock *v, u32 tgid, const char *name, const char *text)
{
	u32 zero = 0;
	struct kept_text *t = named_scratch.lookup(&zero);
	if (!t)
		return;
	t->owner = v->created_ns;
	t->flags = 0;
	copy_user_str(t->text, &t->text_len, &t->flags, text);
	struct named_key k = {.tgid = tgid, .name_hash = name_hash(name)};
	named.update(&k, t);
}

static __always_inline void start_request(struct pg_sock *v, u64 now, u32 tgid, u32 tid)
{
	start_event(&v->ev, now, tgid, tid);
	pg_context(&v->ev, &v->backend, tgid);
}

static __always_inline void end_request(struct pg_sock *v, u64 now)
{
	u64 ns = now - v->ev.start_ns;
	if (!(v->exec_mask & 1) && v->parse_hash && !v->parse_ns)
		v->parse_ns = ns;
	v->ev.duration_ns = ns + v->added_ns;
	v->added_ns = 0;
}

/* A request ended in what was read: bit 1 if it executes something; it
 * began at `at`. */
static __always_inline void add_request(struct pg_sock *v, u32 executes, u64 at)
{
	volatile u8 *pending = &v->pending;
	volatile u32 *mask = &v->exec_mask;
	u8 n = *pending;
	if (n >= SOCK_REQS)
		return;
	if (executes)
		*mask |= 1u << (n & 31);
	v->req_at[(v->req_head + n) & (SOCK_REQS - 1)] = at;
	*pending = n + 1;
}

/* Parses the messages of the read at walk_buf from walk_pos on, at most
 * SOCK_WALK_MSGS of them; the rest is walked at the next ReadyForQuery, which
 * the backend sends before it reads again, so the buffer is still there. */
static __always_inline void walk(struct pg_sock *v)
{
	const u8 *buf = (const u8 *)v->walk_buf;
	u32 ret = v->walk_len;
	u32 pos = v->walk_pos;
	/* The tallies go through map memory, which the verifier does not
	 * track: in registers each combination would be a verifier state. */
	volatile u8 *open = &v->open;
	volatile u8 *open_exec = &v->open_exec;
	u8 h[5];
	for (int i = 0; i < SOCK_WALK_MSGS; i++) {
		if (pos + 5 > ret || v->pending >= SOCK_REQS)
			break;
		if (bpf_probe_read_user(h, sizeof(h), buf + pos) != 0)
			break;
		u8 t = h[0];
		u64 at = (u64)(buf + pos);
		if (t == 'Q') {
			add_request(v, 1, at);
		} else if (t == 'S') {
			add_request(v, *open_exec, *open ? v->open_at : at);
			*open = 0;
			*open_exec = 0;
		} else if (t != 'd' && t != 'c' && t != 'f') {
			/* not COPY data, which belongs to a running Query */
			if (!*open)
				v->open_at = at;
			*open = 1;
			if (t == 'E')
				*open_exec = 1;
		}
		pos += 1 + be32(h + 1);
	}
	v->more = 0;
	v->skip = 0;
	if (pos > ret) {
		v->skip = pos - ret; /* the message goes on in the next read */
	} else if (pos + 5 <= ret) {
		v->more = 1;
		v->walk_pos = pos;
	} else if (pos < ret) {
		/* A header split over two reads: boundaries are lost until
		 * the backend is idle again. */
		v->synced = 0;
	}
}

/* A request starts in this read, at buf, with a message of type `type`:
 * where its text is. */
static __always_inline void find_text(struct pg_sock *v, u32 tgid, const u8 *buf, long ret, u8 type)
{
	v->batch = (u64)buf;
	v->text_kind = TEXT_NONE;
	if (type == 'Q') {
		v->text_kind = TEXT_IN_BATCH;
		v->text_off = 5;
	} else if (type == 'P' || type == 'B') {
		char name[STMT_NAME_BYTES] = {};
		int n = bpf_probe_read_user_str(name, sizeof(name), buf + 5);
		if (n <= 0)
			n = 1;
		if (type == 'P') {
			/* Parse: statement name, then the query */
			v->text_kind = TEXT_IN_BATCH;
			v->text_off = 5 + n;
			if (n > 1)
				keep_named(v, tgid, (const char *)(buf + 5), (const char *)(buf + 5 + n));
			if (!(v->exec_mask & 1) && v->pending) {
				/* A Parse in a round trip of its own (drivers that
				 * prepare ahead): its time goes to the statement,
				 * as the server's parse + bind + execute lines do. */
				v->parse_hash = name_hash((const char *)(buf + 5));
				v->parse_ns = 0;
			}
		} else {
			/* Bind: portal name, then the statement's */
			v->text_kind = TEXT_NAMED;
			v->text_off = 5 + n;
			if (v->parse_ns && name_hash((const char *)(buf + 5 + n)) == v->parse_hash) {
				v->added_ns = v->parse_ns;
				v->parse_ns = 0;
				v->parse_hash = 0;
			}
		}
	}
#if MODE != MODE_HIST
	if (v->text_kind != TEXT_IN_BATCH)
		return;
	char copy[4] = {};
	bpf_probe_read_user(copy, sizeof(copy), buf + v->text_off);
	int copy_in = (copy[0] | 0x20) == 'c' && (copy[1] | 0x20) == 'o' && (copy[2] | 0x20) == 'p' &&
		      (copy[3] | 0x20) == 'y';
	if (!v->pending || v->skip || copy_in) {
		/* More input will come within this request and may reuse the
		 * buffer: copy the text now, as far as it has been read. */
		u64 n = ret > v->text_off ? ret - v->text_off : 0;
		u32 len = bounded_len(n);
		if (len) {
			int got = bpf_probe_read_user_str(v->ev.text, len + 1, buf + v->text_off);
			v->ev.text_len = got > 0 ? got - 1 : 0;
			if (v->skip || n > TEXT_BYTES)
				v->ev.flags |= EV_TRUNCATED;
		}
		v->text_kind = TEXT_NONE;
	}
#endif
}

TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom)
{
	FLOOR_RETURN();
	long ret = args->ret;
	if (ret <= 0)
		return 0; /* EAGAIN: the backend is about to wait for its client */
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct pg_sock *v = sock_state.lookup(&tid);
	if (!v && !pid_traced(tgid))
		return 0; /* every other process on the host */
	struct syscall_args a = exit_syscall_args();
	u64 fd = a.fd;
	const u8 *buf = (const u8 *)a.buf;
	if (!v) {
		u32 zero = 0;
		struct pg_sock *init = sock_zero.lookup(&zero);
		if (!init)
			return 0;
		if (sock_state.update(&tid, init) != 0) {
			count(CTR_INFLIGHT_FULL);
			return 0;
		}
		v = sock_state.lookup(&tid);
		if (!v)
			return 0;
		v->created_ns = bpf_ktime_get_ns();
		v->conn_fd = fd; /* a backend first reads its client's startup packet */
	}
	if (fd != v->conn_fd)
		return 0; /* another connection of the backend's own (dblink, postgres_fdw) */
	u8 t[2] = {};
	int idle = !v->pending && !v->open;
	if (idle || v->tls)
		bpf_probe_read_user(t, sizeof(t), buf);
	/* A TLS record starts with its type (22 handshake, 23 data) and
	 * version 3.x; the statistics collector's UDP messages (PG 12-14)
	 * start with a small int, the startup packet with a 0. OpenSSL reads
	 * a record's header and its body separately: each data record's
	 * header counts once, as a request that cannot be followed. */
	if (t[1] == 3 && (t[0] == 22 || t[0] == 23)) {
		v->tls = 1;
		if (t[0] == 23)
			count(CTR_UNFOLLOWED);
		return 0;
	}
	if (v->tls)
		return 0;
	if (idle) {
		if (!frontend_type(t[0]))
			return 0;
		v->skip = 0;
		v->synced = 1;
		v->open_exec = 0;
		v->exec_mask = 0;
	}
	if (!v->synced)
		return 0;
	if (v->skip >= ret) {
		v->skip -= ret; /* all of it continues one message */
		return 0;
	}
	v->walk_buf = (u64)buf;
	v->walk_len = ret;
	v->walk_pos = v->skip;
	walk(v);
	if (!idle || (!v->pending && !v->open))
		return 0;
	u64 now = bpf_ktime_get_ns();
	v->seen_request = 1;
	start_request(v, now, tgid, tid);
	find_text(v, tgid, buf, ret, t[0]); /* t: read above, as the backend was idle */
	return 0;
}

/* The request's text (and application_name) into ev, when it is reported. */
static __always_inline void fill_text(struct pg_sock *v, u32 tgid)
{
	int full = needs_full_text(v->ev.duration_ns);
	if (full)
		pg_app(&v->ev, &v->backend, tgid, v->ev.tid);
	if (v->ev.text_len)
		return; /* copied when more input arrived */
	const char *at = (const char *)(v->batch + v->text_off);
	if (v->text_kind == TEXT_IN_BATCH) {
		if (full)
			copy_cstr(&v->ev, at);
		else
			copy_op_prefix(&v->ev, at); /* serve, under its threshold: the first word is all it needs */
		return;
	}
	if (v->text_kind == TEXT_NAMED) {
		struct named_key k = {.tgid = tgid, .name_hash = name_hash(at)};
		if (take_kept_text(&v->ev, named.lookup(&k), v->created_ns))
			return;
		v->ev.flags |= EV_NO_TEXT; /* parsed before tracing started */
		count(CTR_NO_TEXT);
		return;
	}
	/* A request that starts with neither Query, Parse nor Bind (an Execute
	 * of a portal left open, a cursor's next rows), or whose first message
	 * had left the buffer. */
	v->ev.flags |= EV_NO_TEXT | EV_TEXT_UNREAD;
	count(CTR_TEXT_UNREAD);
}

/* The message before ReadyForQuery (at z in buf) is an ErrorResponse or a
 * NoticeResponse when the two bytes before z are zero (the end of its last
 * field and of its field list). Finds the one whose length ends exactly at
 * z and, for an ErrorResponse, marks the statement failed with its code. */
static __always_inline void scan_error(struct pg_sock *v, const u8 *buf, u32 z)
{
	u32 zero = 0;
	struct scan_buf *sb = scan_scratch.lookup(&zero);
	if (!sb)
		return;
	char *w = sb->b;
	u64 n = z < SOCK_SCAN_BYTES - 1 ? z : SOCK_SCAN_BYTES - 1;
	asm volatile("" : "+r"(n)); /* keep the mask for the verifier (see bounded_len) */
	n &= SOCK_SCAN_BYTES - 1;
	if (n < 8)
		return;
	if (bpf_probe_read_user(w, n, buf + z - n) != 0)
		return;
	u32 at = 0;
	char type = 0;
	for (u32 k = 5; k < SOCK_SCAN_BYTES; k++) {
		if (k > n)
			break;
		u32 i = (n - k) & (SOCK_SCAN_BYTES - 1);
		char t = w[i];
		if (t != 'E' && t != 'N')
			continue;
		u8 len[4];
		for (int j = 0; j < 4; j++)
			len[j] = w[(i + 1 + j) & (SOCK_SCAN_BYTES - 1)];
		if (be32(len) == k - 1) {
			at = i;
			type = t;
			break;
		}
	}
	/* Through map memory, which the verifier does not track: otherwise
	 * each iteration that can break out is a separate state for the field
	 * search below, and the verifier's budget runs out. */
	volatile u32 *vat = &sb->at;
	volatile char *vtype = &sb->type;
	*vat = at;
	*vtype = type;
	at = *vat;
	if (*vtype != 'E')
		return; /* a NoticeResponse, or none found */
	at &= SOCK_SCAN_BYTES - 1;
	v->ev.flags |= EV_FAILED;
	v->ev.error_code = ERROR_CODE_UNKNOWN;
	/* Fields: a type byte and a string each; 'C' is the SQLSTATE, after
	 * the severity fields. */
	for (u32 f = at + 6; f < at + 6 + 64; f++) {
		if (w[(f - 1) & (SOCK_SCAN_BYTES - 1)] != 0 || w[f & (SOCK_SCAN_BYTES - 1)] != 'C')
			continue;
		if (w[(f + 6) & (SOCK_SCAN_BYTES - 1)] != 0)
			continue;
		u32 code = 0;
		for (int c = 0; c < 5; c++)
			code |= ((u32)(w[(f + 1 + c) & (SOCK_SCAN_BYTES - 1)] - '0') & 0x3F) << (6 * c);
		v->ev.error_code = code;
		break;
	}
}

/* The backend sends (fd, buf, len): a response, or part of one. Returns 1
 * when a statement finished. */
static __always_inline int pg_send(u64 fd, const u8 *buf, u64 len)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct pg_sock *v = sock_state.lookup(&tid);
	if (!v || fd != v->conn_fd || !v->seen_request)
		return 0;
	if (len < 6 || len > (1u << 30))
		return 0;
	/* The last 8 bytes (6 of a lone ReadyForQuery, at tail + 2). */
	u8 tail[8] = {};
	if (len >= 8)
		bpf_probe_read_user(tail, 8, buf + len - 8);
	else
		bpf_probe_read_user(tail + 2, 6, buf + len - 6);
	int ready = tail[2] == 'Z' && !tail[3] && !tail[4] && !tail[5] && tail[6] == 5;
	if (!v->pending) {
		if (ready) {
			/* Messages with no Sync (authentication, a Flush) were
			 * answered; otherwise nothing followed explains it. */
			if (!v->open)
				count(CTR_UNFOLLOWED);
			v->open = 0;
			v->open_exec = 0;
		}
		return 0;
	}
	/* An ErrorResponse is flushed as soon as it is queued (elog.c,
	 * send_message_to_frontend), so it ends a send of its own or comes
	 * just before ReadyForQuery; either way its last two bytes are 0. */
	if (ready && len >= 8 && !tail[0] && !tail[1])
		scan_error(v, buf, len - 6);
	else if (!ready && !tail[6] && !tail[7])
		scan_error(v, buf, len);
	if (!ready)
		return 0; /* more of the response follows */
	u64 now = bpf_ktime_get_ns();
	u32 tgid = id >> 32;
	end_request(v, now);
	/* A request that executes nothing is not a statement, unless it
	 * failed: then the client's statement failed at its Parse. */
	int finished = (v->exec_mask & 1) || (v->ev.flags & EV_FAILED);
	if (finished) {
#if MODE != MODE_HIST
		if (v->ev.duration_ns >= THRESHOLD_NS)
			fill_text(v, tgid);
#endif
		finish_statement(&v->ev);
	}
	v->exec_mask >>= 1;
	v->pending--;
	v->req_head++;
	if (v->more)
		walk(v);
	if (v->pending || v->open) {
		/* The next pipelined request starts now. Its messages are still
		 * where the read put them: the backend reads again (and moves
		 * what is left to the buffer's start, pqcomm.c pq_recvbuf) only
		 * when it has used everything before them. */
		start_request(v, now, tgid, tid);
		v->text_kind = TEXT_NONE;
		u64 at = v->pending ? v->req_at[v->req_head & (SOCK_REQS - 1)] : v->open_at;
		u64 end = v->walk_buf + v->walk_len;
		u8 type = 0;
		if (at >= v->walk_buf && at < end && bpf_probe_read_user(&type, 1, (const void *)at) == 0)
			find_text(v, tgid, (const u8 *)at, end - at, type);
	}
	return finished;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	FLOOR_RETURN();
	if (pg_send(args->fd, (const u8 *)args->buff, args->len))
		digest_tail(args); /* serve: the digests are updated in fp_chunk (DIGEST_IN_TAIL) */
	return 0;
}

static __always_inline int engine_thread_exit(u32 tid)
{
	struct pg_sock *v = sock_state.lookup(&tid);
	if (!v)
		return 0;
	int open = v->pending && (v->exec_mask & 1);
	sock_state.delete(&tid);
	return open;
}

static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp)
{
}
