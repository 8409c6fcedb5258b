/*
 * bench/: a stand-in "postgres" for measuring dbslower's cost per statement
 * without a database's noise. It exports what dbslower's server-times
 * machine reads and probes (postgres.bpf.c, PG_SERVER_TIMES), with
 * PostgreSQL's names and signatures, and does what a backend does for one
 * simple-protocol statement, N times:
 *   stmtStartTimestamp = now; debug_query_string = text;
 *   PortalRun(); check_log_duration(); debug_query_string = NULL;
 *   sendto()   (ReadyForQuery's flush)
 * and prints the nanoseconds per statement. The version string makes
 * dbslower plan for PostgreSQL 15. The sendto goes to fd -1: the syscall
 * tracepoint fires at entry either way, and the EBADF keeps the stand-in's
 * own cost (the "none" row) small.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char version[] = "postgres (PostgreSQL) 15.0";

/* Unoptimised, so each starts with push %rbp as PostgreSQL's functions do:
 * uprobes emulate that, but single-step a RIP-relative first instruction. */
#define NOINLINE __attribute__((noinline, used, optimize("O0")))
static volatile long sink;

/* What machine 1 reads from the backend's memory (src/dbslower/quirks.py). */
static long stmtStartTimestamp; /* TimestampTz: microseconds from 2000-01-01 UTC */
const char *debug_query_string;
int ParallelWorkerNumber = -1;
unsigned int MyDatabaseId = 5;
char *application_name = "pgbench";

/* Optimised, as in PostgreSQL: plan.py takes stmtStartTimestamp's address
 * from this accessor's `mov disp32(%rip),%rax; ret`. */
__attribute__((noinline, used, optimize("O2"))) long GetCurrentStatementStartTimestamp(void)
{
	return stmtStartTimestamp;
}

NOINLINE void pgstat_report_activity(int state, const char *cmd) { sink += state + (cmd != 0); }
NOINLINE int PortalRun(void *portal) { sink++; return 1; }
NOINLINE int check_log_duration(char *msec, int was_logged) { sink++; return 0; }
NOINLINE void AbortCurrentTransaction(void) { sink++; }
NOINLINE int errstart_cold(int elevel, const char *domain) { sink++; return 1; }
NOINLINE int errcode(int sqlerrcode) { sink++; return 0; }
NOINLINE void SaveCachedPlan(void *plansource) { sink++; }

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define PG_EPOCH_UNIX_US 946684800000000L

static long now_pg_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return tv.tv_sec * 1000000L + tv.tv_usec - PG_EPOCH_UNIX_US;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	const char *text = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
	char line[64];
	char msec[32];
	setvbuf(stdout, NULL, _IOLBF, 0);
	puts(version);
	/* One measurement per line read on stdin, so a tracer can attach in between. */
	while (fgets(line, sizeof(line), stdin)) {
		double t0 = now_ns();
		for (long i = 0; i < n; i++) {
			stmtStartTimestamp = now_pg_us();
			debug_query_string = text;
			PortalRun(0);
			check_log_duration(msec, 0);
			debug_query_string = NULL;
			syscall(SYS_sendto, -1, "Z", 1, 0, NULL, 0);
		}
		printf("%.1f\n", (now_ns() - t0) / n);
	}
	return 0;
}
