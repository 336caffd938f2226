"""pgoutput through the native decoder: changes, streaming, aborts, mode choice, hand-off."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from bench.clients import PgoutputStream
from cdc_notebook.decode.events import (
    Begin,
    ChangeBatch,
    Commit,
    LogicalMessage,
    RelationSchema,
    Truncate,
)
from cdc_notebook.decode.pgoutput import (
    choose_mode,
    protocol_version_for,
    start_options,
)
from cdc_notebook.snapshot.tables import ExportedSnapshot, snapshot_table
from tests.pgutil import create_publication
from tests.test_pgoutput_helpers import batches_of, drop_slot, emit_end, read_until_end


def _slot(conn, slot):
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def _cleanup(conn, slot, pub, *tables):
    drop_slot(conn, slot)
    conn.execute(f"DROP PUBLICATION IF EXISTS {pub}")
    for t in tables:
        conn.execute(f"DROP TABLE IF EXISTS {t}")


def _rows(events, table):
    t = batches_of(events, table)
    return [] if t is None else t.to_pylist()


def test_protocol_negotiation_and_options():
    assert [protocol_version_for(v) for v in (130000, 140005, 150020, 160000, 180001)] == \
        [1, 2, 3, 4, 4]
    opts = start_options(["p1", 'we"ird'], protocol_version=4, binary=True)
    assert opts == {"proto_version": "4", "publication_names": '"p1","we""ird"',
                    "binary": "true", "messages": "true", "streaming": "on"}
    assert "streaming" not in start_options(["p"], protocol_version=1, binary=False)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_insert_update_delete_truncate_messages(pg, unique_name, binary):
    t, t2, slot, pub = unique_name("ops"), unique_name("full"), unique_name("slot"), unique_name("pub")
    with pg.connect() as conn:
        try:
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, big text)")
            conn.execute(f"CREATE TABLE {t2} (id int, v text)")
            conn.execute(f"ALTER TABLE {t2} REPLICA IDENTITY FULL")
            create_publication(conn, pub, [f"public.{t}", f"public.{t2}"])
            _slot(conn, slot)
            with PgoutputStream(pg.conninfo(), slot, pub, binary=binary) as stream:
                assert stream.mode == ("binary" if binary else "text")
                assert stream.protocol_version == protocol_version_for(
                    conn.info.server_version)
                big = "".join(f"{i:08x}" for i in range(40000))  # 320 kB: TOASTed
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (1, 'a', %s), (2, 'b', NULL)", (big,))
                    conn.execute(f"INSERT INTO {t2} VALUES (1, 'x')")
                conn.execute(f"UPDATE {t} SET v = 'a2' WHERE id = 1")       # big unchanged
                conn.execute(f"UPDATE {t} SET id = 3 WHERE id = 2")         # key change
                conn.execute(f"UPDATE {t2} SET v = 'y'")                    # full old row
                conn.execute(f"DELETE FROM {t} WHERE id = 3")
                conn.execute(f"DELETE FROM {t2}")
                conn.execute("SELECT pg_logical_emit_message(false, 'nontx', 'now')")
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (10, 'before truncate', NULL)")
                    conn.execute(f"TRUNCATE {t}")
                    conn.execute(f"INSERT INTO {t} VALUES (11, 'after truncate', NULL)")
                emit_end(conn, "ops")
                events = read_until_end(stream, "ops")
        finally:
            _cleanup(conn, slot, pub, t, t2)

    schemas = [e for e in events if isinstance(e, RelationSchema)]
    assert {s.qualified_name for s in schemas} == {f"public.{t}", f"public.{t2}"}
    rel = next(s for s in schemas if s.name == t)
    assert rel.key_columns == ("id",) and rel.replica_identity == "d"
    rows = _rows(events, f"public.{t}")
    ops = [(r["_cdc_op"], r["id"], r["v"]) for r in rows]
    assert ops == [("c", 1, "a"), ("c", 2, "b"), ("u", 1, "a2"), ("u", 3, "b"),
                   ("d", None, None), ("c", 10, "before truncate"), ("c", 11, "after truncate")]
    assert rows[0]["big"] == big and rows[0]["_cdc_unchanged_toast"] == []
    # the unchanged TOAST value is marked, never replaced by a placeholder
    assert rows[2]["big"] is None and rows[2]["_cdc_unchanged_toast"] == ["big"]
    assert rows[2]["_cdc_before"] is None
    assert rows[3]["_cdc_before"] == {"id": 2, "v": None, "big": None}  # old key
    assert rows[4]["_cdc_before"] == {"id": 3, "v": None, "big": None}
    full = _rows(events, f"public.{t2}")
    assert full[1]["_cdc_before"] == {"id": 1, "v": "x"}                 # full old row
    assert full[2]["_cdc_op"] == "d" and full[2]["_cdc_before"] == {"id": 1, "v": "y"}
    # metadata: one transaction's rows share commit/end LSN, ordinals from 1
    assert rows[0]["_cdc_xid"] == full[0]["_cdc_xid"]
    assert (rows[0]["_cdc_ordinal"], rows[1]["_cdc_ordinal"], full[0]["_cdc_ordinal"]) == (1, 2, 3)
    commits = {e.xid: e for e in events if isinstance(e, Commit)}
    for r in rows + full:
        c = commits[r["_cdc_xid"]]
        assert (r["_cdc_commit_lsn"], r["_cdc_end_lsn"]) == (c.commit_lsn, c.end_lsn)
        assert 0 < r["_cdc_lsn"] <= c.commit_lsn
    # TRUNCATE comes between the batches it separates; messages are events
    trunc_tx = [e for e in events if getattr(e, "xid", None) == rows[5]["_cdc_xid"]]
    kinds = [type(e).__name__ for e in trunc_tx if not isinstance(e, RelationSchema)]
    assert kinds == ["Begin", "ChangeBatch", "Truncate", "ChangeBatch", "Commit"]
    trunc = next(e for e in trunc_tx if isinstance(e, Truncate))
    assert trunc.tables == (f"public.{t}",) and not trunc.cascade
    msgs = [e for e in events if isinstance(e, LogicalMessage)]
    assert msgs[0].prefix == "nontx" and not msgs[0].transactional and msgs[0].xid == 0
    assert msgs[0].content == b"now"


def test_binary_stream_switches_to_text_for_a_text_only_relation(pg, unique_name):
    t, t2, slot, pub = unique_name("bin"), unique_name("arr"), unique_name("slot"), unique_name("pub")
    with pg.connect() as conn:
        try:
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v numeric(8,2))")
            conn.execute(f"CREATE TABLE {t2} (id int PRIMARY KEY, a int[])")
            conn.execute(f"CREATE PUBLICATION {pub} FOR TABLE {t}")
            assert choose_mode(conn, [pub]).binary
            _slot(conn, slot)
            with PgoutputStream(pg.conninfo(), slot, pub) as stream:
                assert stream.mode == "binary" and "binary decoders" in stream.mode_reason
                conn.execute(f"INSERT INTO {t} VALUES (1, 1.5)")
                # a table whose array column needs text joins the publication
                conn.execute(f"ALTER PUBLICATION {pub} ADD TABLE {t2}")
                conn.execute(f"INSERT INTO {t2} VALUES (1, '{{{{1,2}},{{3,4}}}}')")
                conn.execute(f"INSERT INTO {t} VALUES (2, 2.5)")
                emit_end(conn, "switch")
                events = read_until_end(stream, "switch")
                assert stream.mode == "text" and "switched from binary" in stream.mode_reason
        finally:
            _cleanup(conn, slot, pub, t, t2)
    got = _rows(events, f"public.{t}")
    assert [r["id"] for r in got if r["_cdc_op"] == "c"][-1] == 2
    arr = _rows(events, f"public.{t2}")
    assert arr[-1]["a"] == [1, 2, 3, 4]
    assert dict(arr[-1]["_cdc_unrepresentable"]) == {"a": "{{1,2},{3,4}}"}


def test_streamed_abort_and_rolled_back_savepoint_deliver_nothing(pg_factory, unique_name):
    server = pg_factory(settings={"logical_decoding_work_mem": "64kB"}, plugin=False)
    t, slot, pub = unique_name("strm"), unique_name("slot"), unique_name("pub")
    with server.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        create_publication(conn, pub, [f"public.{t}"])
        _slot(conn, slot)
        with PgoutputStream(server.conninfo(), slot, pub, max_rows=1000,
                            spill_bytes=256 << 10) as stream:
            # a large transaction, streamed while in progress, then aborted
            with conn.transaction(force_rollback=True):
                conn.execute(f"INSERT INTO {t} SELECT g, repeat('x', 50) "
                             "FROM generate_series(1000, 20999) g")
            # a savepoint rolled back inside a committed, streamed transaction
            with conn.transaction():
                conn.execute(f"INSERT INTO {t} VALUES (1, 'kept before')")
                # SAVEPOINT ... ROLLBACK TO SAVEPOINT
                with pytest.raises(RuntimeError, match="roll back to the savepoint"), \
                        conn.transaction():
                    conn.execute(f"INSERT INTO {t} SELECT g, repeat('y', 50) "
                                 "FROM generate_series(100000, 119999) g")
                    raise RuntimeError("roll back to the savepoint")
                conn.execute(f"INSERT INTO {t} SELECT g, 'kept' FROM generate_series(2, 5000) g")
            emit_end(conn, "strm")
            events = read_until_end(stream, "strm")
            stats = stream.decoder.stats
            streamed = conn.execute("SELECT stream_txns FROM pg_stat_replication_slots "
                                    "WHERE slot_name = %s", (slot,)).fetchone()
        drop_slot(conn, slot)
    assert streamed is not None and streamed[0] >= 1, "nothing was streamed"
    assert stats["spilled_bytes"] > 0          # the buffer went to disk past spill_bytes
    table = batches_of(events, f"public.{t}")
    ids = sorted(table["id"].to_pylist())
    assert ids == list(range(1, 5001))
    batches = [e for e in events if isinstance(e, ChangeBatch)]
    assert max(b.batch.num_rows for b in batches) <= 1000   # bounded batches
    assert table["_cdc_ordinal"].to_pylist() == list(range(1, 5001))
    begins = [e for e in events if isinstance(e, Begin)]
    commit = next(e for e in events if isinstance(e, Commit) and e.xid == begins[-2].xid)
    assert set(table["_cdc_end_lsn"].to_pylist()) == {commit.end_lsn}


def _writer(conninfo, table, stop, first_id, rounds):
    import psycopg

    with psycopg.connect(**conninfo, autocommit=True) as w:
        n = first_id
        for i in range(rounds):
            if stop.is_set():
                break
            with w.transaction():
                w.execute(f"INSERT INTO {table} SELECT g, 'new' FROM generate_series(%s, %s) g",
                          (n, n + 99))
                w.execute(f"UPDATE {table} SET v = 'upd' || %s WHERE id %% 97 = %s", (i, i % 97))
                w.execute(f"UPDATE {table} SET id = -id WHERE id = %s", (i * 13 + 7,))  # key
                w.execute(f"DELETE FROM {table} WHERE id %% 101 = %s", (i % 101,))
            n += 100


def _apply(state: dict, table: pa.Table) -> None:
    """Fold change rows into {id: v} (test-side check; the kit's live frames do it vectorized)."""
    for op, key, v, before in zip(table["_cdc_op"].to_pylist(), table["id"].to_pylist(),
                                  table["v"].to_pylist(), table["_cdc_before"].to_pylist(),
                                  strict=True):
        if op in ("r", "c"):
            state[key] = v
        elif op == "u":
            if before is not None:
                state.pop(before["id"], None)
            state[key] = v
        elif op == "d":
            state.pop(before["id"], None)


def _snapshot_plus_changes(pg, unique_name, rows, rounds, chunk_pages):
    t, slot, pub = unique_name("hand"), unique_name("slot"), unique_name("pub")
    with pg.connect() as conn:
        try:
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, %s) g",
                         (rows,))
            create_publication(conn, pub, [f"public.{t}"])
            stop = threading.Event()
            with ExportedSnapshot(pg.conninfo(), slot) as snap:
                writer = threading.Thread(target=_writer, args=(pg.conninfo(), t, stop,
                                                                rows + 1, rounds))
                writer.start()
                state: dict = {}
                try:
                    for batch in snapshot_table(pg.conninfo(), f"public.{t}", snap,
                                                chunk_pages=chunk_pages):
                        _apply(state, pa.Table.from_batches([batch]))
                finally:
                    writer.join()
                start = snap.consistent_point
            emit_end(conn, "hand")
            with PgoutputStream(pg.conninfo(), slot, pub, start_lsn=start) as stream:
                events = read_until_end(stream, "hand", timeout=600)
            for e in events:
                if isinstance(e, ChangeBatch):
                    assert e.batch["_cdc_end_lsn"][0].as_py() > start  # nothing twice
                    _apply(state, pa.Table.from_batches([e.batch]))
            final = dict(conn.execute(f"SELECT id, v FROM {t}").fetchall())
            assert state == final
        finally:
            _cleanup(conn, slot, pub, t)


def test_snapshot_plus_changes_equals_table(pg, unique_name):
    _snapshot_plus_changes(pg, unique_name, rows=50_000, rounds=40, chunk_pages=64)


@pytest.mark.slow
def test_snapshot_plus_changes_equals_table_1m(pg, unique_name):
    _snapshot_plus_changes(pg, unique_name, rows=1_000_000, rounds=200, chunk_pages=1024)
