/*
 * PostgreSQL, both machines (postgres.bpf.c, postgres_socket.bpf.c): what a
 * statement carries besides its time.
 */

/* What a backend's statements share, kept in its per-thread entry (zeroed
 * when it is made, deleted when the backend exits). */
struct pg_backend {
	u64 app_name_addr; /* where the application_name GUC's char * is in the backend */
	u64 last_app_ptr;  /* application_name's pointer already sent in a KIND_APP note */
	u8 known;          /* the process entry was found (SERVER_IDS) */
	u8 pad[7];
};

/* At a statement's start: its server and database OID. A backend belongs to
 * one server and serves one database for its life, and ev stays in its entry
 * between statements, so both are looked up until found, not per statement
 * (MyDatabaseId is read again only while it reads 0). */
static __always_inline void pg_context(struct query_event *ev, struct pg_backend *b, u32 tgid)
{
#if SERVER_IDS
	if (b->known && ev->db_id)
		return;
	struct proc_info *pp = procs.lookup(&tgid);
	if (!pp)
		return; /* not seeded yet by user space: looked up again at the next statement */
	b->known = 1;
	ev->server_id = pp->server_id;
	b->app_name_addr = pp->app_name_addr;
	if (!ev->db_id && pp->db_id_addr)
		bpf_probe_read_user(&ev->db_id, sizeof(ev->db_id), (void *)pp->db_id_addr);
#endif
}

/* A statement's text is being read to leave the kernel: its application_name
 * now, as the server's own log line (%a) has it when the statement ends (SET
 * application_name shows the new name). Statements that are only counted
 * (histograms, digests, statements under the threshold) never read it. */
static __always_inline void pg_app(struct query_event *ev, struct pg_backend *b, u32 tgid, u32 tid)
{
#if SERVER_IDS
	ev->app_ptr = 0;
	if (b->app_name_addr)
		bpf_probe_read_user(&ev->app_ptr, sizeof(ev->app_ptr), (void *)b->app_name_addr);
	if (ev->app_ptr != b->last_app_ptr) {
		/* A new connection, or SET application_name: send the name now,
		 * while the backend surely lives, once per change. */
		b->last_app_ptr = ev->app_ptr;
		send_note(KIND_APP, tgid, tid, ev->app_ptr, (const char *)ev->app_ptr);
	}
#endif
}
