"""The snapshot: exported-snapshot COPY into change batches (PostgreSQL 15 and 18)."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cdc_notebook._native import CopyDecoder, libpq_bind, make_plan
from cdc_notebook.decode.typespec import TypeCatalog, change_batch_schema
from cdc_notebook.errors import (
    SnapshotError,
    SnapshotNotImportable,
    TableDroppedDuringSnapshot,
    TablePrivilegeMissing,
    WalLevelNotLogical,
)
from cdc_notebook.snapshot import tables as snapshot_module
from cdc_notebook.snapshot.tables import (
    ExportedSnapshot,
    ProgressBar,
    connect_session,
    plan_table,
    snapshot_table,
)
from tests import test_pgoutput_types as types_tests


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
    from cdc_notebook.snapshot.tables import SnapshotProgress

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


# --------------------------------------------------------------------------- how COPY data is read


@pytest.fixture(params=["native", "messages"])
def read_path(request, monkeypatch):
    """Both ways a chunk's COPY is received: by the native decoder through psycopg's own
    libpq, and message by message on psycopg's pq layer (the fallback)."""
    monkeypatch.setattr(snapshot_module, "NATIVE_READ", request.param == "native")
    return request.param


def test_the_native_reader_binds_psycopgs_own_libpq(pg):
    with connect_session(pg.conninfo()) as conn:
        pgconn = conn.pgconn
        assert snapshot_module._bind_libpq(conn), snapshot_module._libpq_candidates()
        path = snapshot_module._libpq_candidates()[0]
        # another connection's figures, or a library that is not loaded, are refused
        assert not libpq_bind(path, pgconn.pgconn_ptr, pgconn.socket + 1, pgconn.backend_pid)
        assert not libpq_bind(path, pgconn.pgconn_ptr, pgconn.socket, pgconn.backend_pid + 1)
        assert not libpq_bind("/nonexistent/libpq.so.5", pgconn.pgconn_ptr, pgconn.socket,
                              pgconn.backend_pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="psycopg's libpq is found through /proc/self/maps (Linux only)")
def test_a_snapshot_takes_the_native_path(pg, unique_name):
    """With psycopg as installed here (psycopg-binary on Linux), every chunk's COPY is received
    by the native reader through psycopg's own libpq, never by the pq-layer fallback: a
    psycopg-binary release that renames, relocates or statically links its libpq fails here
    instead of silently halving the snapshot's throughput (docs/decisions.md)."""
    assert snapshot_module.NATIVE_READ
    table, slot = unique_name("native"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 100) "
                     "FROM generate_series(1, 5000) g")
        try:
            before = snapshot_module.read_path_counts()
            with ExportedSnapshot(pg.conninfo(), slot, temporary=True) as snap:
                rows = sum(b.num_rows for b in snapshot_table(pg.conninfo(), f"public.{table}",
                                                              snap, chunk_pages=8))
            after = snapshot_module.read_path_counts()
        finally:
            conn.execute(f"DROP TABLE {table}")
    assert rows == 5000
    assert after["messages"] == before["messages"], (psycopg.pq.__impl__,
                                                     snapshot_module._libpq_candidates())
    assert after["native"] - before["native"] > 1  # several chunks, each one natively


def test_every_type_in_small_batches_on_both_read_paths(pg, unique_name, read_path):
    """Hundreds of rows of every type (arrays of unusual shape included, their text fetched
    while the chunk's COPY is still running), in batches of a few rows: the values are the
    server's, whichever way the COPY was received."""
    name, slot = unique_name("types"), unique_name("slot")
    with pg.connect() as conn:
        try:
            types_tests._setup(conn, name, with_arrays=True)
            types_tests._insert(conn, name, with_arrays=True)
            cols = conn.execute(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) "
                "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 1 "
                "AND NOT attisdropped", (name,)).fetchone()[0]
            conn.execute(f"INSERT INTO {name} SELECT id + 10 * g, {cols} FROM {name} "
                         "CROSS JOIN generate_series(1, 100) g")
            with ExportedSnapshot(pg.conninfo(), slot, temporary=True) as snap:
                batches = list(snapshot_table(pg.conninfo(), f"public.{name}", snap,
                                              chunk_pages=2, batch_rows=7))
            assert all(b.num_rows <= 7 for b in batches)
            table = pa.Table.from_batches(batches).sort_by("id")
            assert table.num_rows == 4 * 101
            originals = table.filter(pc.less_equal(table["id"], 4))
            with connect_session(pg.conninfo()) as session:
                types_tests._check_server_domain(session, name, originals)
            # every copy equals its original, unrepresentable texts included
            ids = table["id"].to_pylist()
            position = {rid: i for i, rid in enumerate(ids)}
            copies = pa.array(range(len(ids)))
            their_originals = pa.array([position[rid % 10] for rid in ids])
            for col in table.column_names:
                if col in ("id", "_cdc_ordinal"):
                    continue
                a, b = table[col].take(copies), table[col].take(their_originals)
                if col in ("c_float4", "c_float8"):
                    assert types_tests._same_floats(a, b), col
                else:
                    assert a.equals(b), col
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"DROP DOMAIN IF EXISTS {name}_pos")
            conn.execute(f"DROP TYPE IF EXISTS {name}_mood")


def test_a_connection_lost_during_the_copy_is_an_error(pg, unique_name, read_path):
    table, slot = unique_name("lost"), unique_name("slot")
    app = unique_name("app")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int, v text)")
        conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 200) "
                     "FROM generate_series(1, 50000) g")

        def terminate(progress):
            # the workers are blocked on the bounded queue, in the middle of their chunks
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = %s", (app,))

        try:
            with ExportedSnapshot(pg.conninfo(), slot, temporary=True) as snap, \
                    pytest.raises(SnapshotError) as err:
                list(snapshot_table({**pg.conninfo(), "application_name": app},
                                    f"public.{table}", snap, batch_rows=100,
                                    progress=terminate))
            assert "terminat" in str(err.value) or "closed" in str(err.value) or \
                "lost" in str(err.value), err.value
        finally:
            conn.execute(f"DROP TABLE {table}")


def test_only_arrays_need_the_ctid_in_the_copy(pg, unique_name):
    table = unique_name("ctid")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int, v text, a int[])")
        try:
            with connect_session(pg.conninfo()) as session:
                assert plan_table(session, f"public.{table}").needs_ctid
                conn.execute(f"ALTER TABLE {table} DROP COLUMN a")
                assert not plan_table(session, f"public.{table}").needs_ctid
        finally:
            conn.execute(f"DROP TABLE {table}")


def test_a_snapshot_abandoned_midway_stops_its_workers(pg, unique_name, read_path):
    table, slot, app = unique_name("early"), unique_name("slot"), unique_name("app")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int, v text)")
        conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 200) "
                     "FROM generate_series(1, 50000) g")
        try:
            with ExportedSnapshot(pg.conninfo(), slot, temporary=True) as snap:
                batches = snapshot_table({**pg.conninfo(), "application_name": app},
                                         f"public.{table}", snap, batch_rows=500)
                assert next(batches).num_rows == 500
                batches.close()   # joins the workers, each in the middle of a COPY
                assert not [t for t in threading.enumerate()
                            if t.name.startswith(f"cdc-snapshot-public.{table}")]
            for _ in range(100):
                left = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE application_name = %s", (app,)).fetchone()[0]
                if not left:
                    break
                time.sleep(0.05)
            assert left == 0
        finally:
            conn.execute(f"DROP TABLE {table}")


def test_a_broken_connection_during_the_copy_is_an_error(pg, read_path):
    with connect_session(pg.conninfo()) as conn:
        int8 = TypeCatalog.load(conn).map_type(20, -1)
        decoder = CopyDecoder(make_plan([("g", int8)]), 0, 0, with_ctid=False)
        broken = []

        def emit():
            decoder.take()
            if not broken:   # the socket goes away under libpq, without a word from the server
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                broken.append(True)
            return True

        with pytest.raises(psycopg.OperationalError), \
                conn.cursor().copy("COPY (SELECT g::int8 FROM generate_series(1, 5000000) g) "
                                   "TO STDOUT (FORMAT binary)"):
            snapshot_module.receive_copy(conn, decoder, batch_rows=1000,
                                         batch_bytes=1 << 30, emit=emit)
        assert broken
