/*
 * CopyDecoder: the output of `COPY (SELECT [ctid,] <columns> ...) TO STDOUT (FORMAT binary)`
 * into change batches with _cdc_op = 'r'. Input may be cut anywhere (one CopyData message is one
 * row in practice, but nothing here relies on it). The GIL is released while parsing.
 *
 * Input comes either from Python (feed: a list of buffers) or straight from the connection
 * (read): the COPY's messages are taken with PQgetCopyData of the libpq that psycopg itself
 * loaded (bound by libpq_bind), so a whole batch is received and decoded without the GIL and
 * without a Python object per message.
 */
#include "native.h"

#include <dlfcn.h>

static const uint8_t COPY_SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0377, '\r', '\n', 0};

typedef struct {
    PyObject_HEAD
    TablePlanObject *plan;
    uint64_t lsn;
    uint64_t ordinal;
    int with_ctid;
    int header_done;
    int finished;
    int64_t total_rows;
    int64_t total_bytes;
    Buf carry;
    Buf unrep;
} CopyDecoderObject;

static inline int32_t be32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}
static inline int16_t be16(const uint8_t *p) { return (int16_t)((p[0] << 8) | p[1]); }

/* Parse as many complete rows of [p, p+n) as possible; returns bytes consumed or -1. */
static int64_t parse_rows(CopyDecoderObject *self, const uint8_t *p, int64_t n) {
    Tab *t = self->plan->tab;
    int64_t pos = 0;
    int nfields = t->ntable + (self->with_ctid ? 1 : 0);
    if (!self->header_done) {
        if (n < 19)
            return 0;
        if (memcmp(p, COPY_SIGNATURE, 11) != 0)
            return cdc_fail("not a binary COPY stream (bad signature)");
        int32_t ext = be32(p + 15);
        if (ext < 0)
            return cdc_fail("bad binary COPY header extension length");
        if (n < 19 + ext)
            return 0;
        pos = 19 + ext;
        self->header_done = 1;
    }
    while (pos < n && !self->finished) {
        const uint8_t *row = p + pos, *end = p + n;
        if (end - row < 2)
            break;
        int16_t nf = be16(row);
        if (nf == -1) {
            self->finished = 1;
            pos += 2;
            break;
        }
        if (nf != nfields)
            return cdc_fail("binary COPY row has %d fields, expected %d", nf, nfields);
        /* make sure the whole row is here before touching the builders */
        const uint8_t *q = row + 2;
        int complete = 1;
        for (int i = 0; i < nf; i++) {
            if (end - q < 4) {
                complete = 0;
                break;
            }
            int32_t len = be32(q);
            q += 4;
            if (len > 0) {
                if (end - q < len) {
                    complete = 0;
                    break;
                }
                q += len;
            }
        }
        if (!complete)
            break;
        q = row + 2;
        uint32_t block = 0;
        uint16_t offset = 0;
        int64_t r = tab_rows(t);
        if (self->with_ctid) {
            int32_t len = be32(q);
            if (len != 6)
                return cdc_fail("binary COPY: the first column must be the row's ctid");
            block = (uint32_t)be32(q + 4);
            offset = (uint16_t)be16(q + 8);
            q += 10;
        }
        for (int i = 0; i < t->ntable; i++) {
            Col *c = t->root->children[i];
            int32_t len = be32(q);
            q += 4;
            if (len < 0) {
                if (col_append_null(c) < 0)
                    return -1;
                continue;
            }
            self->unrep.len = 0;
            int rc = decode_binary(c, q, len, &self->unrep);
            if (rc == DEC_ERR)
                return -1;
            if (rc == DEC_UNREP) {
                if (!self->unrep.len && !self->with_ctid)
                    return cdc_fail("column '%s': an unrepresentable value needs its text, and the "
                                    "COPY has no ctid to fetch it by", c->name);
                if (tab_add_unrep(t, r, i, 0, self->unrep.len ? (const char *)self->unrep.data : NULL,
                                  self->unrep.len, block, offset) < 0)
                    return -1;
            }
            q += len;
        }
        tab_before_null(t);
        if (tab_finish_row(t, 'r', self->lsn, ++self->ordinal) < 0)
            return -1;
        self->total_rows++;
        pos = q - p;
    }
    return pos;
}

static int feed_one(CopyDecoderObject *self, const uint8_t *p, int64_t n) {
    self->total_bytes += n;
    if (self->finished)
        return n ? cdc_fail("data after the end of the binary COPY stream") : 0;
    if (self->carry.len) {
        if (buf_append(&self->carry, p, n) < 0)
            return -1;
        int64_t used = parse_rows(self, self->carry.data, self->carry.len);
        if (used < 0)
            return -1;
        memmove(self->carry.data, self->carry.data + used, (size_t)(self->carry.len - used));
        self->carry.len -= used;
        return 0;
    }
    int64_t used = parse_rows(self, p, n);
    if (used < 0)
        return -1;
    if (used < n && buf_append(&self->carry, p + used, n - used) < 0)
        return -1;
    return 0;
}

static PyObject *CopyDecoder_feed(CopyDecoderObject *self, PyObject *chunks) {
    if (!self->plan) {
        PyErr_SetString(PyExc_ValueError, "CopyDecoder not initialised");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(chunks, "feed() takes a list of bytes-like chunks");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    if (!views) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t got = 0;
    for (; got < n; got++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got], PyBUF_SIMPLE) < 0)
            break;
    int rc = 0;
    if (got == n) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n && rc == 0; i++)
            rc = feed_one(self, views[i].buf, views[i].len);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(seq);
    if (got != n)
        return NULL;
    if (rc < 0)
        return raise_native();
    return PyLong_FromLongLong(tab_rows(self->plan->tab));
}

/* ------------------------------------------------------------------ libpq, as psycopg loaded it */

typedef struct {
    void *handle;
    int (*get_copy_data)(void *conn, char **buffer, int async);
    void (*freemem)(void *ptr);
    int (*socket)(const void *conn);
    int (*backend_pid)(const void *conn);
} Libpq;

static Libpq libpq;                 /* bound once per process; immutable afterwards */
static PyThread_type_lock libpq_lock;

/*
 * libpq_bind(path, conn_ptr, socket, backend_pid): use the libpq at `path` for read(), if that
 * library is already loaded in the process (RTLD_NOLOAD: never a second copy) and it drives
 * the given connection: its PQsocket and PQbackendPID on psycopg's PGconn pointer must give
 * psycopg's own figures, which a libpq of another build (another struct layout) would not.
 * The first library bound stays for the process (psycopg uses one); another path is refused.
 */
PyObject *libpq_bind(PyObject *module, PyObject *args) {
    const char *path;
    unsigned long long ptr;
    int fd, pid;
    if (!PyArg_ParseTuple(args, "sKii", &path, &ptr, &fd, &pid))
        return NULL;
    if (!ptr)
        Py_RETURN_FALSE;
    void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        Py_RETURN_FALSE;
    if (!libpq_lock && !(libpq_lock = PyThread_allocate_lock())) {
        dlclose(h);
        return PyErr_NoMemory();
    }
    PyThread_acquire_lock(libpq_lock, WAIT_LOCK);
    Libpq candidate = libpq;
    if (!candidate.handle) {
        candidate.handle = h;
        *(void **)&candidate.get_copy_data = dlsym(h, "PQgetCopyData");
        *(void **)&candidate.freemem = dlsym(h, "PQfreemem");
        *(void **)&candidate.socket = dlsym(h, "PQsocket");
        *(void **)&candidate.backend_pid = dlsym(h, "PQbackendPID");
    }
    int ok = candidate.handle == h && candidate.get_copy_data && candidate.freemem &&
             candidate.socket && candidate.backend_pid;
    if (ok) {
        void *conn = (void *)(uintptr_t)ptr;
        ok = candidate.socket(conn) == fd && candidate.backend_pid(conn) == pid;
    }
    if (ok && !libpq.handle)
        libpq = candidate;   /* keeps the reference dlopen took: psycopg's library stays */
    else
        dlclose(h);          /* drops only the reference taken here (RTLD_NOLOAD) */
    PyThread_release_lock(libpq_lock);
    return PyBool_FromLong(ok);
}

/*
 * read(conn_ptr, max_rows, max_bytes): receive and decode the COPY's messages until the batch
 * holds max_rows rows or about max_bytes bytes (1), or the COPY ends (0: PQgetCopyData gave
 * -1; the caller reads the COPY's result), or the connection failed (-2: the caller raises
 * its error message). The connection must be bound (libpq_bind) and owned by the calling
 * thread; it is used without the GIL.
 */
static PyObject *CopyDecoder_read(CopyDecoderObject *self, PyObject *args) {
    unsigned long long ptr;
    long long max_rows, max_bytes;
    if (!PyArg_ParseTuple(args, "KLL", &ptr, &max_rows, &max_bytes))
        return NULL;
    if (!self->plan) {
        PyErr_SetString(PyExc_ValueError, "CopyDecoder not initialised");
        return NULL;
    }
    if (!libpq.get_copy_data || !ptr) {
        PyErr_SetString(PyExc_RuntimeError, "read() needs a connection bound by libpq_bind()");
        return NULL;
    }
    void *conn = (void *)(uintptr_t)ptr;
    Tab *t = self->plan->tab;
    int status = 1, rc = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t n = 0;; n++) {
        char *buf = NULL;
        int len = libpq.get_copy_data(conn, &buf, 0);
        if (len < 0) {
            status = len == -1 ? 0 : -2;
            break;
        }
        rc = feed_one(self, (const uint8_t *)buf, len);
        libpq.freemem(buf);
        if (rc < 0)
            break;
        /* the batch's byte size is a walk over its columns: looked at every 64 messages */
        if (tab_rows(t) >= max_rows || ((n & 63) == 63 && tab_nbytes(t) >= max_bytes))
            break;
    }
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_native();
    return PyLong_FromLong(status);
}

static PyObject *CopyDecoder_take(CopyDecoderObject *self, PyObject *unused) {
    if (!self->plan) {
        PyErr_SetString(PyExc_ValueError, "CopyDecoder not initialised");
        return NULL;
    }
    Tab *t = self->plan->tab;
    TxnInfo info = {.has_commit_lsn = 0, .has_end_lsn = 1, .end_lsn = self->lsn,
                    .has_commit_ts = 0, .xid = 0};
    struct ArrowArray arr;
    if (tab_export(t, &info, &arr) < 0)
        return raise_native();
    return array_capsule(&arr);
}

static PyObject *CopyDecoder_pending(CopyDecoderObject *self, PyObject *unused) {
    if (!self->plan) {
        PyErr_SetString(PyExc_ValueError, "CopyDecoder not initialised");
        return NULL;
    }
    Tab *t = self->plan->tab;
    PyObject *out = PyList_New(0);
    for (int64_t i = 0; out && i < t->nunreps; i++) {
        Unrep *u = &t->unreps[i];
        if (u->text)
            continue;
        PyObject *item = Py_BuildValue("(LkHs)", (long long)i, (unsigned long)u->block,
                                       (unsigned short)u->offset,
                                       t->root->children[u->col]->name);
        if (!item) {
            Py_CLEAR(out);
            break;
        }
        if (PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_DECREF(item);
    }
    return out;
}

static PyObject *CopyDecoder_resolve(CopyDecoderObject *self, PyObject *args) {
    long long idx;
    const char *text;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Ls#", &idx, &text, &len))
        return NULL;
    Tab *t = self->plan->tab;
    if (idx < 0 || idx >= t->nunreps) {
        PyErr_SetString(PyExc_IndexError, "no such pending value");
        return NULL;
    }
    char *copy = malloc((size_t)len + 1);
    if (!copy)
        return PyErr_NoMemory();
    memcpy(copy, text, (size_t)len);
    copy[len] = '\0';
    free(t->unreps[idx].text);
    t->unreps[idx].text = copy;
    Py_RETURN_NONE;
}

static int CopyDecoder_init(CopyDecoderObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"plan", "lsn", "ordinal_base", "with_ctid", NULL};
    PyObject *plan;
    unsigned long long lsn, base = 0;
    int with_ctid = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!K|Kp", kwlist, &TablePlanType, &plan, &lsn,
                                     &base, &with_ctid))
        return -1;
    if (!((TablePlanObject *)plan)->tab) {
        PyErr_SetString(PyExc_ValueError, "TablePlan not initialised");
        return -1;
    }
    Py_INCREF(plan);
    Py_XSETREF(self->plan, (TablePlanObject *)plan);
    tab_discard(self->plan->tab);
    self->lsn = lsn;
    self->ordinal = base;
    self->with_ctid = with_ctid;
    self->header_done = self->finished = 0;
    self->total_rows = self->total_bytes = 0;
    self->carry.len = 0;
    return 0;
}

static void CopyDecoder_dealloc(CopyDecoderObject *self) {
    Py_XDECREF(self->plan);
    free(self->carry.data);
    free(self->unrep.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *CopyDecoder_get(CopyDecoderObject *self, void *what) {
    if (!self->plan) {
        PyErr_SetString(PyExc_ValueError, "CopyDecoder not initialised");
        return NULL;
    }
    Tab *t = self->plan->tab;
    switch ((int)(intptr_t)what) {
    case 0: return PyLong_FromLongLong(tab_rows(t));
    case 1: return PyLong_FromLongLong(tab_nbytes(t));
    case 2: return PyBool_FromLong(self->finished);
    case 3: return PyLong_FromLongLong(self->total_rows);
    case 4: return PyLong_FromLongLong(self->total_bytes);
    case 5: return PyLong_FromUnsignedLongLong(self->ordinal);
    default: return PyLong_FromLongLong(self->carry.len);
    }
}

static PyGetSetDef CopyDecoder_getset[] = {
    {"rows", (getter)CopyDecoder_get, NULL, "rows in the batch being built", (void *)0},
    {"nbytes", (getter)CopyDecoder_get, NULL, "bytes held by the batch being built", (void *)1},
    {"finished", (getter)CopyDecoder_get, NULL, "the COPY trailer was read", (void *)2},
    {"total_rows", (getter)CopyDecoder_get, NULL, "rows decoded so far", (void *)3},
    {"total_bytes", (getter)CopyDecoder_get, NULL, "COPY bytes fed so far", (void *)4},
    {"ordinal", (getter)CopyDecoder_get, NULL, "the last ordinal given", (void *)5},
    {"carried", (getter)CopyDecoder_get, NULL, "bytes of an incomplete row held", (void *)6},
    {NULL},
};

static PyMethodDef CopyDecoder_methods[] = {
    {"feed", (PyCFunction)CopyDecoder_feed, METH_O,
     "feed(chunks): decode a list of COPY data chunks; returns the rows of the current batch"},
    {"read", (PyCFunction)CopyDecoder_read, METH_VARARGS,
     "read(conn_ptr, max_rows, max_bytes): receive and decode COPY data from the connection "
     "(bound by libpq_bind) until the batch is full (1), the COPY ends (0) or the connection "
     "fails (-2)"},
    {"take", (PyCFunction)CopyDecoder_take, METH_NOARGS,
     "take(): the current batch as an 'arrow_array' capsule (a struct array); starts a new one"},
    {"pending", (PyCFunction)CopyDecoder_pending, METH_NOARGS,
     "pending(): [(index, block, offset, column)] of values whose text must be fetched"},
    {"resolve", (PyCFunction)CopyDecoder_resolve, METH_VARARGS,
     "resolve(index, text): the server's text of a pending value"},
    {NULL},
};

PyTypeObject CopyDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cdc_notebook._native.CopyDecoder",
    .tp_basicsize = sizeof(CopyDecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CopyDecoder(plan, lsn, ordinal_base=0, with_ctid=True): binary COPY into "
              "change batches (op 'r').",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CopyDecoder_init,
    .tp_dealloc = (destructor)CopyDecoder_dealloc,
    .tp_getset = CopyDecoder_getset,
    .tp_methods = CopyDecoder_methods,
};
