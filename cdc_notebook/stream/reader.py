"""The changes of one table, in commit order: a bounded queue fed by the router's thread,
spilled to a private temporary file past its memory bound while nobody reads it, consumed from
threads (``batches()``) or asyncio (``read_batches()``); at-least-once delivery made exactly-once
per reader by the high-water mark ``(end_lsn, ordinal)``."""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cdc_notebook.decode.events import DecodeFailed, RelationSchema, TableDropped, Truncate
from cdc_notebook.decode.typespec import change_batch_schema
from cdc_notebook.stream.acks import Transaction
from cdc_notebook.stream.delivery import drop_redelivered
from cdc_notebook.stream.markers import truncate_marker
from cdc_notebook.stream.partition import partition_of

if TYPE_CHECKING:
    from cdc_notebook.stream.router import ChangeRouter

_END = object()  # queue marker: the stream ended (position reached, or closed)


@dataclass
class QueuedItem:
    payload: Any  # pa.RecordBatch | Truncate | RelationSchema | TableDropped | _END
    txn: Transaction | None
    nbytes: int = 0
    end_lsn: int = 0
    spilled: tuple[int, int] | None = None  # (offset, length) in the spill file
    snapshot: bool = False  # rows of the initial snapshot (op 'r'): never redelivered
    ipc: Any = None  # the batch's Arrow IPC message as received, if the decoder kept it
    schema: pa.Schema | None = None  # a spilled batch's schema (the file holds no schema)


class TableReader:
    """The changes of one table, in commit order, as Arrow record batches.

    ``read_batches()`` (async) and ``batches()`` (sync) end at the WAL position that was current
    when the iteration began, unless ``follow=True``: then they go on until the reader or the
    stream is closed. Schema changes arrive as batches with the new schema; ``events()`` also
    yields :class:`~cdc_notebook.decode.events.Truncate`, :class:`RelationSchema`,
    :class:`TableRenamed` (``name`` follows the table), :class:`WatcherError` and
    :class:`TableDropped` (which ends the reader).
    """

    def __init__(self, router: ChangeRouter, qualified_name: str, key_columns: tuple[str, ...],
                 memory_limit: int, *, relid: int = 0, schema_name: str | None = None,
                 table_name: str | None = None, label_lsn: int = 0):
        self.router = router
        # The table is its OID (``relid``); ``name`` is a label that follows renames: the
        # reader's key in ``stream.readers``, ``schema.table`` quoted where needed.
        self.relid = relid
        self.name = qualified_name
        self.schema_name = schema_name if schema_name is not None else qualified_name
        self.table_name = table_name if table_name is not None else ""
        self.former_names: list[str] = []
        self.label_lsn = label_lsn  # the WAL position the current name was seen at
        self.table_dropped = False  # the router queued TableDropped (the table is gone)
        self.table_gone = False  # the catalog watcher saw the table gone (TableDropped follows)
        self.key_columns = key_columns
        self.memory_limit = memory_limit
        self.schema: pa.Schema | None = None
        self._schema_read: pa.Schema | None = None  # in force where the consumer has read to
        self.high_water: tuple[int, int] = (0, 0)
        self.closed = False
        self.dropped = False
        self.rows_read = 0
        self.bytes_read = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[QueuedItem] = collections.deque()
        self._mem_bytes = 0
        self._active = 0
        self._spill: Any = None
        self._spill_bytes = 0
        self._spill_end = 0
        self._current: QueuedItem | None = None

    # ---- the stream side

    def _relabel(self, schema_name: str, table_name: str, label: str, lsn: int) -> str:
        """The table was renamed (or moved to another schema): take its new name; returns
        the old one."""
        old = self.name
        if label != old:
            self.former_names = [n for n in self.former_names if n != label] + [old]
        self.schema_name, self.table_name, self.name = schema_name, table_name, label
        self.label_lsn = max(self.label_lsn, lsn)
        return old

    def _put(self, item: QueuedItem, stop: threading.Event) -> None:
        with self._cond:
            if self.closed:
                if item.txn is not None:
                    self.router.acks.consumed(item.txn)
                return
            while (self._active and self._mem_bytes + item.nbytes > self.memory_limit
                   and self._queue and not stop.is_set()):
                self._cond.wait(0.2)
                self.router._keep_alive()
            if not self._active and self._mem_bytes + item.nbytes > self.memory_limit:
                self._spill_item(item)
            else:
                self._mem_bytes += item.nbytes
            self._queue.append(item)
            self._cond.notify_all()

    def _spill_item(self, item: QueuedItem) -> None:
        """Write the batch to this reader's spill file as one Arrow IPC message (no schema):
        the bytes received from wal2arrow as they are, or the batch serialized. Positioned
        writes and reads: the consumer thread reads while the stream thread appends."""
        if self._spill is None:  # kept open across calls: _drop_spill() closes it
            self._spill = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="cdc_notebook-spill-", buffering=0, dir=self.router.spill_dir)
            self._spill_end = 0
        fd = self._spill.fileno()
        if self._spill_bytes == 0 and self._spill_end:
            os.ftruncate(fd, 0)  # everything spilled so far was read back: start over
            self._spill_end = 0
        batch = item.payload
        data = memoryview(item.ipc if item.ipc is not None else batch.serialize())
        offset = self._spill_end
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
        self._spill_end += written
        item.spilled = (offset, written)
        item.schema = batch.schema
        item.payload = item.ipc = None
        self._spill_bytes += written

    def _unspill(self, item: QueuedItem) -> pa.RecordBatch:
        offset, length = item.spilled  # type: ignore[misc]
        data = os.pread(self._spill.fileno(), length, offset)
        with self._cond:
            self._spill_bytes -= length
        return pa.ipc.read_record_batch(pa.py_buffer(data), item.schema)

    def _finish(self) -> None:
        with self._cond:
            self._queue.append(QueuedItem(_END, None))
            self._cond.notify_all()

    # ---- the consumer side

    def _release_current(self) -> None:
        item, self._current = self._current, None
        if item is not None and item.txn is not None:
            self.router.acks.consumed(item.txn)

    def _next_item(self, deadline_lsn: int | None, timeout: float | None) -> QueuedItem | None:
        """The next item, or None when the iteration's end position was reached."""
        self._release_current()
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._queue:
                    item = self._queue.popleft()
                    if item.payload is _END:
                        self._queue.appendleft(item)  # stays ended
                        self.router.raise_if_failed()
                        return None
                    if item.spilled is None:
                        self._mem_bytes -= item.nbytes
                    self._cond.notify_all()
                    break
                if self.closed or self.router.failed is not None:
                    self.router.raise_if_failed()
                    return None
                if deadline_lsn is not None and self.router.caught_up(deadline_lsn):
                    return None
                if give_up is not None and time.monotonic() > give_up:
                    raise TimeoutError(f"no change for {self.name} within {timeout} s")
                if deadline_lsn is not None:
                    self.router.request_position()
                self._cond.wait(0.05)
        if item.spilled is not None:
            item.payload = self._unspill(item)
        self._current = item
        return item

    def _iterate(self, follow: bool, events: bool, timeout: float | None,
                 partition: tuple[int, int] | None) -> Generator[Any, None, None]:
        self.router.ensure_started()
        deadline = None if follow else self.router.current_wal_lsn()
        with self._cond:
            self._active += 1
        try:
            while True:
                item = self._next_item(deadline, timeout)
                if item is None:
                    return
                payload = item.payload
                marker = False
                if isinstance(payload, RelationSchema):
                    self._schema_read = payload.arrow_schema
                elif isinstance(payload, Truncate) and not events:
                    # The batch API's TRUNCATE: a marker row of the table's schema in force
                    # there (both plugins send the schema before a TRUNCATE: docs/reader.md).
                    schema = self._schema_read or self.schema or change_batch_schema([])
                    payload, marker = truncate_marker(schema, payload), True
                elif isinstance(payload, DecodeFailed) and not events:
                    raise payload.error()  # a later iteration goes on after it
                if isinstance(payload, pa.RecordBatch):
                    # Snapshot chunks arrive in no fixed order: only changes have a high-water mark.
                    batch = payload
                    if not item.snapshot:
                        batch, self.high_water = drop_redelivered(batch, self.high_water)
                    if partition is not None and batch.num_rows and not marker:
                        parts = partition_of(batch, self.key_columns, partition[1])
                        batch = batch.filter(pa.array(parts == partition[0]))
                    if batch.num_rows == 0:
                        continue
                    self.schema = self._schema_read = batch.schema
                    self.rows_read += batch.num_rows
                    self.bytes_read += item.nbytes
                    yield batch
                elif isinstance(payload, BaseException):
                    raise payload
                elif isinstance(payload, TableDropped):
                    self.dropped = True
                    if events:
                        yield payload
                    return
                elif events:
                    yield payload
        finally:
            self._release_current()
            with self._cond:
                self._active -= 1

    def batches(self, *, follow: bool = False, timeout: float | None = None,
                partition: tuple[int, int] | None = None) -> Iterator[pa.RecordBatch]:
        """Iterate this table's change batches (blocking; for threads and scripts).

        ``partition=(i, n)`` keeps only the rows whose key hash falls in partition ``i`` of
        ``n`` (see :mod:`cdc_notebook.stream.partition`).
        """
        return self._iterate(follow, False, timeout, partition)

    def events(self, *, follow: bool = False, timeout: float | None = None) -> Iterator[Any]:
        """Batches plus Truncate / RelationSchema / TableRenamed / WatcherError / TableDropped
        events, in stream order."""
        return self._iterate(follow, True, timeout, None)

    async def read_batches(self, *, follow: bool = False, timeout: float | None = None,
                           partition: tuple[int, int] | None = None
                           ) -> AsyncIterator[pa.RecordBatch]:
        """The async iterator of the seed's API: ``async for batch in reader.read_batches()``.

        Waiting happens in a worker thread, so the event loop never blocks on the stream.
        """
        it = self._iterate(follow, False, timeout, partition)
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await loop.run_in_executor(None, next, it, _END)
                if batch is _END:
                    return
                yield batch
        finally:
            await loop.run_in_executor(None, it.close)

    def resume_after(self, end_lsn: int, ordinal: int) -> None:
        """Restore the high-water mark of an earlier run (e.g. from a checkpoint), so changes
        it already applied are dropped when the server sends them again."""
        self.high_water = max(self.high_water, (end_lsn, ordinal))

    def close(self) -> None:
        """Stop holding WAL for this table: queued batches are dropped and acknowledged."""
        with self._cond:
            self.closed = True
            items = list(self._queue)
            self._queue.clear()
            self._mem_bytes = 0
            self._cond.notify_all()
        self._release_current()
        for item in items:
            if item.txn is not None:
                self.router.acks.consumed(item.txn)
        self._drop_spill()

    def _drop_spill(self) -> None:
        with self._cond:
            if self._spill is not None:
                self._spill.close()
                self._spill = None
                self._spill_bytes = 0

    @property
    def queued_batches(self) -> int:
        return sum(1 for i in self._queue if i.payload is not _END)

    @property
    def held_back_lsn(self) -> int | None:
        """The end LSN of the oldest batch waiting in this reader (it pins WAL), if any."""
        for item in list(self._queue):
            if item.txn is not None:
                return item.txn.end_lsn
        return None

    @property
    def spilled_bytes(self) -> int:
        return self._spill_bytes

    def __repr__(self) -> str:
        return (f"<TableReader {self.name} relid={self.relid} queued={self.queued_batches} "
                f"high_water={self.high_water}>")
