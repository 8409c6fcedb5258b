/*
 * The part of dbslower's BPF program every engine shares: the ring buffer,
 * counters, process filters, and what happens to a finished statement in
 * each MODE (stream it, count it in a histogram, or fingerprint it into a
 * digest).
 *
 * load.py joins this file, the engine's fragments (postgres.bpf.c,
 * mysql.bpf.c with mysql_uprobe.bpf.c or mysql_usdt.bpf.c) into one program
 * text with #line markers: bcc rewrites map calls such as
 * `events.ringbuf_output(...)` only in its main source file, so the
 * fragments cannot be #included. Pure helpers live in buckets.h and
 * fingerprint.h.
 *
 * Never dereferences kernel structures: only pt_regs and user memory.
 * Configuration: #defines from dbslower/abi.py and dbslower/plan.py,
 * documented in dbslower.h.
 */
#include <uapi/linux/ptrace.h>
#include "dbslower.h"
#include "buckets.h"

#ifndef THRESHOLD_NS
#define THRESHOLD_NS 1000000ULL
#endif
#ifndef MODE
#define MODE MODE_STREAM
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#ifndef RINGBUF_WAKE_BYTES
#define RINGBUF_WAKE_BYTES (RINGBUF_PAGES * 4096 / 8)
#endif
/* Statements in flight: one entry per server thread or backend running one.
 * Entries go when their thread exits (sched_process_exit below), so this
 * bounds concurrent connections, not connections over time; 8192 is above
 * any max_connections seen in practice. A statement that finds no room is
 * counted (CTR_INFLIGHT_FULL), never dropped silently. */
#ifndef INFLIGHT_ENTRIES
#define INFLIGHT_ENTRIES 8192
#endif
#ifndef SERVER_IDS
#define SERVER_IDS 0
#endif
#ifndef DB_NAME_IDS
#define DB_NAME_IDS 0
#endif
#ifndef SLOW_EVENTS
#define SLOW_EVENTS 0
#endif
#ifndef DIGEST_ENTRIES
#define DIGEST_ENTRIES 16384
#endif
/* The socket methods' handlers hand a finished statement to fp_chunk by a
 * tail call even when digests are keyed by operation: walking the wire
 * protocol and updating the digests in one program exceeds the verifier's
 * budget (E2BIG). */
#ifndef DIGEST_IN_TAIL
#define DIGEST_IN_TAIL 0
#endif
#ifndef FOLLOW_EXEC
#define FOLLOW_EXEC 0
#endif
#ifndef DIGEST_BY_OPERATION
#define DIGEST_BY_OPERATION 0
#endif
#ifndef DIGEST_TP_CHAIN
#define DIGEST_TP_CHAIN 0
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, CTR_COUNT);

/* A statement starts now in thread tid of process tgid: what every engine
 * resets first (the engine's own fields follow). */
static __always_inline void start_event(struct query_event *ev, u64 now, u32 tgid, u32 tid)
{
	ev->start_ns = now;
	ev->pid = tgid;
	ev->tid = tid;
	ev->flags = 0;
	ev->error_code = 0;
	ev->text_len = 0;
}

static __always_inline void count(int which)
{
	u64 *c = counters.lookup(&which);
	if (c)
		(*c)++;
}

/*
 * Records are written without waking the reader. A wake-up from inside a
 * probe lets the reader preempt the traced server on its CPU, and when that
 * falls between our end probe and the server's own end timestamp, the
 * reader's run time counts in the server's duration but not in ours: the
 * first statement of a new connection (the reader then reads /proc for the
 * new backend) came out short by 0.3-2.9 ms. The reader polls every 100 ms
 * (pipeline.py); a CPU forces a wake-up once it has written
 * RINGBUF_WAKE_BYTES since its last one (a quarter of the buffer over the
 * CPUs), so a burst cannot fill the buffer before the reader looks.
 * (bcc 0.26 has no ringbuf_query() to ask the buffer's fill instead.)
 */
BPF_PERCPU_ARRAY(unwoken_bytes, u64, 1);

/* Sends the first bytes of a record; counts it when the buffer is full. */
static __always_inline void send_record(void *rec, u32 bytes)
{
	u32 zero = 0;
	u64 flags = BPF_RB_NO_WAKEUP;
	u64 *pending = unwoken_bytes.lookup(&zero);
	if (pending) {
		*pending += bytes;
		if (*pending >= RINGBUF_WAKE_BYTES) {
			*pending = 0;
			flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	if (events.ringbuf_output(rec, bytes, flags) < 0)
		count(CTR_LOST_EVENTS);
}

/* A length the verifier can see is at most TEXT_BYTES. The empty asm hides
 * the clamped value from the compiler, so it cannot pass the unclamped
 * register to the helper, and it must keep the mask the verifier reads. */
static __always_inline u32 bounded_len(u64 len)
{
	if (len > TEXT_BYTES)
		len = TEXT_BYTES;
	asm volatile("" : "+r"(len));
	return len & (TEXT_BYTES * 2 - 1);
}

/* Copies a NUL-terminated string of user memory into dst (TEXT_BYTES + 1
 * bytes), marking it truncated only when there really was more (one byte
 * past the buffer). */
static __always_inline void copy_user_str(char *dst, u32 *len, u8 *flags, const char *text)
{
	int n = bpf_probe_read_user_str(dst, TEXT_BYTES + 1, text);
	if (n <= 0) {
		*len = 0;
		*flags |= EV_NO_TEXT;
		return;
	}
	*len = n - 1;
	if (n == TEXT_BYTES + 1) {
		char more = 0;
		bpf_probe_read_user(&more, 1, text + TEXT_BYTES);
		if (more)
			*flags |= EV_TRUNCATED;
	}
}

static __always_inline void copy_cstr(struct query_event *ev, const char *text)
{
	copy_user_str(ev->text, &ev->text_len, &ev->flags, text);
}

/* Copies len bytes of statement text (not NUL-terminated) into ev. */
static __always_inline void copy_counted(struct query_event *ev, const char *text, u64 len)
{
	if (len > TEXT_BYTES)
		ev->flags |= EV_TRUNCATED;
	u32 n = bounded_len(len);
	if (bpf_probe_read_user(ev->text, n, text) < 0) {
		ev->flags |= EV_NO_TEXT;
		n = 0;
	}
	ev->text_len = n;
}

/* The socket methods keep a prepared statement's text from the request that
 * prepared it to the ones that execute it, in an LRU map of these: 8192 (with
 * the default 1 kB of text; 8 MB of kernel memory, fewer entries for longer
 * texts), the least recently used going first (their executions then have no
 * text). `owner` tells a connection's entries from those of an earlier one
 * that had the same key. */
struct kept_text {
	u64 owner;
	u32 text_len;
	u8 flags;
	u8 pad[3];
	char text[TEXT_BYTES + 1];
};
#define KEPT_TEXT_ENTRIES (8192 * 1024 / TEXT_BYTES)

/* A kept text of `owner`, if t is one, into ev; 0 when there is none. */
static __always_inline int take_kept_text(struct query_event *ev, const struct kept_text *t, u64 owner)
{
	if (!t || t->owner != owner)
		return 0;
	u32 n = bounded_len(t->text_len);
	bpf_probe_read_kernel(ev->text, n, t->text);
	ev->text_len = n;
	ev->flags |= t->flags;
	return 1;
}

/* FNV-1a, 64 bit: the kernel fingerprint (fingerprint.h) and the keys of names */
#define FNV_PRIME 1099511628211ULL
#define FNV_OFFSET 14695981039346656037ULL

/* A NUL-terminated name in kernel memory, at most max bytes: a prepared
 * statement's (postgres_socket.bpf.c) or a database's (db_name_id). */
static __always_inline u64 name_fnv(const char *name, int max)
{
	u64 h = FNV_OFFSET;
	for (int i = 0; i < max; i++) {
		if (!name[i])
			break;
		h = (h ^ (u8)name[i]) * FNV_PRIME;
	}
	return h;
}

/* MySQL/MariaDB (serve): a database's key in the digests (query_event.db_id),
 * from its name as read into ev->db: its FNV-1a folded to 32 bits; 0 for no
 * database. The first statement of each (operation, database) carries the
 * name to user space in its KIND_SAMPLE record (digest_update), which
 * labels the key with it. */
static __always_inline u32 db_name_id(const char *db)
{
	u64 h = name_fnv(db, CTX_DB_BYTES);
	u32 id = (u32)(h ^ (h >> 32));
	return db[0] ? (id ? id : 1) : 0;
}

/* At a syscall's exit tracepoint (the socket methods): its first three
 * arguments, from the task's saved user registers (bpf_task_pt_regs, Linux
 * 5.15+), so that its entry need not be traced too. */
struct syscall_args {
	u64 fd;
	u64 buf;
	u64 len;
};

static __always_inline struct syscall_args exit_syscall_args(void)
{
	struct syscall_args a = {};
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	bpf_probe_read_kernel(&a.fd, sizeof(a.fd), &PT_REGS_PARM1(regs));
	bpf_probe_read_kernel(&a.buf, sizeof(a.buf), &PT_REGS_PARM2(regs));
	bpf_probe_read_kernel(&a.len, sizeof(a.len), &PT_REGS_PARM3(regs));
	return a;
}

/* The benchmark's floor: the same probe sites, handlers that do nothing. */
#if MODE == MODE_FLOOR
#define FLOOR_RETURN() return 0
#else
#define FLOOR_RETURN() do {} while (0)
#endif

#if FILTER_PIDS
/* tgid -> TRACE_SELF or TRACE_INHERIT. Seeded from user space; children of
 * TRACE_INHERIT processes (PostgreSQL backends forked by the postmaster) are
 * added as they fork, so connections opened later are traced too. Sized for
 * every process of the traced servers: a connection is a process in
 * PostgreSQL, and 65536 is above any max_connections seen in practice. */
#define TRACE_SELF 1
#define TRACE_INHERIT 2
BPF_HASH(traced_pids, u32, u8, 65536);

static __always_inline int pid_traced(u32 tgid)
{
	return traced_pids.lookup(&tgid) != 0;
}
#else
static __always_inline int pid_traced(u32 tgid)
{
	return 1;
}
#endif

#if SERVER_IDS
/* serve: tgid -> the server it belongs to (numbered by user space) and, in
 * PostgreSQL, where MyDatabaseId (an exported Oid) is in that process.
 * Backends are forked from the postmaster without exec, so they share its
 * addresses; user space seeds each postmaster (or mysqld) and the backends
 * that already run, and fork copies the entry to new ones. Same size as
 * traced_pids. */
BPF_HASH(procs, u32, struct proc_info, 65536);
/* KIND_EXIT and KIND_APP notes are built here: too big for the BPF stack. */
BPF_PERCPU_ARRAY(note_scratch, struct query_event, 1);

/* A note to user space about process tgid; text: a string of at most 64
 * bytes (application_name's maximum, NAMEDATALEN), or none. */
static __always_inline void send_note(u8 kind, u32 tgid, u32 tid, u64 app_ptr, const char *text)
{
	u32 zero = 0;
	struct query_event *note = note_scratch.lookup(&zero);
	if (!note)
		return;
	note->kind = kind;
	note->pid = tgid;
	note->tid = tid;
	note->app_ptr = app_ptr;
	note->text_len = 0;
	if (text) {
		int n = bpf_probe_read_user_str(note->text, 64, text);
		note->text_len = n > 0 ? n - 1 : 0;
	}
	send_record(note, offsetof(struct query_event, text) + 64);
}
#endif

/* A statement starts in an event that may hold another's: no context known
 * yet but its server (MySQL's machines, which read the rest later). */
static __always_inline void start_bare_event(struct query_event *ev, u64 start_ns, u32 tgid, u32 tid)
{
	start_event(ev, start_ns, tgid, tid);
	ev->conn_id = 0;
	ev->fp = 0;
	ev->app_ptr = 0;
	ev->db_id = 0;
	ev->server_id = 0;
	ev->command = 0;
	ev->db[0] = 0;
	ev->user[0] = 0;
	ev->host[0] = 0;
#if SERVER_IDS
	struct proc_info *pp = procs.lookup(&tgid);
	if (pp)
		ev->server_id = pp->server_id;
#endif
}

#if FILTER_PIDS && FOLLOW_EXEC
/* The socket methods' tracepoints see every process, so they follow the
 * servers by PID. Without -p every server of the traced binaries is wanted,
 * as uprobes on the binary would have it: a server started or restarted
 * from one of them joins the filter at its exec, not seconds later when
 * user space looks again. Keyed by the binary's path as discovery read it
 * (/proc/PID/exe); a server started through another path (a symlink, a
 * container's view) is found by that later look instead. One entry per
 * traced binary; 64 is more than one host runs. */
struct exec_path {
	char path[EXEC_PATH_BYTES];
};
BPF_HASH(follow_exec, struct exec_path, u8, 64);

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	struct exec_path k = {};
	TP_DATA_LOC_READ_STR(k.path, filename, sizeof(k.path));
	u8 *mode = follow_exec.lookup(&k);
	if (mode) {
		u32 pid = args->pid;
		traced_pids.update(&pid, mode);
	}
	return 0;
}
#endif

#if FILTER_PIDS || SERVER_IDS
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	u32 parent = args->parent_pid;
	u32 child = args->child_pid;
#if FILTER_PIDS
	u8 *mode = traced_pids.lookup(&parent);
	if (mode && *mode == TRACE_INHERIT) {
		u8 self = TRACE_SELF;
		traced_pids.update(&child, &self);
	}
#endif
#if SERVER_IDS
	struct proc_info *pp = procs.lookup(&parent);
	if (pp) {
		struct proc_info copy = *pp;
		procs.update(&child, &copy);
	}
#endif
	return 0;
}
#endif

#if MODE == MODE_HIST
BPF_PERCPU_ARRAY(hist, u64, HIST_BUCKETS);
/* [0]: failed statements, [1]: the slowest statement's ns */
BPF_PERCPU_ARRAY(hist_extra, u64, 2);
#endif

#if MODE == MODE_DIGEST
#if DIGEST_BY_OPERATION
/* Keyed by (operation, database, server): a few keys, each updated by every
 * CPU for every statement, so each CPU has its own copy and no cache line
 * moves between CPUs per statement (plan.py sizes them: DIGEST_ENTRIES is
 * 2048 here, keys of operations x databases x servers). */
BPF_PERCPU_HASH(digests, struct digest_key, struct digest_stats, DIGEST_ENTRIES);
BPF_PERCPU_HASH(digest_hist, struct hist_key, u64, DIGEST_ENTRIES * 8);
#else
BPF_HASH(digests, struct digest_key, struct digest_stats, DIGEST_ENTRIES);
/* 16384 statement shapes at once; user space folds cold ones away above 75%
 * (pipeline.py, Source.evict_cold). 8 buckets per shape on average (errors
 * by code add keys, but failing shapes are few). */
BPF_HASH(digest_hist, struct hist_key, u64, DIGEST_ENTRIES * 8);
#endif
/* While `digests` is full (a burst of new shapes faster than user space
 * folds), statements are counted here without their fingerprint (fp 0),
 * per database and server: 1024 such pairs, and their buckets. */
BPF_HASH(digest_overflow, struct digest_key, struct digest_stats, 1024);
BPF_HASH(overflow_hist, struct hist_key, u64, 16384);
#include "fingerprint.h"
/* A finished statement waiting for its fingerprint. Hashing runs in
 * fp_chunk, tail-called FP_CHUNK bytes at a time from the end of the probe
 * handler that finished the statement. */
struct fp_work {
	u32 pending;
	u32 pos;
	u32 state;
	char prev;
	char last_out;
	u16 pad;
	u64 hash;
	u64 cache_key; /* where the engine keeps this statement's fingerprint; 0: nowhere */
	struct query_event ev;
};
BPF_PERCPU_ARRAY(fp_work, struct fp_work, 1);
BPF_PROG_ARRAY(fp_chain, 1);
#if DIGEST_TP_CHAIN
/* A method whose uprobe programs and a syscall tracepoint both finish
 * statements (postgres.bpf.c reports at the backend's send): a tail call
 * needs a callee of its caller's program type (kernel/bpf/core.c,
 * bpf_prog_map_compatible), so the tracepoint has its own fp_chunk
 * (fp_chunk_tp, loaded as a tracepoint program by load.py). */
BPF_PROG_ARRAY(fp_chain_tp, 1);
#endif
#if SLOW_EVENTS
/* top: statements at least slow_ns[0] - 1 ns long are also streamed, with
 * their fingerprint; 0 means not set yet. A map, not a #define, so the
 * threshold can change while the program runs. */
BPF_ARRAY(slow_ns, u64, 1);
#endif
#endif

#if MODE == MODE_DIGEST
static __always_inline void digest_update(struct query_event *ev, u64 fp);
#endif

/* Whether a finished statement's whole text and context can leave the
 * kernel. Digests keyed by operation need only the first word, unless the
 * statement is over serve's threshold and streamed: engines then read less
 * for the statements under it (a prefix of OP_PREFIX_BYTES). */
#define OP_PREFIX_BYTES (OP_SCAN_BYTES + OP_LETTERS + 1)
static __always_inline int needs_full_text(u64 duration_ns)
{
#if MODE == MODE_DIGEST && DIGEST_BY_OPERATION && SLOW_EVENTS
	u32 slot = 0;
	u64 *slow = slow_ns.lookup(&slot);
	return slow && *slow && duration_ns + 1 >= *slow;
#else
	return 1;
#endif
}

/* A text's first OP_PREFIX_BYTES, all that its operation key reads. */
static __always_inline void copy_op_prefix(struct query_event *ev, const char *text)
{
	int n = bpf_probe_read_user_str(ev->text, OP_PREFIX_BYTES + 1, text);
	ev->text_len = n > 0 ? n - 1 : 0;
}

/* Defined by the engine's fragment: the fingerprint of the statement kept
 * under cache_key (see finish_statement_cached) is fp. */
static __always_inline void engine_fingerprinted(u64 cache_key, u32 tgid, u64 fp);

/*
 * A statement has finished. ev holds its header and text; the caller has set
 * duration_ns, flags and error_code. Streams it, or aggregates it, per MODE.
 * In digest mode an engine that can keep a statement's fingerprint (a MySQL
 * prepared statement runs the same text every time) passes where (cache_key)
 * and the fingerprint it kept (ev->fp, 0 if none yet): the text is then
 * hashed once, not at every execution.
 */
static __always_inline void finish_statement_cached(struct query_event *ev, u64 cache_key)
{
	if (ev->duration_ns < THRESHOLD_NS)
		return;
	if (!(ev->flags & EV_FAILED))
		ev->error_code = 0;
	else if (!ev->error_code)
		ev->error_code = ERROR_CODE_UNKNOWN;
#if MODE == MODE_STREAM
	u32 len = bounded_len(ev->text_len);
	ev->kind = KIND_QUERY;
	send_record(ev, offsetof(struct query_event, text) + len);
#elif MODE == MODE_HIST
	u32 b = hist_bucket(ev->duration_ns);
	u64 *c = hist.lookup(&b);
	if (c)
		(*c)++;
	u32 slot = 0;
	u64 *x = hist_extra.lookup(&slot);
	if (x && (ev->flags & EV_FAILED))
		(*x)++;
	slot = 1;
	x = hist_extra.lookup(&slot);
	if (x && ev->duration_ns > *x)
		*x = ev->duration_ns;
#elif MODE == MODE_DIGEST
	if (ev->fp) {
		digest_update(ev, ev->fp);
		return;
	}
#if DIGEST_BY_OPERATION && !DIGEST_IN_TAIL
	/* Keyed by the first word, found in a few bytes: no hashing of the
	 * whole text, no tail calls. */
	u64 key = operation_key(ev->text, bounded_len(ev->text_len));
	if (cache_key)
		engine_fingerprinted(cache_key, ev->pid, key);
	digest_update(ev, key);
	/* ev is the engine's own: the key digest_update stamped on the records
	 * it sent must not pass for the next statement's cached one. */
	ev->fp = 0;
	return;
#endif
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (!w)
		return;
	w->cache_key = cache_key;
	if (w->pending)
		count(CTR_LOST_EVENTS); /* another handler on this CPU left one unfinished */
	bpf_probe_read_kernel(&w->ev, offsetof(struct query_event, text) + bounded_len(ev->text_len), ev);
	w->pending = 1;
	w->pos = 0;
	w->state = FP_PLAIN;
	w->prev = 0;
	w->last_out = 0;
	w->hash = FNV_OFFSET;
#endif
}

static __always_inline void finish_statement(struct query_event *ev)
{
	finish_statement_cached(ev, 0);
}

#if MODE == MODE_DIGEST
/* Adds one to a statement's bucket, in digest_hist or, while the digest
 * table is full, overflow_hist. (bcc allows no map calls in a macro.) */
static __always_inline void count_bucket(struct hist_key *hk, int overflow)
{
	u64 one = 1;
	u64 *c = overflow ? overflow_hist.lookup(hk) : digest_hist.lookup(hk);
	if (c) {
		__sync_fetch_and_add(c, 1);
		return;
	}
	/* insert fails with -EEXIST when another CPU won the race */
	int err = overflow ? overflow_hist.insert(hk, &one) : digest_hist.insert(hk, &one);
	if (err == 0)
		return;
	c = overflow ? overflow_hist.lookup(hk) : digest_hist.lookup(hk);
	if (c)
		__sync_fetch_and_add(c, 1);
	else
		count(CTR_MAP_FULL);
}

static __always_inline void digest_update(struct query_event *ev, u64 fp)
{
	u32 failed = (ev->flags & EV_FAILED) ? 1 : 0;
	struct digest_key dk = {.fp = fp, .db_id = ev->db_id, .server_id = ev->server_id};
	struct hist_key hk = {.fp = fp, .db_id = ev->db_id, .server_id = ev->server_id,
			      .bucket = hist_bucket(ev->duration_ns), .failed = failed ? ev->error_code : 0};
	int overflow = 0;
	struct digest_stats *st = digests.lookup(&dk);
	if (!st) {
		struct digest_stats zero = {};
		/* insert fails with -EEXIST when another CPU won the race */
		int first = digests.insert(&dk, &zero) == 0;
		st = digests.lookup(&dk);
		if (!st) {
			/* Full: counted without its fingerprint until user space
			 * makes room. */
			dk.fp = 0;
			hk.fp = 0;
			st = digest_overflow.lookup(&dk);
			if (!st) {
				digest_overflow.insert(&dk, &zero);
				st = digest_overflow.lookup(&dk);
			}
			if (!st) {
				count(CTR_MAP_FULL);
				return;
			}
			overflow = 1;
		} else if (first) {
			/* The first statement of a fingerprint carries its text. */
			ev->kind = KIND_SAMPLE;
			ev->fp = fp;
			send_record(ev, offsetof(struct query_event, text) + bounded_len(ev->text_len));
		}
	}
	__sync_fetch_and_add(&st->calls, 1);
	__sync_fetch_and_add(&st->total_ns, ev->duration_ns);
	if (ev->duration_ns > st->max_ns)
		st->max_ns = ev->duration_ns;
	if (failed) {
		__sync_fetch_and_add(&st->failed, 1);
		__sync_fetch_and_add(&st->failed_ns, ev->duration_ns);
	}
#if SLOW_EVENTS
	u32 slot = 0;
	u64 *slow = slow_ns.lookup(&slot);
	if (slow && *slow && ev->duration_ns + 1 >= *slow) {
		ev->kind = KIND_QUERY;
		ev->fp = fp;
		send_record(ev, offsetof(struct query_event, text) + bounded_len(ev->text_len));
	}
#endif
	count_bucket(&hk, overflow);
}

/* Tail-calls fp_chunk: through fp_chain_tp from the syscall tracepoint of
 * a method whose other programs are uprobes (DIGEST_TP_CHAIN), else through
 * fp_chain. */
static __always_inline void fp_chain_call(void *ctx, int in_tracepoint)
{
#if DIGEST_TP_CHAIN
	if (in_tracepoint) {
		fp_chain_tp.call(ctx, 0);
		return;
	}
#endif
	fp_chain.call(ctx, 0);
}

/* Hashes the next FP_CHUNK bytes of the pending statement, then tail-calls
 * itself for the rest (through the chain of its own program type), or
 * records the statement under its fingerprint. */
static __always_inline int fp_chunk_step(void *ctx, int in_tracepoint)
{
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (!w || !w->pending)
		return 0;
#if DIGEST_BY_OPERATION
	/* DIGEST_IN_TAIL: keyed by its first word, as finish_statement_cached
	 * does in the other engines' handlers. */
	w->pending = 0;
	digest_update(&w->ev, operation_key(w->ev.text, bounded_len(w->ev.text_len)));
	return 0;
#endif
	u32 len = bounded_len(w->ev.text_len);
	if (len > FP_MAX_BYTES)
		len = FP_MAX_BYTES;
	/* The state machine's state round-trips through map memory, whose
	 * contents the verifier does not track: kept in registers, each
	 * constant state would be a separate verifier state per iteration,
	 * and the loop would exhaust the verifier's budget. */
	volatile u32 *vstate = &w->state;
	volatile char *vlast = &w->last_out;
	char prev = w->prev;
	u64 hash = w->hash;
	u32 pos = w->pos;
	for (u32 i = 0; i < FP_CHUNK; i++) {
		u32 p = pos + i;
		if (p >= len)
			break;
		char c = w->ev.text[p & (TEXT_BYTES - 1)];
		char last_out = *vlast;
		*vstate = fp_byte(*vstate, c, prev, &hash, &last_out);
		*vlast = last_out;
		prev = c;
	}
	pos += FP_CHUNK;
	w->prev = prev;
	w->hash = hash;
	w->pos = pos;
	if (pos < len)
		fp_chain_call(ctx, in_tracepoint); /* does not return unless it fails */
	w->pending = 0;
	hash |= 1; /* never 0, which means "no fingerprint" */
	if (w->cache_key)
		engine_fingerprinted(w->cache_key, w->ev.pid, hash);
	digest_update(&w->ev, hash);
	return 0;
}

int fp_chunk(struct pt_regs *ctx)
{
	return fp_chunk_step(ctx, 0);
}

#if DIGEST_TP_CHAIN
int fp_chunk_tp(void *ctx)
{
	return fp_chunk_step(ctx, 1);
}
#endif

/* Every probe handler that can finish a statement ends with this: the
 * statement is hashed by the tail-called fp_chunk, after the handler's own
 * map updates are done. digest_tail_tp: from the syscall tracepoint of a
 * method whose other programs are uprobes (DIGEST_TP_CHAIN). */
static __always_inline void digest_tail_from(void *ctx, int in_tracepoint)
{
	u32 zero = 0;
	struct fp_work *w = fp_work.lookup(&zero);
	if (w && w->pending)
		fp_chain_call(ctx, in_tracepoint);
}
#define digest_tail(ctx) digest_tail_from(ctx, 0)
#define digest_tail_tp(ctx) digest_tail_from(ctx, 1)
#else
#define digest_tail(ctx)
#define digest_tail_tp(ctx)
#endif

/* Defined by the engine's fragment: forgets thread tid's statement state;
 * returns 1 when a statement was open (it never finished). */
static __always_inline int engine_thread_exit(u32 tid);

/*
 * Per-thread and per-process state goes with its thread or process, so a
 * reused PID starts clean: a statement left open by a killed or terminated
 * backend would otherwise be closed by the next process given that PID, as
 * a phantom statement with another process's text. Such a statement never
 * finished, so it is not reported; it is counted (CTR_EXITED).
 */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (engine_thread_exit(tid))
		count(CTR_EXITED);
	/* Only the group leader's exit ends the process. */
	if (tid != tgid)
		return 0;
#if FILTER_PIDS
	traced_pids.delete(&tgid);
#endif
#if SERVER_IDS
	if (procs.lookup(&tgid)) {
		procs.delete(&tgid);
		/* User space caches what it read of this process (title, server):
		 * tell it the PID is free, so a process reusing it is read afresh. */
		send_note(KIND_EXIT, tgid, tid, 0, 0);
	}
#endif
	return 0;
}
