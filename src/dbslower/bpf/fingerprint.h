#ifndef DBSLOWER_FINGERPRINT_H
#define DBSLOWER_FINGERPRINT_H
#include "dbslower.h"

/*
 * Kernel fingerprint: FNV-1a over the text with literals and layout
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
#define FNV_PRIME 1099511628211ULL
#define FNV_OFFSET 14695981039346656037ULL

struct fp_state {
	const char *text;
	u32 len;
	u32 state;
	u64 hash;
	char prev;      /* previous byte of the input, raw */
	char last_out;  /* previous byte hashed */
};

static __always_inline void fp_out(struct fp_state *s, char c)
{
	if (c == ' ' && (s->last_out == ' ' || s->last_out == 0))
		return;
	s->hash = (s->hash ^ (u8)c) * FNV_PRIME;
	s->last_out = c;
}

static __always_inline int is_ident(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '$' || (u8)c >= 0x80;
}

static long fp_step(u32 i, struct fp_state *s)
{
	if (i >= s->len || i >= TEXT_BYTES)
		return 1;
	char c = s->text[i & (TEXT_BYTES - 1)];
	char prev = s->prev;
	s->prev = c;
	switch (s->state) {
	case FP_SQUOTE:
		if (c == '\'')
			s->state = FP_PLAIN;
		return 0;
	case FP_DQUOTE:
		if (c == '"')
			s->state = FP_PLAIN;
		return 0;
	case FP_BLOCK_COMMENT:
		if (c == '/' && prev == '*')
			s->state = FP_PLAIN;
		return 0;
	case FP_LINE_COMMENT:
		if (c == '\n')
			s->state = FP_PLAIN;
		return 0;
	case FP_NUMBER:
		if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' ||
		    c == 'x' || c == 'X' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
			return 0;
		s->state = FP_PLAIN;
		break;
	}
	if (c == '\'') {
		s->state = FP_SQUOTE;
		fp_out(s, '?');
	} else if (c == '"' && DQUOTE_IS_STRING) {
		s->state = FP_DQUOTE;
		fp_out(s, '?');
	} else if (c >= '0' && c <= '9' && !is_ident(prev)) {
		s->state = FP_NUMBER;
		fp_out(s, '?');
	} else if (c == '*' && prev == '/') {
		/* '/' was already hashed; harmless, it is the same for every comment */
		s->state = FP_BLOCK_COMMENT;
	} else if (c == '-' && prev == '-') {
		s->state = FP_LINE_COMMENT;
	} else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
		fp_out(s, ' ');
	} else {
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		fp_out(s, c);
	}
	return 0;
}

static __always_inline u64 kernel_fingerprint(const char *text, u32 len)
{
	struct fp_state s = {.text = text, .len = len, .hash = FNV_OFFSET};
	bpf_loop(TEXT_BYTES, fp_step, &s, 0);
	return s.hash | 1; /* never 0, which means "no fingerprint" */
}
#endif
