"""Every type of the spec, with edge values, through the snapshot, pgoutput and wal2arrow.

The four paths (binary COPY snapshot, pgoutput text mode, pgoutput binary mode, wal2arrow) must
produce
the same schema and the same values, and those values must be the server's in the spec's
defined domain: representable values equal what psycopg reads (or the literal inserted), and a
value Arrow cannot hold is null with the server's text output in ``_cdc_unrepresentable``.
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest

from bench.clients import PgoutputStream
from cdc_notebook.connection.conninfo import connect_session
from cdc_notebook.decode.wal2arrow import slot_changes
from cdc_notebook.snapshot.tables import ExportedSnapshot, snapshot_table
from tests.pgutil import create_publication
from tests.test_pgoutput_helpers import batches_of, drop_slot, emit_end, read_until_end

COLUMNS = """
    id int PRIMARY KEY,
    c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid,
    c_float4 float4, c_float8 float8,
    c_dec numeric(10,2), c_num numeric, c_wide numeric(50,5),
    c_text text, c_varchar varchar(10), c_char char(5), c_name name, c_bytea bytea,
    c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
    c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb, c_enum {enum},
    c_inet inet, c_cidr cidr, c_mac macaddr, c_mac8 macaddr8, c_domain {domain},
    c_big text
"""
ARRAY_COLUMNS = ", c_ints int[], c_texts text[], c_decs numeric(10,2)[], c_dates date[], " \
                "c_point point, c_range int4range"

ROWS = [
    # ordinary values
    "(1, true, -32768, 2147483647, -9223372036854775808, 4294967295, 1.5, -2.25e-300,"
    " -12345678.90, 3.14159265358979323846264338327950288419716939937510, 123456789012345.12345,"
    " 'héllo wörld', 'abc', 'ab', 'a_name', '\\x00ff10',"
    " '2024-02-29', '13:14:15.123456', '13:14:15+05:30', '2024-01-01 12:34:56.789',"
    " '1999-12-31 23:59:59.999999+00', '1 year 2 mons -3 days 04:05:06.5',"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', 'ok',"
    " '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', 7,"
    " repeat('toast me ', 20000){arrays1})",
    # every value null
    "(2" + ", NULL" * 31 + "{arrays_null})",
    # edge values
    "(3, false, 0, 0, 0, 0, 'NaN', '-Infinity', 'NaN', '-Infinity', 'NaN', '', '', '',"
    " '', '', 'infinity', '24:00:00', '24:00:00-02', '-infinity', 'infinity',"
    " '2562048 hours', '00000000-0000-0000-0000-000000000000', '\"\"', '[]', 'sad', '::1',"
    " '2001:db8::/32', '00:00:00:00:00:00', 'ff:ff:ff:ff:ff:ff:ff:ff', 1, ''{arrays3})",
    # far ends of the ranges
    "(4, true, 32767, -2147483648, 9223372036854775807, 0, 'Infinity', 'NaN', 99999999.99,"
    " '-0.000000000000000000000000000001', 0, 'x', 'xxxxxxxxxx', 'x', 'x', '',"
    " '4713-01-01 BC', '00:00:00', '00:00:00+15:59', '294250-01-01 00:00:00',"
    " '0001-01-01 00:00:00+00 BC', '-178000000 years', 'ffffffff-ffff-ffff-ffff-ffffffffffff',"
    " 'null', 'null', 'ok', '0.0.0.0/0', '::/0', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00:00:00',"
    " 2147483647, 'y'{arrays4})",
]
ARRAYS = {
    "arrays1": ", '{1,NULL,3}', '{\"a,b\",\"q\\\"uote\",NULL,\"\"}', '{1.50,NULL}',"
               " '{2024-01-01}', '(1.5,2)', '[1,10)'",
    "arrays_null": ", NULL" * 6,
    "arrays3": ", '{{1,2},{3,NULL}}', '[0:1]={x,y}', '{NaN,1}', '{infinity,2000-01-01}',"
               " '(0,0)', 'empty'",
    "arrays4": ", '{}', '{\"\"}', '{}', '{}', '(-1e300,1e-300)', '(,)'",
}
# intervals as (months, days, nanoseconds); None where Arrow cannot hold the value
INTERVALS = {1: (14, -3, (4 * 3600 + 5 * 60 + 6) * 10**9 + 500_000_000), 3: None,
             4: (-178000000 * 12, 0, 0)}


def _setup(conn, name, with_arrays):
    conn.execute(f"CREATE TYPE {name}_mood AS ENUM ('sad', 'ok')")
    conn.execute(f"CREATE DOMAIN {name}_pos AS int CHECK (VALUE > 0)")
    cols = COLUMNS.format(enum=f"{name}_mood", domain=f"{name}_pos")
    conn.execute(f"CREATE TABLE {name} ({cols}{ARRAY_COLUMNS if with_arrays else ''})")
    conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")


def _insert(conn, name, with_arrays):
    values = []
    for row in ROWS:
        for key, text in ARRAYS.items():
            row = row.replace("{" + key + "}", text if with_arrays else "")
        values.append(row)
    conn.execute(f"INSERT INTO {name} VALUES {', '.join(values)}")


def _columns(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if not n.startswith("_cdc_")]


def _unrep(table: pa.Table) -> list[dict[str, str]]:
    return [dict(m) for m in table["_cdc_unrepresentable"].to_pylist()]


def _arrow_values(table: pa.Table, col: str) -> list:
    """Python values of a column; dates and timestamps as integers (BC dates have no
    datetime.date), compared with the server's integer form below."""
    t = table.schema.field(col).type
    if pa.types.is_date32(t):
        return table[col].cast(pa.int32()).to_pylist()
    if pa.types.is_timestamp(t):
        return table[col].cast(pa.int64()).to_pylist()
    if pa.types.is_list(t) and pa.types.is_date32(t.value_type):
        return table[col].cast(pa.list_(pa.int32())).to_pylist()
    return table[col].to_pylist()


def _server_expr(table: pa.Table, col: str) -> str:
    t = table.schema.field(col).type
    if pa.types.is_date32(t):
        return f"CASE WHEN isfinite({col}) THEN {col} - date '1970-01-01' END"
    if pa.types.is_timestamp(t):
        return f"CASE WHEN isfinite({col}) THEN extract(epoch from {col}) * 1000000 END"
    if pa.types.is_list(t) and pa.types.is_date32(t.value_type):
        return (f"CASE WHEN {col} IS NOT NULL THEN array(SELECT CASE WHEN isfinite(x) THEN "
                f"x - date '1970-01-01' END FROM unnest({col}) WITH ORDINALITY u(x, n) "
                f"ORDER BY n) END")
    if pa.types.is_time(t) or col == "c_timetz":  # psycopg cannot read 24:00:00
        return f"CASE WHEN {col}::time < time '24:00:00' THEN {col} END"
    return col


def _check_server_domain(conn, name: str, table: pa.Table) -> None:
    """Every value equals the server's, in the spec's domain (text: the output function)."""
    table = table.sort_by("id")
    unrep = _unrep(table)
    ids = table["id"].to_pylist()
    for col in _columns(table):
        field = table.schema.field(col)
        rows = {r[0]: r[1:] for r in conn.execute(
            f"SELECT id, {_server_expr(table, col)}, "
            f"CASE WHEN {col} IS NOT NULL THEN format('%s', {col}) END FROM {name}"
        ).fetchall()}
        got = _arrow_values(table, col)
        for i, rid in enumerate(ids):
            value, text = rows[rid]
            if col in unrep[i]:
                assert unrep[i][col] == text, (col, rid)
                if not pa.types.is_list(field.type):
                    assert got[i] is None, (col, rid)
                continue
            if text is None:
                assert got[i] is None, (col, rid)
                continue
            assert got[i] is not None, (col, rid, "an Arrow null without an unrepresentable entry")
            repr_ = (field.metadata or {}).get(b"pg.repr")
            if col == "c_interval":
                months, days, nanos = INTERVALS[rid]
                assert (got[i].months, got[i].days, got[i].nanoseconds) == (months, days, nanos)
            elif col == "c_timetz":
                assert got[i]["time"] == value.replace(tzinfo=None), (col, rid)
                assert got[i]["utc_offset"] == value.utcoffset().total_seconds(), (col, rid)
            elif col == "c_uuid":
                assert got[i] == uuid.UUID(str(value)).bytes
            elif repr_ is not None:
                assert got[i] == text, (col, rid)    # strings standing for the text output
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[i]), (col, rid)
            elif isinstance(value, Decimal) and pa.types.is_integer(pa.int64()) \
                    and isinstance(got[i], int):
                assert got[i] == int(value), (col, rid)
            else:
                assert got[i] == value, (col, rid, got[i], value)


def _stream_inserts(pg, name, slot, pub, binary):
    with pg.connect() as conn, PgoutputStream(pg.conninfo(), slot, pub, binary=binary) as stream:
        _insert(conn, name, with_arrays=not binary)
        emit_end(conn, name)
        events = read_until_end(stream, name)
        assert stream.mode == ("binary" if binary else "text")
    return batches_of(events, f"public.{name}")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_type_snapshot_equals_pgoutput_equals_wal2arrow_equals_server(pg, unique_name,
                                                                           binary):
    name, slot, pub = unique_name("types"), unique_name("slot"), unique_name("pub")
    w2a_slot = unique_name("w2aslot")
    with pg.connect() as conn:
        try:
            _setup(conn, name, with_arrays=not binary)
            create_publication(conn, pub, [f"public.{name}"])
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')",
                         (w2a_slot,))
            streamed = _stream_inserts(pg, name, slot, pub, binary)
            # The same inserts decoded by wal2arrow (the fast path) from its own slot.
            w2a = batches_of(slot_changes(conn, w2a_slot, {"publication_names": pub}),
                             f"public.{name}")
            with ExportedSnapshot(pg.conninfo(), unique_name("snapslot"), temporary=True) as snap:
                snapshot = pa.Table.from_batches(list(snapshot_table(
                    pg.conninfo(), f"public.{name}", snap)))
            assert streamed is not None and streamed.num_rows == len(ROWS)
            assert set(streamed["_cdc_op"].to_pylist()) == {"c"}
            # same schema (column names, Arrow types, field metadata, metadata columns)
            assert streamed.schema.equals(snapshot.schema, check_metadata=True), \
                (streamed.schema, snapshot.schema)
            cols = [*_columns(snapshot), "_cdc_unrepresentable"]
            a = streamed.select(cols).sort_by("id")
            b = snapshot.select(cols).sort_by("id")
            for col in cols:
                if col in ("c_float4", "c_float8"):
                    assert _same_floats(a[col], b[col]), col
                else:
                    assert a[col].equals(b[col]), (col, a[col], b[col])
            # wal2arrow: the same schema and the same values as the snapshot and pgoutput
            assert w2a is not None and w2a.num_rows == len(ROWS)
            assert w2a.schema.equals(snapshot.schema, check_metadata=True), \
                (w2a.schema, snapshot.schema)
            c = w2a.select(cols).sort_by("id")
            for col in cols:
                if col in ("c_float4", "c_float8"):
                    assert _same_floats(c[col], b[col]), col
                else:
                    assert c[col].equals(b[col]), (col, c[col], b[col])
            with connect_session(pg.conninfo()) as session:
                _check_server_domain(session, name, snapshot)
                _check_server_domain(session, name, streamed)
                _check_server_domain(session, name, w2a)
            # a TOASTed value arrives whole, and the null row is null in every column
            assert len(b["c_big"][0].as_py()) == len("toast me ") * 20000
            row2 = b.slice(1, 1).to_pylist()[0]
            assert all(v is None for k, v in row2.items() if k not in ("id", "_cdc_unrepresentable"))
        finally:
            drop_slot(conn, slot)
            drop_slot(conn, w2a_slot)
            conn.execute(f"DROP PUBLICATION IF EXISTS {pub}")
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"DROP DOMAIN IF EXISTS {name}_pos")
            conn.execute(f"DROP TYPE IF EXISTS {name}_mood")


def _same_floats(a, b) -> bool:
    for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif not (x == y or (math.isnan(x) and math.isnan(y))):
            return False
    return True
