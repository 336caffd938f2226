"""Table patterns, catalog discovery and the quick preview the widgets call on every keystroke.

The grammar (docs/patterns.md has the table of examples):

* A pattern is ``schema.table`` or ``table`` (the schema is then ``public``). The first dot that
  is outside double quotes and outside ``[...]``, ``(...)`` and ``{...}`` separates the parts.
* A part in double quotes is an exact, case-sensitive name (``""`` is a quote inside it):
  ``"Sales"."Q1.Totals"``.
* An unquoted part is case-insensitive. It is a **regular expression** (matched in full) when it
  contains one of ``[ ] ( ) { } + ^ $ | \\ .``; otherwise a **glob** when it contains ``*``
  (any run of characters) or ``?`` (one character); otherwise a plain name.
* A pattern starting with ``!`` excludes what it matches from the union of the others.
* A string may hold several patterns separated by commas (outside quotes and brackets); a list
  holds one pattern per item.

Only tables and partitioned tables are matched (no views, materialized views, foreign tables,
temporary tables); system schemas (``pg_catalog``, ``information_schema``, ``pg_toast*``,
``pg_temp*``) and the kit's own (``_cdc_notebook``, the column history) never match, even
when named. A partition whose partitioned root is matched too
is folded into the root (its changes are published as the root's).
"""

from __future__ import annotations

import difflib
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_notebook.connection.quoting import quote_ident_if_needed
from cdc_notebook.errors import InvalidPattern, NoTablesMatched

DEFAULT_SCHEMA = "public"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")  # (and the kit's _cdc_notebook)
_REGEX_CHARS = frozenset("[](){}+^$|\\.")
_GLOB_CHARS = frozenset("*?")
_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


# --------------------------------------------------------------------------- the grammar


@dataclass(frozen=True)
class NamePart:
    """One side of a pattern (schema or table): how it matches and what it was written as."""

    kind: str  # "exact" (quoted), "name" (unquoted, case-insensitive), "glob" or "regex"
    text: str  # as written (for quoted parts: the name inside the quotes)
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _folded: str = field(default="", compare=False, repr=False)

    def matches(self, name: str) -> bool:
        if self.kind == "exact":
            return name == self.text
        if self.kind == "name":
            return name.casefold() == self._folded
        if self._regex is None:  # glob and regex parts are made with their compiled pattern
            raise RuntimeError(f"internal error: the {self.kind} part {self.text!r} has no "
                               "compiled pattern")
        return self._regex.fullmatch(name) is not None


def _glob_to_regex(text: str) -> str:
    out = []
    for ch in text:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _make_part(raw: str, pattern: str, side: str) -> NamePart:
    raw = raw.strip()
    if not raw:
        raise InvalidPattern(f"pattern {pattern!r} has an empty {side} name", pattern=pattern,
                             part=raw, hint="write schema.table, table, or a quoted \"Name\"")
    if raw.startswith('"'):
        name, end = _read_quoted(raw, 0, pattern)
        if end != len(raw):
            raise InvalidPattern(
                f"pattern {pattern!r}: text {raw[end:]!r} follows the quoted name {raw[:end]}",
                pattern=pattern, part=raw,
                hint="quote the whole name, e.g. \"Q1.Totals\", or leave it unquoted")
        if not name:
            raise InvalidPattern(f"pattern {pattern!r} has an empty quoted {side} name",
                                 pattern=pattern, part=raw)
        return NamePart("exact", name)
    if '"' in raw:
        raise InvalidPattern(f"pattern {pattern!r}: the {side} part {raw!r} has a stray quote",
                             pattern=pattern, part=raw,
                             hint="a quoted name must be the whole part: \"Sales\".\"Q1.Totals\"")
    chars = set(raw)
    if chars & _REGEX_CHARS:
        try:
            regex = re.compile(raw, re.IGNORECASE)
        except re.error as exc:
            raise InvalidPattern(
                f"pattern {pattern!r}: the {side} part {raw!r} is not a valid regular "
                f"expression ({exc})", pattern=pattern, part=raw,
                hint="fix the expression, or quote the name (\"a.b\") to match it literally",
            ) from exc
        return NamePart("regex", raw, regex)
    if chars & _GLOB_CHARS:
        return NamePart("glob", raw, re.compile(_glob_to_regex(raw), re.IGNORECASE | re.DOTALL))
    return NamePart("name", raw, None, raw.casefold())


def _read_quoted(text: str, start: int, pattern: str) -> tuple[str, int]:
    """Read a double-quoted identifier at ``start``; return (name, index after the quote)."""
    i = start + 1
    out = []
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if i + 1 < len(text) and text[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise InvalidPattern(f"pattern {pattern!r} has an unterminated quote", pattern=pattern,
                         part=text[start:], hint='close the quoted name with "')


def _split_top_level(text: str, sep: str, pattern: str, first_only: bool) -> list[str]:
    """Split at ``sep`` outside quotes, brackets, parentheses, braces and backslash escapes."""
    pieces: list[str] = []
    depth = {"[": 0, "(": 0, "{": 0}
    closing = {"]": "[", ")": "(", "}": "{"}
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            _name, i = _read_quoted(text, i, pattern)
            continue
        if ch == "\\":
            i += 2
            continue
        if depth["["]:
            # inside a character class only "]" ends it; other brackets are literal
            if ch == "]":
                depth["["] -= 1
            i += 1
            continue
        if ch in depth:
            depth[ch] += 1
        elif ch in closing and depth[closing[ch]]:
            depth[closing[ch]] -= 1
        elif ch == sep and not any(depth.values()):
            pieces.append(text[start:i])
            start = i + 1
            if first_only:
                break
        i += 1
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class TablePattern:
    """One parsed pattern: ``[!]schema.table`` (see the module docstring for the grammar)."""

    text: str
    schema: NamePart
    table: NamePart
    exclude: bool = False

    @classmethod
    def parse(cls, text: str) -> TablePattern:
        if not isinstance(text, str):
            raise InvalidPattern(f"a table pattern must be a string, not {type(text).__name__}",
                                 pattern=repr(text))
        source = text.strip()
        body = source
        exclude = body.startswith("!")
        if exclude:
            body = body[1:].strip()
        if not body:
            raise InvalidPattern(f"empty table pattern {text!r}", pattern=text,
                                 hint="write schema.table, e.g. public.users or public.*")
        parts = _split_top_level(body, ".", source, first_only=True)
        if len(parts) == 1:
            schema = NamePart("name", DEFAULT_SCHEMA, None, DEFAULT_SCHEMA)
            table = _make_part(parts[0], source, "table")
        else:
            schema = _make_part(parts[0], source, "schema")
            table = _make_part(parts[1], source, "table")
        return cls(source, schema, table, exclude)

    def matches(self, schema: str, table: str) -> bool:
        return self.schema.matches(schema) and self.table.matches(table)

    def __str__(self) -> str:
        return self.text


def parse_patterns(patterns: str | TablePattern | Iterable[str | TablePattern]
                   ) -> list[TablePattern]:
    """Parse a comma-separated string, a list of strings, or patterns already parsed.

    Raises :class:`InvalidPattern` naming the faulty pattern and part; an empty selection or
    one made only of exclusions is an error too.
    """
    items: list[str | TablePattern] = (
        [patterns] if isinstance(patterns, (str, TablePattern)) else list(patterns))
    parsed: list[TablePattern] = []
    for item in items:
        if isinstance(item, TablePattern):
            parsed.append(item)
            continue
        if not isinstance(item, str):
            raise InvalidPattern(f"a table pattern must be a string, not {type(item).__name__}",
                                 pattern=repr(item))
        for piece in _split_top_level(item, ",", item, first_only=False):
            if piece.strip():
                parsed.append(TablePattern.parse(piece))
    if not parsed:
        raise InvalidPattern("no table pattern given", pattern=str(patterns),
                             hint='e.g. tables="public.*" or tables=["public.users", "sales.*"]')
    if all(p.exclude for p in parsed):
        raise InvalidPattern(
            f"only exclusions given ({', '.join(p.text for p in parsed)}): nothing to exclude from",
            pattern=", ".join(p.text for p in parsed),
            hint='add what to include first, e.g. ["public.*", "!public.audit_*"]')
    return parsed


# --------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class TableInfo:
    """A capturable table as the catalog describes it (one row of the discovery query)."""

    schema: str
    name: str
    oid: int
    relkind: str  # "r" table, "p" partitioned table
    replica_identity: str  # "d" default (primary key), "n" nothing, "f" full, "i" index
    primary_key: tuple[str, ...]
    identity_columns: tuple[str, ...]  # what the server sends as the old key of updates/deletes
    owner: str
    is_owner: bool  # the current role has the owner's privileges (CREATE PUBLICATION needs it)
    can_select: bool  # SELECT on the table and USAGE on its schema
    estimated_rows: int | None  # pg_class.reltuples; None when never analyzed
    persistence: str = "p"  # "p" permanent, "u" unlogged (not in WAL: cannot be captured)
    partition_root: tuple[str, str] | None = None  # (schema, name) of the root when a partition

    @property
    def has_pk(self) -> bool:
        return bool(self.primary_key)

    @property
    def qualified_name(self) -> str:
        """``schema.table`` as the readers are keyed (``'public.users'``)."""
        return f"{self.schema}.{self.name}"

    @property
    def quoted_name(self) -> str:
        """``schema.table`` quoted where needed: ``"Sales"."Q1.Totals"``."""
        return f"{quote_ident_if_needed(self.schema)}.{quote_ident_if_needed(self.name)}"

    @property
    def change_key(self) -> tuple[str, ...]:
        """The columns that identify a row in its changes: the replica identity index's when
        the table has one (its updates and deletes carry only those as the old key), else the
        primary key, else (REPLICA IDENTITY FULL without a key) every column."""
        if self.replica_identity == "i":
            return self.identity_columns
        return self.primary_key or self.identity_columns

    @property
    def has_replica_identity(self) -> bool:
        """Updates and deletes carry the old key (or row) only when this is true."""
        return bool(self.identity_columns)

    def sql_identifier(self) -> Any:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)


# One query: the tables, their keys, ownership and privileges. The key columns come from
# correlated subqueries over pg_index, which use its index on indrelid.
DISCOVERY_SQL = """
SELECT c.oid::int8,
       n.nspname::text,
       c.relname::text,
       c.relkind::text,
       c.relreplident::text,
       c.relpersistence::text,
       pg_get_userbyid(c.relowner)::text,
       pg_has_role(c.relowner, 'USAGE'),
       has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'),
       c.reltuples::float8,
       CASE WHEN c.relispartition THEN
         (SELECT ARRAY[rn.nspname::text, r.relname::text]
            FROM pg_class r JOIN pg_namespace rn ON rn.oid = r.relnamespace
           WHERE r.oid = pg_partition_root(c.oid))
       END,
       (SELECT array_agg(a.attname::text ORDER BY k.ord)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary),
       CASE c.relreplident
         WHEN 'i' THEN
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
              FROM pg_index i
              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisreplident)
         WHEN 'f' THEN
           (SELECT array_agg(a.attname::text ORDER BY a.attnum)
              FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
       END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cdc_notebook')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""
# (sorted in Python: an ORDER BY here makes the planner loop over namespaces, ~25 % slower)

# Anything that changes what discovery returns writes a new row version (a new xmin) into
# pg_class, pg_namespace or pg_index, or adds/removes rows there: table and index DDL, GRANT
# and REVOKE (relacl), ALTER ... OWNER, REPLICA IDENTITY. Role membership changes and the
# in-place reltuples update of ANALYZE are not seen; the preview tolerates that, match_tables
# always reads the catalog itself.
FINGERPRINT_SQL = """
SELECT (SELECT count(*)::int8 FROM pg_class),
       (SELECT coalesce(sum(xmin::text::int8), 0)::int8 FROM pg_class),
       (SELECT coalesce(sum(xmin::text::int8), 0)::int8 FROM pg_namespace),
       (SELECT count(*)::int8 FROM pg_index),
       (SELECT coalesce(sum(xmin::text::int8), 0)::int8 FROM pg_index)
"""


def _row_to_info(row: Sequence[Any]) -> TableInfo:
    (oid, schema, name, relkind, replident, persistence, owner, is_owner, can_select,
     reltuples, root, pk, ri) = row
    pk = tuple(pk or ())
    if replident == "d":
        identity = pk
    elif replident in ("i", "f"):
        identity = tuple(ri or ())
    else:
        identity = ()
    return TableInfo(
        schema=schema, name=name, oid=int(oid), relkind=relkind, replica_identity=replident,
        primary_key=pk, identity_columns=identity, owner=owner, is_owner=bool(is_owner),
        can_select=bool(can_select),
        # reltuples is -1 for a table never vacuumed/analyzed (PostgreSQL 14+)
        estimated_rows=None if reltuples is None or reltuples < 0 else int(reltuples),
        persistence=persistence,
        partition_root=(root[0], root[1]) if root else None,
    )


def discover_tables(conn: Any) -> list[TableInfo]:
    """Every table and partitioned table outside the system schemas, in one query."""
    from psycopg.pq import TransactionStatus

    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.cursor() as cur:
        cur.execute(DISCOVERY_SQL)
        rows = cur.fetchall()
    if idle and not conn.autocommit:
        conn.rollback()  # close the transaction this query opened, and only that one
    rows.sort(key=lambda r: (r[1], r[2]))
    return [_row_to_info(r) for r in rows]


def catalog_fingerprint(conn: Any) -> tuple[int, ...]:
    """A cheap value that changes when discovery's answer may have changed (~3 ms)."""
    from psycopg.pq import TransactionStatus

    idle = conn.info.transaction_status == TransactionStatus.IDLE
    row = conn.execute(FINGERPRINT_SQL).fetchone()
    if idle and not conn.autocommit:
        conn.rollback()
    return tuple(row)


class CatalogCache:
    """Catalog snapshots per connection, reused for ``max_age`` seconds.

    The widgets preview on every keystroke; re-reading the catalog each time would cost a round
    trip and a catalog scan (tens of milliseconds over thousands of tables).
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[
            Any, tuple[float, tuple[int, ...], list[TableInfo]]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def tables(self, conn: Any, max_age: float) -> list[TableInfo]:
        """The catalog, at most ``max_age`` seconds old; after that a fingerprint query decides
        whether to read it again. ``max_age <= 0`` always reads it."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(conn)
        if hit is not None and max_age > 0:
            if now - hit[0] <= max_age:
                return hit[2]
            fingerprint = catalog_fingerprint(conn)
            if fingerprint == hit[1]:
                with self._lock:
                    self._entries[conn] = (time.monotonic(), fingerprint, hit[2])
                return hit[2]
        fingerprint = catalog_fingerprint(conn)
        tables = discover_tables(conn)
        with self._lock:
            self._entries[conn] = (time.monotonic(), fingerprint, tables)
        return tables

    def invalidate(self, conn: Any | None = None) -> None:
        with self._lock:
            if conn is None:
                self._entries.clear()
            else:
                self._entries.pop(conn, None)


catalog_cache = CatalogCache()


# --------------------------------------------------------------------------- matching


@dataclass
class MatchResult:
    """What a list of patterns selects from a catalog."""

    patterns: list[TablePattern]
    tables: list[TableInfo]  # selected, in catalog order
    counts: dict[str, int]  # pattern text -> tables it matched (before exclusions)
    skipped: list[tuple[TableInfo, str]]  # matched but not capturable, with the reason

    @property
    def unmatched(self) -> list[TablePattern]:
        return [p for p in self.patterns if not p.exclude and self.counts.get(p.text, 0) == 0]


def select_tables(catalog: Sequence[TableInfo], patterns: Sequence[TablePattern]) -> MatchResult:
    """Apply patterns to a catalog (no I/O)."""
    includes = [p for p in patterns if not p.exclude]
    excludes = [p for p in patterns if p.exclude]
    counts = {p.text: 0 for p in patterns}
    chosen: list[TableInfo] = []
    for t in catalog:
        hit = False
        for p in includes:
            if p.matches(t.schema, t.name):
                counts[p.text] += 1
                hit = True
        if not hit:
            continue
        excluded = False
        for p in excludes:
            if p.matches(t.schema, t.name):
                counts[p.text] += 1
                excluded = True
        if not excluded:
            chosen.append(t)
    chosen_names = {(t.schema, t.name) for t in chosen}
    tables: list[TableInfo] = []
    skipped: list[tuple[TableInfo, str]] = []
    for t in chosen:
        if t.persistence == "u":
            skipped.append((t, "unlogged: its changes are not written to WAL"))
        elif t.partition_root is not None and t.partition_root in chosen_names:
            skipped.append((t, f"partition of {quote_ident_if_needed(t.partition_root[0])}."
                               f"{quote_ident_if_needed(t.partition_root[1])}: its changes arrive as the "
                               "partitioned table's"))
        else:
            tables.append(t)
    return MatchResult(list(patterns), tables, counts, skipped)


class _NearMissIndex:
    """Names of one catalog prepared for "did you mean" look-ups (built once per catalog)."""

    def __init__(self, catalog: Sequence[TableInfo]):
        self.catalog = catalog  # keeps id(catalog) valid while cached
        self.shown: dict[str, str] = {}  # folded schema.table -> quoted name
        self.by_table: dict[str, list[str]] = {}  # folded table name -> folded qualified names
        for t in catalog:
            folded = t.qualified_name.casefold()
            self.shown.setdefault(folded, t.quoted_name)
            self.by_table.setdefault(t.name.casefold(), []).append(folded)
        self.qualified = list(self.shown)
        self.tables = list(self.by_table)


_near_indexes: dict[int, _NearMissIndex] = {}
_near_lock = threading.Lock()


def _near_index(catalog: Sequence[TableInfo]) -> _NearMissIndex:
    with _near_lock:
        index = _near_indexes.get(id(catalog))
        if index is None or index.catalog is not catalog:
            index = _NearMissIndex(catalog)
            if len(_near_indexes) >= 4:
                _near_indexes.pop(next(iter(_near_indexes)))
            _near_indexes[id(catalog)] = index
        return index


_MAX_CANDIDATES = 300  # bounds difflib's cost per keystroke on large catalogs


def _candidates(stem: str, names: list[str], key: Callable[[str], str]) -> list[str]:
    """A cheap pre-filter for difflib: names holding the stem first, then same first letter."""
    if not stem:
        return []
    holding = [n for n in names if stem in n]
    if len(holding) >= _MAX_CANDIDATES:
        return holding[:_MAX_CANDIDATES]
    first = stem[0]
    same_start = [n for n in names if key(n)[:1] == first and stem not in n]
    return holding + same_start[:_MAX_CANDIDATES - len(holding)]


def near_misses(pattern: TablePattern, catalog: Sequence[TableInfo], n: int = 5) -> list[str]:
    """Tables whose names look like what the pattern spells (for "did you mean")."""
    stem = pattern.text.lstrip("!").strip()
    if pattern.table.kind in ("glob", "regex"):
        stem = re.sub(r"[\[\](){}+^$|\\*?]", "", stem)
    stem = stem.replace('"', "").casefold()
    if "." not in stem:
        stem = f"{DEFAULT_SCHEMA}.{stem}"
    index = _near_index(catalog)
    table_stem = stem.split(".", 1)[1]
    close = difflib.get_close_matches(
        stem, _candidates(table_stem, index.qualified, lambda q: q.split(".", 1)[1]),
        n=n, cutoff=0.6)
    if len(close) < n:
        # the table name alone, in any schema (a wrong or missing schema is a common slip)
        for name in difflib.get_close_matches(
                table_stem, _candidates(table_stem, index.tables, lambda t: t), n=n,
                cutoff=0.75):
            for q in index.by_table[name]:
                if q not in close:
                    close.append(q)
    return [index.shown[c] for c in close[:n]]


def match_tables(conn: Any, patterns: str | Iterable[str | TablePattern], *,
                 strict: bool = True, max_age: float = 0.0) -> list[TableInfo]:
    """The tables the patterns select, fresh from the catalog (or cached up to ``max_age`` s).

    ``strict``: every include pattern must match at least one table (a typo is an error, with
    near misses); otherwise only an empty result is an error. Raises :class:`InvalidPattern`
    or :class:`NoTablesMatched`.
    """
    parsed = parse_patterns(patterns)
    catalog = catalog_cache.tables(conn, max_age)
    result = select_tables(catalog, parsed)
    missing = result.unmatched if strict else ([] if result.tables else
                                               [p for p in parsed if not p.exclude])
    if missing:
        raise _no_match_error(missing, catalog, result)
    if not result.tables:
        raise _no_match_error([p for p in parsed if not p.exclude], catalog, result)
    return result.tables


def _no_match_error(missing: list[TablePattern], catalog: Sequence[TableInfo],
                    result: MatchResult) -> NoTablesMatched:
    guesses: list[str] = []
    for p in missing:
        for g in near_misses(p, catalog):
            if g not in guesses:
                guesses.append(g)
    names = ", ".join(p.text for p in missing)
    if len(missing) == 1 and result.counts.get(missing[0].text):
        message = f"pattern {names} matches only tables that were excluded or cannot be captured"
    else:
        message = (f"pattern {names} matches no table" if len(missing) == 1 else
                   f"patterns {names} match no table")
    if result.skipped and not result.tables:
        message += "; skipped: " + "; ".join(f"{t.quoted_name} ({why})"
                                              for t, why in result.skipped[:5])
    hint = (f"did you mean {', '.join(guesses)}?" if guesses else
            "check the schema and table names (unquoted names match case-insensitively; "
            "views are not captured); preview the catalog with preview(conn, '*.*')")
    return NoTablesMatched(message, patterns=[p.text for p in missing], near_misses=guesses,
                           hint=hint)


# --------------------------------------------------------------------------- the preview


@dataclass
class PatternPreview:
    """What a pattern text selects right now; never raises (errors are in ``error``)."""

    text: str | list[str]
    tables: list[TableInfo] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # pattern -> near misses
    skipped: list[tuple[TableInfo, str]] = field(default_factory=list)
    error: str | None = None
    error_part: str | None = None
    catalog_size: int = 0
    catalog_age: float = 0.0  # seconds since the catalog was read

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.tables)

    @property
    def names(self) -> list[str]:
        return [t.qualified_name for t in self.tables]

    @property
    def without_key(self) -> list[TableInfo]:
        """Selected tables whose updates and deletes would carry no old key."""
        return [t for t in self.tables if not t.has_replica_identity]


def preview(conn: Any, patterns: str | Sequence[str], *, max_age: float = 2.0,
            limit_near_misses: int = 5) -> PatternPreview:
    """What ``patterns`` would select, for a widget: cached catalog, no exceptions."""
    out = PatternPreview(patterns if isinstance(patterns, str) else list(patterns))
    try:
        parsed = parse_patterns(patterns)
    except InvalidPattern as exc:
        out.error = exc.message
        out.error_part = exc.part
        return out
    catalog = catalog_cache.tables(conn, max_age)
    with catalog_cache._lock:
        entry = catalog_cache._entries.get(conn)
    out.catalog_age = time.monotonic() - entry[0] if entry else 0.0  # since last validated
    result = select_tables(catalog, parsed)
    out.tables = result.tables
    out.counts = result.counts
    out.skipped = result.skipped
    out.catalog_size = len(catalog)
    for p in result.unmatched:
        out.unmatched[p.text] = near_misses(p, catalog, limit_near_misses)
    return out
