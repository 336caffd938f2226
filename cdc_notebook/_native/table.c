#include "table.h"

#include <stdio.h>
#include <stdlib.h>

static const char *META_NAMES[N_META] = {
    "_cdc_op", "_cdc_lsn", "_cdc_commit_lsn", "_cdc_end_lsn", "_cdc_commit_ts", "_cdc_xid",
    "_cdc_ordinal", "_cdc_before", "_cdc_unchanged_toast", "_cdc_unrepresentable"};
static const char *META_FORMATS[N_META] = {"u", "L", "L", "L", NULL, "I", "L", "+s", "+l", "+m"};

Tab *tab_new(const struct ArrowSchema *schema) {
    if (strcmp(schema->format, "+s") != 0) {
        cdc_fail("a change-batch schema must be a struct (record batch) schema");
        return NULL;
    }
    Col *root = col_from_schema(schema);
    if (!root)
        return NULL;
    int n = root->nchildren - N_META;
    if (n < 0) {
        cdc_fail("a change-batch schema needs the %d _cdc_* metadata columns", N_META);
        col_free(root);
        return NULL;
    }
    for (int i = 0; i < N_META; i++) {
        Col *c = root->children[n + i];
        if (strcmp(c->name, META_NAMES[i]) != 0 ||
            (META_FORMATS[i] && strcmp(c->format, META_FORMATS[i]) != 0) ||
            (!META_FORMATS[i] && strncmp(c->format, "tsu:", 4) != 0)) {
            cdc_fail("change-batch column %d is '%s' (%s), expected '%s'", n + i, c->name,
                     c->format, META_NAMES[i]);
            col_free(root);
            return NULL;
        }
    }
    Col *before = root->children[n + 7];
    Col *unrep = root->children[n + 9];
    if (before->nchildren != n || unrep->children[0]->nchildren != 2 ||
        strcmp(unrep->children[0]->children[0]->format, "u") != 0 ||
        strcmp(unrep->children[0]->children[1]->format, "u") != 0 ||
        strcmp(root->children[n + 8]->children[0]->format, "u") != 0) {
        cdc_fail("_cdc_before must repeat the table's columns; _cdc_unchanged_toast must be "
                 "list<utf8> and _cdc_unrepresentable map<utf8, utf8>");
        col_free(root);
        return NULL;
    }
    Tab *t = calloc(1, sizeof *t);
    if (!t) {
        col_free(root);
        cdc_fail("out of memory");
        return NULL;
    }
    t->root = root;
    t->ntable = n;
    t->op = root->children[n];
    t->lsn = root->children[n + 1];
    t->ordinal = root->children[n + 6];
    t->before = before;
    t->toast = root->children[n + 8];
    t->unrep_col = unrep;
    return t;
}

static void free_unreps(Tab *t) {
    for (int64_t i = 0; i < t->nunreps; i++) {
        free(t->unreps[i].key);
        free(t->unreps[i].text);
    }
    t->nunreps = 0;
}

void tab_free(Tab *t) {
    if (!t)
        return;
    free_unreps(t);
    free(t->unreps);
    free(t->scratch.data);
    col_free(t->root);
    free(t);
}

int64_t tab_rows(const Tab *t) { return t->op->length; }

int64_t tab_nbytes(const Tab *t) { return col_nbytes(t->root); }

int tab_add_unrep(Tab *t, int64_t row, int col, int before, const char *text, int64_t textlen,
                  uint32_t block, uint16_t offset) {
    if (t->nunreps == t->capunreps) {
        int64_t cap = t->capunreps ? 2 * t->capunreps : 16;
        Unrep *u = realloc(t->unreps, (size_t)cap * sizeof *u);
        if (!u)
            return cdc_fail("out of memory");
        t->unreps = u;
        t->capunreps = cap;
    }
    const char *name = t->root->children[col]->name;
    Unrep *u = &t->unreps[t->nunreps];
    memset(u, 0, sizeof *u);
    size_t kl = strlen(name) + (before ? 12 : 0) + 1;
    u->key = malloc(kl);
    if (!u->key)
        return cdc_fail("out of memory");
    snprintf(u->key, kl, "%s%s", before ? "_cdc_before." : "", name);
    if (text) {
        u->text = malloc((size_t)textlen + 1);
        if (!u->text) {
            free(u->key);
            return cdc_fail("out of memory");
        }
        memcpy(u->text, text, (size_t)textlen);
        u->text[textlen] = '\0';
    }
    u->row = row;
    u->col = col;
    u->block = block;
    u->offset = offset;
    t->nunreps++;
    return 0;
}

int tab_finish_row(Tab *t, char op, uint64_t lsn, uint64_t ordinal) {
    if (col_append_varbin(t->op, &op, 1) < 0 || col_append_fixed(t->lsn, &lsn) < 0 ||
        col_append_fixed(t->ordinal, &ordinal) < 0 || col_list_finish(t->toast) < 0)
        return -1;
    return 0;
}

static int build_unrep_map(Tab *t, int64_t nrows) {
    Col *map = t->unrep_col, *entries = map->children[0];
    Col *key = entries->children[0], *val = entries->children[1];
    int64_t j = 0;
    for (int64_t r = 0; r < nrows; r++) {
        for (; j < t->nunreps && t->unreps[j].row == r; j++) {
            Unrep *u = &t->unreps[j];
            if (!u->text)
                return cdc_fail("column '%s': the text of an unrepresentable value was not "
                                "fetched before the batch was exported", u->key);
            if (col_append_varbin(key, u->key, (int64_t)strlen(u->key)) < 0 ||
                col_append_varbin(val, u->text, (int64_t)strlen(u->text)) < 0 ||
                col_struct_finish(entries) < 0)
                return -1;
        }
        if (col_list_finish(map) < 0)
            return -1;
    }
    return 0;
}

int tab_export(Tab *t, const TxnInfo *info, struct ArrowArray *out) {
    int n = t->ntable;
    int64_t rows = tab_rows(t);
    struct ArrowArray parts[N_META + 1];
    struct ArrowArray *ptrs[t->root->nchildren];
    struct ArrowArray *cols = calloc((size_t)t->root->nchildren, sizeof *cols);
    if (!cols)
        return cdc_fail("out of memory");
    (void)parts;
    int done = 0, rc = -1;
    if (tab_before_flush(t) < 0 || build_unrep_map(t, rows) < 0)
        goto out;
    for (int i = 0; i < t->root->nchildren; i++) {
        int r;
        if (i == n + 2)
            r = make_constant_fixed(rows, 8, info->has_commit_lsn ? &info->commit_lsn : NULL, &cols[i]);
        else if (i == n + 3)
            r = make_constant_fixed(rows, 8, info->has_end_lsn ? &info->end_lsn : NULL, &cols[i]);
        else if (i == n + 4)
            r = make_constant_fixed(rows, 8, info->has_commit_ts ? &info->commit_ts : NULL, &cols[i]);
        else if (i == n + 5)
            r = make_constant_fixed(rows, 4, &info->xid, &cols[i]);
        else
            r = col_export_array(t->root->children[i], &cols[i]);
        if (r < 0)
            goto out;
        ptrs[i] = &cols[i];
        done = i + 1;
    }
    if (make_struct_array(rows, t->root->nchildren, ptrs, out) < 0)
        goto out;
    done = 0;
    rc = 0;
out:
    for (int i = 0; i < done; i++)
        if (cols[i].release)
            cols[i].release(&cols[i]);
    free(cols);
    free_unreps(t);
    if (rc < 0)
        col_reset(t->root);
    return rc;
}

TabMark tab_mark(const Tab *t) {
    TabMark m = {tab_rows(t), t->before->length, t->before_nulls, t->nunreps};
    return m;
}

void tab_rollback(Tab *t, TabMark m) {
    int n = t->ntable;
    for (int i = 0; i < t->root->nchildren; i++)
        if (i != n + 7 && i != n + 9)
            col_truncate(t->root->children[i], m.rows);
    col_truncate(t->before, m.before_len);
    t->before_nulls = m.before_nulls;
    for (int64_t i = m.nunreps; i < t->nunreps; i++) {
        free(t->unreps[i].key);
        free(t->unreps[i].text);
    }
    if (t->nunreps > m.nunreps)
        t->nunreps = m.nunreps;
}

void tab_discard(Tab *t) {
    t->before_nulls = 0;
    free_unreps(t);
    col_reset(t->root);
}
