/*
 * encode.c: appending decoded rows to a relation's Arrow batch builder.
 *
 * Common types are converted from their in-memory representation directly (no output
 * functions): integers, floats, numeric -> decimal128 (read from numeric's on-disk format),
 * dates and times, timestamps, intervals, uuid, text-like varlenas, bytea, json. Only types
 * that the spec carries as text (and values Arrow cannot hold, for _cdc_unrepresentable) go
 * through their output function.
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
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* numeric's on-disk header (src/backend/utils/adt/numeric.c; stable on disk) */
#define NUM_SIGN_MASK 0xC000
#define NUM_NEG 0x4000
#define NUM_SHORT 0x8000
#define NUM_SPECIAL 0xC000
#define NUM_SHORT_SIGN_MASK 0x2000
#define NUM_SHORT_WEIGHT_SIGN_MASK 0x0040
#define NUM_SHORT_WEIGHT_MASK 0x003F
#define NUM_BASE 10000

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

static inline void
append_bytes(struct ArrowArray *a, const void *data, int64 len, int64 *nbytes)
{
	struct ArrowBufferView view;

	view.data.data = data;
	view.size_bytes = len;
	W2A_CHECK(ArrowArrayAppendBytes(a, view), "appending a value");
	*nbytes += len + 4;
}

static inline void
append_cstring(struct ArrowArray *a, const char *s, int64 *nbytes)
{
	append_bytes(a, s, (int64) strlen(s), nbytes);
}

/* Unscaled decimal128 value of a numeric at the given scale; false for NaN/Infinity. */
static bool
numeric_to_int128(Datum value, int scale, __int128 *out)
{
	struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));
	const char *data = VARDATA_ANY(v);
	Size		len = VARSIZE_ANY_EXHDR(v);
	uint16		header;
	int			weight;
	bool		negative;
	Size		hdrsize;
	int			ndigits;
	__int128	acc = 0;

	memcpy(&header, data, sizeof(uint16));
	if ((header & NUM_SIGN_MASK) == NUM_SPECIAL)
		return false;
	if ((header & NUM_SIGN_MASK) == NUM_SHORT)
	{
		negative = (header & NUM_SHORT_SIGN_MASK) != 0;
		weight = (header & NUM_SHORT_WEIGHT_SIGN_MASK) ? (int) (~NUM_SHORT_WEIGHT_MASK) : 0;
		weight |= header & NUM_SHORT_WEIGHT_MASK;
		hdrsize = sizeof(uint16);
	}
	else
	{
		int16		w;

		negative = (header & NUM_SIGN_MASK) == NUM_NEG;
		memcpy(&w, data + sizeof(uint16), sizeof(int16));
		weight = w;
		hdrsize = 2 * sizeof(uint16);
	}
	ndigits = (int) ((len - hdrsize) / sizeof(int16));
	for (int i = 0; i < ndigits; i++)
	{
		int16		digit;
		int			exp10 = 4 * (weight - i) + scale;

		memcpy(&digit, data + hdrsize + i * sizeof(int16), sizeof(int16));
		if (digit == 0)
			continue;
		if (exp10 > 38)
			return false;		/* cannot happen within the declared precision */
		if (exp10 >= 0)
			acc += (__int128) digit * pow10_table[exp10];
		else if (exp10 > -4)
			acc += digit / (int) pow10_table[-exp10];	/* exact: dscale <= scale */
	}
	*out = negative ? -acc : acc;
	return true;
}

/*
 * Append one non-null value. Returns false when the value cannot be held by the Arrow type:
 * scalars are then appended as null; a list is still appended with its representable
 * elements. The caller reports such values in _cdc_unrepresentable.
 */
static bool
append_value(const W2AType *type, struct ArrowArray *a, Datum value, int64 *nbytes)
{
	switch (type->kind)
	{
		case W2A_KIND_BOOL:
			W2A_CHECK(ArrowArrayAppendInt(a, DatumGetBool(value) ? 1 : 0), "appending a bool");
			*nbytes += 1;
			return true;
		case W2A_KIND_INT2:
			W2A_CHECK(ArrowArrayAppendInt(a, DatumGetInt16(value)), "appending an int2");
			*nbytes += 2;
			return true;
		case W2A_KIND_INT4:
			W2A_CHECK(ArrowArrayAppendInt(a, DatumGetInt32(value)), "appending an int4");
			*nbytes += 4;
			return true;
		case W2A_KIND_INT8:
			W2A_CHECK(ArrowArrayAppendInt(a, DatumGetInt64(value)), "appending an int8");
			*nbytes += 8;
			return true;
		case W2A_KIND_OID:
			W2A_CHECK(ArrowArrayAppendUInt(a, DatumGetObjectId(value)), "appending an oid");
			*nbytes += 4;
			return true;
		case W2A_KIND_FLOAT4:
			W2A_CHECK(ArrowArrayAppendDouble(a, DatumGetFloat4(value)), "appending a float4");
			*nbytes += 4;
			return true;
		case W2A_KIND_FLOAT8:
			W2A_CHECK(ArrowArrayAppendDouble(a, DatumGetFloat8(value)), "appending a float8");
			*nbytes += 8;
			return true;
		case W2A_KIND_DECIMAL:
			{
				__int128	unscaled;
				struct ArrowDecimal dec;

				if (!numeric_to_int128(value, type->scale, &unscaled))
					break;
				ArrowDecimalInit(&dec, 128, type->precision, type->scale);
				ArrowDecimalSetBytes(&dec, (const uint8_t *) &unscaled);
				W2A_CHECK(ArrowArrayAppendDecimal(a, &dec), "appending a decimal");
				*nbytes += 16;
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

				if (DATE_NOT_FINITE(d))
					break;
				W2A_CHECK(ArrowArrayAppendInt(a, (int64) d + W2A_EPOCH_OFFSET_DAYS),
						  "appending a date");
				*nbytes += 4;
				return true;
			}
		case W2A_KIND_TIME:
			{
				TimeADT		t = DatumGetTimeADT(value);

				if (t < 0 || t >= USECS_PER_DAY)
					break;
				W2A_CHECK(ArrowArrayAppendInt(a, t), "appending a time");
				*nbytes += 8;
				return true;
			}
		case W2A_KIND_TIMETZ:
			{
				TimeTzADT  *t = DatumGetTimeTzADTP(value);

				if (t->time < 0 || t->time >= USECS_PER_DAY)
					break;
				W2A_CHECK(ArrowArrayAppendInt(a->children[0], t->time), "appending a timetz");
				/* PostgreSQL keeps the zone in seconds west of UTC */
				W2A_CHECK(ArrowArrayAppendInt(a->children[1], -t->zone), "appending a timetz");
				W2A_CHECK(ArrowArrayFinishElement(a), "appending a timetz");
				*nbytes += 12;
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
				W2A_CHECK(ArrowArrayAppendInt(a, unix_us), "appending a timestamp");
				*nbytes += 8;
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
			append_bytes(a, DatumGetUUIDP(value)->data, UUID_LEN, nbytes);
			return true;
		case W2A_KIND_ENUM:
			{
				HeapTuple	tp = SearchSysCache1(ENUMOID, value);

				if (!HeapTupleIsValid(tp))
					elog(ERROR, "wal2arrow: cache lookup failed for enum value %u",
						 DatumGetObjectId(value));
				append_cstring(a, NameStr(((Form_pg_enum) GETSTRUCT(tp))->enumlabel), nbytes);
				ReleaseSysCache(tp);
				return true;
			}
		case W2A_KIND_JSONB:
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
					else if (!append_value(type->elem, child, elems[i], nbytes))
						ok = false;
				}
				W2A_CHECK(ArrowArrayFinishElement(a), "appending an array");
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
			 const char *prefix, RowNotes *notes, int64 *nbytes)
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
		if (!append_value(&col->type, children[i], value, nbytes))
		{
			notes->unrep_keys = lappend(notes->unrep_keys,
										prefix ? psprintf("%s%s", prefix, col->name) : col->name);
			notes->unrep_values = lappend(notes->unrep_values,
										  OutputFunctionCall(&col->type.out, value));
		}
	}
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

	if (!pow10_ready)
		init_pow10();

	if (newtuple != NULL)
	{
		heap_deform_tuple(newtuple, desc, entry->values, entry->nulls);
		append_tuple(entry, children, entry->values, entry->nulls, NULL, &notes, &nbytes);
	}
	else
	{
		for (int i = 0; i < n; i++)
			W2A_CHECK(ArrowArrayAppendNull(children[i], 1), "appending a null");
	}

	append_bytes(children[n + 0], &meta->op, 1, &nbytes);
	W2A_CHECK(ArrowArrayAppendUInt(children[n + 1], meta->lsn), "appending metadata");
	if (meta->streaming)
	{
		W2A_CHECK(ArrowArrayAppendNull(children[n + 2], 1), "appending metadata");
		W2A_CHECK(ArrowArrayAppendNull(children[n + 3], 1), "appending metadata");
		W2A_CHECK(ArrowArrayAppendNull(children[n + 4], 1), "appending metadata");
	}
	else
	{
		W2A_CHECK(ArrowArrayAppendUInt(children[n + 2], meta->commit_lsn), "appending metadata");
		W2A_CHECK(ArrowArrayAppendUInt(children[n + 3], meta->end_lsn), "appending metadata");
		W2A_CHECK(ArrowArrayAppendInt(children[n + 4], meta->commit_ts_us), "appending metadata");
	}
	W2A_CHECK(ArrowArrayAppendUInt(children[n + 5], meta->xid), "appending metadata");
	W2A_CHECK(ArrowArrayAppendUInt(children[n + 6], meta->ordinal), "appending metadata");

	if (oldtuple != NULL && state->opts.before_images)
	{
		heap_deform_tuple(oldtuple, desc, entry->old_values, entry->old_nulls);
		append_tuple(entry, before->children, entry->old_values, entry->old_nulls,
					 "_cdc_before.", &notes, &nbytes);
		W2A_CHECK(ArrowArrayFinishElement(before), "appending a before-image");
	}
	else
		W2A_CHECK(ArrowArrayAppendNull(before, 1), "appending a before-image");

	foreach(lc, notes.toast)
		append_cstring(toast->children[0], lfirst(lc), &nbytes);
	W2A_CHECK(ArrowArrayFinishElement(toast), "appending the TOAST mask");

	forboth(lc, notes.unrep_keys, lc2, notes.unrep_values)
	{
		struct ArrowArray *entries = unrep->children[0];

		append_cstring(entries->children[0], lfirst(lc), &nbytes);
		append_cstring(entries->children[1], lfirst(lc2), &nbytes);
		W2A_CHECK(ArrowArrayFinishElement(entries), "appending _cdc_unrepresentable");
	}
	W2A_CHECK(ArrowArrayFinishElement(unrep), "appending _cdc_unrepresentable");

	W2A_CHECK(ArrowArrayFinishElement(batch), "appending a row");
	entry->nrows++;
	entry->nbytes += nbytes;
}
