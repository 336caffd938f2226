"""The consumer's durable log of delivered changes: one binary record per delivered batch.

A record is a header ``<4sIqqdI`` (magic ``FCB1``, payload length, the reader's high-water mark
``(end_lsn, ordinal)`` after the batch, wall-clock time, row count) and a payload of the
batch's rows: ``_cdc_op`` as one byte each, then six int64 columns (``id``, ``rid``, ``seq``,
``_cdc_before.id``, ``_cdc_end_lsn``, ``_cdc_ordinal``; -1 for null). Each record is appended
with one ``write`` (and ``fdatasync``) before the consumer asks for the next batch, so what the
log holds is never behind what the reader acknowledged. A record cut short (the process was
killed in the middle of a write) never happened: :func:`read_records` ignores it and
:func:`restore` cuts it off before a new consumer appends.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAGIC = b"FCB1"
HEADER = struct.Struct("<4sIqqdI")
INT_COLUMNS = ("id", "rid", "seq", "before_id", "end_lsn", "ordinal")


def _ints(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array.cast(pa.int64()), -1).to_numpy(zero_copy_only=False).astype(
        np.int64, copy=False)


def encode(batch: pa.RecordBatch, high_water: tuple[int, int], t_wall: float) -> bytes:
    n = batch.num_rows
    ops = "".join(batch.column("_cdc_op").to_pylist()).encode()
    if len(ops) != n:
        raise ValueError("an op letter is not one byte")
    before = batch.column("_cdc_before")
    cols = [batch.column("id"), batch.column("rid"), batch.column("seq"),
            pc.struct_field(before, "id"), batch.column("_cdc_end_lsn"),
            batch.column("_cdc_ordinal")]
    payload = ops + b"".join(_ints(c).tobytes() for c in cols)
    return HEADER.pack(MAGIC, len(payload), high_water[0], high_water[1], t_wall, n) + payload


@dataclass
class Records:
    """Every delivered row, in delivery order, and per record its time and high-water mark."""

    op: np.ndarray           # uint8 (ord of c/u/d/r)
    cols: dict[str, np.ndarray]
    record_of_row: np.ndarray  # index of the record each row came in
    t_wall: np.ndarray       # per record
    high_water: list[tuple[int, int]]
    good_bytes: int          # length of the log up to the last whole record

    @property
    def rows(self) -> int:
        return len(self.op)


def read_records(path: str) -> Records:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        data = b""
    pos = 0
    ops, cols, rec_of_row, times, hws = [], {k: [] for k in INT_COLUMNS}, [], [], []
    view = memoryview(data)
    while pos + HEADER.size <= len(data):
        magic, length, hw_end, hw_ord, t_wall, n = HEADER.unpack_from(view, pos)
        if magic != MAGIC or length != n * (1 + 8 * len(INT_COLUMNS)):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        end = pos + HEADER.size + length
        if end > len(data):
            break  # torn
        body = view[pos + HEADER.size:end]
        ops.append(np.frombuffer(body[:n], dtype=np.uint8))
        for i, name in enumerate(INT_COLUMNS):
            start = n + 8 * n * i
            cols[name].append(np.frombuffer(body[start:start + 8 * n], dtype=np.int64))
        rec_of_row.append(np.full(n, len(times), dtype=np.int64))
        times.append(t_wall)
        hws.append((hw_end, hw_ord))
        pos = end

    def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return Records(op=cat(ops, np.uint8),
                   cols={k: cat(v, np.int64) for k, v in cols.items()},
                   record_of_row=cat(rec_of_row, np.int64),
                   t_wall=np.array(times, dtype=np.float64), high_water=hws, good_bytes=pos)


def restore(path: str) -> tuple[int, int]:
    """The high-water mark of the last whole record (``(0, 0)`` for none); cuts off a torn
    record so the next consumer appends after whole ones."""
    recs = read_records(path)
    if os.path.exists(path) and os.path.getsize(path) != recs.good_bytes:
        os.truncate(path, recs.good_bytes)
    return recs.high_water[-1] if recs.high_water else (0, 0)
