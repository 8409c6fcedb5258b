/*
 * bench/: a stand-in "postgres" for measuring dbslower's cost per statement
 * without a database's noise. It exports the functions dbslower's uprobe
 * method probes, with PostgreSQL's signatures, and calls them in the order a
 * backend does for one simple-protocol statement, N times:
 *   pgstat_report_activity(STATE_RUNNING, text); PortalRun(); check_log_duration();
 *   pgstat_report_activity(STATE_IDLE, NULL)
 * and prints the nanoseconds per statement. The version string makes
 * dbslower plan for PostgreSQL 15 (STATE_RUNNING = 2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char version[] = "postgres (PostgreSQL) 15.0";

/* Unoptimised, so each starts with push %rbp as PostgreSQL's functions do:
 * uprobes emulate that, but single-step a RIP-relative first instruction. */
#define NOINLINE __attribute__((noinline, used, optimize("O0")))
static volatile long sink;

NOINLINE void pgstat_report_activity(int state, const char *cmd) { sink += state + (cmd != 0); }
NOINLINE int PortalRun(void *portal) { sink++; return 1; }
NOINLINE int check_log_duration(char *msec, int was_logged) { sink++; return 0; }
NOINLINE void AbortCurrentTransaction(void) { sink++; }

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	const char *text = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
	char line[64];
	setvbuf(stdout, NULL, _IOLBF, 0);
	puts(version);
	/* One measurement per line read on stdin, so a tracer can attach in between. */
	while (fgets(line, sizeof(line), stdin)) {
		double t0 = now_ns();
		for (long i = 0; i < n; i++) {
			pgstat_report_activity(2, text);
			PortalRun(0);
			check_log_duration(0, 0);
			pgstat_report_activity(1, 0);
		}
		printf("%.1f\n", (now_ns() - t0) / n);
	}
	return 0;
}
