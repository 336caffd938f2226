/*
 * PgoutputDecoder: CopyData messages of a pgoutput replication stream (XLogData 'w' carrying
 * one pgoutput message each, keepalives 'k') into change batches and events.
 *
 * Protocol versions 1-4 (docs/pgoutput.md). Rows accumulate per relation per transaction and
 * are handed out at the transaction's commit, in the order the changes came (a TRUNCATE or a
 * logical message seals the rows before it); within a big transaction a relation's rows are
 * sealed into a batch every max_rows rows or max_bytes bytes. Streamed transactions (v2+) are
 * buffered per top-level xid, spilled to a temporary file past spill_bytes, dropped on
 * StreamAbort (a subtransaction's rows on its own abort), and replayed at StreamCommit one
 * batch per replay_step() call, so memory stays bounded.
 */
#include "native.h"

#include <stdio.h>

typedef struct {
    uint32_t relid;
    TablePlanObject *plan;   /* NULL when the relation's plan could not be built (error) */
    int ncols;
    int dirty;
    PyObject *label;         /* (namespace, name) as of the last Relation message */
    PyObject *error;         /* why there is no plan (str), when plan is NULL */
    uint64_t failed_seq;     /* the transaction (txn_seq) in which a change failed to decode */
} Rel;

typedef struct StreamTxn {
    uint32_t xid;
    Buf mem;
    FILE *spill;
    int64_t spilled;
    uint32_t *aborted;
    int naborted, capaborted;
    int64_t replay_pos;
    struct StreamTxn *next;
} StreamTxn;

typedef struct {
    PyObject_HEAD
    PyObject *on_relation;
    int64_t max_rows, max_bytes, spill_bytes;
    int abort_info;
    Rel *rels;
    int nrels, caprels;
    /* the transaction being decoded (a plain one, or a streamed one being replayed) */
    int in_txn;
    TxnInfo txn;
    uint64_t ordinal;
    uint64_t txn_seq;      /* counts transactions (from 1), for Rel.failed_seq */
    PyObject *held;        /* items of the current plain transaction, until its commit */
    /* streaming */
    int in_stream;
    uint32_t stream_xid;
    StreamTxn *streams;
    StreamTxn *replay;
    int replay_in_file;
    Buf scratch;
    Buf unrep;
    Buf pending;           /* Relation messages waiting for the change they precede */
    /* counters */
    int64_t n_messages, n_rows, n_spilled_bytes;
} DecObject;

/* ------------------------------------------------------------------ reading */

typedef struct {
    const uint8_t *p, *end;
} Rd;

static int rd_need(Rd *r, int64_t n) {
    if (r->end - r->p < n)
        return cdc_fail("pgoutput message is truncated");
    return 0;
}
static int rd_u8(Rd *r, uint8_t *v) {
    if (rd_need(r, 1) < 0) return -1;
    *v = *r->p++;
    return 0;
}
static int rd_i16(Rd *r, int16_t *v) {
    if (rd_need(r, 2) < 0) return -1;
    *v = (int16_t)((r->p[0] << 8) | r->p[1]);
    r->p += 2;
    return 0;
}
static int rd_u32(Rd *r, uint32_t *v) {
    if (rd_need(r, 4) < 0) return -1;
    *v = ((uint32_t)r->p[0] << 24) | ((uint32_t)r->p[1] << 16) | ((uint32_t)r->p[2] << 8) | r->p[3];
    r->p += 4;
    return 0;
}
static int rd_u64(Rd *r, uint64_t *v) {
    uint32_t hi, lo;
    if (rd_u32(r, &hi) < 0 || rd_u32(r, &lo) < 0) return -1;
    *v = ((uint64_t)hi << 32) | lo;
    return 0;
}
static int rd_str(Rd *r, const char **s, int64_t *len) {
    const uint8_t *z = memchr(r->p, 0, (size_t)(r->end - r->p));
    if (!z)
        return cdc_fail("pgoutput string is not terminated");
    *s = (const char *)r->p;
    *len = z - r->p;
    r->p = z + 1;
    return 0;
}

#define PG_EPOCH_US (INT64_C(10957) * 86400000000)

/* ------------------------------------------------------------------ relations */

static Rel *find_rel(DecObject *d, uint32_t relid) {
    for (int i = 0; i < d->nrels; i++)
        if (d->rels[i].relid == relid)
            return &d->rels[i];
    return NULL;
}

static int append_item(DecObject *d, PyObject *out, PyObject *item) {
    if (!item)
        return -1;
    int rc = PyList_Append(d->in_txn && !d->replay ? d->held : out, item);
    Py_DECREF(item);
    return rc;
}

/* Seal a relation's rows into a batch item. */
static int seal(DecObject *d, Rel *rel, PyObject *out) {
    Tab *t = rel->plan->tab;
    rel->dirty = 0;
    if (!tab_rows(t))
        return 0;
    struct ArrowArray arr;
    if (tab_export(t, &d->txn, &arr) < 0) {
        raise_native();
        return -1;
    }
    PyObject *cap = array_capsule(&arr);
    if (!cap)
        return -1;
    /* The plan the rows were built with: a relation message later in the same transaction
     * replaces rel->plan, and the batch must keep the schema in force when its rows were
     * decoded. */
    PyObject *item = Py_BuildValue("(sIINiO)", "batch", rel->relid, d->txn.xid, cap,
                                   tab_end_lsn_index(t), (PyObject *)rel->plan);
    return append_item(d, out, item);
}

static int seal_all(DecObject *d, PyObject *out) {
    for (int i = 0; i < d->nrels; i++)
        if (d->rels[i].dirty && seal(d, &d->rels[i], out) < 0)
            return -1;
    return 0;
}

static int handle_relation(DecObject *d, Rd *r, uint64_t lsn, PyObject *out) {
    uint32_t relid;
    const char *nsp = NULL, *name = NULL;
    int64_t nsplen = 0, namelen = 0;
    uint8_t ident;
    int16_t ncols;
    if (rd_u32(r, &relid) < 0 || rd_str(r, &nsp, &nsplen) < 0 || rd_str(r, &name, &namelen) < 0 ||
        rd_u8(r, &ident) < 0 || rd_i16(r, &ncols) < 0)
        goto native;
    PyObject *cols = PyTuple_New(ncols);
    if (!cols)
        return -1;
    for (int i = 0; i < ncols; i++) {
        uint8_t flags;
        const char *cname = NULL;
        int64_t clen = 0;
        uint32_t typoid, typmod;
        if (rd_u8(r, &flags) < 0 || rd_str(r, &cname, &clen) < 0 || rd_u32(r, &typoid) < 0 ||
            rd_u32(r, &typmod) < 0) {
            Py_DECREF(cols);
            goto native;
        }
        PyObject *col = Py_BuildValue("(s#iIi)", cname, (Py_ssize_t)clen, (int)flags, typoid,
                                      (int32_t)typmod);
        if (!col) {
            Py_DECREF(cols);
            return -1;
        }
        PyTuple_SET_ITEM(cols, i, col);
    }
    PyObject *res = PyObject_CallFunction(d->on_relation, "Is#s#CNK", relid, nsp, (Py_ssize_t)nsplen,
                                          name, (Py_ssize_t)namelen, (int)ident, cols,
                                          (unsigned long long)lsn);
    if (!res)
        return -1;
    PyObject *plan, *event;
    if (!PyArg_ParseTuple(res, "OO", &plan, &event)) {
        Py_DECREF(res);
        return -1;
    }
    /* (None, message): no plan can be built for the relation; its changes become errors */
    int failed = plan == Py_None;
    if (failed ? !PyUnicode_Check(event) : !PyObject_TypeCheck(plan, &TablePlanType)) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError,
                        "on_relation must return (TablePlan, event or None) or (None, message)");
        return -1;
    }
    if (!failed && ((TablePlanObject *)plan)->tab->ntable != ncols) {
        Py_DECREF(res);
        PyErr_Format(PyExc_ValueError, "the plan of relation %u has %d columns, the server sent %d",
                     relid, ((TablePlanObject *)plan)->tab->ntable, (int)ncols);
        return -1;
    }
    Rel *rel = find_rel(d, relid);
    if (rel && rel->dirty && seal(d, rel, out) < 0) {
        Py_DECREF(res);
        return -1;
    }
    if (!rel) {
        if (d->nrels == d->caprels) {
            int cap = d->caprels ? 2 * d->caprels : 16;
            Rel *rels = PyMem_Realloc(d->rels, (size_t)cap * sizeof(Rel));
            if (!rels) {
                Py_DECREF(res);
                PyErr_NoMemory();
                return -1;
            }
            d->rels = rels;
            d->caprels = cap;
        }
        rel = &d->rels[d->nrels++];
        memset(rel, 0, sizeof *rel);
        rel->relid = relid;
    }
    PyObject *label = Py_BuildValue("(s#s#)", nsp, (Py_ssize_t)nsplen, name, (Py_ssize_t)namelen);
    if (!label) {
        Py_DECREF(res);
        return -1;
    }
    Py_XSETREF(rel->label, label);
    if (failed) {
        Py_CLEAR(rel->plan);
        Py_INCREF(event);
        Py_XSETREF(rel->error, event);
        rel->ncols = ncols;
        rel->dirty = 0;
        Py_DECREF(res);
        return 0;
    }
    Py_CLEAR(rel->error);
    Py_INCREF(plan);
    Py_XSETREF(rel->plan, (TablePlanObject *)plan);
    tab_discard(rel->plan->tab);
    rel->ncols = ncols;
    rel->dirty = 0;
    int rc = 0;
    if (event != Py_None) {
        Py_INCREF(event);
        rc = append_item(d, out, Py_BuildValue("(sIN)", "relation", relid, event));
    }
    Py_DECREF(res);
    return rc;
native:
    raise_native();
    return -1;
}

/* ------------------------------------------------------------------ tuples */

static int read_tuple(DecObject *d, Rd *r, Rel *rel, int before) {
    Tab *t = rel->plan->tab;
    int16_t ncols;
    if (rd_i16(r, &ncols) < 0)
        return -1;
    if (ncols != rel->ncols)
        return cdc_fail("relation %u: a tuple of %d columns, the relation has %d", rel->relid,
                        ncols, rel->ncols);
    int64_t row = tab_rows(t);
    if (before && tab_before_flush(t) < 0)
        return -1;
    Col *toast_names = t->toast->children[0];
    for (int i = 0; i < ncols; i++) {
        Col *c = before ? t->before->children[i] : t->root->children[i];
        uint8_t kind;
        if (rd_u8(r, &kind) < 0)
            return -1;
        if (kind == 'n' || kind == 'u') {
            if (col_append_null(c) < 0)
                return -1;
            if (kind == 'u' && !before &&
                col_append_varbin(toast_names, c->name, (int64_t)strlen(c->name)) < 0)
                return -1;
            continue;
        }
        uint32_t len;
        if ((kind != 't' && kind != 'b') || rd_u32(r, &len) < 0)
            return kind != 't' && kind != 'b'
                       ? cdc_fail("relation %u: unknown tuple value kind 0x%02x", rel->relid, kind)
                       : -1;
        if (rd_need(r, len) < 0)
            return -1;
        int rc;
        const char *text = NULL;
        int64_t textlen = 0;
        if (kind == 't') {
            rc = decode_text(c, (const char *)r->p, (int32_t)len);
            text = (const char *)r->p;
            textlen = len;
        } else {
            if (c->kind == K_OTHER || (c->kind == K_ARRAY && c->children[0]->kind == K_OTHER))
                return cdc_fail("column '%s': a binary value of a type the kit reads only as text; "
                                "stream in text mode", c->name);
            d->unrep.len = 0;
            rc = decode_binary(c, r->p, (int32_t)len, &d->unrep);
            text = (const char *)d->unrep.data;
            textlen = d->unrep.len;
            if (rc == DEC_UNREP && !textlen)
                return cdc_fail("column '%s': a binary value Arrow cannot hold and whose text the "
                                "kit cannot render; stream in text mode", c->name);
        }
        if (rc == DEC_ERR)
            return -1;
        if (rc == DEC_UNREP && tab_add_unrep(t, row, i, before, text, textlen, 0, 0) < 0)
            return -1;
        r->p += len;
    }
    if (before)
        return col_struct_finish(t->before);
    return 0;
}

static int fill_nulls(Col **cols, int n) {
    for (int i = 0; i < n; i++)
        if (col_append_null(cols[i]) < 0)
            return -1;
    return 0;
}

/* A change of `rel` could not be decoded: its rows so far go out as a batch, then an error item
 * (relid, lsn, xid, message, (namespace, name)); the table's later changes in this transaction
 * are skipped. Steals `msg`. */
static int change_failed(DecObject *d, Rel *rel, uint64_t lsn, PyObject *msg, PyObject *out) {
    if (!msg)
        return -1;
    rel->failed_seq = d->txn_seq;
    if (rel->dirty && seal(d, rel, out) < 0) {
        Py_DECREF(msg);
        return -1;
    }
    return append_item(d, out, Py_BuildValue("(sIKINO)", "error", rel->relid,
                                             (unsigned long long)lsn, d->txn.xid, msg,
                                             rel->label ? rel->label : Py_None));
}

static int decode_change(DecObject *d, uint8_t type, Rd *r, Rel *rel, uint64_t lsn,
                         uint64_t ordinal);

static int handle_change(DecObject *d, uint8_t type, Rd *r, uint64_t lsn, PyObject *out) {
    uint32_t relid;
    if (rd_u32(r, &relid) < 0)
        return -1;
    Rel *rel = find_rel(d, relid);
    if (!rel)
        return cdc_fail("a change of relation %u arrived before its Relation message", relid);
    if (!d->in_txn)
        return cdc_fail("a change of relation %u arrived outside a transaction", relid);
    uint64_t ordinal = ++d->ordinal;
    if (rel->failed_seq == d->txn_seq)
        return 0;  /* an earlier change of this table in this transaction failed */
    if (!rel->plan) {
        Py_INCREF(rel->error);
        return change_failed(d, rel, lsn, rel->error, out);
    }
    Tab *t = rel->plan->tab;
    TabMark mark = tab_mark(t);
    if (decode_change(d, type, r, rel, lsn, ordinal) < 0) {
        if (PyErr_Occurred())
            return -1;
        tab_rollback(t, mark);
        return change_failed(d, rel, lsn, PyUnicode_FromString(cdc_errbuf), out);
    }
    d->n_rows++;
    rel->dirty = 1;
    int64_t rows = tab_rows(t);
    if (rows >= d->max_rows || ((rows & 63) == 0 && tab_nbytes(t) >= d->max_bytes))
        return seal(d, rel, out) < 0 ? -2 : 1;
    return 0;
}

static int decode_change(DecObject *d, uint8_t type, Rd *r, Rel *rel, uint64_t lsn,
                         uint64_t ordinal) {
    Tab *t = rel->plan->tab;
    uint8_t marker;
    char op;
    if (rd_u8(r, &marker) < 0)
        return -1;
    if (type == 'I') {
        if (marker != 'N')
            return cdc_fail("INSERT without a new tuple");
        tab_before_null(t);
        if (read_tuple(d, r, rel, 0) < 0)
            return -1;
        op = 'c';
    } else if (type == 'U') {
        int has_old = marker == 'K' || marker == 'O';
        if (has_old) {
            if (read_tuple(d, r, rel, 1) < 0 || rd_u8(r, &marker) < 0)
                return -1;
        }
        if (marker != 'N')
            return cdc_fail("UPDATE without a new tuple");
        if (!has_old)
            tab_before_null(t);
        if (read_tuple(d, r, rel, 0) < 0)
            return -1;
        op = 'u';
    } else {
        if (marker != 'K' && marker != 'O')
            return cdc_fail("DELETE without an old tuple");
        if (read_tuple(d, r, rel, 1) < 0 || fill_nulls(t->root->children, t->ntable) < 0)
            return -1;
        op = 'd';
    }
    return tab_finish_row(t, op, lsn, ordinal);
}

/* ------------------------------------------------------------------ streamed transactions */

static StreamTxn *find_stream(DecObject *d, uint32_t xid, int create) {
    for (StreamTxn *s = d->streams; s; s = s->next)
        if (s->xid == xid)
            return s;
    if (!create)
        return NULL;
    StreamTxn *s = calloc(1, sizeof *s);
    if (!s) {
        cdc_fail("out of memory");
        return NULL;
    }
    s->xid = xid;
    s->next = d->streams;
    d->streams = s;
    return s;
}

static void free_stream(DecObject *d, StreamTxn *s) {
    for (StreamTxn **pp = &d->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (d->replay == s)
        d->replay = NULL;
    if (s->spill)
        fclose(s->spill);
    free(s->mem.data);
    free(s->aborted);
    free(s);
}

static int stream_buffer(DecObject *d, uint32_t subxid, uint64_t lsn, const uint8_t *msg, int64_t len) {
    StreamTxn *s = find_stream(d, d->stream_xid, 1);
    if (!s)
        return -1;
    uint8_t hdr[16];
    uint32_t l32 = (uint32_t)len;
    memcpy(hdr, &subxid, 4);
    memcpy(hdr + 4, &lsn, 8);
    memcpy(hdr + 12, &l32, 4);
    if (buf_append(&s->mem, hdr, 16) < 0 || buf_append(&s->mem, msg, len) < 0)
        return -1;
    if (s->mem.len >= d->spill_bytes) {
        if (!s->spill && !(s->spill = tmpfile()))
            return cdc_fail("cannot create a spill file for streamed transaction %u (set TMPDIR "
                            "to a writable directory)", s->xid);
        if (fwrite(s->mem.data, 1, (size_t)s->mem.len, s->spill) != (size_t)s->mem.len)
            return cdc_fail("cannot write the spill file of streamed transaction %u", s->xid);
        s->spilled += s->mem.len;
        d->n_spilled_bytes += s->mem.len;
        s->mem.len = 0;
        if (s->mem.cap > 4 * d->spill_bytes) {
            free(s->mem.data);
            s->mem.data = NULL;
            s->mem.cap = 0;
        }
    }
    return 0;
}

static int is_aborted(StreamTxn *s, uint32_t subxid) {
    for (int i = 0; i < s->naborted; i++)
        if (s->aborted[i] == subxid)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ messages */

static PyObject *txn_tuple(const char *what, DecObject *d) {
    return Py_BuildValue("(sIKKL)", what, d->txn.xid, (unsigned long long)d->txn.commit_lsn,
                         (unsigned long long)d->txn.end_lsn, (long long)d->txn.commit_ts);
}

/* Patch the end LSN into the batches of a plain transaction, now that its commit arrived. */
static int finish_held(DecObject *d, PyObject *out) {
    Py_ssize_t n = PyList_GET_SIZE(d->held);
    if (PyList_Append(out, txn_tuple("begin", d)) < 0)
        return -1;
    Py_DECREF(PyList_GET_ITEM(out, PyList_GET_SIZE(out) - 1));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(d->held, i);
        if (PyTuple_GET_SIZE(item) == 6 && PyCapsule_CheckExact(PyTuple_GET_ITEM(item, 3))) {
            struct ArrowArray *a = PyCapsule_GetPointer(PyTuple_GET_ITEM(item, 3), "arrow_array");
            int idx = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 4));
            if (!a)
                return -1;
            uint64_t *v = (uint64_t *)a->children[idx]->buffers[1];
            for (int64_t k = 0; k < a->length; k++)
                v[k] = d->txn.end_lsn;
        }
        if (PyList_Append(out, item) < 0)
            return -1;
    }
    if (PyList_SetSlice(d->held, 0, n, NULL) < 0)
        return -1;
    PyObject *c = txn_tuple("commit", d);
    if (!c || PyList_Append(out, c) < 0) {
        Py_XDECREF(c);
        return -1;
    }
    Py_DECREF(c);
    return 0;
}

/* Returns 0, 1 when a batch was sealed, 2 when a streamed commit starts a replay, -1 on error
 * (with a Python exception, or cdc_errbuf when -2 is not used: see handle()). */
static int handle(DecObject *d, const uint8_t *msg, int64_t len, uint64_t lsn, int replaying,
                  PyObject *out);

static int handle_native(DecObject *d, const uint8_t *msg, int64_t len, uint64_t lsn, int replaying,
                         PyObject *out) {
    cdc_errbuf[0] = '\0';
    int rc = handle(d, msg, len, lsn, replaying, out);
    if (rc < 0 && !PyErr_Occurred())
        raise_native();
    return rc < 0 ? -1 : rc;
}

/* A Relation message waits for the change it precedes: the walsender sends it with LSN 0 (only
 * an output plugin's last write of a change carries the LSN), and the change right after it
 * carries the LSN at which the schema is in force, which on_relation is given (the column
 * history is looked up at it). Kept as [8-byte length][message body after the type and xid]. */
static int pend_relation(DecObject *d, const uint8_t *p, int64_t n) {
    int64_t len = n;
    if (buf_append(&d->pending, &len, 8) < 0 || buf_append(&d->pending, p, n) < 0)
        return -1;
    return 0;
}

static int flush_relations(DecObject *d, uint64_t lsn, PyObject *out) {
    int64_t pos = 0, end = d->pending.len;
    int rc = 0;
    while (rc == 0 && pos < end) {
        int64_t n;
        memcpy(&n, d->pending.data + pos, 8);
        Rd r = {d->pending.data + pos + 8, d->pending.data + pos + 8 + n};
        rc = handle_relation(d, &r, lsn, out);
        pos += 8 + n;
    }
    d->pending.len = 0;
    return rc;
}

static int handle(DecObject *d, const uint8_t *msg, int64_t len, uint64_t lsn, int replaying,
                  PyObject *out) {
    Rd r = {msg, msg + len};
    uint8_t type;
    if (rd_u8(&r, &type) < 0)
        return -1;
    d->n_messages++;
    if (d->pending.len && type != 'R' && type != 'Y' && type != 'I' && type != 'U' &&
        type != 'D' && type != 'T' && flush_relations(d, 0, out) < 0)
        return -1;
    int streamed = replaying || d->in_stream;
    uint32_t xid = 0;
    switch (type) {
    case 'B': {
        uint64_t final_lsn, ts;
        uint32_t bxid;
        if (rd_u64(&r, &final_lsn) < 0 || rd_u64(&r, &ts) < 0 || rd_u32(&r, &bxid) < 0)
            return -1;
        if (d->in_txn)
            return cdc_fail("BEGIN of %u inside transaction %u", bxid, d->txn.xid);
        d->in_txn = 1;
        d->ordinal = 0;
        d->txn_seq++;
        d->txn = (TxnInfo){.has_commit_lsn = 1, .commit_lsn = final_lsn, .has_end_lsn = 1,
                           .end_lsn = 0, .has_commit_ts = 1,
                           .commit_ts = (int64_t)ts + PG_EPOCH_US, .xid = bxid};
        return 0;
    }
    case 'C': {
        uint8_t flags;
        uint64_t commit_lsn, end_lsn, ts;
        if (rd_u8(&r, &flags) < 0 || rd_u64(&r, &commit_lsn) < 0 || rd_u64(&r, &end_lsn) < 0 ||
            rd_u64(&r, &ts) < 0)
            return -1;
        if (!d->in_txn)
            return cdc_fail("COMMIT outside a transaction");
        if (seal_all(d, out) < 0)
            return -1;
        d->txn.commit_lsn = commit_lsn;
        d->txn.end_lsn = end_lsn;
        d->txn.commit_ts = (int64_t)ts + PG_EPOCH_US;
        if (finish_held(d, out) < 0)
            return -1;
        d->in_txn = 0;
        return 0;
    }
    case 'O':
        return 0; /* origin of a replicated transaction: not part of the change batch */
    case 'S': {
        uint8_t first;
        if (rd_u32(&r, &xid) < 0 || rd_u8(&r, &first) < 0)
            return -1;
        d->in_stream = 1;
        d->stream_xid = xid;
        return find_stream(d, xid, 1) ? 0 : -1;
    }
    case 'E':
        d->in_stream = 0;
        return 0;
    case 'A': {
        uint32_t subxid;
        if (rd_u32(&r, &xid) < 0 || rd_u32(&r, &subxid) < 0)
            return -1;
        if (d->abort_info) {
            uint64_t abort_lsn, abort_ts;
            if (rd_u64(&r, &abort_lsn) < 0 || rd_u64(&r, &abort_ts) < 0)
                return -1;
        }
        StreamTxn *s = find_stream(d, xid, 0);
        if (!s)
            return 0;
        if (subxid == xid) {
            free_stream(d, s);
            return 0;
        }
        if (s->naborted == s->capaborted) {
            int cap = s->capaborted ? 2 * s->capaborted : 8;
            uint32_t *a = realloc(s->aborted, (size_t)cap * sizeof *a);
            if (!a)
                return cdc_fail("out of memory");
            s->aborted = a;
            s->capaborted = cap;
        }
        s->aborted[s->naborted++] = subxid;
        return 0;
    }
    case 'c': {
        uint8_t flags;
        uint64_t commit_lsn, end_lsn, ts;
        if (rd_u32(&r, &xid) < 0 || rd_u8(&r, &flags) < 0 || rd_u64(&r, &commit_lsn) < 0 ||
            rd_u64(&r, &end_lsn) < 0 || rd_u64(&r, &ts) < 0)
            return -1;
        if (d->in_txn)
            return cdc_fail("STREAM COMMIT of %u inside transaction %u", xid, d->txn.xid);
        StreamTxn *s = find_stream(d, xid, 1);
        if (!s)
            return -1;
        if (s->spill && fflush(s->spill) == 0)
            rewind(s->spill);
        d->replay = s;
        d->replay_in_file = s->spill != NULL;
        d->in_txn = 1;
        d->ordinal = 0;
        d->txn_seq++;
        d->txn = (TxnInfo){.has_commit_lsn = 1, .commit_lsn = commit_lsn, .has_end_lsn = 1,
                           .end_lsn = end_lsn, .has_commit_ts = 1,
                           .commit_ts = (int64_t)ts + PG_EPOCH_US, .xid = xid};
        PyObject *b = txn_tuple("begin", d);
        if (!b || PyList_Append(out, b) < 0) {
            Py_XDECREF(b);
            return -1;
        }
        Py_DECREF(b);
        return 2;
    }
    case 'R': case 'Y': case 'I': case 'U': case 'D': case 'T': case 'M':
        break;
    case 'b': case 'P': case 'K': case 'r': case 'p':
        return cdc_fail("two-phase message '%c': the kit does not enable two_phase", type);
    default:
        return cdc_fail("unknown pgoutput message type 0x%02x", type);
    }
    /* messages that carry the (sub)transaction id while streaming */
    if (streamed && rd_u32(&r, &xid) < 0)
        return -1;
    if (type == 'M') {
        uint8_t flags;
        uint64_t mlsn;
        const char *prefix = NULL;
        int64_t plen = 0;
        uint32_t clen;
        const uint8_t *start = r.p;
        if (rd_u8(&r, &flags) < 0 || rd_u64(&r, &mlsn) < 0 || rd_str(&r, &prefix, &plen) < 0 ||
            rd_u32(&r, &clen) < 0 || rd_need(&r, clen) < 0)
            return -1;
        int transactional = flags & 1;
        if (transactional && d->in_stream && !replaying)
            return stream_buffer(d, xid, lsn, msg, len);
        (void)start;
        if (transactional && d->in_txn && seal_all(d, out) < 0)
            return -1;
        PyObject *item = Py_BuildValue("(sIKOs#y#)", "message",
                                       transactional ? d->txn.xid : 0,
                                       (unsigned long long)mlsn, transactional ? Py_True : Py_False,
                                       prefix, (Py_ssize_t)plen, r.p, (Py_ssize_t)clen);
        if (!item)
            return -1;
        int rc = PyList_Append(transactional && d->in_txn && !d->replay ? d->held : out, item);
        Py_DECREF(item);
        return rc;
    }
    if (d->in_stream && !replaying)
        return stream_buffer(d, (type == 'R' || type == 'Y') ? 0 : xid, lsn, msg, len);
    switch (type) {
    case 'R':
        return pend_relation(d, r.p, r.end - r.p);
    case 'Y':
        return 0; /* types are looked up by OID in the catalog */
    case 'I': case 'U': case 'D':
        if (d->pending.len && flush_relations(d, lsn, out) < 0)
            return -1;
        return handle_change(d, type, &r, lsn, out);
    case 'T': {
        if (d->pending.len && flush_relations(d, lsn, out) < 0)
            return -1;
        uint32_t nrels;
        uint8_t options;
        if (rd_u32(&r, &nrels) < 0 || rd_u8(&r, &options) < 0)
            return -1;
        if (!d->in_txn)
            return cdc_fail("TRUNCATE outside a transaction");
        PyObject *relids = PyTuple_New(nrels);
        PyObject *labels = PyTuple_New(nrels);
        if (!relids || !labels) {
            Py_XDECREF(relids);
            Py_XDECREF(labels);
            return -1;
        }
        for (uint32_t i = 0; i < nrels; i++) {
            uint32_t relid;
            if (rd_u32(&r, &relid) < 0) {
                Py_DECREF(relids);
                Py_DECREF(labels);
                return -1;
            }
            PyTuple_SET_ITEM(relids, i, PyLong_FromUnsignedLong(relid));
            /* the names in force at the TRUNCATE (pgoutput sends each relation first) */
            Rel *rel = find_rel(d, relid);
            PyObject *label = rel && rel->label ? rel->label : Py_None;
            Py_INCREF(label);
            PyTuple_SET_ITEM(labels, i, label);
        }
        if (seal_all(d, out) < 0) {
            Py_DECREF(relids);
            Py_DECREF(labels);
            return -1;
        }
        /* a TRUNCATE takes an ordinal of its own, as in wal2arrow (docs/protocol.md) */
        return append_item(d, out, Py_BuildValue("(sIKNiNK)", "truncate", d->txn.xid,
                                                 (unsigned long long)lsn, relids, (int)options,
                                                 labels, (unsigned long long)++d->ordinal));
    }
    }
    return 0;
}

/* ------------------------------------------------------------------ Python API */

static PyObject *Dec_feed(DecObject *d, PyObject *args) {
    PyObject *msgs;
    Py_ssize_t start = 0;
    if (!PyArg_ParseTuple(args, "O|n", &msgs, &start))
        return NULL;
    if (d->replay) {
        PyErr_SetString(PyExc_RuntimeError, "finish the streamed commit with replay_step() first");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(msgs, "feed() takes a list of CopyData messages");
    if (!seq)
        return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i = start;
    for (; out && i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) < 0) {
            Py_CLEAR(out);
            break;
        }
        const uint8_t *p = view.buf;
        int rc = 0;
        if (view.len >= 25 && p[0] == 'w') {
            uint64_t lsn = 0;
            for (int k = 1; k < 9; k++)
                lsn = (lsn << 8) | p[k];
            rc = handle_native(d, p + 25, view.len - 25, lsn, 0, out);
        } else if (view.len >= 18 && p[0] == 'k') {
            uint64_t wal_end = 0;
            for (int k = 1; k < 9; k++)
                wal_end = (wal_end << 8) | p[k];
            PyObject *item = Py_BuildValue("(sKO)", "keepalive", (unsigned long long)wal_end,
                                           p[17] ? Py_True : Py_False);
            rc = (!item || PyList_Append(out, item) < 0) ? -1 : 0;
            Py_XDECREF(item);
        } else {
            PyErr_Format(NativeError, "unexpected CopyData message (type 0x%02x, %zd bytes) in a "
                         "logical replication stream", view.len ? p[0] : 0, view.len);
            rc = -1;
        }
        PyBuffer_Release(&view);
        if (rc < 0) {
            Py_CLEAR(out);
            break;
        }
        if (rc == 2) {
            i++;
            break;
        }
    }
    Py_DECREF(seq);
    if (!out)
        return NULL;
    return Py_BuildValue("(Nn)", out, i);
}

static int replay_read(DecObject *d, StreamTxn *s, uint32_t *subxid, uint64_t *lsn,
                       const uint8_t **msg, int64_t *len) {
    uint8_t hdr[16];
    uint32_t l32;
    if (d->replay_in_file) {
        size_t got = fread(hdr, 1, 16, s->spill);
        if (got == 16) {
            memcpy(subxid, hdr, 4);
            memcpy(lsn, hdr + 4, 8);
            memcpy(&l32, hdr + 12, 4);
            d->scratch.len = 0;
            if (buf_reserve(&d->scratch, l32) < 0)
                return -1;
            if (fread(d->scratch.data, 1, l32, s->spill) != l32)
                return cdc_fail("the spill file of streamed transaction %u is truncated", s->xid);
            *msg = d->scratch.data;
            *len = l32;
            return 1;
        }
        if (got != 0)
            return cdc_fail("the spill file of streamed transaction %u is truncated", s->xid);
        d->replay_in_file = 0;
        s->replay_pos = 0;
    }
    if (s->replay_pos >= s->mem.len)
        return 0;
    memcpy(subxid, s->mem.data + s->replay_pos, 4);
    memcpy(lsn, s->mem.data + s->replay_pos + 4, 8);
    memcpy(&l32, s->mem.data + s->replay_pos + 12, 4);
    *msg = s->mem.data + s->replay_pos + 16;
    *len = l32;
    s->replay_pos += 16 + l32;
    return 1;
}

static PyObject *Dec_replay_step(DecObject *d, PyObject *unused) {
    StreamTxn *s = d->replay;
    if (!s)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (;;) {
        uint32_t subxid = 0;
        uint64_t lsn = 0;
        const uint8_t *msg = NULL;
        int64_t len = 0;
        cdc_errbuf[0] = '\0';
        int rr = replay_read(d, s, &subxid, &lsn, &msg, &len);
        if (rr < 0) {
            raise_native();
            goto fail;
        }
        if (rr == 0) {
            if (seal_all(d, out) < 0)
                goto fail;
            PyObject *c = txn_tuple("commit", d);
            if (!c || PyList_Append(out, c) < 0) {
                Py_XDECREF(c);
                goto fail;
            }
            Py_DECREF(c);
            d->in_txn = 0;
            free_stream(d, s);
            return out;
        }
        if (subxid && is_aborted(s, subxid))
            continue;
        int rc = handle_native(d, msg, len, lsn, 1, out);
        if (rc < 0)
            goto fail;
        if (rc == 1)
            return out;
    }
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Dec_reset(DecObject *d, PyObject *unused) {
    /* after a reconnect the server starts again at a transaction boundary */
    while (d->streams)
        free_stream(d, d->streams);
    for (int i = 0; i < d->nrels; i++) {
        if (d->rels[i].plan)
            tab_discard(d->rels[i].plan->tab);
        d->rels[i].dirty = 0;
        d->rels[i].failed_seq = 0;
    }
    d->in_txn = d->in_stream = 0;
    d->replay = NULL;
    d->pending.len = 0;
    if (PyList_SetSlice(d->held, 0, PyList_GET_SIZE(d->held), NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Dec_init(DecObject *d, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"on_relation", "max_rows", "max_bytes", "spill_bytes", "abort_info",
                             NULL};
    PyObject *cb;
    long long max_rows = 65536, max_bytes = 64 << 20, spill = 16 << 20;
    int abort_info = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LLLp", kwlist, &cb, &max_rows, &max_bytes,
                                     &spill, &abort_info))
        return -1;
    if (!PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "on_relation must be callable");
        return -1;
    }
    if (max_rows < 1 || max_bytes < 1 || spill < 1) {
        PyErr_SetString(PyExc_ValueError, "max_rows, max_bytes and spill_bytes must be positive");
        return -1;
    }
    Py_INCREF(cb);
    Py_XSETREF(d->on_relation, cb);
    d->max_rows = max_rows;
    d->max_bytes = max_bytes;
    d->spill_bytes = spill;
    d->abort_info = abort_info;
    if (!d->held && !(d->held = PyList_New(0)))
        return -1;
    return 0;
}

static void Dec_dealloc(DecObject *d) {
    while (d->streams)
        free_stream(d, d->streams);
    for (int i = 0; i < d->nrels; i++) {
        Py_XDECREF(d->rels[i].plan);
        Py_XDECREF(d->rels[i].label);
        Py_XDECREF(d->rels[i].error);
    }
    PyMem_Free(d->rels);
    Py_XDECREF(d->on_relation);
    Py_XDECREF(d->held);
    free(d->scratch.data);
    free(d->unrep.data);
    free(d->pending.data);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyObject *Dec_get(DecObject *d, void *what) {
    switch ((int)(intptr_t)what) {
    case 0: return PyLong_FromLongLong(d->n_messages);
    case 1: return PyLong_FromLongLong(d->n_rows);
    case 2: return PyLong_FromLongLong(d->n_spilled_bytes);
    case 3: {
        PyObject *l = PyList_New(0);
        for (StreamTxn *s = d->streams; l && s; s = s->next) {
            PyObject *x = PyLong_FromUnsignedLong(s->xid);
            if (!x || PyList_Append(l, x) < 0)
                Py_CLEAR(l);
            Py_XDECREF(x);
        }
        return l;
    }
    case 4: return PyBool_FromLong(d->in_txn || d->in_stream || d->replay);
    default: {
        int64_t n = 0;
        for (StreamTxn *s = d->streams; s; s = s->next)
            n += s->mem.len;
        return PyLong_FromLongLong(n);
    }
    }
}

static PyGetSetDef Dec_getset[] = {
    {"messages", (getter)Dec_get, NULL, "pgoutput messages decoded", (void *)0},
    {"rows", (getter)Dec_get, NULL, "row changes decoded", (void *)1},
    {"spilled_bytes", (getter)Dec_get, NULL, "bytes of streamed transactions written to disk", (void *)2},
    {"streamed_xids", (getter)Dec_get, NULL, "streamed transactions buffered, not yet committed", (void *)3},
    {"in_transaction", (getter)Dec_get, NULL, "inside a transaction or a stream block", (void *)4},
    {"buffered_bytes", (getter)Dec_get, NULL, "bytes of streamed transactions held in memory", (void *)5},
    {NULL},
};

static PyMethodDef Dec_methods[] = {
    {"feed", (PyCFunction)Dec_feed, METH_VARARGS,
     "feed(messages, start=0) -> (events, next): decode CopyData messages from index start; "
     "stops after a STREAM COMMIT (then call replay_step() until it returns None)"},
    {"replay_step", (PyCFunction)Dec_replay_step, METH_NOARGS,
     "replay_step() -> events or None: the next batch of a committed streamed transaction"},
    {"reset", (PyCFunction)Dec_reset, METH_NOARGS,
     "reset(): forget partial transactions (after a reconnect); relations are kept"},
    {NULL},
};

PyTypeObject PgoutputDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cdc_notebook._native.PgoutputDecoder",
    .tp_basicsize = sizeof(DecObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PgoutputDecoder(on_relation, max_rows=65536, max_bytes=64MiB, spill_bytes=16MiB, "
              "abort_info=False)\n\non_relation(relid, namespace, name, replica_identity, columns, "
              "lsn) -> (TablePlan, event or None); columns are (name, flags, type_oid, typmod); "
              "lsn is the message's XLogData header LSN (that of the change it precedes).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dec_init,
    .tp_dealloc = (destructor)Dec_dealloc,
    .tp_getset = Dec_getset,
    .tp_methods = Dec_methods,
};
