/*
 * wal2arrow: a logical decoding output plugin that encodes changes as Arrow IPC.
 *
 * This file holds the callbacks only. Rows of a relation accumulate in its Arrow batch builder
 * within a transaction and are written at its commit, or earlier when a batch reaches the
 * batch_rows/batch_bytes limits, before a TRUNCATE or transactional message (to keep the
 * order of events), at the end of a streamed segment, or when the relation's schema changes.
 * No row is held past its transaction's commit.
 */
#include "wal2arrow.h"

#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"

PG_MODULE_MAGIC;

extern void _PG_output_plugin_init(OutputPluginCallbacks *cb);

#define W2A_PROGRESS_EVERY 100

static inline int64
unix_us(TimestampTz ts)
{
	return ts + W2A_EPOCH_OFFSET_US;
}

static inline TimestampTz
txn_commit_time(ReorderBufferTXN *txn)
{
#if PG_VERSION_NUM >= 150000
	return txn->xact_time.commit_time;
#else
	return txn->commit_time;
#endif
}

static inline ReorderBufferTXN *
top_txn(ReorderBufferTXN *txn)
{
	return txn->toptxn != NULL ? txn->toptxn : txn;
}

/* PostgreSQL 15 needs the plugin to report progress so big filtered transactions keep the
 * walsender alive; from 16 on the core does it. */
static inline void
report_progress(LogicalDecodingContext *ctx, W2AState *state, bool skipped_xact)
{
#if PG_VERSION_NUM < 160000
	if (skipped_xact || ++state->changes_since_progress >= W2A_PROGRESS_EVERY)
	{
		state->changes_since_progress = 0;
		OutputPluginUpdateProgress(ctx, skipped_xact);
	}
#endif
}

static void
w2a_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	W2AState   *state;
	MemoryContext cxt;
	int			encoding = GetDatabaseEncoding();

	cxt = AllocSetContextCreate(ctx->context, "wal2arrow", ALLOCSET_DEFAULT_SIZES);
	state = MemoryContextAllocZero(cxt, sizeof(W2AState));
	state->cxt = cxt;
	state->change_cxt = AllocSetContextCreate(cxt, "wal2arrow change", ALLOCSET_DEFAULT_SIZES);
	ctx->output_plugin_private = state;

	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;

	if (encoding != PG_UTF8 && encoding != PG_SQL_ASCII)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("wal2arrow: database encoding %s is not supported",
						GetDatabaseEncodingName()),
				 errhint("Arrow strings are UTF-8: create the database with ENCODING 'UTF8'.")));

	/* Options are checked when decoding starts, not when the slot is created. */
	w2a_parse_options(&state->opts, is_init ? NIL : ctx->output_plugin_options);

	/* Streaming is on whenever stream callbacks exist: turn it off unless asked for. */
	if (!state->opts.streaming)
		ctx->streaming = false;
	else if (!ctx->streaming)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("wal2arrow: streaming of in-progress transactions is not available "
						"for this decoding context"),
				 errhint("Use PostgreSQL 14 or later, or drop the streaming option.")));

	W2A_CHECK(ArrowIpcEncoderInit(&state->encoder), "creating the IPC encoder");
	ArrowBufferInit(&state->ipc_header);
	ArrowBufferInit(&state->ipc_body);
	w2a_release_state_with(cxt, state);
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		initStringInfo(&state->scratch);
		initStringInfo(&state->varlena);
		MemoryContextSwitchTo(old);
	}
	w2a_relcache_init(state);
	w2a_enum_cache_init(state);
}

static void
w2a_shutdown(LogicalDecodingContext *ctx)
{
	W2AState   *state = ctx->output_plugin_private;

	/* releases the Arrow objects through the context callbacks */
	MemoryContextDelete(state->cxt);
	ctx->output_plugin_private = NULL;
}

static void
w2a_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	W2AState   *state = ctx->output_plugin_private;

	state->in_streaming = false;
	state->begin_sent = false;
	state->xid = txn->xid;
	state->commit_lsn = txn->final_lsn;
	state->end_lsn = txn->end_lsn;
	state->commit_ts_us = unix_us(txn_commit_time(txn));
	state->ordinal = 0;
}

static void
w2a_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	W2AState   *state = ctx->output_plugin_private;

	w2a_flush_all(ctx, state);
	if (state->begin_sent)
		w2a_write_commit(ctx, state);
	else
		report_progress(ctx, state, true);
	state->begin_sent = false;
}

static W2AStreamTxn *
stream_txn(W2AState *state, ReorderBufferTXN *txn)
{
	ReorderBufferTXN *top = top_txn(txn);

	if (top->output_plugin_private == NULL)
		top->output_plugin_private = MemoryContextAllocZero(state->cxt, sizeof(W2AStreamTxn));
	return top->output_plugin_private;
}

static void
forget_stream_txn(ReorderBufferTXN *txn)
{
	if (txn->output_plugin_private != NULL)
	{
		pfree(txn->output_plugin_private);
		txn->output_plugin_private = NULL;
	}
}

static void
handle_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
			  ReorderBufferChange *change, bool streaming)
{
	W2AState   *state = ctx->output_plugin_private;
	W2ARelEntry *entry;
	W2ARelEntry *target;
	Relation	target_rel = rel;
	HeapTuple	newtuple = NULL;
	HeapTuple	oldtuple = NULL;
	W2ARowMeta	meta;
	MemoryContext old;
	TransactionId subxid = streaming ? change->txn->xid : InvalidTransactionId;

	report_progress(ctx, state, false);
	old = MemoryContextSwitchTo(state->change_cxt);

	entry = w2a_relation_entry(state, rel);
	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			if (!entry->publish_insert)
				goto done;
			meta.op = 'c';
			newtuple = W2A_CHANGE_TUPLE(change->data.tp.newtuple);
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			if (!entry->publish_update)
				goto done;
			meta.op = 'u';
			newtuple = W2A_CHANGE_TUPLE(change->data.tp.newtuple);
			oldtuple = W2A_CHANGE_TUPLE(change->data.tp.oldtuple);
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			if (!entry->publish_delete)
				goto done;
			meta.op = 'd';
			oldtuple = W2A_CHANGE_TUPLE(change->data.tp.oldtuple);
			break;
		default:
			goto done;
	}

	target = entry;
	if (entry->publish_as_relid != RelationGetRelid(rel))
	{
		/* publish_via_partition_root: the change is reported as the ancestor's */
		target_rel = RelationIdGetRelation(entry->publish_as_relid);
		if (!RelationIsValid(target_rel))
			elog(ERROR, "wal2arrow: could not open relation %u", entry->publish_as_relid);
		target = w2a_relation_entry(state, target_rel);
		if (!entry->map_checked)
		{
			MemoryContext m = MemoryContextSwitchTo(state->cxt);

			entry->map = convert_tuples_by_name(RelationGetDescr(rel),
												RelationGetDescr(target_rel));
			entry->map_checked = true;
			MemoryContextSwitchTo(m);
		}
		if (entry->map != NULL)
		{
			if (newtuple != NULL)
				newtuple = execute_attr_map_tuple(newtuple, entry->map);
			if (oldtuple != NULL)
				oldtuple = execute_attr_map_tuple(oldtuple, entry->map);
		}
	}
	w2a_entry_ready(ctx, state, target, target_rel);

	/* a streamed batch carries one subtransaction id */
	if (streaming && target->nrows > 0 && target->subxid != subxid)
		w2a_flush_entry(ctx, state, target);
	if (target->nrows == 0)
		target->subxid = subxid;
	if (!target->pending)
	{
		MemoryContext m = MemoryContextSwitchTo(state->cxt);

		state->pending = lappend_oid(state->pending, target->relid);
		target->pending = true;
		MemoryContextSwitchTo(m);
	}

	meta.lsn = change->lsn;
	meta.streaming = streaming;
	meta.commit_lsn = state->commit_lsn;
	meta.end_lsn = state->end_lsn;
	meta.commit_ts_us = state->commit_ts_us;
	meta.xid = top_txn(txn)->xid;
	meta.ordinal = streaming ? ++stream_txn(state, txn)->ordinal : ++state->ordinal;
	w2a_append_row(state, target, RelationGetDescr(target_rel), &meta, newtuple, oldtuple);

	if (target->nrows >= state->opts.batch_rows || target->nbytes >= state->opts.batch_bytes)
		w2a_flush_entry(ctx, state, target);

done:
	if (target_rel != rel)
		RelationClose(target_rel);
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->change_cxt);
}

static void
w2a_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
		   ReorderBufferChange *change)
{
	handle_change(ctx, txn, rel, change, false);
}

/* The schema frame of a relation, unless its schema in force was sent in this session. */
static void
send_schema_of(LogicalDecodingContext *ctx, W2AState *state, Oid relid)
{
	Relation	rel = RelationIdGetRelation(relid);
	W2ARelEntry *entry;

	if (!RelationIsValid(rel))
		elog(ERROR, "wal2arrow: could not open relation %u", relid);
	entry = w2a_relation_entry(state, rel);
	w2a_entry_ready(ctx, state, entry, rel);
	if (!entry->schema_sent)
		w2a_write_schema(ctx, state, entry);
	RelationClose(rel);
}

static void
handle_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
				Relation relations[], ReorderBufferChange *change, bool streaming)
{
	W2AState   *state = ctx->output_plugin_private;
	Oid		   *relids;
	char	  **nspnames;
	char	  **relnames;
	int			n = 0;
	MemoryContext old;

	report_progress(ctx, state, false);
	old = MemoryContextSwitchTo(state->change_cxt);
	relids = palloc(sizeof(Oid) * nrelations);
	nspnames = palloc(sizeof(char *) * nrelations);
	relnames = palloc(sizeof(char *) * nrelations);
	for (int i = 0; i < nrelations; i++)
	{
		W2ARelEntry *entry = w2a_relation_entry(state, relations[i]);
		Oid			relid = entry->publish_as_relid;
		bool		seen = false;

		if (!entry->publish_truncate)
			continue;
		for (int j = 0; j < n; j++)
			seen |= relids[j] == relid;
		if (seen)
			continue;
		relids[n] = relid;
		nspnames[n] = get_namespace_name(get_rel_namespace(relid));
		relnames[n] = get_rel_name(relid);
		n++;
	}
	if (n > 0)
	{
		uint64		ordinal = 0;

		/* the rows before the TRUNCATE go out before it */
		w2a_flush_all(ctx, state);
		if (!streaming && !state->begin_sent)
			w2a_write_begin(ctx, state);
		if (state->opts.format_version >= 2)
		{
			/*
			 * Format 2: each relation's schema in force goes out first (as pgoutput sends
			 * its Relation messages), so a client can give the TRUNCATE the table's
			 * columns; and the TRUNCATE takes an ordinal among the transaction's changes.
			 */
			for (int i = 0; i < n; i++)
				send_schema_of(ctx, state, relids[i]);
			ordinal = streaming ? ++stream_txn(state, txn)->ordinal : ++state->ordinal;
		}
		w2a_write_truncate(ctx, state, change->lsn, n, relids, nspnames, relnames,
						   change->data.truncate.cascade, change->data.truncate.restart_seqs,
						   ordinal);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->change_cxt);
}

static void
w2a_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
			 Relation relations[], ReorderBufferChange *change)
{
	handle_truncate(ctx, txn, nrelations, relations, change, false);
}

static void
handle_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
			   bool transactional, const char *prefix, Size sz, const char *message,
			   bool streaming)
{
	W2AState   *state = ctx->output_plugin_private;

	if (!state->opts.messages)
		return;
	if (transactional)
	{
		w2a_flush_all(ctx, state);
		if (!streaming && !state->begin_sent)
			w2a_write_begin(ctx, state);
	}
	w2a_write_message(ctx, transactional && txn != NULL ? top_txn(txn)->xid : InvalidTransactionId,
					  lsn, transactional, prefix, sz, message);
}

static void
w2a_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
			bool transactional, const char *prefix, Size sz, const char *message)
{
	handle_message(ctx, txn, lsn, transactional, prefix, sz, message, false);
}

/* ---------------------------------------------------------------- streaming */

static void
w2a_stream_start(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	W2AState   *state = ctx->output_plugin_private;

	state->in_streaming = true;
	state->xid = txn->xid;
	state->commit_lsn = InvalidXLogRecPtr;
	state->end_lsn = InvalidXLogRecPtr;
	state->commit_ts_us = 0;
	(void) stream_txn(state, txn);
	w2a_write_stream_start(ctx, txn->xid, !rbtxn_is_streamed(txn));
}

static void
w2a_stream_stop(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	W2AState   *state = ctx->output_plugin_private;

	/* nothing of a segment is held past its end */
	w2a_flush_all(ctx, state);
	w2a_write_stream_stop(ctx);
	state->in_streaming = false;
}

static void
w2a_stream_abort(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr abort_lsn)
{
	ReorderBufferTXN *top = top_txn(txn);

	w2a_write_stream_abort(ctx, top->xid, txn->xid, abort_lsn);
	if (top == txn)
		forget_stream_txn(txn);
}

static void
w2a_stream_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	w2a_write_stream_commit(ctx, txn->xid, commit_lsn, txn->end_lsn,
							unix_us(txn_commit_time(txn)));
	forget_stream_txn(txn);
}

static void
w2a_stream_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
				  ReorderBufferChange *change)
{
	handle_change(ctx, txn, rel, change, true);
}

static void
w2a_stream_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
					Relation relations[], ReorderBufferChange *change)
{
	handle_truncate(ctx, txn, nrelations, relations, change, true);
}

static void
w2a_stream_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
				   bool transactional, const char *prefix, Size sz, const char *message)
{
	handle_message(ctx, txn, lsn, transactional, prefix, sz, message, true);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = w2a_startup;
	cb->begin_cb = w2a_begin;
	cb->change_cb = w2a_change;
	cb->truncate_cb = w2a_truncate;
	cb->message_cb = w2a_message;
	cb->commit_cb = w2a_commit;
	cb->shutdown_cb = w2a_shutdown;
	cb->stream_start_cb = w2a_stream_start;
	cb->stream_stop_cb = w2a_stream_stop;
	cb->stream_abort_cb = w2a_stream_abort;
	cb->stream_commit_cb = w2a_stream_commit;
	cb->stream_change_cb = w2a_stream_change;
	cb->stream_truncate_cb = w2a_stream_truncate;
	cb->stream_message_cb = w2a_stream_message;
}
