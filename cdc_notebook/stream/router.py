"""One replication stream fanned out to per-table readers, with safe acknowledgements.

The stream runs in one background thread (``ChangeRouter``): it reads the replication
connection without blocking any event loop, decodes events, and routes each table's batches
into that table's :class:`TableReader` queue. Readers are consumed from threads (``batches()``)
or asyncio tasks (``read_batches()``), concurrently.

Acknowledgement (``docs/reader.md``): a transaction's end LSN is reported as flushed only after
every batch of it was consumed — a batch counts as consumed when its reader asks for the next
one, or the iteration ends, or the reader is closed. With nothing in flight, the flush position
follows the server's keepalives so an idle slot pins no WAL.

Queues are bounded: while a reader is being iterated, a full queue makes the stream wait
(backpressure reaches the server; status updates keep flowing so the walsender does not time
out). A reader nobody iterates keeps its batches, spilled to disk past its memory bound, and
holds back acknowledgement (shown as WAL held back) until it is read or closed.

Delivery is at-least-once: after a crash the server may resend what was acknowledged, so each
reader drops changes at or below its high-water mark ``(end_lsn, ordinal)``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_notebook.decode.events import (
    ChangeBatch,
    LogicalMessage,
    RelationSchema,
    TableDropped,
    Truncate,
)
from cdc_notebook.stream.partition import partition_of

_END = object()  # queue marker: the stream ended (position reached, or closed)
WATERMARK_PREFIX = "cdc_notebook.watermark"


def _stamp(batch: pa.RecordBatch, end_lsn: int, first_ordinal: int) -> pa.RecordBatch:
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

    def __init__(self, join_id: str, qualified_name: str, key_columns: tuple[str, ...]):
        self.id = join_id
        self.name = qualified_name
        self.key_columns = key_columns
        self.window_open = False
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
        self.changed.update(zip(*cols))
        before = batch.column("_cdc_before")
        if before.null_count < len(before):
            old = [before.field(k).to_pylist() for k in self.key_columns]
            self.changed.update(t for t in zip(*old) if t[0] is not None)

    def surviving(self) -> list[pa.RecordBatch]:
        out = []
        for batch in self.batches:
            if self.changed and batch.num_rows:
                keys = list(zip(*[batch.column(k).to_pylist() for k in self.key_columns]))
                mask = pa.array([key not in self.changed for key in keys])
                kept = batch.filter(mask)
                self.dropped_rows += batch.num_rows - kept.num_rows
                batch = kept
            self.delivered_rows += batch.num_rows
            out.append(batch)
        return out


class Transaction:
    """Tracks one transaction's delivered-but-unconsumed batches."""

    __slots__ = ("xid", "end_lsn", "pending", "committed", "commit_ts")

    def __init__(self, xid: int, end_lsn: int, commit_ts: int = 0):
        self.xid = xid
        self.end_lsn = end_lsn
        self.commit_ts = commit_ts
        self.pending = 0
        self.committed = False


class AckTracker:
    """Computes the flush position: the newest end LSN all of whose batches are consumed."""

    def __init__(self, start_lsn: int = 0):
        self._lock = threading.Lock()
        self._open: collections.deque[Transaction] = collections.deque()
        self.flushed = start_lsn
        self.in_transaction = False
        self.received = start_lsn  # newest commit end LSN (or idle keepalive WAL end) seen

    def begin(self, xid: int, end_lsn: int, commit_ts: int) -> Transaction:
        txn = Transaction(xid, end_lsn, commit_ts)
        with self._lock:
            self._open.append(txn)
            self.in_transaction = True
        return txn

    def add(self, txn: Transaction) -> None:
        with self._lock:
            txn.pending += 1

    def consumed(self, txn: Transaction) -> None:
        with self._lock:
            txn.pending -= 1
            self._advance()

    def commit(self, txn: Transaction, end_lsn: int) -> None:
        with self._lock:
            txn.end_lsn = end_lsn
            txn.committed = True
            self.in_transaction = False
            self.received = max(self.received, end_lsn)
            self._advance()

    def abandon_open(self) -> None:
        """A connection was lost mid-transaction: it will be resent from the slot."""
        with self._lock:
            while self._open and not self._open[-1].committed:
                self._open.pop()
            self.in_transaction = False
            self._advance()

    def idle(self, wal_end: int) -> None:
        """A keepalive (or message header) says the server has sent up to ``wal_end``."""
        with self._lock:
            if not self._open and not self.in_transaction and wal_end > self.flushed:
                self.flushed = wal_end
            if not self.in_transaction:
                self.received = max(self.received, wal_end)

    def _advance(self) -> None:
        while self._open and self._open[0].committed and self._open[0].pending <= 0:
            self.flushed = max(self.flushed, self._open.popleft().end_lsn)

    @property
    def oldest_unacknowledged_commit_ts(self) -> int | None:
        with self._lock:
            return self._open[0].commit_ts if self._open else None

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._open)


@dataclass
class _Item:
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
    yields :class:`~cdc_notebook.decode.events.Truncate`, :class:`RelationSchema` and
    :class:`TableDropped` (which ends the reader).
    """

    def __init__(self, router: ChangeRouter, qualified_name: str, key_columns: tuple[str, ...],
                 memory_limit: int):
        self.router = router
        self.name = qualified_name
        self.key_columns = key_columns
        self.memory_limit = memory_limit
        self.schema: pa.Schema | None = None
        self.high_water: tuple[int, int] = (0, 0)
        self.closed = False
        self.dropped = False
        self.rows_read = 0
        self.bytes_read = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._mem_bytes = 0
        self._active = 0
        self._spill: Any = None
        self._spill_bytes = 0
        self._spill_end = 0
        self._current: _Item | None = None

    # ---- the stream side

    def _put(self, item: _Item, stop: threading.Event) -> None:
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

    def _spill_item(self, item: _Item) -> None:
        """Write the batch to this reader's spill file as one Arrow IPC message (no schema):
        the bytes received from wal2arrow as they are, or the batch serialized. Positioned
        writes and reads: the consumer thread reads while the stream thread appends."""
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="cdc_notebook-spill-", buffering=0,
                                                 dir=self.router.spill_dir)
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

    def _unspill(self, item: _Item) -> pa.RecordBatch:
        offset, length = item.spilled  # type: ignore[misc]
        data = os.pread(self._spill.fileno(), length, offset)
        with self._cond:
            self._spill_bytes -= length
        return pa.ipc.read_record_batch(pa.py_buffer(data), item.schema)

    def _finish(self) -> None:
        with self._cond:
            self._queue.append(_Item(_END, None))
            self._cond.notify_all()

    # ---- the consumer side

    def _release_current(self) -> None:
        item, self._current = self._current, None
        if item is not None and item.txn is not None:
            self.router.acks.consumed(item.txn)

    def _next_item(self, deadline_lsn: int | None, timeout: float | None) -> _Item | None:
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

    def _filter_redelivered(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Drop rows at or below the high-water mark; advance it (at-least-once → once)."""
        if batch.num_rows == 0:
            return batch
        end = batch.column("_cdc_end_lsn")
        ordinal = batch.column("_cdc_ordinal")
        hw_end, hw_ord = self.high_water
        last_end = end[-1].as_py()
        if end[0].as_py() > hw_end:
            keep = batch
        else:
            mask = pc.or_(pc.greater(end, pa.scalar(hw_end, pa.uint64())),
                          pc.and_(pc.equal(end, pa.scalar(hw_end, pa.uint64())),
                                  pc.greater(ordinal, pa.scalar(hw_ord, pa.uint64()))))
            keep = batch.filter(mask)
        if keep.num_rows:
            self.high_water = (last_end, keep.column("_cdc_ordinal")[-1].as_py())
        return keep

    def _iterate(self, follow: bool, events: bool, timeout: float | None,
                 partition: tuple[int, int] | None) -> Iterator[Any]:
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
                if isinstance(payload, pa.RecordBatch):
                    # Snapshot chunks arrive in no fixed order: only changes have a high-water mark.
                    batch = payload if item.snapshot else self._filter_redelivered(payload)
                    if partition is not None and batch.num_rows:
                        parts = partition_of(batch, self.key_columns, partition[1])
                        batch = batch.filter(pa.array(parts == partition[0]))
                    if batch.num_rows == 0:
                        continue
                    self.schema = batch.schema
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
        """Batches plus Truncate / RelationSchema / TableDropped events, in stream order."""
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
        return (f"<TableReader {self.name} queued={self.queued_batches} "
                f"high_water={self.high_water}>")


@dataclass
class StreamStats:
    """Counters of the stream, sampled by the status object."""

    events: int = 0
    rows: int = 0
    bytes: int = 0
    transactions: int = 0
    started_at: float = field(default_factory=time.monotonic)
    latencies_us: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))

    def latency_percentiles(self) -> tuple[float | None, float | None]:
        if not self.latencies_us:
            return None, None
        arr = np.fromiter(self.latencies_us, dtype=np.float64)
        return float(np.percentile(arr, 50)) / 1000.0, float(np.percentile(arr, 99)) / 1000.0


class ChangeRouter:
    """The background thread that owns the replication stream and feeds the readers.

    ``source_factory()`` returns a connected source (see :mod:`cdc_notebook.stream.cdc_stream`); the router
    calls it again to reconnect after a lost connection.
    """

    def __init__(self, source_factory: Callable[[int], Any], *,
                 current_wal_lsn: Callable[[], int], memory_limit: int = 64 << 20,
                 spill_dir: str | None = None, reconnect: bool = True,
                 max_backoff: float = 10.0, status_interval: float = 1.0,
                 table_changes: Callable[[], tuple[list[str], int]] | None = None,
                 table_check_interval: float = 2.0):
        self._source_factory = source_factory
        self._current_wal_lsn = current_wal_lsn
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.status_interval = status_interval
        self.readers: dict[str, TableReader] = {}
        self._by_relid: dict[int, TableReader] = {}
        self.acks = AckTracker()
        self.stats = StreamStats()
        self.failed: BaseException | None = None
        self.reconnects = 0
        self._source: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._want_position = threading.Event()
        self._lock = threading.Lock()
        self._txn: Transaction | None = None
        self._last_status = 0.0
        self._sent_flush = -1
        self._table_changes = table_changes  # dropped tables (and, in the reader, joining ones)
        self._table_check_interval = table_check_interval
        self._watcher: threading.Thread | None = None
        self._drops_lock = threading.Lock()
        self._pending_drops: list[tuple[str, int]] = []
        self.joins: dict[str, TableJoin] = {}
        self._joins_at_commit: list[TableJoin] = []

    # ---- set-up

    def add_reader(self, qualified_name: str, key_columns: tuple[str, ...] = ()) -> TableReader:
        reader = TableReader(self, qualified_name, key_columns,
                             memory_limit=max(1 << 20, self.memory_limit // 4))
        self.readers[qualified_name] = reader
        return reader

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._source = self._source_factory(0)
                self._thread = threading.Thread(target=self._run, name="cdc-stream", daemon=True)
                self._thread.start()
                if self._table_changes is not None:
                    self._watcher = threading.Thread(target=self._watch_tables,
                                                     name="cdc-watch", daemon=True)
                    self._watcher.start()
        self.raise_if_failed()

    def current_wal_lsn(self) -> int:
        return self._current_wal_lsn()

    def caught_up(self, lsn: int) -> bool:
        return self.acks.received >= lsn and not self.acks.in_transaction

    def request_position(self) -> None:
        self._want_position.set()

    def raise_if_failed(self) -> None:
        if self.failed is not None:
            raise self.failed

    # ---- the thread

    def _keep_alive(self) -> None:
        """Send a status update if one is due (also while waiting on a full queue)."""
        now = time.monotonic()
        flushed = self.acks.flushed
        # A reader waiting for the stream's position asks the server at once (a keepalive
        # answers), but not more than every 10 ms.
        asked = self._want_position.is_set() and now - self._last_status >= 0.01
        if self._source is not None and (now - self._last_status >= self.status_interval
                                         or flushed != self._sent_flush or asked):
            try:
                self._source.send_feedback(flushed, reply=self._want_position.is_set())
            except Exception:  # noqa: BLE001 - the read loop sees and handles the failure
                return
            self._want_position.clear()
            self._sent_flush = flushed
            self._last_status = now

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._pump()
                return
            except BaseException as exc:  # noqa: BLE001
                if self._stop.is_set():
                    return
                if not self.reconnect or not getattr(exc, "retryable", False):
                    self._fail(exc)
                    return
                self.acks.abandon_open()
                self._txn = None
                self.reconnects += 1
                try:
                    self._source.close()
                except Exception:  # noqa: BLE001
                    pass
                self._source = None
                while not self._stop.is_set():
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    try:
                        self._source = self._source_factory(self.acks.flushed)
                        backoff = 0.5
                        break
                    except BaseException as again:  # noqa: BLE001
                        if not getattr(again, "retryable", False):
                            self._fail(again)
                            return

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        for reader in self.readers.values():
            reader._finish()

    def _pump(self) -> None:
        from cdc_notebook.decode.events import Begin, Commit

        source = self._source
        while not self._stop.is_set():
            self._keep_alive()
            self._check_tables()
            for event, wal_end in source.read(timeout=0.1):
                if event is None:  # a keepalive or an empty message
                    self.acks.idle(wal_end)
                    continue
                if isinstance(event, Begin):
                    self._txn = self.acks.begin(event.xid, event.end_lsn, event.commit_ts)
                elif isinstance(event, Commit):
                    if self._joins_at_commit:
                        self._deliver_joins(event.end_lsn)
                    if self._txn is not None:
                        self.acks.commit(self._txn, event.end_lsn)
                        self.stats.transactions += 1
                        now_us = time.time_ns() // 1000
                        self.stats.latencies_us.append(max(0, now_us - event.commit_ts))
                    self._txn = None
                elif isinstance(event, ChangeBatch):
                    self._route_batch(event)
                elif isinstance(event, RelationSchema):
                    reader = self.readers.get(event.qualified_name)
                    if reader is not None:
                        self._by_relid[event.relid] = reader
                        reader.schema = event.arrow_schema
                        reader._put(_Item(event, None), self._stop)
                elif isinstance(event, Truncate):
                    for name in event.tables:
                        reader = self.readers.get(name)
                        if reader is not None:
                            if self._txn is not None:
                                self.acks.add(self._txn)
                            reader._put(_Item(event, self._txn), self._stop)
                elif isinstance(event, LogicalMessage):
                    if event.prefix == WATERMARK_PREFIX:
                        self._watermark(event.content.decode())
                elif isinstance(event, TableDropped):
                    reader = self.readers.get(event.qualified_name)
                    if reader is not None:
                        reader._put(_Item(event, None), self._stop)
                self.stats.events += 1

    def _watch_tables(self) -> None:
        """The watcher thread: asks the catalog about the stream's tables every
        ``table_check_interval`` seconds. Its round trips stay off the stream thread, which
        would otherwise stop reading (and delay every change) while they run."""
        while not self._stop.wait(self._table_check_interval) and self.failed is None:
            try:
                gone, seen_at = self._table_changes()  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - the catalog connection is down: try next time
                continue
            if gone:
                with self._drops_lock:
                    self._pending_drops += [(name, seen_at) for name in gone]

    def _check_tables(self) -> None:
        """End the readers of dropped tables, after every change before the drop arrived."""
        if not self._pending_drops:
            return
        with self._drops_lock:
            pending, self._pending_drops = self._pending_drops, []
        self.request_position()
        still = []
        for name, lsn in pending:
            if self.caught_up(lsn):
                self.drop_table(name)
            else:
                still.append((name, lsn))
        with self._drops_lock:
            self._pending_drops[:0] = still

    def _watermark(self, content: str) -> None:
        kind, _, join_id = content.partition(" ")
        join = self.joins.get(join_id)
        if join is None:
            return  # another stream's (or an earlier run's) watermark
        if kind == "low":
            join.window_open = True
        elif kind == "high":
            join.window_open = False
            # Delivered at the watermark's commit, stamped with its end LSN: after every change
            # of the window, before every later one.
            self._joins_at_commit.append(join)

    def _deliver_joins(self, end_lsn: int) -> None:
        for join in self._joins_at_commit:
            # The rows were read before the high watermark was written: they are here.
            if not join.ready.wait(60) or join.error is not None:
                join.error = join.error or TimeoutError(
                    f"snapshot of {join.name} not ready at its watermark")
                reader = self.readers.get(join.name)
                if reader is not None:  # that reader fails; the others go on
                    reader._put(_Item(join.error, None), self._stop)
            else:
                ordinal = 0
                for batch in join.surviving():
                    self.put_snapshot(join.name, _stamp(batch, end_lsn, ordinal))
                    ordinal += batch.num_rows
            join.batches = []
            self.joins.pop(join.id, None)
            join.done.set()
        self._joins_at_commit = []

    def _route_batch(self, event: ChangeBatch) -> None:
        for join in list(self.joins.values()):  # the watcher thread adds joins
            if join.window_open and join.name == event.qualified_name:
                join.record(event.batch)
        reader = self.readers.get(event.qualified_name)
        batch = event.batch
        self.stats.rows += batch.num_rows
        # What the batch holds in memory: the message it was read from (wal2arrow), or its
        # buffers. (RecordBatch.nbytes walks every array's ranges: ~50 µs for one row.)
        message = event.ipc_message
        nbytes = message.size if message is not None else batch.get_total_buffer_size()
        self.stats.bytes += nbytes
        if reader is None or reader.closed:
            return
        txn = self._txn
        if txn is not None:
            self.acks.add(txn)
        end_lsn = txn.end_lsn if txn is not None else 0
        reader._put(_Item(batch, txn, nbytes, end_lsn, ipc=message), self._stop)

    def put_snapshot(self, qualified_name: str, batch: pa.RecordBatch) -> None:
        """Deliver a batch of the initial snapshot (before the stream starts)."""
        reader = self.readers.get(qualified_name)
        if reader is not None and batch.num_rows:
            self.stats.rows += batch.num_rows
            nbytes = batch.get_total_buffer_size()
            self.stats.bytes += nbytes
            reader._put(_Item(batch, None, nbytes, snapshot=True), self._stop)

    def drop_table(self, qualified_name: str, relid: int = 0) -> None:
        """End one reader with a TableDropped event (the table went away); the others go on."""
        reader = self.readers.get(qualified_name)
        if reader is not None:
            reader._put(_Item(TableDropped(qualified_name, relid), None), self._stop)

    def close(self) -> None:
        self._stop.set()
        for reader in self.readers.values():
            with reader._cond:
                reader._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self._source is not None:
            try:
                self._source.send_feedback(self.acks.flushed, reply=False)
            except Exception:  # noqa: BLE001
                pass
            self._source.close()
            self._source = None
        for reader in self.readers.values():
            reader._finish()
            reader._drop_spill()
