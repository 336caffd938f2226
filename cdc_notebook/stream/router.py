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
out). While it waits the stream reads nothing, so what the server says last before it ends a
walsender (terminated, its slot invalidated) would wait behind the data, and the walsender with
it, for as long as the consumer holds its batch: a stream held back that long looks at its
walsender (``walsender_state``) and lets go of a connection whose walsender is ending, then
reconnects as after any lost connection. A reader nobody iterates keeps its batches, spilled to disk past its memory bound, and
holds back acknowledgement (shown as WAL held back) until it is read or closed.

Delivery is at-least-once: after a crash the server may resend what was acknowledged, so each
reader drops changes at or below its high-water mark ``(end_lsn, ordinal)``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from cdc_notebook.decode.events import (
    ChangeBatch,
    DecodeFailed,
    Keepalive,
    LogicalMessage,
    RelationSchema,
    TableDropped,
    TableRenamed,
    Truncate,
    WatcherError,
)
from cdc_notebook.errors import CDCError, StreamLost, TableDroppedDuringSnapshot, is_transient
from cdc_notebook.stream.acks import AckTracker, Transaction
from cdc_notebook.stream.joins import WATERMARK_PREFIX, TableJoin, stamp_at_watermark
from cdc_notebook.stream.names import table_label
from cdc_notebook.stream.reader import QueuedItem, TableReader

log = logging.getLogger(__name__)


@dataclass
class CatalogChanges:
    """What one look at the catalog found about the stream's tables (by OID), and the WAL
    position it was seen at: every change before it was written before the look."""

    lsn: int
    gone: list[int] = field(default_factory=list)  # tables dropped
    renamed: list[tuple[int, str, str]] = field(default_factory=list)  # (relid, schema, table)
    problems: list[WatcherError] = field(default_factory=list)  # tables that cannot join
    fatal: CDCError | None = None  # ends the stream (its publication is gone)


@dataclass
class StreamStats:
    """Counters of the stream, sampled by the status object."""

    events: int = 0
    rows: int = 0
    bytes: int = 0
    transactions: int = 0
    replies_requested: int = 0  # keepalives in which the server asked for an answer at once
    started_at: float = field(default_factory=time.monotonic)
    latencies_us: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=4096))

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
                 table_changes: Callable[[], CatalogChanges] | None = None,
                 table_check_interval: float = 2.0,
                 walsender_state: Callable[[int], WalsenderState] | None = None,
                 hold_check_interval: float = 2.0):
        self._source_factory = source_factory
        self._current_wal_lsn = current_wal_lsn
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.status_interval = status_interval
        # Readers by their table's OID: a table is its identity, its name a label that
        # follows renames (``stream.readers`` looks them up by name: names.ReaderMap).
        self.readers: dict[int, TableReader] = {}
        self.acks = AckTracker()
        self.stats = StreamStats()
        self.failed: BaseException | None = None
        self.reconnects = 0
        self.restarts = 0  # restarts of the source in text mode (pgoutput binary -> text)
        self.last_error: BaseException | None = None  # what the last reconnect recovered from
        self._source: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._want_position = threading.Event()
        self._lock = threading.Lock()
        self._txn: Transaction | None = None
        self._last_status = 0.0
        self._sent_flush = -1
        self._table_changes = table_changes  # dropped and renamed tables (and joining ones)
        self._table_check_interval = table_check_interval
        self._watcher: threading.Thread | None = None
        self._drops_lock = threading.Lock()
        self._pending_drops: list[tuple[int, int]] = []  # (relid, seen at LSN)
        self._pending_renames: list[tuple[int, str, str, int]] = []  # (relid, schema, table, LSN)
        self._pending_problems: list[WatcherError] = []  # to post to the readers
        self._pending_fatal: CDCError | None = None  # raised in the stream thread
        # The watcher's problems: the current ones (by message) and failed checks so far.
        self.watcher_problems: dict[str, WatcherError] = {}
        self.watcher_failures = 0
        self.joins: dict[str, TableJoin] = {}
        self._joins_at_commit: list[TableJoin] = []
        self.messages: TableReader | None = None  # logical messages, once asked for
        # Held back (backpressure): is the walsender ending? (see the module's docstring)
        self._walsender_state = walsender_state
        self.hold_check_interval = hold_check_interval
        self._pumping = False
        self._hold_check: threading.Thread | None = None
        self._hold_checked = 0.0
        self._hold_suspect: tuple[int, int] = (0, 0)  # (walsender pid, times seen ending)
        self._let_go: tuple[int, str] | None = None  # (walsender pid, why)
        self.let_go = 0  # connections dropped because their walsender was ending
        self._relations: dict[int, RelationSchema] = {}  # the newest schema of each table

    # ---- set-up

    def add_reader(self, relid: int, schema: str, table: str, key_columns: tuple[str, ...] = (),
                   *, label_lsn: int = 0, joining: bool = False) -> TableReader:
        """A reader for the table with OID ``relid`` (now called ``schema.table``, seen so at
        WAL position ``label_lsn``). A ``joining`` table's reader holds everything until its
        snapshot is delivered (stream/joins.py)."""
        reader = TableReader(self, table_label(schema, table), key_columns,
                             memory_limit=max(1 << 20, self.memory_limit // 4), relid=relid,
                             schema_name=schema, table_name=table, label_lsn=label_lsn)
        if joining:
            reader._hold()
        self.readers[relid] = reader
        return reader

    @property
    def watcher_error(self) -> WatcherError | None:
        """The catalog watcher's newest current problem (None when its last look succeeded
        and every matching table could join)."""
        problems = list(self.watcher_problems.values())
        return problems[-1] if problems else None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                # The first connection is opened by the stream thread: an initial snapshot
                # (read before streaming starts) then flows into readers that are already
                # iterating (backpressure) instead of being spilled before anyone reads.
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

    def _keep_alive(self, *, server_asked: bool = False) -> None:
        """Send a status update if one is due (also while waiting on a full queue), and at once
        when the server asked for one (it drops the connection after ``wal_sender_timeout``
        without an answer)."""
        now = time.monotonic()
        flushed = self.acks.flushed
        # A reader waiting for the stream's position asks the server at once (a keepalive
        # answers), but not more than every 10 ms.
        asked = self._want_position.is_set() and now - self._last_status >= 0.01
        if server_asked:
            self.stats.replies_requested += 1
        if self._source is not None and (now - self._last_status >= self.status_interval
                                         or flushed != self._sent_flush or asked
                                         or server_asked):
            try:
                self._source.send_feedback(flushed, reply=self._want_position.is_set())
            except Exception:  # noqa: BLE001 - the read loop sees and handles the failure
                return
            self._want_position.clear()
            self._sent_flush = flushed
            self._last_status = now

    def _held(self, since: float) -> None:
        """Called by a reader while the stream waits on its full queue (since ``since``):
        status updates go on; past ``hold_check_interval`` the walsender is looked at (in a
        thread of its own: the stream thread never waits on it) and a connection whose
        walsender is ending is dropped here (:class:`StreamLost`: the stream reconnects)."""
        self._keep_alive()
        if not self._pumping or threading.current_thread() is not self._thread:
            return
        pid = _backend_pid(self._source)
        let_go = self._let_go
        if let_go is not None:
            self._let_go = None
            if let_go[0] == pid:
                self.let_go += 1
                raise StreamLost(let_go[1])
        now = time.monotonic()
        if (self._walsender_state is None or pid is None
                or now - since < self.hold_check_interval
                or now - self._hold_checked < self.hold_check_interval
                or (self._hold_check is not None and self._hold_check.is_alive())):
            return
        self._hold_checked = now
        self._hold_check = threading.Thread(target=self._check_walsender, args=(pid,),
                                            name="cdc-hold-check", daemon=True)
        self._hold_check.start()

    def _check_walsender(self, pid: int) -> None:
        """Is walsender ``pid`` ending while the stream holds it back? Then say why
        (``_let_go``): a slot invalidated (``wal_status = lost``); a walsender gone; one stuck in
        a blocking write (``ClientWrite``, seen twice in a row: a healthy walsender that waits on
        its client waits in ``WalSenderWriteData``; a blocking write is its last message, an
        error or its termination, which waits behind the data the stream does not read)."""
        if self._walsender_state is None:
            return
        try:
            state = self._walsender_state(pid)
        except Exception:  # noqa: BLE001 - the next check tries again
            return
        why = None
        if state.wal_status == "lost":
            why = (f"the slot was invalidated (wal_status = lost) while the stream was held "
                   f"back: let go of walsender {pid} so the server can end it")
        elif not state.alive:
            why = f"walsender {pid} is gone, but its connection was still open"
        elif state.wait_event == "ClientWrite":
            seen = self._hold_suspect[1] + 1 if self._hold_suspect[0] == pid else 1
            self._hold_suspect = (pid, seen)
            if seen >= 2:
                why = (f"walsender {pid} is ending (terminated, or its slot being invalidated) "
                       "and cannot say so while the stream is held back by a reader that does "
                       "not read: let go of it, reconnect")
        else:
            self._hold_suspect = (pid, 0)
        if why is not None:
            log.warning("%s", why)
            self._let_go = (pid, why)

    def _run(self) -> None:
        try:
            if self._source is None:
                try:
                    self._source = self._source_factory(0)
                except BaseException as exc:  # noqa: BLE001 - the readers raise it
                    # The stream was set up on this server moments ago: a transient failure
                    # here (a server restarting, a dropped connection) is retried as any
                    # reconnect is; a permanent one (authentication, a missing slot) fails.
                    if self._stop.is_set() or not self.reconnect or not is_transient(exc):
                        self._fail(exc)
                        return
                    self.last_error = exc
                    self.reconnects += 1
                    if not self._reconnect(0.5, 0):
                        return
            self._stream()
        finally:
            # The stream thread owns the connection: it says goodbye on it, never another
            # thread while it may still be inside a call on it.
            self._release_source()

    def _release_source(self) -> None:
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            try:
                source.send_feedback(self.acks.flushed, reply=False)
            except Exception:  # noqa: BLE001 - the connection is gone: nothing to report
                pass
            source.close()

    def _stream(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._pump()
                return
            except BaseException as exc:  # noqa: BLE001
                if self._stop.is_set():
                    return
                # A binary pgoutput stream that meets a relation needing text starts again in
                # text mode, on a new connection (a logical walsender cannot restart its COPY).
                restart = self._source is not None and self._source.needs_text_restart(exc)
                if not restart and (not self.reconnect or not is_transient(exc)):
                    self._fail(exc)
                    return
                self.last_error = exc
                self.acks.abandon_open()
                self._txn = None
                if restart:
                    self.restarts += 1
                else:
                    self.reconnects += 1
                try:
                    self._source.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
                self._source = None
                if not self._reconnect(0.0 if restart else backoff, None):
                    return
                backoff = 0.5

    def _reconnect(self, delay: float, start_lsn: int | None) -> bool:
        """Open a new source from ``start_lsn`` (None: what is acknowledged at each attempt)
        after ``delay``, retrying transient failures with exponential back-off. False when the
        stream stopped or failed meanwhile."""
        backoff = max(delay, 0.5)
        while not self._stop.wait(delay):
            try:
                self._source = self._source_factory(
                    self.acks.flushed if start_lsn is None else start_lsn)
                return True
            except BaseException as again:  # noqa: BLE001
                if not is_transient(again):
                    self._fail(again)
                    return False
                self.last_error = again
            delay = backoff
            backoff = min(backoff * 2, self.max_backoff)
        return False

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        for reader in list(self.readers.values()):
            reader._finish()

    def _pump(self) -> None:
        source = self._source
        self._pumping = True
        try:
            self._pump_events(source)
        finally:
            self._pumping = False

    def _pump_events(self, source: Any) -> None:
        from cdc_notebook.decode.events import Begin, Commit

        while not self._stop.is_set():
            self._keep_alive()
            self._check_tables()
            for event in source.read(timeout=0.1):
                if isinstance(event, Keepalive):  # a keepalive or a message with no event
                    self.acks.idle(event.wal_end)
                    if event.reply_requested:
                        self._keep_alive(server_asked=True)
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
                    reader = self.readers.get(event.relid)
                    if reader is not None:
                        # The schema carries the table's name as of this change: a rename
                        # the stream meets (the watcher may have reported it already).
                        lsn = self._txn.end_lsn if self._txn is not None else 0
                        if lsn > reader.label_lsn:
                            self._rename(reader, event.namespace, event.name, lsn)
                        reader.schema = event.arrow_schema
                        self._relations[event.relid] = event
                        reader._put(QueuedItem(event, None, provisional=self._before_snapshot(
                            event.relid)), self._stop)
                elif isinstance(event, Truncate):
                    for relid in event.relids:
                        reader = self.readers.get(relid)
                        if reader is not None:
                            if self._txn is not None:
                                self.acks.add(self._txn)
                            reader._put(QueuedItem(event, self._txn,
                                                   provisional=self._before_snapshot(relid)),
                                        self._stop)
                elif isinstance(event, DecodeFailed):
                    self._put_in_txn(self.readers.get(event.relid), event)
                elif isinstance(event, LogicalMessage):
                    if event.prefix == WATERMARK_PREFIX:
                        self._watermark(event.content.decode())
                    elif self.messages is not None:  # stream.messages()
                        self._put_in_txn(self.messages, event)
                elif isinstance(event, TableDropped):
                    reader = self.readers.get(event.relid)
                    if reader is not None:
                        reader.table_dropped = True
                        reader._put(QueuedItem(event, None), self._stop)
                self.stats.events += 1

    def _put_in_txn(self, reader: TableReader | None, event: Any) -> None:
        """Queue an event that is part of the open transaction (it holds back its
        acknowledgement until read, as a batch does)."""
        if reader is not None and not reader.closed:
            if self._txn is not None:
                self.acks.add(self._txn)
            relid = getattr(event, "relid", 0)
            reader._put(QueuedItem(event, self._txn, provisional=bool(relid) and
                                   self._before_snapshot(relid)), self._stop)

    def enable_messages(self) -> TableReader:
        """Keep the stream's logical messages (``pg_logical_emit_message``, except the kit's
        watermarks) from now on, in a reader of their own: ``CDCStream.messages()``."""
        if self.messages is None:
            self.messages = TableReader(self, "(logical messages)", (),
                                        memory_limit=max(1 << 20, self.memory_limit // 4))
        return self.messages

    def _watch_tables(self) -> None:
        """The watcher thread: asks the catalog about the stream's tables every
        ``table_check_interval`` seconds. Its round trips stay off the stream thread, which
        would otherwise stop reading (and delay every change) while they run. Its failures are
        never swallowed: each distinct problem goes to every reader's ``events()`` (posted by
        the stream thread) and stays in ``watcher_problems`` (the status) while it lasts."""
        assert self._table_changes is not None
        while not self._stop.wait(self._table_check_interval) and self.failed is None:
            try:
                changes = self._table_changes()
            except Exception as exc:  # noqa: BLE001 - reported; the next look tries again
                if self._stop.is_set():
                    return
                self.watcher_failures += 1
                self._watcher_state([_watcher_error(exc)])
                continue
            self._watcher_state(changes.problems)
            if changes.fatal is not None:
                self._pending_fatal = changes.fatal
                return
            for relid in changes.gone:  # lookups by name prefer a table that exists
                gone = self.readers.get(relid)
                if gone is not None:
                    gone.table_gone = True
            with self._drops_lock:
                dropping = {relid for relid, _ in self._pending_drops}
                self._pending_drops += [(relid, changes.lsn) for relid in changes.gone
                                        if relid not in dropping]
                for relid, schema, table in changes.renamed:
                    pending = [r for r in self._pending_renames if r[0] == relid]
                    if not pending or pending[-1][1:3] != (schema, table):
                        self._pending_renames.append((relid, schema, table, changes.lsn))

    def _watcher_state(self, problems: list[WatcherError]) -> None:
        """The watcher's current problems; the new ones are logged and posted to the readers."""
        current = {p.message: p for p in problems}
        new = [p for m, p in current.items() if m not in self.watcher_problems]
        self.watcher_problems = current
        for problem in new:
            log.warning("catalog watcher: %s%s", problem.message,
                        f" (fix: {problem.hint})" if problem.hint else "")
        if new:
            with self._drops_lock:
                self._pending_problems += new

    def _check_tables(self) -> None:
        """What the watcher found, applied in the stream thread: a renamed table's reader
        takes the new name, a dropped table's reader ends, each after every change before the
        watcher saw it arrived; its problems are posted to every reader."""
        if self._pending_fatal is not None:
            raise self._pending_fatal
        if not (self._pending_drops or self._pending_renames or self._pending_problems):
            return
        with self._drops_lock:
            drops, self._pending_drops = self._pending_drops, []
            renames, self._pending_renames = self._pending_renames, []
            problems, self._pending_problems = self._pending_problems, []
        for problem in problems:
            for receiver in list(self.readers.values()):
                if not receiver.table_dropped:
                    receiver._put(QueuedItem(problem, None), self._stop)
        self.request_position()
        still_renames = []
        for relid, schema, table, lsn in renames:
            reader = self.readers.get(relid)
            if reader is None or reader.table_dropped:
                continue
            if self.caught_up(lsn):
                self._rename(reader, schema, table, lsn)
            else:
                still_renames.append((relid, schema, table, lsn))
        still_drops = []
        for relid, lsn in drops:
            if self.caught_up(lsn):
                self.drop_table(relid, lsn)
            else:
                still_drops.append((relid, lsn))
        with self._drops_lock:
            self._pending_drops[:0] = still_drops
            self._pending_renames[:0] = still_renames

    def _rename(self, reader: TableReader, schema: str, table: str, lsn: int) -> None:
        """The table of ``reader`` is called ``schema.table`` from ``lsn`` on: its reader
        follows it and says so (a :class:`TableRenamed` event)."""
        if (schema, table) == (reader.schema_name, reader.table_name):
            reader.label_lsn = max(reader.label_lsn, lsn)
            return
        label = table_label(schema, table)
        old = reader._relabel(schema, table, label, lsn)
        log.info("table %s (OID %d) is now called %s", old, reader.relid, label)
        reader._put(QueuedItem(TableRenamed(reader.relid, old, label, lsn), None), self._stop)

    def _watermark(self, content: str) -> None:
        kind, _, join_id = content.partition(" ")
        join = self.joins.get(join_id)
        if join is None:
            return  # another stream's (or an earlier run's) watermark
        if kind == "low":
            join.window_open = join.low_seen = True
            join.low_end = self._txn.end_lsn if self._txn is not None else 0
            # the window's changes are of the schema in force here (announced again after
            # the snapshot rows, which have theirs)
            join.relation_at_low = self._relations.get(join.relid)
            reader = self.readers.get(join.relid)
            if reader is not None:
                reader._hold()  # the window's changes wait for the snapshot rows
        elif kind == "high":
            join.window_open = False
            # Delivered at the watermark's commit, before the held changes of the window.
            self._joins_at_commit.append(join)

    def _deliver_joins(self, end_lsn: int) -> None:
        for join in self._joins_at_commit:
            # The rows were spooled before the high watermark was written: they are there.
            # Wait for the joiner to say so without going silent towards the server.
            deadline = time.monotonic() + 60
            while not join.ready.wait(0.5) and time.monotonic() < deadline \
                    and not self._stop.is_set():
                self._keep_alive(server_asked=True)
            reader = self.readers.get(join.relid)
            if not join.ready.is_set() or join.error is not None:
                join.error = join.error or TimeoutError(
                    f"snapshot of {join.name} not ready at its watermark")
                join.discard()
                if reader is not None and isinstance(join.error, TableDroppedDuringSnapshot):
                    # No snapshot: what the reader holds (every change up to the drop) is
                    # delivered as it is; the watcher's TableDropped follows.
                    log.info("table %s was dropped while joining: its changes up to the drop "
                             "are delivered without a snapshot", join.name)
                    reader._release_hold(iter(()), keep_provisional=True)
                elif reader is not None:  # that reader fails; the others go on
                    reader._release_hold(iter([QueuedItem(join.error, None)]))
            elif reader is not None:
                reader._release_hold(self._snapshot_items(join))
            else:
                join.discard()
            self.joins.pop(join.id, None)
            join.done.set()
        self._joins_at_commit = []

    def _snapshot_items(self, join: TableJoin) -> Iterator[QueuedItem]:
        """The snapshot rows, after the table's schema as the snapshot saw it, and before the
        schema in force at the low watermark (the window's changes are of that one)."""
        if join.relation is not None:
            yield QueuedItem(join.relation, None)
        ordinal = 0
        for batch in join.read_back():
            stamped = stamp_at_watermark(batch, join.low_end, ordinal)
            ordinal += batch.num_rows
            nbytes = stamped.get_total_buffer_size()
            self.stats.rows += batch.num_rows
            self.stats.bytes += nbytes
            yield QueuedItem(stamped, None, nbytes, snapshot=True)
        if join.relation_at_low is not None:
            yield QueuedItem(join.relation_at_low, None)

    def _before_snapshot(self, relid: int) -> bool:
        """Whether a change of ``relid`` now is before its join's low watermark: its effect
        is in the snapshot (stream/joins.py)."""
        if not self.joins:  # (per batch: no join is the usual case)
            return False
        return any(join.relid == relid and not join.low_seen
                   for join in list(self.joins.values()))  # (the watcher thread adds joins)

    def _route_batch(self, event: ChangeBatch) -> None:
        # Committed before the joining table's low watermark: its snapshot (read after that)
        # holds this change: it waits, provisional, until the snapshot rows replace it (or
        # is delivered as it is if the table is dropped before it could be read).
        before_snapshot = self._before_snapshot(event.relid)
        reader = self.readers.get(event.relid)
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
        reader._put(QueuedItem(batch, txn, nbytes, end_lsn, ipc=message,
                               provisional=before_snapshot), self._stop)

    def put_snapshot(self, relid: int, batch: pa.RecordBatch) -> None:
        """Deliver a batch of the initial snapshot (before the stream starts)."""
        reader = self.readers.get(relid)
        if reader is not None and batch.num_rows:
            self.stats.rows += batch.num_rows
            nbytes = batch.get_total_buffer_size()
            self.stats.bytes += nbytes
            reader._put(QueuedItem(batch, None, nbytes, snapshot=True), self._stop)

    def drop_table(self, relid: int, lsn: int = 0) -> None:
        """End one reader with a TableDropped event (the table went away); the others go on."""
        reader = self.readers.get(relid)
        if reader is not None and not reader.table_dropped:
            reader.table_dropped = True
            reader._put(QueuedItem(TableDropped(reader.name, relid, lsn), None), self._stop)

    def close(self) -> None:
        self._stop.set()
        if self.messages is not None:
            self.messages._finish()
        for reader in list(self.readers.values()):
            with reader._cond:
                reader._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self._thread is None or not self._thread.is_alive():
            self._release_source()
        # else: the stream thread is still inside a call (a full reader's wait ends on _stop,
        # a network call on its timeout); it releases the connection itself when it returns.
        for reader in list(self.readers.values()):
            reader._finish()
            reader._drop_spill()


@dataclass(frozen=True)
class WalsenderState:
    """What the server says of the stream's walsender (``walsender_state(pid)``)."""

    alive: bool  # the backend is there (pg_stat_activity)
    wait_event: str | None
    wal_status: str | None  # of the stream's slot


def _backend_pid(source: Any) -> int | None:
    rc = getattr(source, "rc", None)
    try:
        return int(rc.backend_pid) if rc is not None else None
    except Exception:  # noqa: BLE001 - a closed connection has no backend
        return None


def _watcher_error(exc: BaseException) -> WatcherError:
    """A failed look at the catalog as the event the readers get."""
    if isinstance(exc, CDCError):
        return WatcherError(f"the catalog watcher failed: {exc.message}", exc.transient,
                            exc.hint, error=exc)
    return WatcherError(f"the catalog watcher failed: {type(exc).__name__}: {exc}", False,
                        "this is a bug in the kit's watcher: tables that start matching the "
                        "patterns do not join, renames and drops are seen only by the stream",
                        error=exc)
