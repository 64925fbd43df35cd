/* What a handler written in C would pay per record: a sketch, for the benchmark.
 *
 * bench/run.py builds this as an extension module when a C compiler and the
 * Python headers are at hand, checks that it renders exactly the lines
 * XlogFormatter renders, and times `handle(record)` with it against
 * FileHandler's. It does the work the cache's emit does, and nothing more:
 *
 *   - render the xlog line (the date part reused per second, like XlogFormatter);
 *   - prefix the record head: the header (text length, time, level, kind, name
 *     length, thread; 24 bytes) and the logger name (format version 2);
 *   - zstd: one ZSTD_compressStream2(..., ZSTD_e_flush) per record, a new stream
 *     every 700 records (the cache's level); or no compression at all;
 *   - a CRC-32 over the chunk body, the 8-byte chunk header, the copy into a
 *     buffer (a stand-in for the mapping) and a commit store.
 *
 * It takes no lock, handles no block boundary, no oversize record, no encryption
 * and no exc_info: a floor, not a handler. libzstd is loaded at run time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct { const void *src; size_t size; size_t pos; } ZSTD_inBuffer;
typedef struct { void *dst; size_t size; size_t pos; } ZSTD_outBuffer;
static ZSTD_CCtx *(*z_create)(void);
static size_t (*z_set)(ZSTD_CCtx *, int, int);
static size_t (*z_reset)(ZSTD_CCtx *, int);
static size_t (*z_stream)(ZSTD_CCtx *, ZSTD_outBuffer *, ZSTD_inBuffer *, int);
static unsigned (*z_is_error)(size_t);

static ZSTD_CCtx *ctx;
static int compress = 1;
static long in_block;
static uint32_t crc_table[256];
static PyObject *s_created, *s_msecs, *s_levelno, *s_process, *s_thread, *s_name,
    *s_filename, *s_lineno, *s_funcName, *s_getMessage;

static long stamp_second = -1;
static char stamp[64];
static size_t stamp_len;

#define LINE_MAX_BYTES (1 << 16)
#define HEAD 24         /* the fixed record header */
#define LOGGER_NAME_MAX 1024   /* the longest logger name a record carries */
static unsigned char line[HEAD + LOGGER_NAME_MAX + LINE_MAX_BYTES];
static unsigned char body[LINE_MAX_BYTES + 1024];
static unsigned char mapping[1 << 20];
static size_t mapping_pos;

static uint32_t crc32_of(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static int put(unsigned char **at, const unsigned char *end, const char *s, size_t n) {
    if ((size_t)(end - *at) < n) {
        PyErr_SetString(PyExc_ValueError, "line too long for the sketch");
        return -1;
    }
    memcpy(*at, s, n);
    *at += n;
    return 0;
}

static int put_str(unsigned char **at, const unsigned char *end, PyObject *o) {
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_CheckExact(o)) {
        s = PyUnicode_AsUTF8AndSize(o, &n);
        return s ? put(at, end, s, (size_t)n) : -1;
    }
    if (PyLong_CheckExact(o)) {
        char digits[32];
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow) return put(at, end, digits, (size_t)snprintf(digits, sizeof digits, "%lld", v));
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (!PyErr_Occurred())
            return put(at, end, digits, (size_t)snprintf(digits, sizeof digits, "%llu", u));
        PyErr_Clear();
    }
    PyObject *text = PyObject_Str(o);
    if (!text) return -1;
    s = PyUnicode_AsUTF8AndSize(text, &n);
    int rc = s ? put(at, end, s, (size_t)n) : -1;
    Py_DECREF(text);
    return rc;
}

static int put_attr(unsigned char **at, const unsigned char *end, PyObject *rec, PyObject *name) {
    PyObject *o = PyObject_GetAttr(rec, name);
    if (!o) return -1;
    int rc = put_str(at, end, o);
    Py_DECREF(o);
    return rc;
}

static char letter_of(long levelno) {
    switch (levelno) {
        case 10: return 'D';
        case 20: return 'I';
        case 30: return 'W';
        case 40: return 'E';
        case 50: return 'F';
    }
    if (levelno < 10) return 'V';
    return levelno > 50 ? 'F' : levelno > 40 ? 'E' : levelno > 30 ? 'W' : levelno > 20 ? 'I' : 'D';
}

/* Render the logger name after the 24-byte record header, then the xlog line; return
 * the line's length or -1, and where it starts, the name's length and the thread id. */
static Py_ssize_t render(PyObject *rec, double *created_out, long *level_out,
                         unsigned char **text_out, size_t *name_len_out,
                         unsigned long long *thread_out) {
    PyObject *o = PyObject_GetAttr(rec, s_created);
    if (!o) return -1;
    double created = PyFloat_AsDouble(o);
    Py_DECREF(o);
    if (created == -1.0 && PyErr_Occurred()) return -1;
    long second = (long)created;
    if (second != stamp_second) {
        time_t t = (time_t)second;
        struct tm local;
        localtime_r(&t, &local);
        stamp_len = strftime(stamp, sizeof stamp, "%Y-%m-%d %z %H:%M:%S", &local);
        stamp_second = second;
    }
    o = PyObject_GetAttr(rec, s_msecs);
    if (!o) return -1;
    long ms = (long)PyFloat_AsDouble(o);
    Py_DECREF(o);
    o = PyObject_GetAttr(rec, s_levelno);
    if (!o) return -1;
    long levelno = PyLong_AsLong(o);
    Py_DECREF(o);
    o = PyObject_GetAttr(rec, s_thread);
    if (!o) return -1;
    unsigned long long thread = PyLong_Check(o) ? PyLong_AsUnsignedLongLong(o) : 0;
    Py_DECREF(o);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        thread = 0;
    }
    unsigned char *at = line + HEAD, *end = line + sizeof line;
    if (put_attr(&at, line + HEAD + LOGGER_NAME_MAX, rec, s_name) < 0) return -1;
    unsigned char *text = at;
    PyObject *msg = PyObject_CallMethodNoArgs(rec, s_getMessage);
    if (!msg) return -1;

    char head[4] = {'[', letter_of(levelno), ']', '['}, millis[16];
    if (put(&at, end, head, 4) < 0 || put(&at, end, stamp, stamp_len) < 0 ||
        put(&at, end, millis, (size_t)snprintf(millis, sizeof millis, ".%03ld][", ms)) < 0 ||
        put_attr(&at, end, rec, s_process) < 0 || put(&at, end, ", ", 2) < 0 ||
        put_attr(&at, end, rec, s_thread) < 0 || put(&at, end, "][", 2) < 0 ||
        put_attr(&at, end, rec, s_name) < 0 || put(&at, end, "][", 2) < 0 ||
        put_attr(&at, end, rec, s_filename) < 0 || put(&at, end, ":", 1) < 0 ||
        put_attr(&at, end, rec, s_lineno) < 0 || put(&at, end, ", ", 2) < 0 ||
        put_attr(&at, end, rec, s_funcName) < 0 || put(&at, end, "][", 2) < 0 ||
        put_str(&at, end, msg) < 0) {
        Py_DECREF(msg);
        return -1;
    }
    Py_DECREF(msg);
    *created_out = created;
    *level_out = levelno;
    *text_out = text;
    *name_len_out = (size_t)(text - (line + HEAD));
    *thread_out = thread;
    return (Py_ssize_t)(at - text);
}

static PyObject *py_line(PyObject *self, PyObject *rec) {
    (void)self;
    double created;
    long levelno;
    unsigned char *text;
    size_t name_len;
    unsigned long long thread;
    Py_ssize_t n = render(rec, &created, &levelno, &text, &name_len, &thread);
    if (n < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)text, n);
}

static PyObject *py_emit(PyObject *self, PyObject *rec) {
    (void)self;
    double created;
    long levelno;
    unsigned char *text;
    size_t name_len;
    unsigned long long thread;
    Py_ssize_t n = render(rec, &created, &levelno, &text, &name_len, &thread);
    if (n < 0) return NULL;
    /* The record header, little-endian (docs/format.md): text_len, time_us, level,
     * kind, name_len, thread; the name and the line follow it in `line`. */
    uint32_t len32 = (uint32_t)n;
    int64_t time_us = (int64_t)(created * 1e6);
    uint16_t name16 = (uint16_t)name_len;
    uint64_t thread64 = (uint64_t)thread;
    memcpy(line, &len32, 4);
    memcpy(line + 4, &time_us, 8);
    line[12] = (unsigned char)(levelno < 0 ? 0 : levelno > 255 ? 255 : levelno);
    line[13] = 0;
    memcpy(line + 14, &name16, 2);
    memcpy(line + 16, &thread64, 8);
    size_t raw_len = HEAD + name_len + (size_t)n, body_len;
    if (compress) {
        if (in_block++ % 700 == 0) z_reset(ctx, 1);
        ZSTD_inBuffer in = {line, raw_len, 0};
        ZSTD_outBuffer out = {body, sizeof body, 0};
        size_t left = z_stream(ctx, &out, &in, 1);
        if (z_is_error(left) || left != 0) {
            PyErr_SetString(PyExc_RuntimeError, "zstd did not flush");
            return NULL;
        }
        body_len = out.pos;
    } else {
        memcpy(body, line, raw_len);
        body_len = raw_len;
    }
    uint32_t crc = crc32_of(body, body_len), blen = (uint32_t)body_len;
    if (mapping_pos + 8 + body_len + 16 > sizeof mapping) mapping_pos = 0;
    memcpy(mapping + mapping_pos, &blen, 4);
    memcpy(mapping + mapping_pos + 4, &crc, 4);
    memcpy(mapping + mapping_pos + 8, body, body_len);
    mapping_pos += 8 + body_len;
    uint64_t commit = mapping_pos;
    memcpy(mapping + sizeof mapping - 16, &commit, 8); /* the commit store */
    Py_RETURN_NONE;
}

static PyObject *py_setup(PyObject *self, PyObject *args) {
    (void)self;
    int level, use_zstd;
    if (!PyArg_ParseTuple(args, "pi", &use_zstd, &level)) return NULL;
    compress = use_zstd;
    in_block = 0;
    if (!compress) Py_RETURN_NONE;
    if (!ctx) {
        const char *names[] = {"libzstd.so.1", "libzstd.so", "libzstd.1.dylib",
                               "/opt/homebrew/lib/libzstd.1.dylib",
                               "/usr/local/lib/libzstd.1.dylib"};
        void *lib = NULL;
        for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++)
            lib = dlopen(names[i], RTLD_NOW);
        if (!lib) {
            PyErr_SetString(PyExc_OSError, "no libzstd on this machine");
            return NULL;
        }
        z_create = (ZSTD_CCtx * (*)(void)) dlsym(lib, "ZSTD_createCCtx");
        z_set = (size_t(*)(ZSTD_CCtx *, int, int))dlsym(lib, "ZSTD_CCtx_setParameter");
        z_reset = (size_t(*)(ZSTD_CCtx *, int))dlsym(lib, "ZSTD_CCtx_reset");
        z_stream = (size_t(*)(ZSTD_CCtx *, ZSTD_outBuffer *, ZSTD_inBuffer *, int))dlsym(
            lib, "ZSTD_compressStream2");
        z_is_error = (unsigned (*)(size_t))dlsym(lib, "ZSTD_isError");
        if (!z_create || !z_set || !z_reset || !z_stream || !z_is_error ||
            !(ctx = z_create())) {
            PyErr_SetString(PyExc_OSError, "libzstd lacks the streaming API");
            return NULL;
        }
    }
    if (z_is_error(z_set(ctx, 100, level))) {
        PyErr_SetString(PyExc_ValueError, "bad zstd level");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", py_setup, METH_VARARGS, "setup(use_zstd, level)"},
    {"line", py_line, METH_O, "The xlog line of a record, as bytes."},
    {"emit", py_emit, METH_O, "Render, compress, checksum and copy one record."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "native_emit", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_native_emit(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
#define INTERN(var, s) \
    if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_created, "created");
    INTERN(s_msecs, "msecs");
    INTERN(s_levelno, "levelno");
    INTERN(s_process, "process");
    INTERN(s_thread, "thread");
    INTERN(s_name, "name");
    INTERN(s_filename, "filename");
    INTERN(s_lineno, "lineno");
    INTERN(s_funcName, "funcName");
    INTERN(s_getMessage, "getMessage");
    return PyModule_Create(&module);
}
