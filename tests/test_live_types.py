"""The Arrow → Polars mapping of the live frames, over every type of the type-mapping spec.

The fields come from a real server's catalog (``cdc_notebook.decode.typespec.relation_fields``), so the
Arrow types and field metadata are exactly what the decoders put in the change batches.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from cdc_notebook.decode.typespec import (
    TypeCatalog,
    change_batch_schema,
    relation_fields,
    spec_entries,
)
from cdc_notebook.live.polars_types import arrow_to_polars, polars_dtype, to_arrow
from cdc_notebook.live.tables import LiveTable

U1, U2 = uuid.UUID(int=0x0123456789ABCDEF0011223344556677), uuid.uuid4()
UTC = dt.timezone.utc

COLUMNS = {
    "c_bool": "bool", "c_int2": "int2", "c_int4": "int4", "c_int8": "int8", "c_oid": "oid",
    "c_float4": "float4", "c_float8": "float8", "c_numeric": "numeric(12,3)",
    "c_numeric_text": "numeric", "c_text": "text", "c_varchar": "varchar(7)",
    "c_bpchar": "char(3)", "c_name": "name", "c_bytea": "bytea", "c_date": "date",
    "c_time": "time", "c_timetz": "timetz", "c_ts": "timestamp", "c_tstz": "timestamptz",
    "c_interval": "interval", "c_uuid": "uuid", "c_json": "json", "c_jsonb": "jsonb",
    "c_enum": "{schema}.mood", "c_inet": "inet", "c_cidr": "cidr", "c_macaddr": "macaddr",
    "c_macaddr8": "macaddr8", "c_int_arr": "int4[]", "c_uuid_arr": "uuid[]",
    "c_interval_arr": "interval[]", "c_range": "int4range", "c_uuid_domain": "{schema}.uid",
}


def samples(t: pa.DataType) -> tuple[list[Any], list[Any], pl.DataType]:
    """(Arrow values, the values expected in the frame, the frame's dtype) for a type."""
    if t == pa.bool_():
        return [True, None, False], [True, None, False], pl.Boolean()
    if pa.types.is_integer(t):
        values = [1, None, 2 if pa.types.is_unsigned_integer(t) else -2]
        return values, values, {pa.int16(): pl.Int16(), pa.int32(): pl.Int32(),
                                pa.int64(): pl.Int64(), pa.uint32(): pl.UInt32()}[t]
    if pa.types.is_floating(t):
        return [1.5, None, -0.25], [1.5, None, -0.25], \
            pl.Float32() if t == pa.float32() else pl.Float64()
    if pa.types.is_decimal(t):
        values = [Decimal("123456789.125"), None, Decimal("-0.001")]
        return values, values, pl.Decimal(t.precision, t.scale)
    if t == pa.utf8():
        return ["a", None, "é"], ["a", None, "é"], pl.String()
    if t == pa.binary():
        return [b"\x00\x01", None, b""], [b"\x00\x01", None, b""], pl.Binary()
    if t == pa.binary(16):
        return [U1.bytes, None, U2.bytes], [str(U1), None, str(U2)], pl.String()
    if t == pa.date32():
        values = [dt.date(2024, 2, 29), None, dt.date(1970, 1, 1)]
        return values, values, pl.Date()
    if t == pa.time64("us"):
        values = [dt.time(1, 2, 3, 4), None, dt.time(23, 59, 59, 999999)]
        return values, values, pl.Time()
    if pa.types.is_timestamp(t):
        tz = UTC if t.tz else None
        values = [dt.datetime(2026, 11, 28, 12, 30, 1, 5, tzinfo=tz), None,
                  dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=tz)]
        return values, values, pl.Datetime("us", "UTC" if t.tz else None)
    if t == pa.month_day_nano_interval():
        return ([pa.MonthDayNano([1, 2, 3_000]), None, pa.MonthDayNano([-14, 0, -1_000])],
                [{"months": 1, "days": 2, "nanoseconds": 3_000}, None,
                 {"months": -14, "days": 0, "nanoseconds": -1_000}],
                pl.Struct({"months": pl.Int32, "days": pl.Int32, "nanoseconds": pl.Int64}))
    if pa.types.is_struct(t):  # timetz
        values = [{"time": dt.time(10, 0), "utc_offset": 3600}, None,
                  {"time": dt.time(0, 0, 1), "utc_offset": -34200}]
        return values, values, pl.Struct({"time": pl.Time, "utc_offset": pl.Int32})
    if pa.types.is_list(t):
        items, expected, dtype = samples(t.value_type)
        return ([[items[0], items[1]], None, [items[2]]],
                [[expected[0], expected[1]], None, [expected[2]]], pl.List(dtype))
    raise AssertionError(f"no sample for {t}")


@pytest.fixture
def spec_table(pg: Any, unique_name: Any) -> Any:
    schema = unique_name("types")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok')")
        conn.execute(f"CREATE DOMAIN {schema}.uid AS uuid")
        columns = ", ".join(f"{name} {decl.format(schema=schema)}"
                            for name, decl in COLUMNS.items())
        conn.execute(f"CREATE TABLE {schema}.every (id int PRIMARY KEY, {columns})")
        relid = conn.execute(f"SELECT '{schema}.every'::regclass::oid::int8").fetchone()[0]
        catalog = TypeCatalog.load(conn)
        kinds = {
            name: catalog.map_type(int(oid), int(typmod)).kind
            for name, oid, typmod in conn.execute(
                "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (relid,))
        }
        fields = relation_fields(conn, relid, catalog)
        yield fields, kinds
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_every_spec_type_reaches_polars_and_comes_back(spec_table: Any) -> None:
    fields, kinds = spec_table
    covered = set(kinds.values())
    assert set(spec_entries()) | {"array", "other", "numeric_text"} <= covered
    arrays, expected, dtypes = {}, {}, {}
    for f in fields:
        values, frame_values, dtype = samples(f.type)
        arrays[f.name] = pa.array(values, f.type)
        expected[f.name] = frame_values
        dtypes[f.name] = dtype
    table = pa.Table.from_pydict(arrays, schema=pa.schema(fields))
    frame = arrow_to_polars(table)
    for f in fields:
        assert frame.schema[f.name] == dtypes[f.name], f.name
        assert polars_dtype(f.type) == dtypes[f.name], f.name
        assert frame.get_column(f.name).to_list() == expected[f.name], f.name
    # Field metadata is not in the frame; it is restored from the schema kept beside it.
    back = to_arrow(frame, table.schema)
    assert back.equals(table, check_metadata=True)
    assert back.schema.field("c_uuid").metadata[b"pg.type"] == b"uuid"


def test_a_live_table_of_every_type_keeps_its_arrow_schema(spec_table: Any) -> None:
    fields, _ = spec_table
    schema = change_batch_schema(fields)
    columns = {f.name: pa.array(samples(f.type)[0], f.type) for f in fields}
    n = 3
    columns["id"] = pa.array([1, 2, 3], pa.int32())
    before = pa.StructArray.from_arrays([columns[f.name] for f in fields],
                                        fields=list(fields),
                                        mask=pa.array([True, False, True]))
    meta = {
        "_cdc_op": pa.array(["c", "u", "c"]),
        "_cdc_lsn": pa.array([10, 20, 30], pa.uint64()),
        "_cdc_commit_lsn": pa.array([40] * n, pa.uint64()),
        "_cdc_end_lsn": pa.array([48] * n, pa.uint64()),
        "_cdc_commit_ts": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
        "_cdc_xid": pa.array([5] * n, pa.uint32()),
        "_cdc_ordinal": pa.array([1, 2, 3], pa.uint64()),
        "_cdc_before": before,
        "_cdc_unchanged_toast": pa.array([[]] * n, pa.list_(pa.utf8())),
        "_cdc_unrepresentable": pa.array([[], [("c_date", "infinity")], []],
                                         pa.map_(pa.utf8(), pa.utf8())),
    }
    batch = pa.RecordBatch.from_arrays([*(columns[f.name] for f in fields), *meta.values()],
                                       schema=schema)
    live = LiveTable("s.every", schema, ["id"])
    live.apply(batch)
    mirror = live.mirror().sort("id")
    assert mirror.get_column("c_uuid").to_list() == [str(U1), None, str(U2)]
    log = live.changelog()
    assert log.get_column("_cdc_before").struct.field("c_uuid").to_list()[1] is None
    assert log.get_column("_cdc_unrepresentable").to_list()[1] == {"c_date": "infinity"}
    assert live.arrow_schema.field("c_enum").metadata[b"pg.repr"] == b"enum"
    assert live.to_arrow().sort_by("id").equals(
        pa.Table.from_batches([batch]).select([f.name for f in fields]).sort_by("id")
        .cast(live.table_schema))


def test_uuid_text_round_trip_rejects_non_uuid_text() -> None:
    for text in ("too short", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"):
        frame = pl.DataFrame({"u": [str(U1), text]})
        with pytest.raises(ValueError, match="UUID"):
            to_arrow(frame, pa.schema([("u", pa.binary(16))]))


def test_interval_nulls_and_slices() -> None:
    values = pa.array([pa.MonthDayNano([1, 1, 1]), None, pa.MonthDayNano([2, 2, 2])],
                      pa.month_day_nano_interval())
    frame = arrow_to_polars(pa.table({"i": values.slice(1)}))
    assert frame.get_column("i").to_list() == [None, {"months": 2, "days": 2,
                                                      "nanoseconds": 2}]
    assert to_arrow(frame, pa.schema([("i", values.type)])).column("i").to_pylist() == \
        values.slice(1).to_pylist()
