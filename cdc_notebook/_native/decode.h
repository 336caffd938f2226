/*
 * PostgreSQL values (binary send format or text output) into Arrow builders, following the
 * type-mapping spec (cdc_notebook/decode/typemap.json, docs/types.md): the Python side resolves each
 * column's declared type to a spec entry and hands us the matching kind below.
 *
 * A value the column's Arrow type cannot hold is appended as null and reported as DEC_UNREP;
 * the caller records the server's text output of the value in _cdc_unrepresentable. For text
 * input that text is the input itself; for binary input the decoder writes it into `unrep`
 * when it can render it exactly (scalars), and leaves `unrep` empty otherwise (arrays of an
 * unusual shape: the snapshot reads their text from the server).
 */
#ifndef CDC_DECODE_H
#define CDC_DECODE_H

#include "builder.h"

enum Kind {
    K_NONE = 0,
    K_BOOL, K_INT2, K_INT4, K_INT8, K_OID, K_FLOAT4, K_FLOAT8,
    K_DECIMAL, K_NUMERIC_TEXT,
    K_TEXT, K_BYTEA, K_JSON, K_JSONB,
    K_DATE, K_TIME, K_TIMETZ, K_TIMESTAMP, K_TIMESTAMPTZ, K_INTERVAL,
    K_UUID, K_INET, K_MACADDR, K_MACADDR8,
    K_ARRAY, K_OTHER,
    K_COUNT
};

#define DEC_OK 0
#define DEC_ERR (-1)
#define DEC_UNREP 1

int kind_from_name(const char *name);
const char *kind_name(int kind);
/* Does the kind's binary decoder render every unrepresentable value's text itself? */
int kind_binary_complete(int kind);
/* Check that the builder's Arrow layout is what the kind writes. */
int kind_check_layout(Col *c);

int decode_binary(Col *c, const uint8_t *p, int32_t len, Buf *unrep);
int decode_text(Col *c, const char *p, int32_t len);

#endif
