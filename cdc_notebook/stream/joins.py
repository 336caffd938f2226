"""Tables joining a running stream: their snapshot merged between two watermarks (DBLog).

The joiner (``CDCStream``'s catalog watcher) writes a low watermark, reads the table at an
exported snapshot, and writes a high watermark, each a transactional logical message with
:data:`WATERMARK_PREFIX`; the router records the keys changed between the two and delivers the
surviving snapshot rows at the high watermark's commit (``docs/reader.md``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa

WATERMARK_PREFIX = "cdc_notebook.watermark"


def stamp_at_watermark(batch: pa.RecordBatch, end_lsn: int, first_ordinal: int) -> pa.RecordBatch:
    """Snapshot rows of a joining table take the position of the high watermark's commit."""
    n = batch.num_rows
    at = pa.array(np.full(n, end_lsn, dtype=np.uint64))
    replaced = {"_cdc_lsn": at, "_cdc_commit_lsn": at, "_cdc_end_lsn": at,
                "_cdc_ordinal": pa.array(np.arange(first_ordinal + 1, first_ordinal + n + 1,
                                                   dtype=np.uint64))}
    arrays = [replaced.get(f.name, batch.column(i)) for i, f in enumerate(batch.schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


class TableJoin:
    """A table joining a running stream: its snapshot merged between two watermarks.

    The joiner writes a low watermark (a transactional logical message), reads the table, keeps
    the rows here, and writes a high watermark. The stream thread records the keys of the
    table's changes seen between the two; at the high watermark it delivers the snapshot rows
    whose keys did *not* change in that window (those changes arrive as changes), so the
    reader sees the table's rows exactly once as of the high watermark, then its changes.
    """

    def __init__(self, join_id: str, qualified_name: str, key_columns: tuple[str, ...],
                 relid: int = 0):
        self.id = join_id
        self.name = qualified_name
        self.relid = relid  # the table's OID: what its changes are routed by
        self.key_columns = key_columns
        self.window_open = False
        self.low_seen = False  # the stream read the low watermark (changes before it are in
        # the snapshot: they are not delivered as changes)
        self.changed: set[tuple[Any, ...]] = set()
        self.batches: list[pa.RecordBatch] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.delivered_rows = 0
        self.dropped_rows = 0

    def record(self, batch: pa.RecordBatch) -> None:
        """Keys a change batch touches: new keys, and old keys of updates and deletes."""
        cols = [batch.column(k).to_pylist() for k in self.key_columns]
        self.changed.update(zip(*cols, strict=True))
        before = batch.column("_cdc_before")
        if before.null_count < len(before):
            old = [before.field(k).to_pylist() for k in self.key_columns]
            self.changed.update(t for t in zip(*old, strict=True) if t[0] is not None)

    def surviving(self) -> list[pa.RecordBatch]:
        out = []
        for batch in self.batches:
            if self.changed and batch.num_rows:
                keys = list(zip(*[batch.column(k).to_pylist() for k in self.key_columns],
                                strict=True))
                mask = pa.array([key not in self.changed for key in keys])
                kept = batch.filter(mask)
                self.dropped_rows += batch.num_rows - kept.num_rows
                batch = kept
            self.delivered_rows += batch.num_rows
            out.append(batch)
        return out
