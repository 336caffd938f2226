"""The changes of one table, in commit order: a bounded queue fed by the router's thread,
spilled to a private temporary file past its memory bound while nobody reads it, consumed from
threads (``batches()``) or asyncio (``read_batches()``); at-least-once delivery made exactly-once
per consumer by the high-water mark ``(end_lsn, ordinal)``.

Consumers read the queue through *cursors*: one for the whole table, or one per key-hash
partition (``partition=(i, n)``), so N consumers of N partitions run in parallel and none sees
another's rows. An item leaves the queue, and its transaction may be acknowledged, only once
every cursor has read it and its consumer asked for the next one (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import collections
import logging
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
from cdc_notebook.errors import CDCError
from cdc_notebook.stream.acks import Transaction
from cdc_notebook.stream.delivery import drop_redelivered
from cdc_notebook.stream.markers import truncate_marker
from cdc_notebook.stream.partition import rows_of_partition

if TYPE_CHECKING:
    from cdc_notebook.stream.router import ChangeRouter

log = logging.getLogger(__name__)

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
    # A joining table's item from before its low watermark: the snapshot holds its effect, so
    # it goes when the snapshot rows come (kept when there is no snapshot: the table was
    # dropped first). Only ever in the held part of the queue (stream/joins.py).
    provisional: bool = False


Partition = tuple[int, int] | None  # (index, count), or None for the whole table


class _Cursor:
    """Where one consumer group (the whole table, or one partition) has read the queue to."""

    __slots__ = ("partition", "pos", "held", "active", "high_water", "schema_read")

    def __init__(self, partition: Partition, pos: int, high_water: tuple[int, int]):
        self.partition = partition
        self.pos = pos  # absolute number of the next item to read
        self.held: dict[int, int] = {}  # consumer -> number of the item it was given last
        self.active = 0  # consumers iterating now
        self.high_water = high_water
        self.schema_read: pa.Schema | None = None  # the schema in force where it has read to

    @property
    def done(self) -> int:
        """Items before this number are finished for this cursor."""
        return min([self.pos, *self.held.values()])


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
        self._resume_mark: tuple[int, int] = (0, 0)  # resume_after(): for every cursor
        self.closed = False
        self.dropped = False
        self.rows_read = 0
        self.bytes_read = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[QueuedItem] = collections.deque()
        self._base = 0  # absolute number of the item at the head of the queue
        # A joining table's changes from its low watermark on wait here (by number) until its
        # snapshot rows are put before them (stream/joins.py).
        self._hold_at: int | None = None
        self._cursors: dict[Partition, _Cursor] = {}
        self._consumers = 0  # numbers handed to consumers (their held items are keyed by it)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._mem_bytes = 0
        self._spill: Any = None
        self.spill_error: str | None = None  # why the reader could not spill, if it could not
        self._spill_bytes = 0
        self._spill_end = 0

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
            # Backpressure while every consumer group is reading (it will make room); a group
            # nobody reads (an unread reader, a partition without its consumer) would never
            # make room: spill instead.
            # (Never while a join holds items back: nobody could make room until the stream
            # reads the high watermark.)
            since = time.monotonic()
            while (self._all_reading() and self._hold_at is None
                   and self._mem_bytes + item.nbytes > self.memory_limit
                   and self._queue and not stop.is_set()):
                self._cond.wait(0.2)
                self._held(item, since)
            if (not self._all_reading() or self._hold_at is not None) \
                    and self._mem_bytes + item.nbytes > self.memory_limit:
                try:
                    self._spill_item(item)
                except OSError as exc:
                    # The spill directory is full (or gone): wait for room in memory instead.
                    # Acknowledgement is held back meanwhile, so the server keeps the WAL and
                    # nothing is lost; the reader's spill_error (and the log) say why it waits.
                    self.spill_error = (f"cannot spill {self.name} to "
                                        f"{self.router.spill_dir or 'the temporary directory'}: "
                                        f"{exc}; waiting for its reader (free disk space, or "
                                        "point TMPDIR at a larger file system)")
                    log.warning("%s", self.spill_error)
                    since = time.monotonic()
                    while self._mem_bytes + item.nbytes > self.memory_limit and self._queue \
                            and not stop.is_set():
                        self._cond.wait(0.2)
                        self._held(item, since)
                    self._mem_bytes += item.nbytes
                else:
                    self.spill_error = None
            else:
                self._mem_bytes += item.nbytes
            self._queue.append(item)
            self._cond.notify_all()
            self._wake()

    def _held(self, item: QueuedItem, since: float) -> None:
        """The stream waits for room for ``item`` (since ``since``): the router keeps the
        connection alive, or drops it (its walsender is ending: ``ChangeRouter._held``); then
        ``item`` is not queued (the server sends it again) and its transaction no longer
        waits for it."""
        try:
            self.router._held(since)
        except BaseException:
            if item.txn is not None:
                self.router.acks.consumed(item.txn)
            raise

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
        """A spilled batch read back (each cursor reads it; the space is returned when the
        item leaves the queue)."""
        if item.spilled is None or self._spill is None:
            raise RuntimeError(f"internal error: {self.name}: a spilled batch without its file")
        offset, length = item.spilled
        data = os.pread(self._spill.fileno(), length, offset)
        return pa.ipc.read_record_batch(pa.py_buffer(data), item.schema)

    def _hold(self) -> None:
        """From here on, items wait for :meth:`_release_hold` (a joining table's window; a
        hold already in place stays where it is)."""
        with self._cond:
            if self._hold_at is None:
                self._hold_at = self._base + len(self._queue)

    def _release_hold(self, items: Iterator[QueuedItem], *,
                      keep_provisional: bool = False) -> None:
        """Put ``items`` (the joining table's snapshot) before what was held, then let the
        consumers read on. Items past the memory bound are spilled as they come. The held
        provisional items (from before the low watermark) go first, unless
        ``keep_provisional`` (no snapshot replaces them: they are delivered as they are)."""
        with self._cond:
            at = max(0, (self._hold_at if self._hold_at is not None else self._base
                         + len(self._queue)) - self._base)
            if not keep_provisional:
                kept: collections.deque[QueuedItem] = collections.deque()
                for index, item in enumerate(self._queue):
                    if index < at or not item.provisional:
                        kept.append(item)
                        continue
                    # never read by anyone (held): gone, as consumed
                    if item.spilled is None:
                        self._mem_bytes -= item.nbytes
                    else:
                        self._spill_bytes -= item.spilled[1]
                    if item.txn is not None:
                        self.router.acks.consumed(item.txn)
                self._queue = kept
            for item in items:
                if self.closed:
                    break
                if self._mem_bytes + item.nbytes > self.memory_limit:
                    self._spill_item(item)
                else:
                    self._mem_bytes += item.nbytes
                self._queue.insert(at, item)
                at += 1
            self._hold_at = None
            self._cond.notify_all()
            self._wake()

    def _finish(self) -> None:
        with self._cond:
            self._queue.append(QueuedItem(_END, None))
            self._cond.notify_all()
            self._wake()

    def _wake(self) -> None:
        """Wake the asyncio consumers waiting for an item (called with the lock held)."""
        for loop, future in self._waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: its consumer is gone
                pass
        self._waiters.clear()

    def _all_reading(self) -> bool:
        return bool(self._cursors) and all(c.active for c in self._cursors.values())

    # ---- the consumer side

    @property
    def high_water(self) -> tuple[int, int]:
        """The newest position delivered (to the whole-table consumer, or the furthest
        partition): redelivered changes at or below a consumer's mark are dropped."""
        with self._cond:
            marks = [c.high_water for c in self._cursors.values()]
        return max([self._resume_mark, *marks])

    def _attach(self, partition: Partition) -> tuple[_Cursor, int]:
        """A consumer joins the cursor of ``partition`` (creating the cursors on first use);
        returns the cursor and the consumer's number."""
        if partition is not None:
            index, count = partition
            if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
                raise ValueError(f"partition must be (index, count) with 0 <= index < count, "
                                 f"not {partition!r}")
        with self._cond:
            cursor = self._cursors.get(partition)
            if cursor is None:
                self._check_mode(partition)
                if partition is None:
                    self._cursors[None] = _Cursor(None, self._base, self._resume_mark)
                else:
                    # All partitions start where the queue starts: an item leaves it only
                    # once every partition has read its part.
                    for i in range(partition[1]):
                        self._cursors[(i, partition[1])] = _Cursor(
                            (i, partition[1]), self._base, self._resume_mark)
                cursor = self._cursors[partition]
            cursor.active += 1
            self._consumers += 1
            return cursor, self._consumers

    def _check_mode(self, partition: Partition) -> None:
        existing = next(iter(self._cursors), _END)
        if existing is _END:
            return
        if partition is None or existing is None:
            raise CDCError(
                f"{self.name} is read {'by partitions' if partition is None else 'whole'}, so "
                f"it cannot also be read {'whole' if partition is None else 'by partitions'}",
                hint="read a table either whole (batches()) or by partitions "
                "(batches(partition=(i, n)) with the same n everywhere)")
        if existing[1] != partition[1]:  # type: ignore[index]
            raise CDCError(
                f"{self.name} is read in {existing[1]} partitions, not {partition[1]}",  # type: ignore[index]
                hint="use the same partition count for every consumer of a table")

    def _detach(self, cursor: _Cursor, consumer: int) -> None:
        with self._cond:
            cursor.held.pop(consumer, None)
            cursor.active -= 1
            self._collect()

    def _collect(self) -> None:
        """Drop the items every cursor has finished with (lock held): they are consumed."""
        if not self._cursors:
            return
        done = min(c.done for c in self._cursors.values())
        finished: list[QueuedItem] = []
        while self._queue and self._base < done and self._queue[0].payload is not _END:
            item = self._queue.popleft()
            self._base += 1
            if item.spilled is None:
                self._mem_bytes -= item.nbytes
            else:
                self._spill_bytes -= item.spilled[1]
            finished.append(item)
        if finished:
            if self._spill is not None and self._spill_bytes == 0 and self._spill_end:
                # everything spilled was read: give the disk space back now
                os.ftruncate(self._spill.fileno(), 0)
                self._spill_end = 0
            self._cond.notify_all()
            for item in finished:
                if item.txn is not None:
                    self.router.acks.consumed(item.txn)

    def _poll(self, cursor: _Cursor, consumer: int) -> QueuedItem | None:
        """The cursor's next item (lock held), None when there is none yet, or the ``_END``
        item when the queue ended. The consumer's previous item is released."""
        if cursor.held.pop(consumer, None) is not None:
            self._collect()
        index = cursor.pos - self._base
        if index < len(self._queue) and (self._hold_at is None or cursor.pos < self._hold_at):
            item = self._queue[index]
            if item.payload is _END:
                return item
            cursor.pos += 1
            cursor.held[consumer] = cursor.pos - 1
            return item
        if self.closed or self.router.failed is not None:
            return QueuedItem(_END, None)
        return None

    def _payload(self, item: QueuedItem) -> Any:
        """The item's payload (read back from the spill file when it was spilled); read
        outside the lock: the stream thread appends meanwhile."""
        return self._unspill(item) if item.spilled is not None else item.payload

    def _next_for(self, cursor: _Cursor, consumer: int, deadline_lsn: int | None,
                  timeout: float | None) -> tuple[QueuedItem, Any] | None:
        """The next item for a thread consumer (blocking), or None at the iteration's end."""
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                got = self._poll(cursor, consumer)
                if got is not None and got.payload is _END:
                    self.router.raise_if_failed()
                    return None
                if got is not None:
                    break
                if deadline_lsn is not None and self.router.caught_up(deadline_lsn):
                    return None
                if give_up is not None and time.monotonic() > give_up:
                    raise TimeoutError(f"no change for {self.name} within {timeout} s")
                if deadline_lsn is not None:
                    self.router.request_position()
                self._cond.wait(0.05)
        return got, self._payload(got)

    def _deliver(self, cursor: _Cursor, item: QueuedItem, payload: Any, events: bool) -> Any:
        """What the consumer gets for ``item``: a batch (its partition's rows, past the
        cursor's high-water mark), an event, None (nothing for it), or ``_END`` (the table
        was dropped). Raises what the stream put in the queue as an error."""
        marker = False
        if isinstance(payload, RelationSchema):
            cursor.schema_read = payload.arrow_schema
        elif isinstance(payload, Truncate) and not events:
            # The batch API's TRUNCATE: a marker row of the table's schema in force there
            # (both plugins send the schema before a TRUNCATE: docs/reader.md).
            schema = cursor.schema_read or self.schema or change_batch_schema([])
            payload, marker = truncate_marker(schema, payload), True
        elif isinstance(payload, DecodeFailed) and not events:
            raise payload.error()  # a later iteration goes on after it
        if isinstance(payload, pa.RecordBatch):
            batch = payload
            # Snapshot chunks arrive in no fixed order: only changes have a high-water mark.
            if not item.snapshot:
                batch, cursor.high_water = drop_redelivered(batch, cursor.high_water)
            if cursor.partition is not None and batch.num_rows and not marker:
                index, count = cursor.partition
                batch = rows_of_partition(batch, self.key_columns, count, index)
            if batch.num_rows == 0:
                return None
            self.schema = cursor.schema_read = batch.schema
            self.rows_read += batch.num_rows
            self.bytes_read += item.nbytes
            return batch
        if isinstance(payload, BaseException):
            raise payload
        if isinstance(payload, TableDropped):
            self.dropped = True
            return payload if events else _END
        return payload if events else None

    def _iterate(self, follow: bool, events: bool, timeout: float | None,
                 partition: Partition) -> Generator[Any, None, None]:
        self.router.ensure_started()
        deadline = None if follow else self.router.current_wal_lsn()
        cursor, consumer = self._attach(partition)
        try:
            while True:
                got = self._next_for(cursor, consumer, deadline, timeout)
                if got is None:
                    return
                out = self._deliver(cursor, *got, events)
                if out is _END:
                    return
                if out is not None:
                    yield out
                    if isinstance(out, TableDropped):
                        return
        finally:
            self._detach(cursor, consumer)

    def batches(self, *, follow: bool = False, timeout: float | None = None,
                partition: Partition = None) -> Iterator[pa.RecordBatch]:
        """Iterate this table's change batches (blocking; for threads and scripts).

        ``partition=(i, n)`` reads partition ``i`` of ``n`` by the key's hash
        (:mod:`cdc_notebook.stream.partition`): each partition has its own cursor, so ``n``
        consumers run in parallel and each sees only its rows (a delete by its old key, a key
        moved between partitions as a delete in the old one and an update in the new one);
        a transaction is acknowledged once every partition has read its part.
        """
        return self._iterate(follow, False, timeout, partition)

    def events(self, *, follow: bool = False, timeout: float | None = None,
               partition: Partition = None) -> Iterator[Any]:
        """Batches plus Truncate / RelationSchema / TableRenamed / WatcherError / TableDropped
        events, in stream order."""
        return self._iterate(follow, True, timeout, partition)

    async def read_batches(self, *, follow: bool = False, timeout: float | None = None,
                           partition: Partition = None) -> AsyncIterator[pa.RecordBatch]:
        """The async iterator of the seed's API: ``async for batch in reader.read_batches()``.

        Waiting is done on the event loop (the stream thread wakes it), never in an executor
        thread: cancelling it (``asyncio.wait_for``, ``break``, ``aclose()``, task
        cancellation) leaves the reader usable; the batch it was given last counts as
        consumed, nothing else does.
        """
        loop = asyncio.get_running_loop()
        if not self.router.started:
            await _in_thread(self.router.ensure_started)
        self.router.raise_if_failed()
        deadline = None if follow else await _in_thread(self.router.current_wal_lsn)
        give_up = None if timeout is None else loop.time() + timeout
        cursor, consumer = self._attach(partition)
        try:
            while True:
                with self._cond:
                    got = self._poll(cursor, consumer)
                    future: asyncio.Future[None] | None = None
                    if got is None:
                        future = loop.create_future()
                        self._waiters.append((loop, future))
                if got is not None and got.payload is _END:
                    self.router.raise_if_failed()
                    return
                if got is not None:
                    out = self._deliver(cursor, got, self._payload(got), False)
                    if out is _END:
                        return
                    if out is not None:
                        yield out
                    continue
                if deadline is not None and self.router.caught_up(deadline):
                    return
                if give_up is not None and loop.time() > give_up:
                    raise TimeoutError(f"no change for {self.name} within {timeout} s")
                if deadline is not None:
                    self.router.request_position()
                if future is None:
                    raise RuntimeError("internal error: waiting without a future")
                try:
                    await asyncio.wait_for(future, 0.05)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    pass
                finally:
                    with self._cond:
                        if (loop, future) in self._waiters:
                            self._waiters.remove((loop, future))
        finally:
            self._detach(cursor, consumer)

    def resume_after(self, end_lsn: int, ordinal: int) -> None:
        """Restore the high-water mark of an earlier run (e.g. from a checkpoint), so changes
        it already applied are dropped when the server sends them again."""
        mark = (end_lsn, ordinal)
        with self._cond:
            self._resume_mark = max(self._resume_mark, mark)
            for cursor in self._cursors.values():
                cursor.high_water = max(cursor.high_water, mark)

    def close(self) -> None:
        """Stop holding WAL for this table: queued batches are dropped and acknowledged."""
        with self._cond:
            self.closed = True
            items = [i for i in self._queue if i.payload is not _END]
            self._base += len(self._queue)
            self._queue.clear()
            self._mem_bytes = 0
            for cursor in self._cursors.values():
                cursor.held.clear()
                cursor.pos = max(cursor.pos, self._base)
            self._cond.notify_all()
            self._wake()
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
        """Items no consumer group has read yet... of the slowest one (0: all read)."""
        with self._cond:
            start = min((c.pos for c in self._cursors.values()), default=self._base)
            unread = list(self._queue)[max(0, start - self._base):]
        return sum(1 for i in unread if i.payload is not _END)

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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _in_thread(fn: Any) -> Any:
    """Run a blocking call (connecting, a catalog query) in a thread of its own, not the
    event loop's shared default executor (whose threads a blocked call would hold)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_fail_future, future, exc)
        else:
            loop.call_soon_threadsafe(_set_future, future, result)

    threading.Thread(target=run, name="cdc-reader-call", daemon=True).start()
    return await future


def _set_future(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
