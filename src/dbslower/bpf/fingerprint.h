#ifndef DBSLOWER_FINGERPRINT_H
#define DBSLOWER_FINGERPRINT_H
#include "dbslower.h"

/*
 * Kernel fingerprint: FNV-1a (FNV_* in common.bpf.c) over the text with literals and layout
 * normalised (numbers and quoted strings become '?', case folded, runs of
 * blanks collapsed, comments dropped). It is deliberately finer than the
 * user-space fingerprint (dbslower/fingerprint.py), which merges kernel
 * groups; the kernel hash only has to never merge what user space would
 * keep apart.
 */
#define FP_PLAIN 0
#define FP_SQUOTE 1
#define FP_DQUOTE 2
#define FP_NUMBER 3
#define FP_BLOCK_COMMENT 4
#define FP_LINE_COMMENT 5
#define FP_COMMENT_OPEN 6 /* saw '/' then '*': a hint if '!' follows */
/* MySQL strings: a backslash escapes the next byte, quote included
 * (pt-fingerprint's QueryRewriter handles \' and \" before quoting). */
#define FP_SQUOTE_ESC 7
#define FP_DQUOTE_ESC 8

static __always_inline int is_ident(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '$' || (u8)c >= 0x80;
}

/* One byte of the fingerprint state machine; returns the new state. */
static __always_inline u32 fp_byte(u32 state, char c, char prev, u64 *hash, char *last_out)
{
	char out = 0;
	switch (state) {
	case FP_SQUOTE:
		if (DQUOTE_IS_STRING && c == '\\')
			return FP_SQUOTE_ESC;
		return c == '\'' ? FP_PLAIN : FP_SQUOTE;
	case FP_SQUOTE_ESC:
		return FP_SQUOTE;
	case FP_DQUOTE_ESC:
		return FP_DQUOTE;
	case FP_DQUOTE:
		if (DQUOTE_IS_STRING) {
			if (c == '\\')
				return FP_DQUOTE_ESC;
			return c == '"' ? FP_PLAIN : FP_DQUOTE;
		}
		/* PostgreSQL quoted identifier: verbatim, case kept */
		*hash = (*hash ^ (u8)c) * FNV_PRIME;
		*last_out = c;
		return c == '"' ? FP_PLAIN : FP_DQUOTE;
	case FP_BLOCK_COMMENT:
		return (c == '/' && prev == '*') ? FP_PLAIN : FP_BLOCK_COMMENT;
	case FP_LINE_COMMENT:
		return c == '\n' ? FP_PLAIN : FP_LINE_COMMENT;
	case FP_COMMENT_OPEN:
		if (c != '!')
			return FP_BLOCK_COMMENT;
		out = '*'; /* a MySQL hint, slash-star-bang: keep it */
		state = FP_PLAIN;
		break;
	case FP_NUMBER:
		/* pt-fingerprint's number class, [0-9a-f.xb+-], minus the signs,
		 * and as it does before lower-casing: 0x1F is "?F" to it, so the
		 * kernel must not swallow the F either. */
		if ((c >= '0' && c <= '9') || c == '.' || c == 'x' || (c >= 'a' && c <= 'f'))
			return FP_NUMBER;
		state = FP_PLAIN;
		break;
	}
	if (!out) {
		if (c == '\'') {
			out = '?';
			state = FP_SQUOTE;
		} else if (c == '"') {
			out = DQUOTE_IS_STRING ? '?' : '"';
			state = FP_DQUOTE;
		} else if (c >= '0' && c <= '9' && !is_ident(prev)) {
			out = '?';
			state = FP_NUMBER;
		} else if (c == '*' && prev == '/') {
			return FP_COMMENT_OPEN;
		} else if (c == '-' && prev == '-') {
			return FP_LINE_COMMENT;
		} else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			out = ' ';
		} else {
			out = (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
		}
	}
	if (out == ' ' && (*last_out == ' ' || *last_out == 0))
		return state;
	*hash = (*hash ^ (u8)out) * FNV_PRIME;
	*last_out = out;
	return state;
}

/* Bytes hashed per tail-called program. With the state kept in map memory
 * (see fp_chunk) the verifier spends ~800 instructions per byte, so 256
 * bytes use about a fifth of its 1M budget; 32 chained calls cover the
 * largest capture, 8 KiB. */
#define FP_CHUNK 256
#define FP_MAX_CHUNKS 32 /* the kernel allows 33 tail calls in a chain */
#define FP_MAX_BYTES (FP_CHUNK * FP_MAX_CHUNKS)

/*
 * The digest key of DIGEST_BY_OPERATION (serve without per-fingerprint
 * metrics, whose labels need no more than db.operation.name): the
 * statement's first word, found after blanks, '(' and comments within its
 * first OP_SCAN_BYTES bytes, as up to OP_LETTERS letters packed 5 bits each
 * ('a' or 'A' = 1, the first letter highest), shifted left once and tagged
 * OP_KEY_TAG; OP_KEY_LONG when the word has more letters. Even, so never a
 * kernel fingerprint (those are odd). dbslower/abi.py unpacks it, and
 * dbslower/fingerprint.py's operation_name() applies the same rule to text.
 */
#define OPK_SKIP 0
#define OPK_SLASH 1
#define OPK_DASH 2
#define OPK_BLOCK 3
#define OPK_LINE 4
#define OPK_WORD 5

static __always_inline u64 operation_key(const char *text, u32 len)
{
	u64 packed = 0, longer = 0;
	u32 letters = 0, state = OPK_SKIP;
	char prev = 0;
	for (u32 i = 0; i < OP_SCAN_BYTES + OP_LETTERS + 1; i++) {
		if (i >= len)
			break;
		char c = text[i & (TEXT_BYTES - 1)];
		char lower = c | 0x20;
		int letter = lower >= 'a' && lower <= 'z';
		if (state == OPK_WORD) {
			if (!letter)
				break;
			if (letters == OP_LETTERS) {
				longer = OP_KEY_LONG;
				break;
			}
			packed = (packed << 5) | (u64)(lower - 'a' + 1);
			letters++;
			continue;
		}
		if (i >= OP_SCAN_BYTES)
			break;
		if (state == OPK_BLOCK) {
			if (c == '/' && prev == '*')
				state = OPK_SKIP;
			prev = c;
			continue;
		}
		if (state == OPK_LINE) {
			if (c == '\n')
				state = OPK_SKIP;
			continue;
		}
		if (state == OPK_SLASH) {
			if (c != '*')
				break;
			state = OPK_BLOCK;
			prev = 0; /* the opening star closes nothing */
			continue;
		}
		if (state == OPK_DASH) {
			if (c != '-')
				break;
			state = OPK_LINE;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == '(')
			continue;
		if (c == '/') {
			state = OPK_SLASH;
		} else if (c == '-') {
			state = OPK_DASH;
		} else if (letter) {
			state = OPK_WORD;
			packed = (u64)(lower - 'a' + 1);
			letters = 1;
		} else {
			break;
		}
	}
	return OP_KEY_TAG | longer | (packed << 1);
}

#endif
