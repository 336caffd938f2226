"""Tables joining a running stream: their snapshot merged between two watermarks (DBLog).

The joiner (``CDCStream``'s catalog watcher) writes a low watermark, reads the table at an
exported snapshot into a private spool file, and writes a high watermark, each a transactional
logical message with :data:`WATERMARK_PREFIX`. Changes of the table committed before the low
watermark are in the snapshot and are not delivered as changes; from the low watermark on, the
table's reader holds what arrives (spilled like any queue); at the high watermark's commit the
snapshot rows are put before the held changes, stamped with the low watermark's position, and
the hold is lifted. So a reader sees the table as of a moment inside the window, then every
change of the window again in commit order (replaying one the snapshot already shows changes
nothing for a mirror), and unchanged TOAST values of those changes find their previous version
in the snapshot rows (``docs/reader.md``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

WATERMARK_PREFIX = "cdc_notebook.watermark"


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
