"""The key-hash partitioner: a stable 64-bit hash of key columns' bytes, vectorized.

``key_hash(batch, ["id"])`` gives one uint64 per row; ``partition_of(batch, keys, n)`` maps it
onto ``n`` partitions; :class:`HashPartitioner` splits batches with Arrow's ``take``.

Stable means: the same key values give the same hash in every process, run and machine (no
Python ``hash()``, whose salt changes per process; no Polars hash, which is documented as not
stable across versions). Each column is hashed over its values' bytes:

* fixed-width values (integers, floats, dates, timestamps, decimals, uuid) as their
  little-endian bytes, 8 at a time;
* strings and binaries byte by byte as a polynomial over 2^64 (multiplier an odd 64-bit
  constant), then the length;
* NULL as a constant of its own;

each word goes through the SplitMix64 finalizer, and columns are chained with a multiply and a
finalizer (never XOR of column hashes, under which (a, b) and (b, a) would collide).
All arithmetic is numpy uint64, wrapping, which is the same on every platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0x9FB21C651E98DF25)  # odd
_NULL = np.uint64(0x6A09E667F3BCC909)
_SEED = np.uint64(0x243F6A8885A308D3)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer (a bijection on uint64 with good avalanche)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _words(arr: pa.Array) -> list[np.ndarray]:
    """A fixed-width column as 64-bit little-endian words (one or two per value)."""
    t = arr.type
    width = t.bit_width // 8
    buf = arr.buffers()[1]
    raw = np.frombuffer(buf, dtype=np.uint8, count=(arr.offset + len(arr)) * width,
                        offset=0)[arr.offset * width:]
    if width <= 8:
        vals = raw.reshape(-1, width)
        padded = np.zeros((len(arr), 8), dtype=np.uint8)
        padded[:, :width] = vals
        return [padded.view("<u8").reshape(-1)]
    words = raw.reshape(-1, width).copy().view("<u8")
    return [words[:, i] for i in range(words.shape[1])]


def _varwidth_hash(arr: pa.Array) -> np.ndarray:
    """Polynomial hash of each value's bytes plus its length, all rows at once."""
    offsets_type: type[np.signedinteger[Any]]
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        offsets_type = np.int64
    else:
        offsets_type = np.int32
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=offsets_type,
                            count=arr.offset + n + 1)[arr.offset:].astype(np.int64)
    data_buf = arr.buffers()[2]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, dtype=np.uint8))
    start, end = offsets[:-1], offsets[1:]
    lengths = end - start
    out = np.zeros(n, dtype=np.uint64)
    total = int(lengths.sum())
    if total:
        # Every byte's position within its value, and the row it belongs to.
        first = np.repeat(start, lengths)
        byte_index = np.arange(total, dtype=np.int64) + np.repeat(
            start - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        pos = byte_index - first
        maxlen = int(lengths.max())
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(maxlen, _POLY, dtype=np.uint64))
            terms = (data[byte_index].astype(np.uint64) + np.uint64(1)) * powers[pos]
            nonempty = lengths > 0
            firsts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[nonempty]
            out[nonempty] = np.add.reduceat(terms, firsts)
    with np.errstate(over="ignore"):
        return _mix(out ^ (lengths.astype(np.uint64) * _GOLDEN))


def column_hash(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One uint64 per value of a key column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_boolean(t):
        arr = pc.cast(arr, pa.uint8())
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or \
            pa.types.is_large_binary(t):
        h = _varwidth_hash(arr)
    elif pa.types.is_fixed_size_binary(t):
        width = t.byte_width
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8,
                            count=(arr.offset + len(arr)) * width)[arr.offset * width:]
        pad = (-width) % 8
        vals = raw.reshape(-1, width)
        if pad:
            vals = np.concatenate([vals, np.zeros((len(arr), pad), np.uint8)], axis=1)
        words = np.ascontiguousarray(vals).view("<u8")
        h = np.full(len(arr), _SEED, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(words.shape[1]):
                h = _mix(h * _POLY + words[:, i])
    elif t.bit_width and t.bit_width % 8 == 0 and t.num_buffers == 2:
        h = np.full(len(arr), _SEED, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for word in _words(arr):
                h = _mix(h * _POLY + word)
    else:
        raise TypeError(f"cannot hash key column of type {t}; key columns must be scalar")
    if arr.null_count:
        valid = np.asarray(arr.is_valid())
        h = np.where(valid, h, _NULL)
    return h


def key_hash(batch: pa.RecordBatch | pa.Table, key_columns: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each row's key columns (in the order given)."""
    if not key_columns:
        raise ValueError("key_hash needs at least one key column")
    h = np.full(batch.num_rows, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in key_columns:
            h = _mix(h * _POLY + column_hash(batch.column(name)))
    return h


def partition_of(batch: pa.RecordBatch | pa.Table, key_columns: Sequence[str],
                 partitions: int) -> np.ndarray:
    """Each row's partition in ``range(partitions)`` (multiply-shift on the top 32 bits)."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    h = key_hash(batch, key_columns)
    return ((h >> np.uint64(32)) * np.uint64(partitions) >> np.uint64(32)).astype(np.int64)


def _before_keys(batch: pa.RecordBatch, key_columns: Sequence[str]) -> pa.RecordBatch | None:
    """The old key of each row (from ``_cdc_before``) as a batch of the key columns, or None
    when the batch carries no before-images."""
    if "_cdc_before" not in batch.schema.names:
        return None
    before = batch.column("_cdc_before")
    if before.null_count == len(before):
        return None
    fields = [before.field(k) for k in key_columns]
    return pa.RecordBatch.from_arrays(fields, names=list(key_columns))


def change_partitions(batch: pa.RecordBatch, key_columns: Sequence[str],
                      partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each change row belongs: ``(new, old)`` partitions, -1 where there is none.

    A change belongs to the partition of the key it leaves the table with (inserts, updates,
    snapshot rows) and, for deletes and for updates that move the key, to the partition of
    its old key (the before-image): a key move across partitions is a delete in the old one
    and an insert (update) in the new one. A TRUNCATE marker (``_cdc_op = 't'``) belongs to
    every partition.
    """
    n = batch.num_rows
    ops = batch.column("_cdc_op") if "_cdc_op" in batch.schema.names else None
    new = partition_of(batch, key_columns, partitions)
    old = np.full(n, -1, dtype=np.int64)
    if ops is None:
        return new, old
    op = np.asarray(ops.to_numpy(zero_copy_only=False), dtype=object)
    before = _before_keys(batch, key_columns)
    if before is not None:
        has_before = np.asarray(batch.column("_cdc_before").is_valid())
        old = np.where(has_before, partition_of(before, key_columns, partitions), -1)
    deletes = op == "d"
    new = np.where(deletes, -1, new)
    updates = op == "u"
    old = np.where(updates & (old == new), -1, old)  # an update that stays: one row
    old = np.where(deletes | updates, old, -1)
    truncates = op == "t"
    if truncates.any():
        new = np.where(truncates, -2, new)  # -2: every partition
    return new, old


def rows_of_partition(batch: pa.RecordBatch, key_columns: Sequence[str], partitions: int,
                      index: int) -> pa.RecordBatch:
    """The rows of ``batch`` partition ``index`` of ``partitions`` sees, in order: its
    inserts, updates and deletes, and for a key that moved out of it a delete row (op ``d``,
    the table columns null, ``_cdc_before`` kept)."""
    if partitions == 1 or batch.num_rows == 0:
        return batch
    new, old = change_partitions(batch, key_columns, partitions)
    mine = (new == index) | (new == -2)
    moved_out = (old == index) & ~mine
    if not moved_out.any():
        return batch.filter(pa.array(mine)) if not mine.all() else batch
    keep = mine | moved_out
    rows = batch.filter(pa.array(keep))
    moved = pa.array(moved_out[keep])
    arrays = []
    for field, column in zip(rows.schema, rows.columns, strict=True):
        if field.name == "_cdc_op":
            column = pc.if_else(moved, pa.scalar("d", field.type), column)
        elif not field.name.startswith("_cdc_"):
            column = pc.if_else(moved, pa.nulls(len(column), field.type), column)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=rows.schema)


class HashPartitioner:
    """Splits a table's batches into ``partitions`` by the hash of its key columns.

    The seed's ``HashPartitioner``: same key, same partition, in every process and run.
    """

    def __init__(self, key_columns: Sequence[str], partitions: int):
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.key_columns = list(key_columns)
        self.partitions = partitions

    def split(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """One batch per partition (empty ones included), rows in their original order.

        A change batch (with ``_cdc_op``) is split as the readers' partitions are
        (:func:`rows_of_partition`): deletes by their old key, a key moved across partitions
        as a delete in the old one and an update in the new one. Any other batch is split by
        the key columns' hash alone."""
        if "_cdc_op" in batch.schema.names:
            return [rows_of_partition(batch, self.key_columns, self.partitions, i)
                    for i in range(self.partitions)]
        parts = partition_of(batch, self.key_columns, self.partitions)
        order = np.argsort(parts, kind="stable")
        counts = np.bincount(parts, minlength=self.partitions)
        taken = batch.take(pa.array(order))
        out, start = [], 0
        for count in counts:
            out.append(taken.slice(start, int(count)))
            start += int(count)
        return out

    def __repr__(self) -> str:
        return f"HashPartitioner(key_columns={self.key_columns!r}, partitions={self.partitions})"
