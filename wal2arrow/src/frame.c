/*
 * frame.c: the wire format (docs/protocol.md; the reference decoder is cdc_notebook/decode/wal2arrow.py).
 *
 * Each OutputPluginWrite carries one frame. A frame starts with
 *   u8 tag, u8 format version, u16 body offset (0 when there is no Arrow body)
 * followed by the tag's fields (little-endian integers; strings as u16 length + bytes). Frames
 * with an Arrow IPC message (schema 'R', batch 'D') pad their fields with zeros so that the
 * message starts at a frame offset = 7 (mod 8): in a streaming CopyData message the frame
 * follows the 25-byte XLogData header, so the Arrow message (and its 8-byte padded body) is
 * 8-byte aligned there and the client reads it in place.
 */
#include "wal2arrow.h"

#include "lib/stringinfo.h"

#define W2A_BODY_ALIGN_REMAINDER 7	/* (25 + offset) % 8 == 0 */

static inline void
put_u8(StringInfo out, uint8 v)
{
	appendStringInfoCharMacro(out, (char) v);
}

static inline void
put_u16(StringInfo out, uint16 v)
{
	char		b[2] = {(char) (v & 0xFF), (char) (v >> 8)};

	appendBinaryStringInfo(out, b, 2);
}

static inline void
put_u32(StringInfo out, uint32 v)
{
	char		b[4];

	for (int i = 0; i < 4; i++)
		b[i] = (char) ((v >> (8 * i)) & 0xFF);
	appendBinaryStringInfo(out, b, 4);
}

static inline void
put_u64(StringInfo out, uint64 v)
{
	char		b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (char) ((v >> (8 * i)) & 0xFF);
	appendBinaryStringInfo(out, b, 8);
}

static void
put_str(StringInfo out, const char *s)
{
	size_t		len = strlen(s);

	if (len > PG_UINT16_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("wal2arrow: name of %zu bytes does not fit a frame", len)));
	put_u16(out, (uint16) len);
	appendBinaryStringInfo(out, s, (int) len);
}

/* Start a frame; returns its offset within ctx->out. */
static int
frame_begin(LogicalDecodingContext *ctx, char tag)
{
	W2AState   *state = ctx->output_plugin_private;
	int			start;

	OutputPluginPrepareWrite(ctx, true);
	start = ctx->out->len;
	put_u8(ctx->out, (uint8) tag);
	put_u8(ctx->out, (uint8) state->opts.format_version);
	put_u16(ctx->out, 0);
	return start;
}

/* Pad so that the Arrow body starts 7 (mod 8) bytes into the frame; record the offset. */
static void
frame_pad_body(StringInfo out, int start)
{
	int			offset;

	while ((out->len - start) % 8 != W2A_BODY_ALIGN_REMAINDER)
		appendStringInfoCharMacro(out, '\0');
	offset = out->len - start;
	if (offset > PG_UINT16_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("wal2arrow: frame header of %d bytes is too long", offset)));
	out->data[start + 2] = (char) (offset & 0xFF);
	out->data[start + 3] = (char) (offset >> 8);
}

static void
frame_end(LogicalDecodingContext *ctx)
{
	OutputPluginWrite(ctx, true);
}

static void
write_txn_frame(LogicalDecodingContext *ctx, char tag, TransactionId xid,
				XLogRecPtr commit_lsn, XLogRecPtr end_lsn, int64 commit_ts_us)
{
	frame_begin(ctx, tag);
	put_u32(ctx->out, xid);
	put_u64(ctx->out, commit_lsn);
	put_u64(ctx->out, end_lsn);
	put_u64(ctx->out, (uint64) commit_ts_us);
	frame_end(ctx);
}

void
w2a_write_begin(LogicalDecodingContext *ctx, W2AState *state)
{
	write_txn_frame(ctx, 'B', state->xid, state->commit_lsn, state->end_lsn, state->commit_ts_us);
	state->begin_sent = true;
}

void
w2a_write_commit(LogicalDecodingContext *ctx, W2AState *state)
{
	write_txn_frame(ctx, 'C', state->xid, state->commit_lsn, state->end_lsn, state->commit_ts_us);
}

static void
reset_ipc_buffers(W2AState *state)
{
	/* keep the capacity of previous batches */
	state->ipc_header.size_bytes = 0;
	state->ipc_body.size_bytes = 0;
}

void
w2a_write_schema(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry)
{
	struct ArrowError error;
	StringInfo	out;
	int			start;

	error.message[0] = '\0';
	reset_ipc_buffers(state);
	w2a_nanoarrow_check(ArrowIpcEncoderEncodeSchema(&state->encoder, &entry->schema, &error),
						"encoding a schema", &error);
	W2A_CHECK(ArrowIpcEncoderFinalizeBuffer(&state->encoder, 1, &state->ipc_header),
			  "encoding a schema");

	start = frame_begin(ctx, 'R');
	out = ctx->out;
	put_u32(out, entry->relid);
	put_u32(out, entry->schema_version);
	put_u8(out, (uint8) entry->replident);
	put_str(out, entry->nspname);
	put_str(out, entry->relname);
	put_u16(out, (uint16) entry->nkeys);
	for (int i = 0; i < entry->nkeys; i++)
		put_str(out, entry->keynames[i]);
	if (state->opts.format_version >= 2)
	{
		/* column identity: each column's attnum, in the schema's order */
		put_u16(out, (uint16) entry->ncols);
		for (int i = 0; i < entry->ncols; i++)
			put_u16(out, (uint16) (entry->cols[i].attindex + 1));
	}
	frame_pad_body(out, start);
	appendBinaryStringInfo(out, (const char *) state->ipc_header.data,
						   (int) state->ipc_header.size_bytes);
	frame_end(ctx);
	entry->schema_sent = true;
}

/*
 * view_from_builder fills struct ArrowArrayView by hand instead of ArrowArrayViewSetArray: it
 * must set every field nanoarrow 0.9's IPC encoder reads (pinned by nanoarrow.lock). Another
 * version must fail the build, not encode stale or partial views.
 */
#if !defined(NANOARROW_VERSION_MAJOR) || NANOARROW_VERSION_MAJOR != 0 || NANOARROW_VERSION_MINOR != 9
#error "nanoarrow version bump: re-check the private structs used in wal2arrow/src/frame.c (the struct ArrowArrayView fields view_from_builder sets instead of ArrowArrayViewSetArray, as ArrowIpcEncoderEncodeSimpleRecordBatch reads them), then update this guard"
#endif

/*
 * Point the relation's array view at the finished batch. The builder knows the exact size of
 * every buffer, so nothing is validated here: nanoarrow's ArrowArrayViewSetArray would walk
 * the whole batch to recompute the sizes it discards (a fixed cost that small transactions,
 * one batch each, pay per row). Assert-enabled builds validate the batch fully instead.
 */
static void
view_from_builder(struct ArrowArrayView *view, struct ArrowArray *array)
{
	view->array = array;
	view->offset = array->offset;
	view->length = array->length;
	view->null_count = array->null_count;
	for (int i = 0; i < NANOARROW_MAX_FIXED_BUFFERS; i++)
	{
		struct ArrowBuffer *buffer;

		if (view->layout.buffer_type[i] == NANOARROW_BUFFER_TYPE_NONE)
			break;
		buffer = ArrowArrayBuffer(array, i);
		view->buffer_views[i].data.data = buffer->data;
		view->buffer_views[i].size_bytes = buffer->size_bytes;
	}
	Assert(view->n_children == array->n_children);
	for (int64 i = 0; i < view->n_children; i++)
		view_from_builder(view->children[i], array->children[i]);
}

void
w2a_write_batch(LogicalDecodingContext *ctx, W2AState *state, W2ARelEntry *entry)
{
	struct ArrowError error;
	StringInfo	out;
	int			start;

	if (!state->in_streaming && !state->begin_sent)
		w2a_write_begin(ctx, state);
	if (!entry->schema_sent)
		w2a_write_schema(ctx, state, entry);

	error.message[0] = '\0';
	w2a_finish_batch(entry);
	w2a_nanoarrow_check(ArrowArrayFinishBuilding(&entry->batch, NANOARROW_VALIDATION_LEVEL_NONE,
												 &error),
						"finishing a batch", &error);
	view_from_builder(&entry->view, &entry->batch);
#ifdef USE_ASSERT_CHECKING
	w2a_nanoarrow_check(ArrowArrayViewValidate(&entry->view, NANOARROW_VALIDATION_LEVEL_FULL,
											   &error),
						"validating a batch", &error);
#endif
	reset_ipc_buffers(state);
	w2a_nanoarrow_check(ArrowIpcEncoderEncodeSimpleRecordBatch(&state->encoder, &entry->view,
															   &state->ipc_body, &error),
						"encoding a batch", &error);
	W2A_CHECK(ArrowIpcEncoderFinalizeBuffer(&state->encoder, 1, &state->ipc_header),
			  "encoding a batch");

	start = frame_begin(ctx, 'D');
	out = ctx->out;
	put_u32(out, entry->relid);
	put_u32(out, entry->schema_version);
	put_u32(out, state->xid);
	put_u32(out, state->in_streaming ? entry->subxid : InvalidTransactionId);
	put_u32(out, (uint32) entry->nrows);
	put_u8(out, state->in_streaming ? 1 : 0);
	frame_pad_body(out, start);
	enlargeStringInfo(out, (int) (state->ipc_header.size_bytes + state->ipc_body.size_bytes));
	appendBinaryStringInfo(out, (const char *) state->ipc_header.data,
						   (int) state->ipc_header.size_bytes);
	appendBinaryStringInfo(out, (const char *) state->ipc_body.data,
						   (int) state->ipc_body.size_bytes);
	frame_end(ctx);

	w2a_array_clear(&entry->batch);
	entry->nrows = 0;
	entry->nbytes = 0;
}

void
w2a_write_truncate(LogicalDecodingContext *ctx, W2AState *state, XLogRecPtr lsn, int nrels,
				   Oid *relids, char **nspnames, char **relnames, bool cascade,
				   bool restart_identity, uint64 ordinal)
{
	frame_begin(ctx, 'T');
	put_u32(ctx->out, state->xid);
	put_u64(ctx->out, lsn);
	put_u8(ctx->out, (cascade ? 1 : 0) | (restart_identity ? 2 : 0));
	put_u32(ctx->out, (uint32) nrels);
	if (state->opts.format_version >= 2)
		put_u64(ctx->out, ordinal);
	for (int i = 0; i < nrels; i++)
	{
		put_u32(ctx->out, relids[i]);
		put_str(ctx->out, nspnames[i]);
		put_str(ctx->out, relnames[i]);
	}
	frame_end(ctx);
}

void
w2a_write_message(LogicalDecodingContext *ctx, TransactionId xid, XLogRecPtr lsn,
				  bool transactional, const char *prefix, Size sz, const char *content)
{
	frame_begin(ctx, 'M');
	put_u32(ctx->out, xid);
	put_u64(ctx->out, lsn);
	put_u8(ctx->out, transactional ? 1 : 0);
	put_str(ctx->out, prefix);
	put_u32(ctx->out, (uint32) sz);
	appendBinaryStringInfo(ctx->out, content, (int) sz);
	frame_end(ctx);
}

void
w2a_write_stream_start(LogicalDecodingContext *ctx, TransactionId xid, bool first_segment)
{
	frame_begin(ctx, 'S');
	put_u32(ctx->out, xid);
	put_u8(ctx->out, first_segment ? 1 : 0);
	frame_end(ctx);
}

void
w2a_write_stream_stop(LogicalDecodingContext *ctx)
{
	frame_begin(ctx, 'E');
	frame_end(ctx);
}

void
w2a_write_stream_commit(LogicalDecodingContext *ctx, TransactionId xid, XLogRecPtr commit_lsn,
						XLogRecPtr end_lsn, int64 commit_ts_us)
{
	write_txn_frame(ctx, 'K', xid, commit_lsn, end_lsn, commit_ts_us);
}

void
w2a_write_stream_abort(LogicalDecodingContext *ctx, TransactionId xid, TransactionId subxid,
					   XLogRecPtr abort_lsn)
{
	frame_begin(ctx, 'A');
	put_u32(ctx->out, xid);
	put_u32(ctx->out, subxid);
	put_u64(ctx->out, abort_lsn);
	frame_end(ctx);
}
