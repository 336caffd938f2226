"""The one PostgreSQL → Arrow type mapping, shared by every decoding path.

The mapping itself is data: ``typemap.json`` next to this module (mirrored in ``docs/types.md``;
the wal2arrow plugin's C table is checked against it by the tests). This module reads it and
answers, for a column's declared type and typmod, which Arrow type and field metadata the column
gets. Types are resolved the way the ADBC PostgreSQL driver does it:

1. a domain maps as its base type (the domain's ``typtypmod`` applies when the column has none);
2. an array (``typreceive = array_recv``) maps as ``list<element>`` when its element type maps
   to something other than the text fallback, else as text;
3. any other type is looked up by the name of its ``typreceive`` function, so an extension type
   that reuses ``textrecv`` or ``jsonb_recv`` maps like ``text`` or ``jsonb``;
4. everything else is its text output (``utf8``) with ``pg.repr = text``.

A column's Arrow type depends only on its declared type, never on its values. A value the Arrow
type cannot hold (NaN in a decimal column, infinite dates and timestamps, ``24:00:00``,
multi-dimensional arrays ...) is null in its column and the row's ``_cdc_unrepresentable`` map
holds ``column name → the server's text output of the value``; see :data:`SPEC`
(``unrepresentable``) and docs/types.md.

Usage::

    catalog = TypeCatalog.load(conn)                  # one query over pg_type
    mapping = catalog.map_type(type_oid, typmod)      # a TypeMapping
    fields = relation_fields(conn, relid, catalog)    # the table's columns as pa.Field
    schema = change_batch_schema(fields)              # + the _cdc_* metadata columns
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from cdc_notebook.errors import TypeMappingError

SPEC_PATH = Path(__file__).with_name("typemap.json")

# Offsets between PostgreSQL's epoch (2000-01-01) and Arrow's (1970-01-01).
PG_EPOCH_OFFSET_DAYS = 10957
PG_EPOCH_OFFSET_US = PG_EPOCH_OFFSET_DAYS * 86_400_000_000
MAX_DECIMAL128_PRECISION = 38

# The field-metadata keys of docs/types.md.
META_TYPE = "pg.type"
META_TYPMOD = "pg.typmod"
META_REPR = "pg.repr"

# The change-batch metadata columns (docs/decisions.md, plus _cdc_unrepresentable: docs/types.md).
UNREPRESENTABLE_COLUMN = "_cdc_unrepresentable"


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """The parsed ``typemap.json``."""
    try:
        spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise TypeMappingError(f"cannot read the type-mapping spec {SPEC_PATH}: {exc}",
                               hint="reinstall the cdc_notebook package") from exc
    return spec


def spec_entries() -> dict[str, dict[str, Any]]:
    """The spec's type entries by ``typreceive`` name."""
    return {entry["receive"]: entry for entry in load_spec()["types"]}


SPEC = load_spec()

TIMETZ_TYPE = pa.struct([pa.field("time", pa.time64("us")), pa.field("utc_offset", pa.int32())])

_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint32": pa.uint32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "utf8": pa.utf8(),
    "binary": pa.binary(),
    "date32": pa.date32(),
    "time64_us": pa.time64("us"),
    "timetz_struct": TIMETZ_TYPE,
    "timestamp_us": pa.timestamp("us"),
    "timestamp_us_utc": pa.timestamp("us", tz="UTC"),
    "month_day_nano": pa.month_day_nano_interval(),
    "fixed_size_binary_16": pa.binary(16),
}


@dataclass(frozen=True)
class PgType:
    """The pg_type facts the mapping needs."""

    oid: int
    name: str
    namespace: str
    typtype: str  # b base, d domain, e enum, c composite, r range, m multirange, p pseudo
    category: str
    receive: str  # proname of typreceive ('' when none)
    elem: int
    basetype: int
    typtypmod: int

    @property
    def qualified_name(self) -> str:
        return self.name if self.namespace == "pg_catalog" else f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class TypeMapping:
    """How one declared PostgreSQL type (with its typmod) becomes an Arrow type.

    ``kind`` is the spec entry that applies: a ``typreceive`` name of ``typemap.json``'s
    ``types``, ``"numeric_text"`` for numerics that do not fit decimal128, ``"array"`` for a
    list (see ``element``) or ``"other"`` for the text fallback.
    """

    kind: str
    arrow_type: pa.DataType
    metadata: dict[str, str] = field(default_factory=dict)
    element: TypeMapping | None = None
    precision: int | None = None  # decimal128 only
    scale: int | None = None
    unrepresentable: tuple[str, ...] = ()  # the spec's list of values this type cannot hold

    def field(self, name: str) -> pa.Field:
        return pa.field(name, self.arrow_type, nullable=True,
                        metadata=self.metadata or None)


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric typmod, or None for an unconstrained numeric."""
    if typmod < 4:  # VARHDRSZ: -1 means unconstrained
        return None
    raw = typmod - 4
    precision = (raw >> 16) & 0xFFFF
    scale = raw & 0x7FF
    if scale & 0x400:  # PostgreSQL 15+ stores the scale as an 11-bit signed value
        scale -= 0x800
    return precision, scale


def decimal_fits(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) when a numeric with this typmod maps to decimal128, else None."""
    ps = numeric_typmod(typmod)
    if ps is None:
        return None
    precision, scale = ps
    if 1 <= precision <= MAX_DECIMAL128_PRECISION and 0 <= scale <= precision:
        return precision, scale
    return None


class TypeCatalog:
    """pg_type rows by OID, read from a server; maps declared types to Arrow types."""

    _QUERY = (
        "SELECT t.oid::int8, t.typname::text, n.nspname::text, t.typtype::text, "
        "t.typcategory::text, coalesce(p.proname::text, ''), t.typelem::int8, "
        "t.typbasetype::int8, t.typtypmod "
        "FROM pg_catalog.pg_type t "
        "JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
        "LEFT JOIN pg_catalog.pg_proc p ON p.oid = t.typreceive"
    )

    def __init__(self, types: dict[int, PgType], conn: Any = None):
        self._types = types
        self._conn = conn

    @classmethod
    def load(cls, conn: Any) -> TypeCatalog:
        """Read every pg_type row (a few hundred) over an ordinary psycopg connection.

        The connection is kept to look up types created later (``refresh`` or a miss)."""
        with conn.cursor() as cur:
            cur.execute(cls._QUERY)
            rows = cur.fetchall()
        return cls({int(r[0]): PgType(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]),
                                      int(r[7]), int(r[8]))
                    for r in rows}, conn)

    def refresh(self) -> None:
        if self._conn is None:
            raise TypeMappingError("this TypeCatalog has no connection to refresh from",
                                   hint="build it with TypeCatalog.load(conn)")
        self._types = TypeCatalog.load(self._conn)._types

    def get(self, oid: int) -> PgType:
        pgtype = self._types.get(oid)
        if pgtype is None and self._conn is not None:
            self.refresh()
            pgtype = self._types.get(oid)
        if pgtype is None:
            raise TypeMappingError(f"type OID {oid} is not in pg_type",
                                   hint="the type was dropped; refresh the catalog after DDL")
        return pgtype

    def map_type(self, oid: int, typmod: int = -1) -> TypeMapping:
        """The Arrow mapping of a column declared with type ``oid`` and ``typmod``."""
        declared = self.get(oid)
        mapping = self._resolve(declared, typmod, depth=0)
        metadata = {META_TYPE: declared.qualified_name}
        effective_typmod = self._effective_typmod(declared, typmod)
        if effective_typmod >= 0:
            metadata[META_TYPMOD] = str(effective_typmod)
        metadata.update(mapping.metadata)
        return TypeMapping(mapping.kind, mapping.arrow_type, metadata, mapping.element,
                           mapping.precision, mapping.scale, mapping.unrepresentable)

    def _effective_typmod(self, pgtype: PgType, typmod: int) -> int:
        while pgtype.typtype == "d":
            if typmod < 0:
                typmod = pgtype.typtypmod
            pgtype = self.get(pgtype.basetype)
        return typmod

    def _resolve(self, pgtype: PgType, typmod: int, depth: int) -> TypeMapping:
        if depth > 32:
            raise TypeMappingError(f"type {pgtype.qualified_name} nests too deeply")
        if pgtype.typtype == "d":
            base_typmod = typmod if typmod >= 0 else pgtype.typtypmod
            return self._resolve(self.get(pgtype.basetype), base_typmod, depth + 1)
        if pgtype.receive == SPEC["array"]["receive"] and pgtype.elem != 0:
            element = self._resolve(self.get(pgtype.elem), typmod, depth + 1)
            if element.kind in ("other", "array"):
                return _other()
            item = pa.field("item", element.arrow_type, nullable=True)
            metadata = {META_REPR: element.metadata[META_REPR]} if META_REPR in element.metadata else {}
            return TypeMapping("array", pa.list_(item), metadata, element,
                               unrepresentable=tuple(SPEC["array"]["unrepresentable"]))
        entry = spec_entries().get(pgtype.receive)
        if entry is None:
            return _other()
        unrep = tuple(entry.get("unrepresentable", ()))
        if entry["arrow"] == "decimal128":
            fits = decimal_fits(typmod)
            if fits is None:
                return TypeMapping("numeric_text", pa.utf8(), {META_REPR: entry["fallback_repr"]})
            precision, scale = fits
            return TypeMapping(entry["receive"], pa.decimal128(precision, scale), {}, None,
                               precision, scale, unrep)
        metadata = {META_REPR: entry["repr"]} if "repr" in entry else {}
        return TypeMapping(entry["receive"], _ARROW_TYPES[entry["arrow"]], metadata,
                           unrepresentable=unrep)


def _other() -> TypeMapping:
    other = SPEC["other"]
    return TypeMapping("other", _ARROW_TYPES[other["arrow"]], {META_REPR: other["repr"]})


# ------------------------------------------------------------------ the change-batch schema

UNREPRESENTABLE_TYPE = pa.map_(pa.utf8(), pa.utf8())


def metadata_fields(columns: list[pa.Field]) -> list[pa.Field]:
    """The ``_cdc_*`` columns that follow a table's columns in every change batch.

    Nullability is part of the contract: ``_cdc_commit_lsn``, ``_cdc_end_lsn`` and
    ``_cdc_commit_ts`` are null for rows of a transaction streamed while in progress;
    ``_cdc_before`` is null when the server sent no old row; ``_cdc_unchanged_toast`` and
    ``_cdc_unrepresentable`` are empty (never null) when there is nothing to report.
    """
    return [
        pa.field("_cdc_op", pa.utf8(), nullable=False),
        pa.field("_cdc_lsn", pa.uint64(), nullable=False),
        pa.field("_cdc_commit_lsn", pa.uint64(), nullable=True),
        pa.field("_cdc_end_lsn", pa.uint64(), nullable=True),
        pa.field("_cdc_commit_ts", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("_cdc_xid", pa.uint32(), nullable=False),
        pa.field("_cdc_ordinal", pa.uint64(), nullable=False),
        pa.field("_cdc_before", pa.struct(columns), nullable=True),
        pa.field("_cdc_unchanged_toast", pa.list_(pa.field("item", pa.utf8(), nullable=True)),
                 nullable=False),
        pa.field(UNREPRESENTABLE_COLUMN, UNREPRESENTABLE_TYPE, nullable=False),
    ]


def change_batch_schema(columns: list[pa.Field]) -> pa.Schema:
    """A table's change-batch schema: its columns, then the metadata columns."""
    return pa.schema(list(columns) + metadata_fields(list(columns)))


_RELATION_QUERY = (
    "SELECT a.attname::text, a.atttypid::int8, a.atttypmod "
    "FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
    "ORDER BY a.attnum"
)


def relation_fields(conn: Any, relid: int, catalog: TypeCatalog | None = None) -> list[pa.Field]:
    """A table's published columns as Arrow fields (generated columns are not published)."""
    catalog = catalog or TypeCatalog.load(conn)
    with conn.cursor() as cur:
        cur.execute(_RELATION_QUERY, (relid,))
        rows = cur.fetchall()
    return [catalog.map_type(int(oid), int(typmod)).field(name) for name, oid, typmod in rows]
