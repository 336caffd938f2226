/*
 * encode.c: appending decoded rows to a relation's Arrow batch builder.
 *
 * Common types are converted from their in-memory representation directly (no output
 * functions): integers, floats, numeric -> decimal128 (read from numeric's on-disk format),
 * dates and times, timestamps, intervals, uuid, text-like varlenas, bytea, json, and jsonb
 * (jsonb.c). Only types that the spec carries as text (and values Arrow cannot hold, for
 * _cdc_unrepresentable) go through their output function.
 *
 * Values are written straight into the builders' buffers (reserve, copy, validity bit) rather
 * than through nanoarrow's generic append functions, which switch on the storage type for
 * every value. Two per-row costs are deferred to the batch: runs of null before-images (most
 * inserts and updates have none) are appended as one run of nulls, and the transaction's
 * constant metadata columns (_cdc_commit_lsn, _cdc_end_lsn, _cdc_commit_ts, _cdc_xid) are
 * filled for the whole batch when it is finished (w2a_finish_batch).
 */
#include "wal2arrow.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_enum.h"
#include "common/int.h"
#include "datatype/timestamp.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/jsonb.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* the largest buffer kept for rendering values as text between rows */
#define W2A_SCRATCH_KEEP_BYTES (1024 * 1024)

typedef struct RowNotes
{
	List	   *toast;			/* column names (char *) */
	List	   *unrep_keys;		/* char * */
	List	   *unrep_values;	/* char * */
} RowNotes;

static __int128 pow10_table[39];
static bool pow10_ready = false;

static void
init_pow10(void)
{
	pow10_table[0] = 1;
	for (int i = 1; i < 39; i++)
		pow10_table[i] = pow10_table[i - 1] * 10;
	pow10_ready = true;
}

/* A non-null value was written to the array's buffers: its validity bit and length. */
static pg_attribute_always_inline void
mark_valid(struct ArrowArray *a)
{
	struct ArrowBitmap *validity = ArrowArrayValidityBitmap(a);

	/* nanoarrow allocates the validity bitmap with the first null; until then none is kept */
	if (validity->buffer.data != NULL)
		W2A_CHECK(ArrowBitmapAppend(validity, 1, 1), "appending a value");
	a->length++;
}

/* A value of a fixed-width type (integers, floats, decimal128, timestamps, uuid, ...). */
static pg_attribute_always_inline void
append_fixed(struct ArrowArray *a, const void *value, int64 size, int64 *nbytes)
{
	W2A_CHECK(ArrowBufferAppend(ArrowArrayBuffer(a, 1), value, size), "appending a value");
	mark_valid(a);
	*nbytes += size;
}

/* A value of a utf8 or binary column (32-bit offsets). */
static pg_attribute_always_inline void
append_bytes(struct ArrowArray *a, const void *data, int64 len, int64 *nbytes)
{
	struct ArrowBuffer *values = ArrowArrayBuffer(a, 2);
	int64		end = values->size_bytes + len;

	if (unlikely(end > PG_INT32_MAX))
		w2a_nanoarrow_check(EOVERFLOW, "appending a value", NULL);
	W2A_CHECK(ArrowBufferAppend(values, data, len), "appending a value");
	W2A_CHECK(ArrowBufferAppendInt32(ArrowArrayBuffer(a, 1), (int32) end), "appending a value");
	mark_valid(a);
	*nbytes += len + 4;
}

static inline void
append_cstring(struct ArrowArray *a, const char *s, int64 *nbytes)
{
	append_bytes(a, s, (int64) strlen(s), nbytes);
}

/* The end of a list or map element whose child values were appended (or an empty one). */
static inline void
finish_list(struct ArrowArray *a)
{
	int64		child_length = a->children[0]->length;

	if (unlikely(child_length > PG_INT32_MAX))
		w2a_nanoarrow_check(EOVERFLOW, "appending a list", NULL);
	W2A_CHECK(ArrowBufferAppendInt32(ArrowArrayBuffer(a, 1), (int32) child_length),
			  "appending a list");
	mark_valid(a);
}

/* ---------------------------------------------------------------- enum labels */

/*
 * Enum labels by pg_enum OID, cached for the decoding session: a label is looked up in the
 * catalog once, not per value. ALTER TYPE ... RENAME VALUE invalidates pg_enum's syscache,
 * whose callback empties the cache (decoding replays invalidations at the right point of the
 * stream, so a value is rendered with the label it had when it was written).
 */
typedef struct EnumLabel
{
	Oid			oid;			/* hash key */
	int			len;
	char	   *label;
} EnumLabel;

static HTAB *enum_labels = NULL;
static MemoryContext enum_cxt = NULL;
static bool enum_callback_registered = false;

static void
enum_cache_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	if (enum_cxt != NULL)
		MemoryContextReset(enum_cxt);
	enum_labels = NULL;
}

static void
enum_cache_forget(void *arg)
{
	/* the plugin's context (and enum_cxt in it) is going away */
	enum_cxt = NULL;
	enum_labels = NULL;
}

void
w2a_enum_cache_init(W2AState *state)
{
	MemoryContextCallback *cb;

	enum_cxt = AllocSetContextCreate(state->cxt, "wal2arrow enum labels", ALLOCSET_SMALL_SIZES);
	enum_labels = NULL;
	cb = MemoryContextAlloc(state->cxt, sizeof(MemoryContextCallback));
	cb->func = enum_cache_forget;
	cb->arg = NULL;
	MemoryContextRegisterResetCallback(state->cxt, cb);
	if (!enum_callback_registered)
	{
		CacheRegisterSyscacheCallback(ENUMOID, enum_cache_invalidate, (Datum) 0);
		enum_callback_registered = true;
	}
}

static const EnumLabel *
enum_label(Oid oid)
{
	EnumLabel  *label;
	HeapTuple	tp;

	if (enum_labels != NULL)
	{
		label = hash_search(enum_labels, &oid, HASH_FIND, NULL);
		if (label != NULL)
			return label;
	}
	tp = SearchSysCache1(ENUMOID, ObjectIdGetDatum(oid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "wal2arrow: cache lookup failed for enum value %u", oid);
	/* the catalog lookup may have processed invalidations: touch the cache only now */
	if (enum_labels == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(Oid);
		info.entrysize = sizeof(EnumLabel);
		info.hcxt = enum_cxt;
		enum_labels = hash_create("wal2arrow enum labels", 64, &info,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	label = hash_search(enum_labels, &oid, HASH_ENTER, NULL);
	label->label = MemoryContextStrdup(enum_cxt, NameStr(((Form_pg_enum) GETSTRUCT(tp))->enumlabel));
	label->len = (int) strlen(label->label);
	ReleaseSysCache(tp);
	return label;
}

/* Unscaled decimal128 value of a numeric at the given scale; false for NaN/Infinity. */
static bool
numeric_to_int128(Datum value, int scale, __int128 *out)
{
	struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));
	W2ANumeric	n;
	__int128	acc = 0;

	if (!w2a_numeric_parse(VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v), &n))
		return false;
	for (int i = 0; i < n.ndigits; i++)
	{
		int16		digit;
		int			exp10 = 4 * (n.weight - i) + scale;

		memcpy(&digit, n.digits + i * sizeof(int16), sizeof(int16));
		if (digit == 0)
			continue;
		if (exp10 > 38)
			return false;		/* cannot happen within the declared precision */
		if (exp10 >= 0)
			acc += (__int128) digit * pow10_table[exp10];
		else if (exp10 > -4)
			acc += digit / (int) pow10_table[-exp10];	/* exact: dscale <= scale */
	}
	*out = n.negative ? -acc : acc;
	return true;
}

/*
 * Append one non-null value. Returns false when the value cannot be held by the Arrow type:
 * scalars are then appended as null; a list is still appended with its representable
 * elements. The caller reports such values in _cdc_unrepresentable. The state lends its
 * reusable buffers (values rendered as text, short varlenas realigned).
 */
static bool
append_value(const W2AType *type, struct ArrowArray *a, Datum value, int64 *nbytes,
			 W2AState *state)
{
	switch (type->kind)
	{
		case W2A_KIND_BOOL:
			W2A_CHECK(ArrowArrayAppendInt(a, DatumGetBool(value) ? 1 : 0), "appending a bool");
			*nbytes += 1;
			return true;
		case W2A_KIND_INT2:
			{
				int16		v = DatumGetInt16(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_INT4:
			{
				int32		v = DatumGetInt32(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_INT8:
			{
				int64		v = DatumGetInt64(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_OID:
			{
				uint32		v = DatumGetObjectId(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_FLOAT4:
			{
				float4		v = DatumGetFloat4(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_FLOAT8:
			{
				float8		v = DatumGetFloat8(value);

				append_fixed(a, &v, sizeof(v), nbytes);
				return true;
			}
		case W2A_KIND_DECIMAL:
			{
				/* decimal128: 16 bytes, two's complement, the host's (little-endian) order */
				__int128	unscaled;

				if (!numeric_to_int128(value, type->scale, &unscaled))
					break;
				append_fixed(a, &unscaled, sizeof(unscaled), nbytes);
				return true;
			}
		case W2A_KIND_TEXT:
		case W2A_KIND_BYTEA:
		case W2A_KIND_JSON:
			{
				struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));

				append_bytes(a, VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v), nbytes);
				return true;
			}
		case W2A_KIND_NAME:
			append_cstring(a, NameStr(*DatumGetName(value)), nbytes);
			return true;
		case W2A_KIND_DATE:
			{
				DateADT		d = DatumGetDateADT(value);
				int32		days;

				if (DATE_NOT_FINITE(d))
					break;
				days = d + W2A_EPOCH_OFFSET_DAYS;
				append_fixed(a, &days, sizeof(days), nbytes);
				return true;
			}
		case W2A_KIND_TIME:
			{
				TimeADT		t = DatumGetTimeADT(value);
				int64		us = t;

				if (t < 0 || t >= USECS_PER_DAY)
					break;
				append_fixed(a, &us, sizeof(us), nbytes);
				return true;
			}
		case W2A_KIND_TIMETZ:
			{
				TimeTzADT  *t = DatumGetTimeTzADTP(value);
				int64		us = t->time;

				/* PostgreSQL keeps the zone in seconds west of UTC */
				int32		offset = -t->zone;

				if (t->time < 0 || t->time >= USECS_PER_DAY)
					break;
				append_fixed(a->children[0], &us, sizeof(us), nbytes);
				append_fixed(a->children[1], &offset, sizeof(offset), nbytes);
				mark_valid(a);
				return true;
			}
		case W2A_KIND_TIMESTAMP:
		case W2A_KIND_TIMESTAMPTZ:
			{
				Timestamp	ts = DatumGetTimestamp(value);
				int64		unix_us;

				if (TIMESTAMP_NOT_FINITE(ts) ||
					pg_add_s64_overflow(ts, W2A_EPOCH_OFFSET_US, &unix_us))
					break;
				append_fixed(a, &unix_us, sizeof(unix_us), nbytes);
				return true;
			}
		case W2A_KIND_INTERVAL:
			{
				Interval   *iv = DatumGetIntervalP(value);
				struct ArrowInterval out;
				int64		ns;

				if ((iv->month == PG_INT32_MAX && iv->day == PG_INT32_MAX &&
					 iv->time == PG_INT64_MAX) ||
					(iv->month == PG_INT32_MIN && iv->day == PG_INT32_MIN &&
					 iv->time == PG_INT64_MIN) ||
					pg_mul_s64_overflow(iv->time, 1000, &ns))
					break;
				ArrowIntervalInit(&out, NANOARROW_TYPE_INTERVAL_MONTH_DAY_NANO);
				out.months = iv->month;
				out.days = iv->day;
				out.ns = ns;
				W2A_CHECK(ArrowArrayAppendInterval(a, &out), "appending an interval");
				*nbytes += 16;
				return true;
			}
		case W2A_KIND_UUID:
			append_fixed(a, DatumGetUUIDP(value)->data, UUID_LEN, nbytes);
			return true;
		case W2A_KIND_ENUM:
			{
				const EnumLabel *label = enum_label(DatumGetObjectId(value));

				append_bytes(a, label->label, label->len, nbytes);
				return true;
			}
		case W2A_KIND_JSONB:
			{
				/* jsonb's text output (what jsonb_out returns), rendered into a reused buffer */
				struct varlena *v = (struct varlena *) DatumGetPointer(value);
				StringInfo	text = &state->scratch;
				Jsonb	   *jb;

				if (VARATT_IS_SHORT(v) && !VARATT_IS_EXTERNAL(v))
				{
					/* a short inline value: realigned in a reused buffer, not a palloc'd copy
					 * (TOAST pointers have a 1-byte header too: those are detoasted below) */
					Size		len = VARSIZE_SHORT(v) - VARHDRSZ_SHORT;
					StringInfo	aligned = &state->varlena;

					resetStringInfo(aligned);
					enlargeStringInfo(aligned, (int) (len + VARHDRSZ));
					SET_VARSIZE(aligned->data, len + VARHDRSZ);
					memcpy(VARDATA(aligned->data), VARDATA_SHORT(v), len);
					jb = (Jsonb *) aligned->data;
				}
				else
					jb = DatumGetJsonbP(value);
				resetStringInfo(text);
				w2a_jsonb_to_text(text, &jb->root);
				append_bytes(a, text->data, text->len, nbytes);
				if (text->maxlen > W2A_SCRATCH_KEEP_BYTES)
				{
					/* do not keep a huge document's buffer for the whole session */
					MemoryContext cxt = GetMemoryChunkContext(text->data);

					pfree(text->data);
					text->data = MemoryContextAlloc(cxt, 1024);
					text->maxlen = 1024;
					resetStringInfo(text);
				}
				return true;
			}
		case W2A_KIND_NUMERIC:
		case W2A_KIND_TEXTOUT:
		case W2A_KIND_OTHER:
			append_cstring(a, OutputFunctionCall((FmgrInfo *) &type->out, value), nbytes);
			return true;
		case W2A_KIND_ARRAY:
			{
				ArrayType  *arr = DatumGetArrayTypeP(value);
				int			ndim = ARR_NDIM(arr);
				Datum	   *elems;
				bool	   *enulls;
				int			n;
				bool		ok = ndim <= 1 && (ndim == 0 || ARR_LBOUND(arr)[0] == 1);
				struct ArrowArray *child = a->children[0];

				deconstruct_array(arr, ARR_ELEMTYPE(arr), type->elem_len, type->elem_byval,
								  type->elem_align, &elems, &enulls, &n);
				for (int i = 0; i < n; i++)
				{
					if (enulls[i])
						W2A_CHECK(ArrowArrayAppendNull(child, 1), "appending an array");
					else if (!append_value(type->elem, child, elems[i], nbytes, state))
						ok = false;
				}
				finish_list(a);
				*nbytes += 4;
				return ok;
			}
	}
	/* a value the column's Arrow type cannot hold */
	W2A_CHECK(ArrowArrayAppendNull(a, 1), "appending a null");
	return false;
}

/* Append a tuple's published columns to the fields of a struct-like list of children. */
static void
append_tuple(W2ARelEntry *entry, struct ArrowArray **children, Datum *values, bool *nulls,
			 const char *prefix, RowNotes *notes, int64 *nbytes, W2AState *state)
{
	for (int i = 0; i < entry->ncols; i++)
	{
		W2AColumn  *col = &entry->cols[i];
		Datum		value = values[col->attindex];

		if (nulls[col->attindex])
		{
			W2A_CHECK(ArrowArrayAppendNull(children[i], 1), "appending a null");
			continue;
		}
		if (col->is_varlena &&
			VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value)))
		{
			/* an unchanged TOAST value: the server did not send it */
			W2A_CHECK(ArrowArrayAppendNull(children[i], 1), "appending a null");
			notes->toast = lappend(notes->toast, prefix ? psprintf("%s%s", prefix, col->name)
								   : col->name);
			continue;
		}
		if (!append_value(&col->type, children[i], value, nbytes, state))
		{
			notes->unrep_keys = lappend(notes->unrep_keys,
										prefix ? psprintf("%s%s", prefix, col->name) : col->name);
			notes->unrep_values = lappend(notes->unrep_values,
										  OutputFunctionCall(&col->type.out, value));
		}
	}
}

/*
 * nanoarrow's private layout and behaviour, pinned by nanoarrow.lock: append_empty_run reads
 * struct ArrowArrayPrivateData (storage_type) and works around 0.9's bulk appends of bools;
 * mark_valid and append_empty_run rely on the validity bitmap being allocated only at the first
 * null. Another version must fail the build, not corrupt batches: re-check all three, then move
 * the guard.
 */
#if !defined(NANOARROW_VERSION_MAJOR) || NANOARROW_VERSION_MAJOR != 0 || NANOARROW_VERSION_MINOR != 9
#error "nanoarrow version bump: re-check the private structs used in wal2arrow/src/encode.c (struct ArrowArrayPrivateData.storage_type in append_empty_run, the bool bulk-append workaround, the validity bitmap allocated at the first null in mark_valid), then update this guard"
#endif

/*
 * Append n empty values (valid or null) at once. nanoarrow 0.9.0's ArrowArrayAppendEmpty and
 * ArrowArrayAppendNull size a bool array's bit-packed data for a single value when given
 * n > 1 (and then set bits past it), so bool arrays, and structs that may hold them, are
 * handled here; other layouts use nanoarrow's bulk append.
 */
static void
append_empty_run(struct ArrowArray *a, int64 n, bool is_valid)
{
	enum ArrowType storage = ((struct ArrowArrayPrivateData *) a->private_data)->storage_type;
	struct ArrowBitmap *validity;

	if (n <= 0)
		return;
	if (storage == NANOARROW_TYPE_BOOL)
	{
		struct ArrowBuffer *data = ArrowArrayBuffer(a, 1);
		int64		need = (a->length + n + 7) / 8;

		/* the value bits past the length are zero (false) */
		if (data->size_bytes < need)
			W2A_CHECK(ArrowBufferAppendFill(data, 0, need - data->size_bytes),
					  "appending nulls");
	}
	else if (storage == NANOARROW_TYPE_STRUCT)
	{
		for (int64 i = 0; i < a->n_children; i++)
			append_empty_run(a->children[i], n, true);
	}
	else
	{
		W2A_CHECK(is_valid ? ArrowArrayAppendEmpty(a, n) : ArrowArrayAppendNull(a, n),
				  "appending nulls");
		return;
	}
	validity = ArrowArrayValidityBitmap(a);
	if (!is_valid && validity->buffer.data == NULL)
	{
		/* the first null: the bitmap starts with the values so far, all valid */
		W2A_CHECK(ArrowBitmapReserve(validity, a->length + n), "appending nulls");
		ArrowBitmapAppendUnsafe(validity, 1, a->length);
		ArrowBitmapAppendUnsafe(validity, 0, n);
	}
	else if (validity->buffer.data != NULL)
		W2A_CHECK(ArrowBitmapAppend(validity, is_valid ? 1 : 0, n), "appending nulls");
	a->length += n;
	if (!is_valid)
		a->null_count += n;
}

/* Write the run of null before-images that w2a_append_row deferred. */
static void
materialize_null_befores(W2ARelEntry *entry)
{
	append_empty_run(entry->batch.children[entry->ncols + 7], entry->null_befores, false);
	entry->null_befores = 0;
}

/* Append `n` copies of a fixed-width value (or `n` nulls when value is NULL). */
static void
fill_fixed(struct ArrowArray *a, const void *value, int64 size, int64 n)
{
	struct ArrowBuffer *data;
	char	   *p;

	if (value == NULL)
	{
		append_empty_run(a, n, false);
		return;
	}
	data = ArrowArrayBuffer(a, 1);
	W2A_CHECK(ArrowBufferReserve(data, size * n), "filling metadata");
	p = (char *) data->data + data->size_bytes;
	for (int64 i = 0; i < n; i++, p += size)
		memcpy(p, value, size);
	data->size_bytes += size * n;
	if (ArrowArrayValidityBitmap(a)->buffer.data != NULL)
		W2A_CHECK(ArrowBitmapAppend(ArrowArrayValidityBitmap(a), 1, n), "filling metadata");
	a->length += n;
}

void
w2a_finish_batch(W2ARelEntry *entry)
{
	struct ArrowArray **children = entry->batch.children;
	int			n = entry->ncols;
	int64		missing = entry->nrows - children[n + 5]->length;

	materialize_null_befores(entry);
	if (missing <= 0)
		return;
	/* the transaction's constant columns: null while it is streamed in progress */
	fill_fixed(children[n + 2], entry->batch_streaming ? NULL : &entry->batch_commit_lsn,
			   sizeof(uint64), missing);
	fill_fixed(children[n + 3], entry->batch_streaming ? NULL : &entry->batch_end_lsn,
			   sizeof(uint64), missing);
	fill_fixed(children[n + 4], entry->batch_streaming ? NULL : &entry->batch_commit_ts,
			   sizeof(int64), missing);
	fill_fixed(children[n + 5], &entry->batch_xid, sizeof(uint32), missing);
}

void
w2a_append_row(W2AState *state, W2ARelEntry *entry, TupleDesc desc, const W2ARowMeta *meta,
			   HeapTuple newtuple, HeapTuple oldtuple)
{
	struct ArrowArray *batch = &entry->batch;
	struct ArrowArray **children = batch->children;
	int			n = entry->ncols;
	RowNotes	notes = {NIL, NIL, NIL};
	int64		nbytes = 64;
	ListCell   *lc;
	ListCell   *lc2;
	struct ArrowArray *before = children[n + 7];
	struct ArrowArray *toast = children[n + 8];
	struct ArrowArray *unrep = children[n + 9];
	uint64		u64;

	if (!pow10_ready)
		init_pow10();

	if (entry->nrows == 0)
	{
		/* constant for the batch: a batch holds rows of one transaction */
		entry->batch_streaming = meta->streaming;
		entry->batch_commit_lsn = meta->commit_lsn;
		entry->batch_end_lsn = meta->end_lsn;
		entry->batch_commit_ts = meta->commit_ts_us;
		entry->batch_xid = meta->xid;
	}
	Assert(entry->batch_xid == meta->xid && entry->batch_streaming == meta->streaming);

	if (newtuple != NULL)
	{
		heap_deform_tuple(newtuple, desc, entry->values, entry->nulls);
		append_tuple(entry, children, entry->values, entry->nulls, NULL, &notes, &nbytes,
					 state);
	}
	else
	{
		for (int i = 0; i < n; i++)
			W2A_CHECK(ArrowArrayAppendNull(children[i], 1), "appending a null");
	}

	append_bytes(children[n + 0], &meta->op, 1, &nbytes);
	u64 = meta->lsn;
	append_fixed(children[n + 1], &u64, sizeof(u64), &nbytes);
	/* n + 2 .. n + 5: filled per batch by w2a_finish_batch */
	u64 = meta->ordinal;
	append_fixed(children[n + 6], &u64, sizeof(u64), &nbytes);

	if (oldtuple != NULL && state->opts.before_images)
	{
		materialize_null_befores(entry);
		heap_deform_tuple(oldtuple, desc, entry->old_values, entry->old_nulls);
		append_tuple(entry, before->children, entry->old_values, entry->old_nulls,
					 "_cdc_before.", &notes, &nbytes, state);
		mark_valid(before);
	}
	else
		entry->null_befores++;

	foreach(lc, notes.toast)
		append_cstring(toast->children[0], lfirst(lc), &nbytes);
	finish_list(toast);

	forboth(lc, notes.unrep_keys, lc2, notes.unrep_values)
	{
		struct ArrowArray *entries = unrep->children[0];

		append_cstring(entries->children[0], lfirst(lc), &nbytes);
		append_cstring(entries->children[1], lfirst(lc2), &nbytes);
		mark_valid(entries);
	}
	finish_list(unrep);

	/* the row struct has no validity bitmap (never null); its children are complete once
	 * w2a_finish_batch has run */
	batch->length++;
	entry->nrows++;
	entry->nbytes += nbytes;
}
