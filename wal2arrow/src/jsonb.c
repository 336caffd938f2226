/*
 * jsonb.c: a jsonb value's text, as jsonb_out writes it, without its per-value costs.
 *
 * jsonb_out (JsonbToCString) allocates and copies every string before escaping it one
 * character at a time (PostgreSQL < 17) and formats every number through numeric_out. Here the
 * same walk over the container (PostgreSQL's JsonbIterator) appends strings in runs between
 * the characters that need escaping, and integers with no fractional digits directly; the
 * output is byte for byte jsonb_out's (tests/test_wal2arrow_types.py compares it with the
 * server's for escapes, unicode, nesting, raw scalars and numbers):
 *
 *   objects  {"key": value, "key": value}     arrays  [value, value]
 *   strings  "..." with \" \\ \b \f \n \r \t escaped and other bytes below 0x20 as \u00XX
 *   numbers  numeric_out's text              literals true, false, null
 */
#include "wal2arrow.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

/* appendBinaryStringInfo, inlined: documents are written in many small pieces */
static pg_attribute_always_inline void
put_bytes(StringInfo out, const char *data, int len)
{
	if (unlikely(out->len + len >= out->maxlen))
		enlargeStringInfo(out, len);
	memcpy(out->data + out->len, data, len);
	out->len += len;
	out->data[out->len] = '\0';
}

static void
put_string(StringInfo out, const char *s, int len)
{
	const char *run = s;
	const char *end = s + len;

	put_bytes(out, "\"", 1);
	for (const char *p = s; p < end; p++)
	{
		unsigned char c = (unsigned char) *p;
		const char *esc;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		if (p > run)
			put_bytes(out, run, (int) (p - run));
		run = p + 1;
		switch (c)
		{
			case '\b':
				esc = "\\b";
				break;
			case '\f':
				esc = "\\f";
				break;
			case '\n':
				esc = "\\n";
				break;
			case '\r':
				esc = "\\r";
				break;
			case '\t':
				esc = "\\t";
				break;
			case '"':
				esc = "\\\"";
				break;
			case '\\':
				esc = "\\\\";
				break;
			default:
				appendStringInfo(out, "\\u%04x", (int) c);
				continue;
		}
		put_bytes(out, esc, 2);
	}
	if (end > run)
		put_bytes(out, run, (int) (end - run));
	put_bytes(out, "\"", 1);
}

/*
 * An integer-valued numeric (no digits after the point shown) of up to 16 digits, as
 * numeric_out writes it; false for anything else.
 */
static bool
put_small_integer(StringInfo out, Numeric num)
{
	W2ANumeric n;
	int64		acc = 0;
	char		buf[MAXINT8LEN + 1];

	if (!w2a_numeric_parse(VARDATA_ANY(num), VARSIZE_ANY_EXHDR(num), &n))
		return false;
	/* base-10000 digits: weight 3 is below 10^16, far inside int64 */
	if (n.dscale != 0 || n.weight > 3 || n.ndigits > n.weight + 1)
		return false;
	for (int i = 0; i <= n.weight; i++)
	{
		int16		digit = 0;

		if (i < n.ndigits)
			memcpy(&digit, n.digits + i * sizeof(int16), sizeof(int16));
		acc = acc * 10000 + digit;
	}
	put_bytes(out, buf, pg_lltoa(n.negative ? -acc : acc, buf));
	return true;
}

static void
put_scalar(StringInfo out, const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			put_bytes(out, "null", 4);
			break;
		case jbvString:
			put_string(out, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			if (!put_small_integer(out, v->val.numeric))
				appendStringInfoString(out,
									   DatumGetCString(DirectFunctionCall1(numeric_out,
																		   NumericGetDatum(v->val.numeric))));
			break;
		case jbvBool:
			if (v->val.boolean)
				put_bytes(out, "true", 4);
			else
				put_bytes(out, "false", 5);
			break;
		default:
			elog(ERROR, "wal2arrow: unexpected jsonb value type %d", (int) v->type);
	}
}

void
w2a_jsonb_to_text(StringInfo out, JsonbContainer *container)
{
	JsonbIterator *it = JsonbIteratorInit(container);
	JsonbIteratorToken token;
	JsonbValue	v;
	bool		first = true;	/* no ", " before the next item */
	bool		raw_scalar = false;

	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (token)
		{
			case WJB_BEGIN_ARRAY:
				if (!first)
					put_bytes(out, ", ", 2);
				if (v.val.array.rawScalar)
					raw_scalar = true;	/* a top-level scalar, stored as a 1-element array */
				else
					put_bytes(out, "[", 1);
				first = true;
				break;
			case WJB_BEGIN_OBJECT:
				if (!first)
					put_bytes(out, ", ", 2);
				put_bytes(out, "{", 1);
				first = true;
				break;
			case WJB_KEY:
				if (!first)
					put_bytes(out, ", ", 2);
				put_string(out, v.val.string.val, v.val.string.len);
				put_bytes(out, ": ", 2);
				first = true;	/* the value follows the key directly */
				break;
			case WJB_VALUE:
				put_scalar(out, &v);
				first = false;
				break;
			case WJB_ELEM:
				if (!first)
					put_bytes(out, ", ", 2);
				put_scalar(out, &v);
				first = false;
				break;
			case WJB_END_ARRAY:
				if (!raw_scalar)
					put_bytes(out, "]", 1);
				first = false;
				break;
			case WJB_END_OBJECT:
				put_bytes(out, "}", 1);
				first = false;
				break;
			default:
				elog(ERROR, "wal2arrow: unexpected jsonb iterator token %d", (int) token);
		}
	}
}
