"""wal2arrow through the SQL interface, decoded with the reference decoder (cdc_notebook.decode.wal2arrow)."""

from __future__ import annotations

import datetime
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from cdc_notebook.decode import typespec as t
from cdc_notebook.decode.events import (
    METADATA_COLUMNS,
    Begin,
    ChangeBatch,
    Commit,
    LogicalMessage,
    RelationSchema,
    Truncate,
)
from cdc_notebook.decode.wal2arrow import (
    FrameDecoder,
    frame_header,
    slot_changes,
)
from cdc_notebook.errors import FrameError


class Env:
    """A private schema and a wal2arrow slot on the shared server."""

    def __init__(self, pg, unique_name):
        self.pg = pg
        self.schema = unique_name("w2a")
        self.slot = unique_name("w2a_slot")
        self.conn = pg.connect()
        self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self.pubs: list[str] = []
        self.slots = [self.slot]
        self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')",
                          (self.slot,))

    def q(self, name: str) -> str:
        return f'"{self.schema}".{name}'

    def run(self, *statements: str) -> None:
        for stmt in statements:
            self.conn.execute(stmt)

    def changes(self, options: dict[str, str] | None = None, **kw):
        return slot_changes(self.conn, self.slot, options, **kw)

    def relid(self, table: str) -> int:
        return self.conn.execute(f"SELECT '{self.q(table)}'::regclass::oid::int8").fetchone()[0]

    def close(self) -> None:
        for slot in self.slots:
            self.conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM "
                              "pg_replication_slots WHERE slot_name = %s", (slot,))
        for pub in self.pubs:
            self.conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(pub)))
        self.conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))
        self.conn.close()


@pytest.fixture
def env(pg, unique_name):
    e = Env(pg, unique_name)
    yield e
    e.close()


def batches(events, name: str | None = None) -> list[ChangeBatch]:
    return [e for e in events if isinstance(e, ChangeBatch) and (name is None or e.name == name)]


def rows(events, name: str | None = None) -> list[dict]:
    out: list[dict] = []
    for b in batches(events, name):
        out += b.batch.to_pylist()
    return out


def test_insert_update_delete_with_metadata_columns(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY, v text)")
    env.run(f"INSERT INTO {env.q('t')} VALUES (1, 'a'), (2, 'b')",
            f"UPDATE {env.q('t')} SET v = 'c' WHERE id = 2",
            f"UPDATE {env.q('t')} SET id = 3 WHERE id = 1",
            f"DELETE FROM {env.q('t')} WHERE id = 2")
    events = env.changes()
    kinds = [type(e).__name__ for e in events]
    # four transactions; the schema is sent once, before the first batch
    assert kinds == ["Begin", "RelationSchema", "ChangeBatch", "Commit",
                     "Begin", "ChangeBatch", "Commit", "Begin", "ChangeBatch", "Commit",
                     "Begin", "ChangeBatch", "Commit"]
    schema = events[1]
    assert isinstance(schema, RelationSchema)
    assert (schema.namespace, schema.name, schema.replica_identity, schema.key_columns) == (
        env.schema, "t", "d", ("id",))
    assert schema.relid == env.relid("t") and schema.schema_version == 1
    assert schema.arrow_schema.names == ["id", "v", *METADATA_COLUMNS]

    got = rows(events)
    assert [(r["_cdc_op"], r["id"], r["v"]) for r in got] == [
        ("c", 1, "a"), ("c", 2, "b"), ("u", 2, "c"), ("u", 3, "a"), ("d", None, None)]
    # before-images: none for inserts and key-preserving updates, the old key otherwise
    assert [r["_cdc_before"] for r in got] == [
        None, None, None, {"id": 1, "v": None}, {"id": 2, "v": None}]
    begins = [e for e in events if isinstance(e, Begin)]
    commits = [e for e in events if isinstance(e, Commit)]
    for b, c, batch in zip(begins, commits, batches(events), strict=True):
        assert (b.xid, b.commit_lsn, b.end_lsn, b.commit_ts) == (
            c.xid, c.commit_lsn, c.end_lsn, c.commit_ts)
        assert b.end_lsn > b.commit_lsn > 0 and batch.xid == b.xid
        tbl = batch.batch
        assert set(tbl.column("_cdc_xid").to_pylist()) == {b.xid}
        assert set(tbl.column("_cdc_commit_lsn").to_pylist()) == {b.commit_lsn}
        assert set(tbl.column("_cdc_end_lsn").to_pylist()) == {b.end_lsn}
        ts = tbl.column("_cdc_commit_ts").cast(pa.int64()).to_pylist()
        assert set(ts) == {b.commit_ts}
        assert tbl.column("_cdc_ordinal").to_pylist() == list(range(1, tbl.num_rows + 1))
        lsns = tbl.column("_cdc_lsn").to_pylist()
        assert lsns == sorted(lsns) and lsns[-1] < b.commit_lsn
    # commit timestamps agree with the server's clock (within a minute)
    now_us = env.conn.execute(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8").fetchone()[0]
    assert abs(now_us - commits[-1].commit_ts) < 60_000_000


def test_plugin_schema_equals_the_spec_schema(env):
    """The C type table and cdc_notebook.decode.typespec agree: same Arrow schema, same field metadata."""
    env.run(f"CREATE TYPE {env.q('mood')} AS ENUM ('sad', 'ok')",
            f"CREATE DOMAIN {env.q('posint')} AS int4 CHECK (VALUE > 0)",
            f"""CREATE TABLE {env.q('wide')} (a bool, b int2, c int4, d int8, e oid, f float4,
                g float8, h numeric(10,2), i numeric, j text, k varchar(5), l char(3), m name,
                n bytea, o date, p time, q timetz, r timestamp, s timestamptz, u interval,
                v uuid, w json, x jsonb, y {env.q('mood')}, z inet, aa cidr, ab macaddr,
                ac macaddr8, ad int4[], ae {env.q('posint')}, af int4range, ag numeric(5,1)[],
                ah text[][], ai point, aj timetz[])""",
            f"INSERT INTO {env.q('wide')} (a) VALUES (true)")
    events = env.changes()
    (schema,) = [e for e in events if isinstance(e, RelationSchema)]
    expected = t.change_batch_schema(t.relation_fields(env.conn, env.relid("wide")))
    assert schema.arrow_schema.equals(expected, check_metadata=True), (
        schema.arrow_schema, expected)
    for got, want in zip(schema.arrow_schema, expected, strict=True):
        assert got.metadata == want.metadata, got.name
        assert got.nullable == want.nullable, got.name


def test_replica_identities_and_before_images(env):
    for ident in ("default", "full", "nothing", "index"):
        env.run(f"CREATE TABLE {env.q(ident)} (id int NOT NULL, u int NOT NULL, v text)",
                f"CREATE UNIQUE INDEX {ident}_u ON {env.q(ident)} (u)",
                f"ALTER TABLE {env.q(ident)} ADD PRIMARY KEY (id)")
        clause = f"USING INDEX {ident}_u" if ident == "index" else ident.upper()
        env.run(f"ALTER TABLE {env.q(ident)} REPLICA IDENTITY {clause}",
                f"INSERT INTO {env.q(ident)} VALUES (1, 10, 'x')",
                f"UPDATE {env.q(ident)} SET v = 'y'",
                f"UPDATE {env.q(ident)} SET id = 2, u = 20",
                f"DELETE FROM {env.q(ident)}")
    events = env.changes()
    schemas = {e.name: e for e in events if isinstance(e, RelationSchema)}
    assert schemas["default"].replica_identity == "d"
    assert schemas["default"].key_columns == ("id",)
    assert schemas["full"].replica_identity == "f"
    assert schemas["full"].key_columns == ("id", "u", "v")
    assert schemas["nothing"].replica_identity == "n" and schemas["nothing"].key_columns == ()
    assert schemas["index"].replica_identity == "i" and schemas["index"].key_columns == ("u",)

    def before(name):
        return [(r["_cdc_op"], r["_cdc_before"]) for r in rows(events, name)]

    assert before("default") == [("c", None), ("u", None),
                                 ("u", {"id": 1, "u": None, "v": None}),
                                 ("d", {"id": 2, "u": None, "v": None})]
    assert before("full") == [("c", None), ("u", {"id": 1, "u": 10, "v": "x"}),
                              ("u", {"id": 1, "u": 10, "v": "y"}),
                              ("d", {"id": 2, "u": 20, "v": "y"})]
    # NOTHING: no old key, deletes carry none either
    assert before("nothing") == [("c", None), ("u", None), ("u", None), ("d", None)]
    assert before("index") == [("c", None), ("u", None),
                               ("u", {"id": None, "u": 10, "v": None}),
                               ("d", {"id": None, "u": 20, "v": None})]
    # before_images off: never sent
    env.run(f"UPDATE {env.q('full')} SET v = 'z'")  # no rows left: nothing
    env.run(f"INSERT INTO {env.q('full')} VALUES (5, 50, 'a')", f"DELETE FROM {env.q('full')}")
    got = rows(env.changes({"before_images": "off"}), "full")
    assert [(r["_cdc_op"], r["_cdc_before"]) for r in got] == [("c", None), ("d", None)]


def test_unchanged_toast_values_are_masked(env):
    env.run(f"CREATE TABLE {env.q('big')} (id int PRIMARY KEY, small text, doc text)",
            f"ALTER TABLE {env.q('big')} ALTER doc SET STORAGE EXTERNAL",
            f"INSERT INTO {env.q('big')} VALUES (1, 'a', repeat('x', 100000))",
            f"UPDATE {env.q('big')} SET small = 'b'",
            f"UPDATE {env.q('big')} SET doc = repeat('y', 50000)")
    got = rows(env.changes())
    assert got[0]["doc"] == "x" * 100000 and got[0]["_cdc_unchanged_toast"] == []
    assert got[1]["small"] == "b" and got[1]["doc"] is None
    assert got[1]["_cdc_unchanged_toast"] == ["doc"]
    assert got[2]["doc"] == "y" * 50000 and got[2]["_cdc_unchanged_toast"] == []


def test_truncate_and_logical_messages(env):
    env.run(f"CREATE TABLE {env.q('a')} (id int PRIMARY KEY)",
            f"CREATE TABLE {env.q('b')} (id int PRIMARY KEY)")
    with env.conn.transaction():
        env.run(f"INSERT INTO {env.q('a')} VALUES (1)",
                "SELECT pg_logical_emit_message(true, 'app', 'in txn')",
                f"INSERT INTO {env.q('a')} VALUES (2)")
    env.run("SELECT pg_logical_emit_message(false, 'app', '\\x00ff'::bytea)",
            f"TRUNCATE {env.q('a')}, {env.q('b')} RESTART IDENTITY CASCADE")
    events = env.changes({"messages": "on"})
    kinds = [type(e).__name__ for e in events]
    # format 2: the schema of a truncated relation not sent yet in the session comes first
    assert kinds == ["Begin", "RelationSchema", "ChangeBatch", "LogicalMessage", "ChangeBatch",
                     "Commit", "LogicalMessage", "Begin", "RelationSchema", "Truncate", "Commit"]
    assert events[8].name == "b" and events[8].column_ids == (1,)
    msg = events[3]
    assert isinstance(msg, LogicalMessage)
    assert (msg.transactional, msg.prefix, msg.content) == (True, "app", b"in txn")
    assert msg.xid == events[0].xid
    nontx = events[6]
    assert (nontx.transactional, nontx.xid, nontx.content) == (False, 0, b"\x00\xff")
    trunc = events[9]
    assert isinstance(trunc, Truncate)
    assert trunc.ordinal == 1 and trunc.end_lsn == events[7].end_lsn
    assert set(trunc.tables) == {f"{env.schema}.a", f"{env.schema}.b"}
    assert set(trunc.relids) == {env.relid("a"), env.relid("b")}
    assert trunc.cascade and trunc.restart_identity
    # messages are off by default (as in pgoutput)
    env.run("SELECT pg_logical_emit_message(false, 'app', 'x')")
    assert env.changes() == []


def test_schema_change_mid_stream_gives_a_new_schema_version(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY, a int, b text)",
            f"INSERT INTO {env.q('t')} VALUES (1, 1, 'x')",
            f"ALTER TABLE {env.q('t')} ADD COLUMN c float8",
            f"INSERT INTO {env.q('t')} VALUES (2, 2, 'y', 2.5)",
            f"ALTER TABLE {env.q('t')} DROP COLUMN a",
            f"INSERT INTO {env.q('t')} VALUES (3, 'z', 3.5)",
            f"ALTER TABLE {env.q('t')} ALTER COLUMN b TYPE int USING length(b)",
            f"INSERT INTO {env.q('t')} VALUES (4, 44, 4.5)",
            f"UPDATE {env.q('t')} SET c = 0")  # same schema: no new frame
    events = env.changes()
    schemas = [e for e in events if isinstance(e, RelationSchema)]
    assert [s.schema_version for s in schemas] == [1, 2, 3, 4]
    assert [s.arrow_schema.names[:3] for s in schemas] == [
        ["id", "a", "b"], ["id", "a", "b"], ["id", "b", "c"], ["id", "b", "c"]]
    assert schemas[1].arrow_schema.names[3] == "c"
    assert schemas[3].arrow_schema.field("b").type == pa.int32()
    bs = batches(events)
    assert [b.schema_version for b in bs] == [1, 2, 3, 4, 4]
    assert bs[3].batch.to_pylist()[0]["b"] == 44


def test_schema_change_inside_one_transaction(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY)")
    with env.conn.transaction():
        env.run(f"INSERT INTO {env.q('t')} VALUES (1)",
                f"ALTER TABLE {env.q('t')} ADD COLUMN v text",
                f"INSERT INTO {env.q('t')} VALUES (2, 'two')")
    events = env.changes()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Begin", "RelationSchema", "ChangeBatch", "RelationSchema", "ChangeBatch",
                     "Commit"]
    assert [r["_cdc_ordinal"] for r in rows(events)] == [1, 2]
    assert rows(events)[1]["v"] == "two"


def test_publications_with_pgoutput_meaning(env, unique_name):
    s = env.schema
    env.run(f"CREATE TABLE {env.q('inpub')} (id int PRIMARY KEY)",
            f"CREATE TABLE {env.q('outpub')} (id int PRIMARY KEY)",
            f"CREATE TABLE {env.q('parted')} (id int PRIMARY KEY) PARTITION BY RANGE (id)",
            f"CREATE TABLE {env.q('part1')} PARTITION OF {env.q('parted')} "
            "FOR VALUES FROM (0) TO (100)")
    p_ins, p_root, p_leaf = unique_name("pub"), unique_name("pub"), unique_name("pub")
    env.pubs += [p_ins, p_root, p_leaf]
    env.run(f"CREATE PUBLICATION {p_ins} FOR TABLE {env.q('inpub')} WITH (publish = 'insert')",
            f"CREATE PUBLICATION {p_root} FOR TABLE {env.q('parted')} "
            "WITH (publish_via_partition_root = true)",
            f"CREATE PUBLICATION {p_leaf} FOR TABLE {env.q('parted')}")
    env.run(f"INSERT INTO {env.q('inpub')} VALUES (1)", f"INSERT INTO {env.q('outpub')} VALUES (1)",
            f"DELETE FROM {env.q('inpub')}", f"INSERT INTO {env.q('parted')} VALUES (5)")
    events = env.changes({"publication_names": p_ins}, peek=True)
    assert {b.name for b in batches(events)} == {"inpub"}
    assert [r["_cdc_op"] for r in rows(events)] == ["c"]  # deletes not published
    via_root = env.changes({"publication_names": f"{p_ins},{p_root}"}, peek=True)
    assert {b.name for b in batches(via_root)} == {"inpub", "parted"}
    leaf = env.changes({"publication_names": p_leaf}, peek=True)
    assert {b.name for b in batches(leaf)} == {"part1"}
    everything = env.changes()
    assert {b.name for b in batches(everything)} == {"inpub", "outpub", "part1"}

    if env.pg.major >= 15:
        p_schema = unique_name("pub")
        env.pubs.append(p_schema)
        env.run(f'CREATE PUBLICATION {p_schema} FOR TABLES IN SCHEMA "{s}"',
                f"INSERT INTO {env.q('outpub')} VALUES (2)")
        got = env.changes({"publication_names": p_schema})
        assert {b.name for b in batches(got)} == {"outpub"}


def test_unknown_publication_is_an_error_with_a_hint(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int)", f"INSERT INTO {env.q('t')} VALUES (1)")
    with pytest.raises(psycopg.errors.UndefinedObject) as err:
        env.changes({"publication_names": "no_such_pub"}, peek=True)
    assert "CREATE PUBLICATION" in err.value.diag.message_hint


@pytest.mark.parametrize("options, error, message, hint", [
    ({"no_such_option": "1"}, psycopg.errors.InvalidParameterValue, "unknown option",
     "Valid options"),
    ({"format_version": "99"}, psycopg.errors.FeatureNotSupported, "unsupported format_version",
     "format versions 1 to 2"),
    ({"format_version": "one"}, psycopg.errors.InvalidParameterValue, "must be an integer",
     "format versions"),
    ({"batch_rows": "0"}, psycopg.errors.InvalidParameterValue, "batch_rows", "integer"),
    ({"batch_bytes": "lots"}, psycopg.errors.InvalidParameterValue, "batch_bytes", "integer"),
    ({"streaming": "maybe"}, psycopg.errors.InvalidParameterValue, "boolean", "on/off"),
    ({"publication_names": '"unterminated'}, psycopg.errors.InvalidName, "publication_names",
     "comma-separated"),
])
def test_bad_options_are_errors_with_hints(env, options, error, message, hint):
    with pytest.raises(error) as err:
        env.changes(options, peek=True)
    assert message in err.value.diag.message_primary
    assert hint in err.value.diag.message_hint


def test_duplicate_option_is_an_error(env):
    with pytest.raises(psycopg.errors.SyntaxError) as err:
        env.conn.execute("SELECT * FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                         "'messages', 'on', 'messages', 'off')", (env.slot,))
    assert "more than once" in err.value.diag.message_primary


def test_batch_limits_split_big_transactions(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {env.q('t')} SELECT g, repeat('v', 100) FROM generate_series(1, 2500) g")
    by_rows = env.changes({"batch_rows": "1000"}, peek=True)
    assert [b.batch.num_rows for b in batches(by_rows)] == [1000, 1000, 500]
    by_bytes = env.changes({"batch_bytes": "65536"})
    sizes = [b.batch.num_rows for b in batches(by_bytes)]
    assert len(sizes) > 3 and sum(sizes) == 2500
    ordinals = [r["_cdc_ordinal"] for r in rows(by_bytes)]
    assert ordinals == list(range(1, 2501))
    # one transaction: one BEGIN and one COMMIT around all its batches
    assert [type(e).__name__ for e in by_bytes].count("Begin") == 1


def test_empty_and_filtered_transactions_send_nothing(env, unique_name):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY)")
    pub = unique_name("pub")
    env.pubs.append(pub)
    env.run(f"CREATE PUBLICATION {pub} FOR TABLE {env.q('t')} WITH (publish = 'delete')",
            f"INSERT INTO {env.q('t')} VALUES (1)")
    assert env.changes({"publication_names": pub}) == []


def test_unknown_frame_type_is_a_clear_error():
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as err:
        decoder.decode_one(b"Z\x01\x00\x00rest")
    assert "unknown wal2arrow frame type 0x5a" in str(err.value)
    assert err.value.hint
    with pytest.raises(FrameError, match="format version 7"):
        decoder.decode_one(b"B\x07\x00\x00" + bytes(28))
    with pytest.raises(FrameError, match="truncated"):
        decoder.decode_one(b"B\x01\x00\x00" + bytes(3))
    with pytest.raises(FrameError, match="before its schema frame"):
        decoder.decode_one(b"D\x01\x00\x00" + bytes(21))


def test_arrow_body_is_aligned_for_streaming(env):
    """Body offsets are 7 mod 8 so that after the 25-byte XLogData header they are aligned."""
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {env.q('t')} VALUES (1, 'a')")
    raw = env.conn.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL)",
                           (env.slot,)).fetchall()
    offsets = {bytes(r[0][:1]): int.from_bytes(r[0][2:4], "little") for r in raw}
    assert offsets[b"R"] % 8 == 7 and offsets[b"D"] % 8 == 7
    assert offsets[b"B"] == 0 and offsets[b"C"] == 0


def test_runs_of_null_before_images_keep_every_column_aligned(env):
    """Null before-images are appended in runs (inserts, updates keeping the key) between
    rows that carry one: every type of the before-image struct, bool and timetz included,
    must stay aligned with its rows across such runs."""
    env.run(f"CREATE TABLE {env.q('runs')} (id int PRIMARY KEY, b bool, tz timetz, "
            f"xs int4[], u uuid, n numeric(6,2), s text)",
            f"INSERT INTO {env.q('runs')} SELECT g, g % 2 = 0, '10:00+02', ARRAY[g, NULL], "
            f"md5(g::text)::uuid, g / 4.0, 's' || g FROM generate_series(1, 23) g",
            f"UPDATE {env.q('runs')} SET s = 'kept key' WHERE id <= 11",
            f"UPDATE {env.q('runs')} SET id = id + 100 WHERE id IN (3, 12)",
            f"ALTER TABLE {env.q('runs')} REPLICA IDENTITY FULL",
            f"DELETE FROM {env.q('runs')} WHERE id IN (5, 6, 103)")
    got = rows(env.changes(), "runs")
    assert len(got) == 23 + 11 + 2 + 3
    befores = [(r["_cdc_op"], r["_cdc_before"]) for r in got]
    assert all(b is None for op, b in befores[:34])
    assert [b["id"] for _op, b in befores[34:36]] == [3, 12]
    assert all(b["b"] is None and b["s"] is None for _op, b in befores[34:36])
    full = [b for _op, b in befores[36:]]
    assert [(b["id"], b["b"], b["xs"], b["n"], b["s"]) for b in full] == [
        (5, False, [5, None], Decimal("1.25"), "kept key"),
        (6, True, [6, None], Decimal("1.50"), "kept key"),
        (103, False, [3, None], Decimal("0.75"), "kept key")]
    assert all(b["tz"] == {"time": datetime.time(10, 0), "utc_offset": 7200} for b in full)
    assert all(b["u"] is not None and len(b["u"]) == 16 for b in full)
    # the after-images are untouched by the runs
    assert [r["b"] for r in got[:23]] == [g % 2 == 0 for g in range(1, 24)]
    assert [r["xs"] for r in got[:3]] == [[1, None], [2, None], [3, None]]


def test_transaction_metadata_is_constant_within_a_batch(env):
    env.run(f"CREATE TABLE {env.q('m')} (id int PRIMARY KEY)")
    with env.conn.transaction():
        env.conn.execute(f"INSERT INTO {env.q('m')} SELECT generate_series(1, 10)")
    with env.conn.transaction():
        env.conn.execute(f"INSERT INTO {env.q('m')} SELECT generate_series(11, 15)")
    events = env.changes({"batch_rows": "4"})
    commits = [e for e in events if isinstance(e, Commit)]
    got = rows(events, "m")
    assert [len(b.batch) for b in batches(events, "m")] == [4, 4, 2, 4, 1]
    for r in got:
        commit = commits[0] if r["id"] <= 10 else commits[1]
        assert (r["_cdc_commit_lsn"], r["_cdc_end_lsn"], r["_cdc_xid"]) == \
            (commit.commit_lsn, commit.end_lsn, commit.xid)
        assert r["_cdc_commit_ts"] is not None
    assert [r["_cdc_ordinal"] for r in got] == list(range(1, 11)) + list(range(1, 6))


def test_enum_label_renamed_mid_stream(env):
    """Enum labels are cached per session; a renamed label is seen from the rename on."""
    env.run(f"CREATE TYPE {env.q('state')} AS ENUM ('new', 'done')",
            f"CREATE TABLE {env.q('e')} (id int PRIMARY KEY, s {env.q('state')})",
            f"INSERT INTO {env.q('e')} VALUES (1, 'new'), (2, 'done')",
            f"ALTER TYPE {env.q('state')} RENAME VALUE 'new' TO 'fresh'",
            f"INSERT INTO {env.q('e')} VALUES (3, 'fresh')",
            f"ALTER TYPE {env.q('state')} ADD VALUE 'late'",
            f"INSERT INTO {env.q('e')} VALUES (4, 'late'), (5, 'done')")
    assert [r["s"] for r in rows(env.changes(), "e")] == ["new", "done", "fresh", "late", "done"]


def test_frame_header_reads_fixed_fields_without_pyarrow(env):
    env.run(f"CREATE TABLE {env.q('h')} (id int PRIMARY KEY)",
            f"INSERT INTO {env.q('h')} SELECT generate_series(1, 5)")
    raw = [r[0] for r in env.conn.execute(
        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL)",
        (env.slot,)).fetchall()]
    events = FrameDecoder().decode_all(raw)
    headers = [frame_header(f) for f in raw]
    assert [k for k, _ in headers] == ["begin", "schema", "batch", "commit"]
    begin, schema, batch, commit = events
    assert headers[0][1] == (begin.xid, begin.commit_lsn, begin.end_lsn, begin.commit_ts)
    assert headers[1][1][:2] == (schema.relid, schema.schema_version)
    assert headers[2][1][:5] == (batch.relid, batch.schema_version, batch.xid, 0, 5)
    assert headers[3][1][2] == commit.end_lsn
    with pytest.raises(FrameError, match="unknown wal2arrow frame type"):
        frame_header(b"Z\x01\x00\x00")
    with pytest.raises(FrameError, match="truncated"):
        frame_header(b"D\x01\x00\x00" + bytes(5))
