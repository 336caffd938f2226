"""Readers are keyed by their table's identity (its OID); names are labels that follow renames.

A reader's label is ``schema.table`` with each part quoted where needed
(:func:`table_label`): ``public.users``, ``"Sales"."Q1.Totals"``, ``"s.x".y`` and ``s."x.y"``
are four different tables, never one reader. :class:`ReaderMap` is what ``stream.readers``
is: a mapping from labels to readers, over the router's readers by OID, that looks a table up
by

1. its label, exactly (``'"s.x".y'``);
2. ``schema.table`` written plainly, without quotes (``'public.Users'``), when one table has
   that text;
3. the pattern grammar's exact spellings (``docs/patterns.md``): quoted parts are exact,
   unquoted parts are case-insensitive (``'"Sales"."Q1.Totals"'``, ``'PUBLIC.users'``,
   ``'users'`` for ``public.users``);
4. a name the table had before it was renamed, when no current table answers to it;
5. its OID (an ``int``).

A spelling that fits several tables raises :class:`TableLookupError` (a ``KeyError``) naming
them. A dropped table's reader stays reachable by its name until a new table takes the name
(a table the catalog no longer has counts as dropped here, before its reader has ended); then,
while it still holds changes nobody read, the map lists it under a label of its own,
``'public.users (dropped, OID 16385)'`` (:func:`dropped_label`), so iterating the map reaches
every change up to the drop; once read to its end it is reachable by its OID only.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import TYPE_CHECKING

from cdc_notebook.connection.quoting import quote_ident_if_needed
from cdc_notebook.errors import InvalidPattern
from cdc_notebook.provision.patterns import TablePattern

if TYPE_CHECKING:
    from cdc_notebook.stream.reader import TableReader


def table_label(schema: str, table: str) -> str:
    """``schema.table``, each part quoted where needed: unambiguous, and a valid pattern."""
    return f"{quote_ident_if_needed(schema)}.{quote_ident_if_needed(table)}"


class TableLookupError(KeyError):
    """No reader, or more than one, answers to a table name."""

    def __init__(self, message: str, candidates: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.candidates = candidates or []

    def __str__(self) -> str:
        return self.message


class ReaderMap(Mapping[str, "TableReader"]):
    """``{label: reader}``, a live view of the router's readers (keyed by OID).

    Iteration gives each current table's label once, and a dropped table's reader under its
    last name, or, once a new table has that name and while it holds unread changes, under
    :func:`dropped_label`; ``[...]`` accepts the spellings of the module docstring.
    """

    def __init__(self, by_relid: dict[int, TableReader]):
        self._by_relid = by_relid

    @property
    def by_relid(self) -> dict[int, TableReader]:
        """The readers by their table's OID (a copy)."""
        return dict(self._by_relid)

    def _visible(self) -> dict[str, TableReader]:
        readers = list(self._by_relid.values())
        live = {r.name: r for r in readers if not _gone(r)}
        out: dict[str, TableReader] = {}
        for reader in readers:
            if _gone(reader):
                if reader.name not in live:
                    out[reader.name] = reader  # the newest dropped one of that name
            else:
                out[reader.name] = reader
        # A dropped table's reader whose name another table took is listed under a label of
        # its own while it holds what nobody read yet (its changes up to the drop, then
        # TableDropped): a consumer of the map reads it to its end; then it leaves the map.
        for reader in readers:
            if _gone(reader) and out.get(reader.name) is not reader and _undrained(reader):
                out[dropped_label(reader)] = reader
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._visible()))

    def items(self) -> ItemsView[str, TableReader]:
        return self._visible().items()

    def values(self) -> ValuesView[TableReader]:
        return self._visible().values()

    def __len__(self) -> int:
        return len(self._visible())

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __getitem__(self, key: str | int) -> TableReader:
        if isinstance(key, int) and not isinstance(key, bool):
            reader = self._by_relid.get(key)
            if reader is None:
                raise TableLookupError(f"no reader for the table with OID {key}")
            return reader
        if not isinstance(key, str):
            raise TableLookupError(f"look a reader up by its table's name or OID, not {key!r}")
        visible = self._visible()
        if key in visible and visible[key].name != key:  # a dropped table's own label
            return visible[key]
        readers = list(self._by_relid.values())
        found = (_pick(key, [r for r in readers if r.name == key])
                 or _pick(key, [r for r in readers if f"{r.schema_name}.{r.table_name}" == key])
                 or _pick(key, _pattern_matches(key, readers))
                 or _pick(key, [r for r in readers if key in r.former_names], renamed=True))
        if found is None:
            names = ", ".join(sorted(self._visible())) or "none"
            raise TableLookupError(f"no reader for table {key} (the readers: {names})")
        return found

    def __repr__(self) -> str:
        return f"ReaderMap({self._visible()!r})"


def dropped_label(reader: TableReader) -> str:
    """The map's label of a dropped table's reader whose name another table has now."""
    return f"{reader.name} (dropped, OID {reader.relid})"


def _undrained(reader: TableReader) -> bool:
    """Its consumer has not read it to its end (the TableDropped event) and it is open."""
    return not (reader.dropped or reader.closed)


def _gone(reader: TableReader) -> bool:
    """The reader's table was dropped (or the catalog watcher saw it gone)."""
    return reader.table_dropped or reader.table_gone


def _pattern_matches(key: str, readers: list[TableReader]) -> list[TableReader]:
    """The readers ``key`` names in the pattern grammar, when it is an exact spelling (quoted
    or plain parts; no glob, regular expression or exclusion)."""
    try:
        pattern = TablePattern.parse(key)
    except InvalidPattern:
        return []
    if pattern.exclude or pattern.schema.kind not in ("exact", "name") \
            or pattern.table.kind not in ("exact", "name"):
        return []
    return [r for r in readers if pattern.matches(r.schema_name, r.table_name)]


def _pick(key: str, candidates: list[TableReader], *, renamed: bool = False
          ) -> TableReader | None:
    """The one reader among ``candidates`` (a current table before a dropped one, the newest
    dropped one otherwise); several current ones are ambiguous."""
    if not candidates:
        return None
    current = [r for r in candidates if not _gone(r)]
    if len(current) == 1:
        return current[0]
    if not current:
        return candidates[-1]
    labels = sorted(r.name for r in current)
    what = "tables were called that" if renamed else "tables answer to that name"
    raise TableLookupError(
        f"{key} is ambiguous: {len(current)} {what} ({', '.join(labels)}); look the reader "
        "up by one of those names (quoted parts are exact) or by its table's OID", labels)
