"""The mirror against the real stream: a random workload of 100,000 operations (inserts,
updates that change the key, updates leaving TOAST values unchanged, deletes), streamed by
wal2arrow into :class:`LiveFrames`, equals ``SELECT * ... ORDER BY key``; and again after the
server delivered everything a second time (a new connection to the unacknowledged slot) and
after a replay of every event.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
import pytest

from bench.clients import Wal2ArrowStream
from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.decode.events import ChangeBatch, Commit
from cdc_notebook.live.tables import LiveFrames, LiveTable

OPERATIONS = 100_000

WORKLOAD = """
CREATE PROCEDURE {schema}.workload(ops int, seed float8) LANGUAGE plpgsql AS $$
DECLARE
    next_id int := 1;
    target int;
    r float8;
BEGIN
    PERFORM setseed(seed);
    FOR i IN 1..ops LOOP
        r := random();
        IF r < 0.40 OR next_id < 50 THEN
            INSERT INTO {schema}.k VALUES (next_id, (random() * 1000)::int,
                CASE WHEN random() < 0.1
                     THEN (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 90))
                     ELSE 'small ' || next_id END);
            next_id := next_id + 1;
        ELSE
            target := 1 + (random() * (next_id - 1))::int;
            IF r < 0.62 THEN      -- an update leaving doc (often TOASTed) unchanged
                UPDATE {schema}.k SET v = v + 1 WHERE id = target;
            ELSIF r < 0.72 THEN   -- an update of every column
                UPDATE {schema}.k SET v = v - 1, doc = 'rewritten ' || i WHERE id = target;
            ELSIF r < 0.80 THEN   -- an update that moves the key
                UPDATE {schema}.k SET id = next_id WHERE id = target;
                next_id := next_id + 1;
            ELSE
                DELETE FROM {schema}.k WHERE id = target;
            END IF;
        END IF;
        IF i % 200 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;
"""


def stream_into(frames: LiveFrames, conninfo: dict[str, Any], slot: str, target: int,
                events: list[Any] | None = None, timeout: float = 300.0) -> int:
    """Apply every event up to the commit ending at or after ``target``; acknowledge nothing.
    Returns how many events were read."""
    count = 0
    with Wal2ArrowStream(conninfo) as stream:
        stream.start(slot, 0)
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"stream stalled after {count} events"
            for _wal_end, event in stream.read(timeout=0.2):
                if event is None:
                    continue
                count += 1
                frames.handle(event)
                if events is not None:
                    events.append(event)
                if isinstance(event, Commit) and event.end_lsn >= target:
                    return count


def table_frame(conn: Any, schema: str) -> pl.DataFrame:
    rows = conn.execute(f"SELECT id, v, doc FROM {schema}.k ORDER BY id").fetchall()
    return pl.DataFrame(rows, schema={"id": pl.Int32, "v": pl.Int32, "doc": pl.String},
                        orient="row")


@pytest.fixture
def workload_slot(pg: Any, unique_name: Any) -> Any:
    schema, slot = unique_name("lv"), unique_name("cdcnb_lv")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.k (id int PRIMARY KEY, v int, doc text)")
        conn.execute(f"ALTER TABLE {schema}.k ALTER COLUMN doc SET STORAGE EXTERNAL")
        conn.execute(WORKLOAD.format(schema=schema))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')", [slot])
        yield conn, schema, slot
        conn.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND NOT active", [slot, slot])
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_mirror_equals_the_table_after_100k_random_operations_delivered_twice(
        pg: Any, workload_slot: Any, tmp_path: Any) -> None:
    conn, schema, slot = workload_slot
    conn.execute(f"CALL {schema}.workload({OPERATIONS}, 0.42)")
    target = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    expected = table_frame(conn, schema)
    assert expected.height > 1000
    toasted = conn.execute(f"SELECT count(*) FROM {schema}.k WHERE length(doc) > 2000"
                           ).fetchone()[0]
    assert toasted > 100

    frames = LiveFrames()
    events: list[Any] = []
    stream_into(frames, pg.conninfo(), slot, target, events)
    live = frames[f"{schema}.k"]
    assert live.key_columns == ("id",)
    assert live.mirror().sort("id").equals(expected)
    assert live.stats.unresolved_toast == 0
    assert live.state().lsn >= target
    changes = live.stats.rows_received
    # The workload exercised what the mirror must get right.
    log = pl.concat([pl.from_arrow(e.batch.select(["id", "_cdc_op", "_cdc_before",
                                                    "_cdc_unchanged_toast"]))
                     for e in events if isinstance(e, ChangeBatch)])
    toast_kept = log.filter(pl.col("_cdc_unchanged_toast").list.len() > 0)
    moved = log.filter((pl.col("_cdc_op") == "u") & pl.col("_cdc_before").is_not_null()
                       & (pl.col("_cdc_before").struct.field("id") != pl.col("id")))
    assert toast_kept.height > 1000 and moved.height > 1000
    assert moved.filter(pl.col("_cdc_unchanged_toast").list.len() > 0).height > 50
    assert log.filter(pl.col("_cdc_op") == "d").height > 1000
    assert changes >= OPERATIONS * 0.7  # updates/deletes of a missing id are no-ops

    # The slot was never acknowledged: a new connection gets everything again.
    stream_into(frames, pg.conninfo(), slot, target)
    assert live.stats.rows_skipped >= changes
    assert live.mirror().sort("id").equals(expected)

    # And the same events replayed once more, in order.
    for event in events:
        frames.handle(event)
    assert live.mirror().sort("id").equals(expected)

    # Checkpoint, a "new kernel", resume from the slot without a snapshot.
    path = tmp_path / "k.parquet"
    lsn = live.save(path)
    resumed = LiveFrames()
    resumed.attach(LiveTable.load(path))
    conn.execute(f"UPDATE {schema}.k SET v = -1 WHERE id IN (SELECT id FROM {schema}.k "
                 "ORDER BY id LIMIT 10)")
    conn.execute(f"DELETE FROM {schema}.k WHERE id IN (SELECT id FROM {schema}.k "
                 "ORDER BY id DESC LIMIT 10)")
    target = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    stream_into(resumed, pg.conninfo(), slot, target)
    again = resumed[f"{schema}.k"]
    assert again.stats.rows_skipped >= changes  # the redelivered history was dropped
    assert again.mirror().sort("id").equals(table_frame(conn, schema))
    assert again.state().lsn > lsn
