/*
 * memory.c: nanoarrow objects inside a PostgreSQL backend.
 *
 * nanoarrow allocates with malloc. Each long-lived Arrow object (a relation's schema and batch
 * builder, the IPC encoder and its buffers) is tied to a memory context by a reset callback, so
 * that it is released when that context goes away, including when ereport(ERROR) unwinds past
 * our code. Builders are cleared in place between batches so their buffers keep their capacity.
 */
#include "wal2arrow.h"

#include "utils/memutils.h"

static void
release_schema(void *arg)
{
	struct ArrowSchema *schema = arg;

	if (schema->release != NULL)
		ArrowSchemaRelease(schema);
}

static void
release_array(void *arg)
{
	struct ArrowArray *array = arg;

	if (array->release != NULL)
		ArrowArrayRelease(array);
}

static void
release_view(void *arg)
{
	ArrowArrayViewReset((struct ArrowArrayView *) arg);
}

static void
release_state(void *arg)
{
	W2AState  *state = arg;

	if (state->encoder.private_data != NULL)
		ArrowIpcEncoderReset(&state->encoder);
	ArrowBufferReset(&state->ipc_header);
	ArrowBufferReset(&state->ipc_body);
}

static void
register_callback(MemoryContext cxt, MemoryContextCallbackFunction func, void *arg)
{
	MemoryContextCallback *cb = MemoryContextAlloc(cxt, sizeof(MemoryContextCallback));

	cb->func = func;
	cb->arg = arg;
	MemoryContextRegisterResetCallback(cxt, cb);
}

void
w2a_release_schema_with(MemoryContext cxt, struct ArrowSchema *schema)
{
	register_callback(cxt, release_schema, schema);
}

void
w2a_release_array_with(MemoryContext cxt, struct ArrowArray *array)
{
	register_callback(cxt, release_array, array);
}

void
w2a_release_view_with(MemoryContext cxt, struct ArrowArrayView *view)
{
	register_callback(cxt, release_view, view);
}

void
w2a_release_state_with(MemoryContext cxt, W2AState *state)
{
	register_callback(cxt, release_state, state);
}

/*
 * w2a_array_clear writes nanoarrow's private struct ArrowArrayPrivateData (layout, bitmap) and
 * recreates the state ArrowArrayStartAppending leaves; both are nanoarrow 0.9's, pinned by
 * nanoarrow.lock. Another version must fail the build, not corrupt batches.
 */
#if !defined(NANOARROW_VERSION_MAJOR) || NANOARROW_VERSION_MAJOR != 0 || NANOARROW_VERSION_MINOR != 9
#error "nanoarrow version bump: re-check the private structs used in wal2arrow/src/memory.c (struct ArrowArrayPrivateData.layout and .bitmap in w2a_array_clear, the state ArrowArrayStartAppending leaves), then update this guard"
#endif

/*
 * Empty a builder without freeing its buffers: what ArrowArrayStartAppending leaves, with the
 * capacity of the previous batch kept.
 */
void
w2a_array_clear(struct ArrowArray *array)
{
	struct ArrowArrayPrivateData *priv = (struct ArrowArrayPrivateData *) array->private_data;

	for (int i = 0; i < NANOARROW_MAX_FIXED_BUFFERS; i++)
	{
		struct ArrowBuffer *buffer = ArrowArrayBuffer(array, i);

		buffer->size_bytes = 0;
		if (priv->layout.buffer_type[i] == NANOARROW_BUFFER_TYPE_DATA_OFFSET)
		{
			if (priv->layout.element_size_bits[i] == 64)
				W2A_CHECK(ArrowBufferAppendInt64(buffer, 0), "clearing a batch");
			else
				W2A_CHECK(ArrowBufferAppendInt32(buffer, 0), "clearing a batch");
		}
	}
	priv->bitmap.size_bits = 0;
	array->length = 0;
	array->null_count = 0;
	array->offset = 0;
	for (int64 i = 0; i < array->n_children; i++)
		w2a_array_clear(array->children[i]);
}

void
w2a_nanoarrow_check(ArrowErrorCode code, const char *what, struct ArrowError *error)
{
	if (code == NANOARROW_OK)
		return;
	if (code == ENOMEM)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("wal2arrow: out of memory while %s", what),
				 errhint("Lower the plugin's batch_bytes option or raise the server's memory.")));
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("wal2arrow: Arrow encoding failed while %s: %s (code %d)", what,
					error != NULL ? error->message : strerror(code), code),
			 errhint("A batch may exceed Arrow's 2 GB limit per column; lower batch_bytes.")));
}
