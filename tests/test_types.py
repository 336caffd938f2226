"""The type-mapping spec (cdc_notebook/decode/typemap.json) against a real server's catalog."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from psycopg import sql

from cdc_notebook.decode import typespec as t

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def schema_name(pg, unique_name):
    name = unique_name("types")
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


COLUMNS = [
    # (declaration, expected Arrow type, expected pg.repr or None)
    ("bool", pa.bool_(), None),
    ("int2", pa.int16(), None),
    ("int4", pa.int32(), None),
    ("int8", pa.int64(), None),
    ("oid", pa.uint32(), None),
    ("float4", pa.float32(), None),
    ("float8", pa.float64(), None),
    ("numeric(10,2)", pa.decimal128(10, 2), None),
    ("numeric(38,0)", pa.decimal128(38, 0), None),
    ("numeric(39,2)", pa.utf8(), "text"),
    ("numeric", pa.utf8(), "text"),
    ("text", pa.utf8(), None),
    ("varchar(12)", pa.utf8(), None),
    ("char(3)", pa.utf8(), None),
    ("name", pa.utf8(), None),
    ("bytea", pa.binary(), None),
    ("date", pa.date32(), None),
    ("time", pa.time64("us"), None),
    ("timetz", t.TIMETZ_TYPE, None),
    ("timestamp", pa.timestamp("us"), None),
    ("timestamptz", pa.timestamp("us", tz="UTC"), None),
    ("interval", pa.month_day_nano_interval(), None),
    ("uuid", pa.binary(16), None),
    ("json", pa.utf8(), "json"),
    ("jsonb", pa.utf8(), "json"),
    ("inet", pa.utf8(), "text"),
    ("cidr", pa.utf8(), "text"),
    ("macaddr", pa.utf8(), "text"),
    ("macaddr8", pa.utf8(), "text"),
    ("int4[]", pa.list_(pa.int32()), None),
    ("int4[][]", pa.list_(pa.int32()), None),
    ("text[]", pa.list_(pa.utf8()), None),
    ("numeric(5,1)[]", pa.list_(pa.decimal128(5, 1)), None),
    ("jsonb[]", pa.list_(pa.utf8()), "json"),
    ("timestamptz[]", pa.list_(pa.timestamp("us", tz="UTC")), None),
    ("int4range", pa.utf8(), "text"),
    ("int4range[]", pa.utf8(), "text"),
    ("money", pa.utf8(), "text"),
    ("bit(3)", pa.utf8(), "text"),
    ("tsvector", pa.utf8(), "text"),
    ("point", pa.utf8(), "text"),
    ('"char"', pa.utf8(), "text"),
]


def _catalog_columns(conn, table: str, schema: str):
    rows = conn.execute(
        "SELECT a.attname, a.atttypid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        (f'"{schema}"."{table}"',)).fetchall()
    return rows


def test_every_spec_type_maps_as_documented(pg, schema_name):
    cols = ", ".join(f"c{i} {decl}" for i, (decl, _, _) in enumerate(COLUMNS))
    with pg.connect() as conn:
        conn.execute(f'CREATE TABLE "{schema_name}".all_types ({cols})')
        catalog = t.TypeCatalog.load(conn)
        rows = _catalog_columns(conn, "all_types", schema_name)
        for (_name, oid, typmod, formatted), (decl, arrow_type, repr_) in zip(
                rows, COLUMNS, strict=True):
            mapping = catalog.map_type(oid, typmod)
            assert mapping.arrow_type == arrow_type, (decl, formatted, mapping)
            assert mapping.metadata.get(t.META_REPR) == repr_, decl
            assert t.META_TYPE in mapping.metadata
            assert (t.META_TYPMOD in mapping.metadata) == (typmod >= 0), decl


def test_type_names_and_typmods_in_metadata(pg, schema_name):
    with pg.connect() as conn:
        conn.execute(f'CREATE TABLE "{schema_name}".m (a numeric(12,3), b int4[], c varchar(7))')
        catalog = t.TypeCatalog.load(conn)
        rows = _catalog_columns(conn, "m", schema_name)
        metas = [catalog.map_type(oid, typmod).metadata for _, oid, typmod, _ in rows]
    assert metas[0] == {"pg.type": "numeric", "pg.typmod": str((12 << 16 | 3) + 4)}
    assert metas[1] == {"pg.type": "_int4"}
    assert metas[2] == {"pg.type": "varchar", "pg.typmod": str(7 + 4)}


def test_domains_resolve_to_their_base_type_and_keep_their_typmod(pg, schema_name):
    s = schema_name
    with pg.connect() as conn:
        conn.execute(f'CREATE DOMAIN "{s}".money2 AS numeric(14,2) CHECK (VALUE >= 0)')
        conn.execute(f'CREATE DOMAIN "{s}".money3 AS "{s}".money2')
        conn.execute(f'CREATE DOMAIN "{s}".tags AS text[]')
        conn.execute(f'CREATE DOMAIN "{s}".posint AS int4 CHECK (VALUE > 0)')
        conn.execute(f'CREATE TABLE "{s}".d (a "{s}".money2, b "{s}".money3, c "{s}".tags, '
                     f'd "{s}".posint[])')
        catalog = t.TypeCatalog.load(conn)
        rows = _catalog_columns(conn, "d", s)
        maps = [catalog.map_type(oid, typmod) for _, oid, typmod, _ in rows]
    assert maps[0].arrow_type == pa.decimal128(14, 2)
    assert maps[0].metadata["pg.type"] == f"{s}.money2"
    assert maps[0].metadata["pg.typmod"] == str((14 << 16 | 2) + 4)
    assert maps[1].arrow_type == pa.decimal128(14, 2)
    assert maps[2].arrow_type == pa.list_(pa.utf8())
    assert maps[3].arrow_type == pa.list_(pa.int32())


def test_enums_and_composites(pg, schema_name):
    s = schema_name
    with pg.connect() as conn:
        conn.execute(f"CREATE TYPE \"{s}\".mood AS ENUM ('sad', 'ok')")
        conn.execute(f'CREATE TYPE "{s}".pair AS (a int, b text)')
        conn.execute(f'CREATE TABLE "{s}".e (a "{s}".mood, b "{s}".mood[], c "{s}".pair)')
        catalog = t.TypeCatalog.load(conn)
        rows = _catalog_columns(conn, "e", s)
        maps = [catalog.map_type(oid, typmod) for _, oid, typmod, _ in rows]
    assert maps[0].arrow_type == pa.utf8() and maps[0].metadata["pg.repr"] == "enum"
    assert maps[0].metadata["pg.type"] == f"{s}.mood"
    assert maps[1].arrow_type == pa.list_(pa.utf8()) and maps[1].metadata["pg.repr"] == "enum"
    assert maps[2].arrow_type == pa.utf8() and maps[2].metadata["pg.repr"] == "text"
    assert maps[2].metadata["pg.type"] == f"{s}.pair"


def test_resolution_is_by_receive_function_not_oid(pg, schema_name):
    """refcursor reuses text's I/O functions, so it maps like text (as in ADBC); a type
    created after the catalog was loaded is looked up on the miss."""
    s = schema_name
    with pg.connect() as conn:
        receive = conn.execute(
            "SELECT typreceive::text FROM pg_type WHERE oid = 'refcursor'::regtype").fetchone()[0]
        assert receive == "textrecv"
        catalog = t.TypeCatalog.load(conn)
        conn.execute(f'CREATE DOMAIN "{s}".late AS refcursor')
        conn.execute(f'CREATE TABLE "{s}".x (a refcursor, b "{s}".late)')
        rows = _catalog_columns(conn, "x", s)
        maps = [catalog.map_type(oid, typmod) for _, oid, typmod, _ in rows]
    for mapping in maps:
        assert mapping.arrow_type == pa.utf8()
        assert mapping.kind == "textrecv"
        assert t.META_REPR not in mapping.metadata
    assert maps[1].metadata[t.META_TYPE] == f"{s}.late"


def test_numeric_typmods_decide_decimal_or_text(pg, schema_name):
    s = schema_name
    with pg.connect() as conn:
        negative_scale = pg.major >= 15
        decls = ["numeric(1,0)", "numeric(38,38)", "numeric(38,10)", "numeric(1000,0)"]
        if negative_scale:
            decls += ["numeric(5,-2)", "numeric(3,5)"]
        cols = ", ".join(f"c{i} {d}" for i, d in enumerate(decls))
        conn.execute(f'CREATE TABLE "{s}".n ({cols})')
        catalog = t.TypeCatalog.load(conn)
        rows = _catalog_columns(conn, "n", s)
        types_ = [catalog.map_type(oid, typmod).arrow_type for _, oid, typmod, _ in rows]
    assert types_[:4] == [pa.decimal128(1, 0), pa.decimal128(38, 38), pa.decimal128(38, 10),
                          pa.utf8()]
    if negative_scale:
        assert types_[4:] == [pa.utf8(), pa.utf8()]


def test_relation_fields_and_change_batch_schema(pg, schema_name):
    s = schema_name
    with pg.connect() as conn:
        conn.execute(f'CREATE TABLE "{s}".r (id int primary key, gone int, v text, '
                     'g int GENERATED ALWAYS AS (id * 2) STORED)')
        conn.execute(f'ALTER TABLE "{s}".r DROP COLUMN gone')
        relid = conn.execute(f"SELECT '\"{s}\".r'::regclass::oid::int8").fetchone()[0]
        fields = t.relation_fields(conn, relid)
    assert [f.name for f in fields] == ["id", "v"]
    schema = t.change_batch_schema(fields)
    from cdc_notebook.decode.events import METADATA_COLUMNS
    assert schema.names == ["id", "v", *METADATA_COLUMNS]
    assert schema.field("_cdc_before").type == pa.struct(fields)
    assert schema.field("_cdc_commit_ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("_cdc_unrepresentable").type == pa.map_(pa.utf8(), pa.utf8())


def test_spec_file_and_docs_agree():
    spec = t.load_spec()
    docs = (ROOT / "docs" / "types.md").read_text()
    for entry in spec["types"]:
        assert f"`{entry['receive']}`" in docs, entry["receive"]
    for key in spec["metadata_keys"]:
        assert f"`{key}`" in docs


def test_plugin_c_table_matches_the_spec():
    """wal2arrow's C table lists exactly the spec's receive functions."""
    source = (ROOT / "wal2arrow" / "src" / "typemap.c").read_text()
    names = set(re.findall(r'\{\s*"([a-z0-9_]+)"\s*,\s*W2A_KIND_', source))
    assert names == set(t.spec_entries()), names ^ set(t.spec_entries())
