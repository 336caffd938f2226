#include "builder.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

_Thread_local char cdc_errbuf[512];

int cdc_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cdc_errbuf, sizeof cdc_errbuf, fmt, ap);
    va_end(ap);
    return -1;
}

int buf_grow(Buf *b, int64_t need) {
    int64_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, (size_t)cap);
    if (!p)
        return cdc_fail("out of memory growing a buffer to %lld bytes", (long long)cap);
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int64_t metadata_size(const char *m) {
    if (!m)
        return 0;
    int32_t n;
    memcpy(&n, m, 4);
    int64_t pos = 4;
    for (int32_t i = 0; i < n; i++) {
        int32_t len;
        memcpy(&len, m + pos, 4);
        pos += 4 + len;
        memcpy(&len, m + pos, 4);
        pos += 4 + len;
    }
    return pos;
}

static int layout_of(Col *c) {
    const char *f = c->format;
    if (f[0] == '+') {
        if (f[1] == 'l' && f[2] == '\0') {
            c->layout = LAYOUT_LIST;
            return 0;
        }
        if (f[1] == 'm' && f[2] == '\0') { /* map: a list of key/value structs */
            c->layout = LAYOUT_LIST;
            return 0;
        }
        if (f[1] == 's' && f[2] == '\0') {
            c->layout = LAYOUT_STRUCT;
            return 0;
        }
        return cdc_fail("Arrow nested type '%s' has no builder", f);
    }
    if (f[0] == 'w' && f[1] == ':') {
        c->layout = LAYOUT_FIXED;
        c->width = atoi(f + 2);
        return c->width > 0 ? 0 : cdc_fail("bad fixed_size_binary format '%s'", f);
    }
    if (f[0] == 'd' && f[1] == ':') {
        const char *comma2 = strchr(strchr(f, ',') ? strchr(f, ',') + 1 : f, ',');
        if (comma2 && atoi(comma2 + 1) != 128)
            return cdc_fail("only decimal128 is supported, not '%s'", f);
        c->layout = LAYOUT_FIXED;
        c->width = 16;
        return 0;
    }
    if (f[1] == '\0') {
        switch (f[0]) {
        case 'n': c->layout = LAYOUT_NULL; return 0;
        case 'b': c->layout = LAYOUT_BOOL; return 0;
        case 'c': case 'C': c->layout = LAYOUT_FIXED; c->width = 1; return 0;
        case 's': case 'S': case 'e': c->layout = LAYOUT_FIXED; c->width = 2; return 0;
        case 'i': case 'I': case 'f': c->layout = LAYOUT_FIXED; c->width = 4; return 0;
        case 'l': case 'L': case 'g': c->layout = LAYOUT_FIXED; c->width = 8; return 0;
        case 'u': case 'z': c->layout = LAYOUT_VARBIN; return 0;
        default: break;
        }
    }
    if (f[0] == 't') {
        c->layout = LAYOUT_FIXED;
        if (!strcmp(f, "tdD") || !strcmp(f, "tts") || !strcmp(f, "ttm") || !strcmp(f, "tiM"))
            c->width = 4;
        else if (!strcmp(f, "tin"))
            c->width = 16;
        else if (f[1] == 'd' || f[1] == 't' || f[1] == 's' || f[1] == 'D' || !strcmp(f, "tiD"))
            c->width = 8;
        else
            return cdc_fail("Arrow temporal type '%s' has no builder", f);
        return 0;
    }
    return cdc_fail("Arrow type '%s' has no builder", f);
}

static void col_init_buffers(Col *c) {
    c->length = 0;
    c->null_count = 0;
    c->validity.len = 0;
    c->data.len = 0;
    c->offsets.len = 0;
    if (c->layout == LAYOUT_VARBIN || c->layout == LAYOUT_LIST) {
        int32_t zero = 0;
        buf_append(&c->offsets, &zero, 4);
    }
}

Col *col_from_schema(const struct ArrowSchema *s) {
    Col *c = calloc(1, sizeof *c);
    if (!c) {
        cdc_fail("out of memory");
        return NULL;
    }
    c->format = dupstr(s->format);
    c->name = dupstr(s->name ? s->name : "");
    c->flags = s->flags;
    c->metadata_len = metadata_size(s->metadata);
    if (c->metadata_len) {
        c->metadata = malloc((size_t)c->metadata_len);
        if (c->metadata)
            memcpy(c->metadata, s->metadata, (size_t)c->metadata_len);
    }
    if (!c->format || !c->name || (c->metadata_len && !c->metadata) || layout_of(c) < 0)
        goto fail;
    if (s->dictionary) {
        cdc_fail("dictionary-encoded field '%s' has no builder", c->name);
        goto fail;
    }
    if (s->n_children) {
        c->children = calloc((size_t)s->n_children, sizeof(Col *));
        if (!c->children)
            goto fail;
        c->nchildren = (int)s->n_children;
        for (int64_t i = 0; i < s->n_children; i++) {
            c->children[i] = col_from_schema(s->children[i]);
            if (!c->children[i])
                goto fail;
        }
    }
    if ((c->layout == LAYOUT_LIST && c->nchildren != 1)) {
        cdc_fail("list field '%s' needs exactly one child", c->name);
        goto fail;
    }
    col_init_buffers(c);
    return c;
fail:
    col_free(c);
    return NULL;
}

void col_free(Col *c) {
    if (!c)
        return;
    for (int i = 0; i < c->nchildren; i++)
        col_free(c->children[i]);
    free(c->children);
    free(c->format);
    free(c->name);
    free(c->metadata);
    buf_free(&c->validity);
    buf_free(&c->data);
    buf_free(&c->offsets);
    free(c);
}

Col *col_find_child(Col *c, const char *name) {
    for (int i = 0; i < c->nchildren; i++)
        if (!strcmp(c->children[i]->name, name))
            return c->children[i];
    return NULL;
}

int col_append_null(Col *c) {
    switch (c->layout) {
    case LAYOUT_NULL:
        break;
    case LAYOUT_BOOL: {
        int64_t i = c->length;
        if ((i >> 3) >= c->data.len) {
            if (buf_reserve(&c->data, 1) < 0)
                return -1;
            c->data.data[c->data.len++] = 0;
        }
        break;
    }
    case LAYOUT_FIXED:
        if (buf_reserve(&c->data, c->width) < 0)
            return -1;
        memset(c->data.data + c->data.len, 0, (size_t)c->width);
        c->data.len += c->width;
        break;
    case LAYOUT_VARBIN: {
        int32_t end = (int32_t)c->data.len;
        if (buf_append(&c->offsets, &end, 4) < 0)
            return -1;
        break;
    }
    case LAYOUT_LIST: {
        int32_t end = (int32_t)c->children[0]->length;
        if (buf_append(&c->offsets, &end, 4) < 0)
            return -1;
        break;
    }
    case LAYOUT_STRUCT:
        for (int i = 0; i < c->nchildren; i++)
            if (col_append_null(c->children[i]) < 0)
                return -1;
        break;
    }
    if (c->layout == LAYOUT_NULL) {
        c->length++;
        c->null_count++;
        return 0;
    }
    return col_mark(c, 0);
}

static int zero_bits(Buf *b, int64_t nbits) {
    int64_t need = (nbits + 7) / 8;
    if (need > b->len) {
        if (buf_reserve(b, need - b->len) < 0)
            return -1;
        memset(b->data + b->len, 0, (size_t)(need - b->len));
        b->len = need;
    }
    return 0;
}

static int repeat_i32(Buf *b, int32_t v, int64_t n) {
    if (buf_reserve(b, 4 * n) < 0)
        return -1;
    int32_t *p = (int32_t *)(b->data + b->len);
    for (int64_t i = 0; i < n; i++)
        p[i] = v;
    b->len += 4 * n;
    return 0;
}

int col_append_nulls(Col *c, int64_t n) {
    if (n <= 0)
        return 0;
    switch (c->layout) {
    case LAYOUT_NULL:
        break;
    case LAYOUT_BOOL:
        if (zero_bits(&c->data, c->length + n) < 0)
            return -1;
        break;
    case LAYOUT_FIXED:
        if (buf_reserve(&c->data, n * c->width) < 0)
            return -1;
        memset(c->data.data + c->data.len, 0, (size_t)(n * c->width));
        c->data.len += n * c->width;
        break;
    case LAYOUT_VARBIN:
        if (repeat_i32(&c->offsets, (int32_t)c->data.len, n) < 0)
            return -1;
        break;
    case LAYOUT_LIST:
        if (repeat_i32(&c->offsets, (int32_t)c->children[0]->length, n) < 0)
            return -1;
        break;
    case LAYOUT_STRUCT:
        for (int i = 0; i < c->nchildren; i++)
            if (col_append_nulls(c->children[i], n) < 0)
                return -1;
        break;
    }
    if (c->layout != LAYOUT_NULL && zero_bits(&c->validity, c->length + n) < 0)
        return -1;
    c->length += n;
    c->null_count += n;
    return 0;
}

int col_varbin_finish(Col *c) {
    if (c->data.len > INT32_MAX)
        return cdc_fail("column '%s': more than 2 GiB of values in one batch; lower the batch "
                        "byte bound", c->name);
    int32_t end = (int32_t)c->data.len;
    if (buf_append(&c->offsets, &end, 4) < 0)
        return -1;
    return col_mark(c, 1);
}

int col_list_finish(Col *c) {
    if (c->children[0]->length > INT32_MAX)
        return cdc_fail("column '%s': more than 2^31 list elements in one batch", c->name);
    int32_t end = (int32_t)c->children[0]->length;
    if (buf_append(&c->offsets, &end, 4) < 0)
        return -1;
    return col_mark(c, 1);
}

int64_t col_nbytes(const Col *c) {
    int64_t n = c->validity.len + c->data.len + c->offsets.len;
    for (int i = 0; i < c->nchildren; i++)
        n += col_nbytes(c->children[i]);
    return n;
}

void col_reset(Col *c) {
    for (int i = 0; i < c->nchildren; i++)
        col_reset(c->children[i]);
    col_init_buffers(c);
}

static void clear_bits_from(Buf *b, int64_t nbits) {
    int64_t keep = (nbits + 7) / 8;
    if (b->len > keep)
        b->len = keep;
    if ((nbits & 7) && (nbits >> 3) < b->len)
        b->data[nbits >> 3] &= (uint8_t)((1u << (nbits & 7)) - 1);
}

void col_truncate(Col *c, int64_t len) {
    if (len > c->length)
        len = c->length;
    if (c->layout == LAYOUT_NULL) {
        c->null_count -= c->length - len;
    } else {
        for (int64_t i = len; i < c->length; i++)
            if ((i >> 3) >= c->validity.len || !((c->validity.data[i >> 3] >> (i & 7)) & 1))
                c->null_count--;
        clear_bits_from(&c->validity, len);
    }
    switch (c->layout) {
    case LAYOUT_NULL:
        break;
    case LAYOUT_BOOL:
        clear_bits_from(&c->data, len);
        break;
    case LAYOUT_FIXED:
        c->data.len = len * c->width;
        break;
    case LAYOUT_VARBIN:
        c->offsets.len = (len + 1) * 4;
        c->data.len = ((int32_t *)c->offsets.data)[len];
        break;
    case LAYOUT_LIST:
        c->offsets.len = (len + 1) * 4;
        col_truncate(c->children[0], ((int32_t *)c->offsets.data)[len]);
        break;
    case LAYOUT_STRUCT:
        for (int i = 0; i < c->nchildren; i++)
            col_truncate(c->children[i], len);
        break;
    }
    c->length = len;
}

/* ------------------------------------------------------------------ export: arrays */

typedef struct {
    void *owned[3];
    const void *buffers[3];
    struct ArrowArray *child_storage;
    struct ArrowArray **child_ptrs;
} ArrayPrivate;

static void release_array(struct ArrowArray *a) {
    if (!a->release)
        return;
    ArrayPrivate *p = a->private_data;
    for (int64_t i = 0; i < a->n_children; i++) {
        struct ArrowArray *ch = a->children[i];
        if (ch->release)
            ch->release(ch);
    }
    if (p) {
        for (int i = 0; i < 3; i++)
            free(p->owned[i]);
        free(p->child_storage);
        free(p->child_ptrs);
        free(p);
    }
    a->release = NULL;
}

static uint8_t *take(Buf *b) {
    uint8_t *p = b->data;
    if (!p)
        p = calloc(1, 8); /* consumers expect a non-null pointer for a present buffer */
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

static int alloc_private(struct ArrowArray *out, int64_t nchildren) {
    ArrayPrivate *p = calloc(1, sizeof *p);
    if (!p)
        return cdc_fail("out of memory");
    if (nchildren) {
        p->child_storage = calloc((size_t)nchildren, sizeof(struct ArrowArray));
        p->child_ptrs = calloc((size_t)nchildren, sizeof(struct ArrowArray *));
        if (!p->child_storage || !p->child_ptrs) {
            free(p->child_storage);
            free(p->child_ptrs);
            free(p);
            return cdc_fail("out of memory");
        }
        for (int64_t i = 0; i < nchildren; i++)
            p->child_ptrs[i] = &p->child_storage[i];
    }
    memset(out, 0, sizeof *out);
    out->private_data = p;
    out->buffers = p->buffers;
    out->children = p->child_ptrs;
    out->n_children = nchildren;
    out->release = release_array;
    return 0;
}

int col_export_array(Col *c, struct ArrowArray *out) {
    if (alloc_private(out, c->nchildren) < 0)
        return -1;
    ArrayPrivate *p = out->private_data;
    out->length = c->length;
    out->null_count = c->null_count;
    out->offset = 0;
    int nb = 0;
    if (c->layout != LAYOUT_NULL) {
        if (c->null_count) {
            p->owned[0] = take(&c->validity);
            p->buffers[0] = p->owned[0];
        } else {
            c->validity.len = 0;
            p->buffers[0] = NULL;
        }
        nb = 1;
    }
    switch (c->layout) {
    case LAYOUT_NULL:
    case LAYOUT_STRUCT:
        break;
    case LAYOUT_BOOL:
    case LAYOUT_FIXED:
        p->owned[1] = take(&c->data);
        p->buffers[1] = p->owned[1];
        nb = 2;
        break;
    case LAYOUT_VARBIN:
        p->owned[1] = take(&c->offsets);
        p->owned[2] = take(&c->data);
        p->buffers[1] = p->owned[1];
        p->buffers[2] = p->owned[2];
        nb = 3;
        break;
    case LAYOUT_LIST:
        p->owned[1] = take(&c->offsets);
        p->buffers[1] = p->owned[1];
        nb = 2;
        break;
    }
    out->n_buffers = nb;
    for (int i = 0; i < c->nchildren; i++) {
        if (col_export_array(c->children[i], out->children[i]) < 0) {
            for (int j = i; j < c->nchildren; j++)
                out->children[j]->release = NULL;
            release_array(out);
            return -1;
        }
    }
    col_init_buffers(c);
    return 0;
}

int make_struct_array(int64_t length, int64_t nchildren, struct ArrowArray **children_moved,
                      struct ArrowArray *out) {
    if (alloc_private(out, nchildren) < 0)
        return -1;
    out->length = length;
    out->null_count = 0;
    out->n_buffers = 1;
    ((ArrayPrivate *)out->private_data)->buffers[0] = NULL;
    for (int64_t i = 0; i < nchildren; i++) {
        *out->children[i] = *children_moved[i];
        children_moved[i]->release = NULL;
    }
    return 0;
}

int make_constant_fixed(int64_t n, int width, const void *value, struct ArrowArray *out) {
    if (alloc_private(out, 0) < 0)
        return -1;
    ArrayPrivate *p = out->private_data;
    size_t nbytes = (size_t)(n * width) + 8;
    p->owned[1] = malloc(nbytes);
    if (!p->owned[1]) {
        release_array(out);
        return cdc_fail("out of memory");
    }
    uint8_t *d = p->owned[1];
    if (value) {
        for (int64_t i = 0; i < n; i++)
            memcpy(d + i * width, value, (size_t)width);
        p->buffers[0] = NULL;
        out->null_count = 0;
    } else {
        memset(d, 0, nbytes);
        p->owned[0] = calloc(1, (size_t)((n + 7) / 8) + 8);
        if (!p->owned[0]) {
            release_array(out);
            return cdc_fail("out of memory");
        }
        p->buffers[0] = p->owned[0];
        out->null_count = n;
    }
    p->buffers[1] = d;
    out->length = n;
    out->n_buffers = 2;
    return 0;
}

/* ------------------------------------------------------------------ export: schemas */

static void release_schema(struct ArrowSchema *s) {
    if (!s->release)
        return;
    for (int64_t i = 0; i < s->n_children; i++) {
        if (s->children[i] && s->children[i]->release)
            s->children[i]->release(s->children[i]);
        free(s->children[i]);
    }
    free(s->children);
    free((void *)s->format);
    free((void *)s->name);
    free((void *)s->metadata);
    s->release = NULL;
}

int col_export_schema(const Col *c, struct ArrowSchema *out) {
    memset(out, 0, sizeof *out);
    out->format = dupstr(c->format);
    out->name = dupstr(c->name);
    if (c->metadata_len) {
        char *m = malloc((size_t)c->metadata_len);
        if (m)
            memcpy(m, c->metadata, (size_t)c->metadata_len);
        out->metadata = m;
    }
    out->flags = c->flags;
    out->release = release_schema;
    if (!out->format || !out->name || (c->metadata_len && !out->metadata)) {
        release_schema(out);
        return cdc_fail("out of memory");
    }
    if (c->nchildren) {
        out->children = calloc((size_t)c->nchildren, sizeof(struct ArrowSchema *));
        if (!out->children) {
            release_schema(out);
            return cdc_fail("out of memory");
        }
        for (int i = 0; i < c->nchildren; i++) {
            out->children[i] = calloc(1, sizeof(struct ArrowSchema));
            out->n_children = i + 1;
            if (!out->children[i] || col_export_schema(c->children[i], out->children[i]) < 0) {
                release_schema(out);
                return cdc_fail("out of memory");
            }
        }
    }
    return 0;
}
