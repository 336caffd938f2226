"""Every byte counted (issue 13, finding 5): a reader nobody reads holds back acknowledgement,
and the transactions that pile up behind it meanwhile are tracked in bounded memory."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import pytest

from cdc_notebook import CDCStream


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_commits_behind_an_unread_reader_stay_within_bounded_bookkeeping(pg, unique_name,
                                                                         plugin):
    schema = unique_name("mem")
    commits = 20_000
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.unread (id int PRIMARY KEY)")
        conn.execute(f"CREATE TABLE {schema}.busy (id int PRIMARY KEY)")
    with CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True) as stream:
        stream.start()
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.unread VALUES (1)")  # never read: pins the slot
        consumed = 0
        stop = threading.Event()

        def consume() -> None:
            nonlocal consumed
            while not stop.is_set():
                consumed += sum(b.num_rows for b in stream[f"{schema}.busy"].batches())

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.5)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        with pg.connect() as conn:
            for i in range(commits):
                conn.execute(f"INSERT INTO {schema}.busy VALUES (%s)", (i,))
        deadline = time.monotonic() + 60
        while consumed < commits and time.monotonic() < deadline:
            time.sleep(0.1)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        stop.set()
        thread.join(10)
        assert consumed == commits
        acks = stream.router.acks
        assert acks.in_flight <= acks.max_tracked  # not one entry per commit
        assert grown / commits < 40, f"{grown / commits:.0f} bytes kept per transaction"


def test_spill_space_is_given_back_once_read(pg, unique_name):
    import os

    schema = unique_name("spillback")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id bigint PRIMARY KEY, pad text)")
    with CDCStream(pg.conninfo(), f"{schema}.t", temporary=True,
                   memory_limit=4 << 20) as stream:
        stream.start()
        reader = stream[f"{schema}.t"]
        with pg.connect() as conn:
            for _ in range(4):
                conn.execute(f"INSERT INTO {schema}.t SELECT g, repeat('x', 100) FROM "
                             "generate_series((SELECT coalesce(max(id), 0) + 1 FROM "
                             f"{schema}.t), (SELECT coalesce(max(id), 0) + 50000 FROM "
                             f"{schema}.t)) g")
        deadline = time.monotonic() + 60
        while reader.spilled_bytes < (8 << 20) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reader.spilled_bytes >= 8 << 20  # nobody read it: on disk
        assert sum(b.num_rows for b in reader.batches(timeout=60)) == 200_000
        assert reader.spilled_bytes == 0
        assert reader._spill is None or os.fstat(reader._spill.fileno()).st_size == 0
