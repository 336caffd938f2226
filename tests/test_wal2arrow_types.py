"""Every type of the spec, with edge values, through wal2arrow and back.

Domain of comparison: each Arrow value is compared with the exact value the server computes
from the same row (integers, decimals, days or microseconds since 1970 from ``extract``,
interval fields, bytes), or with the server's text output for types the spec carries as text.
Values Arrow cannot hold must be null with the server's text output in ``_cdc_unrepresentable``.

Literal markers: ``!`` the value cannot be held (null + map entry), ``~`` a list that is kept
but whose shape or elements need the map entry too.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pyarrow as pa
import pytest

from tests.test_wal2arrow import Env, batches


def _as_ints(t: pa.DataType) -> pa.DataType:
    """Temporal types as their integers (days, microseconds): the exact Arrow values, which
    Python's datetime cannot all represent (BC dates, year 294246)."""
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_time64(t) or pa.types.is_timestamp(t):
        return pa.int64()
    if pa.types.is_list(t):
        return pa.list_(_as_ints(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _as_ints(f.type)) for f in t])
    return t


def rows(events, name):
    out = []
    for b in batches(events, name):
        batch = b.batch
        i = batch.schema.get_field_index("v")
        if i >= 0:
            batch = batch.set_column(
                i, "v", batch.column(i).cast(_as_ints(batch.schema.field(i).type)))
        out += batch.to_pylist()
    return out


@pytest.fixture(scope="module")
def env(pg, request):
    e = Env(pg, lambda prefix: f"{prefix}_types_{pg.major}_{id(request)}")
    e.run("SET TIME ZONE 'UTC'")
    yield e
    e.close()


def same(a, b):
    return a == b


def same_float(a, b):
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == b


def same_float4(a, b):
    b = struct.unpack("f", struct.pack("f", b))[0] if not math.isnan(b) else b
    return same_float(a, b)


def same_decimal(a, b):
    return a is not None and Decimal(a) == Decimal(b)


def same_timetz(a, b):
    return a == {"time": b[0], "utc_offset": b[1]}


def days(v: str) -> str:
    return f"({v} - date '1970-01-01')"


def micros(v: str) -> str:
    return f"(extract(epoch from {v}) * 1000000)::int8"


def as_list(elem_sql: str) -> str:
    return "ARRAY(SELECT " + elem_sql.format(v="x") + " FROM unnest({v}) x)"


def list_of(cmp):
    def compare(a, b):
        return a is not None and len(a) == len(b) and all(
            (x is None and y is None) or (x is not None and y is not None and cmp(x, y))
            for x, y in zip(a, b, strict=True))
    return compare


BIG_TEXT = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 6000) i)"

# decl, literals, SQL computing the exact Arrow value from {v}, how to read the Arrow value
CASES = [
    ("bool", ["true", "false"], "{v}", same),
    ("int2", ["0", "-32768", "32767"], "{v}", same),
    ("int4", ["0", "-2147483648", "2147483647"], "{v}", same),
    ("int8", ["0", "-9223372036854775808", "9223372036854775807"], "{v}", same),
    ("oid", ["0", "4294967295"], "{v}::text::int8", same),
    ("float4", ["0", "'-0'", "1.5", "'NaN'", "'Infinity'", "'-Infinity'", "'3.4028235e38'",
                "'1.4e-45'"], "{v}::float8", same_float4),
    ("float8", ["0", "0.1", "'NaN'", "'Infinity'", "'-Infinity'", "'1.7976931348623157e308'",
                "'4.9e-324'", "'-1e-300'"], "{v}", same_float),
    ("numeric(10,2)", ["0", "-12345678.99", "12345678.99", "0.01", "-0.5", "!'NaN'"],
     "{v}::text", same_decimal),
    ("numeric(38,0)", ["99999999999999999999999999999999999999",
                       "-99999999999999999999999999999999999999", "1"], "{v}::text",
     same_decimal),
    ("numeric(38,38)", ["0.12345678901234567890123456789012345678", "-0.00000000000000000000000000000000000001"],
     "{v}::text", same_decimal),
    ("numeric(20,4)", ["1234567890123456.7891", "0.0001", "10000", "-1"], "{v}::text",
     same_decimal),
    ("numeric", ["'NaN'", "'Infinity'", "'-Infinity'", "1e-100", "123456789012345678901234567890.123"],
     "{v}::text", same),
    ("text", ["''", "'héllo ✓ 𝄞'", "repeat('x', 300000)", BIG_TEXT], "{v}", same),
    ("varchar(5)", ["''", "'abcde'"], "{v}", same),
    ("char(4)", ["'ab'", "''"], "{v}", same),
    ("name", ["'abc'", "''"], "{v}::text", same),
    ("bytea", ["'\\x00ff'", "''", "decode(" + BIG_TEXT + ", 'hex')"], "{v}", same),
    ("date", ["'2000-01-01'", "'1970-01-01'", "'4713-01-01 BC'", "'5874897-12-31'",
              "!'infinity'", "!'-infinity'"], days("{v}"), lambda a, b: a == b),
    ("time", ["'00:00'", "'23:59:59.999999'", "'12:00:00.5'", "!'24:00:00'"], micros("{v}"),
     same),
    ("timetz", ["'12:34:56.123456+05:30'", "'00:00-12'", "'23:59:59+14'", "!'24:00:00+00'"],
     "ARRAY[" + micros("{v}::time") + ", extract(timezone from {v})::int8]", same_timetz),
    ("timestamp", ["'2000-01-01'", "'1970-01-01 00:00:00.000001'", "'4713-01-01 00:00 BC'",
                   "'294246-12-31 23:59:59.999999'", "!'294276-12-31 23:59:59.999999'",
                   "!'infinity'", "!'-infinity'"], micros("{v}"), same),
    ("timestamptz", ["'2000-01-01 00:00+00'", "'1969-12-31 23:59:59.999999+00'",
                     "'2024-02-29 12:00:00+05:30'", "!'294276-12-31 23:59:59.999999+00'",
                     "!'infinity'", "!'-infinity'"], micros("{v}"), same),
    ("interval", ["'1 year 2 months 3 days 04:05:06.789'", "'-1 mons +2 days -00:00:01'",
                  "'0'", "'-178000000 years'", "!'2562047788 hours'"],
     "ARRAY[(extract(year from {v}) * 12 + extract(month from {v}))::int8, "
     "extract(day from {v})::int8, "
     "((extract(hour from {v}) * 3600 + extract(minute from {v}) * 60) * 1000000 "
     "+ extract(microseconds from {v}))::int8 * 1000]",
     lambda a, b: (a.months, a.days, a.nanoseconds) == tuple(b)),
    ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'"],
     "decode(replace({v}::text, '-', ''), 'hex')", same),
    ("json", ["'{\"b\": 1,   \"a\": [1, 2]}'", "'null'", "'\"\"'"], "{v}::text", same),
    ("jsonb", ["'{\"b\": 1,   \"a\": [1, 2]}'", "'[]'", "'\"ü\"'"], "{v}::text", same),
    ("inet", ["'192.168.0.1/24'", "'::1'"], "format('%%s', {v})", same),  # inet_out, not text()
    ("cidr", ["'10.0.0.0/8'"], "format('%%s', {v})", same),
    ("macaddr", ["'08:00:2b:01:02:03'"], "{v}::text", same),
    ("macaddr8", ["'08:00:2b:01:02:03:04:05'"], "{v}::text", same),
    ("int4[]", ["'{}'", "'{1,NULL,3}'", "~'{{1,2},{3,4}}'", "~'[0:1]={7,8}'"],
     as_list("{v}"), list_of(same)),
    ("text[]", ["'{a,\"b c\",NULL,\"\"}'"], as_list("{v}"), list_of(same)),
    ("numeric(5,1)[]", ["'{1.5,-2}'", "~'{1.5,NaN}'"],
     as_list("CASE WHEN {v} = 'NaN' THEN NULL ELSE {v}::text END"),
     list_of(same_decimal)),
    ("timestamptz[]", ["'{\"2000-01-01 00:00+00\",NULL}'", "~'{infinity}'"],
     as_list("CASE WHEN isfinite({v}) THEN " + micros("{v}") + " END"), list_of(same)),
    ("jsonb[]", ["ARRAY['{\"a\":1}'::jsonb, NULL]"], as_list("{v}::text"), list_of(same)),
    ("int4range", ["'[1,5)'", "'empty'"], "{v}::text", same),
    ("int4range[]", ["ARRAY['[1,2)'::int4range]"], "{v}::text", same),
    ("point", ["'(1.5,2)'"], "{v}::text", same),
    ("bit(3)", ["B'101'"], "{v}::text", same),
    ("tsvector", ["'a fat cat'"], "{v}::text", same),
    ('"char"', ["'x'"], "{v}::text", same),
]


@pytest.mark.parametrize("decl, literals, expected_sql, compare", CASES,
                         ids=[c[0] for c in CASES])
def test_type_roundtrip(env, decl, literals, expected_sql, compare):
    table = "t_" + "".join(ch if ch.isalnum() else "_" for ch in decl)
    env.run(f"CREATE TABLE {env.q(table)} (id int PRIMARY KEY, v {decl})")
    flags = {}
    for i, lit in enumerate([*literals, "NULL"]):
        flag = lit[0] if lit[0] in "!~" else ""
        flags[i] = flag
        env.run(f"INSERT INTO {env.q(table)} VALUES ({i}, {lit[len(flag):]})")
    got = rows(env.changes(), table)
    assert [r["id"] for r in got] == list(range(len(literals) + 1))
    for i, row in enumerate(got):
        value = row["v"]
        unrep = dict(row["_cdc_unrepresentable"])
        is_null, text = env.conn.execute(
            f"SELECT v IS NULL, v::text FROM {env.q(table)} WHERE id = %s", (i,)).fetchone()
        if is_null:
            assert value is None and unrep == {}, (decl, i)
            continue
        if flags[i] == "!":
            assert value is None and unrep == {"v": text}, (decl, literals[i], value, unrep)
            continue
        if flags[i] == "~":
            assert unrep == {"v": text}, (decl, literals[i], unrep)
        else:
            assert unrep == {}, (decl, literals[i], unrep)
        (expected,) = env.conn.execute(
            f"SELECT {expected_sql.format(v='v')} FROM {env.q(table)} WHERE id = %s",
            (i,)).fetchone()
        assert compare(value, expected), (decl, literals[i], value, expected)


def test_infinite_intervals(env):
    if env.pg.major < 17:
        # before 17 the server has no infinite intervals: nothing for the plugin to map
        with pytest.raises(Exception, match="interval"):
            env.run("SELECT 'infinity'::interval")
        return
    env.run(f"CREATE TABLE {env.q('inf_iv')} (id int PRIMARY KEY, v interval)",
            f"INSERT INTO {env.q('inf_iv')} VALUES (1, 'infinity'), (2, '-infinity'), (3, '1 day')")
    got = rows(env.changes(), "inf_iv")
    assert [r["v"] for r in got][:2] == [None, None]
    assert [dict(r["_cdc_unrepresentable"]) for r in got] == [
        {"v": "infinity"}, {"v": "-infinity"}, {}]
    assert (got[2]["v"].months, got[2]["v"].days, got[2]["v"].nanoseconds) == (0, 1, 0)


def test_enums_domains_and_unrepresentable_before_images(env):
    env.run(f"CREATE TYPE {env.q('mood')} AS ENUM ('sad', 'ok', 'happy ✓')",
            f"CREATE DOMAIN {env.q('price')} AS numeric(8,2) CHECK (VALUE <> 0)",
            f"CREATE TABLE {env.q('ed')} (id int PRIMARY KEY, m {env.q('mood')}, "
            f"p {env.q('price')}, ms {env.q('mood')}[])",
            f"ALTER TABLE {env.q('ed')} REPLICA IDENTITY FULL",
            f"INSERT INTO {env.q('ed')} VALUES (1, 'happy ✓', 12.5, '{{sad,NULL,ok}}'), "
            f"(2, 'sad', 'NaN', NULL)",
            f"UPDATE {env.q('ed')} SET p = 1 WHERE id = 2")
    got = rows(env.changes(), "ed")
    assert got[0]["m"] == "happy ✓" and got[0]["p"] == Decimal("12.50")
    assert got[0]["ms"] == ["sad", None, "ok"]
    assert got[1]["p"] is None and dict(got[1]["_cdc_unrepresentable"]) == {"p": "NaN"}
    assert got[2]["p"] == Decimal("1.00")
    assert got[2]["_cdc_before"]["p"] is None
    assert dict(got[2]["_cdc_unrepresentable"]) == {"_cdc_before.p": "NaN"}


JSONB_DOCUMENTS = [
    "{}", "[]", '""', '"a"', "null", "true", "false", "0", "-0", "1", "-1", "7.0", "-1.50",
    "1e10", "1e-10", "2E3", "0.0001", "10000", "100000000", "9999999999999999",
    "10000000000000000", "-9999999999999999", "123456789012345678901234567890.5",
    "[1, [2, [3, []]], {}]", '{"a": {"b": {"c": [null, true, false, 0.5]}}}',
    '{"k\\"ey": "v\\\\al\\nue\\t\\b\\f\\r\\u0001\\u001f é ✓ 😀 \\u007f /"}',
    '{"": "", "z": 1, "a": [], "mm": {}}', '[{"a": 1}, {"b": 2}, "x", 3, null]',
    '"' + "esc\\\\aped \\\"quotes\\\" and \\n " * 20 + '"',
    '{"sku": "SKU-1", "qty": 1, "gift": false}',
    "[" + ", ".join(str(i * 37 - 500) for i in range(60)) + "]",
]


def test_jsonb_text_equals_the_servers(env):
    """The plugin renders jsonb itself: byte for byte the server's jsonb::text, for short
    (1-byte header), inline, compressed and TOASTed values, in arrays and before-images."""
    env.run(f"CREATE TABLE {env.q('jb')} (id int PRIMARY KEY, j jsonb, js jsonb[])",
            f"ALTER TABLE {env.q('jb')} REPLICA IDENTITY FULL")
    with env.conn.cursor() as cur:
        for i, doc in enumerate(JSONB_DOCUMENTS):
            cur.execute(f"INSERT INTO {env.q('jb')} VALUES (%s, %s::jsonb, "
                        f"ARRAY[%s::jsonb, NULL])", (i, doc, doc))
        base = len(JSONB_DOCUMENTS)
        # inline with a 4-byte header, compressed inline, and out of line
        cur.execute(f"INSERT INTO {env.q('jb')} SELECT {base} + g, jsonb_build_object("
                    f"'n', g, 'pad', repeat('p', g * 300), 'list', "
                    f"(SELECT jsonb_agg(x) FROM generate_series(1, g * 50) x)) "
                    f"FROM generate_series(1, 3) g")
        cur.execute(f"INSERT INTO {env.q('jb')} SELECT {base + 10}, jsonb_object_agg("
                    f"'key' || x, md5(x::text)) FROM generate_series(1, 5000) x")
    env.run(f"DELETE FROM {env.q('jb')} WHERE id < 3")
    want = dict(env.conn.execute(f"SELECT id, j::text FROM {env.q('jb')}").fetchall())
    want_arrays = dict(env.conn.execute(
        f"SELECT id, js[1]::text FROM {env.q('jb')}").fetchall())
    got = rows(env.changes(), "jb")
    inserts = [r for r in got if r["_cdc_op"] == "c"]
    assert len(inserts) == base + 4
    for r in inserts:
        if r["id"] in want:
            assert r["j"] == want[r["id"]], r["id"]
            if want_arrays[r["id"]] is not None:
                assert r["js"] == [want_arrays[r["id"]], None], r["id"]
    deletes = [r for r in got if r["_cdc_op"] == "d"]
    assert [d["_cdc_before"]["j"] for d in deletes] == [
        inserts[i]["j"] for i in range(3)]
    assert [d["_cdc_before"]["j"] for d in deletes] == ["{}", "[]", '""']
