"""A table joining a running stream (issue 13, finding 5): its snapshot is spooled to disk, not
held in memory, and an unchanged TOAST value of a change in the join's window is not lost."""

from __future__ import annotations

import threading
import time

import pytest

from cdc_notebook import CDCStream, LiveReader


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_unchanged_toast_in_the_join_window_keeps_its_value(pg, unique_name, plugin):
    schema = unique_name("jtoast")
    big = "y" * 150_000
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.first (id int PRIMARY KEY)")
    reader = LiveReader(CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin,
                                  temporary=True)).start()
    stop = threading.Event()
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.late (id int PRIMARY KEY, doc text, v int)")
            conn.execute(f"ALTER TABLE {schema}.late ALTER COLUMN doc SET STORAGE EXTERNAL")
            conn.execute(f"INSERT INTO {schema}.late SELECT g, %s, 0 FROM generate_series(1, 50) g",
                         (big,))

        def touch() -> None:  # updates that leave doc unchanged, while the table joins
            with pg.connect() as conn:
                i = 0
                while not stop.is_set():
                    conn.execute(f"UPDATE {schema}.late SET v = v + 1 WHERE id = %s",
                                 (i % 50 + 1,))
                    i += 1
                    time.sleep(0.002)

        writer = threading.Thread(target=touch, daemon=True)
        writer.start()
        stream = reader.stream
        deadline = time.monotonic() + 60
        while not stream.joined and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.wait_for_joins(120)
        stop.set()
        writer.join(10)
        reader.catch_up(timeout=120)
        mirror = reader[f"{schema}.late"].mirror().sort("id")
        with pg.connect() as conn:
            expected = conn.execute(f"SELECT id, v FROM {schema}.late ORDER BY id").fetchall()
        assert mirror.select(["id", "v"]).rows() == expected
        assert mirror.get_column("doc").to_list() == [big] * 50
    finally:
        stop.set()
        reader.stop()


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_joining_table_is_spooled_not_held_in_memory(pg, unique_name):
    schema = unique_name("jmem")
    rows = 2_400_000
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.first (id int PRIMARY KEY)")
    with CDCStream(pg.conninfo(), f"{schema}.*", temporary=True,
                   memory_limit=8 << 20) as stream:
        stream.start()
        with pg.connect() as conn, conn.transaction():  # the table appears with its rows
            conn.execute(f"CREATE TABLE {schema}.late (id bigint PRIMARY KEY, pad text)")
            conn.execute(f"INSERT INTO {schema}.late SELECT g, repeat('p', 80) FROM "
                         f"generate_series(1, {rows}) g")
        base = _rss()
        peak = [base]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], _rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.monotonic() + 60
        while not stream.joined and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.wait_for_joins(180)
        sampling.set()
        sampler.join(5)
        table_bytes = rows * (8 + 80 + 4)
        reader = stream[f"{schema}.late"]
        assert reader.spilled_bytes > table_bytes // 2  # nobody reads it yet: it is on disk
        grown = peak[0] - base
        assert grown < table_bytes * 0.5, f"RSS grew {grown >> 20} MiB while a " \
            f"{table_bytes >> 20} MiB table joined"
        assert sum(b.num_rows for b in reader.batches(timeout=60)) == rows
