/*
 * options.c: the plugin's options, parsed once at startup.
 *
 * START_REPLICATION ... (format_version '1', publication_names 'a,b', ...) or the SQL
 * interface's option pairs. Unknown, duplicated or malformed options are errors with a hint.
 */
#include "wal2arrow.h"

#include "utils/builtins.h"
#include "utils/varlena.h"

#define W2A_DEFAULT_BATCH_ROWS 65536
#define W2A_DEFAULT_BATCH_BYTES (16 * 1024 * 1024)
#define W2A_MAX_BATCH_BYTES (INT64CONST(256) * 1024 * 1024)

static const char *const known_options[] = {
	"format_version", "publication_names", "batch_rows", "batch_bytes",
	"before_images", "messages", "streaming",
};

static const char *
option_value(DefElem *elem)
{
	if (elem->arg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wal2arrow: option \"%s\" needs a value", elem->defname),
				 errhint("Pass it as %s 'value'.", elem->defname)));
	return strVal(elem->arg);
}

static bool
option_bool(DefElem *elem)
{
	const char *value = option_value(elem);
	bool		result;

	if (!parse_bool(value, &result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wal2arrow: option \"%s\" must be a boolean, not \"%s\"",
						elem->defname, value),
				 errhint("Use on/off, true/false, 1/0.")));
	return result;
}

static int64
option_int(DefElem *elem, int64 min, int64 max)
{
	const char *value = option_value(elem);
	char	   *end;
	long long	parsed;

	errno = 0;
	parsed = strtoll(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || parsed < min || parsed > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wal2arrow: option \"%s\" must be an integer between " INT64_FORMAT
						" and " INT64_FORMAT ", not \"%s\"", elem->defname, min, max, value),
				 errhint("Pass a plain decimal integer.")));
	return (int64) parsed;
}

void
w2a_parse_options(W2AOptions *opts, List *options)
{
	ListCell   *lc;
	bool		seen[lengthof(known_options)] = {false};

	opts->format_version = W2A_FORMAT_VERSION_MAX;
	opts->publication_names = NIL;
	opts->batch_rows = W2A_DEFAULT_BATCH_ROWS;
	opts->batch_bytes = W2A_DEFAULT_BATCH_BYTES;
	opts->before_images = true;
	opts->messages = false;
	opts->streaming = false;

	foreach(lc, options)
	{
		DefElem    *elem = lfirst(lc);
		int			which = -1;

		for (int i = 0; i < (int) lengthof(known_options); i++)
			if (strcmp(elem->defname, known_options[i]) == 0)
				which = i;
		if (which < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("wal2arrow: unknown option \"%s\"", elem->defname),
					 errhint("Valid options: format_version, publication_names, batch_rows, "
							 "batch_bytes, before_images, messages, streaming.")));
		if (seen[which])
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("wal2arrow: option \"%s\" given more than once", elem->defname),
					 errhint("Pass each option once.")));
		seen[which] = true;

		if (strcmp(elem->defname, "format_version") == 0)
		{
			const char *value = option_value(elem);
			char	   *end;
			long		version;

			errno = 0;
			version = strtol(value, &end, 10);
			if (errno != 0 || end == value || *end != '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("wal2arrow: format_version must be an integer, not \"%s\"",
								value),
						 errhint("This wal2arrow speaks format versions %d to %d.",
								 W2A_FORMAT_VERSION_MIN, W2A_FORMAT_VERSION_MAX)));
			if (version < W2A_FORMAT_VERSION_MIN || version > W2A_FORMAT_VERSION_MAX)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("wal2arrow: unsupported format_version %ld", version),
						 errhint("This wal2arrow speaks format versions %d to %d: upgrade the "
								 "plugin on the server, or ask for a version it speaks.",
								 W2A_FORMAT_VERSION_MIN, W2A_FORMAT_VERSION_MAX)));
			opts->format_version = (int) version;
		}
		else if (strcmp(elem->defname, "publication_names") == 0)
		{
			char	   *raw = pstrdup(option_value(elem));

			if (!SplitIdentifierString(raw, ',', &opts->publication_names) ||
				opts->publication_names == NIL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_NAME),
						 errmsg("wal2arrow: invalid publication_names \"%s\"",
								option_value(elem)),
						 errhint("Give a comma-separated list of publication names, "
								 "double-quoted where needed.")));
		}
		else if (strcmp(elem->defname, "batch_rows") == 0)
			opts->batch_rows = option_int(elem, 1, PG_INT32_MAX);
		else if (strcmp(elem->defname, "batch_bytes") == 0)
			opts->batch_bytes = option_int(elem, 1024, W2A_MAX_BATCH_BYTES);
		else if (strcmp(elem->defname, "before_images") == 0)
			opts->before_images = option_bool(elem);
		else if (strcmp(elem->defname, "messages") == 0)
			opts->messages = option_bool(elem);
		else if (strcmp(elem->defname, "streaming") == 0)
			opts->streaming = option_bool(elem);
	}
}
