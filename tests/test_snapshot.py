"""The snapshot: exported-snapshot COPY into change batches (PostgreSQL 15 and 18)."""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cdc_notebook.snapshot import (ExportedSnapshot, ProgressBar, SnapshotNotImportable,
                                   TableDroppedDuringSnapshot, TableHandoff, TableState,
                                   connect_session, plan_table, snapshot_table)
from cdc_notebook.errors import TablePrivilegeMissing, WalLevelNotLogical
from cdc_notebook.types import change_batch_schema


def _drop_slot(conn, slot):
    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                 "WHERE slot_name = %s", (slot,))


def test_snapshot_rows_schema_and_metadata(pg, unique_name):
    table, slot = unique_name("snap"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n numeric(12,2))")
        conn.execute(f"INSERT INTO {table} SELECT g, 'v' || g, g / 100.0 "
                     "FROM generate_series(1, 20000) g")
        with ExportedSnapshot(pg.conninfo(), slot) as snap:
            # written after the snapshot: not part of it
            conn.execute(f"INSERT INTO {table} VALUES (0, 'late', 0)")
            conn.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 1")
            progress = []
            batches = list(snapshot_table(pg.conninfo(), f"public.{table}", snap,
                                          chunk_pages=20, batch_rows=3000,
                                          progress=progress.append))
            lsn = snap.consistent_point
        _drop_slot(conn, slot)
        try:
            result = pa.Table.from_batches(batches).sort_by("id")
            assert result.num_rows == 20000
            assert result["id"].to_pylist() == list(range(1, 20001))
            assert result["v"][0].as_py() == "v1"
            assert str(result["n"][12344].as_py()) == "123.45"
            assert all(b.num_rows <= 3000 for b in batches)
            assert set(result["_cdc_op"].to_pylist()) == {"r"}
            assert set(result["_cdc_lsn"].to_pylist()) == {lsn}
            assert set(result["_cdc_end_lsn"].to_pylist()) == {lsn}
            assert result["_cdc_commit_lsn"].null_count == result.num_rows
            assert result["_cdc_before"].null_count == result.num_rows
            assert len(set(result["_cdc_ordinal"].to_pylist())) == result.num_rows
            assert progress[-1].done and progress[-1].rows == 20000
            assert progress[-1].fraction == 1.0 and progress[-1].eta == 0.0
            assert progress[-1].bytes > 0
            fields = [f for f in batches[0].schema if not f.name.startswith("_cdc_")]
            assert batches[0].schema == change_batch_schema(fields)
        finally:
            conn.execute(f"DROP TABLE {table}")


def test_progress_bar_draws_a_line():
    from cdc_notebook.snapshot import SnapshotProgress

    out = io.StringIO()
    bar = ProgressBar(stream=out, width=10)
    bar(SnapshotProgress("public.t", 500, 10_000, 1.0, 5, 10))
    bar(SnapshotProgress("public.t", 1000, 20_000, 2.0, 10, 10, done=True))
    text = out.getvalue()
    assert "#####....." in text and "##########" in text and text.endswith("\n")
    assert "ETA" in text


def test_no_select_privilege(pg, unique_name):
    table, slot, role = unique_name("priv"), unique_name("slot"), unique_name("role")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
        try:
            with ExportedSnapshot(pg.conninfo(), slot) as snap:
                with pytest.raises(TablePrivilegeMissing) as err:
                    list(snapshot_table(pg.conninfo(user=role), f"public.{table}", snap))
                assert "GRANT SELECT" in str(err.value)
        finally:
            _drop_slot(conn, slot)
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"DROP ROLE {role}")


def test_snapshot_no_longer_importable(pg, unique_name):
    table, slot = unique_name("gone"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        try:
            snap = ExportedSnapshot(pg.conninfo(), slot)
            name, lsn = snap.snapshot_name, snap.consistent_point
            snap.close()
            with pytest.raises(SnapshotNotImportable) as err:
                list(snapshot_table(pg.conninfo(), f"public.{table}", (name, lsn)))
            assert "keep ExportedSnapshot open" in str(err.value)
            with pytest.raises(SnapshotNotImportable):
                list(snapshot_table(pg.conninfo(), f"public.{table}", snap))
        finally:
            _drop_slot(conn, slot)
            conn.execute(f"DROP TABLE {table}")


def test_table_dropped_during_snapshot(pg, unique_name):
    table, slot = unique_name("drop"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int, v text)")
        conn.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 1000) g")
        try:
            with ExportedSnapshot(pg.conninfo(), slot) as snap:
                # planned (columns, chunks) at the snapshot, dropped before its rows are read
                with connect_session(pg.conninfo()) as planner:
                    plan = plan_table(planner, f"public.{table}")
                conn.execute(f"DROP TABLE {table}")
                with pytest.raises(TableDroppedDuringSnapshot) as err:
                    list(snapshot_table(pg.conninfo(), plan, snap))
                assert "dropped" in str(err.value)
                # and a table that is gone before planning
                with pytest.raises(TableDroppedDuringSnapshot):
                    list(snapshot_table(pg.conninfo(), f"public.{table}", snap))
        finally:
            _drop_slot(conn, slot)
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_wal_level_not_logical(pg_factory, unique_name):
    server = pg_factory(settings={"wal_level": "replica"}, plugin=False)
    with pytest.raises(WalLevelNotLogical) as err:
        ExportedSnapshot(server.conninfo(), unique_name("slot"))
    assert "wal_level = logical" in str(err.value)


def test_handoff_state_machine_and_merge_rule():
    h = TableHandoff("public.t", snapshot_lsn=100)
    assert h.state is TableState.PENDING
    h.start_snapshot()
    assert h.offer(90, "already in the snapshot") == []
    assert h.offer(150, "after") == []
    assert h.snapshot_done() == ["after"]
    assert h.state is TableState.STREAMING
    assert h.offer(100, "old") == [] and h.offer(101, "new") == ["new"]
    with pytest.raises(Exception):
        h.start_snapshot()
