"""What the minimal clients proved, through the product stream (``CDCStream``): a binary
pgoutput stream switches to text for a relation that needs it, and a keepalive in which the
server asks for a reply is answered at once."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from cdc_notebook import CDCStream

from .pgutil import drop_slot


def _rows(batches: list[pa.RecordBatch]) -> list[dict]:
    """Rows in order, each with the schema of its own batch (a schema change starts a batch)."""
    return [row for batch in batches for row in batch.to_pylist()]


def _read_until(reader, want: int, timeout: float = 60.0) -> list[pa.RecordBatch]:
    got: list[pa.RecordBatch] = []
    deadline = time.monotonic() + timeout
    while sum(b.num_rows for b in got) < want and time.monotonic() < deadline:
        got += list(reader.batches())
    return got


def test_binary_pgoutput_switches_to_text_for_a_column_that_needs_it(pg, unique_name):
    table, slot = unique_name("bin"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v numeric(8,2))")
    stream = CDCStream(pg.conninfo("tcp"), f"public.{table}", plugin="pgoutput",
                       slot_name=slot, temporary=False)
    try:
        reader = stream[f"public.{table}"]
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 1.5), (2, 2.5)")
        first = _read_until(reader, 2)
        assert stream.decoding_mode.startswith("binary"), stream.decoding_mode
        with pg.connect() as conn:
            # a column whose values the kit reads only as text in a binary stream
            conn.execute(f"ALTER TABLE {table} ADD COLUMN a int[]")
            conn.execute(f"INSERT INTO {table} VALUES (3, 3.5, '{{{{1,2}},{{3,4}}}}')")
            conn.execute(f"UPDATE {table} SET v = 9.25 WHERE id = 1")
        rest = _read_until(reader, 2)
        rows = _rows(first) + _rows(rest)
        assert [(r["_cdc_op"], r["id"]) for r in rows] == [("c", 1), ("c", 2), ("c", 3), ("u", 1)]
        assert rows[2]["a"] == [1, 2, 3, 4] and str(rows[3]["v"]) == "9.25"
        assert stream.router.restarts == 1 and stream.router.failed is None
        assert stream.decoding_mode.startswith("text: switched from binary"), stream.decoding_mode
        assert "a (" in stream.decoding_mode  # names the column that needed text
    finally:
        stream.close()
        drop_slot(pg, slot)


def test_temporary_pgoutput_slot_streams_text_and_says_why(pg, unique_name):
    table = unique_name("tmp")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
    with CDCStream(pg.conninfo(), f"public.{table}", plugin="pgoutput", temporary=True) as stream:
        reader = stream[f"public.{table}"]
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (2, 2)")
            conn.execute(f"ALTER TABLE {table} ADD COLUMN a text[]")
            conn.execute(f"INSERT INTO {table} VALUES (3, 3, '{{x,y}}')")
        rows = _rows(_read_until(reader, 2))
        assert [r["id"] for r in rows] == [2, 3] and rows[1]["a"] == ["x", "y"]
        assert "a" not in rows[0]  # each change with the schema in force when it was written
        assert stream.decoding_mode.startswith("text: a temporary slot"), stream.decoding_mode
        assert stream.router.restarts == 0 and stream.router.reconnects == 0


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_keepalive_asking_for_a_reply_is_answered_at_once(pg_factory, unique_name, plugin):
    """The server asks for a reply after half of wal_sender_timeout without one and drops the
    connection at the timeout. With status updates due only every 30 s, the stream survives a
    2 s wal_sender_timeout only by answering the server's request at once.

    A server of its own: on the shared one, WAL written by other work moves the stream's
    position, and the status update that acknowledges it leaves the server nothing to ask."""
    pg = pg_factory()
    table = unique_name("ka")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    conninfo = pg.conninfo("tcp")
    conninfo["options"] = "-c wal_sender_timeout=2000"
    with CDCStream(conninfo, f"public.{table}", plugin=plugin, temporary=True,
                   status_interval=30.0) as stream:
        stream.start()
        time.sleep(1.0)
        with pg.connect() as conn:
            pid = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (stream.slot.slot_name,)).fetchone()[0]
        time.sleep(7.0)  # three and a half timeouts, idle
        assert stream.router.failed is None and stream.router.reconnects == 0
        assert stream.router.stats.replies_requested >= 2
        with pg.connect() as conn:
            now = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (stream.slot.slot_name,)).fetchone()[0]
            conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert now == pid  # the same walsender: never timed out
        assert [r["id"] for r in _rows(_read_until(stream[f"public.{table}"], 1))] == [1]
