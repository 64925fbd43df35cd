/* mmaplog._native: the record path of the cache, in C.
 *
 * A Writer holds the state of the block being written into a cache slot (the same
 * fields as mmaplog._cache.PyWriter, the pure-Python path, which stays the reference)
 * and does, per record and without releasing the GIL for the small inputs a log
 * record is: render the default xlog line (optionally), frame the record, checksum the
 * chunk, copy it into the mapping and store the commit. The cache's records are not
 * compressed one by one (the block is compressed whole when it is moved, in Python).
 * It produces the same bytes as the pure path; tests/test_native.py compares
 * them. Sealing (encryption) is ChaCha20-Poly1305 from the system's OpenSSL libcrypto,
 * loaded at run time (load_crypto) and checked against RFC 8439's test vector; where
 * it is not loaded, or in a forked child, it calls back into the Sealer that the block
 * session owns;
 * opening and sealing blocks, waiting for a slot and the cache's lock stay in Python
 * (mmaplog/_cache.py): this calls them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>


/* -- ChaCha20-Poly1305 (RFC 8439), from the system's libcrypto, loaded at run time ---- */

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
#define EVP_CTRL_AEAD_GET_TAG 0x10 /* openssl/evp.h */
static EVP_CIPHER_CTX *(*evp_ctx_new)(void);
static void (*evp_ctx_free)(EVP_CIPHER_CTX *);
static const EVP_CIPHER *(*evp_chacha20_poly1305)(void);
static int (*evp_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *,
                       const unsigned char *);
static int (*evp_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
static int (*evp_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
static int (*evp_ctrl)(EVP_CIPHER_CTX *, int, int, void *);

/* Counts the forks this process came out of (pthread_atfork): a key set before a fork
 * is never used after it, in the child (it would repeat the parent's nonces). */
static volatile unsigned long fork_generation;
static void after_fork_in_child(void) { fork_generation++; }

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx; /* the key set, no nonce yet */
    unsigned long generation;
} Aead;

static PyTypeObject AeadType;

/* Seal p1 + p2 under (nonce, aad) into out: ciphertext, then the 16-byte tag.
 * 0, or -1 (libcrypto refused; nothing else is known). */
static int aead_seal(Aead *a, const unsigned char nonce[12], const unsigned char *aad, size_t an,
                     const unsigned char *p1, size_t n1, const unsigned char *p2, size_t n2,
                     unsigned char *out) {
    int l = 0;
    if (an > INT_MAX || n1 > INT_MAX || n2 > INT_MAX) return -1;
    if (evp_init(a->ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (an && evp_update(a->ctx, NULL, &l, aad, (int)an) != 1) return -1;
    if (n1 && (evp_update(a->ctx, out, &l, p1, (int)n1) != 1 || (size_t)l != n1)) return -1;
    if (n2 && (evp_update(a->ctx, out + n1, &l, p2, (int)n2) != 1 || (size_t)l != n2)) return -1;
    if (evp_final(a->ctx, out + n1 + n2, &l) != 1 || l != 0) return -1;
    if (evp_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + n1 + n2) != 1) return -1;
    return 0;
}

static int aead_init(Aead *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key)) return -1;
    int rc = -1;
    if (!evp_ctx_new) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto is not loaded (load_crypto)");
    } else if (key.len != 32) {
        PyErr_Format(PyExc_ValueError, "key: expected 32 bytes, got %zd", key.len);
    } else if (self->ctx) {
        PyErr_SetString(PyExc_RuntimeError, "the key is set already");
    } else if (!(self->ctx = evp_ctx_new())) {
        PyErr_NoMemory();
    } else if (evp_init(self->ctx, evp_chacha20_poly1305(), NULL, key.buf, NULL) != 1) {
        evp_ctx_free(self->ctx);
        self->ctx = NULL;
        PyErr_SetString(PyExc_RuntimeError, "libcrypto refused the ChaCha20-Poly1305 key");
    } else {
        self->generation = fork_generation;
        rc = 0;
    }
    PyBuffer_Release(&key);
    return rc;
}

static void aead_dealloc(Aead *self) {
    if (self->ctx) evp_ctx_free(self->ctx); /* frees and cleanses the key schedule */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *aead_encrypt(Aead *self, PyObject *args) {
    /* encrypt(nonce, data, associated_data) -> ciphertext + tag, as
     * cryptography's ChaCha20Poly1305.encrypt (for tests). */
    Py_buffer n, d, ad;
    if (!PyArg_ParseTuple(args, "y*y*y*", &n, &d, &ad)) return NULL;
    PyObject *out = NULL;
    if (!self->ctx || self->generation != fork_generation) {
        PyErr_SetString(PyExc_RuntimeError, "no key (or a key of the parent process)");
    } else if (n.len != 12) {
        PyErr_SetString(PyExc_ValueError, "nonce: expected 12 bytes");
    } else if ((out = PyBytes_FromStringAndSize(NULL, d.len + 16)) &&
               aead_seal(self, n.buf, ad.buf, (size_t)ad.len, d.buf, (size_t)d.len, NULL, 0,
                         (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto: ChaCha20-Poly1305 failed");
    }
    PyBuffer_Release(&n);
    PyBuffer_Release(&d);
    PyBuffer_Release(&ad);
    return out;
}

static PyMethodDef aead_methods[] = {
    {"encrypt", (PyCFunction)aead_encrypt, METH_VARARGS,
     "encrypt(nonce, data, associated_data) -> ciphertext + 16-byte tag."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmaplog._native.ChaCha20Poly1305",
    .tp_doc = "A ChaCha20-Poly1305 key (RFC 8439) for the C path's seals, from libcrypto.",
    .tp_basicsize = sizeof(Aead),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)aead_init,
    .tp_dealloc = (destructor)aead_dealloc,
    .tp_methods = aead_methods,
};

/* -- constants shared with mmaplog/_format.py and mmaplog/_cache.py ------------------ */

enum { APPENDED = 0, DROPPED = 1, OVERSIZE = 2, CLOSED = 3, NOT_HANDLED = -1 };
#define RECORD_HEAD 24   /* <I q B B H Q>: text_len, time_us, level, kind, name_len, thread */
#define MAX_LOGGER_NAME 1024 /* the logger name's bytes follow the header (format 2) */
#define CHUNK_HEAD 8     /* <I I>: body_len, crc32(body, seed) */
#define TAG_SIZE 16
#define CHUNK_OVERHEAD (64 + CHUNK_HEAD + TAG_SIZE)
#define EMPTY 0

static uint32_t crc_table[8][256];

static uint32_t crc32_of(uint32_t crc, const unsigned char *p, size_t n) {
    /* zlib.crc32(data, crc): the standard CRC-32, slicing by 8. */
    uint32_t c = crc ^ 0xFFFFFFFFu;
    while (n && ((uintptr_t)p & 7)) {
        c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static void put_i64(unsigned char *p, int64_t s) {
    uint64_t v = (uint64_t)s;
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* -- fault points (tests only): a real SIGKILL between two stores of a record ------- */

enum { KILL_NONE = 0, KILL_BEFORE_HEADER = 1, KILL_BEFORE_COMMIT = 2 };
static int kill_point = KILL_NONE;
static long kill_countdown = 0;

static void fault(int where) {
    if (kill_point == where && kill_countdown-- == 0) raise(SIGKILL);
}

/* -- the Writer ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *buf;       /* the mapping (mmap.mmap, or a bytearray without a cache file) */
    PyObject *states;    /* the cache's slot states (a list of ints; EMPTY is 0) */
    PyObject *acquire;   /* the cache lock's acquire and release */
    PyObject *release;
    PyObject *make_room; /* Cache._make_room(need, size, time_us, timeout) -> status, under the lock */
    PyObject *seal;      /* Sealer.seal(seq, index, body, aad) -> bytes, or None */
    PyObject *aead;      /* the Sealer's key as a ChaCha20Poly1305 of this module, or None */
    PyObject *aad;       /* the block's associated data (bytes) */
    PyObject *heads;     /* bytearray: the open block's record headers, back to back */
    PyObject *texts;     /* list of bytes: the open block's record texts */
    long long pos, limit, payload_start, commit_at, seal_at, day_start, day_end, last_us;
    long long raw_len, raw_cap, raw_seal; /* uncompressed bytes: so far, at most, sealed past */
    unsigned long long seq;
    unsigned int seed, count;
} Writer;

static int writer_init(Writer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    self->limit = 0;
    return 0;
}

static int writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->buf);
    Py_VISIT(self->states);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->make_room);
    Py_VISIT(self->seal);
    Py_VISIT(self->aead);
    Py_VISIT(self->aad);
    Py_VISIT(self->heads);
    Py_VISIT(self->texts);
    return 0;
}

static int writer_clear(Writer *self) {
    Py_CLEAR(self->buf);
    Py_CLEAR(self->states);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->make_room);
    Py_CLEAR(self->seal);
    Py_CLEAR(self->aead);
    Py_CLEAR(self->aad);
    Py_CLEAR(self->heads);
    Py_CLEAR(self->texts);
    return 0;
}

static void writer_dealloc(Writer *self) {
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *writer_reset_stream(Writer *self, PyObject *unused) {
    /* A new block: there is no compressor stream to begin (PyWriter's has one only
     * for xlog caches, which take the pure path). */
    (void)self;
    (void)unused;
    Py_RETURN_NONE;
}

/* The record fits the open block on the fast path (Cache.append's condition). */
static int fits(Writer *self, long long need, long long size, long long time_us) {
    /* Differences, not sums: no field set from Python can make these overflow. */
    if (!(self->pos >= 0 && self->limit >= self->pos && need <= self->limit - self->pos &&
          self->raw_len >= 0 && self->raw_cap >= self->raw_len &&
          size <= self->raw_cap - self->raw_len && self->day_start <= time_us &&
          time_us < self->day_end))
        return 0;
    if (self->pos < self->seal_at && self->raw_len < self->raw_seal) return 1;
    /* Past the threshold: go on here only while no slot is free to seal into. */
    PyObject *states = self->states;
    if (!states || !PyList_Check(states)) return 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(states); i++) {
        PyObject *s = PyList_GET_ITEM(states, i);
        if (PyLong_Check(s)) {
            long v = PyLong_AsLong(s);
            if (v == -1 && PyErr_Occurred()) PyErr_Clear();
            if (v == EMPTY) return 0;
        }
    }
    return 1;
}

/* Write one record as a chunk, then its commit store (Cache's lock held, room checked).
 * head is the record's head (header and logger name, hn bytes); text a bytes object.
 * Returns 0, or -1 with an exception. */
static int write_chunk(Writer *self, const unsigned char *head, size_t hn, PyObject *text,
                       long long time_us) {
    const char *tp = PyBytes_AS_STRING(text);
    size_t tn = (size_t)PyBytes_GET_SIZE(text), raw = hn + tn;
    Py_buffer view;
    if (!self->heads || !PyByteArray_Check(self->heads) || !self->texts ||
        !PyList_Check(self->texts)) {
        PyErr_SetString(PyExc_TypeError, "heads must be a bytearray and texts a list");
        return -1;
    }
    if (!self->buf || PyObject_GetBuffer(self->buf, &view, PyBUF_WRITABLE) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "no mapping");
        return -1;
    }
    int rc = -1;
    unsigned char *map = (unsigned char *)view.buf;
    long long pos = self->pos;
    long long len = (long long)view.len;
    if (pos < 0 || self->limit > len || self->limit - pos < CHUNK_HEAD || self->commit_at < 0 ||
        self->commit_at > len - 16) {
        PyErr_SetString(PyExc_ValueError, "the block is outside the mapping");
        goto done;
    }
    unsigned char *chunk = map + pos, *body = chunk + CHUNK_HEAD;
    size_t room = (size_t)(self->limit - pos - CHUNK_HEAD), body_len;
    unsigned char small[2048];
    unsigned char *scratch = NULL;
    PyObject *sealed = NULL;
    if (!self->seal || self->seal == Py_None) {
        /* Copied straight into the mapping. */
        if (raw > room) {
            PyErr_SetString(PyExc_ValueError, "the record does not fit the block");
            goto free;
        }
        memcpy(body, head, hn);
        memcpy(body + hn, tp, tn);
        body_len = raw;
        goto framed;
    }
    /* Sealed: the plaintext joined in a buffer of our own first, never in the mapping (a
     * kill there would leave it in the cache file). The nonce is (seq, index): seq from
     * the session's one counter, index the chunk's place in the block (see
     * mmaplog/_blocks.py). */
    unsigned char *plain = raw <= sizeof small ? small : (scratch = PyMem_Malloc(raw));
    if (!plain) {
        PyErr_NoMemory();
        goto free;
    }
    memcpy(plain, head, hn);
    memcpy(plain + hn, tp, tn);
    /* Sealed here when the Sealer's key is here, and was set in this process. */
    Aead *aead = self->aead && Py_IS_TYPE(self->aead, &AeadType) &&
                         ((Aead *)self->aead)->ctx &&
                         ((Aead *)self->aead)->generation == fork_generation
                     ? (Aead *)self->aead
                     : NULL;
    if (aead) {
        /* Ciphertext and tag straight into the mapping, the nonce little-endian as
         * Sealer packs it. */
        unsigned char nonce[12];
        put_i64(nonce, (int64_t)self->seq);
        put_u32(nonce + 8, self->count);
        if (!self->aad || !PyBytes_Check(self->aad)) {
            PyErr_SetString(PyExc_TypeError, "aad must be bytes");
            goto free;
        }
        if (raw > room || room - raw < TAG_SIZE) {
            PyErr_SetString(PyExc_ValueError, "the sealed chunk does not fit the block");
            goto free;
        }
        if (aead_seal(aead, nonce, (const unsigned char *)PyBytes_AS_STRING(self->aad),
                      (size_t)PyBytes_GET_SIZE(self->aad), plain, raw, NULL, 0, body) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "libcrypto: ChaCha20-Poly1305 failed");
            goto free;
        }
        body_len = raw + TAG_SIZE;
    } else {
        /* The session's Sealer: Sealer.seal(seq, index, body, aad). */
        PyObject *args[4];
        args[0] = PyLong_FromUnsignedLongLong(self->seq);
        args[1] = PyLong_FromUnsignedLong(self->count);
        args[2] = PyBytes_FromStringAndSize((const char *)plain, (Py_ssize_t)raw);
        args[3] = self->aad ? self->aad : Py_None;
        if (args[0] && args[1] && args[2])
            sealed = PyObject_Vectorcall(self->seal, args, 4, NULL);
        Py_XDECREF(args[0]);
        Py_XDECREF(args[1]);
        Py_XDECREF(args[2]);
        if (!sealed) goto free;
        if (!PyBytes_Check(sealed) || (size_t)PyBytes_GET_SIZE(sealed) > room) {
            PyErr_SetString(PyExc_ValueError, "the sealed chunk does not fit the block");
            goto free;
        }
        body_len = (size_t)PyBytes_GET_SIZE(sealed);
        memcpy(body, PyBytes_AS_STRING(sealed), body_len);
    }
    /* The tags do not count toward sealing the block (as in the pure path). */
    self->seal_at += TAG_SIZE;
framed:;
    /* Keep the columns the flusher writes before anything is committed: a failure
     * here leaves the block as it was. */
    Py_ssize_t hlen = PyByteArray_GET_SIZE(self->heads);
    if (PyByteArray_Resize(self->heads, hlen + (Py_ssize_t)hn) < 0) goto free;
    if (PyList_Append(self->texts, text) < 0) {
        PyByteArray_Resize(self->heads, hlen);
        goto free;
    }
    memcpy(PyByteArray_AS_STRING(self->heads) + hlen, head, hn);
    if (kill_point) fault(KILL_BEFORE_HEADER);
    put_u32(chunk, (uint32_t)body_len);
    put_u32(chunk + 4, crc32_of(self->seed, chunk + CHUNK_HEAD, body_len));
    long long end = pos + CHUNK_HEAD + (long long)body_len;
    self->count += 1;
    self->raw_len += (long long)raw;
    if (time_us > self->last_us) self->last_us = time_us;
    /* The commit store, after the chunk: a kill between the two stores leaves the chunk
     * uncommitted, never a commit without its chunk. */
    atomic_signal_fence(memory_order_seq_cst);
    if (kill_point) fault(KILL_BEFORE_COMMIT);
    unsigned char *commit = map + self->commit_at;
    put_u32(commit, (uint32_t)(end - self->payload_start));
    put_u32(commit + 4, self->count);
    put_i64(commit + 8, self->last_us);
    self->pos = end;
    rc = 0;
free:
    if (rc < 0) {
        /* The compressor may have taken this record into its stream while the chunk
         * was not stored: the stream must not go on. The next record seals this block
         * (its chunks so far are whole) and opens one with a new stream (as the pure
         * path does, whatever the compression). */
        self->limit = self->pos;
    }
    if (scratch) PyMem_Free(scratch);
    Py_XDECREF(sealed);
done:
    PyBuffer_Release(&view);
    return rc;
}

/* Take the cache's lock, only ever while holding the GIL.
 *
 * A thread that blocked on the lock with the GIL released would get the lock and then
 * wait for the GIL while holding it: every other writer would then block on the lock
 * in turn, and the threads would queue on each other for every record (a lock convoy).
 * So the lock is only tried; when another thread holds it (the flusher, or a writer
 * in the slow path, both in Python code), the GIL is given away and the lock tried
 * again. Signal handlers run meanwhile, as in a blocking acquire. 0, or -1 with an
 * exception. */
static int lock_cache(Writer *self) {
    for (unsigned tries = 0;; tries++) {
        PyObject *r = PyObject_CallOneArg(self->acquire, Py_False);
        if (!r) return -1;
        int got = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (got) return got < 0 ? -1 : 0;
        Py_BEGIN_ALLOW_THREADS
        if (tries < 64) {
            sched_yield();
        } else { /* held for long (a slow disk under the lock): do not spin */
            struct timespec pause = {0, 50 * 1000};
            nanosleep(&pause, NULL);
        }
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

/* Cache.append for a framed record: the lock, the fast path, else Cache._make_room. */
static long append_framed(Writer *self, const unsigned char *head, size_t hn, PyObject *text,
                          long long time_us, PyObject *timeout) {
    size_t size = hn + (size_t)PyBytes_GET_SIZE(text);
    long long need = (long long)(size + (size >> 7) + CHUNK_OVERHEAD);
    if (!self->acquire || !self->release || !self->make_room || !self->heads || !self->texts) {
        PyErr_SetString(PyExc_ValueError, "the writer is not attached to a cache");
        return -2;
    }
    if (lock_cache(self) < 0) return -2;
    PyObject *r;
    long status = APPENDED;
    if (!fits(self, need, (long long)size, time_us)) {
        PyObject *args[4];
        args[0] = PyLong_FromLongLong(need);
        args[1] = PyLong_FromSize_t(size);
        args[2] = PyLong_FromLongLong(time_us);
        args[3] = timeout;
        r = args[0] && args[1] && args[2] ? PyObject_Vectorcall(self->make_room, args, 4, NULL)
                                          : NULL;
        Py_XDECREF(args[0]);
        Py_XDECREF(args[1]);
        Py_XDECREF(args[2]);
        if (!r) {
            status = -2;
        } else {
            status = PyLong_AsLong(r);
            Py_DECREF(r);
            if (status == -1 && PyErr_Occurred()) status = -2;
        }
    }
    if (status == APPENDED && write_chunk(self, head, hn, text, time_us) < 0) status = -2;
    /* Release whatever happened, keeping a pending exception. */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    r = PyObject_CallNoArgs(self->release);
    if (!r) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return -2;
    }
    Py_DECREF(r);
    PyErr_Restore(et, ev, tb);
    return status;
}

/* The record head: fmt.RECORD_HEADER, then the logger name (docs/format.md). */
static size_t pack_head(unsigned char *head, size_t text_len, long long time_us, long level,
                        int kind, const char *name, size_t name_len, unsigned long long thread) {
    put_u32(head, (uint32_t)text_len);
    put_i64(head + 4, time_us);
    head[12] = (unsigned char)(level < 0 ? 0 : level > 255 ? 255 : level);
    head[13] = (unsigned char)kind;
    head[14] = (unsigned char)name_len;
    head[15] = (unsigned char)(name_len >> 8);
    put_i64(head + 16, (int64_t)thread);
    memcpy(head + RECORD_HEAD, name, name_len);
    return RECORD_HEAD + name_len;
}

static PyObject *status_or_null(long status) {
    return status == -2 ? NULL : PyLong_FromLong(status);
}

/* The text argument as bytes (a bytes-like object is copied, as head + text copies it
 * on the pure path). New reference. */
static PyObject *text_bytes(PyObject *o) {
    if (PyBytes_Check(o)) {
        Py_INCREF(o);
        return o;
    }
    return PyBytes_FromObject(o);
}

static PyObject *writer_write(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    /* write(head, text, time_us): the chunk of one framed record; the caller holds the
     * lock and has made room (Cache._write). */
    if (nargs != 3 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) < RECORD_HEAD) {
        PyErr_SetString(PyExc_TypeError, "write(head: bytes, text: bytes, time_us: int)");
        return NULL;
    }
    long long t = PyLong_AsLongLong(args[2]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    PyObject *text = text_bytes(args[1]);
    if (!text) return NULL;
    int rc = write_chunk(self, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                         (size_t)PyBytes_GET_SIZE(args[0]), text, t);
    Py_DECREF(text);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *writer_append(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    /* append(head, text, time_us, timeout) -> status: Cache.append. */
    if (nargs != 4 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) < RECORD_HEAD) {
        PyErr_SetString(PyExc_TypeError,
                        "append(head: bytes, text: bytes, time_us: int, timeout: float)");
        return NULL;
    }
    long long t = PyLong_AsLongLong(args[2]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    PyObject *text = text_bytes(args[1]);
    if (!text) return NULL;
    long status = append_framed(self, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                                (size_t)PyBytes_GET_SIZE(args[0]), text, t, args[3]);
    Py_DECREF(text);
    return status_or_null(status);
}

/* -- rendering the default xlog line (mmaplog.XlogFormatter) ----------------------------- */

static PyObject *s_format, *s_clock, *s_msg, *s_args, *s_created, *s_msecs, *s_levelno, *s_process, *s_thread, *s_name, *s_filename,
    *s_lineno, *s_funcName, *s_getMessage, *s_exc_info, *s_exc_text, *s_stack_info, *s_empty;


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

/* The decimal digits of v (with its sign), as str(int) writes them; returns the length.
 * buf holds at least 21 bytes. */
static Py_ssize_t put_decimal(char *buf, unsigned long long v, int negative) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    Py_ssize_t len = 0;
    if (negative) buf[len++] = '-';
    while (n) buf[len++] = tmp[--n];
    return len;
}

/* str(o) as f"{o}" renders it: the object itself for an exact str. New reference. */
static PyObject *as_text(PyObject *o) {
    if (PyUnicode_CheckExact(o)) {
        Py_INCREF(o);
        return o;
    }
    return PyObject_Format(o, s_empty);
}

static PyTypeObject *record_type; /* logging.LogRecord: its attributes are in __dict__ */

/* rec.name: from the instance dict for an exact LogRecord (no property can stand in
 * the way), else by getattr. New reference, or NULL with an exception. */
static PyObject *get(PyObject *rec, PyObject *dict, PyObject *name) {
    if (dict) {
        PyObject *v = PyDict_GetItemWithError(dict, name);
        if (v) {
            Py_INCREF(v);
            return v;
        }
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_GetAttr(rec, name);
}

static PyObject *record_get_message; /* logging.LogRecord.getMessage, as the class has it */

/* record.getMessage(). For a LogRecord whose getMessage is logging's own, what it does
 * (str(msg), then msg % args if args), without the call into Python. */
static PyObject *get_message(PyObject *rec, PyObject *dict) {
    if (dict && record_get_message && !PyDict_GetItemWithError(dict, s_getMessage) &&
        !PyErr_Occurred()) {
        PyObject *current = PyObject_GetAttr((PyObject *)record_type, s_getMessage);
        if (!current) return NULL;
        int own = current == record_get_message;
        Py_DECREF(current);
        if (own) {
            PyObject *m = get(rec, dict, s_msg);
            if (!m) return NULL;
            PyObject *msg = PyObject_Str(m);
            Py_DECREF(m);
            if (!msg) return NULL;
            PyObject *args = get(rec, dict, s_args);
            if (!args) {
                Py_DECREF(msg);
                return NULL;
            }
            int some = PyObject_IsTrue(args);
            PyObject *out = some < 0 ? NULL : some ? PyNumber_Remainder(msg, args) : msg;
            if (out != msg) Py_DECREF(msg);
            Py_DECREF(args);
            return out;
        }
    }
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallMethodNoArgs(rec, s_getMessage);
}

static int is_falsy_attr(PyObject *rec, PyObject *dict, PyObject *name, int *falsy) {
    PyObject *o = get(rec, dict, name);
    if (!o) return -1;
    int t = PyObject_IsTrue(o);
    Py_DECREF(o);
    if (t < 0) return -1;
    *falsy = !t;
    return 0;
}

enum { P_PROCESS, P_THREAD, P_NAME, P_FILENAME, P_LINENO, P_FUNC, P_MSG, P_COUNT };

static PyTypeObject *formatter_type; /* mmaplog.XlogFormatter (set_formatter) */
static PyObject *formatter_format;   /* XlogFormatter.format as the class defines it */

/* The formatter renders as XlogFormatter does: that very class, its own format, not
 * replaced on the instance or the class. 1, 0, or -1 with an exception. */
static int plain_formatter(PyObject *f, PyObject **fdict) {
    *fdict = NULL;
    if (!formatter_type || !Py_IS_TYPE(f, formatter_type)) return 0;
    PyObject *current = PyObject_GetAttr((PyObject *)formatter_type, s_format);
    if (!current) return -1;
    int same = current == formatter_format;
    Py_DECREF(current);
    if (!same) return 0;
    PyObject *d = PyObject_GenericGetDict(f, NULL);
    if (!d) return -1;
    if (PyDict_GetItemWithError(d, s_format) || PyErr_Occurred()) {
        Py_DECREF(d);
        return PyErr_Occurred() ? -1 : 0;
    }
    *fdict = d;
    return 1;
}

/* The date part of second, from the formatter's own one-second cache (its _clock,
 * (second, stamp)), made and stored there when the second changed, as
 * XlogFormatter.format does: time.strftime("%Y-%m-%d %z %H:%M:%S", localtime(second)).
 * A new reference to the stamp (str), None if localtime fails, NULL with an exception. */
static PyObject *date_stamp(PyObject *fdict, long second) {
    PyObject *clock = PyDict_GetItemWithError(fdict, s_clock);
    if (!clock && PyErr_Occurred()) return NULL;
    if (clock && PyTuple_CheckExact(clock) && PyTuple_GET_SIZE(clock) == 2 &&
        PyLong_CheckExact(PyTuple_GET_ITEM(clock, 0)) &&
        PyUnicode_CheckExact(PyTuple_GET_ITEM(clock, 1))) {
        int overflow = 0;
        long cached = PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(clock, 0), &overflow);
        if (!overflow && cached == second) {
            PyObject *stamp = PyTuple_GET_ITEM(clock, 1);
            Py_INCREF(stamp);
            return stamp;
        }
    }
    time_t tt = (time_t)second;
    struct tm local;
    char buf[64];
    size_t n;
    if (!localtime_r(&tt, &local) ||
        !(n = strftime(buf, sizeof buf, "%Y-%m-%d %z %H:%M:%S", &local)))
        Py_RETURN_NONE;
    PyObject *stamp = PyUnicode_DecodeLocaleAndSize(buf, (Py_ssize_t)n, "surrogateescape");
    if (!stamp) return NULL;
    PyObject *key = PyLong_FromLong(second);
    PyObject *fresh = key ? PyTuple_Pack(2, key, stamp) : NULL;
    Py_XDECREF(key);
    if (!fresh || PyDict_SetItem(fdict, s_clock, fresh) < 0) {
        Py_XDECREF(fresh);
        Py_DECREF(stamp);
        return NULL;
    }
    Py_DECREF(fresh);
    return stamp;
}

static PyObject *handed_back(PyObject *msg) {
    /* (NOT_HANDLED, message): the pure path renders the line with this message. */
    return Py_BuildValue("(iO)", NOT_HANDLED, msg);
}

static PyObject *writer_emit(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    /* emit(record, formatter, limit, timeout): render the record as the formatter (an
     * XlogFormatter) would, frame it and append it (Cache.append). Returns:
     *   APPENDED or DROPPED;
     *   NOT_HANDLED: the pure path takes the record, nothing having been called on it
     *   (another formatter, a traceback or stack to render, odd attributes);
     *   (NOT_HANDLED, message): the same, with the message already made (text over
     *   `limit` or not valid UTF-8, a logger name the pure path cuts or stores otherwise);
     *   (OVERSIZE or CLOSED, head, text, time_us): rendered, but no slot could take it. */
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "emit(record, formatter, limit, timeout)");
        return NULL;
    }
    PyObject *rec = args[0];
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    PyObject *fdict = NULL, *dict = NULL, *result = NULL, *text = NULL, *msg = NULL;
    PyObject *stamp = NULL;
    PyObject *part[P_COUNT] = {NULL};
    int plain = plain_formatter(args[1], &fdict);
    if (plain <= 0) return plain < 0 ? NULL : PyLong_FromLong(NOT_HANDLED);
    int falsy;
    if (record_type && Py_IS_TYPE(rec, record_type) && !(dict = PyObject_GenericGetDict(rec, NULL)))
        goto out;
    if (is_falsy_attr(rec, dict, s_exc_info, &falsy) < 0) goto out;
    if (falsy && is_falsy_attr(rec, dict, s_exc_text, &falsy) < 0) goto out;
    if (falsy && is_falsy_attr(rec, dict, s_stack_info, &falsy) < 0) goto out;
    if (!falsy) {
        result = PyLong_FromLong(NOT_HANDLED);
        goto out;
    }

    PyObject *o = get(rec, dict, s_created);
    if (!o) goto out;
    double created = PyFloat_Check(o) ? PyFloat_AS_DOUBLE(o) : -1.0;
    int exact_float = PyFloat_CheckExact(o);
    Py_DECREF(o);
    if (!exact_float || !isfinite(created) || fabs(created) > 9.0e12) {
        result = PyLong_FromLong(NOT_HANDLED);
        goto out;
    }
    o = get(rec, dict, s_msecs);
    if (!o) goto out;
    double msecs = PyFloat_CheckExact(o) ? PyFloat_AS_DOUBLE(o) : NAN;
    Py_DECREF(o);
    o = get(rec, dict, s_levelno);
    if (!o) goto out;
    int overflow = 0;
    long levelno = PyLong_CheckExact(o) ? PyLong_AsLongAndOverflow(o, &overflow) : 0;
    int exact_int = PyLong_CheckExact(o) && !overflow;
    Py_DECREF(o);
    if (!isfinite(msecs) || fabs(msecs) > 1e6 || !exact_int) {
        result = PyLong_FromLong(NOT_HANDLED);
        goto out;
    }

    /* The parts of the line. Only Python objects this holds are pointed into below, so
     * Python code run meanwhile (a finalizer at an allocation, say) changes nothing. */
    PyObject *names[P_MSG] = {s_process, s_thread, s_name, s_filename, s_lineno, s_funcName};
    const char *ptr[P_COUNT];
    Py_ssize_t len[P_COUNT];
    char digits[P_COUNT][24];
    unsigned long long thread = 0; /* the head's thread: record.thread if a u64, else 0 */
    int odd_name = 0;
    for (int i = 0; i < P_MSG; i++) {
        PyObject *v = get(rec, dict, names[i]);
        if (!v) goto out;
        if (i == P_NAME && !PyUnicode_CheckExact(v)) odd_name = 1;
        if (i == P_THREAD && v != Py_None) {
            if (PyLong_Check(v)) {
                thread = PyLong_AsUnsignedLongLong(v);
                if (PyErr_Occurred()) { /* negative or past a u64: unknown, as struct refuses */
                    PyErr_Clear();
                    thread = 0;
                }
            } else {
                odd_name = 1; /* the pure path asks struct what it makes of it */
            }
        }
        if (PyLong_CheckExact(v)) { /* pid, thread id, line number: no str object made */
            long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (!overflow) {
                ptr[i] = digits[i];
                len[i] = n < 0 ? put_decimal(digits[i], 0ULL - (unsigned long long)n, 1)
                               : put_decimal(digits[i], (unsigned long long)n, 0);
                Py_DECREF(v);
                continue;
            }
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (!PyErr_Occurred()) {
                ptr[i] = digits[i];
                len[i] = put_decimal(digits[i], u, 0);
                Py_DECREF(v);
                continue;
            }
            PyErr_Clear();
        }
        part[i] = as_text(v);
        Py_DECREF(v);
        if (!part[i]) goto out;
    }
    msg = get_message(rec, dict);
    if (!msg) goto out;
    /* From here on the message is made: a record the pure path takes gets it along, so
     * that the application's own formatting runs once. */
    part[P_MSG] = as_text(msg);
    if (!part[P_MSG]) goto out;
    for (int i = 0; i < P_COUNT; i++) {
        if (!part[i]) continue; /* digits */
        if (!PyUnicode_Check(part[i])) {
            result = handed_back(part[P_MSG]);
            goto out;
        }
        ptr[i] = PyUnicode_AsUTF8AndSize(part[i], &len[i]);
        if (!ptr[i]) { /* lone surrogates: the pure path escapes them */
            PyErr_Clear();
            result = handed_back(part[P_MSG]);
            goto out;
        }
    }
    long second = (long)created; /* int(record.created) */
    stamp = date_stamp(fdict, second);
    if (!stamp) goto out;
    Py_ssize_t stamp_len;
    const char *stamp_utf8 = stamp == Py_None ? NULL : PyUnicode_AsUTF8AndSize(stamp, &stamp_len);
    if (!stamp_utf8) {
        PyErr_Clear();
        result = handed_back(part[P_MSG]);
        goto out;
    }
    char head4[4] = {'[', letter_of(levelno), ']', '['};
    char millis[24];
    /* f"{int(record.msecs):03d}" */
    long ms = (long)msecs;
    int mn;
    if (ms >= 0 && ms < 1000) {
        millis[0] = '.';
        millis[1] = (char)('0' + ms / 100);
        millis[2] = (char)('0' + ms / 10 % 10);
        millis[3] = (char)('0' + ms % 10);
        mn = 4;
    } else {
        mn = snprintf(millis, sizeof millis, ".%03ld", ms);
    }
    static const char *seps[P_COUNT] = {"][", ", ", "][", "][", ":", ", ", "]["};
    static const size_t sepn[P_COUNT] = {2, 2, 2, 2, 1, 2, 2};
    size_t n = 4 + (size_t)stamp_len + (size_t)mn;
    for (int i = 0; i < P_COUNT; i++) n += sepn[i] + (size_t)len[i];
    if (n > (size_t)limit || odd_name || len[P_NAME] > MAX_LOGGER_NAME) {
        result = handed_back(part[P_MSG]); /* the pure path cuts, or names, them */
        goto out;
    }
    text = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!text) goto out;
    char *at = PyBytes_AS_STRING(text);
    memcpy(at, head4, 4);
    at += 4;
    memcpy(at, stamp_utf8, (size_t)stamp_len);
    at += stamp_len;
    memcpy(at, millis, (size_t)mn);
    at += mn;
    for (int i = 0; i < P_COUNT; i++) {
        memcpy(at, seps[i], sepn[i]);
        at += sepn[i];
        memcpy(at, ptr[i], (size_t)len[i]);
        at += len[i];
    }
    long long time_us = (long long)(created * 1e6);
    unsigned char head[RECORD_HEAD + MAX_LOGGER_NAME];
    size_t hn = pack_head(head, n, time_us, levelno, 0, ptr[P_NAME], (size_t)len[P_NAME], thread);
    long status = append_framed(self, head, hn, text, time_us, args[3]);
    if (status == OVERSIZE || status == CLOSED)
        result = Py_BuildValue("(iy#OL)", (int)status, (const char *)head, (Py_ssize_t)hn, text,
                               time_us);
    else
        result = status_or_null(status);
out:
    for (int i = 0; i < P_COUNT; i++) Py_XDECREF(part[i]);
    Py_XDECREF(text);
    Py_XDECREF(msg);
    Py_XDECREF(stamp);
    Py_XDECREF(dict);
    Py_XDECREF(fdict);
    return result;
}

static PyObject *py_set_formatter(PyObject *self, PyObject *cls) {
    /* set_formatter(XlogFormatter): the class whose lines emit() renders. */
    (void)self;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_formatter(cls): a class");
        return NULL;
    }
    PyObject *f = PyObject_GetAttr(cls, s_format);
    if (!f) return NULL;
    Py_INCREF(cls);
    Py_XSETREF(formatter_type, (PyTypeObject *)cls);
    Py_XSETREF(formatter_format, f);
    Py_RETURN_NONE;
}

static PyMethodDef writer_methods[] = {
    {"reset_stream", (PyCFunction)writer_reset_stream, METH_NOARGS,
     "Begin a new block (the C path keeps no stream state)."},
    {"write", (PyCFunction)(void (*)(void))writer_write, METH_FASTCALL,
     "write(head, text, time_us): one record's chunk and commit (lock held, room made)."},
    {"append", (PyCFunction)(void (*)(void))writer_append, METH_FASTCALL,
     "append(head, text, time_us, timeout) -> status (Cache.append)."},
    {"emit", (PyCFunction)(void (*)(void))writer_emit, METH_FASTCALL,
     "emit(record, formatter, limit, timeout) -> status, or what the pure path needs."},
    {NULL, NULL, 0, NULL},
};

#define OBJ(name) {#name, T_OBJECT, offsetof(Writer, name), 0, NULL}
#define NUM(name, type) {#name, type, offsetof(Writer, name), 0, NULL}
static PyMemberDef writer_members[] = {
    OBJ(buf), OBJ(states), OBJ(acquire), OBJ(release), OBJ(make_room), OBJ(seal), OBJ(aead), OBJ(aad),
    OBJ(heads), OBJ(texts),
    NUM(pos, T_LONGLONG), NUM(limit, T_LONGLONG), NUM(payload_start, T_LONGLONG),
    NUM(commit_at, T_LONGLONG), NUM(seal_at, T_LONGLONG), NUM(day_start, T_LONGLONG),
    NUM(day_end, T_LONGLONG), NUM(last_us, T_LONGLONG), NUM(seq, T_ULONGLONG),
    NUM(seed, T_UINT), NUM(count, T_UINT), NUM(raw_len, T_LONGLONG), NUM(raw_cap, T_LONGLONG),
    NUM(raw_seal, T_LONGLONG),
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmaplog._native.Writer",
    .tp_doc = "The state and record path of the block being written into a cache slot.",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_methods = writer_methods,
    .tp_members = writer_members,
};

/* -- module ----------------------------------------------------------------------------- */

static PyObject *load_crypto(PyObject *self, PyObject *args) {
    /* load_crypto(path) -> None: dlopen the libcrypto at path for the C path's seals,
     * once, all or nothing, and only if it seals RFC 8439's AEAD test vector (section
     * 2.8.2) to the RFC's bytes. OSError when it cannot. */
    (void)self;
    PyObject *arg;
    if (!PyArg_ParseTuple(args, "U", &arg)) return NULL;
    const char *path = PyUnicode_AsUTF8(arg);
    if (!path) return NULL;
    if (evp_ctx_new) Py_RETURN_NONE; /* keys of the library loaded first are alive: keep it */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
    void *f[7] = {
        dlsym(lib, "EVP_CIPHER_CTX_new"),  dlsym(lib, "EVP_CIPHER_CTX_free"),
        dlsym(lib, "EVP_chacha20_poly1305"), dlsym(lib, "EVP_EncryptInit_ex"),
        dlsym(lib, "EVP_EncryptUpdate"),   dlsym(lib, "EVP_EncryptFinal_ex"),
        dlsym(lib, "EVP_CIPHER_CTX_ctrl"),
    };
    for (int i = 0; i < 7; i++)
        if (!f[i]) {
            dlclose(lib);
            return PyErr_Format(PyExc_OSError, "%s lacks OpenSSL's ChaCha20-Poly1305 API", path);
        }
    evp_ctx_free = (void (*)(EVP_CIPHER_CTX *))f[1];
    evp_chacha20_poly1305 = (const EVP_CIPHER *(*)(void))f[2];
    evp_init = (int (*)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *,
                        const unsigned char *))f[3];
    evp_update = (int (*)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int))f[4];
    evp_final = (int (*)(EVP_CIPHER_CTX *, unsigned char *, int *))f[5];
    evp_ctrl = (int (*)(EVP_CIPHER_CTX *, int, int, void *))f[6];
    evp_ctx_new = (EVP_CIPHER_CTX * (*)(void)) f[0];
    /* RFC 8439, 2.8.2: the plaintext in two pieces, as a record's head and text are. */
    static const char pt[] = "Ladies and Gentlemen of the class of '99: If I could offer you "
                             "only one tip for the future, sunscreen would be it.";
    static const unsigned char nonce[12] = {7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43,
                                            0x44, 0x45, 0x46, 0x47};
    static const unsigned char aad[12] = {0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1,
                                          0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7};
    static const unsigned char head[16] = {0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb,
                                           0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef, 0x7e, 0xc2};
    static const unsigned char tag[16] = {0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a,
                                          0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91};
    unsigned char key[32], out[sizeof pt - 1 + 16];
    for (int i = 0; i < 32; i++) key[i] = (unsigned char)(0x80 + i);
    Aead probe = {0};
    int ok = 0;
    if ((probe.ctx = evp_ctx_new()) &&
        evp_init(probe.ctx, evp_chacha20_poly1305(), NULL, key, NULL) == 1 &&
        aead_seal(&probe, nonce, aad, sizeof aad, (const unsigned char *)pt, 5,
                  (const unsigned char *)pt + 5, sizeof pt - 1 - 5, out) == 0)
        ok = memcmp(out, head, 16) == 0 && memcmp(out + sizeof pt - 1, tag, 16) == 0;
    if (probe.ctx) evp_ctx_free(probe.ctx);
    if (!ok) {
        evp_ctx_new = NULL;
        dlclose(lib);
        return PyErr_Format(PyExc_OSError,
                            "%s does not seal RFC 8439's ChaCha20-Poly1305 test vector", path);
    }
    Py_RETURN_NONE;
}

/* -- reading: a column-form block's records --------------------------------------- */

static PyObject *column_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* column_records(Record, times_us, levels, kinds, starts, texts, pid, session, seq,
     *                recovered, source, loggers, threads) -> list of Record
     *
     * What mmaplog._reader builds from a column-form block that split_columns has
     * checked (the same tuples): times_us a list of ints, levels and kinds bytes,
     * starts a list of n + 1 offsets into texts (a str when all ASCII, else bytes
     * decoded as UTF-8 with "replace"), loggers and threads a list of n items or one
     * value for every record. Anything inconsistent is a ValueError, never a read out
     * of bounds. */
    (void)self;
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "column_records takes 13 arguments");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    PyObject *times = args[1], *levels = args[2], *kinds = args[3], *starts = args[4];
    PyObject *texts = args[5], *loggers = args[11], *threads = args[12];
    if (!PyType_Check(args[0]) || !PyType_IsSubtype(type, &PyTuple_Type) ||
        !PyList_Check(times) || !PyBytes_Check(levels) || !PyBytes_Check(kinds) ||
        !PyList_Check(starts) || !(PyUnicode_Check(texts) || PyBytes_Check(texts))) {
        PyErr_SetString(PyExc_TypeError, "column_records: wrong argument types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(times);
    int ascii = PyUnicode_Check(texts);
    if (ascii && (PyUnicode_READY(texts) < 0 || !PyUnicode_IS_ASCII(texts))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "texts: not ASCII");
        return NULL;
    }
    Py_ssize_t tlen = ascii ? PyUnicode_GET_LENGTH(texts) : PyBytes_GET_SIZE(texts);
    int many_loggers = PyList_Check(loggers), many_threads = PyList_Check(threads);
    if (PyBytes_GET_SIZE(levels) != n || PyBytes_GET_SIZE(kinds) != n ||
        PyList_GET_SIZE(starts) != n + 1 || (many_loggers && PyList_GET_SIZE(loggers) != n) ||
        (many_threads && PyList_GET_SIZE(threads) != n)) {
        PyErr_SetString(PyExc_ValueError, "column_records: columns of different lengths");
        return NULL;
    }
    const unsigned char *lv = (const unsigned char *)PyBytes_AS_STRING(levels);
    const unsigned char *kd = (const unsigned char *)PyBytes_AS_STRING(kinds);
    const char *raw = ascii ? NULL : PyBytes_AS_STRING(texts);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    Py_ssize_t prev = PyLong_AsSsize_t(PyList_GET_ITEM(starts, 0));
    if (prev == -1 && PyErr_Occurred()) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t end = PyLong_AsSsize_t(PyList_GET_ITEM(starts, i + 1));
        if (end == -1 && PyErr_Occurred()) goto fail;
        if (prev < 0 || end < prev || end > tlen) {
            PyErr_SetString(PyExc_ValueError, "column_records: a text outside the texts");
            goto fail;
        }
        long long us = PyLong_AsLongLong(PyList_GET_ITEM(times, i));
        if (us == -1 && PyErr_Occurred()) goto fail;
        PyObject *rec = type->tp_alloc(type, 11);
        if (!rec) goto fail;
        PyList_SET_ITEM(out, i, rec); /* filled below; freed with the list on failure */
        PyObject *text = ascii ? PyUnicode_Substring(texts, prev, end)
                               : PyUnicode_DecodeUTF8(raw + prev, end - prev, "replace");
        PyObject *t = PyFloat_FromDouble((double)us / 1e6);
        PyObject *level = PyLong_FromLong(lv[i]);
        PyObject *kind = PyLong_FromLong(kd[i]);
        PyObject *logger = many_loggers ? PyList_GET_ITEM(loggers, i) : loggers;
        PyObject *thread = many_threads ? PyList_GET_ITEM(threads, i) : threads;
        PyObject *items[11] = {t,       level,   text,    kind,   args[6], args[7],
                               args[8], args[9], args[10], logger, thread};
        for (int k = 0; k < 11; k++) {
            if (k < 4 && !items[k]) continue; /* a failed allocation: reported below */
            if (k >= 4) Py_INCREF(items[k]);
            PyTuple_SET_ITEM(rec, k, items[k]);
        }
        if (!text || !t || !level || !kind) goto fail;
        prev = end;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *py_crc32(PyObject *self, PyObject *args) {
    /* crc32(data, value=0): as zlib.crc32 (for tests). */
    (void)self;
    Py_buffer b;
    unsigned int v = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &v)) return NULL;
    uint32_t c = crc32_of(v, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *py_kill_at(PyObject *self, PyObject *args) {
    /* kill_at(point, after): SIGKILL this process at fault point 1 (a chunk's body is
     * stored, its header not) or 2 (the chunk is stored, its commit not) of the record
     * after `after` more records; 0 turns it off. For crash tests. */
    (void)self;
    int point;
    long after;
    if (!PyArg_ParseTuple(args, "il", &point, &after)) return NULL;
    if (point < KILL_NONE || point > KILL_BEFORE_COMMIT || after < 0) {
        PyErr_SetString(PyExc_ValueError, "kill_at(point in 0..2, after >= 0)");
        return NULL;
    }
    kill_point = point;
    kill_countdown = after;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_formatter", py_set_formatter, METH_O,
     "set_formatter(cls): the formatter class whose lines Writer.emit renders."},
    {"kill_at", py_kill_at, METH_VARARGS, "kill_at(point, after): a fault point, for crash tests."},
    {"load_crypto", load_crypto, METH_VARARGS,
     "load_crypto(path): libcrypto for ChaCha20-Poly1305 seals (once; checked)."},
    {"crc32", py_crc32, METH_VARARGS, "crc32(data, value=0): as zlib.crc32."},
    {"column_records", (PyCFunction)(void (*)(void))column_records, METH_FASTCALL,
     "column_records(Record, ...) -> the records of a checked column-form block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mmaplog._native",
    "The cache's record path in C (see mmaplog/_native.c).", -1, module_methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = crc_table[0][crc_table[t - 1][i] & 0xFF] ^ (crc_table[t - 1][i] >> 8);
#define INTERN(var, s) \
    if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_format, "format");
    INTERN(s_clock, "_clock");
    INTERN(s_msg, "msg");
    INTERN(s_args, "args");
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
    INTERN(s_exc_info, "exc_info");
    INTERN(s_exc_text, "exc_text");
    INTERN(s_stack_info, "stack_info");
    INTERN(s_empty, "");
    PyObject *logging = PyImport_ImportModule("logging");
    if (!logging) return NULL;
    record_type = (PyTypeObject *)PyObject_GetAttrString(logging, "LogRecord");
    if (!record_type) {
        Py_DECREF(logging);
        return NULL;
    }
    /* logging's own getMessage, recognised by where it was defined: one replaced before
     * this import is not logging's, and is always called. */
    record_get_message = PyObject_GetAttrString((PyObject *)record_type, "getMessage");
    if (!record_get_message) return NULL;
    /* A plain function whose code comes from logging's own file, and no wrapper
     * (functools.wraps copies a name and a module, not the code). */
    PyObject *code = PyFunction_Check(record_get_message)
                         ? PyObject_GetAttrString(record_get_message, "__code__")
                         : NULL;
    PyObject *where = code ? PyObject_GetAttrString(code, "co_filename") : NULL;
    PyObject *file = where ? PyObject_GetAttrString(logging, "__file__") : NULL;
    int own = where && file && PyUnicode_Check(where) && PyUnicode_Check(file) &&
              PyUnicode_Compare(where, file) == 0 &&
              !PyObject_HasAttrString(record_get_message, "__wrapped__");
    Py_XDECREF(code);
    Py_XDECREF(where);
    Py_XDECREF(file);
    PyErr_Clear();
    if (!own) Py_CLEAR(record_get_message);
    Py_DECREF(logging);
    if (!PyType_Check(record_type)) {
        Py_CLEAR(record_type);
        PyErr_SetString(PyExc_TypeError, "logging.LogRecord is not a class");
        return NULL;
    }
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&AeadType) < 0) return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&AeadType);
    if (PyModule_AddObject(m, "ChaCha20Poly1305", (PyObject *)&AeadType) < 0) {
        Py_DECREF(&AeadType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NOT_HANDLED", NOT_HANDLED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
