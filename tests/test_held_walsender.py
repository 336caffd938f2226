"""A stream in backpressure does not hold on to a walsender the server wants gone.

Found by the full form of the fault suite (``slot_invalidated`` at 1,000,000 changes): while a
consumer holds its batch, the stream stops reading the replication connection (backpressure) and
the walsender's sends block. When the server then ends that walsender — the checkpointer
invalidating the slot (``max_slot_wal_keep_size``), ``pg_terminate_backend`` — the walsender's
last message (its FATAL) waits behind the data nobody reads, in a blocking write
(``wait_event = ClientWrite``): it never exits, the slot stays active, and the checkpointer
waits for it with every later checkpoint (WAL is never recycled: exactly what
``max_slot_wal_keep_size`` is there to prevent). The stream now looks at its walsender while it
is held back and drops a connection whose walsender is ending; it reconnects (the server then
says what happened: an invalidated slot is the clear error) and nothing is lost or duplicated.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest

from cdc_notebook import CDCStream
from cdc_notebook.errors import SlotInvalidated

ROWS = 60_000
PAD = 600  # ~40 MB of changes: more than the reader's queue and every socket buffer between


def _fill(conn, start: int, rows: int, table: str = "held") -> None:
    for lo in range(start, start + rows, 5_000):
        conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', {PAD}) "
                     "FROM generate_series(%s::bigint, %s::bigint) g",
                     (lo, min(lo + 5_000, start + rows) - 1))


def _walsender(conn, slot: str) -> tuple[int | None, str | None]:
    row = conn.execute("SELECT s.active_pid, a.wait_event FROM pg_replication_slots s "
                       "LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
                       "WHERE s.slot_name = %s", (slot,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def _wait(cond, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class _HoldingConsumer(threading.Thread):
    """Iterates the reader and holds its first batch until released (a stalled cell)."""

    def __init__(self, reader, expect: int):
        super().__init__(daemon=True)
        self.reader = reader
        self.expect = expect
        self.ids: collections.Counter[int] = collections.Counter()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in self.reader.batches(follow=True, timeout=120):
                if not self.holding.is_set():
                    self.holding.set()
                    self.release.wait(300)
                ops = batch.column("_cdc_op").to_pylist()
                for op, key in zip(ops, batch.column("id").to_pylist(), strict=True):
                    if op == "c":
                        self.ids[key] += 1
                if sum(self.ids.values()) >= self.expect:
                    return
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_terminated_walsender_is_let_go_while_the_consumer_holds_its_batch(
        pg_factory, plugin, unique_name):
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("CREATE TABLE held (id bigint PRIMARY KEY, pad text)")
    slot = unique_name("held")
    stream = CDCStream(server.conninfo(), "public.held", plugin=plugin, slot_name=slot,
                       memory_limit=4 << 20)
    consumer = _HoldingConsumer(stream["public.held"], ROWS)
    try:
        stream.start()
        consumer.start()
        with server.connect() as conn:
            _fill(conn, 0, ROWS)
            assert consumer.holding.wait(60), consumer.error
            # The stream is in backpressure and the server's sends block on it.
            pid, _ = _wait(lambda: (lambda w: w if w[1] == "WalSenderWriteData" else None)(
                _walsender(conn, slot)), "the walsender to wait on its client", 60)
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            # The terminated walsender goes (before the fix: stuck in ClientWrite for good).
            _wait(lambda: conn.execute("SELECT count(*) = 0 FROM pg_stat_activity "
                                       "WHERE pid = %s", (pid,)).fetchone()[0],
                  f"walsender {pid} to exit", 30)
            # ... and the stream reconnected by itself.
            _wait(lambda: _walsender(conn, slot)[0] not in (None, pid),
                  "a new walsender", 30)
        consumer.release.set()
        consumer.join(120)
        assert not consumer.is_alive() and consumer.error is None, consumer.error
        assert set(consumer.ids) == set(range(ROWS))
        assert max(consumer.ids.values()) == 1, "a change was delivered twice"
        assert stream.router.reconnects >= 1
    finally:
        consumer.release.set()
        stream.close()


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_slot_invalidated_while_the_consumer_holds_its_batch(pg_factory, plugin, unique_name):
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("CREATE TABLE held (id bigint PRIMARY KEY, pad text)")
        conn.execute("CREATE TABLE filler (id bigint PRIMARY KEY, pad text)")
    slot = unique_name("held_inv")
    stream = CDCStream(server.conninfo(), "public.held", plugin=plugin, slot_name=slot,
                       memory_limit=4 << 20)
    consumer = _HoldingConsumer(stream["public.held"], ROWS)
    try:
        stream.start()
        consumer.start()
        with server.connect() as conn:
            _fill(conn, 0, ROWS)
            assert consumer.holding.wait(60), consumer.error
            _wait(lambda: _walsender(conn, slot)[1] == "WalSenderWriteData",
                  "the walsender to wait on its client", 60)
            conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
            conn.execute("SELECT pg_reload_conf()")
            # Each CHECKPOINT must come back (before the fix the first that had to invalidate
            # the slot waited for its walsender for good).
            conn.execute("SET statement_timeout = '60s'")
            deadline = time.monotonic() + 120
            start = ROWS
            while True:
                _fill(conn, start, 20_000, "filler")
                start += 20_000
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
                row = conn.execute("SELECT wal_status FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (slot,)).fetchone()
                if row is None or row[0] == "lost":
                    break
                assert time.monotonic() < deadline, f"not invalidated: {row}"
        consumer.release.set()
        consumer.join(120)
        assert not consumer.is_alive()
        assert isinstance(consumer.error, SlotInvalidated), consumer.error
        text = str(consumer.error)
        assert "wal_status = lost" in text and "max_slot_wal_keep_size" in text
        assert max(consumer.ids.values(), default=1) == 1, "a change was delivered twice"
    finally:
        consumer.release.set()
        stream.close()
