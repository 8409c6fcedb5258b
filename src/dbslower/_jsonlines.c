/*
 * dbslower._jsonlines: the JSON-lines writer's compiled helper.
 *
 * Streaming every statement (-m 0 -j) spent about 2.5 us of CPython per
 * event (decode, an Event object, an f-string, a list append), taken from
 * the database on a busy host (issue 12). This walks the ring buffer's
 * records itself and writes the lines of the plain ones, the statements
 * that finished with their whole text, into one bytes object per batch.
 *
 * It formats a record only when it needs nothing Python knows that the
 * record does not say: a finished statement (kind, no flags, no
 * fingerprint), valid UTF-8 text, and a line tail (engine, pid, context,
 * server...) that Python wrote for an earlier record with the same key
 * bytes in this batch (output.py, FastLines.learn). At any other record
 * it stops, and Python decodes that one as usual; so every line is what
 * output.JsonWriter.on_event would have written, and in order
 * (tests/unit/test_jsonlines.py compares the two on the same records).
 *
 * The record layout comes from decode.py (HEADER_FIELDS) as offsets; the
 * ring buffer's from kernel/bpf/ringbuf.c, as decode.RingReader reads it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <linux/bpf.h> /* BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ */
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_KEY_SLICES 8
#define MAX_KEY_BYTES 512
/* Records per call: the caller hands space back to the producers between
 * calls (decode.RingReader.read does it every 1024 records too). */
#define MAX_RECORDS 1024

typedef struct {
	PyObject_HEAD
	Py_ssize_t off_start, off_duration, off_fp, off_text_len, off_flags, off_kind, off_text;
	int kind_query;
	int mysql;
	long long mono_to_wall_ns;
	int nslices;
	Py_ssize_t slice_at[MAX_KEY_SLICES], slice_len[MAX_KEY_SLICES];
	Py_ssize_t key_len;
	PyObject *tails;  /* dict: key bytes -> tail bytes */
	PyObject *status; /* bytes: a plain statement's status fields */
	long long ts_sec;
	char ts_prefix[32];
	Py_ssize_t ts_prefix_len;
	char *out;
	size_t out_len, out_cap;
} Formatter;

static int layout_at(PyObject *layout, const char *name, Py_ssize_t *at)
{
	PyObject *v = PyDict_GetItemString(layout, name);
	if (!v) {
		PyErr_Format(PyExc_KeyError, "layout has no %s", name);
		return -1;
	}
	*at = PyLong_AsSsize_t(v);
	return *at < 0 && PyErr_Occurred() ? -1 : 0;
}

static int Formatter_init(Formatter *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"layout", "key_slices", "tails", "status", "mysql", "mono_to_wall_ns", NULL};
	PyObject *layout, *slices, *tails, *status;
	int mysql;
	long long mono_to_wall;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO!O!pL", names, &PyDict_Type, &layout, &slices, &PyDict_Type,
					 &tails, &PyBytes_Type, &status, &mysql, &mono_to_wall))
		return -1;
	Py_ssize_t kind_query;
	if (layout_at(layout, "start_ns", &self->off_start) || layout_at(layout, "duration_ns", &self->off_duration) ||
	    layout_at(layout, "fp", &self->off_fp) || layout_at(layout, "text_len", &self->off_text_len) ||
	    layout_at(layout, "flags", &self->off_flags) || layout_at(layout, "kind", &self->off_kind) ||
	    layout_at(layout, "text", &self->off_text) || layout_at(layout, "kind_query", &kind_query))
		return -1;
	self->kind_query = (int)kind_query;
	PyObject *seq = PySequence_Fast(slices, "key_slices: a sequence of (offset, length)");
	if (!seq)
		return -1;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	if (n > MAX_KEY_SLICES) {
		Py_DECREF(seq);
		PyErr_SetString(PyExc_ValueError, "too many key slices");
		return -1;
	}
	self->key_len = 0;
	for (Py_ssize_t i = 0; i < n; i++) {
		if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "nn", &self->slice_at[i], &self->slice_len[i])) {
			Py_DECREF(seq);
			return -1;
		}
		if (self->slice_at[i] < 0 || self->slice_len[i] < 0 ||
		    self->slice_at[i] + self->slice_len[i] > self->off_text) {
			Py_DECREF(seq);
			PyErr_SetString(PyExc_ValueError, "a key slice is outside the record's header");
			return -1;
		}
		self->key_len += self->slice_len[i];
	}
	Py_DECREF(seq);
	if (self->key_len > MAX_KEY_BYTES) {
		PyErr_SetString(PyExc_ValueError, "key too long");
		return -1;
	}
	self->nslices = (int)n;
	Py_INCREF(tails);
	Py_XSETREF(self->tails, tails);
	Py_INCREF(status);
	Py_XSETREF(self->status, status);
	self->mysql = mysql;
	self->mono_to_wall_ns = mono_to_wall;
	self->ts_sec = -1;
	return 0;
}

static void Formatter_dealloc(Formatter *self)
{
	Py_XDECREF(self->tails);
	Py_XDECREF(self->status);
	PyMem_Free(self->out);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint64_t load_u64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static uint32_t load_u32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

/* Strict UTF-8, as Python's decoder accepts it: no overlong forms, no
 * surrogates, nothing above U+10FFFF. Anything else is left to Python,
 * which writes U+FFFD for it. */
static int valid_utf8(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t need;
		uint8_t lo = 0x80, hi = 0xBF;
		if (c >= 0xC2 && c <= 0xDF)
			need = 1;
		else if (c >= 0xE0 && c <= 0xEF) {
			need = 2;
			if (c == 0xE0)
				lo = 0xA0;
			else if (c == 0xED)
				hi = 0x9F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			need = 3;
			if (c == 0xF0)
				lo = 0x90;
			else if (c == 0xF4)
				hi = 0x8F;
		} else
			return 0;
		if (i + need >= n)
			return 0; /* cut short */
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (size_t k = 2; k <= need; k++)
			if ((s[i + k] & 0xC0) != 0x80)
				return 0;
		i += need + 1;
	}
	return 1;
}

/* Python's str.isspace() for ASCII. */
static int ascii_space(uint8_t c)
{
	return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
}

/* MySQL: the decoder's query.rstrip().rstrip(";").rstrip(). Returns the
 * kept length, or -1 when a non-ASCII character ends the text where a
 * strip looks (Unicode whitespace: left to Python). */
static Py_ssize_t mysql_strip(const uint8_t *s, Py_ssize_t n)
{
	for (int pass = 0; pass < 3; pass++) {
		if (pass == 1) {
			while (n > 0 && s[n - 1] == ';')
				n--;
			continue;
		}
		while (n > 0 && ascii_space(s[n - 1]))
			n--;
		if (n > 0 && s[n - 1] >= 0x80)
			return -1;
	}
	return n;
}

static int reserve(Formatter *self, size_t more)
{
	if (self->out_len + more <= self->out_cap)
		return 0;
	size_t cap = self->out_cap ? self->out_cap : 1 << 16;
	while (cap < self->out_len + more)
		cap *= 2;
	char *p = PyMem_Realloc(self->out, cap);
	if (!p) {
		PyErr_NoMemory();
		return -1;
	}
	self->out = p;
	self->out_cap = cap;
	return 0;
}

static char *put(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

/* n, zero-padded to width digits (width 0: as many as it has). */
static char *put_uint(char *p, unsigned long long n, int width)
{
	char tmp[24];
	int i = 0;
	do {
		tmp[i++] = (char)('0' + n % 10);
		n /= 10;
	} while (n);
	while (i < width)
		tmp[i++] = '0';
	while (i)
		*p++ = tmp[--i];
	return p;
}

/* As json.encoder.encode_basestring (ensure_ascii=False) escapes a str. */
static char *put_json_string(char *p, const uint8_t *s, Py_ssize_t n)
{
	static const char hex[] = "0123456789abcdef";
	*p++ = '"';
	for (Py_ssize_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (c >= 0x20 && c != '"' && c != '\\') {
			*p++ = (char)c;
			continue;
		}
		*p++ = '\\';
		switch (c) {
		case '"': *p++ = '"'; break;
		case '\\': *p++ = '\\'; break;
		case '\n': *p++ = 'n'; break;
		case '\r': *p++ = 'r'; break;
		case '\t': *p++ = 't'; break;
		case '\b': *p++ = 'b'; break;
		case '\f': *p++ = 'f'; break;
		default:
			p = put(p, "u00", 3);
			*p++ = hex[c >> 4];
			*p++ = hex[c & 15];
		}
	}
	*p++ = '"';
	return p;
}

/* 1: the record's line was written; 0: Python must take this record; -1: error. */
static int format_record(Formatter *self, const uint8_t *rec, Py_ssize_t len)
{
	if (len < self->off_text)
		return 0;
	if (rec[self->off_kind] != self->kind_query || rec[self->off_flags] || load_u64(rec + self->off_fp))
		return 0;
	uint8_t keybuf[MAX_KEY_BYTES];
	Py_ssize_t k = 0;
	for (int i = 0; i < self->nslices; i++) {
		memcpy(keybuf + k, rec + self->slice_at[i], self->slice_len[i]);
		k += self->slice_len[i];
	}
	PyObject *key = PyBytes_FromStringAndSize((const char *)keybuf, k);
	if (!key)
		return -1;
	PyObject *tail = PyDict_GetItemWithError(self->tails, key); /* borrowed */
	Py_DECREF(key);
	if (!tail)
		return PyErr_Occurred() ? -1 : 0;
	if (!PyBytes_Check(tail)) {
		PyErr_SetString(PyExc_TypeError, "a tail is not bytes");
		return -1;
	}
	Py_ssize_t text_len = load_u32(rec + self->off_text_len);
	if (text_len > len - self->off_text)
		text_len = len - self->off_text;
	const uint8_t *text = rec + self->off_text;
	if (self->mysql) {
		text_len = mysql_strip(text, text_len);
		if (text_len < 0)
			return 0;
	}
	if (!valid_utf8(text, (size_t)text_len))
		return 0;

	long long wall = (long long)load_u64(rec + self->off_start) + self->mono_to_wall_ns;
	if (wall < 0)
		return 0;
	long long sec = wall / 1000000000LL, rem = wall % 1000000000LL;
	if (sec != self->ts_sec) {
		struct tm tm;
		time_t t = (time_t)sec;
		if (!gmtime_r(&t, &tm))
			return 0;
		self->ts_prefix_len = (Py_ssize_t)strftime(self->ts_prefix, sizeof(self->ts_prefix), "%Y-%m-%dT%H:%M:%S", &tm);
		if (!self->ts_prefix_len)
			return 0;
		self->ts_sec = sec;
	}
	uint64_t dur = load_u64(rec + self->off_duration);
	Py_ssize_t tail_len = PyBytes_GET_SIZE(tail), status_len = PyBytes_GET_SIZE(self->status);
	if (reserve(self, 128 + (size_t)text_len * 6 + (size_t)tail_len + (size_t)status_len) < 0)
		return -1;
	char *p = self->out + self->out_len;
	p = put(p, "{\"ts\":\"", 7);
	p = put(p, self->ts_prefix, (size_t)self->ts_prefix_len);
	*p++ = '.';
	p = put_uint(p, (unsigned long long)(rem / 1000), 6);
	p = put(p, "Z\",\"duration_ms\":", 17);
	p = put_uint(p, dur / 1000000, 0);
	*p++ = '.';
	p = put_uint(p, dur % 1000000, 6);
	p = put(p, ",\"query\":", 9);
	p = put_json_string(p, text, text_len);
	*p++ = ',';
	p = put(p, PyBytes_AS_STRING(self->status), (size_t)status_len);
	p = put(p, PyBytes_AS_STRING(tail), (size_t)tail_len);
	self->out_len = (size_t)(p - self->out);
	return 1;
}

PyDoc_STRVAR(lines_doc,
"lines(data, cons, prod, mask, page, room) -> (cons, count, lines)\n\n"
"Formats the ring buffer's records from position cons on, up to prod, and\n"
"stops before a record Python must decode, a record still being written,\n"
"after room bytes of lines, or after 1024 records. Returns the new\n"
"consumer position, the lines written and their bytes.");

static PyObject *Formatter_lines(Formatter *self, PyObject *args)
{
	PyObject *data;
	unsigned long long cons, prod, mask;
	Py_ssize_t page, room;
	if (!PyArg_ParseTuple(args, "OKKKnn", &data, &cons, &prod, &mask, &page, &room))
		return NULL;
	Py_buffer view;
	if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	const uint8_t *base = view.buf;
	Py_ssize_t n = 0;
	self->out_len = 0;
	while (cons < prod && n < MAX_RECORDS && (Py_ssize_t)self->out_len < room) {
		Py_ssize_t off = page + (Py_ssize_t)(cons & mask);
		if (off + BPF_RINGBUF_HDR_SZ > view.len)
			break;
		/* The producer's length store is a release: this acquire orders the record's bytes after it. */
		uint32_t hdr = __atomic_load_n((const uint32_t *)(base + off), __ATOMIC_ACQUIRE);
		if (hdr & BPF_RINGBUF_BUSY_BIT)
			break;
		Py_ssize_t len = (Py_ssize_t)(hdr & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT));
		if (off + BPF_RINGBUF_HDR_SZ + len > view.len)
			break;
		if (!(hdr & BPF_RINGBUF_DISCARD_BIT)) {
			int r = format_record(self, base + off + BPF_RINGBUF_HDR_SZ, len);
			if (r < 0) {
				PyBuffer_Release(&view);
				return NULL;
			}
			if (r == 0)
				break;
			n++;
		}
		cons += ((unsigned long long)len + BPF_RINGBUF_HDR_SZ + 7) & ~7ULL;
	}
	PyBuffer_Release(&view);
	PyObject *lines = PyBytes_FromStringAndSize(self->out, (Py_ssize_t)self->out_len);
	if (!lines)
		return NULL;
	return Py_BuildValue("KnN", cons, n, lines);
}

static PyMethodDef Formatter_methods[] = {
	{"lines", (PyCFunction)Formatter_lines, METH_VARARGS, lines_doc},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject FormatterType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "dbslower._jsonlines.Formatter",
	.tp_basicsize = sizeof(Formatter),
	.tp_dealloc = (destructor)Formatter_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Formatter(layout, key_slices, tails, status, mysql, mono_to_wall_ns)",
	.tp_methods = Formatter_methods,
	.tp_init = (initproc)Formatter_init,
	.tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "dbslower._jsonlines", "The JSON-lines writer's compiled helper.", -1, NULL,
};

PyMODINIT_FUNC PyInit__jsonlines(void)
{
	if (PyType_Ready(&FormatterType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (!m)
		return NULL;
	Py_INCREF(&FormatterType);
	if (PyModule_AddObject(m, "Formatter", (PyObject *)&FormatterType) < 0) {
		Py_DECREF(&FormatterType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
