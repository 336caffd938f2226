"""The live mirror under DDL (issue 12, the DDL torture test's findings on ``LiveReader``):

1. two tables that swap names keep their own live frames (frames are keyed by the table's OID;
   names are labels that follow renames, and look-ups by the current name still work);
2. a table dropped before the ``LiveReader`` starts: ``catch_up()`` returns (the dropped table's
   reader ends once its changes are applied, and nobody waits for it);
3. DROP + CREATE under the same name before anyone reads: the dropped table's reader, with its
   changes, is still reachable from ``stream.readers`` (under a label of its own) and the
   LiveReader applies them; the new table has frames of its own;
4. a table that joins after its key column was renamed: its snapshot rows are labelled with
   the schema in force at the snapshot (no NULL key in the mirror);
5. a table dropped while it joins: what was committed before the drop is delivered, then
   ``TableDropped``;
6. a table with no change yet has an empty frame with its columns from the start.

Each on both plugins (the fixtures run them on PostgreSQL 15 or 18: ``--pg``).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest

from cdc_notebook.decode.events import TableDropped
from cdc_notebook.live.tables import LiveReader
from cdc_notebook.stream.cdc_stream import CDCStream
from cdc_notebook.stream.names import dropped_label

from .pgutil import drop_slot, relid_of, wait_for

PLUGINS = ["wal2arrow", "pgoutput"]




def _rows(frame: Any, *columns: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in frame.select(list(columns)).rows())


def _stop(server: Any, live: LiveReader, stream: CDCStream) -> None:
    live.stop()
    stream.close()
    if not stream.temporary:
        drop_slot(server, stream.slot.slot_name)


# --------------------------------------------------------------------------- 1


@pytest.mark.parametrize("plugin", PLUGINS)
def test_tables_that_swap_names_keep_their_own_frames(pg, unique_name, plugin):
    schema = unique_name("swap")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY, va text)")
        conn.execute(f"CREATE TABLE {schema}.b (id int PRIMARY KEY, vb int)")
        oid_a, oid_b = relid_of(conn, f"{schema}.a"), relid_of(conn, f"{schema}.b")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True)
    live = LiveReader(stream).start()
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.a VALUES (1, 'a1')")
            conn.execute(f"INSERT INTO {schema}.b VALUES (1, 10)")
        live.catch_up(timeout=60)
        with pg.connect() as conn:
            with conn.transaction():
                conn.execute(f"ALTER TABLE {schema}.a RENAME TO x")
                conn.execute(f"ALTER TABLE {schema}.b RENAME TO a")
                conn.execute(f"ALTER TABLE {schema}.x RENAME TO b")
            conn.execute(f"INSERT INTO {schema}.a VALUES (2, 20)")  # the table first called b
            conn.execute(f"INSERT INTO {schema}.b VALUES (2, 'a2')")  # ... first called a
        live.catch_up(timeout=60)
        assert live.error is None, live.error
        frames = live.frames
        wait_for(lambda: frames[f"{schema}.a"].relid == oid_b, "the frames did not follow")
        assert frames[f"{schema}.a"] is frames.by_relid[oid_b] is frames[oid_b]
        assert frames[f"{schema}.b"] is frames.by_relid[oid_a]
        assert _rows(frames.by_relid[oid_a].mirror(), "id", "va") == [(1, "a1"), (2, "a2")]
        assert _rows(frames.by_relid[oid_b].mirror(), "id", "vb") == [(1, 10), (2, 20)]
        assert sorted(frames.tables) == [f"{schema}.a", f"{schema}.b"]
    finally:
        _stop(pg, live, stream)


# --------------------------------------------------------------------------- 2


@pytest.mark.parametrize("plugin", PLUGINS)
def test_catch_up_returns_when_a_table_was_dropped_before_the_live_reader(pg, unique_name,
                                                                           plugin):
    schema = unique_name("dropq")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY, v text)")
        conn.execute(f"CREATE TABLE {schema}.b (id int PRIMARY KEY, v text)")
        oid_b = relid_of(conn, f"{schema}.b")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin).start()  # nobody reads
    live = LiveReader(stream)
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.b VALUES (1, 'b1')")
            conn.execute(f"DROP TABLE {schema}.b")
        wait_for(lambda: stream.router.readers[oid_b].table_dropped,
                  "the stream did not see the table dropped")
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.a VALUES (1, 'a1')")
        live.start()
        started = time.monotonic()
        live.catch_up(timeout=30)
        assert time.monotonic() - started < 30
        assert live.error is None, live.error
        assert _rows(live[f"{schema}.a"].mirror(), "id", "v") == [(1, "a1")]
        gone = live.frames.by_relid[oid_b]
        assert gone.dropped and _rows(gone.mirror(), "id", "v") == [(1, "b1")]
    finally:
        _stop(pg, live, stream)


# --------------------------------------------------------------------------- 3


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_dropped_tables_changes_stay_reachable_after_a_new_table_takes_its_name(
        pg, unique_name, plugin):
    schema = unique_name("dropcr")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY, v text)")
        conn.execute(f"CREATE TABLE {schema}.b (id int PRIMARY KEY, v text)")
        old = relid_of(conn, f"{schema}.b")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin).start()  # nobody reads
    live = LiveReader(stream)
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.b VALUES (1, 'old b1')")
            conn.execute(f"DROP TABLE {schema}.b")
            conn.execute(f"CREATE TABLE {schema}.b (id int PRIMARY KEY, w int)")
            new = relid_of(conn, f"{schema}.b")
        wait_for(lambda: f"{schema}.b" in stream.readers
                  and stream.readers[f"{schema}.b"].relid == new, "the new table did not join")
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.b VALUES (1, 10)")
            conn.execute(f"INSERT INTO {schema}.a VALUES (1, 'a1')")
        # The old table's reader, with its queued change, is listed under a label of its own.
        old_reader = stream.router.readers[old]
        assert old_reader.table_gone or old_reader.table_dropped
        label = dropped_label(old_reader)
        assert label == f"{schema}.b (dropped, OID {old})"
        assert list(stream.readers).count(f"{schema}.b") == 1
        assert stream.readers[label] is old_reader and label in list(stream.readers)
        assert stream.readers[f"{schema}.b"].relid == new  # the name is the new table's

        live.start()
        live.catch_up(timeout=60)
        assert live.error is None, live.error
        assert _rows(live.frames.by_relid[old].mirror(), "id", "v") == [(1, "old b1")]
        assert live.frames.by_relid[old].dropped
        assert live[f"{schema}.b"] is live.frames.by_relid[new]
        assert _rows(live[f"{schema}.b"].mirror(), "id", "w") == [(1, 10)]
        assert _rows(live[f"{schema}.a"].mirror(), "id", "v") == [(1, "a1")]
        # read to its end (TableDropped applied): the old reader leaves the map's listing
        wait_for(lambda: label not in list(stream.readers), "the drained reader is listed")
        assert stream.readers[old] is old_reader  # (still reachable by OID)
    finally:
        _stop(pg, live, stream)


# --------------------------------------------------------------------------- 4


@pytest.mark.parametrize("plugin", PLUGINS)
def test_snapshot_rows_of_a_joining_table_carry_the_snapshots_schema(pg, unique_name, plugin):
    """The table joins (its snapshot is read) after its key column was renamed twice since
    the changes the stream decodes before the join: the rows are labelled ``key``, not with
    the older name the stream last announced, and the mirror's key is never NULL."""
    schema = unique_name("joinkey")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin)  # not started: behind
    live = LiveReader(stream)
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {schema}.t VALUES (1, 'v1')")
            conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN id TO key")
            conn.execute(f"INSERT INTO {schema}.t VALUES (2, 'v2')")
            conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN key TO k2")
            conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN k2 TO key")
            oid_t = relid_of(conn, f"{schema}.t")
        live.start()
        wait_for(lambda: oid_t in stream.router.readers, "the table did not join")
        assert stream.wait_for_joins(timeout=60)
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.t VALUES (3, 'v3')")
        live.catch_up(timeout=60)
        assert live.error is None, live.error
        mirror = live.frames.by_relid[oid_t].mirror()
        assert mirror.columns == ["key", "v"]
        assert _rows(mirror, "key", "v") == [(1, "v1"), (2, "v2"), (3, "v3")]
        assert live.frames.by_relid[oid_t].key_columns == ("key",)
    finally:
        _stop(pg, live, stream)


# --------------------------------------------------------------------------- 5


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_table_dropped_while_joining_delivers_its_changes_then_table_dropped(
        pg, unique_name, plugin, monkeypatch):
    """The interleaving is made exact by running SQL at two points of the join (the server
    does the rest): a change after the table was added to the publication and before the low
    watermark (its effect would be in the snapshot), then, after the low watermark, another
    change and the DROP, before the snapshot could be read."""
    schema = unique_name("joindrop")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True)
    joining = CDCStream._snapshot_joining_table
    reading = CDCStream._read_joining_table

    def before_low(self: CDCStream, info: Any, join: Any) -> None:
        if info.name == "t":
            with pg.connect() as conn:
                conn.execute(f"INSERT INTO {schema}.t VALUES (2, 'before the low watermark')")
        joining(self, info, join)

    def before_snapshot(self: CDCStream, conn: Any, info: Any, join: Any) -> None:
        if info.name == "t":
            with pg.connect() as other:
                other.execute(f"INSERT INTO {schema}.t VALUES (3, 'in the window')")
                other.execute(f"DROP TABLE {schema}.t")
        reading(self, conn, info, join)

    monkeypatch.setattr(CDCStream, "_snapshot_joining_table", before_low)
    monkeypatch.setattr(CDCStream, "_read_joining_table", before_snapshot)
    live = LiveReader(stream).start()
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {schema}.t VALUES (1, 'before the join')")
            oid_t = relid_of(conn, f"{schema}.t")
        wait_for(lambda: oid_t in stream.router.readers, "the table did not join")
        assert stream.wait_for_joins(timeout=60), "the join never ended"
        reader = stream.router.readers[oid_t]
        wait_for(lambda: reader.dropped, "no TableDropped reached the LiveReader")
        live.catch_up(timeout=60)
        assert live.error is None, live.error
        frames = live.frames.by_relid[oid_t]
        assert frames.dropped
        rows = _rows(frames.mirror(), "id", "v")
        # what the stream decoded for the table before the drop (the first insert only if it
        # was decoded for the table: it came before the table was in the publication)
        assert (2, "before the low watermark") in rows and (3, "in the window") in rows
        assert set(rows) <= {(1, "before the join"), (2, "before the low watermark"),
                             (3, "in the window")}
    finally:
        _stop(pg, live, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_table_dropped_while_joining_ends_its_reader_with_table_dropped(
        pg, unique_name, plugin, monkeypatch):
    """The same interleaving read from the reader itself: its changes, then TableDropped."""
    schema = unique_name("joindropr")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True).start()
    reading = CDCStream._read_joining_table

    def before_snapshot(self: CDCStream, conn: Any, info: Any, join: Any) -> None:
        if info.name == "t":
            with pg.connect() as other:
                other.execute(f"INSERT INTO {schema}.t VALUES (3, 'in the window')")
                other.execute(f"DROP TABLE {schema}.t")
        reading(self, conn, info, join)

    monkeypatch.setattr(CDCStream, "_read_joining_table", before_snapshot)
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            oid_t = relid_of(conn, f"{schema}.t")
        wait_for(lambda: oid_t in stream.router.readers, "the table did not join")
        events = list(stream.router.readers[oid_t].events(follow=True, timeout=60))
        rows = [r for e in events if isinstance(e, pa.RecordBatch) for r in e.to_pylist()]
        assert [(r["_cdc_op"], r["id"], r["v"]) for r in rows] == [("c", 3, "in the window")]
        assert isinstance(events[-1], TableDropped) and events[-1].relid == oid_t
    finally:
        stream.close()


# --------------------------------------------------------------------------- 6


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_live_reader_started_after_a_key_rename_has_no_all_null_row(pg, unique_name, plugin):
    """Torture finding (tests/torture/repro/all_new_columns_queued.sql): the LiveReader starts
    after the stream queued a table's changes across a rename of its only column; its frame
    is made with the reader's newest schema, so the first schema it applies has no column in
    common with the (empty) mirror: the mirror gained an all-NULL row (polars broadcast the
    literals of the new columns to one row)."""
    schema = unique_name("allnew")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
        oid = relid_of(conn, f"{schema}.t")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin).start()  # nobody reads
    live = LiveReader(stream)
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.t VALUES (1), (2)")
            conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN id TO k")
            conn.execute(f"INSERT INTO {schema}.t VALUES (3)")
        wait_for(lambda: getattr(stream.router.readers[oid].schema, "names", [""])[0] == "k",
                  "the stream did not queue the renamed schema")
        live.start()
        live.catch_up(timeout=30)
        assert live.error is None, live.error
        frame = live.frames.by_relid[oid].mirror()
        assert frame.columns == ["k"]
        assert _rows(frame, "k") == [(1,), (2,), (3,)]
    finally:
        _stop(pg, live, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_table_with_no_change_yet_has_an_empty_frame_with_its_columns(pg, unique_name,
                                                                         plugin):
    """A stream without snapshot (CDCStream's default) on a quiet table: the LiveReader's
    frame exists from the start, empty, with the table's columns, key and attnums (it used to
    appear only with the table's first change, so ``live.frames[name]`` raised KeyError); a
    rename before the first change renames it, and rows arrive in it."""
    schema = unique_name("quiet")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
        conn.execute(f"ALTER TABLE {schema}.t DROP COLUMN v")
        conn.execute(f"ALTER TABLE {schema}.t ADD COLUMN w text")
        conn.execute(f"INSERT INTO {schema}.t VALUES (1, 'before the stream')")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin).start()
    live = LiveReader(stream).start()
    try:
        table = live.frames[f"{schema}.t"]
        assert table.mirror().columns == ["id", "w"] and table.mirror().height == 0
        assert table.key_columns == ("id",) and tuple(table.column_ids) == (1, 3)
        with pg.connect() as conn:
            conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN w TO z")
            conn.execute(f"INSERT INTO {schema}.t VALUES (2, 'two')")
        wait_for(lambda: live.frames[f"{schema}.t"].mirror().height == 1, "the row", 30)
        assert live.error is None, live.error
        frame = live.frames[f"{schema}.t"].mirror()
        assert frame.columns == ["id", "z"] and frame.rows() == [(2, "two")]
        # the catalog's columns were a placeholder: the stream's first schema replaced them
        # without a schema change (a stream behind DDL would show it undone, then redone)
        assert live.frames[f"{schema}.t"].schema_changes == []
    finally:
        _stop(pg, live, stream)


@pytest.mark.parametrize("plugin", ["wal2arrow"])
def test_a_table_that_joins_while_the_live_reader_starts(pg, unique_name, plugin):
    """DDL torture finding (PG 15, seed 8, ``RuntimeError: threads can only be started
    once``): a table joined while ``start()`` was making its frames; a consumer thread it had
    started adopted the new reader (appending and starting a thread) while ``start()`` was
    still starting the threads of its list, and started that one again. Here the join happens
    inside ``start()`` and the first consumer adopts it at once: start() returns, and the
    joined table's rows reach its frame."""
    schema = unique_name("joinstart")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for i in range(12):
            conn.execute(f"CREATE TABLE {schema}.t{i} (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin).start()
    with pg.connect() as conn:
        for i in range(12):
            conn.execute(f"INSERT INTO {schema}.t{i} VALUES (1)")

    class Racing(LiveReader):
        joined = False
        adopted_early = False

        def _bound_queue(self, reader: Any) -> None:
            super()._bound_queue(reader)
            if not Racing.joined:  # a table joins while start() is in its loop
                Racing.joined = True
                with pg.connect() as conn:
                    conn.execute(f"CREATE TABLE {schema}.late (id int PRIMARY KEY)")
                    conn.execute(f"INSERT INTO {schema}.late VALUES (7)")
                wait_for(lambda: any(getattr(r, "table_name", "") == "late"
                                     for r in list(stream.readers.values())),
                         "the late table's reader", 30)

        def _consume(self, *args: Any) -> None:
            if not Racing.adopted_early:
                Racing.adopted_early = True
                self._adopt_new_readers()  # what _sync does on its first pass
            super()._consume(*args)

    live = Racing(stream)
    try:
        live.start()
        wait_for(lambda: f"{schema}.late" in live.frames.tables
                 and live.frames[f"{schema}.late"].mirror().height == 1, "the late row", 30)
        assert live.error is None, live.error
    finally:
        _stop(pg, live, stream)
