"""The live mirror for every replica identity: FULL rows with NULLs, an identity index that is
not the primary key, and unchanged TOAST values the before-image holds (issue 13, finding 4)."""

from __future__ import annotations

import pytest

from cdc_notebook import CDCStream, LiveReader
from cdc_notebook.demo import assert_mirror_matches

PLUGINS = ["wal2arrow", "pgoutput"]


def _follow(pg, pattern: str, plugin: str) -> LiveReader:
    return LiveReader(CDCStream(pg.conninfo(), pattern, plugin=plugin, temporary=True,
                                keyless="full")).start()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_full_identity_rows_with_nulls(pg, unique_name, plugin):
    table = unique_name("full")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (a int, b text, c int)")
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    reader = _follow(pg, f"public.{table}", plugin)
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, NULL, 1), (2, 'x', NULL), "
                         "(NULL, NULL, 3), (4, 'y', 4)")
            conn.execute(f"UPDATE {table} SET c = 10 WHERE a = 1")            # b is NULL
            conn.execute(f"UPDATE {table} SET b = 'z' WHERE a = 2")           # c is NULL
            conn.execute(f"DELETE FROM {table} WHERE a IS NULL")              # a and b NULL
            conn.execute(f"UPDATE {table} SET a = 40 WHERE a = 4")
        reader.catch_up(timeout=60)
        with pg.connect() as conn:
            assert assert_mirror_matches(reader, conn, f"public.{table}", ["a", "b", "c"]) == 3
    finally:
        reader.stop()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_identity_index_that_is_not_the_primary_key(pg, unique_name, plugin):
    table = unique_name("idx")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, code text NOT NULL, v int)")
        conn.execute(f"CREATE UNIQUE INDEX {table}_code ON {table} (code)")
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX {table}_code")
    reader = _follow(pg, f"public.{table}", plugin)
    try:
        assert reader.stream[f"public.{table}"].key_columns == ("code",)
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} SELECT g, 'c' || g, g FROM generate_series(1, 50) g")
            conn.execute(f"UPDATE {table} SET v = -v WHERE id <= 10")
            conn.execute(f"UPDATE {table} SET code = 'moved' || id WHERE id BETWEEN 11 AND 20")
            conn.execute(f"UPDATE {table} SET id = id + 1000 WHERE id BETWEEN 21 AND 30")
            conn.execute(f"DELETE FROM {table} WHERE id > 40")
        reader.catch_up(timeout=60)
        with pg.connect() as conn:
            assert assert_mirror_matches(reader, conn, f"public.{table}", "code") == 30  # ids 21-30 moved past 1000, then deleted
    finally:
        reader.stop()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_full_identity_unchanged_toast_comes_from_the_before_image(pg, unique_name, plugin):
    table = unique_name("toast")
    big = "x" * 200_000  # stored out of line (TOAST), so unchanged in an update's new row
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, doc text, v int)")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN doc SET STORAGE EXTERNAL")
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        conn.execute(f"INSERT INTO {table} VALUES (1, %s, 1)", (big,))  # before the stream
    reader = _follow(pg, f"public.{table}", plugin)
    try:
        with pg.connect() as conn:
            conn.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")  # doc unchanged
        reader.catch_up(timeout=60)
        row = reader[f"public.{table}"].mirror().row(0, named=True)
        assert row["v"] == 2 and row["doc"] == big
    finally:
        reader.stop()
