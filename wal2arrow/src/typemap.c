/*
 * typemap.c: the PostgreSQL -> Arrow type mapping.
 *
 * The table mirrors cdc_notebook/decode/typemap.json entry for entry (tests/test_types.py checks that
 * both list the same receive functions). Types are resolved as the ADBC PostgreSQL driver does:
 * domains to their base type, arrays by their element type, everything else by the name of its
 * typreceive function; what is not in the table is carried as its text output.
 */
#include "wal2arrow.h"

#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#define W2A_MAX_TYPE_DEPTH 32
#define W2A_MAX_DECIMAL128_PRECISION 38

const W2ATypeEntry w2a_type_table[] = {
	{"boolrecv", W2A_KIND_BOOL, W2A_REPR_NONE},
	{"int2recv", W2A_KIND_INT2, W2A_REPR_NONE},
	{"int4recv", W2A_KIND_INT4, W2A_REPR_NONE},
	{"int8recv", W2A_KIND_INT8, W2A_REPR_NONE},
	{"oidrecv", W2A_KIND_OID, W2A_REPR_NONE},
	{"float4recv", W2A_KIND_FLOAT4, W2A_REPR_NONE},
	{"float8recv", W2A_KIND_FLOAT8, W2A_REPR_NONE},
	{"numeric_recv", W2A_KIND_NUMERIC, W2A_REPR_TEXT},
	{"textrecv", W2A_KIND_TEXT, W2A_REPR_NONE},
	{"varcharrecv", W2A_KIND_TEXT, W2A_REPR_NONE},
	{"bpcharrecv", W2A_KIND_TEXT, W2A_REPR_NONE},
	{"namerecv", W2A_KIND_NAME, W2A_REPR_NONE},
	{"bytearecv", W2A_KIND_BYTEA, W2A_REPR_NONE},
	{"date_recv", W2A_KIND_DATE, W2A_REPR_NONE},
	{"time_recv", W2A_KIND_TIME, W2A_REPR_NONE},
	{"timetz_recv", W2A_KIND_TIMETZ, W2A_REPR_NONE},
	{"timestamp_recv", W2A_KIND_TIMESTAMP, W2A_REPR_NONE},
	{"timestamptz_recv", W2A_KIND_TIMESTAMPTZ, W2A_REPR_NONE},
	{"interval_recv", W2A_KIND_INTERVAL, W2A_REPR_NONE},
	{"uuid_recv", W2A_KIND_UUID, W2A_REPR_NONE},
	{"json_recv", W2A_KIND_JSON, W2A_REPR_JSON},
	{"jsonb_recv", W2A_KIND_JSONB, W2A_REPR_JSON},
	{"enum_recv", W2A_KIND_ENUM, W2A_REPR_ENUM},
	{"inet_recv", W2A_KIND_TEXTOUT, W2A_REPR_TEXT},
	{"cidr_recv", W2A_KIND_TEXTOUT, W2A_REPR_TEXT},
	{"macaddr_recv", W2A_KIND_TEXTOUT, W2A_REPR_TEXT},
	{"macaddr8_recv", W2A_KIND_TEXTOUT, W2A_REPR_TEXT},
};
const int	w2a_type_table_len = lengthof(w2a_type_table);

static const W2ATypeEntry *
lookup_receive(const char *receive)
{
	if (receive == NULL)
		return NULL;
	for (int i = 0; i < w2a_type_table_len; i++)
		if (strcmp(w2a_type_table[i].receive, receive) == 0)
			return &w2a_type_table[i];
	return NULL;
}

/* (precision, scale) of a numeric typmod when decimal128 can hold every value of it */
static bool
numeric_fits_decimal(int32 typmod, int *precision, int *scale)
{
	int32		raw;
	int			p;
	int			s;

	if (typmod < (int32) VARHDRSZ)
		return false;
	raw = typmod - VARHDRSZ;
	p = (raw >> 16) & 0xFFFF;
	s = ((raw & 0x7FF) ^ 1024) - 1024;	/* 11-bit signed since PostgreSQL 15 */
	if (p < 1 || p > W2A_MAX_DECIMAL128_PRECISION || s < 0 || s > p)
		return false;
	*precision = p;
	*scale = s;
	return true;
}

static void
set_output_function(W2AType *out, Oid type_oid)
{
	Oid			outfn;
	bool		isvarlena;

	getTypeOutputInfo(type_oid, &outfn, &isvarlena);
	fmgr_info_cxt(outfn, &out->out, CurrentMemoryContext);
}

void
w2a_resolve_type(W2AType *out, Oid type_oid, int32 typmod, int depth)
{
	HeapTuple	tp;
	Form_pg_type typ;
	char	   *receive;
	const W2ATypeEntry *entry;
	Oid			elem_type;

	if (depth > W2A_MAX_TYPE_DEPTH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("wal2arrow: type %u nests domains more than %d deep",
						type_oid, W2A_MAX_TYPE_DEPTH)));

	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type_oid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "wal2arrow: cache lookup failed for type %u", type_oid);
	typ = (Form_pg_type) GETSTRUCT(tp);

	if (typ->typtype == TYPTYPE_DOMAIN)
	{
		Oid			base = typ->typbasetype;

		if (typmod < 0)
			typmod = typ->typtypmod;
		ReleaseSysCache(tp);
		w2a_resolve_type(out, base, typmod, depth + 1);
		return;
	}

	memset(out, 0, sizeof(*out));
	out->type_oid = type_oid;
	out->typmod = typmod;
	receive = OidIsValid(typ->typreceive) ? get_func_name(typ->typreceive) : NULL;
	elem_type = typ->typelem;
	ReleaseSysCache(tp);
	set_output_function(out, type_oid);

	if (receive != NULL && strcmp(receive, "array_recv") == 0 && OidIsValid(elem_type))
	{
		W2AType    *elem = palloc0(sizeof(W2AType));

		w2a_resolve_type(elem, elem_type, typmod, depth + 1);
		if (elem->kind == W2A_KIND_OTHER || elem->kind == W2A_KIND_ARRAY)
		{
			pfree(elem);
			out->kind = W2A_KIND_OTHER;
			out->repr = W2A_REPR_TEXT;
			return;
		}
		out->kind = W2A_KIND_ARRAY;
		out->repr = elem->repr;
		out->elem = elem;
		get_typlenbyvalalign(elem_type, &out->elem_len, &out->elem_byval, &out->elem_align);
		return;
	}

	entry = lookup_receive(receive);
	if (entry == NULL)
	{
		out->kind = W2A_KIND_OTHER;
		out->repr = W2A_REPR_TEXT;
		return;
	}
	out->kind = entry->kind;
	out->repr = entry->repr;
	if (entry->kind == W2A_KIND_NUMERIC &&
		numeric_fits_decimal(typmod, &out->precision, &out->scale))
	{
		out->kind = W2A_KIND_DECIMAL;
		out->repr = W2A_REPR_NONE;
	}
}

char *
w2a_type_display_name(Oid type_oid)
{
	HeapTuple	tp;
	Form_pg_type typ;
	char	   *name;

	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type_oid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "wal2arrow: cache lookup failed for type %u", type_oid);
	typ = (Form_pg_type) GETSTRUCT(tp);
	if (typ->typnamespace == PG_CATALOG_NAMESPACE)
		name = pstrdup(NameStr(typ->typname));
	else
		name = psprintf("%s.%s", get_namespace_name(typ->typnamespace), NameStr(typ->typname));
	ReleaseSysCache(tp);
	return name;
}

int32
w2a_effective_typmod(Oid type_oid, int32 typmod)
{
	for (int depth = 0; depth <= W2A_MAX_TYPE_DEPTH; depth++)
	{
		HeapTuple	tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type_oid));
		Form_pg_type typ;
		bool		domain;

		if (!HeapTupleIsValid(tp))
			elog(ERROR, "wal2arrow: cache lookup failed for type %u", type_oid);
		typ = (Form_pg_type) GETSTRUCT(tp);
		domain = typ->typtype == TYPTYPE_DOMAIN;
		if (domain)
		{
			if (typmod < 0)
				typmod = typ->typtypmod;
			type_oid = typ->typbasetype;
		}
		ReleaseSysCache(tp);
		if (!domain)
			break;
	}
	return typmod;
}

/* Give an (ArrowSchemaInit'ed) field the Arrow type of a PostgreSQL type. */
void
w2a_schema_set_type(struct ArrowSchema *schema, const W2AType *type)
{
	switch (type->kind)
	{
		case W2A_KIND_BOOL:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_BOOL), "schema");
			break;
		case W2A_KIND_INT2:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_INT16), "schema");
			break;
		case W2A_KIND_INT4:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_INT32), "schema");
			break;
		case W2A_KIND_INT8:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_INT64), "schema");
			break;
		case W2A_KIND_OID:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_UINT32), "schema");
			break;
		case W2A_KIND_FLOAT4:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_FLOAT), "schema");
			break;
		case W2A_KIND_FLOAT8:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_DOUBLE), "schema");
			break;
		case W2A_KIND_DECIMAL:
			W2A_CHECK(ArrowSchemaSetTypeDecimal(schema, NANOARROW_TYPE_DECIMAL128,
												type->precision, type->scale), "schema");
			break;
		case W2A_KIND_BYTEA:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_BINARY), "schema");
			break;
		case W2A_KIND_DATE:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_DATE32), "schema");
			break;
		case W2A_KIND_TIME:
			W2A_CHECK(ArrowSchemaSetTypeDateTime(schema, NANOARROW_TYPE_TIME64,
												 NANOARROW_TIME_UNIT_MICRO, NULL), "schema");
			break;
		case W2A_KIND_TIMETZ:
			W2A_CHECK(ArrowSchemaSetTypeStruct(schema, 2), "schema");
			W2A_CHECK(ArrowSchemaSetTypeDateTime(schema->children[0], NANOARROW_TYPE_TIME64,
												 NANOARROW_TIME_UNIT_MICRO, NULL), "schema");
			W2A_CHECK(ArrowSchemaSetName(schema->children[0], "time"), "schema");
			W2A_CHECK(ArrowSchemaSetType(schema->children[1], NANOARROW_TYPE_INT32), "schema");
			W2A_CHECK(ArrowSchemaSetName(schema->children[1], "utc_offset"), "schema");
			break;
		case W2A_KIND_TIMESTAMP:
			W2A_CHECK(ArrowSchemaSetTypeDateTime(schema, NANOARROW_TYPE_TIMESTAMP,
												 NANOARROW_TIME_UNIT_MICRO, NULL), "schema");
			break;
		case W2A_KIND_TIMESTAMPTZ:
			W2A_CHECK(ArrowSchemaSetTypeDateTime(schema, NANOARROW_TYPE_TIMESTAMP,
												 NANOARROW_TIME_UNIT_MICRO, "UTC"), "schema");
			break;
		case W2A_KIND_INTERVAL:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_INTERVAL_MONTH_DAY_NANO),
					  "schema");
			break;
		case W2A_KIND_UUID:
			W2A_CHECK(ArrowSchemaSetTypeFixedSize(schema, NANOARROW_TYPE_FIXED_SIZE_BINARY, 16),
					  "schema");
			break;
		case W2A_KIND_ARRAY:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_LIST), "schema");
			w2a_schema_set_type(schema->children[0], type->elem);
			break;
		case W2A_KIND_NUMERIC:
		case W2A_KIND_TEXT:
		case W2A_KIND_NAME:
		case W2A_KIND_JSON:
		case W2A_KIND_JSONB:
		case W2A_KIND_ENUM:
		case W2A_KIND_TEXTOUT:
		case W2A_KIND_OTHER:
			W2A_CHECK(ArrowSchemaSetType(schema, NANOARROW_TYPE_STRING), "schema");
			break;
	}
}
