"""Every change is built with the schema in force at its LSN, on both plugins, however far behind
the reader is (issue 12, findings 1, 2, 3, 9, 10): DDL between changes and read afterwards,
renames that stay renames, a change that cannot be decoded becoming an error of its table (not
a wedged slot), and TRUNCATE in the batch API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from cdc_notebook import CDCStream

from .pgutil import drop_slot, read_schemas

PLUGINS = ["wal2arrow", "pgoutput"]
META = ("_cdc_op", "_cdc_lsn", "_cdc_commit_lsn", "_cdc_end_lsn", "_cdc_commit_ts", "_cdc_xid",
        "_cdc_ordinal", "_cdc_before", "_cdc_unchanged_toast", "_cdc_unrepresentable")


def columns(batch: pa.RecordBatch) -> list[str]:
    return [n for n in batch.schema.names if n not in META]


def rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    """Rows in order, each with the columns of its own batch."""
    return [row for batch in batches for row in batch.to_pylist()]


def data(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in META}


def read_all(reader, want_rows: int, timeout: float = 60.0) -> list[pa.RecordBatch]:
    got: list[pa.RecordBatch] = []
    deadline = time.monotonic() + timeout
    while sum(b.num_rows for b in got) < want_rows and time.monotonic() < deadline:
        got += list(reader.batches())
    return got


@pytest.fixture
def stream_on(pg, unique_name) -> Iterator[Any]:
    """``stream_on(plugin, table)``: a CDCStream on a permanent slot, created before the
    workload runs, read afterwards; closed and its slot dropped after the test."""
    opened: list[tuple[CDCStream, str]] = []

    def make(plugin: str, *tables: str, slot: str | None = None, **kwargs: Any) -> CDCStream:
        slot = slot or unique_name("slot")
        stream = CDCStream(pg.conninfo("tcp"), [f"public.{t}" for t in tables], plugin=plugin,
                           slot_name=slot, temporary=False, **kwargs)
        opened.append((stream, slot))
        return stream

    yield make
    for stream, _slot in opened:
        stream.close()
    for slot in {slot for _s, slot in opened}:
        drop_slot(pg, slot)


# --------------------------------------------------------------------------- finding 1


@pytest.mark.parametrize("plugin", PLUGINS)
def test_changes_read_after_add_and_drop_column_keep_their_schema(pg, unique_name, stream_on,
                                                                   plugin):
    """INSERT (a, b); ADD COLUMN c; DROP COLUMN b; read afterwards: the insert is (a, b) with
    b = 2, and the one after the DDL is (a, c)."""
    t = unique_name("f1")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 2)")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN c int")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN b")
        conn.execute(f"INSERT INTO {t} VALUES (2, 3)")
    batches = read_all(stream[f"public.{t}"], 2)
    assert [columns(b) for b in batches] == [["a", "b"], ["a", "c"]]
    assert [data(r) for r in rows(batches)] == [{"a": 1, "b": 2}, {"a": 2, "c": 3}]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_changes_read_after_renames_keep_their_names_and_old_keys(pg, unique_name, stream_on,
                                                                  plugin):
    """Inserts and a key-changing update before RENAME COLUMN d TO f and a TO g arrive under
    the names they were written with, the update's old key included."""
    t = unique_name("f1r")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int, c int, d text, e text)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 10, 100, 'd1', 'e1'), (2, 20, 200, 'd2', 'e2')")
        conn.execute(f"UPDATE {t} SET a = 3 WHERE a = 1")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN d TO f")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN a TO g")
        conn.execute(f"INSERT INTO {t} VALUES (4, 40, 400, 'f4', 'e4')")
        conn.execute(f"UPDATE {t} SET g = 5 WHERE g = 2")
    got = rows(read_all(stream[f"public.{t}"], 5))
    assert [(r["_cdc_op"], sorted(data(r))) for r in got] == [
        ("c", ["a", "b", "c", "d", "e"]), ("c", ["a", "b", "c", "d", "e"]),
        ("u", ["a", "b", "c", "d", "e"]),
        ("c", ["b", "c", "e", "f", "g"]), ("u", ["b", "c", "e", "f", "g"])]
    assert got[2]["a"] == 3 and got[2]["_cdc_before"]["a"] == 1
    assert got[3]["g"] == 4 and got[3]["f"] == "f4"
    assert got[4]["g"] == 5 and got[4]["_cdc_before"]["g"] == 2
    assert list(got[4]["_cdc_before"]) == ["g", "b", "c", "f", "e"]


# --------------------------------------------------------------------------- finding 2


@pytest.mark.parametrize("plugin", PLUGINS)
def test_alter_type_and_drop_between_inserts_read_afterwards(pg, unique_name, stream_on, plugin):
    """INSERT (1, 2, 'x'); ALTER COLUMN b TYPE text; INSERT (2, 'two', 'y'); DROP COLUMN c;
    INSERT (3, 'three'): three batches with three schemas (pgoutput died with 'ArrowArray
    struct has 13 children, expected 12' on every restart)."""
    t = unique_name("f2")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int, c text)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 2, 'x')")
        conn.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE text")
        conn.execute(f"INSERT INTO {t} VALUES (2, 'two', 'y')")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN c")
        conn.execute(f"INSERT INTO {t} VALUES (3, 'three')")
    batches = read_all(stream[f"public.{t}"], 3)
    assert [columns(b) for b in batches] == [["a", "b", "c"], ["a", "b", "c"], ["a", "b"]]
    assert [batches[0].schema.field("b").type, batches[1].schema.field("b").type] == \
        [pa.int32(), pa.utf8()]
    assert [data(r) for r in rows(batches)] == [
        {"a": 1, "b": 2, "c": "x"}, {"a": 2, "b": "two", "c": "y"}, {"a": 3, "b": "three"}]
    assert stream.router.failed is None


@pytest.mark.parametrize("plugin", PLUGINS)
def test_add_column_inside_a_transaction_between_inserts(pg, unique_name, stream_on, plugin):
    t = unique_name("f2t")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn, conn.transaction():
        conn.execute(f"INSERT INTO {t} VALUES (1, 1), (2, 2)")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN c text")
        conn.execute(f"INSERT INTO {t} VALUES (3, 3, 'three')")
        conn.execute(f"UPDATE {t} SET c = 'one' WHERE a = 1")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN b")
        conn.execute(f"INSERT INTO {t} VALUES (4, 'four')")
    batches = read_all(stream[f"public.{t}"], 5)
    assert [columns(b) for b in batches] == [["a", "b"], ["a", "b", "c"], ["a", "c"]]
    assert [data(r) for r in rows(batches)] == [
        {"a": 1, "b": 1}, {"a": 2, "b": 2}, {"a": 3, "b": 3, "c": "three"},
        {"a": 1, "b": 1, "c": "one"}, {"a": 4, "c": "four"}]
    ordinals = [r["_cdc_ordinal"] for r in rows(batches)]
    assert ordinals == sorted(ordinals) and len({r["_cdc_end_lsn"] for r in rows(batches)}) == 1


# --------------------------------------------------------------------------- finding 3


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_column_that_needs_text_added_to_a_running_stream(pg, unique_name, stream_on, plugin):
    """ADD COLUMN x int[] with a value binary pgoutput cannot carry (a 2-D array): the product
    stream switches to text and loses nothing, on a permanent slot."""
    t = unique_name("f3")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, v numeric(6,2))")
    stream = stream_on(plugin, t)
    reader = stream[f"public.{t}"]
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 1.5)")
    first = read_all(reader, 1)
    with pg.connect() as conn:
        conn.execute(f"ALTER TABLE {t} ADD COLUMN x int[]")
        conn.execute(f"INSERT INTO {t} VALUES (2, 2.5, '{{{{1,2}},{{3,4}}}}')")
        conn.execute(f"INSERT INTO {t} VALUES (3, 3.5, '[0:1]={{7,8}}')")
    got = rows(first + read_all(reader, 2))
    assert [r["a"] for r in got] == [1, 2, 3]
    assert got[1]["x"] == [1, 2, 3, 4]
    assert got[1]["_cdc_unrepresentable"] == [("x", "{{1,2},{3,4}}")]
    assert got[2]["x"] == [7, 8] and got[2]["_cdc_unrepresentable"] == [("x", "[0:1]={7,8}")]
    assert stream.router.failed is None
    if plugin == "pgoutput":  # binary until the array column came, then text on a new connection
        assert stream.router.restarts == 1
        assert stream.decoding_mode.startswith("text: switched from binary")


def mirror_of(stream: CDCStream, name: str):
    """The live mirror of ``name`` built from ``stream`` by a LiveReader, read afterwards."""
    from cdc_notebook.live.tables import LiveReader

    live = LiveReader(stream, close_stream=False).start()
    try:
        live.catch_up(timeout=60)
        return live.frames[name]
    finally:
        live.stop()


def select(pg, sql: str) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_mirror_after_add_and_drop_read_afterwards_equals_the_table(pg, unique_name, stream_on,
                                                                    plugin):
    """The mirror of finding 1: INSERT (1, 2); ADD COLUMN c; DROP COLUMN b; UPDATE: the mirror
    is what the table holds, (1, c=NULL) then (1, c=3)."""
    t = unique_name("f1m")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 2), (5, 6)")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN c int")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN b")
        conn.execute(f"UPDATE {t} SET c = 3 WHERE a = 5")
    frame = mirror_of(stream, f"public.{t}").mirror().sort("a")
    assert frame.columns == ["a", "c"]
    assert frame.rows() == select(pg, f"SELECT a, c FROM {t} ORDER BY a") == [(1, None), (5, 3)]


# --------------------------------------------------------------------------- finding 9


@pytest.mark.parametrize("plugin", PLUGINS)
def test_renamed_columns_are_renamed_in_the_mirror(pg, unique_name, stream_on, plugin):
    """RENAME COLUMN keeps the column's identity (attnum): the mirror renames it in place and
    keeps older rows' values, key columns included; a column dropped and added again under its
    name is a new column (null for older rows, as in the table)."""
    t = unique_name("f9")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int, d text)")
    stream, other = stream_on(plugin, t), stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 10, 'x'), (2, 20, 'y')")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN d TO f")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN a TO g")
        conn.execute(f"INSERT INTO {t} VALUES (3, 30, 'z')")
        conn.execute(f"UPDATE {t} SET b = 11 WHERE g = 1")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN b")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN b int")
        conn.execute(f"INSERT INTO {t} VALUES (4, 'w', 40)")
    schemas = [e for e in stream[f"public.{t}"].events() if type(e).__name__ == "RelationSchema"]
    assert [(e.arrow_schema.names[:3], e.column_ids) for e in schemas] == [
        (["a", "b", "d"], (1, 2, 3)), (["g", "b", "f"], (1, 2, 3)), (["g", "f", "b"], (1, 3, 4))]
    live = mirror_of(other, f"public.{t}")
    frame = live.mirror().sort("g")
    assert frame.columns == ["g", "f", "b"]
    assert frame.rows() == select(pg, f"SELECT g, f, b FROM {t} ORDER BY g") == [
        (1, "x", None), (2, "y", None), (3, "z", None), (4, "w", 40)]
    assert [c.renamed for c in live.schema_changes] == [(("a", "g"), ("d", "f")), ()]
    assert live.schema_changes[1].added == ("b",) and live.schema_changes[1].dropped == ("b",)


# Sequences that look alike to a reader behind them when only today's catalog is known: each
# pair ends with the same column names and types, and differs in which columns are old.
LOOKALIKES = {
    "rename_then_add": ["ALTER TABLE {t} RENAME COLUMN b TO c", "ALTER TABLE {t} ADD COLUMN b int"],
    "drop_add_add": ["ALTER TABLE {t} DROP COLUMN b", "ALTER TABLE {t} ADD COLUMN c int",
                     "ALTER TABLE {t} ADD COLUMN b int"],
    "rename_and_retype": ["ALTER TABLE {t} RENAME COLUMN b TO c",
                          "ALTER TABLE {t} ALTER COLUMN c TYPE text"],
    "drop_add_text": ["ALTER TABLE {t} DROP COLUMN b", "ALTER TABLE {t} ADD COLUMN c text"],
    "drop_add_same": ["ALTER TABLE {t} DROP COLUMN b", "ALTER TABLE {t} ADD COLUMN b int"],
}


@pytest.mark.parametrize("case", sorted(LOOKALIKES))
def test_column_identity_is_exact_on_both_plugins_across_lookalike_ddl(pg, unique_name,
                                                                       stream_on, case):
    """pgoutput sends no attnums; the column history set-up installs gives them exactly,
    however far behind the reader is: both plugins give the same ids, and each mirror equals
    the table (a column renamed keeps its values, one dropped and added again is NULL for the
    older rows). Each case is one of a pair that ends with the same names and types."""
    t = unique_name("look")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int)")
    w2a, pgo = stream_on("wal2arrow", t), stream_on("pgoutput", t)
    w2a_live, pgo_live = stream_on("wal2arrow", t), stream_on("pgoutput", t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 10), (2, 20)")
        for stmt in LOOKALIKES[case]:
            conn.execute(stmt.format(t=t))
        conn.execute(f"UPDATE {t} SET a = 3 WHERE a = 2")
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (t,)).fetchall()]
    want = select(pg, f"SELECT {', '.join(cols)} FROM {t} ORDER BY a")

    def ids(stream: CDCStream) -> list[tuple[int, ...]]:
        return [e.column_ids for e in read_schemas(stream[f"public.{t}"], 3)[0]]

    assert ids(pgo)[-1] == ids(w2a)[-1] != (0,) * len(cols)
    assert pgo.column_identity.startswith("exact: from the column history"), pgo.column_identity
    for stream in (w2a_live, pgo_live):
        frame = mirror_of(stream, f"public.{t}").mirror().sort("a")
        assert frame.columns == cols
        assert frame.rows() == want, stream.plugin


# --------------------------------------------------------------------------- a change that cannot be decoded


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_undecodable_change_is_an_error_of_its_table_not_a_wedged_slot(pg, unique_name,
                                                                          stream_on, plugin):
    """A change whose column type was dropped before the stream read it (pgoutput decodes
    with today's catalog): that table's reader raises ChangeNotDecodable naming the table, LSN
    and fix, then goes on; the other table is untouched; a new stream on the same permanent
    slot works. wal2arrow decodes it in the server (the catalog of the change's time)."""
    from cdc_notebook.errors import ChangeNotDecodable

    t, u, mood = unique_name("bad"), unique_name("good"), unique_name("mood")
    with pg.connect() as conn:
        conn.execute(f"CREATE TYPE {mood} AS ENUM ('happy', 'sad')")
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, m {mood})")
        conn.execute(f"CREATE TABLE {u} (a int PRIMARY KEY)")
    stream = stream_on(plugin, t, u)
    slot = stream.slot.slot_name
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 'happy')")
        conn.execute(f"INSERT INTO {u} VALUES (1)")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN m")
        conn.execute(f"DROP TYPE {mood}")
        conn.execute(f"INSERT INTO {t} VALUES (2)")
        conn.execute(f"INSERT INTO {u} VALUES (2)")
    assert [r["a"] for r in rows(read_all(stream[f"public.{u}"], 2))] == [1, 2]
    reader = stream[f"public.{t}"]
    if plugin == "wal2arrow":
        got = rows(read_all(reader, 2))
        assert [(r["a"], r.get("m")) for r in got] == [(1, "happy"), (2, None)]
        return
    with pytest.raises(ChangeNotDecodable) as failure:
        list(reader.batches())
    message = str(failure.value)
    assert f"public.{t}" in message and "LSN" in message and "not in pg_type" in message
    assert "Fix:" in message and "snapshot" in message
    event = failure.value.event
    assert event.relid and event.lsn and event.end_lsn
    assert [r["a"] for r in rows(read_all(reader, 1))] == [2]  # then it goes on
    assert stream.router.failed is None
    stream.close()

    # A new stream on the same slot: reading resumes after what was consumed.
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (3)")
        conn.execute(f"INSERT INTO {u} VALUES (3)")
    again = stream_on(plugin, t, u, slot=slot)
    assert [r["a"] for r in rows(read_all(again[f"public.{t}"], 1))] == [3]
    assert [r["a"] for r in rows(read_all(again[f"public.{u}"], 1))] == [3]


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_reopening_the_slot_before_reading_the_failed_table_reports_it_again(
        pg, unique_name, stream_on, plugin):
    """The failure is not acknowledged until its reader has seen it: a new stream on the same
    permanent slot delivers it again as an error of that table (the stream itself works)."""
    from cdc_notebook.errors import ChangeNotDecodable

    t, mood = unique_name("bad2"), unique_name("mood")
    with pg.connect() as conn:
        conn.execute(f"CREATE TYPE {mood} AS ENUM ('happy')")
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, m {mood})")
    stream = stream_on(plugin, t)
    slot = stream.slot.slot_name
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 'happy')")
        conn.execute(f"ALTER TABLE {t} DROP COLUMN m")
        conn.execute(f"DROP TYPE {mood}")
        conn.execute(f"INSERT INTO {t} VALUES (2)")
    for _attempt in range(2):
        stream.start()
        time.sleep(1.0)
        assert stream.router.failed is None
        stream.close()
        stream = stream_on(plugin, t, slot=slot)
    with pytest.raises(ChangeNotDecodable):
        list(stream[f"public.{t}"].batches())
    assert [r["a"] for r in rows(read_all(stream[f"public.{t}"], 1))] == [2]


def test_a_row_that_fails_half_way_is_taken_back(pg):
    """The native decoder takes back the values of a row whose decoding failed at its second
    column: the batch before it is whole, the failure is an event, the table's later changes in
    that transaction are skipped, the next transaction decodes."""
    import struct

    from cdc_notebook.decode.events import ChangeBatch, DecodeFailed
    from cdc_notebook.decode.pgoutput import PgoutputEventDecoder

    def w(payload: bytes, lsn: int) -> bytes:
        return b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload

    def insert(*values: bytes) -> bytes:
        out = b"I" + struct.pack(">I", 900) + b"N" + struct.pack(">h", len(values))
        for v in values:
            out += b"t" + struct.pack(">I", len(v)) + v
        return out

    relation = (b"R" + struct.pack(">I", 900) + b"public\0t\0d" + struct.pack(">h", 2)
                + b"\x01a\0" + struct.pack(">Ii", 23, -1) + b"\x00b\0" + struct.pack(">Ii", 25, -1))
    with pg.connect() as conn:
        decoder = PgoutputEventDecoder(conn, binary=False)
        events = list(decoder.feed([
            w(b"B" + struct.pack(">QqI", 0x500, 0, 7), 0x100), w(relation, 0x100),
            w(insert(b"1", b"one"), 0x110), w(insert(b"2", b"two"), 0x120),
            w(insert(b"x3", b"three"), 0x130), w(insert(b"4", b"four"), 0x140),
            w(b"C" + struct.pack(">BQQq", 0, 0x500, 0x510, 0), 0x500),
            w(b"B" + struct.pack(">QqI", 0x600, 0, 8), 0x600),
            w(insert(b"5", b"five"), 0x610),
            w(b"C" + struct.pack(">BQQq", 0, 0x600, 0x610, 0), 0x600)]))
    batches = [e for e in events if isinstance(e, ChangeBatch)]
    failures = [e for e in events if isinstance(e, DecodeFailed)]
    assert [b.batch.select(["a", "b", "_cdc_ordinal"]).to_pylist() for b in batches] == [
        [{"a": 1, "b": "one", "_cdc_ordinal": 1}, {"a": 2, "b": "two", "_cdc_ordinal": 2}],
        [{"a": 5, "b": "five", "_cdc_ordinal": 1}]]
    for b in batches:
        b.batch.validate(full=True)
    assert len(failures) == 1 and failures[0].lsn == 0x130 and failures[0].end_lsn == 0x510
    assert failures[0].qualified_name == "public.t" and "x3" in failures[0].message

    # In a binary stream the same failure restarts the stream in text (BinaryModeUnsupported,
    # which ReplicationSource.needs_text_restart answers), instead of skipping the change.
    from cdc_notebook.errors import BinaryModeUnsupported

    def insert_binary(a: bytes) -> bytes:
        return (b"I" + struct.pack(">I", 900) + b"N" + struct.pack(">h", 2)
                + b"b" + struct.pack(">I", len(a)) + a + b"n")

    with pg.connect() as conn:
        decoder = PgoutputEventDecoder(conn, binary=True)
        with pytest.raises(BinaryModeUnsupported, match="could not be decoded from binary"):
            list(decoder.feed([
                w(b"B" + struct.pack(">QqI", 0x500, 0, 7), 0x100), w(relation, 0x100),
                w(insert_binary(struct.pack(">i", 1)), 0x110),
                w(insert_binary(b"\x00\x01\x02"), 0x120),  # an int4 of three bytes
                w(b"C" + struct.pack(">BQQq", 0, 0x500, 0x510, 0), 0x500)]))


# --------------------------------------------------------------------------- finding 10


@pytest.mark.parametrize("plugin", PLUGINS)
def test_truncate_is_a_marker_row_in_batches_and_the_documented_mirror_empties(
        pg, unique_name, stream_on, plugin):
    """``batches()`` carries a TRUNCATE as a row with ``_cdc_op = 't'`` (table columns null), in
    order with the changes, with the schema in force there; a LiveTable fed from ``batches()``
    (README's mirror) equals the table afterwards."""
    from cdc_notebook.live.tables import LiveTable

    t = unique_name("f10")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b text)")
    stream = stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 'one'), (2, 'two')")
        with conn.transaction():
            conn.execute(f"UPDATE {t} SET b = 'uno' WHERE a = 1")
            conn.execute(f"TRUNCATE {t}")
            conn.execute(f"INSERT INTO {t} VALUES (3, 'three')")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN c int")
        conn.execute(f"TRUNCATE {t}")
        conn.execute(f"INSERT INTO {t} VALUES (4, 'four', 4)")
    reader = stream[f"public.{t}"]
    batches = read_all(reader, 7)
    got = rows(batches)
    assert [(r["_cdc_op"], r["a"]) for r in got] == [
        ("c", 1), ("c", 2), ("u", 1), ("t", None), ("c", 3), ("t", None), ("c", 4)]
    marker = got[3]
    assert marker["b"] is None and marker["_cdc_before"] is None
    assert marker["_cdc_ordinal"] == 2 and got[4]["_cdc_ordinal"] == 3  # its place in the txn
    assert marker["_cdc_end_lsn"] == got[2]["_cdc_end_lsn"] == got[4]["_cdc_end_lsn"]
    assert marker["_cdc_commit_ts"] == got[2]["_cdc_commit_ts"]
    assert marker["_cdc_lsn"] > got[2]["_cdc_lsn"]
    second = next(b for b in batches if b.num_rows == 1 and b.column("_cdc_op")[0].as_py() == "t"
                  and "c" in b.schema.names)
    assert second.schema.names[:3] == ["a", "b", "c"]  # the schema in force at the TRUNCATE

    # README's mirror, built from batches() alone
    table = None
    for batch in batches:
        if table is None:
            table = LiveTable(f"public.{t}", batch.schema, reader.key_columns)
        table.apply(batch)
    assert table is not None
    assert table.mirror().sort("a").rows() == select(pg, f"SELECT * FROM {t} ORDER BY a") == \
        [(4, "four", 4)]
    assert table.stats.truncates == 2
    # a redelivery changes nothing
    for batch in batches:
        table.apply(batch)
    assert table.mirror().rows() == [(4, "four", 4)] and table.stats.truncates == 2


@pytest.mark.parametrize("plugin", PLUGINS)
def test_read_batches_has_the_truncate_and_events_the_truncate_event(pg, unique_name,
                                                                     stream_on, plugin):
    """The async API carries the marker too; events() keeps the Truncate event, whose names
    are those in force at the TRUNCATE (the table renamed after it)."""
    import asyncio

    from cdc_notebook.decode.events import Truncate

    t = unique_name("f10a")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY)")
    stream, other = stream_on(plugin, t), stream_on(plugin, t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1)")
        conn.execute(f"TRUNCATE {t}")
        conn.execute(f"ALTER TABLE {t} RENAME TO {t}_renamed")
        conn.execute(f"INSERT INTO {t}_renamed VALUES (2)")

    async def collect() -> list[pa.RecordBatch]:
        return [b async for b in stream[f"public.{t}"].read_batches()]

    got = rows(asyncio.run(collect()))
    assert [r["_cdc_op"] for r in got] == ["c", "t", "c"]
    truncates = [e for e in other[f"public.{t}"].events() if isinstance(e, Truncate)]
    assert [e.tables for e in truncates] == [(f"public.{t}",)]
    assert truncates[0].ordinal == 1 and truncates[0].end_lsn and truncates[0].commit_ts


@pytest.mark.parametrize("plugin", PLUGINS)
def test_logical_messages_reach_the_user(pg, unique_name, stream_on, plugin):
    """``stream.messages()``: logical messages, transactional and not, in stream order (the
    kit's own watermarks left out)."""
    t = unique_name("msg")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY)")
    stream = stream_on(plugin, t)
    messages = stream.messages()
    with pg.connect() as conn:
        with conn.transaction():
            conn.execute(f"INSERT INTO {t} VALUES (1)")
            conn.execute("SELECT pg_logical_emit_message(true, 'app', 'in a transaction')")
        conn.execute("SELECT pg_logical_emit_message(false, 'app', 'at once')")
        conn.execute("SELECT pg_logical_emit_message(true, 'other', 'x')")
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < 3 and time.monotonic() < deadline:
        got += list(messages)
        messages = stream.messages()
    assert [(m.prefix, m.content, m.transactional) for m in got] == [
        ("app", b"in a transaction", True), ("app", b"at once", False), ("other", b"x", True)]
    assert [b.num_rows for b in stream[f"public.{t}"].batches()] == [1]
    with pg.connect() as conn:
        conn.execute("SELECT pg_logical_emit_message(true, 'app', 'later')")
        conn.execute("SELECT pg_logical_emit_message(true, 'other', 'y')")
    follow = stream.messages(prefix="app", follow=True, timeout=10)
    assert next(follow).content == b"later"
    follow.close()


# --------------------------------------------------------------------------- both plugins, same WAL


def test_wal2arrow_and_pgoutput_give_the_same_batches_across_ddl(pg, unique_name, stream_on):
    """Two slots on the same tables, one per plugin, the same WAL: the same rows, column names,
    types, values, ``_cdc_*`` (op, LSNs, ordinals, before-images) across a DDL sequence."""
    t = unique_name("same")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int, c text, d numeric(8,2))")
    w2a, pgo = stream_on("wal2arrow", t), stream_on("pgoutput", t)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (1, 10, 'one', 1.5), (2, 20, 'two', 2.5)")
        conn.execute(f"UPDATE {t} SET a = 11 WHERE a = 1")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN e jsonb")
        conn.execute(f"INSERT INTO {t} VALUES (3, 30, 'three', 3.5, '{{\"k\": [1, 2]}}')")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN c TO c2")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN a TO id")
        conn.execute(f"UPDATE {t} SET id = 12, c2 = 'uno' WHERE id = 11")
        conn.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE bigint")
        conn.execute(f"DELETE FROM {t} WHERE id = 2")
        with conn.transaction():
            conn.execute(f"INSERT INTO {t} VALUES (4, 40, 'four', 4.5, 'null')")
            conn.execute(f"ALTER TABLE {t} DROP COLUMN d")
            conn.execute(f"INSERT INTO {t} VALUES (5, 50, 'five', '[]')")
            conn.execute(f"TRUNCATE {t}")
            conn.execute(f"INSERT INTO {t} VALUES (6, 60, 'six', '{{}}')")
        conn.execute(f"ALTER TABLE {t} REPLICA IDENTITY FULL")
        conn.execute(f"UPDATE {t} SET b = 61 WHERE id = 6")
        conn.execute(f"DELETE FROM {t} WHERE id = 6")
    want = 12
    a = read_all(w2a[f"public.{t}"], want)
    b = read_all(pgo[f"public.{t}"], want)
    rows_a, rows_b = rows(a), rows(b)
    assert len(rows_a) == len(rows_b) == want
    assert [r["_cdc_op"] for r in rows_a] == list("ccucudcctcud")
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x == y
    types_a = [[(f.name, f.type) for f in s.schema] for s in a]
    types_b = [[(f.name, f.type) for f in s.schema] for s in b]
    assert [dict(x) for x in types_a if x] and \
        {tuple(x) for x in types_a} == {tuple(x) for x in types_b}


def test_the_plugin_speaks_both_frame_formats_and_refuses_others(pg, unique_name):
    """Format 2 adds column ids to schema frames and an ordinal to TRUNCATE; format 1 is still
    spoken (and read); a version the plugin does not speak is an ERROR naming the ones it does."""
    import psycopg

    from cdc_notebook.decode.events import RelationSchema, Truncate
    from cdc_notebook.decode.wal2arrow import slot_changes

    t, slot = unique_name("fmt"), unique_name("slot")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b int)")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')", (slot,))
        try:
            conn.execute(f"ALTER TABLE {t} DROP COLUMN b")
            conn.execute(f"ALTER TABLE {t} ADD COLUMN c int")
            conn.execute(f"INSERT INTO {t} VALUES (1, 1)")
            conn.execute(f"TRUNCATE {t}")
            for version, ids, ordinal in (("1", (), 0), ("2", (1, 3), 1)):
                events = slot_changes(conn, slot, {"format_version": version}, peek=True)
                schemas = [e for e in events if isinstance(e, RelationSchema)]
                truncates = [e for e in events if isinstance(e, Truncate)]
                assert [s.column_ids for s in schemas] == [ids]
                assert [e.ordinal for e in truncates] == [ordinal]
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="format versions 1 to 2"):
                slot_changes(conn, slot, {"format_version": "3"}, peek=True)
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_reader_far_behind_with_batches_spilled_to_disk(pg, unique_name, stream_on, plugin):
    """Readers far behind a DDL (their batches spilled to disk past the memory bound) still get
    each change with its own schema, the TRUNCATE marker with its, and the renamed key column
    renamed in the mirror."""
    t = unique_name("far")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (a int PRIMARY KEY, b text)")
    stream = stream_on(plugin, t, memory_limit=1 << 20)  # 1 MiB per reader: the rest spills
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i")
        conn.execute(f"ALTER TABLE {t} RENAME COLUMN a TO id")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN c int")
        conn.execute(f"UPDATE {t} SET c = id WHERE id <= 3")
        conn.execute(f"TRUNCATE {t}")
        conn.execute(f"INSERT INTO {t} VALUES (1, 'one', 1)")
    reader = stream[f"public.{t}"]
    stream.start()
    deadline = time.monotonic() + 60
    while stream.router.acks.received < stream.current_wal_lsn() and time.monotonic() < deadline:
        stream.router.request_position()
        time.sleep(0.1)
    assert reader.spilled_bytes > 0  # nobody read: the batches went to disk
    batches = read_all(reader, 20005)
    layouts = [tuple(columns(b)) for b in batches]
    first = layouts.count(("a", "b"))
    assert layouts == [("a", "b")] * first + [("id", "b", "c")] * (len(layouts) - first)
    assert sum(b.num_rows for b in batches[:first]) == 20000
    got = rows(batches)
    assert [r["_cdc_op"] for r in got[-5:]] == ["u", "u", "u", "t", "c"]
    assert got[-5]["_cdc_before"] is None and got[-5]["c"] == got[-5]["id"]
