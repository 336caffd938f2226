/*
 * The change-batch builder of one table: the table's columns (after-image) followed by the
 * metadata columns of docs/decisions.md and docs/types.md, in that order:
 *   _cdc_op, _cdc_lsn, _cdc_commit_lsn, _cdc_end_lsn, _cdc_commit_ts, _cdc_xid, _cdc_ordinal,
 *   _cdc_before, _cdc_unchanged_toast, _cdc_unrepresentable
 * The four per-transaction columns are constants, written when the batch is exported.
 */
#ifndef CDC_TABLE_H
#define CDC_TABLE_H

#include "decode.h"

#define N_META 10

typedef struct {
    int64_t row;
    char *key;       /* column name, or "_cdc_before.<column>" */
    char *text;      /* the server's text output; NULL while it is still to be fetched */
    uint32_t block;  /* where the snapshot can fetch it (ctid), when text is NULL */
    uint16_t offset;
    int col;         /* table column index */
} Unrep;

typedef struct {
    Col *root;
    int ntable;
    Col *op, *lsn, *ordinal, *before, *toast;
    Col *unrep_col;   /* builder of the map, filled at export from `unreps` */
    Unrep *unreps;
    int64_t nunreps, capunreps;
    Buf scratch;
    int64_t before_nulls;  /* null before-images not yet written (most rows have none) */
} Tab;

/* A row without a before-image (written in bulk when needed). */
static inline void tab_before_null(Tab *t) { t->before_nulls++; }
/* Write the pending null before-images: call before appending a real one. */
static inline int tab_before_flush(Tab *t) {
    int64_t n = t->before_nulls;
    t->before_nulls = 0;
    return col_append_nulls(t->before, n);
}

/* schema: the full batch schema (a struct); kinds: per table column, set by the caller. */
Tab *tab_new(const struct ArrowSchema *schema);
void tab_free(Tab *t);
int64_t tab_rows(const Tab *t);  /* rows finished (the _cdc_op column's length) */
int64_t tab_nbytes(const Tab *t);

/* Record an unrepresentable value of row `row` (text may be NULL: to be fetched). */
int tab_add_unrep(Tab *t, int64_t row, int col, int before, const char *text, int64_t textlen,
                  uint32_t block, uint16_t offset);

/* Per-row metadata (after the table columns and the before-image were appended). */
int tab_finish_row(Tab *t, char op, uint64_t lsn, uint64_t ordinal);

typedef struct {
    int has_commit_lsn;
    uint64_t commit_lsn;
    int has_end_lsn;
    uint64_t end_lsn;
    int has_commit_ts;
    int64_t commit_ts;   /* microseconds since 1970 */
    uint32_t xid;
} TxnInfo;

int tab_export(Tab *t, const TxnInfo *info, struct ArrowArray *out);
void tab_discard(Tab *t);

/* Where a row starts, so that a row whose decoding failed half-way can be taken back. */
typedef struct {
    int64_t rows, before_len, before_nulls, nunreps;
} TabMark;
TabMark tab_mark(const Tab *t);
void tab_rollback(Tab *t, TabMark m);

/* Index of the _cdc_end_lsn child in an exported batch. */
static inline int tab_end_lsn_index(const Tab *t) { return t->ntable + 3; }

#endif
