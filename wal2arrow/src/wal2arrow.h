/*
 * wal2arrow: declarations shared by the plugin's modules.
 *
 *   wal2arrow.c  the logical-decoding callbacks
 *   options.c    option parsing (format version, publications, batch limits, ...)
 *   relcache.c   per-relation cache: publication membership, columns, schema versions
 *   typemap.c    the PostgreSQL -> Arrow type table (mirror of cdc_notebook/decode/typemap.json)
 *   encode.c     appending rows to Arrow builders
 *   jsonb.c      jsonb values as jsonb_out's text
 *   frame.c      the wire format (docs/protocol.md)
 *   memory.c     tying nanoarrow's malloc'd objects to PostgreSQL memory contexts
 */
#ifndef WAL2ARROW_H
#define WAL2ARROW_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupconvert.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "replication/reorderbuffer.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

#include "nanoarrow/nanoarrow.h"
#include "nanoarrow/nanoarrow_ipc.h"

/* The wire format version(s) this build speaks (docs/protocol.md). */
#define W2A_FORMAT_VERSION_MIN 1
#define W2A_FORMAT_VERSION_MAX 2

/* PostgreSQL 17 passes HeapTuples in changes, older versions ReorderBufferTupleBuf. */
#if PG_VERSION_NUM >= 170000
#define W2A_CHANGE_TUPLE(t) (t)
#else
#define W2A_CHANGE_TUPLE(t) ((t) != NULL ? &(t)->tuple : NULL)
#endif

/* numeric's on-disk header (src/backend/utils/adt/numeric.c; stable on disk) */
#define W2A_NUM_SIGN_MASK 0xC000
#define W2A_NUM_NEG 0x4000
#define W2A_NUM_SHORT 0x8000
#define W2A_NUM_SPECIAL 0xC000
#define W2A_NUM_SHORT_SIGN_MASK 0x2000
#define W2A_NUM_SHORT_DSCALE_MASK 0x1F80
#define W2A_NUM_SHORT_DSCALE_SHIFT 7
#define W2A_NUM_SHORT_WEIGHT_SIGN_MASK 0x0040
#define W2A_NUM_SHORT_WEIGHT_MASK 0x003F
#define W2A_NUM_DSCALE_MASK 0x3FFF

/* A numeric read from its on-disk form: sign, weight and display scale, and its base-10000
 * digits (int16 each, possibly unaligned: read them with memcpy). */
typedef struct W2ANumeric
{
	bool		negative;
	int			weight;			/* of the first digit, in base-10000 positions */
	int			dscale;
	const char *digits;
	int			ndigits;
} W2ANumeric;

/* Parses a numeric's header (data and len: the varlena's contents); false for NaN/Infinity. */
static inline bool
w2a_numeric_parse(const char *data, Size len, W2ANumeric *n)
{
	uint16		header;
	Size		hdrsize;

	memcpy(&header, data, sizeof(uint16));
	if ((header & W2A_NUM_SIGN_MASK) == W2A_NUM_SPECIAL)
		return false;
	if ((header & W2A_NUM_SIGN_MASK) == W2A_NUM_SHORT)
	{
		n->negative = (header & W2A_NUM_SHORT_SIGN_MASK) != 0;
		n->dscale = (header & W2A_NUM_SHORT_DSCALE_MASK) >> W2A_NUM_SHORT_DSCALE_SHIFT;
		n->weight = (header & W2A_NUM_SHORT_WEIGHT_SIGN_MASK) ? (int) (~W2A_NUM_SHORT_WEIGHT_MASK) : 0;
		n->weight |= header & W2A_NUM_SHORT_WEIGHT_MASK;
		hdrsize = sizeof(uint16);
	}
	else
	{
		int16		w;

		n->negative = (header & W2A_NUM_SIGN_MASK) == W2A_NUM_NEG;
		n->dscale = header & W2A_NUM_DSCALE_MASK;
		memcpy(&w, data + sizeof(uint16), sizeof(int16));
		n->weight = w;
		hdrsize = 2 * sizeof(uint16);
	}
	n->digits = data + hdrsize;
	n->ndigits = (int) ((len - hdrsize) / sizeof(int16));
	return true;
}

/* 2000-01-01 minus 1970-01-01 */
#define W2A_EPOCH_OFFSET_DAYS 10957
#define W2A_EPOCH_OFFSET_US INT64CONST(946684800000000)

/* ---------------------------------------------------------------- type mapping */

typedef enum W2AKind
{
	W2A_KIND_BOOL,
	W2A_KIND_INT2,
	W2A_KIND_INT4,
	W2A_KIND_INT8,
	W2A_KIND_OID,
	W2A_KIND_FLOAT4,
	W2A_KIND_FLOAT8,
	W2A_KIND_NUMERIC,			/* decimal128 or text, decided by the typmod */
	W2A_KIND_TEXT,				/* text, varchar, bpchar: the varlena bytes */
	W2A_KIND_NAME,
	W2A_KIND_BYTEA,
	W2A_KIND_DATE,
	W2A_KIND_TIME,
	W2A_KIND_TIMETZ,
	W2A_KIND_TIMESTAMP,
	W2A_KIND_TIMESTAMPTZ,
	W2A_KIND_INTERVAL,
	W2A_KIND_UUID,
	W2A_KIND_JSON,				/* stored as text */
	W2A_KIND_JSONB,				/* its text output */
	W2A_KIND_ENUM,
	W2A_KIND_TEXTOUT,			/* the text output function (inet, cidr, macaddr, ...) */
	/* resolved kinds, not in the table */
	W2A_KIND_DECIMAL,
	W2A_KIND_ARRAY,
	W2A_KIND_OTHER				/* any other type: the text output */
} W2AKind;

typedef enum W2ARepr
{
	W2A_REPR_NONE,
	W2A_REPR_JSON,
	W2A_REPR_ENUM,
	W2A_REPR_TEXT
} W2ARepr;

typedef struct W2ATypeEntry
{
	const char *receive;		/* name of the type's typreceive function */
	W2AKind		kind;
	W2ARepr		repr;
} W2ATypeEntry;

/* How one type (a column's, or an array's element type) is encoded. */
typedef struct W2AType
{
	W2AKind		kind;
	W2ARepr		repr;
	Oid			type_oid;		/* after domains */
	int32		typmod;
	int			precision;		/* W2A_KIND_DECIMAL */
	int			scale;
	FmgrInfo	out;			/* text output (text kinds, unrepresentable values) */
	struct W2AType *elem;		/* W2A_KIND_ARRAY */
	int16		elem_len;
	bool		elem_byval;
	char		elem_align;
} W2AType;

typedef struct W2AColumn
{
	char	   *name;
	int			attindex;		/* 0-based index into the relation's tuple descriptor */
	bool		is_varlena;		/* attlen == -1: may be an unchanged TOAST pointer */
	Oid			declared_type;
	int32		declared_typmod;
	W2AType		type;
	char	   *pg_type_name;	/* field metadata pg.type */
	int32		effective_typmod;	/* field metadata pg.typmod when >= 0 */
} W2AColumn;

extern const W2ATypeEntry w2a_type_table[];
extern const int w2a_type_table_len;

extern void w2a_resolve_type(W2AType *out, Oid type_oid, int32 typmod, int depth);
extern char *w2a_type_display_name(Oid type_oid);
extern int32 w2a_effective_typmod(Oid type_oid, int32 typmod);
extern void w2a_schema_set_type(struct ArrowSchema *schema, const W2AType *type);

/* ---------------------------------------------------------------- options */

typedef struct W2AOptions
{
	int			format_version;
	List	   *publication_names;	/* of char *; NIL = every table */
	int64		batch_rows;
	int64		batch_bytes;
	bool		before_images;
	bool		messages;
	bool		streaming;
} W2AOptions;

extern void w2a_parse_options(W2AOptions *opts, List *options);

/* ---------------------------------------------------------------- relations */

typedef struct W2ARelEntry
{
	Oid			relid;			/* hash key */
	bool		valid;			/* false after a relcache invalidation */
	bool		pub_valid;		/* publication membership computed */

	/* publication membership (pgoutput's meaning) */
	bool		publish_insert;
	bool		publish_update;
	bool		publish_delete;
	bool		publish_truncate;
	Oid			publish_as_relid;	/* a partition root under publish_via_partition_root */
	TupleConversionMap *map;	/* leaf tuple -> publish_as_relid's row type */
	bool		map_checked;

	/* what the batch of this relation looks like (only when built) */
	bool		built;
	uint32		schema_version;
	bool		schema_sent;
	char	   *signature;
	char	   *nspname;
	char	   *relname;
	char		replident;
	int			nkeys;
	char	  **keynames;
	int			ncols;
	W2AColumn  *cols;
	Datum	   *values;			/* deform buffers, natts of the tuple descriptor */
	bool	   *nulls;
	Datum	   *old_values;
	bool	   *old_nulls;
	int			natts;

	MemoryContext cxt;			/* everything above; releases the Arrow objects below */
	struct ArrowSchema schema;
	struct ArrowArray batch;
	struct ArrowArrayView view;	/* of batch, for the IPC encoder; set up once */
	int64		nrows;
	int64		nbytes;
	int64		null_befores;	/* trailing rows whose null _cdc_before is not appended yet */
	/* the batch's transaction, for its constant metadata columns (w2a_finish_batch) */
	bool		batch_streaming;
	uint64		batch_commit_lsn;
	uint64		batch_end_lsn;
	int64		batch_commit_ts;
	uint32		batch_xid;
	TransactionId subxid;
	bool		pending;		/* listed in the plugin's pending list */
} W2ARelEntry;

/* ---------------------------------------------------------------- plugin state */

typedef struct W2AState
{
	W2AOptions	opts;
	MemoryContext cxt;			/* the plugin's long-lived memory */
	MemoryContext change_cxt;	/* reset after every change */
	HTAB	   *relations;
	struct W2ARelEntry *last_entry;	/* the entry of the last change, if any */
	List	   *pending;		/* relids with rows not yet written, in first-row order */
	List	   *publications;	/* Publication *, loaded lazily into pub_cxt */
	MemoryContext pub_cxt;
	bool		publications_valid;

	/* transaction being decoded */
	bool		in_streaming;
	bool		begin_sent;
	TransactionId xid;
	XLogRecPtr	commit_lsn;
	XLogRecPtr	end_lsn;
	int64		commit_ts_us;	/* Unix epoch */
	uint64		ordinal;
	int			changes_since_progress;

	/* IPC encoding, reused between batches */
	struct ArrowIpcEncoder encoder;
	struct ArrowBuffer ipc_header;
	struct ArrowBuffer ipc_body;

	StringInfoData scratch;		/* values rendered as text (jsonb), reused */
	StringInfoData varlena;		/* short varlenas realigned (jsonb), reused */
} W2AState;

/* per streamed transaction, in ReorderBufferTXN.output_plugin_private */
typedef struct W2AStreamTxn
{
	uint64		ordinal;
} W2AStreamTxn;

extern void w2a_relcache_init(W2AState *state);
extern W2ARelEntry *w2a_relation_entry(W2AState *state, Relation rel);
extern void w2a_entry_ready(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry,
							Relation rel);
extern void w2a_flush_entry(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry);
extern void w2a_flush_all(LogicalDecodingContext *ctx, W2AState *state);

/* ---------------------------------------------------------------- encoding */

typedef struct W2ARowMeta
{
	char		op;
	XLogRecPtr	lsn;
	bool		streaming;
	XLogRecPtr	commit_lsn;
	XLogRecPtr	end_lsn;
	int64		commit_ts_us;
	TransactionId xid;
	uint64		ordinal;
} W2ARowMeta;

extern void w2a_enum_cache_init(W2AState *state);
extern void w2a_jsonb_to_text(StringInfo out, JsonbContainer *container);
extern void w2a_finish_batch(W2ARelEntry *entry);
extern void w2a_append_row(W2AState *state, W2ARelEntry *entry, TupleDesc desc,
						   const W2ARowMeta *meta, HeapTuple newtuple, HeapTuple oldtuple);

/* ---------------------------------------------------------------- frames */

extern void w2a_write_begin(LogicalDecodingContext *ctx, W2AState *state);
extern void w2a_write_commit(LogicalDecodingContext *ctx, W2AState *state);
extern void w2a_write_schema(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry);
extern void w2a_write_batch(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry);
extern void w2a_write_truncate(LogicalDecodingContext *ctx, W2AState *state, XLogRecPtr lsn,
							   int nrels, Oid *relids, char **nspnames, char **relnames,
							   bool cascade, bool restart_identity, uint64 ordinal);
extern void w2a_write_message(LogicalDecodingContext *ctx, TransactionId xid, XLogRecPtr lsn,
							  bool transactional, const char *prefix, Size sz,
							  const char *content);
extern void w2a_write_stream_start(LogicalDecodingContext *ctx, TransactionId xid,
								   bool first_segment);
extern void w2a_write_stream_stop(LogicalDecodingContext *ctx);
extern void w2a_write_stream_commit(LogicalDecodingContext *ctx, TransactionId xid,
									XLogRecPtr commit_lsn, XLogRecPtr end_lsn,
									int64 commit_ts_us);
extern void w2a_write_stream_abort(LogicalDecodingContext *ctx, TransactionId xid,
								   TransactionId subxid, XLogRecPtr abort_lsn);

/* ---------------------------------------------------------------- memory */

extern void w2a_release_schema_with(MemoryContext cxt, struct ArrowSchema *schema);
extern void w2a_release_array_with(MemoryContext cxt, struct ArrowArray *array);
extern void w2a_release_view_with(MemoryContext cxt, struct ArrowArrayView *view);
extern void w2a_release_state_with(MemoryContext cxt, W2AState *state);
extern void w2a_array_clear(struct ArrowArray *array);
extern void w2a_nanoarrow_check(ArrowErrorCode code, const char *what, struct ArrowError *error);

#define W2A_CHECK(call, what) \
	do { \
		ArrowErrorCode w2a_rc_ = (call); \
		if (unlikely(w2a_rc_ != NANOARROW_OK)) \
			w2a_nanoarrow_check(w2a_rc_, (what), NULL); \
	} while (0)

#endif							/* WAL2ARROW_H */
