/*
 * wal2arrow: logical decoding output plugin that encodes changes as Arrow IPC.
 *
 * Skeleton: registers the callbacks so a slot can be created and decoded; the encoding
 * itself is the subject of the plugin's own issue.
 */
#include "postgres.h"

#include "fmgr.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"

#include "nanoarrow/nanoarrow.h"

PG_MODULE_MAGIC;

extern void _PG_output_plugin_init(OutputPluginCallbacks *cb);

static void
w2a_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
}

static void
w2a_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
}

static void
w2a_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
		   ReorderBufferChange *change)
{
}

static void
w2a_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = w2a_startup;
	cb->begin_cb = w2a_begin;
	cb->change_cb = w2a_change;
	cb->commit_cb = w2a_commit;
}
