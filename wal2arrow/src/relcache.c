/*
 * relcache.c: what the plugin knows about each relation.
 *
 * Like pgoutput's RelationSyncEntry: publication membership computed lazily and dropped on
 * invalidation; the relation's columns, Arrow schema and batch builder built lazily and rebuilt
 * after a relcache invalidation. A rebuild that changes the columns (ALTER TABLE) gives the
 * relation a higher schema version; the rows buffered under the old version are written first.
 */
#include "wal2arrow.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_publication.h"
#include "commands/defrem.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#define W2A_META_COLUMNS 10

/* The state whose cache the invalidation callbacks mark (callbacks outlive a decoding run). */
static W2AState *inval_state = NULL;
static bool callbacks_registered = false;

static void
invalidate_all(bool relations_too)
{
	HASH_SEQ_STATUS seq;
	W2ARelEntry *entry;

	hash_seq_init(&seq, inval_state->relations);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		entry->pub_valid = false;
		if (relations_too)
			entry->valid = false;
	}
}

static void
relcache_callback(Datum arg, Oid relid)
{
	W2ARelEntry *entry;

	if (inval_state == NULL || inval_state->relations == NULL)
		return;
	if (!OidIsValid(relid))
	{
		invalidate_all(true);
		return;
	}
	entry = hash_search(inval_state->relations, &relid, HASH_FIND, NULL);
	if (entry != NULL)
	{
		entry->valid = false;
		entry->pub_valid = false;
	}
}

static void
publication_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	if (inval_state == NULL || inval_state->relations == NULL)
		return;
	inval_state->publications_valid = false;
	invalidate_all(false);
}

static void
forget_state(void *arg)
{
	if (inval_state == arg)
		inval_state = NULL;
}

void
w2a_relcache_init(W2AState *state)
{
	HASHCTL		info;
	MemoryContextCallback *cb;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(W2ARelEntry);
	info.hcxt = state->cxt;
	state->relations = hash_create("wal2arrow relations", 128, &info,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	inval_state = state;
	cb = MemoryContextAlloc(state->cxt, sizeof(MemoryContextCallback));
	cb->func = forget_state;
	cb->arg = state;
	MemoryContextRegisterResetCallback(state->cxt, cb);

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONOID, publication_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONRELMAP, publication_callback, (Datum) 0);
#if PG_VERSION_NUM >= 150000
		CacheRegisterSyscacheCallback(PUBLICATIONNAMESPACEMAP, publication_callback, (Datum) 0);
#endif
		callbacks_registered = true;
	}
}

/* ---------------------------------------------------------------- publications */

static void
load_publications(W2AState *state)
{
	MemoryContext old;
	ListCell   *lc;

	if (state->publications_valid)
		return;
	if (state->pub_cxt == NULL)
		state->pub_cxt = AllocSetContextCreate(state->cxt, "wal2arrow publications",
											   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(state->pub_cxt);
	old = MemoryContextSwitchTo(state->pub_cxt);
	state->publications = NIL;
	foreach(lc, state->opts.publication_names)
	{
		char	   *name = lfirst(lc);
		Publication *pub = GetPublicationByName(name, true);

		if (pub == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("wal2arrow: publication \"%s\" does not exist", name),
					 errhint("Create it (CREATE PUBLICATION %s FOR ...) or remove it from "
							 "publication_names.", quote_identifier(name))));
		state->publications = lappend(state->publications, pub);
	}
	MemoryContextSwitchTo(old);
	state->publications_valid = true;
}

/* pgoutput's meaning of publication membership, actions and publish_via_partition_root */
static void
compute_publication(W2AState *state, W2ARelEntry *entry, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	List	   *pubids;
	List	   *schema_pubids;
	List	   *ancestors = NIL;
	bool		am_partition = rel->rd_rel->relispartition;
	int			chosen_level = -1;
	ListCell   *lc;

	if (entry->map != NULL)
		free_conversion_map(entry->map);
	entry->map = NULL;
	entry->map_checked = false;
	entry->publish_as_relid = relid;

	if (state->opts.publication_names == NIL)
	{
		entry->publish_insert = entry->publish_update = true;
		entry->publish_delete = entry->publish_truncate = true;
		entry->pub_valid = true;
		return;
	}

	load_publications(state);
	entry->publish_insert = entry->publish_update = false;
	entry->publish_delete = entry->publish_truncate = false;
	if (!is_publishable_relation(rel))
	{
		entry->pub_valid = true;
		return;
	}
	pubids = GetRelationPublications(relid);
#if PG_VERSION_NUM >= 150000
	schema_pubids = GetSchemaPublications(RelationGetNamespace(rel));
#else
	schema_pubids = NIL;
#endif
	if (am_partition)
		ancestors = get_partition_ancestors(relid);

	foreach(lc, state->publications)
	{
		Publication *pub = lfirst(lc);
		bool		publish = false;
		Oid			pub_relid = relid;
		int			level = 0;

		if (pub->alltables)
		{
			publish = true;
			if (pub->pubviaroot && am_partition)
			{
				pub_relid = llast_oid(ancestors);
				level = list_length(ancestors);
			}
		}
		else
		{
			if (am_partition)
			{
				int			ancestor_level = 0;
				Oid			ancestor = GetTopMostAncestorInPublication(pub->oid, ancestors,
																	   &ancestor_level);

				if (OidIsValid(ancestor))
				{
					publish = true;
					if (pub->pubviaroot)
					{
						pub_relid = ancestor;
						level = ancestor_level;
					}
				}
			}
			if (list_member_oid(pubids, pub->oid) || list_member_oid(schema_pubids, pub->oid))
				publish = true;
		}
		if (!publish)
			continue;
		entry->publish_insert |= pub->pubactions.pubinsert;
		entry->publish_update |= pub->pubactions.pubupdate;
		entry->publish_delete |= pub->pubactions.pubdelete;
		entry->publish_truncate |= pub->pubactions.pubtruncate;
		if (level > chosen_level)
		{
			entry->publish_as_relid = pub_relid;
			chosen_level = level;
		}
	}
	list_free(pubids);
	list_free(schema_pubids);
	list_free(ancestors);
	entry->pub_valid = true;
}

W2ARelEntry *
w2a_relation_entry(W2AState *state, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	bool		found;
	W2ARelEntry *entry = state->last_entry;

	/* consecutive changes mostly touch one relation; entries never move nor go away */
	if (entry == NULL || entry->relid != relid)
	{
		entry = hash_search(state->relations, &relid, HASH_ENTER, &found);
		if (!found)
		{
			memset(((char *) entry) + sizeof(Oid), 0, sizeof(W2ARelEntry) - sizeof(Oid));
			entry->subxid = InvalidTransactionId;
		}
		state->last_entry = entry;
	}
	if (!entry->pub_valid)
		compute_publication(state, entry, rel);
	return entry;
}

/* ---------------------------------------------------------------- columns and schema */

static bool
published_attribute(Form_pg_attribute att)
{
	return !att->attisdropped && att->attgenerated == '\0';
}

static char *
relation_signature(Relation rel, List *keys)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%u.%s.%c|", RelationGetNamespace(rel),
					 RelationGetRelationName(rel), rel->rd_rel->relreplident);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!published_attribute(att))
			continue;
		/* the attnum too: a column dropped and another added under its name is a new one */
		appendStringInfo(&buf, "%d:%s:%u:%d,", att->attnum, NameStr(att->attname),
						 att->atttypid, att->atttypmod);
	}
	appendStringInfoChar(&buf, '|');
	foreach(lc, keys)
		appendStringInfo(&buf, "%s,", (char *) lfirst(lc));
	return buf.data;
}

static List *
key_column_names(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *names = NIL;
	Bitmapset  *keys = NULL;

	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_NOTHING)
		return NIL;
	if (rel->rd_rel->relreplident != REPLICA_IDENTITY_FULL)
		keys = RelationGetIdentityKeyBitmap(rel);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!published_attribute(att))
			continue;
		if (rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL ||
			bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, keys))
			names = lappend(names, pstrdup(NameStr(att->attname)));
	}
	bms_free(keys);
	return names;
}

static void
set_field(struct ArrowSchema *field, const char *name, bool nullable)
{
	W2A_CHECK(ArrowSchemaSetName(field, name), "building a schema");
	if (nullable)
		field->flags |= ARROW_FLAG_NULLABLE;
	else
		field->flags &= ~ARROW_FLAG_NULLABLE;
}

static void
set_column_field(struct ArrowSchema *field, const W2AColumn *col)
{
	struct ArrowBuffer meta;
	char		typmod[16];

	ArrowSchemaInit(field);
	w2a_schema_set_type(field, &col->type);
	set_field(field, col->name, true);
	W2A_CHECK(ArrowMetadataBuilderInit(&meta, NULL), "building field metadata");
	W2A_CHECK(ArrowMetadataBuilderAppend(&meta, ArrowCharView("pg.type"),
										 ArrowCharView(col->pg_type_name)), "field metadata");
	if (col->effective_typmod >= 0)
	{
		snprintf(typmod, sizeof(typmod), "%d", col->effective_typmod);
		W2A_CHECK(ArrowMetadataBuilderAppend(&meta, ArrowCharView("pg.typmod"),
											 ArrowCharView(typmod)), "field metadata");
	}
	if (col->type.repr != W2A_REPR_NONE)
	{
		const char *repr = col->type.repr == W2A_REPR_JSON ? "json" :
			col->type.repr == W2A_REPR_ENUM ? "enum" : "text";

		W2A_CHECK(ArrowMetadataBuilderAppend(&meta, ArrowCharView("pg.repr"),
											 ArrowCharView(repr)), "field metadata");
	}
	W2A_CHECK(ArrowSchemaSetMetadata(field, (const char *) meta.data), "field metadata");
	ArrowBufferReset(&meta);
}

static void
build_schema(W2ARelEntry *entry)
{
	struct ArrowSchema *s = &entry->schema;
	struct ArrowSchema *f;
	int			n = entry->ncols;

	ArrowSchemaInit(s);
	W2A_CHECK(ArrowSchemaSetTypeStruct(s, n + W2A_META_COLUMNS), "building a schema");
	for (int i = 0; i < n; i++)
		set_column_field(s->children[i], &entry->cols[i]);

	f = s->children[n + 0];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_STRING), "schema");
	set_field(f, "_cdc_op", false);
	f = s->children[n + 1];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_UINT64), "schema");
	set_field(f, "_cdc_lsn", false);
	f = s->children[n + 2];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_UINT64), "schema");
	set_field(f, "_cdc_commit_lsn", true);
	f = s->children[n + 3];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_UINT64), "schema");
	set_field(f, "_cdc_end_lsn", true);
	f = s->children[n + 4];
	W2A_CHECK(ArrowSchemaSetTypeDateTime(f, NANOARROW_TYPE_TIMESTAMP, NANOARROW_TIME_UNIT_MICRO,
										 "UTC"), "schema");
	set_field(f, "_cdc_commit_ts", true);
	f = s->children[n + 5];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_UINT32), "schema");
	set_field(f, "_cdc_xid", false);
	f = s->children[n + 6];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_UINT64), "schema");
	set_field(f, "_cdc_ordinal", false);
	f = s->children[n + 7];
	W2A_CHECK(ArrowSchemaSetTypeStruct(f, n), "schema");
	set_field(f, "_cdc_before", true);
	for (int i = 0; i < n; i++)
		set_column_field(f->children[i], &entry->cols[i]);
	f = s->children[n + 8];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_LIST), "schema");
	W2A_CHECK(ArrowSchemaSetType(f->children[0], NANOARROW_TYPE_STRING), "schema");
	set_field(f, "_cdc_unchanged_toast", false);
	f = s->children[n + 9];
	W2A_CHECK(ArrowSchemaSetType(f, NANOARROW_TYPE_MAP), "schema");
	W2A_CHECK(ArrowSchemaSetType(f->children[0]->children[0], NANOARROW_TYPE_STRING), "schema");
	W2A_CHECK(ArrowSchemaSetType(f->children[0]->children[1], NANOARROW_TYPE_STRING), "schema");
	set_field(f, "_cdc_unrepresentable", false);
}

/*
 * Make sure the entry's columns, schema and builder match the relation as the decoder sees it
 * now. Called for relations whose rows are about to be buffered.
 */
void
w2a_entry_ready(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry, Relation rel)
{
	MemoryContext old;
	MemoryContext cxt;
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *keys;
	char	   *signature;
	int			ncols = 0;
	int			i;
	ListCell   *lc;

	if (entry->built && entry->valid)
		return;

	keys = key_column_names(rel);
	signature = relation_signature(rel, keys);
	if (entry->built && strcmp(signature, entry->signature) == 0)
	{
		entry->valid = true;
		return;
	}

	/* The relation changed: what was buffered under the old schema goes out first. */
	if (entry->built && entry->nrows > 0)
		w2a_flush_entry(ctx, state, entry);

	cxt = AllocSetContextCreate(state->cxt, "wal2arrow relation", ALLOCSET_SMALL_SIZES);
	if (entry->cxt != NULL)
		MemoryContextDelete(entry->cxt);	/* releases the old schema and builder */
	entry->cxt = cxt;
	entry->built = false;
	memset(&entry->schema, 0, sizeof(entry->schema));
	memset(&entry->batch, 0, sizeof(entry->batch));
	ArrowArrayViewInitFromType(&entry->view, NANOARROW_TYPE_UNINITIALIZED);
	w2a_release_schema_with(cxt, &entry->schema);
	w2a_release_array_with(cxt, &entry->batch);
	w2a_release_view_with(cxt, &entry->view);

	old = MemoryContextSwitchTo(cxt);
	entry->signature = pstrdup(signature);
	entry->nspname = get_namespace_name(RelationGetNamespace(rel));
	entry->relname = pstrdup(RelationGetRelationName(rel));
	entry->replident = rel->rd_rel->relreplident;
	entry->nkeys = list_length(keys);
	entry->keynames = palloc0(sizeof(char *) * Max(entry->nkeys, 1));
	i = 0;
	foreach(lc, keys)
		entry->keynames[i++] = pstrdup(lfirst(lc));

	for (i = 0; i < desc->natts; i++)
		if (published_attribute(TupleDescAttr(desc, i)))
			ncols++;
	entry->ncols = ncols;
	entry->cols = palloc0(sizeof(W2AColumn) * Max(ncols, 1));
	ncols = 0;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		W2AColumn  *col;

		if (!published_attribute(att))
			continue;
		col = &entry->cols[ncols++];
		col->name = pstrdup(NameStr(att->attname));
		col->attindex = i;
		col->is_varlena = att->attlen == -1;
		col->declared_type = att->atttypid;
		col->declared_typmod = att->atttypmod;
		w2a_resolve_type(&col->type, att->atttypid, att->atttypmod, 0);
		col->pg_type_name = w2a_type_display_name(att->atttypid);
		col->effective_typmod = w2a_effective_typmod(att->atttypid, att->atttypmod);
	}
	entry->natts = desc->natts;
	entry->values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	entry->nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
	entry->old_values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	entry->old_nulls = palloc(sizeof(bool) * Max(desc->natts, 1));

	build_schema(entry);
	{
		struct ArrowError error;

		error.message[0] = '\0';
		w2a_nanoarrow_check(ArrowArrayInitFromSchema(&entry->batch, &entry->schema, &error),
							"creating a batch builder", &error);
	}
	W2A_CHECK(ArrowArrayStartAppending(&entry->batch), "creating a batch builder");
	{
		struct ArrowError error;

		error.message[0] = '\0';
		w2a_nanoarrow_check(ArrowArrayViewInitFromSchema(&entry->view, &entry->schema, &error),
							"viewing a batch", &error);
	}
	MemoryContextSwitchTo(old);

	entry->schema_version++;
	entry->schema_sent = false;
	entry->nrows = 0;
	entry->nbytes = 0;
	entry->null_befores = 0;
	entry->built = true;
	entry->valid = true;
	list_free_deep(keys);
	pfree(signature);
}

/* ---------------------------------------------------------------- flushing */

void
w2a_flush_entry(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry)
{
	if (entry->nrows > 0)
		w2a_write_batch(ctx, state, entry);
	if (entry->pending)
	{
		state->pending = list_delete_oid(state->pending, entry->relid);
		entry->pending = false;
	}
}

void
w2a_flush_all(LogicalDecodingContext *ctx, W2AState *state)
{
	ListCell   *lc;

	foreach(lc, state->pending)
	{
		Oid			relid = lfirst_oid(lc);
		W2ARelEntry *entry = hash_search(state->relations, &relid, HASH_FIND, NULL);

		if (entry == NULL)
			continue;
		if (entry->nrows > 0)
			w2a_write_batch(ctx, state, entry);
		entry->pending = false;
	}
	list_free(state->pending);
	state->pending = NIL;
}
