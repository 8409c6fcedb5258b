/* Log-linear latency buckets, mirrored by dbslower/hist.py. Pure functions. */
#ifndef DBSLOWER_BUCKETS_H
#define DBSLOWER_BUCKETS_H
#include "dbslower.h"

static __always_inline u32 log2_u64(u64 v)
{
	u32 r = 0, shift;
	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline u32 hist_bucket(u64 ns)
{
	if (ns < (1ULL << HIST_MIN_SHIFT))
		return ns >> (HIST_MIN_SHIFT - HIST_SUB_BITS);
	u32 msb = log2_u64(ns);
	u32 octave = msb - HIST_MIN_SHIFT + 1;
	u32 sub = (ns >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1);
	u32 b = octave * HIST_SUB + sub;
	return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

#endif
