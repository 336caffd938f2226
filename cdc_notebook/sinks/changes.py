"""Change rows → what a sink writes: positions, TRUNCATE marker rows, Delta-compatible types,
the net effect of a micro-batch on a keyed mirror, and the key-hash split into partitions.

Pure functions over ``pyarrow`` tables of change rows (the change batch of
``docs/decisions.md``: the table's columns, then ``_cdc_op`` ... ``_cdc_unrepresentable``), in
stream order. Nothing here does I/O: the Delta writer (:mod:`cdc_notebook.sinks.delta`) passes
a ``lookup`` function where a value must come from the mirror (unchanged TOAST values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_notebook.decode.events import METADATA_COLUMNS
from cdc_notebook.stream.markers import one_row
from cdc_notebook.stream.partition import partition_of

OP = "_cdc_op"
END = "_cdc_end_lsn"
ORDINAL = "_cdc_ordinal"
BEFORE = "_cdc_before"
TOAST = "_cdc_unchanged_toast"
PARTITION = "_cdc_partition"  # the mirror's (and changelog's) partition column, when partitioned
TRUNCATE_OP = "t"

Position = tuple[int, int]  # (end_lsn, ordinal): orders a table's changes, what a marker records
# Lookup of mirror rows by key: (key table, key columns, value columns) -> the key and value
# columns of the mirror rows with those keys (any order; keys not there are left out).
Lookup = Callable[[pa.Table, Sequence[str], Sequence[str]], pa.Table]


# --------------------------------------------------------------------------- positions


def table_columns(schema: pa.Schema) -> list[str]:
    """The captured table's own columns of a change-batch schema (metadata columns left out)."""
    return [n for n in schema.names if n not in METADATA_COLUMNS and n != PARTITION]


def last_position(changes: pa.Table) -> Position:
    """The position of the last row (rows are in stream order)."""
    if changes.num_rows == 0:
        return (0, 0)
    i = changes.num_rows - 1
    return (int(changes.column(END)[i].as_py() or 0), int(changes.column(ORDINAL)[i].as_py() or 0))


def after_position(changes: pa.Table, position: Position) -> pa.Table:
    """The rows strictly past ``position`` (``(end_lsn, ordinal)`` order): what a destination
    whose marker says ``position`` has not committed yet. Snapshot rows (``op = 'r'``) are
    kept: they come in no fixed order, once, before the changes (a slot that exists cannot
    give a snapshot, so they are never sent again)."""
    end, ordinal = position
    if changes.num_rows == 0 or (end == 0 and ordinal == 0):
        return changes
    first = (int(changes.column(END)[0].as_py() or 0), int(changes.column(ORDINAL)[0].as_py() or 0))
    if first > position:
        return changes  # the common case: nothing of it was committed
    e = changes.column(END).cast(pa.uint64())
    o = changes.column(ORDINAL).cast(pa.uint64())
    e_at = pa.scalar(end, pa.uint64())
    mask = pc.or_(pc.greater(e, e_at),
                  pc.and_(pc.equal(e, e_at), pc.greater(o, pa.scalar(ordinal, pa.uint64()))))
    mask = pc.or_(mask, pc.equal(changes.column(OP), "r"))
    return changes.filter(mask)


def truncate_row(schema: pa.Schema, *, lsn: int, end_lsn: int, ordinal: int, commit_lsn: int = 0,
                 commit_ts: int = 0, xid: int = 0) -> pa.RecordBatch:
    """A TRUNCATE as one change row of ``schema``: ``_cdc_op = 't'``, the table's columns null,
    its position in the metadata columns (the form the changelog stores it in)."""
    values: dict[str, Any] = {
        OP: TRUNCATE_OP, "_cdc_lsn": lsn, "_cdc_commit_lsn": commit_lsn or None,
        END: end_lsn, "_cdc_commit_ts": commit_ts or None, "_cdc_xid": xid, ORDINAL: ordinal,
        TOAST: [], "_cdc_unrepresentable": [],
    }
    return one_row(schema, values)


# --------------------------------------------------------------------------- Delta types


_INTERVAL_FIELDS = [pa.field("months", pa.int32()), pa.field("days", pa.int32()),
                    pa.field("nanoseconds", pa.int64())]


def delta_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is stored as in Delta Lake, which has no unsigned integers, no
    time of day, no intervals and no fixed-size binary (``docs/scale.md`` lists the mapping)."""
    if pa.types.is_dictionary(t):
        return delta_type(t.value_type)
    if pa.types.is_uint8(t):
        return pa.int16()
    if pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t) or pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_time(t):
        return pa.int64()  # microseconds since midnight
    if t == pa.month_day_nano_interval():
        return pa.struct(_INTERVAL_FIELDS)
    if pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, delta_type(f.type), True) for f in t])
    if pa.types.is_map(t):
        return pa.map_(delta_type(t.key_type), delta_type(t.item_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("element", delta_type(t.value_type), True))
    return t


def delta_schema(schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Schema:
    names = schema.names if columns is None else list(columns)
    return pa.schema([pa.field(n, delta_type(schema.field(n).type), True) for n in names])


def _interval_struct(arr: pa.Array) -> pa.Array:
    months, days, nanos = [], [], []
    for v in arr.to_pylist():
        months.append(None if v is None else v.months)
        days.append(None if v is None else v.days)
        nanos.append(None if v is None else v.nanoseconds)
    return pa.StructArray.from_arrays(
        [pa.array(months, pa.int32()), pa.array(days, pa.int32()), pa.array(nanos, pa.int64())],
        fields=_INTERVAL_FIELDS, mask=arr.is_null())


def _needs_rebuild(t: pa.DataType) -> bool:
    """Whether casting cannot adapt ``t`` (an interval somewhere inside it)."""
    if t == pa.month_day_nano_interval():
        return True
    if pa.types.is_struct(t):
        return any(_needs_rebuild(f.type) for f in t)
    if pa.types.is_map(t):
        return _needs_rebuild(t.key_type) or _needs_rebuild(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _needs_rebuild(t.value_type)
    return False


def to_delta_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``arr`` as :func:`delta_type` says (a cast where Arrow can, rebuilt where it cannot)."""
    if isinstance(arr, pa.ChunkedArray):
        if not _needs_rebuild(arr.type):
            target = delta_type(arr.type)
            return arr if target == arr.type else arr.cast(target)
        return pa.chunked_array([to_delta_array(c) for c in arr.chunks],
                                type=delta_type(arr.type))
    t = arr.type
    if pa.types.is_dictionary(t):
        return to_delta_array(arr.dictionary_decode())
    if not _needs_rebuild(t):
        target = delta_type(t)
        if target == t:
            return arr
        if pa.types.is_time(t):
            return arr.cast(pa.time64("us")).cast(pa.int64())
        return arr.cast(target)
    if t == pa.month_day_nano_interval():
        return _interval_struct(arr)
    if pa.types.is_struct(t):
        children = [to_delta_array(arr.field(i)) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(delta_type(t)),
                                          mask=arr.is_null() if arr.null_count else None)
    if pa.types.is_map(t):
        offsets = arr.offsets
        return pa.MapArray.from_arrays(offsets, to_delta_array(arr.keys),
                                       to_delta_array(arr.items), type=delta_type(t),
                                       mask=arr.is_null() if arr.null_count else None)
    # lists: offsets are absolute into the child array, which is adapted whole
    if pa.types.is_fixed_size_list(t):
        arr = arr.cast(pa.list_(t.value_type))
    values = to_delta_array(arr.values)
    return pa.ListArray.from_arrays(arr.offsets, values, type=delta_type(t),
                                    mask=arr.is_null() if arr.null_count else None)


def to_delta(table: pa.Table, columns: Sequence[str] | None = None) -> pa.Table:
    """``table``'s ``columns`` (all by default) with Delta-compatible types, every field
    nullable, without Arrow field metadata."""
    names = table.column_names if columns is None else list(columns)
    arrays = [to_delta_array(table.column(n)) for n in names]
    schema = pa.schema([pa.field(n, a.type, True) for n, a in zip(names, arrays, strict=True)])
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- the net effect


@dataclass
class NetEffect:
    """What a micro-batch does to a keyed mirror: after an optional TRUNCATE (everything before
    it no longer matters), delete ``deletes`` (key rows) and upsert ``upserts`` (the final
    version of each row, table columns). ``insert_only``: only new rows (an append suffices)."""

    truncated: bool
    upserts: pa.Table
    deletes: pa.Table
    insert_only: bool
    unresolved_toast: int = 0


def _key_table(changes: pa.Table, keys: Sequence[str], *, before: bool) -> pa.Table:
    if not before:
        return pa.table({k: changes.column(k) for k in keys})
    struct = changes.column(BEFORE)
    cols = {}
    for k in keys:
        parts = [chunk.field(k) if chunk.type.get_field_index(k) >= 0 else
                 pa.nulls(len(chunk), changes.schema.field(k).type) for chunk in struct.chunks]
        cols[k] = pa.chunked_array(parts, type=changes.schema.field(k).type)
    return pa.table(cols)


def _row_ids(keys: pa.Table) -> np.ndarray:
    """A dense id per distinct key (null-safe), via a hash group-by."""
    import polars as pl

    frame = pl.from_arrow(keys, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    ids = frame.select(pl.struct(frame.columns).rank("dense").alias("id")) \
        if len(frame.columns) > 1 else frame.select(pl.col(frame.columns[0]).rank("dense")
                                                    .alias("id"))
    out: np.ndarray = ids.get_column("id").fill_null(0).to_numpy().astype(np.int64)
    return out


def _key_changed(changes: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """Per row: an update whose before-image carries a key different from its after key."""
    n = changes.num_rows
    has_before = np.asarray(pc.is_valid(changes.column(BEFORE)))
    if not has_before.any():
        return np.zeros(n, dtype=bool)
    before = _key_table(changes, keys, before=True)
    changed = np.zeros(n, dtype=bool)
    for k in keys:
        a, b = changes.column(k), before.column(k)
        ne = pc.not_equal(a, b)
        # null on either side: changed unless both are null (null-safe)
        either_null = pc.xor(pc.is_null(a), pc.is_null(b))
        changed |= np.asarray(pc.or_(ne.fill_null(False), either_null))
    is_u: np.ndarray = np.asarray(pc.equal(changes.column(OP), "u").fill_null(False))
    out: np.ndarray = changed & has_before & is_u
    return out


def net_effect(changes: pa.Table, keys: Sequence[str], lookup: Lookup | None = None,
               columns: Sequence[str] | None = None) -> NetEffect:
    """Fold change rows (stream order) into their effect on a mirror keyed by ``keys``.

    A row leaves by its old key (the before-image: deletes, and updates that moved the key);
    the last event of each key wins; unchanged TOAST values come from the row's before-image
    (REPLICA IDENTITY FULL), else from its previous version in this batch, else from the
    mirror through ``lookup`` (left null, and counted, where the mirror does not have it).
    """
    columns = list(columns) if columns is not None else table_columns(changes.schema)
    ops = changes.column(OP)
    is_t = np.asarray(pc.equal(ops, TRUNCATE_OP).fill_null(False))
    truncated = bool(is_t.any())
    if truncated:
        changes = changes.slice(int(np.flatnonzero(is_t)[-1]) + 1)
        ops = changes.column(OP)
    n = changes.num_rows
    empty_keys = pa.table({k: pa.array([], changes.schema.field(k).type) for k in keys})
    if n == 0:
        return NetEffect(truncated, changes.select(columns), empty_keys, True)
    is_c = np.asarray(pc.equal(ops, "c").fill_null(False))
    if bool(is_c.all()):
        # Inserts only: each key new (a primary key cannot be inserted twice without a delete)
        return NetEffect(truncated, changes.select(columns), empty_keys, True)
    is_d = np.asarray(pc.equal(ops, "d").fill_null(False))
    is_up = is_c | np.asarray(pc.is_in(ops, pa.array(["u", "r"])).fill_null(False))
    has_before = np.asarray(pc.is_valid(changes.column(BEFORE)))
    moved = _key_changed(changes, keys)
    is_rem = (is_d | moved) & has_before
    after_keys = _key_table(changes, keys, before=False)
    seq = np.arange(n, dtype=np.int64)
    if not is_rem.any():
        # Upserts only: the last version of each key (no key left)
        ids = _row_ids(after_keys.filter(pa.array(is_up)))
        up_seq = seq[is_up]
        order = np.lexsort((up_seq, ids))
        sid = ids[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = sid[1:] != sid[:-1]
        win_seq = np.sort(up_seq[order[last]])
        deletes = empty_keys
        before_keys = after_keys
    else:
        before_keys = _key_table(changes, keys, before=True)
        # Events: (key, seq, is_upsert); a key move's removal of its old key sorts before the
        # upsert of its new key (they share the seq).
        ev_keys = pa.concat_tables([after_keys.filter(pa.array(is_up)),
                                    before_keys.filter(pa.array(is_rem))])
        ev_seq = np.concatenate([seq[is_up], seq[is_rem]])
        ev_up = np.concatenate([np.ones(int(is_up.sum()), bool),
                                np.zeros(int(is_rem.sum()), bool)])
        ids = _row_ids(ev_keys)
        order = np.lexsort((ev_up, ev_seq, ids))
        sid = ids[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = sid[1:] != sid[:-1]
        final = order[last]
        win_seq = np.sort(ev_seq[final][ev_up[final]])
        del_idx = final[~ev_up[final]]
        deletes = ev_keys.take(pa.array(np.sort(del_idx))) if len(del_idx) else empty_keys
    wanted = [*columns, TOAST] if TOAST in changes.column_names else list(columns)
    upserts = changes.select(wanted).take(pa.array(win_seq))
    unresolved = 0
    if TOAST in changes.column_names:
        if moved.any() and before_keys is after_keys:
            before_keys = _key_table(changes, keys, before=True)
        upserts, unresolved = _resolve_toast(changes, upserts, win_seq, keys, columns,
                                             after_keys, before_keys, is_up, moved, lookup)
    return NetEffect(truncated, upserts.select(columns), deletes, False, unresolved)


def _resolve_toast(changes: pa.Table, upserts: pa.Table, win_seq: np.ndarray,
                   keys: Sequence[str], columns: Sequence[str], after_keys: pa.Table,
                   before_keys: pa.Table, is_up: np.ndarray, moved: np.ndarray,
                   lookup: Lookup | None) -> tuple[pa.Table, int]:
    toast = upserts.column(TOAST)
    lengths = pc.list_value_length(toast).fill_null(0)
    if not pc.any(pc.greater(lengths, 0)).as_py():
        return upserts, 0
    n = changes.num_rows
    # Each upsert's previous version: the last earlier upsert whose (new) key is this row's
    # old key (its before-image key when the key moved, else its key).
    src_keys = pa.table({k: pc.if_else(pa.array(moved), before_keys.column(k),
                                       after_keys.column(k)) for k in keys})
    ids = _row_ids(pa.concat_tables([after_keys, src_keys]))
    after_id, src_id = ids[:n], ids[n:]
    prev = np.full(n, -1, dtype=np.int64)
    last_up: dict[int, int] = {}
    up_rows = np.flatnonzero(is_up)
    for i in up_rows.tolist():
        prev[i] = last_up.get(int(src_id[i]), -1)
        last_up[int(after_id[i])] = i
    # A delete between two upserts of a key breaks the chain: a row inserted after a delete
    # has no previous version (its TOAST values are always sent).
    toast_all = changes.column(TOAST).to_pylist()
    before = changes.column(BEFORE)
    before_fields = set(before.type.names) if pa.types.is_struct(before.type) else set()
    unresolved = 0
    new_columns = {}
    for column in columns:
        need = np.array([bool(t) and column in t for t in toast_all], dtype=bool)
        if not need[win_seq].any():
            continue
        values = changes.column(column)
        if column in before_fields:
            old = pc.struct_field(before, column)
            from_before = need & np.asarray(pc.is_valid(old))
            if from_before.any():
                values = pc.if_else(pa.array(from_before), old, values)
                need &= ~from_before
        # Pointer jumping: follow previous versions until one that has the value.
        cur = np.arange(n, dtype=np.int64)
        waiting = need.copy()
        while True:
            step = waiting & (prev[cur] >= 0)
            if not step.any():
                break
            cur[step] = prev[cur[step]]
            waiting[step] = need[cur[step]]
        # waiting rows whose chain starts outside this batch: the mirror's row of the start key
        rows = win_seq[waiting[win_seq]]
        chunks = list(values.chunks) if isinstance(values, pa.ChunkedArray) else [values]
        take = cur[win_seq].copy()
        if len(rows):
            starts = cur[rows]
            found_vals, found = _from_mirror(src_keys.take(pa.array(starts)), keys, column,
                                             values.type, lookup)
            unresolved += int((~found).sum())
            chunks.append(found_vals)
            # rows still waiting take the mirror's value: the j-th of them the j-th found
            where = np.flatnonzero(waiting[win_seq])
            take[where] = n + np.arange(len(where), dtype=np.int64)
        # one copy: a take over the batch's values followed by the mirror's
        new_columns[column] = pa.chunked_array(chunks, type=values.type).take(pa.array(take))
    for column, arr in new_columns.items():
        upserts = upserts.set_column(upserts.schema.get_field_index(column), column, arr)
    return upserts, unresolved


def _from_mirror(start_keys: pa.Table, keys: Sequence[str], column: str, type_: pa.DataType,
                 lookup: Lookup | None) -> tuple[pa.Array, np.ndarray]:
    """``column``'s value in the mirror for each row of ``start_keys`` (null where the mirror
    has no such row), and whether the row was found. Only the keys are joined; the values
    are gathered once."""
    n = start_keys.num_rows
    if lookup is None:
        return pa.nulls(n, type_), np.zeros(n, dtype=bool)
    found = lookup(start_keys, keys, [column])
    if found.num_rows == 0:
        return pa.nulls(n, type_), np.zeros(n, dtype=bool)
    probe = pa.table({**{k: start_keys.column(k) for k in keys},
                      "__cdc_row__": pa.array(np.arange(n, dtype=np.int64))})
    right = pa.table({**{k: found.column(k) for k in keys},
                      "__cdc_at__": pa.array(np.arange(found.num_rows, dtype=np.int64))})
    joined = probe.join(right, keys=list(keys), join_type="left outer")
    at = np.full(n, -1, dtype=np.int64)
    row = joined.column("__cdc_row__").to_numpy()
    hit = joined.column("__cdc_at__")
    present_rows = np.asarray(pc.is_valid(hit))
    at[row[present_rows]] = hit.filter(pc.is_valid(hit)).to_numpy()
    present = at >= 0
    index = pa.array(at, mask=~present)
    vals = found.column(column).take(index).cast(type_)
    vals = vals.combine_chunks() if isinstance(vals, pa.ChunkedArray) else vals
    return vals, present


# --------------------------------------------------------------------------- partitions


def partition_rows(changes: pa.Table, keys: Sequence[str], partitions: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's partition by its after-image key and by its before-image key.

    A delete's after-image is null: it belongs where its old key lives (the before-image), as
    does the old key of an update that moved it (hashing the after-image would send every
    delete to the partition of the NULL hash). Rows without a before-image get their
    after-image partition in both. The same hash as ``HashPartitioner``'s.
    """
    batch = pa.table({k: changes.column(k) for k in keys})
    after = partition_of(batch, keys, partitions) if changes.num_rows else np.zeros(0, np.int64)
    before_keys = _key_table(changes, keys, before=True)
    has_before = np.asarray(pc.is_valid(changes.column(BEFORE)))
    old = partition_of(before_keys, keys, partitions) if changes.num_rows else after
    before = np.where(has_before, old, after)
    return after, before


def moved_across(changes: pa.Table, keys: Sequence[str], partitions: int) -> np.ndarray:
    """Rows whose key moved to another partition while leaving unchanged TOAST values behind:
    the old row's values live in the old key's partition, so the new one's writer cannot
    read them (the sink fills them in before it splits, :func:`fill_unchanged_toast`)."""
    if partitions == 1 or TOAST not in changes.column_names or changes.num_rows == 0:
        return np.zeros(changes.num_rows, dtype=bool)
    toast: np.ndarray = np.asarray(pc.list_value_length(changes.column(TOAST)).fill_null(0)) > 0
    if not toast.any():
        return toast
    after, before = partition_rows(changes, keys, partitions)
    out: np.ndarray = toast & _key_changed(changes, keys) & (after != before)
    return out


def fill_unchanged_toast(changes: pa.Table, keys: Sequence[str], rows: np.ndarray,
                         lookup: Lookup | None) -> tuple[pa.Table, int]:
    """``changes`` with the unchanged TOAST values of ``rows`` (a mask) filled in (from the
    before-image, an earlier version in this batch or the mirror) and their
    ``_cdc_unchanged_toast`` emptied; returns the number of values not found."""
    idx = np.flatnonzero(rows)
    if not len(idx):
        return changes, 0
    columns = table_columns(changes.schema)
    n = changes.num_rows
    op = np.asarray(changes.column(OP).to_numpy(zero_copy_only=False), dtype=object)
    is_up = (op == "c") | (op == "u") | (op == "r")
    moved = _key_changed(changes, keys)
    after_keys = _key_table(changes, keys, before=False)
    before_keys = _key_table(changes, keys, before=True)
    filled, unresolved = _resolve_toast(changes, changes.take(pa.array(idx)), idx, keys, columns,
                                        after_keys, before_keys, is_up, moved, lookup)
    where = np.arange(n, dtype=np.int64)
    where[idx] = n + np.arange(len(idx), dtype=np.int64)
    take = pa.array(where)
    out = changes
    for column in [*columns, TOAST]:
        i = out.schema.get_field_index(column)
        new = filled.column(column)
        if column == TOAST:
            new = pa.array([[] for _ in range(len(idx))], out.schema.field(TOAST).type)
        merged = pa.concat_arrays([out.column(column).combine_chunks(),
                                   new.combine_chunks() if isinstance(new, pa.ChunkedArray)
                                   else new]).take(take)
        out = out.set_column(i, out.schema.field(column), merged)
    return out, unresolved


def split_partitions(changes: pa.Table, keys: Sequence[str], partitions: int,
                     mirror_changes: pa.Table | None = None
                     ) -> tuple[list[pa.Table], list[pa.Table]]:
    """Split a table's change rows into ``partitions`` for the mirror and for the changelog.

    Mirror: inserts and updates go to their (new) key's partition, deletes to their old key's;
    an update that moved the key to another partition also goes to the old key's partition as
    a delete there (``_cdc_op = 'd'``, same position); a TRUNCATE goes to every partition.
    Changelog: every row exactly once, deletes by their old key, a TRUNCATE to partition 0.
    ``mirror_changes``: the same rows with values filled in for the mirror (default: these).
    """
    source = changes if mirror_changes is None else mirror_changes
    if partitions == 1:
        return [changes if mirror_changes is None else mirror_changes], [changes]
    op = np.asarray(changes.column(OP).to_numpy(zero_copy_only=False), dtype=object)
    after, before = partition_rows(changes, keys, partitions)
    is_t = op == TRUNCATE_OP
    is_d = op == "d"
    log_part = np.where(is_d, before, np.where(is_t, 0, after))
    moved = _key_changed(changes, keys) & (before != after)
    # One take in partition order, then a slice per partition (not a filter per partition)
    order = np.argsort(log_part, kind="stable")
    bounds = np.searchsorted(log_part[order], np.arange(partitions + 1))
    taken = changes.take(pa.array(order))
    log = [taken.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
           for i in range(partitions)]
    if not is_t.any() and not moved.any() and mirror_changes is None:
        return log, log
    mirror = []
    for i in range(partitions):
        # the old partition's copy of a row whose key moved away: a delete of its old key
        leaving = moved & (before == i)
        sel = (log_part == i) | is_t | leaving
        part = source.filter(pa.array(sel))
        if leaving.any():
            ops = pc.if_else(pa.array(leaving[sel]), pa.scalar("d"), part.column(OP))
            part = part.set_column(part.schema.get_field_index(OP), OP, ops)
        mirror.append(part)
    return mirror, log
