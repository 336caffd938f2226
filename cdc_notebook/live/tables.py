"""Live Polars frames: a table's changelog and its mirror, fed by change batches.

The reader hands every batch of a table (the schema of ``docs/decisions.md``: the table's
columns, then ``_cdc_op`` ... ``_cdc_unchanged_toast``) to :meth:`LiveTable.apply`. Two frames
follow:

* the **changelog**: a bounded window of the most recent change rows (snapshot rows excluded),
  with their metadata columns;
* the **mirror**: the table's current state, the snapshot plus the changes applied by key.

How the mirror is kept, and why:

* **Idempotent under redelivery.** Delivery is at-least-once; every row carries
  ``(_cdc_end_lsn, _cdc_ordinal)``, and rows at or below the highest position already accepted
  are dropped on arrival (snapshot rows, which all carry the slot's consistent point, only when
  an accepted change is newer). A TRUNCATE is applied once: only when its LSN is past every
  change record accepted so far (the table's lock makes WAL order and commit order agree).
* **Vectorized, at a cadence independent of the ingest rate.** ``apply`` converts the batch
  (:mod:`cdc_notebook.live.polars_types`) and queues it; queued batches are folded into the mirror in
  one Polars pass at most every ``fold_interval`` seconds while ingesting, whenever someone
  reads, or when the queue holds ``max_pending_rows``. One fold: every change becomes events on
  keys (insert/update → upsert of the after-image key; delete → removal of the before-image key;
  an update that changes the key → removal of the old key and upsert of the new one); the last
  event per key wins; the mirror loses every touched key and gains the winning upserts. The
  work is proportional to the queued rows plus one hash probe of the mirror's key columns: the
  touched rows leave by a filter and the winners are appended as a new chunk, so a fold never
  joins, sorts or copies the whole mirror (its chunks are merged once they are too many).
* **Unchanged TOAST values are kept** from the row's previous version: the last upsert of the
  same row earlier in the fold (found with an as-of join on the old key), else the mirror's
  row (only the rows whose key such an update names are looked up); chains of such updates
  are resolved by pointer jumping (log₂ of the chain rounds).
* **Consistent as of a stated LSN.** Only committed transactions are folded (a batch applied
  with ``committed=False`` waits for :meth:`LiveTable.commit`), so :meth:`LiveTable.state`
  returns the mirror at a transaction boundary together with that LSN.
* **One lock, one version counter.** ``apply`` and every read take the lock (a
  :class:`LiveFrames` shares one among its tables); ``version`` moves on every accepted change,
  so a UI pump can skip a tick when nothing moved.
* **Schema changes** (a new ``RelationSchema``, or a batch of a different schema): an added
  column appears, null for older rows; a dropped one goes; a retyped one is cast, or when the
  values do not cast, the column is emptied and the table is marked for a rebuild (a new
  snapshot, :meth:`LiveTable.rebuild`). Each change is recorded as a :class:`SchemaChange`.
* **Checkpoint and resume**: :meth:`LiveTable.save` writes the mirror to Parquet with its LSN
  and high-water mark in the file's metadata; :meth:`LiveTable.load` reads it back, and a reader
  re-attached to the permanent slot from that LSN resumes without a new snapshot (what the
  server resends is dropped by the high-water mark).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdc_notebook.connection.lsn import format_lsn
from cdc_notebook.decode.events import (
    METADATA_COLUMNS,
    Begin,
    ChangeBatch,
    Commit,
    DecodeFailed,
    RelationSchema,
    StreamAbort,
    StreamCommit,
    TableDropped,
    TableRenamed,
    Truncate,
)
from cdc_notebook.errors import MirrorUnavailable
from cdc_notebook.live.polars_types import arrow_to_polars, polars_dtype, to_arrow
from cdc_notebook.stream.delivery import drop_redelivered
from cdc_notebook.stream.markers import TRUNCATE_OP

if TYPE_CHECKING:
    import pandas as pd

OP, LSN, END_LSN, ORDINAL = "_cdc_op", "_cdc_lsn", "_cdc_end_lsn", "_cdc_ordinal"
BEFORE, TOAST = "_cdc_before", "_cdc_unchanged_toast"
CHECKPOINT_KEY = b"cdc_notebook.checkpoint"

# Internal column names of a fold (cannot collide: table columns come from PostgreSQL
# identifiers, which these are not allowed to shadow because of the double underscore prefix
# and the suffix).
_SEQ, _PTR, _UP = "__cdc_seq__", "__cdc_ptr__", "__cdc_up__"
_VAL, _NEED, _FOUND = "__cdc_val__", "__cdc_need__", "__cdc_found__"
_MAX_MIRROR_CHUNKS = 64
_FOLD_ROWS = 50_000

PartitionFunction = Callable[[pa.Table, Sequence[str], int],
                             np.ndarray | pa.Array | pl.Series | Sequence[int]]


@dataclass(frozen=True)
class MirrorState:
    """The mirror as one consistent frame, with the LSN it is consistent at."""

    table: str
    frame: pl.DataFrame
    lsn: int  # every change committed at or before this LSN is in ``frame``, none after
    version: int
    pending_rows: int  # rows of transactions not yet committed (not in ``frame``)

    @property
    def lsn_text(self) -> str:
        return format_lsn(self.lsn)


@dataclass(frozen=True)
class SchemaChange:
    """What a schema change did to a table's frames (shown by the widgets)."""

    table: str
    schema_version: int
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    cast: tuple[str, ...] = ()  # retyped columns whose values were cast
    rebuild: tuple[str, ...] = ()  # retyped columns whose values did not cast: rebuild needed
    key_columns: tuple[str, ...] | None = None  # the new key, when it changed
    renamed: tuple[tuple[str, str], ...] = ()  # (old name, new name): values kept

    def describe(self) -> str:
        parts = []
        if self.renamed:
            parts.append("renamed " + ", ".join(f"{a} to {b}" for a, b in self.renamed))
        if self.added:
            parts.append("added " + ", ".join(self.added) + " (null for older rows)")
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        if self.cast:
            parts.append("retyped " + ", ".join(self.cast) + " (values cast)")
        if self.rebuild:
            parts.append("retyped " + ", ".join(self.rebuild)
                         + " (values do not cast: the frame needs a rebuild from a snapshot)")
        if self.key_columns is not None:
            parts.append("key is now (" + ", ".join(self.key_columns) + ")")
        return f"{self.table}: " + ("; ".join(parts) if parts else "no column change")


@dataclass
class LiveStats:
    rows_received: int = 0
    rows_skipped: int = 0  # redelivered rows dropped by the high-water mark
    rows_folded: int = 0
    bytes_received: int = 0
    folds: int = 0
    truncates: int = 0
    truncates_skipped: int = 0
    unresolved_toast: int = 0  # unchanged TOAST values whose previous version was unknown
    last_fold_seconds: float = 0.0


@dataclass
class _Pending:
    kind: str  # "batch", "truncate" or "schema"
    committed: bool
    # a batch's rows as they arrived (Arrow: converted to Polars once per fold, not per batch)
    batch: pa.RecordBatch | None = None
    lsn: int = 0
    position: tuple[int, int] = (0, 0)  # a batch's newest (end_lsn, ordinal)
    schema: pa.Schema | None = None
    schema_version: int = 0
    key_columns: tuple[str, ...] | None = None
    column_ids: tuple[int, ...] = ()


def op_letters(op: pa.Array | pa.ChunkedArray) -> bytes | None:
    """``_cdc_op`` as one byte per row, read from the array's buffers (no Arrow scalar: the
    first ``pc.equal(op, 'r')`` of a process imports pandas, a second or so); None when
    that does not apply (a chunked or unusual column: use Arrow compute)."""
    if not isinstance(op, pa.Array) or op.null_count or not pa.types.is_string(op.type):
        return None
    n = len(op)
    buffers = op.buffers()
    if n == 0 or buffers[2] is None:
        return b""
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=op.offset + n + 1)[op.offset:]
    first = int(offsets[0])
    if int(offsets[-1]) - first != n or not (np.diff(offsets) == 1).all():
        return None
    return memoryview(buffers[2])[first:first + n].tobytes()


def table_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name not in METADATA_COLUMNS]


def table_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in METADATA_COLUMNS],
                     metadata=schema.metadata)


def empty_frame(schema: pa.Schema) -> pl.DataFrame:
    # an empty table without pa.array([]) (schema.empty_table()): pyarrow's array() imports
    # pandas the first time, which takes a second or so of a reader's start
    return arrow_to_polars(pa.Table.from_batches([], schema=table_schema(schema)))


# --------------------------------------------------------------------------- the fold


def _has_key_in(frame: pl.DataFrame, keyset: pl.DataFrame, keys: list[str]) -> pl.Series:
    """For each row of ``frame``: whether its key is one of ``keyset``'s rows.

    A hash probe of the key columns only (no join, so no gather of the other columns); the
    mirror is probed with the keys of a fold, never joined with itself.
    """
    keyset = keyset.select(keys).cast({k: frame.schema[k] for k in keys})
    if len(keys) == 1:
        # null-safe: a REPLICA IDENTITY FULL table without a key may have NULLs in its "key"
        probe = pl.col(keys[0]).is_in(keyset.get_column(keys[0]).implode(), nulls_equal=True)
    else:
        probe = pl.struct(keys).is_in(keyset.select(pl.struct(keys)).to_series().implode())
    return frame.select(probe.fill_null(False)).to_series()


def _chunks(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """``frame``'s chunks as frames (zero-copy slices), empty ones left out."""
    parts: list[pl.DataFrame] = []
    offset = 0
    for length in frame.to_series(0).chunk_lengths():
        if length:
            parts.append(frame.slice(offset, length))
        offset += length
    return parts


def _without_keys(mirror: pl.DataFrame, keyset: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The mirror without its rows whose key is one of ``keyset``'s.

    For a one-column numeric or temporal key, a chunk whose key range misses ``keyset``'s is
    kept as it is, unprobed (changes often touch recent keys: the probe then reads a few
    chunks, not the whole mirror); when most chunks overlap, one probe of the mirror."""
    dtype = mirror.schema[keys[0]] if len(keys) == 1 else None
    if dtype is None or not (dtype.is_numeric() or dtype.is_temporal()) \
            or mirror.n_chunks() < 4:
        return mirror.filter(~_has_key_in(mirror, keyset, keys))
    wanted = keyset.get_column(keys[0]).cast(dtype)
    if wanted.null_count() or not len(wanted):
        return mirror.filter(~_has_key_in(mirror, keyset, keys)) if len(wanted) else mirror
    low, high = wanted.min(), wanted.max()
    parts = _chunks(mirror)
    ranges = [(p.get_column(keys[0]).min(), p.get_column(keys[0]).max()) for p in parts]
    touched = [lo is not None and not (hi < low or lo > high)  # type: ignore[operator]
               for lo, hi in ranges]
    if 2 * sum(touched) > len(parts):
        return mirror.filter(~_has_key_in(mirror, keyset, keys))
    probe = keyset.select(keys)
    kept = [p.filter(~_has_key_in(p, probe, keys)) if t else p
            for p, t in zip(parts, touched, strict=True)]
    return pl.concat(kept, how="vertical", rechunk=False) if kept else mirror.clear()


def _resolve_unchanged_toast(mirror: pl.DataFrame, ups: pl.DataFrame, keys: list[str],
                             columns: list[str]) -> tuple[pl.DataFrame, int]:
    """Fill each update's unchanged TOAST columns from the row's previous version."""
    src = [f"__cdc_src_{i}__" for i in range(len(keys))]
    has_before = pl.col(BEFORE).is_not_null()
    ups = ups.with_columns([pl.when(has_before).then(pl.col(BEFORE).struct.field(k))
                            .otherwise(pl.col(k)).alias(s) for k, s in zip(keys, src, strict=True)])
    needing = ups.filter(pl.col(TOAST).list.len().fill_null(0) > 0).select([_SEQ, *src])
    targets = ups.select([*keys, pl.col(_SEQ).alias(_PTR)])
    # The previous version of an updated row is the last earlier upsert whose (new) key is the
    # update's old key; none in this fold means the mirror holds it.
    previous = needing.join_asof(targets, left_on=_SEQ, right_on=_PTR, by_left=src,
                                 by_right=keys, strategy="backward", allow_exact_matches=False,
                                 check_sortedness=False)  # sorted by seq by construction
    ups = ups.join(previous.select([_SEQ, _PTR]), on=_SEQ, how="left", maintain_order="left")
    # Only the mirror rows some update may read: the old keys of the updates that start a
    # chain in this fold (the mirror is probed, not joined whole, for every column).
    starting = previous.filter(pl.col(_PTR).is_null()).select(
        [pl.col(s).alias(k) for s, k in zip(src, keys, strict=True)])
    lookup = mirror.filter(_has_key_in(mirror, starting, keys)) \
        .select([*keys, *columns]).with_columns(pl.lit(True).alias(_FOUND))
    unresolved = 0
    for column in columns:
        need = pl.col(TOAST).list.contains(column).fill_null(False)
        work = ups.select([_SEQ, *src, _PTR, pl.col(column).alias(_VAL), need.alias(_NEED)])
        from_mirror = lookup.select([*keys, pl.col(column).alias("__cdc_mval__"), _FOUND])
        work = work.join(from_mirror, left_on=src, right_on=keys, how="left",
                         maintain_order="left", nulls_equal=True)
        starts = pl.col(_NEED) & pl.col(_PTR).is_null()
        unresolved += work.filter(starts & pl.col(_FOUND).is_null()).height
        work = work.with_columns(
            pl.when(starts).then(pl.col("__cdc_mval__")).otherwise(pl.col(_VAL)).alias(_VAL),
            (pl.col(_NEED) & pl.col(_PTR).is_not_null()).alias(_NEED),
        ).select([_SEQ, _PTR, _VAL, _NEED])
        # Pointer jumping: each round, a row still waiting either takes its pointee's value
        # (when the pointee has one) or points where its pointee points.
        while work.get_column(_NEED).any():
            pointee = work.select(pl.col(_SEQ).alias(_PTR), pl.col(_VAL).alias("__p_val__"),
                                  pl.col(_NEED).alias("__p_need__"),
                                  pl.col(_PTR).alias("__p_ptr__"))
            work = work.join(pointee, on=_PTR, how="left", maintain_order="left")
            take = pl.col(_NEED) & ~pl.col("__p_need__").fill_null(False)
            jump = pl.col(_NEED) & pl.col("__p_need__").fill_null(False)
            work = work.with_columns(
                pl.when(take).then(pl.col("__p_val__")).otherwise(pl.col(_VAL)).alias(_VAL),
                pl.when(jump).then(pl.col("__p_ptr__")).otherwise(pl.col(_PTR)).alias(_PTR),
                jump.alias(_NEED),
            ).select([_SEQ, _PTR, _VAL, _NEED])
        ups = ups.with_columns(work.get_column(_VAL).alias(column))
    return ups.drop([*src, _PTR]), unresolved


def _toast_from_before_image(ups: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """An unchanged TOAST value the same record's before-image holds (REPLICA IDENTITY FULL
    logs the whole old row, detoasted) is that value: take it, and the column is resolved."""
    before = ups.schema.get(BEFORE)
    fields = {f.name for f in before.fields} if isinstance(before, pl.Struct) else set()
    for column in columns:
        if column not in fields:
            continue
        old = pl.col(BEFORE).struct.field(column)
        filled = (pl.col(TOAST).list.contains(column).fill_null(False) & old.is_not_null())
        ups = ups.with_columns(
            pl.when(filled).then(old).otherwise(pl.col(column)).alias(column),
            pl.when(filled).then(pl.col(TOAST).list.set_difference(pl.lit([column])))
            .otherwise(pl.col(TOAST)).alias(TOAST))
    return ups


def fold_input(batches: Sequence[pa.RecordBatch], keys: Sequence[str],
               columns: Sequence[str]) -> pl.DataFrame:
    """The change rows a fold reads, as one Polars frame converted at once: the table's
    ``columns``, ``_cdc_op``, ``_cdc_unchanged_toast`` and of ``_cdc_before`` only what the
    fold looks at (the key; the unchanged TOAST columns when some row names one). The other
    metadata columns stay behind (the changelog has them): converting them, a before-image's
    UUIDs and all, cost as much as the fold."""
    schemas = {id(b.schema): b.schema for b in batches}
    first = batches[0]
    if len(schemas) > 1 and not all(s.equals(first.schema) for s in schemas.values()):
        # batches of one schema version that differ only in metadata: convert each
        return pl.concat([fold_input([b], keys, columns) for b in batches],
                         how="diagonal_relaxed")
    table = pa.Table.from_batches(batches, schema=first.schema)
    # Copied (and combined) here, what may reach the mirror: Polars takes fixed-width columns
    # (and string bytes) zero-copy, and a mirror chunk that pointed into the batches as
    # received kept every whole message alive (all its columns, before-images, metadata):
    # 3.5× the mirror's size on the standard workload, for as long as one of its rows stayed
    # in the mirror. The copies come from the system allocator: pyarrow's default pool
    # (mimalloc) kept the freed copies of earlier folds resident, tens of MB at the peak.
    pool = pa.system_memory_pool()

    def copied(column: pa.ChunkedArray) -> pa.ChunkedArray:
        if not column.num_chunks:
            return column
        return pa.chunked_array([pa.concat_arrays(column.chunks, memory_pool=pool)],
                                type=column.type)

    names = [c for c in columns if c in table.column_names]
    arrays: list[pa.ChunkedArray] = [copied(table.column(c)) for c in names]
    fields = [table.schema.field(c) for c in names]
    for extra in (OP, TOAST):  # read by the fold only (combined: one chunk like the rest)
        if extra in table.column_names:
            arrays.append(copied(table.column(extra)))
            fields.append(table.schema.field(extra))
    if BEFORE in table.column_names:
        before = table.column(BEFORE)
        wanted = set(keys)
        if TOAST in table.column_names:
            lengths = pc.list_value_length(table.column(TOAST))
            if pc.max(lengths).as_py():
                wanted |= set(pc.unique(pc.list_flatten(table.column(TOAST))).to_pylist())
        btype = before.type
        keep = [i for i in range(btype.num_fields) if btype.field(i).name in wanted]
        if keep and len(keep) < btype.num_fields:
            sub = pa.struct([btype.field(i) for i in keep])
            chunks = [pa.StructArray.from_arrays(  # field(i): the chunk's offset applied
                [chunk.field(i) for i in keep], fields=list(sub),
                mask=chunk.is_null() if chunk.null_count else None) for chunk in before.chunks]
            before = pa.chunked_array(chunks, type=sub)
        arrays.append(copied(before))  # an unchanged TOAST value may come from it
        fields.append(pa.field(BEFORE, before.type))
    return arrow_to_polars(pa.Table.from_arrays(arrays, schema=pa.schema(fields)))


def fold_changes(mirror: pl.DataFrame, changes: pl.DataFrame,
                 keys: Sequence[str], delta: dict[str, pl.DataFrame] | None = None
                 ) -> tuple[pl.DataFrame, int]:
    """Apply change rows (in stream order) to a mirror keyed by ``keys``.

    Returns the new mirror and the number of unchanged TOAST values whose previous version was
    not known (left null). Pure: neither input is modified. ``delta``, when given, receives
    what changed: ``"upserts"`` (the rows that entered the mirror) and ``"removed"`` (the keys
    that left it and did not come back in this fold).
    """
    keys = list(keys)
    columns = mirror.columns
    changes = changes.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_SEQ))
    op = pl.col(OP)
    before_key = [pl.col(BEFORE).struct.field(k).alias(k) for k in keys]
    key_changed = pl.col(BEFORE).is_not_null() & pl.any_horizontal(
        [pl.col(BEFORE).struct.field(k).ne_missing(pl.col(k)) for k in keys])
    ups = changes.filter(op.is_in(["r", "c", "u"]))
    # A row leaves by its old key (the before-image). Under REPLICA IDENTITY FULL that is the
    # whole old row, NULLs included; without a before-image (REPLICA IDENTITY NOTHING) there
    # is nothing to match.
    removals = changes.filter(((op == "d") | ((op == "u") & key_changed))
                              & pl.col(BEFORE).is_not_null()).select([*before_key, _SEQ])
    unresolved = 0
    toast_names = ups.get_column(TOAST).explode().drop_nulls().unique() \
        if TOAST in ups.columns else pl.Series([], dtype=pl.String)
    if len(toast_names):
        ups = _toast_from_before_image(ups, [c for c in toast_names.to_list() if c in columns])
        toast_names = ups.get_column(TOAST).explode().drop_nulls().unique()
    if len(toast_names):
        ups, unresolved = _resolve_unchanged_toast(
            mirror, ups, keys, [c for c in toast_names.to_list() if c in columns])
    # The events on keys in stream order (both sides are in _SEQ order: merged, not sorted);
    # the last event of each key wins, and the winning upserts are picked out of ``ups`` by a
    # mask over _SEQ (a filter keeps their order, and shares the buffers where all rows win).
    up_events = ups.select([*keys, _SEQ]).with_columns(pl.lit(True).alias(_UP))
    down_events = removals.with_columns(pl.lit(False).alias(_UP)).cast(up_events.schema)
    events = up_events.merge_sorted(down_events, key=_SEQ) if down_events.height \
        else up_events
    last = (pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)).is_last_distinct()
    won = events.filter(last & pl.col(_UP)).get_column(_SEQ).to_numpy()
    winning = np.zeros(changes.height, dtype=bool)
    winning[won] = True
    winners = ups.filter(pl.Series(winning[ups.get_column(_SEQ).to_numpy()])).select(columns)
    # The mirror loses its touched rows by a filter on a probe of its key columns (a join
    # would gather every column of every row) and gains the winners as one more chunk: an
    # untouched chunk is neither copied nor moved. Past _MAX_MIRROR_CHUNKS chunks, the
    # smallest neighbours are merged (never the whole mirror at once: that copy doubled the
    # process's peak memory).
    kept = _without_keys(mirror, events, keys)
    winners = winners.cast(mirror.schema)
    if delta is not None:
        delta["upserts"] = winners
        delta["removed"] = events.select(keys).unique().cast(
            {k: mirror.schema[k] for k in keys}).join(
            winners.select(keys), on=keys, how="anti", nulls_equal=True)
    folded = pl.concat([kept, winners], how="vertical", rechunk=False)
    if folded.n_chunks() > _MAX_MIRROR_CHUNKS:
        folded = compact_chunks(folded, _MAX_MIRROR_CHUNKS * 3 // 4)
    return folded, unresolved


def compact_chunks(frame: pl.DataFrame, target: int) -> pl.DataFrame:
    """``frame`` in at most ``target`` chunks: empty chunks dropped, then the adjacent pair
    with the fewest rows merged, again and again. Only the merged chunks are copied."""
    if not frame.width:
        return frame
    parts = _chunks(frame)
    if not parts:
        return frame.clear()
    sizes = [p.height for p in parts]
    while len(parts) > target:
        i = min(range(len(parts) - 1), key=lambda j: sizes[j] + sizes[j + 1])
        parts[i:i + 2] = [pl.concat(parts[i:i + 2], how="vertical", rechunk=True)]
        sizes[i:i + 2] = [sizes[i] + sizes[i + 1]]
    return pl.concat(parts, how="vertical", rechunk=False)


# --------------------------------------------------------------------------- one table


class MirrorDeltas:
    """A view's cursor over a mirror's changes (``LiveTable.subscribe()``).

    :meth:`take` returns what the folds changed since the last take, in fold order, as
    ``("remove", keys)`` and ``("upsert", rows)`` steps (apply them in order: a key removed by
    one fold may come back in a later one), or ``reset=True`` when the copy must be read again
    from :meth:`LiveTable.state` (the first take; after a TRUNCATE, a schema change or a
    rebuild; when more than ``max_rows`` changed rows piled up unread, which also bounds what a
    slow view holds). :meth:`close` ends the subscription.
    """

    def __init__(self, live: LiveTable, max_rows: int) -> None:
        self.live = live
        self.max_rows = max_rows
        self._steps: list[tuple[str, pl.DataFrame]] = []
        self._rows = 0
        self._needs_reset = True

    def _add(self, removed: pl.DataFrame, upserts: pl.DataFrame) -> None:
        if self._needs_reset:
            return  # the next take reads everything anyway
        for kind, frame in (("remove", removed), ("upsert", upserts)):
            if frame.height:
                self._steps.append((kind, frame))
                self._rows += frame.height
        if self._rows > self.max_rows:
            self._reset()

    def _reset(self) -> None:
        self._needs_reset = True
        self._steps, self._rows = [], 0

    def take(self) -> tuple[bool, list[tuple[str, pl.DataFrame]]]:
        """``(reset, steps)``; with ``reset``, read the mirror whole instead of the steps."""
        with self.live.lock:
            reset, steps = self._needs_reset, self._steps
            self._needs_reset, self._steps, self._rows = False, [], 0
            return reset, steps

    @property
    def pending_rows(self) -> int:
        return self._rows

    def close(self) -> None:
        with self.live.lock:
            if self in self.live._subscribers:
                self.live._subscribers.remove(self)


class LiveTable:
    """The live frames of one table. Thread-safe: the reader applies, anyone reads."""

    def __init__(self, name: str, arrow_schema: pa.Schema, key_columns: Sequence[str], *,
                 schema_version: int = 0, changelog_rows: int = 10_000,
                 fold_interval: float = 0.25, max_pending_rows: int = 500_000,
                 clock: Callable[[], float] = time.monotonic,
                 lock: threading.RLock | None = None,
                 on_change: Callable[[], None] | None = None,
                 column_ids: Sequence[int] = (), relid: int = 0) -> None:
        # The table is its identity (``relid``, its OID; 0 when not known); ``name`` is a
        # label that follows renames (the reader's: ``schema.table`` quoted where needed).
        self.relid = relid
        self.name = name
        self.dropped = False  # the table was dropped (TableDropped): no more changes come
        self.arrow_schema = arrow_schema  # the batch schema, metadata columns and field metadata
        self.schema_version = schema_version
        self.key_columns = tuple(key_columns)
        # each table column's identity (attnum; RelationSchema.column_ids), () or 0 if unknown
        self.column_ids = tuple(column_ids)
        self.decode_failures: list[Any] = []  # DecodeFailed events: the mirror misses changes
        # made from the catalog before any change came: the stream's first schema replaces
        # the placeholder (adopt_schema)
        self.provisional = False
        self.changelog_rows = changelog_rows
        self.fold_interval = fold_interval
        self.max_pending_rows = max_pending_rows
        self.stats = LiveStats()
        self.schema_changes: list[SchemaChange] = []
        self.needs_rebuild: tuple[str, ...] = ()
        self._clock = clock
        self._lock = lock if lock is not None else threading.RLock()
        self._on_change = on_change
        self._mirror = empty_frame(arrow_schema)
        self._mirror_schema = arrow_schema  # the schema the mirror has (pending ones may differ)
        self._mirror_ids = self.column_ids  # and its column identities
        self._fold_keys = self.key_columns  # the key the mirror is folded by
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._changelog: deque[pa.RecordBatch] = deque()  # as they arrived; Polars on read
        self._changelog_len = 0
        self._changelog_total = 0  # rows ever appended (a cursor for changelog_since)
        self._changelog_cleared = 0  # bumped by a TRUNCATE, which empties the changelog
        self._version = 0
        self._last_fold = clock()
        # High-water marks: of rows accepted (queued or folded), and of rows folded.
        self._accepted = (0, 0)
        self._folded = (0, 0)
        self._change_lsn = 0  # highest change-record LSN accepted
        self._truncate_lsn = 0  # LSN of the last TRUNCATE applied
        self._horizon = 0  # the stream was seen complete up to here (commits, keepalives)
        self._subscribers: list[MirrorDeltas] = []  # views that keep a copy (grids)

    # ------------------------------------------------------------------ properties

    @property
    def version(self) -> int:
        return self._version

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @property
    def lsn(self) -> int:
        """The LSN the mirror is consistent at (after folding what is committed)."""
        return self.state().lsn

    @property
    def high_water_mark(self) -> tuple[int, int]:
        """The ``(end_lsn, ordinal)`` of the newest row accepted."""
        return self._accepted

    @property
    def has_key(self) -> bool:
        return bool(self.key_columns)

    @property
    def table_schema(self) -> pa.Schema:
        return table_schema(self.arrow_schema)

    def __repr__(self) -> str:
        return (f"LiveTable({self.name!r}, relid={self.relid}, rows={self._mirror.height}, "
                f"pending={self._pending_rows}, version={self._version})")

    # ------------------------------------------------------------------ ingest

    def apply(self, batch: pa.RecordBatch | pa.Table, *, committed: bool = True) -> int:
        """Queue one batch of this table's rows; returns how many rows were new.

        ``committed=False`` when the batch's transaction has not been seen to commit yet: its
        rows wait for :meth:`commit` (or :meth:`abort`) before reaching the mirror.
        """
        if batch.num_rows == 0:
            return 0
        whole = op_letters(batch.column(OP))
        if (TRUNCATE_OP.encode() in whole) if whole is not None else \
                pc.any(pc.equal(batch.column(OP), TRUNCATE_OP)).as_py():
            return self._apply_with_truncates(batch, committed)
        if batch.column(END_LSN).null_count:
            raise ValueError(f"{self.name}: a batch without _cdc_end_lsn cannot be applied "
                             "(hold a streamed transaction's rows until it commits)")
        # Per batch only what is cheap in Arrow: the redelivery check, the high-water mark,
        # the changelog's bookkeeping. The rows stay Arrow until the fold converts a whole run
        # to Polars at once (a conversion per batch cost more than the fold itself).
        with self._lock:
            self.stats.rows_received += batch.num_rows
            self.stats.bytes_received += batch.get_total_buffer_size()
            fresh_rows = 0
            for part in (batch.to_batches() if isinstance(batch, pa.Table) else [batch]):
                kept, position = drop_redelivered(part, self._accepted, snapshot_rows=True)
                if kept.num_rows == 0:
                    continue
                # Only fresh rows change the schema: a redelivered batch of an older schema
                # must not take the mirror back to it (tests/test_schema_versions.py, the
                # TRUNCATE marker test's redelivery).
                if not batch.schema.equals(self.arrow_schema):
                    self.change_schema(batch.schema, schema_version=self.schema_version + 1)
                fresh_rows += kept.num_rows
                self._accepted = position
                letters = whole if kept is batch else op_letters(kept.column(OP))
                if letters is None or letters.strip(b"r"):  # snapshot chunks are all 'r'
                    changes = kept if letters is not None and b"r" not in letters \
                        else kept.filter(pc.not_equal(kept.column(OP), "r"))
                    self._change_lsn = max(self._change_lsn,
                                           int(pc.max(changes.column(LSN)).as_py()))
                    self._append_changelog(changes)
                self._pending.append(_Pending("batch", committed, batch=kept,
                                              lsn=position[0], position=position))
                self._pending_rows += kept.num_rows
                if committed:
                    self._horizon = max(self._horizon, position[0])
            self.stats.rows_skipped += batch.num_rows - fresh_rows
            if fresh_rows == 0:
                return 0
            self._touch()
            self._maybe_fold()
            return fresh_rows

    def _apply_with_truncates(self, batch: pa.RecordBatch | pa.Table, committed: bool) -> int:
        """A batch with TRUNCATE marker rows (``_cdc_op = 't'``, what ``reader.batches()``
        yields for a TRUNCATE): the rows before a marker, the TRUNCATE, the rows after."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        markers = pc.indices_nonzero(pc.equal(table.column(OP), TRUNCATE_OP)).to_pylist()
        fresh = 0
        with self._lock:
            start = 0
            for i in markers:
                if i > start:
                    fresh += self.apply(table.slice(start, i - start), committed=committed)
                start = i + 1
                position = (int(table.column(END_LSN)[i].as_py() or 0),
                            int(table.column(ORDINAL)[i].as_py()))
                if position <= self._accepted:
                    self.stats.truncates_skipped += 1
                    continue
                self._accepted = position
                if not table.schema.equals(self.arrow_schema):
                    self.change_schema(table.schema, schema_version=self.schema_version + 1)
                self.truncate(int(table.column(LSN)[i].as_py()), committed=committed)
            if start < table.num_rows:
                fresh += self.apply(table.slice(start), committed=committed)
        return fresh

    def commit(self, end_lsn: int, *, complete: bool = True) -> None:
        """The transactions ending at or before ``end_lsn`` committed: their queued rows may be
        folded. ``complete=False`` when rows of them may still be on their way to this table
        (the consistent LSN then stays where it is)."""
        with self._lock:
            released = 0
            for item in self._pending:
                if not item.committed and item.lsn <= end_lsn:
                    item.committed = True
                    released += 1
            moved = complete and end_lsn > self._horizon
            if moved:
                self._horizon = end_lsn
            if released or moved:
                self._touch()
            self._maybe_fold()

    def abort(self) -> int:
        """Drop queued rows of a transaction that will not commit; returns how many."""
        with self._lock:
            dropped = sum(int(p.batch.num_rows) for p in self._pending
                          if not p.committed and p.batch is not None)
            self._pending = [p for p in self._pending if p.committed]
            self._pending_rows -= dropped
            return dropped

    def advance(self, lsn: int) -> None:
        """The stream was seen complete up to ``lsn`` with nothing more for this table."""
        with self._lock:
            if lsn > self._horizon:
                self._horizon = lsn
                self._touch()

    def truncate(self, lsn: int, *, committed: bool = True) -> bool:
        """TRUNCATE at ``lsn``; False when it was already applied (a redelivery)."""
        with self._lock:
            if lsn <= max(self._change_lsn, self._truncate_lsn):
                self.stats.truncates_skipped += 1
                return False
            self._truncate_lsn = lsn
            self._pending.append(_Pending("truncate", committed, lsn=lsn))
            self._changelog.clear()
            self._changelog_len = 0
            self._changelog_cleared += 1
            self._touch()
            self._maybe_fold()
            return True

    def decode_failed(self, event: DecodeFailed) -> None:
        """A change of this table could not be decoded (``DecodeFailed``): the mirror misses
        it, so it needs a rebuild from a snapshot (:meth:`rebuild`)."""
        with self._lock:
            self.decode_failures.append(event)
            self.needs_rebuild = tuple(table_columns(self.arrow_schema))
            self._touch()

    def change_schema(self, arrow_schema: pa.Schema, key_columns: Sequence[str] | None = None,
                      *, schema_version: int | None = None,
                      column_ids: Sequence[int] = ()) -> SchemaChange:
        """A new schema for the table's batches (from a ``RelationSchema``). With
        ``column_ids`` (attnums), a column that keeps its id under a new name is renamed in
        place: the mirror keeps its values (key columns included)."""
        with self._lock:
            old = self.arrow_schema
            new_keys = tuple(key_columns) if key_columns is not None else self.key_columns
            version = schema_version if schema_version is not None else self.schema_version + 1
            ids = tuple(column_ids)
            change = _describe_change(self.name, version, old, arrow_schema,
                                      new_keys if new_keys != self.key_columns else None,
                                      self.column_ids, ids)
            self.arrow_schema = arrow_schema
            self.schema_version = version
            self.key_columns = new_keys
            self.column_ids = ids
            self._pending.append(_Pending("schema", True, schema=arrow_schema,
                                          schema_version=version, key_columns=new_keys,
                                          column_ids=ids))
            self._touch()
            known = len(self.schema_changes)
            # The mirror is altered once everything queued before the change is folded (now,
            # unless a transaction before it has not committed yet); until then the answer is
            # what the schemas alone say.
            self._fold()
            return self.schema_changes[-1] if len(self.schema_changes) > known else change

    def adopt_schema(self, arrow_schema: pa.Schema, key_columns: Sequence[str],
                     schema_version: int, column_ids: Sequence[int] = ()) -> bool:
        """Take the stream's first schema for a mirror made from the catalog before any
        change came (``provisional``): while it is still empty, the catalog's columns were
        only a placeholder, so the stream's replace them without a :class:`SchemaChange`
        (a stream behind DDL would otherwise show the DDL undone, then done again). Returns
        False (nothing done) once the mirror has had rows or changes."""
        with self._lock:
            if not self.provisional:
                return False
            self.provisional = False
            if self._pending or self._mirror.height or self._changelog_total:
                return False
            self.arrow_schema = self._mirror_schema = arrow_schema
            self.schema_version = schema_version
            self.key_columns = self._fold_keys = tuple(key_columns)
            self.column_ids = self._mirror_ids = tuple(column_ids)
            self._mirror = empty_frame(arrow_schema)
            self._reset_subscribers()
            self._touch()
            return True

    def rebuild(self, rows: pa.Table | pa.RecordBatch | pl.DataFrame, lsn: int) -> None:
        """Replace the mirror by a fresh snapshot of the table consistent at ``lsn``."""
        frame = rows if isinstance(rows, pl.DataFrame) else arrow_to_polars(rows)
        with self._lock:
            self._fold()
            self._mirror = frame.select(self._mirror.columns).cast(self._mirror.schema)
            self._reset_subscribers()
            self._folded = max(self._folded, (lsn, 0))
            self._accepted = max(self._accepted, (lsn, 0))
            self._horizon = max(self._horizon, lsn)
            self.needs_rebuild = ()
            self._touch()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Fold every committed queued change into the mirror now."""
        with self._lock:
            self._fold()

    def fold_if_due(self) -> None:
        """Fold committed queued changes when the fold cadence is due (the live reader calls
        this in the background, so the mirror follows without anyone reading it)."""
        with self._lock:
            if self._clock() - self._last_fold >= self.fold_interval and \
                    any(p.committed for p in self._pending):
                self._fold()
                self._touch()  # views reading without folding (the pump's) refresh again

    def state(self, *, fresh: bool = True) -> MirrorState:
        """The mirror and the LSN it is consistent at.

        ``fresh=False`` (views refreshed by the UI pump) folds only when the fold cadence is
        due, so frequent readers of a large mirror do not fold it over and over: the frame
        may then stand up to ``fold_interval`` behind, at the LSN it states.
        """
        with self._lock:
            self._require_key()
            if fresh or self._clock() - self._last_fold >= self.fold_interval:
                self._fold()
            ready = any(p.committed for p in self._pending)
            lsn = self._folded[0] if ready else self._consistent_lsn()
            return MirrorState(self.name, self._mirror.clone(), lsn, self._version,
                               self._pending_rows)

    def mirror(self) -> pl.DataFrame:
        """The table's current state (committed changes), as one frame."""
        return self.state().frame

    def to_pandas(self) -> pd.DataFrame:
        return self.mirror().to_pandas()

    def to_arrow(self) -> pa.Table:
        """The mirror with the batch types and field metadata restored (UUIDs, intervals)."""
        state = self.state()
        return to_arrow(state.frame, self.table_schema)

    def changelog(self, rows: int | None = None) -> pl.DataFrame:
        """The most recent change rows (at most ``changelog_rows``), oldest first."""
        with self._lock:
            limit = self.changelog_rows if rows is None else min(rows, self.changelog_rows)
            if not self._changelog or limit <= 0:
                return arrow_to_polars(pa.Table.from_batches([], schema=self.arrow_schema))
            # the newest batches holding ``limit`` rows, converted now (runs of one schema
            # at a time: a schema change starts a new run)
            wanted: list[pa.RecordBatch] = []
            count = 0
            for part in reversed(self._changelog):
                wanted.append(part)
                count += part.num_rows
                if count >= limit:
                    break
        wanted.reverse()
        runs: list[list[pa.RecordBatch]] = []
        for part in wanted:
            if runs and runs[-1][0].schema.equals(part.schema, check_metadata=True):
                runs[-1].append(part)
            else:
                runs.append([part])
        frames = [arrow_to_polars(pa.Table.from_batches(run)) for run in runs]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        return frame.tail(limit)

    def changelog_since(self, cursor: tuple[int, int] | None = None
                        ) -> tuple[pl.DataFrame | None, tuple[int, int], bool]:
        """The change rows appended since ``cursor`` (from an earlier call; None: all that the
        changelog holds), the new cursor, and whether the changelog was emptied meanwhile (a
        TRUNCATE: start over from these rows). At most ``changelog_rows`` rows."""
        with self._lock:  # (reentrant: changelog() takes it too)
            cleared, total = self._changelog_cleared, self._changelog_total
            reset = cursor is None or cursor[0] != cleared
            seen = 0 if reset or cursor is None else cursor[1]
            new = min(self.changelog_rows, total - seen)
            frame = self.changelog(new) if new > 0 else None
            return frame, (cleared, total), reset

    def partitions(self, count: int, partition_of: PartitionFunction | None = None
                   ) -> dict[int, pl.DataFrame]:
        """The mirror split by key-hash partition, as the reader partitions the table.

        ``partition_of(keys, key_columns, count)`` (default: the router's
        :func:`cdc_notebook.stream.partition.partition_of`) gets the key columns back in their batch
        types, since the hash is over the batch's bytes, and returns each row's partition.
        """
        if partition_of is None:
            from cdc_notebook.stream.partition import partition_of as router_partition_of

            partition_of = router_partition_of
        frame = self.mirror()
        keys = to_arrow(frame.select(self.key_columns), table_schema(self.arrow_schema))
        numbers = pl.Series("__partition__",
                            np.asarray(partition_of(keys, self.key_columns, count)),
                            dtype=pl.Int64)
        tagged = frame.with_columns(numbers)
        return {i: tagged.filter(pl.col("__partition__") == i).drop("__partition__")
                for i in range(count)}

    # ------------------------------------------------------------------ checkpoint

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the mirror to Parquet with the LSN it is consistent at; returns that LSN."""
        state = self.state()
        with self._lock:
            info = {
                "table": self.name,
                "relid": self.relid,
                "key_columns": list(self.key_columns),
                "lsn": state.lsn,
                "high_water_mark": list(self._folded),
                "change_lsn": self._change_lsn,
                "truncate_lsn": self._truncate_lsn,
                "schema_version": self.schema_version,
                "column_ids": list(self.column_ids),
                "arrow_schema": base64.b64encode(
                    self.arrow_schema.serialize().to_pybytes()).decode(),
            }
        table = state.frame.to_arrow()
        table = table.replace_schema_metadata({CHECKPOINT_KEY: json.dumps(info).encode()})
        target = Path(path)
        temporary = target.with_name(target.name + ".partial")
        pq.write_table(table, temporary)
        os.replace(temporary, target)
        return state.lsn

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> LiveTable:
        """A table re-created from :meth:`save`'s file, ready for the stream to resume."""
        table = pq.read_table(path)
        meta = (table.schema.metadata or {}).get(CHECKPOINT_KEY)
        if meta is None:
            raise ValueError(f"{path} is not a cdc_notebook checkpoint (no {CHECKPOINT_KEY!r})")
        info = json.loads(meta)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(info["arrow_schema"])))
        live = cls(info["table"], schema, info["key_columns"],
                   schema_version=info["schema_version"], relid=int(info.get("relid", 0)),
                   **kwargs)
        frame = pl.from_arrow(table.replace_schema_metadata(None))
        assert isinstance(frame, pl.DataFrame)  # a Table converts to a frame, not a Series
        live._mirror = frame.cast(live._mirror.schema)
        mark = (int(info["high_water_mark"][0]), int(info["high_water_mark"][1]))
        live._folded = live._accepted = mark
        live._change_lsn = int(info["change_lsn"])
        live._truncate_lsn = int(info["truncate_lsn"])
        live.column_ids = live._mirror_ids = tuple(info.get("column_ids", ()))
        live._horizon = int(info["lsn"])
        return live

    # ------------------------------------------------------------------ internals

    def subscribe(self, max_rows: int = 500_000) -> MirrorDeltas:
        """What each fold changes in the mirror from now on (:class:`MirrorDeltas`), for a
        view that keeps a copy of it (a grid): it starts with a reset (read the whole mirror
        once) and goes on with the rows upserted and the keys removed."""
        with self._lock:
            self._require_key()
            subscriber = MirrorDeltas(self, max_rows)
            self._subscribers.append(subscriber)
            return subscriber

    def _reset_subscribers(self) -> None:
        for subscriber in self._subscribers:
            subscriber._reset()

    def _require_key(self) -> None:
        if not self.key_columns:
            raise MirrorUnavailable(
                f"{self.name} has no primary key or replica identity index, so updates and "
                "deletes cannot be matched to rows: only its changelog is live",
                hint="add a primary key, or ALTER TABLE ... REPLICA IDENTITY USING INDEX")

    def _touch(self) -> None:
        self._version += 1
        if self._on_change is not None:
            self._on_change()

    def _consistent_lsn(self) -> int:
        return max(self._folded[0], self._horizon)

    def _append_changelog(self, changes: pa.RecordBatch) -> None:
        self._changelog_total += changes.num_rows
        if changes.num_rows > self.changelog_rows:
            changes = changes.slice(changes.num_rows - self.changelog_rows)
        self._changelog.append(changes)
        self._changelog_len += changes.num_rows
        while self._changelog and self._changelog_len - self._changelog[0].num_rows \
                >= self.changelog_rows:
            self._changelog_len -= self._changelog.popleft().num_rows

    def _maybe_fold(self) -> None:
        if self._pending_rows >= self.max_pending_rows or \
                self._clock() - self._last_fold >= self.fold_interval:
            self._fold()

    def _fold(self) -> None:
        self._last_fold = self._clock()
        if not self._fold_keys:
            # No mirror to keep; committed batches are only in the changelog.
            self._pending = [p for p in self._pending if not p.committed]
            self._pending_rows = sum(p.batch.num_rows for p in self._pending
                                     if p.batch is not None)
            return
        ready = 0
        while ready < len(self._pending) and self._pending[ready].committed:
            ready += 1
        if ready == 0:
            return
        started = time.perf_counter()
        items, self._pending = self._pending[:ready], self._pending[ready:]
        run: list[_Pending] = []
        for item in items:
            if item.kind == "batch":
                if item.batch is None:
                    raise RuntimeError(f"internal error: a pending batch of {self.name} "
                                       "without its rows")
                run.append(item)
                continue
            self._fold_run(run)
            run = []
            if item.kind == "truncate":
                self._mirror = self._mirror.clear()
                self.stats.truncates += 1
                self._reset_subscribers()
            else:
                self._alter_mirror(item)
        self._fold_run(run)
        self.stats.folds += 1
        self.stats.last_fold_seconds = time.perf_counter() - started

    def _fold_run(self, run: list[_Pending]) -> None:
        # A long run folds in parts of about _FOLD_ROWS rows: a fold's working set (its rows
        # converted, joined, sorted) is what the process's peak memory adds to the mirror.
        part: list[_Pending] = []
        rows = 0
        for item in run:
            part.append(item)
            rows += item.batch.num_rows if item.batch is not None else 0
            if rows >= _FOLD_ROWS:
                self._fold_part(part)
                part, rows = [], 0
        self._fold_part(part)

    def _fold_part(self, run: list[_Pending]) -> None:
        if not run:
            return
        batches = [item.batch for item in run if item.batch is not None]
        changes = fold_input(batches, self._fold_keys, self._mirror.columns)
        delta: dict[str, pl.DataFrame] | None = {} if self._subscribers else None
        self._mirror, unresolved = fold_changes(self._mirror, changes, self._fold_keys, delta)
        if delta:
            for subscriber in self._subscribers:
                subscriber._add(delta["removed"], delta["upserts"])
        self.stats.unresolved_toast += unresolved
        self.stats.rows_folded += changes.height
        self._pending_rows -= changes.height
        self._folded = max(self._folded, *(item.position for item in run))

    def _alter_mirror(self, item: _Pending) -> None:
        if item.schema is None:
            raise RuntimeError(f"internal error: a schema change of {self.name} without its "
                               "schema")
        new_fields = table_schema(item.schema)
        old_fields = table_schema(self._mirror_schema)
        change = _describe_change(self.name, item.schema_version, self._mirror_schema,
                                  item.schema, item.key_columns
                                  if item.key_columns != self._fold_keys else None,
                                  self._mirror_ids, item.column_ids)
        sources = column_sources(self._mirror_schema, self._mirror_ids, item.schema,
                                 item.column_ids)
        rebuild: list[str] = []
        cast: list[str] = []
        columns = []
        for f, source in zip(new_fields, sources, strict=True):
            dtype = polars_dtype(f.type)
            if source is None:
                columns.append(pl.lit(None, dtype=dtype).alias(f.name))
            elif old_fields.field(source).type != f.type:
                try:
                    self._mirror.select(pl.col(source).cast(dtype, strict=True))
                    columns.append(pl.col(source).cast(dtype, strict=True).alias(f.name))
                    cast.append(f.name)
                except (pl.exceptions.PolarsError, pl.exceptions.InvalidOperationError):
                    columns.append(pl.lit(None, dtype=dtype).alias(f.name))
                    rebuild.append(f.name)
            else:
                columns.append(pl.col(source).alias(f.name))
        # Staged next to the old columns, then selected: a select of literals alone (every
        # column new) would broadcast them to ONE row, whatever the mirror's height (an empty
        # mirror gained an all-NULL row, a full one collapsed to one row).
        staged = self._mirror.with_columns(
            [c.alias(f"__cdc_new_{i}") for i, c in enumerate(columns)])
        self._mirror = staged.select([pl.col(f"__cdc_new_{i}").alias(f.name)
                                      for i, f in enumerate(new_fields)])
        self._reset_subscribers()
        self._mirror_schema = item.schema
        self._mirror_ids = item.column_ids
        if item.key_columns is not None:
            self._fold_keys = item.key_columns
        change = SchemaChange(change.table, change.schema_version, change.added, change.dropped,
                              tuple(cast), tuple(rebuild), change.key_columns, change.renamed)
        if rebuild:
            self.needs_rebuild = tuple(sorted(set(self.needs_rebuild) | set(rebuild)))
        self.schema_changes.append(change)


def _ids_differ(old: Sequence[int], new: Sequence[int]) -> bool:
    """Whether two column-id lists (of equal schemas) name different columns somewhere both
    know the id: a column dropped and added again under the same name and type."""
    return len(old) == len(new) and any(a and b and a != b for a, b in zip(old, new,
                                                                            strict=True))


def column_sources(old: pa.Schema, old_ids: Sequence[int], new: pa.Schema,
                   new_ids: Sequence[int]) -> list[str | None]:
    """For each table column of ``new``, the column of ``old`` it continues (None: a new
    column). Identity decides where both sides know it (attnums: a column that keeps its id
    under another name was renamed; one that keeps its name under another id is a new
    column); the name decides otherwise."""
    old_names, new_names = table_columns(old), table_columns(new)
    old_id = dict(zip(old_names, old_ids, strict=True)) if len(old_ids) == len(old_names) else {}
    new_id = list(new_ids) if len(new_ids) == len(new_names) else [0] * len(new_names)
    by_id = {i: name for name, i in old_id.items() if i}
    known_new = {i for i in new_id if i}
    sources: list[str | None] = []
    for name, nid in zip(new_names, new_id, strict=True):
        oid = old_id.get(name, 0)
        if nid and nid in by_id:
            sources.append(by_id[nid])
        elif name not in old_names or (nid and oid) or oid in known_new:
            # a new column, also under an old name (another id, or the old column of that
            # name lives on under another name)
            sources.append(None)
        else:
            sources.append(name)
    _sources_between_anchors(sources, old_names, old_id, new_id, by_id)
    return sources


def _sources_between_anchors(sources: list[str | None], old_names: list[str],
                             old_id: dict[str, int], new_id: list[int],
                             by_id: dict[int, str]) -> None:
    """Columns of unknown identity (id 0: pgoutput's derived ids, docs/pgoutput.md) that lie
    between two columns known by id: a column added later has a higher attnum than every
    column before it, so a live column before a column the old schema has was in the old
    schema too, between the same two known columns. Where a stretch between two known
    columns has as many unknown columns as the old schema had there, they are those columns
    in the same order (renamed, perhaps retyped): ``sources`` is set so (in place). The stretch
    after the last known column is left alone (a column there may be new)."""
    if not old_id or not any(new_id):
        return
    anchors = [(j, old_names.index(by_id[i])) for j, i in enumerate(new_id) if i and i in by_id]
    previous = (-1, -1)
    for j, k in anchors:
        pj, pk = previous
        previous = (j, k)
        if k <= pk or j - pj < 2:
            continue
        if any(new_id[x] for x in range(pj + 1, j)):
            continue  # a column known by an id the old schema lacks: not a stretch of old ones
        old_stretch = old_names[pk + 1:k]
        if len(old_stretch) == j - pj - 1:
            for x, name in zip(range(pj + 1, j), old_stretch, strict=True):
                sources[x] = name


def _describe_change(table: str, version: int, old: pa.Schema, new: pa.Schema,
                     keys: tuple[str, ...] | None, old_ids: Sequence[int] = (),
                     new_ids: Sequence[int] = ()) -> SchemaChange:
    old_t, new_t = table_schema(old), table_schema(new)
    sources = column_sources(old, old_ids, new, new_ids)
    continued = {s for s in sources if s is not None}
    added = tuple(n for n, s in zip(new_t.names, sources, strict=True) if s is None)
    dropped = tuple(n for n in old_t.names if n not in continued)
    renamed = tuple((s, n) for n, s in zip(new_t.names, sources, strict=True)
                    if s is not None and s != n)
    retyped = tuple(n for n, s in zip(new_t.names, sources, strict=True)
                    if s is not None and old_t.field(s).type != new_t.field(n).type)
    return SchemaChange(table, version, added, dropped, retyped, (), keys, renamed)


# --------------------------------------------------------------------------- many tables


class _TableOptions(TypedDict):
    """The :class:`LiveTable` settings a :class:`LiveFrames` gives each of its tables."""

    changelog_rows: int
    fold_interval: float
    max_pending_rows: int
    clock: Callable[[], float]


class LiveFrames:
    """The live frames of every table a reader streams: an event sink for the reader.

    ``handle(event)`` takes the reader's events (``RelationSchema``, ``ChangeBatch``,
    ``Truncate``, ``Begin``/``Commit``...); the tables share one lock and one version counter.

    A table is its identity (its OID, ``LiveTable.relid``), never its name: two tables that
    swap names keep their own frames, and a table created under a dropped table's name gets
    frames of its own. Names are labels that follow renames: :attr:`tables` and ``[...]``
    look a table up by its current name (a dropped table's frames stay reachable by its last
    name until another table takes it, and always by OID: ``frames[oid]``, :attr:`by_relid`).
    """

    def __init__(self, *, changelog_rows: int = 10_000, fold_interval: float = 0.25,
                 max_pending_rows: int = 500_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.RLock()
        # By identity: the table's OID, or its name for frames fed without one (a table
        # made by name, or loaded from a checkpoint that predates OIDs: bound to its OID
        # when the stream first names it).
        self._live: dict[int | str, LiveTable] = {}
        self.dropped: list[str] = []
        self._options: _TableOptions = {
            "changelog_rows": changelog_rows, "fold_interval": fold_interval,
            "max_pending_rows": max_pending_rows, "clock": clock}
        self._version = 0
        self._open_xids: set[int] = set()
        self._last_lsn = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def lsn(self) -> int:
        """The highest LSN the frames were told the stream is complete to."""
        return self._last_lsn

    def _bump(self) -> None:
        self._version += 1

    @property
    def tables(self) -> dict[str, LiveTable]:
        """The tables by their current names (a copy): each existing table once; a dropped
        table's under its last name while no existing table has that name."""
        with self.lock:
            every = list(self._live.values())
            current = {live.name for live in every if not live.dropped}
            out: dict[str, LiveTable] = {}
            for live in every:
                if not live.dropped or live.name not in current:
                    out[live.name] = live  # (the newest dropped one of a name)
            return out

    @property
    def by_relid(self) -> dict[int, LiveTable]:
        """The tables by their OID (a copy), dropped ones included."""
        with self.lock:
            return {live.relid: live for live in self._live.values() if live.relid}

    def __getitem__(self, name: str | int) -> LiveTable:
        if isinstance(name, int) and not isinstance(name, bool):
            live = self.by_relid.get(name)
            if live is None:
                raise KeyError(name)
            return live
        tables = self.tables
        if name in tables:
            return tables[name]
        # tables are named as their readers: schema.table quoted where needed ('public."Users"')
        plain = [t for q, t in tables.items() if q.replace('"', "") == name]
        if len(plain) == 1:
            return plain[0]
        matches = [t for q, t in tables.items() if q.split(".", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
            return True
        except KeyError:
            return False

    def __iter__(self) -> Iterable[str]:
        return iter(list(self.tables))

    def __len__(self) -> int:
        return len(self.tables)

    def get(self, relid: int = 0, name: str | None = None) -> LiveTable | None:
        """The frames of the table with OID ``relid`` (the frames of ``name`` not yet tied to
        an OID are tied to it now); without an OID, the existing table called ``name``."""
        with self.lock:
            if relid:
                live = self._live.get(relid)
                if live is None and name is not None:
                    unbound = self._live.get(name)
                    if unbound is not None and not unbound.relid:
                        del self._live[name]
                        unbound.relid = relid
                        self._live[relid] = live = unbound
                return live
            if name is None:
                return None
            live = self._live.get(name)
            if live is not None:
                return live
            named = [t for t in self._live.values() if t.name == name and not t.dropped]
            return named[-1] if named else None

    def table(self, name: str, arrow_schema: pa.Schema, key_columns: Sequence[str],
              schema_version: int = 0, *, relid: int = 0,
              column_ids: Sequence[int] = ()) -> LiveTable:
        """The table's live frames (the table with OID ``relid``, else the one called
        ``name``), created on first use (with ``column_ids``, the columns' attnums)."""
        with self.lock:
            live = self.get(relid, name)
            if live is None:
                live = LiveTable(name, arrow_schema, key_columns, schema_version=schema_version,
                                 lock=self.lock, on_change=self._bump, relid=relid,
                                 column_ids=column_ids, **self._options)
                self._live[relid or name] = live
                self._bump()
            return live

    def rename(self, old: str, new: str, relid: int = 0) -> None:
        """The table (with OID ``relid``, else the one called ``old`` here) is now called
        ``new`` (its reader's table was renamed)."""
        with self.lock:
            live = self.get(relid, old) if relid else self.get(0, old)
            if live is not None and live.name != new:
                live.name = new
                self._bump()

    def attach(self, live: LiveTable) -> LiveTable:
        """Adopt a table (from :meth:`LiveTable.load`) so the stream continues it."""
        with self.lock:
            live._lock = self.lock
            live._on_change = self._bump
            self._live[live.relid or live.name] = live
            self._bump()
            return live

    def handle(self, event: object, name: str | None = None, relid: int = 0) -> None:
        """Apply one event. ``relid``: the table the event is about when the frames follow a
        reader (a LiveReader passes its reader's OID; otherwise the event's own is used);
        ``name``: that table's name in these frames (the reader's: quoted where needed,
        following renames), instead of the decoder's ``schema.table``."""
        if name is not None:
            from dataclasses import replace

            if isinstance(event, Truncate):
                event = replace(event, tables=(name,), relids=(relid,) if relid
                                else event.relids[:1])
            elif isinstance(event, TableDropped):
                event = replace(event, qualified_name=name)
        with self.lock:
            if isinstance(event, ChangeBatch):
                label = name or event.qualified_name
                ident = relid or event.relid
                live = self.get(ident, label)
                if live is None:
                    live = self.table(label, event.batch.schema, (), event.schema_version,
                                      relid=ident)
                live.apply(event.batch, committed=event.xid not in self._open_xids)
            elif isinstance(event, RelationSchema):
                label = name or event.qualified_name
                live = self.get(relid or event.relid, label)
                if live is None:
                    self.table(label, event.arrow_schema, event.key_columns,
                               event.schema_version, relid=relid or event.relid,
                               column_ids=event.column_ids)
                    return
                if live.name != label:  # the schema carries the table's name: it follows
                    live.name = label
                if live.adopt_schema(event.arrow_schema, event.key_columns,
                                     event.schema_version, event.column_ids):
                    return
                if live.arrow_schema != event.arrow_schema or \
                        live.key_columns != tuple(event.key_columns) or \
                        _ids_differ(live.column_ids, event.column_ids):
                    live.change_schema(event.arrow_schema, event.key_columns,
                                       schema_version=event.schema_version,
                                       column_ids=event.column_ids)
                else:
                    # Same columns and key: a new decoding session (a reconnect) numbers its
                    # schemas anew (docs/protocol.md), which is not a schema change.
                    live.schema_version = event.schema_version
                    if event.column_ids and not any(live.column_ids):
                        live.column_ids = tuple(event.column_ids)
                        if not live._pending:
                            live._mirror_ids = live.column_ids
            elif isinstance(event, DecodeFailed):
                live = self.get(relid or event.relid, name or event.qualified_name)
                if live is not None:
                    live.decode_failed(event)
            elif isinstance(event, Begin):
                self._open_xids.add(event.xid)
            elif isinstance(event, (Commit, StreamCommit)):
                self._open_xids.discard(event.xid)
                for live in self._live.values():
                    live.commit(event.end_lsn)
                self._last_lsn = max(self._last_lsn, event.end_lsn)
            elif isinstance(event, StreamAbort):
                if event.xid == event.subxid:
                    self._open_xids.discard(event.xid)
                    for live in self._live.values():
                        live.abort()
            elif isinstance(event, Truncate):
                committed = event.xid not in self._open_xids
                for i, table in enumerate(event.tables):
                    ident = event.relids[i] if i < len(event.relids) else 0
                    live = self.get(ident, table)
                    if live is not None:
                        live.truncate(event.lsn, committed=committed)
            elif isinstance(event, TableDropped):
                live = self.get(relid or event.relid, event.qualified_name)
                if live is not None and not live.dropped:
                    live.dropped = True
                    live._touch()
                self.dropped.append(event.qualified_name)
                self._bump()

    def advance(self, lsn: int) -> None:
        """Everything up to ``lsn`` was seen (a keepalive with nothing in flight)."""
        with self.lock:
            self._last_lsn = max(self._last_lsn, lsn)
            for live in self._live.values():
                live.advance(lsn)

    def save(self, directory: str | os.PathLike[str]) -> dict[str, int]:
        """Checkpoint every keyed table into ``directory`` (one Parquet file per table, named
        as it is now; a dropped table's frames are not saved: nothing more comes for them)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        return {name: live.save(target / f"{name}.parquet")
                for name, live in self.tables.items() if live.has_key and not live.dropped}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **kwargs: Any) -> LiveFrames:
        frames = cls(**kwargs)
        for path in sorted(Path(directory).glob("*.parquet")):
            frames.attach(LiveTable.load(path, **frames._options))
        return frames

    def resume_lsn(self) -> int:
        """Where a reader re-attached to the slot should start: the oldest table's LSN."""
        with self.lock:
            lsns = [live.state().lsn for live in self._live.values()
                    if live.has_key and not live.dropped]
            return min(lsns) if lsns else 0


# --------------------------------------------------------------------------- the kernel-friendly reader


@dataclass(frozen=True)
class CatchUpProgress:
    """Where a ``catch_up`` stands: the frames' consistent position between the one they had
    when it was called (``start``) and the server's WAL position it waits for (``target``)."""

    start: int
    target: int
    position: int
    elapsed: float
    behind: tuple[str, ...] = ()  # tables not there yet
    done: bool = False

    @property
    def fraction(self) -> float:
        if self.done or self.target <= self.start:
            return 1.0
        return max(0.0, min(1.0, (self.position - self.start) / (self.target - self.start)))

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.target - self.position)

    @property
    def eta(self) -> float | None:
        f = self.fraction
        if self.done:
            return 0.0
        if f <= 0 or self.elapsed <= 0:
            return None
        return self.elapsed * (1 - f) / f


class _CatchUpReport:
    """Reports a catch-up's progress to a callback (``"auto"``: bars in a notebook, made once
    the wait has lasted ``delay`` seconds, so a quick catch-up shows nothing)."""

    def __init__(self, reader: LiveReader, target: int, progress: Any,
                 delay: float = 0.5) -> None:
        self.reader = reader
        self.target = target
        self.started = time.monotonic()
        self.start = reader.consistent_position()
        self.auto = progress == "auto"
        self.callback = None if progress in ("auto", None) else progress
        self.delay = delay

    def __call__(self, *, behind: tuple[str, ...] = (), done: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        if self.callback is None and self.auto and not done and elapsed >= self.delay:
            self.auto = False
            try:
                from cdc_notebook.widgets.progress import NotebookProgress, in_notebook

                if in_notebook():
                    self.callback = NotebookProgress()
            except Exception:  # noqa: BLE001 - no bar is better than a failed catch-up
                self.callback = None
        if self.callback is None:
            return
        position = self.target if done else self.reader.consistent_position()
        self.callback(CatchUpProgress(self.start, self.target, position, elapsed, behind,
                                      done))


class LiveReader:
    """Streams a :class:`~cdc_notebook.stream.cdc_stream.CDCStream`'s tables into :class:`LiveFrames` in
    the background of a notebook kernel.

    One daemon thread per table reader takes its events (batches, schema changes, truncates)
    and applies them; cells keep running meanwhile. A batch counts as consumed (and may be
    acknowledged) only once it is in the frames, when the thread asks for the next one.
    ``pause()`` stops taking batches (what arrives meanwhile waits in the router, which holds
    back acknowledgement, so the slot retains the WAL), ``resume()`` goes on, ``stop()`` ends
    the threads and closes the stream (a temporary slot goes with its connection).

    Consistency: a batch of a transaction the stream has not seen commit yet (a big one split
    into several batches) waits in the table's queue until the commit arrives, so
    :meth:`LiveTable.state` never shows half a transaction; a table with nothing left to read
    has its consistent LSN moved to the stream's position, so ``state().lsn`` says how far
    behind the stream the frame is (:meth:`catch_up` waits for "now").

    In a kernel: an interrupt of the running cell (``KeyboardInterrupt`` in the main thread)
    does not reach these threads, and the embedded server runs in its own session; the
    kernel's shutdown or restart runs ``stop()`` (``atexit``) and a killed kernel's
    connections are closed by the server, so a temporary slot disappears either way.
    """

    def __init__(self, stream: Any, frames: LiveFrames | None = None, *,
                 close_stream: bool = True, poll: float = 0.2,
                 sync_interval: float = 0.1,
                 checkpoint: str | os.PathLike[str] | None = None,
                 checkpoint_interval: float = 10.0, queue_bytes: int = 32 << 20) -> None:
        import atexit

        self.stream = stream
        self.checkpoint_dir = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_interval = checkpoint_interval
        self.checkpoints = 0
        self.checkpoint_lsn = 0
        if frames is None and self.checkpoint_dir is not None \
                and any(self.checkpoint_dir.glob("*.parquet")):
            frames = LiveFrames.load(self.checkpoint_dir)  # resume where the checkpoint is
        self.frames = frames if frames is not None else LiveFrames()
        if self.checkpoint_dir is not None:
            # The slot may advance only over what a checkpoint holds (docs/delivery.md).
            stream.acknowledge_durable_only()
        self.close_stream = close_stream
        self.poll = poll
        # What a table's reader may hold in memory for this reader's thread (its
        # ``memory_limit`` is lowered to it): the thread applies as fast as it can, so a
        # deeper queue only adds memory (the stream waits instead; paused, the reader spills
        # to disk as for any reader nobody reads).
        self.queue_bytes = queue_bytes
        # Right after changes stopped arriving (or while catch_up waits), an idle thread looks
        # again sooner: the frames then reach the stream's position within ~20 ms of the
        # last batch instead of a whole ``poll`` later.
        self._quick_poll = min(poll, 0.02)
        self._catching_up = 0
        self.sync_interval = sync_interval
        self.state = "created"  # created, running, paused, stopped, failed
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self._run = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._adopted: set[int] = set()  # id() of the readers that have a thread (a
        # renamed table keeps its reader: readers are told apart by identity, not name)
        # Per table (its OID, or its name when the reader has none): the stream position with
        # nothing of it queued; and the tables whose reader ended (dropped: all was applied).
        self._synced: dict[int | str, int] = {}
        self._ended: set[int | str] = set()
        self._adopt_lock = threading.Lock()
        self._parked: set[str] = set()  # names of the threads waiting while paused
        self._parked_cond = threading.Condition()
        atexit.register(self.stop)

    def __repr__(self) -> str:
        names = list(getattr(self.stream, "readers", None) or self.frames.tables)
        return f"<LiveReader {self.state} tables={names}>"

    def __getitem__(self, name: str) -> LiveTable:
        return self.frames[name]

    def _readers(self) -> list[tuple[str, Any]]:
        """The stream's readers, each with its table's current name (a dropped table's reader
        too while it holds changes: the stream lists it under a label of its own)."""
        readers = getattr(self.stream, "readers", None) or {}
        return [(str(getattr(reader, "name", None) or label), reader)
                for label, reader in list(readers.items())]

    def start(self) -> LiveReader:
        if self._threads:
            return self.resume()
        # Under the adoption lock: a consumer thread started here may adopt a reader that
        # joined meanwhile (appending and starting its thread) only once these are started.
        with self._adopt_lock:
            for name, reader in self._readers():
                key = tuple(getattr(reader, "key_columns", ()))
                relid = _relid_of(reader)
                if self.frames.get(relid, name) is None:
                    if getattr(reader, "schema", None) is not None:
                        self.frames.table(name, reader.schema, key, relid=relid)
                    else:  # no change yet: an empty mirror with the table's columns now
                        self._empty_frame(name, relid)
                self._bound_queue(reader)
                thread = threading.Thread(target=self._consume, args=(name, reader, key),
                                          name=f"cdc-live-{name}", daemon=True)
                self._threads.append(thread)
                self._adopted.add(id(reader))
            if self.checkpoint_dir is not None:
                self._threads.append(threading.Thread(target=self._checkpoint_loop,
                                                      name="cdc-live-checkpoint", daemon=True))
            self._run.set()
            self.state = "running"
            self.started_at = time.monotonic()
            for thread in list(self._threads):
                thread.start()
        return self

    def _empty_frame(self, name: str, relid: int) -> None:
        """The mirror of a table that has had no change yet, empty, with the catalog's
        columns (a stream far behind DDL then changes its schema before its first row)."""
        table_schema = getattr(self.stream, "table_schema", None)
        if not relid or table_schema is None:
            return
        rel = table_schema(relid)
        if rel is None:
            return
        live = self.frames.table(name, rel.arrow_schema, rel.key_columns, relid=relid,
                                 column_ids=rel.column_ids)
        live.provisional = True

    def checkpoint(self) -> int:
        """Save every keyed table's mirror into the checkpoint directory (Parquet, each file
        replaced atomically), then acknowledge the stream up to the oldest table's consistent
        LSN: the slot never passes what the checkpoint holds. Returns that LSN."""
        if self.checkpoint_dir is None:
            raise ValueError("this reader has no checkpoint directory (LiveReader(..., "
                             "checkpoint=DIR))")
        saved = self.frames.save(self.checkpoint_dir)
        acks = getattr(getattr(self.stream, "router", None), "acks", None)
        if saved:
            lsn = min(saved.values())
        elif acks is not None:
            lsn = int(acks.consumed_lsn)  # only keyless tables: nothing to persist
        else:
            lsn = 0
        self.stream.acknowledge(lsn)
        self.checkpoints += 1
        self.checkpoint_lsn = lsn
        return lsn

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self.checkpoint_interval):
            if not self._run.is_set():
                continue  # paused: the frames do not change
            try:
                self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - kept for the status widget
                self.error = exc
                self.state = "failed"
                return

    def _adopt_new_readers(self) -> None:
        """Tables that joined the running stream (they started matching its patterns) get a
        thread of their own."""
        with self._adopt_lock:
            for name, reader in self._readers():
                if id(reader) in self._adopted or self._stop.is_set():
                    continue
                self._adopted.add(id(reader))
                self._bound_queue(reader)
                key = tuple(getattr(reader, "key_columns", ()))
                thread = threading.Thread(target=self._consume, args=(name, reader, key),
                                          name=f"cdc-live-{name}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _bound_queue(self, reader: Any) -> None:
        limit = getattr(reader, "memory_limit", None)
        if isinstance(limit, int) and self.queue_bytes and limit > self.queue_bytes:
            reader.memory_limit = self.queue_bytes

    def pause(self, timeout: float = 10.0) -> None:
        """Stop applying changes; returns once every thread has finished the event it was
        applying, so the frames stay as they are until :meth:`resume`."""
        if self.state == "running":
            self._run.clear()
            self.state = "paused"
            deadline = time.monotonic() + timeout
            with self._parked_cond:
                while any(t.is_alive() and t.name not in self._parked for t in self._threads):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._parked_cond.wait(min(left, 0.05))

    def resume(self) -> LiveReader:
        if self.state == "paused":
            self._run.set()
            self.state = "running"
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the threads and close the stream (idempotent; also run at interpreter exit)."""
        import atexit

        if self.state == "stopped":
            return
        self._stop.set()
        self._run.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        if self.checkpoint_dir is not None and self._threads and self.state != "failed":
            self.checkpoint()  # a clean stop keeps everything applied so far
        if self.close_stream and self.stream is not None:
            self.stream.close()
        if self.state != "failed":
            self.state = "stopped"
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def stream_position(self) -> int | None:
        """The newest commit (or idle keepalive) position the stream has received."""
        acks = getattr(getattr(self.stream, "router", None), "acks", None)
        return None if acks is None else int(acks.received)

    def catch_up(self, timeout: float = 60.0, *, progress: Any = "auto") -> int:
        """Wait until every table's frames are consistent at the server's current WAL
        position (as of this call); returns that position. Raises ``TimeoutError``, or the
        reader's error when it failed.

        ``progress``: a callable receiving :class:`CatchUpProgress` reports (how much WAL is left),
        ``"auto"`` (a progress bar in a notebook once the wait lasts half a second; nothing
        elsewhere) or None."""
        target = int(self.stream.current_wal_lsn())
        router = getattr(self.stream, "router", None)
        deadline = time.monotonic() + timeout
        self._catching_up += 1
        report = _CatchUpReport(self, target, progress)
        try:
            lsn = self._catch_up(target, router, deadline, timeout, report)
            report(done=True)
            return lsn
        finally:
            self._catching_up -= 1

    def _followed(self) -> list[tuple[int | str, str, LiveTable | None]]:
        """The tables being followed: (identity, name, frames), the stream's readers (those
        that ended left out: their table was dropped and all of it applied), or without
        readers the frames' tables."""
        if getattr(self.stream, "readers", None):
            out: list[tuple[int | str, str, LiveTable | None]] = []
            for name, reader in self._readers():
                relid = _relid_of(reader)
                ident = relid or name
                if ident not in self._ended:
                    out.append((ident, name, self.frames.get(relid, name)))
            return out
        return [(live.relid or name, name, live) for name, live in self.frames.tables.items()]

    def consistent_position(self) -> int:
        """Where every table's frames stand (the oldest of them): each table's consistent LSN,
        or the stream's position when nothing of it is left to read."""
        with self.frames.lock:
            positions = []
            for ident, _name, live in self._followed():
                mine = live._consistent_lsn() if live is not None else 0
                positions.append(max(mine, self._synced.get(ident, 0)))
        return min(positions) if positions else 0

    def _catch_up(self, target: int, router: Any, deadline: float, timeout: float,
                  report: _CatchUpReport | None = None) -> int:
        while True:
            if self.error is not None:
                raise self.error
            with self.frames.lock:
                behind = []
                for ident, name, live in self._followed():
                    if self._synced.get(ident, 0) < target:
                        behind.append(name)
                    elif live is not None and live._pending_rows:
                        live.refresh()  # all there: fold now rather than at the cadence
                        if live._pending_rows:
                            behind.append(name)
            if not behind:
                return target
            if report is not None:
                report(behind=tuple(behind))
            if self.state != "running":
                raise RuntimeError(f"the reader is {self.state}: {', '.join(behind)} cannot "
                                   "catch up (resume() or start() it)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(behind)} did not reach {format_lsn(target)} "
                                   f"within {timeout} s")
            if router is not None:
                router.request_position()  # a keepalive tells where the stream stands
            time.sleep(0.02)

    def _consume(self, name: str, reader: Any, key: tuple[str, ...]) -> None:
        frames = self.frames
        relid = _relid_of(reader)
        ident: int | str = relid or name
        last_sync = last_event = 0.0
        me = threading.current_thread().name
        try:
            while not self._stop.is_set():
                if not self._run.is_set():
                    with self._parked_cond:
                        self._parked.add(me)
                        self._parked_cond.notify_all()
                    self._run.wait()
                    with self._parked_cond:
                        self._parked.discard(me)
                if self._stop.is_set():
                    return
                busy = self._catching_up or time.monotonic() - last_event < 1.0
                try:
                    for event in reader.events(follow=True,
                                               timeout=self._quick_poll if busy else self.poll):
                        last_event = time.monotonic()
                        if isinstance(event, TableRenamed):  # the frames follow the table
                            self.frames.rename(name, event.new, relid)
                            if not relid:
                                self._synced[event.new] = self._synced.pop(name, 0)
                                ident = event.new
                            name = event.new
                        self._apply(name, relid, key, event)
                        if self._stop.is_set() or not self._run.is_set() or not busy:
                            break  # (not busy: look again with the short timeout)
                        now = time.monotonic()
                        if now - last_sync >= self.sync_interval:
                            self._sync(ident, name, reader)
                            last_sync = now
                    else:
                        # The reader ended (closed, or its table was dropped and everything
                        # before the drop was applied): nothing more to wait for.
                        self._sync(ident, name, reader)
                        self._ended.add(ident)
                        return
                except TimeoutError:
                    pass  # nothing new: look at the pause/stop flags again
                if self._run.is_set():
                    self._sync(ident, name, reader)
                    last_sync = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - kept for the status widget
            self.error = exc
            self.state = "failed"
        del frames

    def _sync(self, ident: int | str, name: str, reader: Any) -> None:
        """Release the batches of transactions that committed meanwhile and, when nothing of
        this table is left to read, move its consistent LSN to the stream's position."""
        # Read the position first: a transaction's batches are queued before its commit moves
        # the position, so an empty queue afterwards means they were all applied.
        readers = getattr(self.stream, "readers", {})
        if any(id(r) not in self._adopted for r in list(readers.values())):
            self._adopt_new_readers()
        position = self.stream_position()
        if position is None:
            return
        complete = reader.queued_batches == 0
        if complete:
            self._synced[ident] = max(self._synced.get(ident, 0), position)
        live = self.frames.get(ident if isinstance(ident, int) else 0, name)
        if live is not None:
            live.commit(position, complete=complete)
            if live.has_key:
                live.fold_if_due()

    def _apply(self, name: str, relid: int, key: tuple[str, ...], event: Any) -> None:
        frames = self.frames
        if isinstance(event, pa.RecordBatch):
            position = self.stream_position()
            committed = True
            if position is not None and event.num_rows:
                committed = int(pc.max(event.column(END_LSN)).as_py() or 0) <= position
            with frames.lock:
                live = frames.get(relid, name) or frames.table(name, event.schema, key,
                                                               relid=relid)
                live.apply(event, committed=committed)
        elif isinstance(event, (RelationSchema, Truncate, TableDropped, DecodeFailed)):
            frames.handle(event, name, relid)


def _relid_of(reader: Any) -> int:
    """A reader's table OID (0 when it has none: its table is known by name only)."""
    relid = getattr(reader, "relid", 0)
    return relid if isinstance(relid, int) and not isinstance(relid, bool) else 0
