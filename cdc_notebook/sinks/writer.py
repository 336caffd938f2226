"""Delta Lake I/O for the sink: where each table goes, the exactly-once markers, and the writer
of one partition (the whole table when there is one partition).

Each captured table ``schema.table`` has a mirror at ``ROOT/<schema>.<table>`` and, with the
changelog on, an append-only ``ROOT/<schema>.<table>.changes``. Every commit of either carries
Delta's application transactions (``txn`` actions) naming how far it got::

    app_id "<slot>:<schema>.<table>[:p<i>/<n>]"          version = _cdc_end_lsn of its last change
    app_id "<slot>:<schema>.<table>[:p<i>/<n>]#ordinal"  version = _cdc_ordinal of that change

in the same atomic commit as the data, so ``DeltaTable.transaction_version`` read back after a
crash says exactly which changes a table (partition) holds: a change is committed iff its
``(end_lsn, ordinal)`` is at or below the pair. The ordinal makes a transaction split across
two commits (one bigger than a micro-batch) resumable at the right row.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_notebook.sinks.changes import (
    PARTITION,
    Lookup,
    Position,
    after_position,
    delta_schema,
    last_position,
    net_effect,
    table_columns,
    to_delta,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

ORDINAL_SUFFIX = "#ordinal"
WHOLE_TRANSACTION = (1 << 63) - 1  # a marker without an ordinal covers its whole transaction
# The table's description (JSON) says what wrote it: Delta's configuration takes only the keys
# it knows.
DESCRIPTION_KEY = "cdc_notebook"

# A user hook run where a partition is written: (table, partition, change rows) -> None
ChangeHook = Callable[[str, int, pa.Table], None]


def encode_name(part: str) -> str:
    """A schema or table name as one path component: characters other than letters, digits,
    ``_`` and ``-`` percent-encoded (so ``schema.table`` stays unambiguous and a ``/`` in a
    name cannot leave the directory)."""
    out = []
    for ch in part:
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out) or "%00"


@dataclass(frozen=True)
class TableSpec:
    """A captured table as the sink writes it."""

    label: str  # the reader's name (schema.table, quoted where needed)
    directory: str  # <schema>.<table>, each part encoded
    keys: tuple[str, ...]  # the change key (empty: no mirror, changelog only)
    relid: int = 0

    @classmethod
    def of(cls, label: str, schema: str, table: str, keys: Sequence[str], relid: int = 0
           ) -> TableSpec:
        return cls(label, f"{encode_name(schema)}.{encode_name(table)}", tuple(keys), relid)


def marker_ids(slot: str, spec: TableSpec, partition: int, partitions: int) -> tuple[str, str]:
    base = f"{slot}:{spec.directory}"
    if partitions > 1:
        base += f":p{partition}/{partitions}"
    return base, base + ORDINAL_SUFFIX


def committed_position(location: DeltaLocation, slot: str, spec: TableSpec, *,
                       partitions: int = 1, changelog: bool = False, mirror: bool = True
                       ) -> Position:
    """The oldest position any destination (mirror, changelog, each partition) of ``spec``
    holds: where a restarted stream must start handing this table's changes again."""
    tables = []
    if mirror and spec.keys:
        tables.append(location.open(location.uri(spec)))
    if changelog:
        tables.append(location.open(location.uri(spec, changelog=True)))
    positions = [read_marker(table, marker_ids(slot, spec, i, partitions))
                 for table in tables for i in range(partitions)]
    return min(positions) if positions else (0, 0)


def read_marker(table: DeltaTable | None, ids: tuple[str, str]) -> Position:
    """The position a Delta table (partition) has committed up to, (0, 0) for none."""
    if table is None:
        return (0, 0)
    end = table.transaction_version(ids[0])
    if end is None:
        return (0, 0)
    ordinal = table.transaction_version(ids[1])
    return (int(end), WHOLE_TRANSACTION if ordinal is None else int(ordinal))


class DeltaLocation:
    """Where the sink's Delta tables live: a local directory or any URI deltalake takes."""

    def __init__(self, root: str | os.PathLike[str],
                 storage_options: dict[str, str] | None = None):
        text = os.fspath(root)
        if "://" not in text:
            text = os.path.abspath(text)  # actors in other processes resolve it the same way
        self.root = text.rstrip("/")
        self.storage_options = storage_options

    def uri(self, spec: TableSpec, *, changelog: bool = False) -> str:
        return f"{self.root}/{spec.directory}" + (".changes" if changelog else "")

    def open(self, uri: str) -> DeltaTable | None:
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return None
        return DeltaTable(uri, storage_options=self.storage_options)

    def __repr__(self) -> str:
        return f"DeltaLocation({self.root!r})"


def _commit_properties(ids: tuple[str, str], position: Position) -> Any:
    from deltalake import CommitProperties, Transaction

    end, ordinal = position
    return CommitProperties(app_transactions=[Transaction(app_id=ids[0], version=int(end)),
                                              Transaction(app_id=ids[1], version=int(ordinal))])


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def ensure_table(location: DeltaLocation, uri: str, schema: pa.Schema, *, partitions: int,
                 about: dict[str, Any]) -> DeltaTable:
    """Open the Delta table at ``uri``, creating it empty with ``schema`` when it is not there.
    A table made for another number of partitions is refused (its markers are per partition)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    table = location.open(uri)
    if table is None:
        partition_by = [PARTITION] if partitions > 1 else None
        try:
            table = DeltaTable.create(uri, schema, partition_by=partition_by, mode="ignore",
                                      description=json.dumps({DESCRIPTION_KEY: about}),
                                      storage_options=location.storage_options)
        except DeltaError:  # made concurrently by another writer
            table = location.open(uri)
            if table is None:
                raise
    try:
        made_for = int(json.loads(table.metadata().description or "{}")
                       .get(DESCRIPTION_KEY, {}).get("partitions", 1))
    except (ValueError, AttributeError):
        made_for = 1
    if made_for != partitions:
        from cdc_notebook.errors import CDCError

        raise CDCError(f"the Delta table {uri} was written with {made_for} partition(s), not "
                       f"{partitions}", hint=f"run the sink with --partitions {made_for}, or "
                       "write to a new directory (and a new slot)")
    return table


def mirror_lookup(table: Callable[[], DeltaTable | None], partition: int | None = None
                  ) -> Lookup:
    """Mirror rows by key, for unchanged TOAST values whose previous version is there (only
    ``partition``'s rows when given)."""
    def lookup(start_keys: pa.Table, keys: Sequence[str], columns: Sequence[str]) -> pa.Table:
        mirror = table()
        if mirror is None or start_keys.num_rows == 0:
            return start_keys.slice(0, 0)
        probe = to_delta(start_keys)
        flt = pc.field(keys[0]).isin(pc.unique(probe.column(keys[0])))
        if partition is not None:
            flt = flt & (pc.field(PARTITION) == partition)
        wanted = list(dict.fromkeys([*keys, *columns]))
        found = mirror.to_pyarrow_dataset().to_table(columns=wanted, filter=flt)
        for k in keys:
            i = found.schema.get_field_index(k)
            found = found.set_column(i, k, found.column(k).cast(start_keys.schema.field(k).type))
        return found
    return lookup


# A micro-batch that starts with this many inserts (or more) writes them as an append of their
# own before merging the rest: a merge reads and rewrites the files its keys fall in, which
# inserts do not need (the standard workload's switch from inserts to updates).
LEADING_INSERTS = 10_000


def _leading_inserts(rows: pa.Table) -> list[pa.Table]:
    """``rows`` as one piece, or as its leading run of inserts and the rest (two commits, each
    with its own marker: a restart between them resumes after the first)."""
    from cdc_notebook.sinks.changes import OP

    n = rows.num_rows
    if n < 2 * LEADING_INSERTS:
        return [rows] if n else []
    not_insert = pc.not_equal(rows.column(OP), "c").fill_null(True)
    if not pc.any(not_insert).as_py():
        return [rows]
    first = int(pc.index(not_insert, True).as_py())
    if first < max(LEADING_INSERTS, n // 10):
        return [rows]
    return [rows.slice(0, first), rows.slice(first)]


# Rows with unchanged TOAST values read their values from the mirror before the merge: a
# micro-batch with more of them than this is committed in pieces, which bounds the memory
# (wide rows: 100,000 updates leaving a 2 KB value alone read and rewrite 200 MB).
TOAST_LOOKUP_ROWS = 20_000


def _pieces(rows: pa.Table) -> list[pa.Table]:
    """The commits a micro-batch's mirror rows are written in: its leading inserts, then the
    rest in pieces of at most TOAST_LOOKUP_ROWS rows with unchanged TOAST values."""
    from cdc_notebook.sinks.changes import TOAST

    out = []
    for piece in _leading_inserts(rows):
        if TOAST not in piece.column_names or piece.num_rows <= TOAST_LOOKUP_ROWS:
            out.append(piece)
            continue
        toast = np.asarray(pc.list_value_length(piece.column(TOAST)).fill_null(0)) > 0
        if int(toast.sum()) <= TOAST_LOOKUP_ROWS:
            out.append(piece)
            continue
        seen = np.cumsum(toast)
        cuts = np.searchsorted(seen, np.arange(TOAST_LOOKUP_ROWS, int(seen[-1]),
                                               TOAST_LOOKUP_ROWS), side="right")
        bounds = [0, *cuts.tolist(), piece.num_rows]
        out.extend(piece.slice(a, b - a) for a, b in itertools.pairwise(bounds)
                   if b > a)
    return out


def create_tables(location: DeltaLocation, slot: str, spec: TableSpec, schema: pa.Schema, *,
                  partitions: int = 1, changelog: bool = False) -> None:
    """Create a table's empty mirror (and changelog) from its change-batch ``schema``, so every
    captured table has its Delta tables before its first change."""
    about = {"table": spec.label, "key_columns": list(spec.keys), "slot": slot,
             "partitions": partitions}
    extra = [pa.field(PARTITION, pa.int32(), True)] if partitions > 1 else []
    if spec.keys:
        mirror = delta_schema(schema, table_columns(schema))
        ensure_table(location, location.uri(spec), pa.schema([*mirror, *extra]),
                     partitions=partitions, about=about)
    if changelog:
        log_schema = delta_schema(schema)
        ensure_table(location, location.uri(spec, changelog=True),
                     pa.schema([*log_schema, *extra]), partitions=partitions, about=about)


@dataclass
class _TableState:
    spec: TableSpec
    mirror: DeltaTable | None = None
    changelog: DeltaTable | None = None
    mirror_pos: Position = (0, 0)
    changelog_pos: Position = (0, 0)


@dataclass
class WriteStats:
    rows: int = 0  # change rows handed to this writer
    mirror_commits: int = 0
    changelog_commits: int = 0
    mirror_rows: int = 0  # rows upserted or deleted in the mirror
    changelog_rows: int = 0
    skipped: int = 0  # rows already committed (a replay after a restart)
    unresolved_toast: int = 0
    seconds: float = 0.0
    host: str = ""
    pid: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: WriteStats) -> None:
        for name in ("rows", "mirror_commits", "changelog_commits", "mirror_rows",
                     "changelog_rows", "skipped", "unresolved_toast"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds


class PartitionWriter:
    """Writes partition ``partition`` of ``partitions`` of every captured table: its mirror
    (merged by key) and, with ``changelog``, its changelog (appended). Each commit records its
    position; rows at or below the position a table already holds are skipped, so handing the
    same rows again (after a restart of the sink or of this writer) writes them once."""

    def __init__(self, location: DeltaLocation, slot: str, *, partition: int = 0,
                 partitions: int = 1, changelog: bool = False, mirror: bool = True,
                 on_changes: ChangeHook | None = None, retries: int = 8):
        self.location = location
        self.slot = slot
        self.partition = partition
        self.partitions = partitions
        self.changelog = changelog
        self.mirror = mirror
        self.on_changes = on_changes
        self.retries = retries
        self._tables: dict[str, _TableState] = {}

    # ---- positions

    def _state(self, spec: TableSpec) -> _TableState:
        state = self._tables.get(spec.directory)
        if state is None:
            state = _TableState(spec)
            ids = marker_ids(self.slot, spec, self.partition, self.partitions)
            if self.mirror and spec.keys:
                state.mirror = self.location.open(self.location.uri(spec))
                state.mirror_pos = read_marker(state.mirror, ids)
            if self.changelog:
                state.changelog = self.location.open(self.location.uri(spec, changelog=True))
                state.changelog_pos = read_marker(state.changelog, ids)
            self._tables[spec.directory] = state
        return state

    def position(self, spec: TableSpec) -> Position:
        """The oldest position this partition's destinations of ``spec`` hold."""
        state = self._state(spec)
        positions = []
        if self.mirror and spec.keys:
            positions.append(state.mirror_pos)
        if self.changelog:
            positions.append(state.changelog_pos)
        return min(positions) if positions else (0, 0)

    # ---- writing

    def apply_all(self, items: Sequence[tuple[TableSpec, pa.Table, pa.Table | None]]
                  ) -> WriteStats:
        """Write a micro-batch: per table, its mirror rows and its changelog rows (None: the
        same rows)."""
        import socket

        total = WriteStats(host=socket.gethostname(), pid=os.getpid())
        for spec, changes, log_changes in items:
            total.add(self.apply(spec, changes, log_changes))
        return total

    def apply(self, spec: TableSpec, changes: pa.Table, log_changes: pa.Table | None = None
              ) -> WriteStats:
        """Write this partition's rows of one table (stream order, one schema): ``changes`` to
        the mirror, ``log_changes`` (default: the same) to the changelog. They differ only when
        partitioned: a key that moved to another partition leaves this one as a delete, and a
        TRUNCATE empties every partition but is logged once."""
        start = time.perf_counter()
        log_changes = changes if log_changes is None else log_changes
        stats = WriteStats(rows=log_changes.num_rows)
        state = self._state(spec)
        ids = marker_ids(self.slot, spec, self.partition, self.partitions)
        if self.changelog or self.on_changes is not None:
            rows = after_position(log_changes, state.changelog_pos if self.changelog
                                  else self.position(spec))
            stats.skipped = log_changes.num_rows - rows.num_rows
            if self.on_changes is not None and rows.num_rows:
                self.on_changes(spec.label, self.partition, rows)
            if self.changelog and rows.num_rows:
                self._append_changelog(state, rows, ids)
                stats.changelog_commits += 1
                stats.changelog_rows += rows.num_rows
                state.changelog_pos = last_position(rows)
        if self.mirror and spec.keys:
            rows = after_position(changes, state.mirror_pos)
            if not self.changelog:
                stats.skipped = changes.num_rows - rows.num_rows
            for part in _pieces(rows):
                written, unresolved = self._apply_mirror(state, part, ids)
                stats.mirror_commits += 1
                stats.mirror_rows += written
                stats.unresolved_toast += unresolved
                state.mirror_pos = last_position(part)
        stats.seconds = time.perf_counter() - start
        return stats

    def _with_partition(self, data: pa.Table) -> pa.Table:
        if self.partitions <= 1:
            return data
        import numpy as np

        return data.append_column(pa.field(PARTITION, pa.int32(), True),
                                  pa.array(np.full(data.num_rows, self.partition, np.int32)))

    def _about(self, spec: TableSpec) -> dict[str, Any]:
        return {"table": spec.label, "key_columns": list(spec.keys), "slot": self.slot,
                "partitions": self.partitions}

    def _open_or_create(self, state: _TableState, schema: pa.Schema, *, changelog: bool
                        ) -> DeltaTable:
        table = state.changelog if changelog else state.mirror
        if table is None:
            uri = self.location.uri(state.spec, changelog=changelog)
            table = ensure_table(self.location, uri, schema, partitions=self.partitions,
                                 about=self._about(state.spec))
            if changelog:
                state.changelog = table
            else:
                state.mirror = table
        return table

    def _retrying(self, table: DeltaTable, action: Callable[[], Any]) -> Any:
        """Run a commit, again on a conflict with a concurrent writer (another partition)."""
        from deltalake.exceptions import CommitFailedError

        for attempt in range(self.retries):
            try:
                result = action()
                table.update_incremental()  # the next commit reads this one's version
                return result
            except CommitFailedError:
                if attempt + 1 == self.retries:
                    raise
                time.sleep(0.05 * (attempt + 1))
                table.update_incremental()
        return None

    def _append_changelog(self, state: _TableState, rows: pa.Table, ids: tuple[str, str]
                          ) -> None:
        from deltalake import write_deltalake

        data = self._with_partition(to_delta(rows))
        table = self._open_or_create(state, data.schema, changelog=True)
        properties = _commit_properties(ids, last_position(rows))
        self._retrying(table, lambda: write_deltalake(
            table, data, mode="append", schema_mode="merge", commit_properties=properties))

    def _lookup(self, state: _TableState) -> Lookup:
        return mirror_lookup(lambda: state.mirror,
                             self.partition if self.partitions > 1 else None)

    def _apply_mirror(self, state: _TableState, rows: pa.Table, ids: tuple[str, str]
                      ) -> tuple[int, int]:
        from deltalake import write_deltalake

        keys = list(state.spec.keys)
        columns = table_columns(rows.schema)
        if not columns:  # a TRUNCATE whose table schema was not known: rows of no columns
            return self._truncate_only(state, rows, ids)
        t0 = time.perf_counter()
        effect = net_effect(rows, keys, self._lookup(state), columns)
        upserts = self._with_partition(to_delta(effect.upserts))
        log.debug("%s p%d: %d rows folded in %.3f s", state.spec.label, self.partition,
                  rows.num_rows, time.perf_counter() - t0)
        schema = self._with_partition(delta_schema(rows.schema, columns).empty_table()).schema
        table = self._open_or_create(state, schema, changelog=False)
        properties = _commit_properties(ids, last_position(rows))
        predicate = f"{PARTITION} = {self.partition}" if self.partitions > 1 else None
        if effect.truncated:
            self._retrying(table, lambda: write_deltalake(
                table, upserts, mode="overwrite", predicate=predicate, schema_mode="merge",
                commit_properties=properties))
            return upserts.num_rows, effect.unresolved_toast
        if effect.insert_only:
            if upserts.num_rows:
                self._retrying(table, lambda: write_deltalake(
                    table, upserts, mode="append", schema_mode="merge",
                    commit_properties=properties))
            else:
                self._empty_commit(table, properties)
            return upserts.num_rows, effect.unresolved_toast
        deletes = to_delta(effect.deletes)
        flag = "__cdc_delete"
        source_parts = [upserts.append_column(flag, pa.array([False] * upserts.num_rows,
                                                             pa.bool_()))]
        if deletes.num_rows:
            filler = {n: pa.nulls(deletes.num_rows, upserts.schema.field(n).type)
                      for n in upserts.schema.names if n not in keys}
            if self.partitions > 1:
                filler[PARTITION] = pa.array([self.partition] * deletes.num_rows, pa.int32())
            gone = pa.table({n: deletes.column(n) if n in keys else filler[n]
                             for n in upserts.schema.names}, schema=upserts.schema)
            source_parts.append(gone.append_column(flag, pa.array([True] * gone.num_rows,
                                                                  pa.bool_())))
        source = pa.concat_tables(source_parts)
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        if self.partitions > 1:
            on = f"t.{PARTITION} = {self.partition} AND " + on
        target_names = set(_arrow_schema(table).names)
        merge_schema = bool(set(upserts.schema.names) - target_names)

        def run() -> Any:
            return (table.merge(source, on, source_alias="s", target_alias="t",
                                merge_schema=merge_schema, streamed_exec=False,
                                commit_properties=properties)
                    .when_matched_delete(predicate=f"s.{flag}")
                    .when_matched_update_all(predicate=f"NOT s.{flag}", except_cols=[flag])
                    .when_not_matched_insert_all(predicate=f"NOT s.{flag}", except_cols=[flag])
                    .execute())

        t0 = time.perf_counter()
        metrics = self._retrying(table, run)
        log.debug("%s p%d: merged %d upserts, %d deletes in %.3f s: %s", state.spec.label,
                  self.partition, upserts.num_rows, deletes.num_rows, time.perf_counter() - t0,
                  metrics)
        return upserts.num_rows + deletes.num_rows, effect.unresolved_toast

    def _truncate_only(self, state: _TableState, rows: pa.Table, ids: tuple[str, str]
                       ) -> tuple[int, int]:
        from deltalake import write_deltalake

        table = state.mirror
        if table is None:
            return 0, 0  # no mirror yet: nothing to empty
        empty = pa.Table.from_batches([], schema=_arrow_schema(table))
        properties = _commit_properties(ids, last_position(rows))
        predicate = f"{PARTITION} = {self.partition}" if self.partitions > 1 else None
        self._retrying(table, lambda: write_deltalake(
            table, empty, mode="overwrite", predicate=predicate, commit_properties=properties))
        return 0, 0

    def _empty_commit(self, table: DeltaTable, properties: Any) -> None:
        """A commit of no data that moves the markers (changes whose net effect is nothing)."""
        partition_by = [PARTITION] if self.partitions > 1 else None
        self._retrying(table, lambda: table.create_write_transaction(
            [], mode="append", schema=table.schema(), partition_by=partition_by,
            commit_properties=properties))


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())
