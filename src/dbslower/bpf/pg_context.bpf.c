/*
 * PostgreSQL, both machines (postgres.bpf.c, postgres_socket.bpf.c): what a
 * statement carries besides its time, read when it starts.
 */

/* Fills ev's server, database OID and application_name pointer from the
 * backend's process entry (SERVER_IDS); *last_app_ptr is the pointer already
 * sent to user space in a KIND_APP note for this backend. ev lives in the
 * backend's per-thread entry (zeroed when it is made, deleted when the
 * backend exits), and a backend serves one database for its life, so
 * MyDatabaseId is read only until it is set. */
static __always_inline void pg_context(struct query_event *ev, u64 *last_app_ptr, u32 tgid, u32 tid)
{
#if SERVER_IDS
	struct proc_info *pp = procs.lookup(&tgid);
	ev->app_ptr = 0;
	if (pp) {
		ev->server_id = pp->server_id;
		if (!ev->db_id && pp->db_id_addr)
			bpf_probe_read_user(&ev->db_id, sizeof(ev->db_id), (void *)pp->db_id_addr);
		if (pp->app_name_addr)
			bpf_probe_read_user(&ev->app_ptr, sizeof(ev->app_ptr), (void *)pp->app_name_addr);
	}
	if (ev->app_ptr != *last_app_ptr) {
		/* A new connection, or SET application_name: send the name now,
		 * while the backend surely lives, once per change. */
		*last_app_ptr = ev->app_ptr;
		send_note(KIND_APP, tgid, tid, ev->app_ptr, (const char *)ev->app_ptr);
	}
#endif
}
