"""Tables joining a running stream: their snapshot merged between two watermarks (DBLog).

The joiner (``CDCStream``'s catalog watcher) writes a low watermark, reads the table at an
exported snapshot into a private spool file, and writes a high watermark, each a transactional
logical message with :data:`WATERMARK_PREFIX`. The table's reader holds everything from its
creation (spilled like any queue). Changes of the table committed before the low watermark are
in the snapshot: they wait in the reader marked *provisional*; from the low watermark on, the
changes of the window wait behind them. At the high watermark's commit the provisional items go
and the snapshot rows take their place, announced by the table's schema as the snapshot saw it
(a :class:`RelationSchema` with its column names, key and attnums) and followed by the schema in
force at the low watermark again (the window's changes are of that schema), stamped with the
low watermark's position; the hold is lifted. So a reader sees the table as of a moment inside
the window, then every change of the window again in commit order (replaying one the snapshot
already shows changes nothing for a mirror), and unchanged TOAST values of those changes find
their previous version in the snapshot rows (``docs/reader.md``).

A table dropped before its snapshot could be read has no snapshot: the joiner writes the high
watermark all the same, and the reader delivers what it holds (every change committed before
the drop, the provisional ones included), then ``TableDropped``.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from cdc_notebook.decode.events import METADATA_COLUMNS, RelationSchema

WATERMARK_PREFIX = "cdc_notebook.watermark"


# The published columns of a table with their attnums and whether each is in the replica
# identity (as both plugins send the key: identity columns in column order, every column under
# REPLICA IDENTITY FULL), read in the snapshot's transaction.
_SNAPSHOT_COLUMNS = """
SELECT a.attname::text, a.attnum::int,
       coalesce(CASE c.relreplident
         WHEN 'f' THEN true
         WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid
                               AND i.indisprimary AND a.attnum = ANY(i.indkey::int2[]))
         WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid
                               AND i.indisreplident AND a.attnum = ANY(i.indkey::int2[]))
       END, false),
       c.relreplident::text
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def snapshot_relation(conn: Any, relid: int, namespace: str, name: str,
                      arrow_schema: pa.Schema) -> RelationSchema:
    """The table's schema as a snapshot sees it (``conn`` is in the snapshot's transaction),
    for the snapshot's batches of ``arrow_schema``: names, key columns and attnums, so the rows
    are labelled with the schema in force at the snapshot, not at whatever the stream last
    said (a column renamed since keeps its values, a key column included)."""
    rows = conn.execute(_SNAPSHOT_COLUMNS, (relid,)).fetchall()
    by_name = {r[0]: (int(r[1]), bool(r[2])) for r in rows}
    identity = rows[0][3] if rows else "d"
    columns = [f.name for f in arrow_schema if f.name not in METADATA_COLUMNS]
    ids = tuple(by_name.get(c, (0, False))[0] for c in columns)
    keys = tuple(c for c in columns if by_name.get(c, (0, False))[1])
    return RelationSchema(relid, 0, namespace, name, identity, keys, arrow_schema, ids)


def stamp_at_watermark(batch: pa.RecordBatch, end_lsn: int, first_ordinal: int) -> pa.RecordBatch:
    """Snapshot rows of a joining table take the position of the low watermark's commit:
    after every change the snapshot holds, before every change of the window."""
    n = batch.num_rows
    at = pa.array(np.full(n, end_lsn, dtype=np.uint64))
    replaced = {"_cdc_lsn": at, "_cdc_commit_lsn": at, "_cdc_end_lsn": at,
                "_cdc_ordinal": pa.array(np.arange(first_ordinal + 1, first_ordinal + n + 1,
                                                   dtype=np.uint64))}
    arrays = [replaced.get(f.name, batch.column(i)) for i, f in enumerate(batch.schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


class TableJoin:
    """A table joining a running stream (see the module's docstring)."""

    def __init__(self, join_id: str, qualified_name: str, key_columns: tuple[str, ...],
                 relid: int = 0, *, spill_dir: str | None = None):
        self.id = join_id
        self.name = qualified_name
        self.relid = relid  # the table's OID: what its changes are routed by
        self.key_columns = key_columns
        self.window_open = False
        self.low_seen = False  # the stream read the low watermark (changes before it are in
        # the snapshot: they are not delivered as changes)
        self.low_end = 0  # the end LSN of the low watermark's transaction
        # The table's schema as the snapshot saw it (announces the snapshot rows), and the
        # stream's schema in force at the low watermark (announces the window's changes).
        self.relation: RelationSchema | None = None
        self.relation_at_low: RelationSchema | None = None
        # The joiner's tries at reading the table (each lets go of everything it held when a
        # lock was not free in time or an application waited for the table: stream/cdc_stream.py)
        self.attempts = 0
        self.yields = 0  # reads given up because an application's lock request waited for them
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.delivered_rows = 0
        self.spooled_rows = 0
        self._spill_dir = spill_dir
        self._file: Any = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def spool(self, batch: pa.RecordBatch) -> None:
        """Keep a snapshot batch on disk until the high watermark (the joiner's thread)."""
        if self._writer is None:
            # A private, unlinked file (mkstemp's O_EXCL, 0600): nothing to find or plant.
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by read_back()
                prefix="cdc_notebook-join-", dir=self._spill_dir)
            self._writer = pa.ipc.new_stream(self._file, batch.schema)
        self._writer.write_batch(batch)
        self.spooled_rows += batch.num_rows

    def finish_spool(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def read_back(self) -> Iterator[pa.RecordBatch]:
        """The spooled batches, one at a time; the file is gone afterwards."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            with pa.ipc.open_stream(self._file) as stream:
                for batch in stream:
                    self.delivered_rows += batch.num_rows
                    yield batch
        finally:
            self.discard()

    def discard(self) -> None:
        self.finish_spool()
        if self._file is not None:
            self._file.close()
            self._file = None
