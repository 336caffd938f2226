"""The exactly-once Delta Lake sink: a :class:`~cdc_notebook.CDCStream`'s tables as Delta tables.

::

    stream = CDCStream(dsn, "public.*", slot_name="lake", acknowledge="durable")
    sink = DeltaSink(stream, "/data/lake", changelog=True)
    sink.run(once=True)            # drain to the server's current WAL position, then return

Each captured table ``schema.table`` becomes ``ROOT/<schema>.<table>``, a Delta table holding
its mirror (merged by key: inserts, updates, key moves, deletes, TRUNCATE) and, with
``changelog=True``, ``ROOT/<schema>.<table>.changes``, every change once with its ``_cdc_*``
columns. How it stays exactly-once (``docs/scale.md``):

* **micro-batches**: one reader thread per table buffers its batches; a micro-batch is cut when
  the buffer holds ``max_rows`` rows or ``max_bytes`` bytes or its oldest row waited
  ``interval`` seconds, and becomes one Delta commit per table (and one per changelog): many
  source transactions per commit. A cut falls between transactions while more of the table is
  queued; a transaction bigger than a micro-batch is split, which the markers below make safe.
* **markers**: every commit carries Delta application transactions ``<slot>:<table>`` = the
  ``_cdc_end_lsn`` and ``<slot>:<table>#ordinal`` = the ``_cdc_ordinal`` of its last change,
  atomically with the data (:mod:`cdc_notebook.sinks.writer`). On start the sink reads them back,
  resumes each reader after the oldest, and each destination skips what it already holds.
* **acknowledgement**: the stream is ``acknowledge="durable"``; the sink acknowledges the newest
  transaction end LSN below the oldest change that is buffered or still being committed
  (every table, every partition), so the slot never passes an uncommitted change.

The commits run beside the reading (a writer thread per partition, or Ray actors with
:mod:`cdc_notebook.sinks.ray`), at most ``max_in_flight`` micro-batches ahead of the
acknowledgement.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from cdc_notebook.decode.events import DecodeFailed, Truncate, WatcherError
from cdc_notebook.sinks.changes import (
    END,
    Position,
    after_position,
    fill_unchanged_toast,
    last_position,
    moved_across,
    split_partitions,
    truncate_row,
)
from cdc_notebook.sinks.writer import (
    ChangeHook,
    DeltaLocation,
    PartitionWriter,
    TableSpec,
    WriteStats,
    committed_position,
    create_tables,
    mirror_lookup,
)

log = logging.getLogger(__name__)

# A micro-batch as the writers take it: per table, (mirror rows, changelog rows or None).
Items = list[tuple[TableSpec, pa.Table, "pa.Table | None"]]


@dataclass
class Flush:
    """One micro-batch on its way to Delta."""

    id: int
    items: list[tuple[TableSpec, pa.Table]]  # per table (and schema), stream order
    min_end: int  # the oldest end LSN it carries: nothing at or past it is acknowledged
    rows: int
    created: float = field(default_factory=time.monotonic)
    # per item, the rows with values filled in for the mirror where they differ (see
    # DeltaSink._fill_moved_toast)
    mirror_items: dict[int, pa.Table] = field(default_factory=dict)


class Committer(Protocol):
    """Writes micro-batches (in submission order per partition) and says which are durable."""

    partitions: int

    def submit(self, flush: Flush) -> None: ...

    def completed(self) -> list[tuple[Flush, WriteStats]]: ...

    def in_flight(self) -> int: ...

    def close(self) -> None: ...


def split_items(items: Sequence[tuple[TableSpec, pa.Table]], partitions: int,
                mirror_items: dict[int, pa.Table] | None = None) -> list[Items]:
    """A micro-batch's rows per partition (mirror rows and changelog rows per table)."""
    out: list[Items] = [[] for _ in range(partitions)]
    for n, (spec, changes) in enumerate(items):
        if partitions == 1:
            out[0].append((spec, changes, None))
            continue
        if not spec.keys:  # no key to hash: the changelog of a keyless table is partition 0's
            out[0].append((spec, changes, None))
            continue
        mirror, changelog = split_partitions(changes, spec.keys, partitions,
                                             (mirror_items or {}).get(n))
        for i in range(partitions):
            if mirror[i].num_rows or changelog[i].num_rows:
                out[i].append((spec, mirror[i],
                               None if changelog[i] is mirror[i] else changelog[i]))
    return out


class LocalCommitter:
    """Partition writers in this process, one thread each (delta-rs releases the GIL while it
    writes, so partitions are written in parallel)."""

    def __init__(self, location: DeltaLocation, slot: str, *, partitions: int = 1,
                 changelog: bool = False, on_changes: ChangeHook | None = None):
        self.partitions = partitions
        self.writers = [PartitionWriter(location, slot, partition=i, partitions=partitions,
                                        changelog=changelog, on_changes=on_changes)
                        for i in range(partitions)]
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix=f"cdc-sink-p{i}")
                      for i in range(partitions)]
        self._pending: list[tuple[Flush, list[Future[WriteStats]]]] = []

    def submit(self, flush: Flush) -> None:
        parts = split_items(flush.items, self.partitions, flush.mirror_items)
        futures = [pool.submit(writer.apply_all, part)
                   for pool, writer, part in zip(self.pools, self.writers, parts, strict=True)]
        self._pending.append((flush, futures))

    def completed(self) -> list[tuple[Flush, WriteStats]]:
        done, left = [], []
        for flush, futures in self._pending:
            if all(f.done() for f in futures):
                total = WriteStats()
                for f in futures:
                    total.add(f.result())  # raises the writer's error
                done.append((flush, total))
            else:
                left.append((flush, futures))
        self._pending = left
        return done

    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)


@dataclass
class SinkProgress:
    """What the sink has done, for a progress line or a widget."""

    elapsed: float
    changes: int  # change rows read from the stream
    committed: int  # change rows durably in Delta
    rate: float  # committed rows per second since the start
    recent_rate: float  # over the last progress interval
    mirror_commits: int
    changelog_commits: int
    acknowledged_lsn: int
    buffered: int
    in_flight: int
    tables: int
    partitions: int
    skipped: int = 0
    unresolved_toast: int = 0
    lag_bytes: int | None = None
    hosts: tuple[str, ...] = ()
    note: str = ""

    @property
    def commits(self) -> int:
        return self.mirror_commits + self.changelog_commits

    def line(self) -> str:
        from cdc_notebook.connection.lsn import format_lsn
        from cdc_notebook.units import format_bytes

        lag = "" if self.lag_bytes is None else f" | lag {format_bytes(self.lag_bytes)}"
        extra = f" | {self.note}" if self.note else ""
        return (f"{self.elapsed:7.1f} s | {self.committed:,} changes committed "
                f"({self.recent_rate:,.0f}/s now, {self.rate:,.0f}/s overall) | "
                f"{self.commits} commits | acked {format_lsn(self.acknowledged_lsn)}{lag} | "
                f"buffered {self.buffered:,} | in flight {self.in_flight}{extra}")


class _Table:
    """One captured table on the reading side."""

    def __init__(self, spec: TableSpec, reader: Any):
        self.spec = spec
        self.reader = reader
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0
        self.nbytes = 0
        self.first_at: float | None = None
        self.schema: pa.Schema | None = None
        self.last: Position = (0, 0)  # the newest change taken (drops what comes again)
        self.thread: threading.Thread | None = None


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _end_of(batch: pa.RecordBatch) -> int:
    value = batch.column(END)[0].as_py()
    return int(value or 0)


def _spec_for(reader: Any, label: str) -> TableSpec:
    schema = getattr(reader, "schema_name", None)
    table = getattr(reader, "table_name", None)
    if not schema or not table or schema == label:
        schema, _, table = label.partition(".")
    return TableSpec.of(label, schema, table, tuple(getattr(reader, "key_columns", ()) or ()),
                        int(getattr(reader, "relid", 0) or 0))


class DeltaSink:
    """A stream's tables into Delta Lake, exactly once (module docstring).

    ``stream``: a :class:`~cdc_notebook.CDCStream` on a permanent slot (it is switched to
    ``acknowledge="durable"``; pass a fresh one). ``target``: a directory or a deltalake URI.
    ``partitions``: key-hash partitions, each written by its own writer (threads here, Ray
    actors with ``ray=``: ``"local"`` or a cluster address, see :mod:`cdc_notebook.sinks.ray`).
    ``on_changes(table, partition, rows)``: user code run on each partition's new change rows
    before they are written (where the partition is written: on the actor with Ray).
    """

    def __init__(self, stream: Any, target: str | os.PathLike[str], *, changelog: bool = False,
                 partitions: int = 1, ray: str | None = None, max_rows: int = 250_000,
                 max_bytes: int = 128 << 20, interval: float = 2.0, max_in_flight: int = 2,
                 on_changes: ChangeHook | None = None,
                 storage_options: dict[str, str] | None = None,
                 ray_options: dict[str, Any] | None = None):
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if getattr(stream, "temporary", False):
            from cdc_notebook.errors import CDCError

            raise CDCError("a sink needs a permanent slot: a temporary one is gone with its "
                           "connection, and with it what was not yet committed",
                           hint="create the stream with slot_name=... and temporary=False")
        stream.acknowledge_durable_only()
        self.stream = stream
        self.location = DeltaLocation(target, storage_options)
        self.slot = stream.slot.slot_name
        self.changelog = changelog
        self.partitions = partitions
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.interval = interval
        self.max_in_flight = max_in_flight
        self.committer: Committer
        if ray is not None:
            from cdc_notebook.sinks.ray import RayCommitter

            self.committer = RayCommitter(self.location, self.slot, partitions=partitions,
                                          changelog=changelog, on_changes=on_changes,
                                          address=ray, **(ray_options or {}))
        else:
            self.committer = LocalCommitter(self.location, self.slot, partitions=partitions,
                                            changelog=changelog, on_changes=on_changes)
        self._lock = threading.Condition()
        self._tables: dict[str, _Table] = {}
        self._ends: list[int] = []  # distinct end LSNs seen and not yet acknowledged, sorted
        self._in_flight: dict[int, Flush] = {}
        self._next_flush = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.acknowledged = 0
        self.changes = 0
        self.committed = 0
        self.stats = WriteStats()
        self.hosts: set[str] = set()
        self.notes: list[str] = []
        self.started_at = time.monotonic()
        self.resumed: dict[str, Position] = {}
        self.error: BaseException | None = None  # start()'s failure
        self.report: SinkProgress | None = None  # start()'s final progress
        self._thread: threading.Thread | None = None

    # ---- set-up

    def _create_tables(self, specs: list[TableSpec]) -> None:
        """Empty Delta tables for captured tables that have none yet (from the catalog)."""
        from cdc_notebook.connection.conninfo import connect
        from cdc_notebook.decode.typespec import change_batch_schema, relation_fields

        missing = [s for s in specs if s.relid and (
            (s.keys and self.location.open(self.location.uri(s)) is None)
            or (self.changelog and self.location.open(self.location.uri(s, changelog=True))
                is None))]
        if not missing:
            return
        with connect(self.stream.conninfo) as conn:
            for spec in missing:
                schema = change_batch_schema(relation_fields(conn, spec.relid))
                create_tables(self.location, self.slot, spec, schema,
                              partitions=self.partitions, changelog=self.changelog)

    def _adopt_readers(self) -> None:
        new: list[TableSpec] = []
        for label, reader in list(self.stream.readers.items()):
            key = str(getattr(reader, "relid", 0) or label)
            if key in self._tables:
                continue
            spec = _spec_for(reader, label)
            position = committed_position(self.location, self.slot, spec,
                                          partitions=self.partitions, changelog=self.changelog)
            if position > (0, 0):
                reader.resume_after(*position)
            self.resumed[label] = position
            if not spec.keys and not self.changelog:
                self.notes.append(f"{label} has no key: no mirror (its changes need --changelog)")
            new.append(spec)
            table = _Table(spec, reader)
            self._tables[key] = table
            table.thread = threading.Thread(target=self._pull, args=(table,),
                                            name=f"cdc-sink-{label}", daemon=True)
        if new:
            self._create_tables(new)
        for table in self._tables.values():
            if table.thread is not None and not table.thread.is_alive() and \
                    table.thread.ident is None:
                table.thread.start()

    # ---- the reading side (one thread per table)

    def _buffered(self) -> tuple[int, int]:
        return (sum(t.rows for t in self._tables.values()),
                sum(t.nbytes for t in self._tables.values()))

    def _pull(self, table: _Table) -> None:
        reader = table.reader
        try:
            while not self._stop.is_set():
                try:
                    for event in reader.events(follow=True, timeout=0.5):
                        self._take(table, event)
                        self._wait_for_room()
                        if self._stop.is_set():
                            return
                    else:
                        return  # the reader ended: closed, or its table was dropped
                except TimeoutError:
                    continue
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            with self._lock:
                self._error = self._error or exc
                self._lock.notify_all()

    def _wait_for_room(self) -> None:
        with self._lock:
            while not self._stop.is_set() and self._error is None:
                rows, nbytes = self._buffered()
                if rows < self.max_rows and nbytes < self.max_bytes:
                    return
                self._lock.wait(0.2)

    def _take(self, table: _Table, event: Any) -> None:
        if isinstance(event, pa.RecordBatch):
            if event.num_rows:
                self._append(table, event)
        elif isinstance(event, Truncate):
            schema = table.schema or getattr(table.reader, "schema", None)
            if schema is None:
                from cdc_notebook.decode.typespec import change_batch_schema

                schema = change_batch_schema([])
            end = int(getattr(event, "end_lsn", 0) or 0) or int(event.lsn)
            row = truncate_row(schema, lsn=int(event.lsn), end_lsn=end,
                               ordinal=int(getattr(event, "ordinal", 0) or 0),
                               commit_lsn=int(getattr(event, "commit_lsn", 0) or 0),
                               commit_ts=int(getattr(event, "commit_ts", 0) or 0),
                               xid=int(event.xid))
            self._append(table, row)
        elif isinstance(event, DecodeFailed):
            raise event.error()
        elif isinstance(event, WatcherError):
            with self._lock:
                self.notes.append(str(getattr(event, "message", event)))

    def _append(self, table: _Table, batch: pa.RecordBatch) -> None:
        # Drop what was taken already: a TRUNCATE that comes both as an event and as a marker
        # row, one sent again after a reconnect or resumed past (the reader's high-water mark
        # covers batches, not events).
        batch = after_position(batch, max(table.last, self.resumed.get(table.spec.label,
                                                                       (0, 0))))
        if batch.num_rows == 0:
            return
        end = _end_of(batch)
        with self._lock:
            table.last = last_position(batch)
            table.batches.append(batch)
            table.rows += batch.num_rows
            table.nbytes += batch.nbytes
            table.schema = batch.schema
            if table.first_at is None:
                table.first_at = time.monotonic()
            i = bisect.bisect_left(self._ends, end)
            if i == len(self._ends) or self._ends[i] != end:
                self._ends.insert(i, end)
            self.changes += batch.num_rows

    # ---- micro-batches

    def _due(self, final: bool) -> bool:
        rows, nbytes = self._buffered()
        if not rows:
            return False
        if final or rows >= self.max_rows or nbytes >= self.max_bytes:
            return True
        oldest = min((t.first_at for t in self._tables.values() if t.first_at is not None),
                     default=None)
        return oldest is not None and time.monotonic() - oldest >= self.interval

    def _cut(self, final: bool) -> Flush | None:
        """Take the buffered batches as one micro-batch (under the lock)."""
        items: list[tuple[TableSpec, pa.Table]] = []
        min_end: int | None = None
        rows = 0
        for table in self._tables.values():
            batches = table.batches
            if not batches:
                continue
            cut = len(batches)
            if not final and table.reader.queued_batches > 0:
                # More of the table is queued: the last transaction may go on there; it waits
                # for the next micro-batch (unless it alone is a whole micro-batch).
                last = _end_of(batches[-1])
                while cut > 0 and _end_of(batches[cut - 1]) == last:
                    cut -= 1
                if cut == 0:
                    if table.rows < self.max_rows:
                        continue
                    cut = len(batches)
            taken, kept = batches[:cut], batches[cut:]
            table.batches = kept
            table.rows = sum(b.num_rows for b in kept)
            table.nbytes = sum(b.nbytes for b in kept)
            table.first_at = time.monotonic() if kept else None
            min_end = min(min_end if min_end is not None else 1 << 64, _end_of(taken[0]))
            group: list[pa.RecordBatch] = []
            for batch in taken:
                if group and batch.schema != group[0].schema:
                    items.append((table.spec, self._table_of(group)))
                    group = []
                group.append(batch)
            items.append((table.spec, self._table_of(group)))
            rows += sum(b.num_rows for b in taken)
        if not items or min_end is None:
            return None
        flush = Flush(self._next_flush, items, min_end, rows)
        self._next_flush += 1
        self._lock.notify_all()  # room for the readers again
        return flush

    @staticmethod
    def _table_of(batches: list[pa.RecordBatch]) -> pa.Table:
        return pa.Table.from_batches(batches)

    # ---- acknowledgement

    def _acknowledge(self) -> None:
        """Acknowledge the newest end LSN below the oldest change not yet durable."""
        acks = self.stream.router.acks
        consumed = int(acks.consumed_lsn)
        with self._lock:
            pending = [_end_of(t.batches[0]) for t in self._tables.values() if t.batches]
            pending += [f.min_end for f in self._in_flight.values()]
            if not pending:
                lsn = consumed
            else:
                i = bisect.bisect_left(self._ends, min(pending))
                lsn = self._ends[i - 1] if i else 0
            drop = bisect.bisect_left(self._ends, lsn)
            del self._ends[:drop]
        if lsn > self.acknowledged:
            self.stream.acknowledge(lsn)
            self.acknowledged = lsn

    def _collect(self) -> None:
        try:
            done = self.committer.completed()
        except BaseException as exc:
            self._error = self._error or exc  # a commit failed: nothing more is acknowledged
            raise
        for flush, stats in done:
            self._in_flight.pop(flush.id, None)
            self.stats.add(stats)
            self.committed += flush.rows
            if stats.host:
                self.hosts.add(stats.host)

    # ---- running

    def start(self, **run_options: Any) -> DeltaSink:
        """Run in a background thread (a notebook's cells keep running): :meth:`stop` ends it,
        :meth:`join` waits for it; a failure is kept in ``error`` and raised by ``join``."""
        def target() -> None:
            try:
                self.report = self.run(**run_options)
            except BaseException as exc:  # noqa: BLE001 - kept for join() and the widgets
                self.error = exc

        self._thread = threading.Thread(target=target, name="cdc-sink", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> SinkProgress | None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.report

    def stop(self) -> None:
        """Stop after the commits in progress (and one of what is buffered): ``run`` returns."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def run(self, *, once: bool = False, progress: Callable[[SinkProgress], None] | None = None,
            progress_interval: float = 1.0, timeout: float | None = None) -> SinkProgress:
        """Run until :meth:`stop` (or, with ``once``, until everything up to the server's WAL
        position at the start is committed). Returns the final progress."""
        self.stream.start()
        self.started_at = time.monotonic()
        self._adopt_readers()
        target = self.stream.current_wal_lsn() if once else None
        last_report = time.monotonic()
        last_committed = 0
        interrupted: BaseException | None = None
        settled = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    if self._error is not None:
                        raise self._error
                    self._adopt_readers()
                    self._collect()
                    self._acknowledge()
                    stopping = self._stop.is_set()
                    caught_up = False
                    if target is not None:
                        caught_up = self._caught_up(target)
                        settled = settled + 1 if caught_up else 0
                    final = stopping or settled >= 1
                    if self.committer.in_flight() < self.max_in_flight:
                        with self._lock:
                            flush = self._cut(final) if self._due(final) else None
                        if flush is not None:
                            self._fill_moved_toast(flush)
                            self._in_flight[flush.id] = flush
                            self.committer.submit(flush)
                    now = time.monotonic()
                    if progress is not None and now - last_report >= progress_interval:
                        report = self.progress(recent=(self.committed - last_committed)
                                               / max(1e-9, now - last_report))
                        last_committed, last_report = self.committed, now
                        progress(report)
                    idle = not self._in_flight and not self._buffered()[0]
                    if idle and (stopping or (target is not None and settled >= 2)):
                        break
                    if deadline is not None and now > deadline:
                        raise TimeoutError(f"the sink did not finish within {timeout} s")
                    with self._lock:
                        self._lock.wait(0.02)
                except KeyboardInterrupt as exc:
                    if interrupted is not None:
                        raise
                    interrupted = exc
                    self.stop()
        finally:
            self._stop.set()
            with self._lock:
                self._lock.notify_all()
            for table in self._tables.values():
                if table.thread is not None:
                    table.thread.join(5)
            try:
                if self._error is None:
                    self._drain()
            finally:
                self.committer.close()
        report = self.progress()
        if progress is not None:
            progress(report)
        if interrupted is not None:
            raise interrupted
        return report

    def _drain(self, timeout: float = 300.0) -> None:
        """Wait for the micro-batches being committed, and acknowledge them."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.02)
        self._collect()
        self._acknowledge()

    def _fill_moved_toast(self, flush: Flush) -> None:
        """Keys that moved to another partition with unchanged TOAST values: their old rows
        are in other partitions, which are written concurrently. Wait until every earlier
        micro-batch is committed, then read those values from the mirror here."""
        if self.partitions == 1:
            return
        todo = [(n, spec, changes) for n, (spec, changes) in enumerate(flush.items)
                if spec.keys and moved_across(changes, spec.keys, self.partitions).any()]
        if not todo:
            return
        self._drain()
        for n, spec, changes in todo:
            rows = moved_across(changes, spec.keys, self.partitions)
            mirror = self.location.open(self.location.uri(spec))
            filled, unresolved = fill_unchanged_toast(
                changes, spec.keys, rows, mirror_lookup(_constant(mirror)))
            flush.mirror_items[n] = filled
            self.stats.unresolved_toast += unresolved

    def _caught_up(self, target: int) -> bool:
        router = self.stream.router
        if not router.caught_up(target):
            router.request_position()
            return False
        return all(t.reader.queued_batches == 0 for t in self._tables.values())

    def progress(self, recent: float | None = None) -> SinkProgress:
        elapsed = time.monotonic() - self.started_at
        rows, _ = self._buffered()
        lag = None
        try:
            lag = max(0, int(self.stream.current_wal_lsn()) - self.acknowledged)
        except Exception:  # noqa: BLE001 - progress never fails the sink
            pass
        rate = self.committed / max(1e-9, elapsed)
        return SinkProgress(
            elapsed=elapsed, changes=self.changes, committed=self.committed, rate=rate,
            recent_rate=rate if recent is None else recent,
            mirror_commits=self.stats.mirror_commits,
            changelog_commits=self.stats.changelog_commits, acknowledged_lsn=self.acknowledged,
            buffered=rows, in_flight=len(self._in_flight), tables=len(self._tables),
            partitions=self.partitions, skipped=self.stats.skipped,
            unresolved_toast=self.stats.unresolved_toast, lag_bytes=lag,
            hosts=tuple(sorted(self.hosts)), note="; ".join(dict.fromkeys(self.notes)))


__all__ = ["Committer", "DeltaSink", "Flush", "LocalCommitter", "SinkProgress", "split_items"]
