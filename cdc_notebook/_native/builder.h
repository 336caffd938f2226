/*
 * Column builders that produce Arrow arrays through the C data interface.
 *
 * A Col mirrors one field of an Arrow schema (copied once from a schema that pyarrow exported,
 * so our layouts and the spec's Arrow types cannot drift apart). Values are appended by the
 * decoders; col_export_array() hands the buffers over to an ArrowArray without copying and
 * leaves the builder empty for the next batch.
 */
#ifndef CDC_BUILDER_H
#define CDC_BUILDER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "arrow_abi.h"

typedef struct {
    uint8_t *data;
    int64_t len;
    int64_t cap;
} Buf;

typedef enum {
    LAYOUT_NULL,
    LAYOUT_BOOL,
    LAYOUT_FIXED,   /* fixed width values: ints, floats, decimals, temporal, fixed_size_binary */
    LAYOUT_VARBIN,  /* int32 offsets + bytes: utf8, binary */
    LAYOUT_LIST,    /* int32 offsets + one child */
    LAYOUT_STRUCT,
} Layout;

typedef struct Col {
    char *format;
    char *name;
    char *metadata;      /* the C data interface's binary metadata encoding, or NULL */
    int64_t metadata_len;
    int64_t flags;
    Layout layout;
    int width;           /* bytes per value for LAYOUT_FIXED */

    /* what the decoders put into it (set by the plan, see decode.h) */
    int kind;
    int32_t param[4];

    int64_t length;
    int64_t null_count;
    Buf validity;
    Buf data;            /* values (FIXED, BOOL bits, VARBIN bytes) */
    Buf offsets;         /* VARBIN and LIST */
    int nchildren;
    struct Col **children;
} Col;

/* Error text of the last failure in this thread's decoder call (set by the functions below). */
extern _Thread_local char cdc_errbuf[512];
int cdc_fail(const char *fmt, ...);   /* formats into cdc_errbuf, returns -1 */

int buf_grow(Buf *b, int64_t need);

static inline int buf_reserve(Buf *b, int64_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    return buf_grow(b, b->len + extra);
}

static inline int buf_append(Buf *b, const void *p, int64_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, (size_t)n);
    b->len += n;
    return 0;
}

Col *col_from_schema(const struct ArrowSchema *schema);
void col_free(Col *c);
Col *col_find_child(Col *c, const char *name);

/* Validity of the value at index c->length, then length+1. */
static inline int col_mark(Col *c, int valid) {
    int64_t i = c->length;
    if ((i >> 3) >= c->validity.len) {
        if (buf_reserve(&c->validity, 1) < 0)
            return -1;
        c->validity.data[c->validity.len++] = 0;
    }
    if (valid)
        c->validity.data[i >> 3] |= (uint8_t)(1u << (i & 7));
    else
        c->null_count++;
    c->length++;
    return 0;
}

int col_append_null(Col *c);
int col_append_nulls(Col *c, int64_t n);   /* n nulls at once */

static inline int col_append_fixed(Col *c, const void *value) {
    if (buf_append(&c->data, value, c->width) < 0)
        return -1;
    return col_mark(c, 1);
}

static inline int col_append_bool(Col *c, int v) {
    int64_t i = c->length;
    if ((i >> 3) >= c->data.len) {
        if (buf_reserve(&c->data, 1) < 0)
            return -1;
        c->data.data[c->data.len++] = 0;
    }
    if (v)
        c->data.data[i >> 3] |= (uint8_t)(1u << (i & 7));
    return col_mark(c, 1);
}

/* VARBIN: append bytes; the value ends at the next col_varbin_finish(). */
static inline int col_varbin_push(Col *c, const void *p, int64_t n) {
    return buf_append(&c->data, p, n);
}
int col_varbin_finish(Col *c);   /* writes the end offset and marks the value valid */

static inline int col_append_varbin(Col *c, const void *p, int64_t n) {
    if (buf_append(&c->data, p, n) < 0)
        return -1;
    return col_varbin_finish(c);
}

/* LIST: append child values, then col_list_finish() closes one list value. */
int col_list_finish(Col *c);

/* STRUCT: append to each child, then col_struct_finish(). */
static inline int col_struct_finish(Col *c) { return col_mark(c, 1); }

/* Bytes held by the builder tree (for the byte bound of a batch). */
int64_t col_nbytes(const Col *c);

/* Hand the buffers to *out (zero copy) and reset the builder. */
int col_export_array(Col *c, struct ArrowArray *out);
/* A deep copy of the field description. */
int col_export_schema(const Col *c, struct ArrowSchema *out);
/* Drop what was appended since the last export (used when a transaction's rows are dropped). */
void col_reset(Col *c);
/* Keep the first `len` values and drop the rest, including values of children appended for a
 * value that was never finished (a row whose decoding failed half-way). */
void col_truncate(Col *c, int64_t len);

/* An ArrowArray owning nothing but its children: a struct array assembled from columns. */
int make_struct_array(int64_t length, int64_t nchildren, struct ArrowArray **children_moved,
                      struct ArrowArray *out);

/* A constant-valued fixed-width array of length n (value NULL: all nulls). */
int make_constant_fixed(int64_t n, int width, const void *value, struct ArrowArray *out);

#endif
