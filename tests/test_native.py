"""The native decoders without a server: the C data interface export and bad input."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest

from cdc_notebook._native import (
    CopyDecoder,
    NativeBatch,
    NativeDecodeError,
    PgoutputDecoder,
    TablePlan,
    import_batch,
)
from cdc_notebook.decode.typespec import change_batch_schema

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def _plan(fields_kinds):
    fields = [pa.field(n, t) for n, t, _ in fields_kinds]
    return TablePlan(change_batch_schema(fields), [k for _, _, k in fields_kinds])


def _row(ctid, *values):
    out = struct.pack(">h", 1 + len(values)) + struct.pack(">iIH", 6, *ctid)
    for v in values:
        out += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    return out


def test_copy_rows_export_zero_copy_and_reusable():
    plan = _plan([("id", pa.int32(), "int4recv"), ("v", pa.utf8(), "textrecv")])
    dec = CopyDecoder(plan, 42, 7 << 32)
    stream = HEADER + _row((0, 1), struct.pack(">i", 5), b"five") + _row((0, 2), None, b"")
    # cut anywhere: rows straddle the chunks
    assert dec.feed([stream[:5], stream[5:30], stream[30:]]) == 2
    dec.feed([struct.pack(">h", -1)])
    assert dec.finished and dec.total_rows == 2
    batch = pa.record_batch(NativeBatch(plan.schema, dec.take()))
    batch.validate(full=True)
    assert batch.to_pydict()["id"] == [5, None] and batch.column("v").to_pylist() == ["five", ""]
    assert batch.column("_cdc_ordinal").to_pylist() == [(7 << 32) + 1, (7 << 32) + 2]
    assert batch.schema == plan.schema
    # the builder starts empty again
    assert dec.rows == 0
    empty = import_batch(plan.schema, dec.take())
    assert empty.num_rows == 0 and empty.schema == plan.schema


def test_the_native_schema_is_the_spec_schema():
    plan = _plan([("ts", pa.timestamp("us", tz="UTC"), "timestamptz_recv"),
                  ("a", pa.list_(pa.int64()), ("array", "int8recv"))])
    assert pa.schema(plan) == plan.schema


def test_plan_rejects_a_kind_that_does_not_match_the_arrow_type():
    with pytest.raises(NativeDecodeError, match="does not match"):
        _plan([("x", pa.int64(), "textrecv")])
    with pytest.raises(ValueError, match="unknown decoder kind"):
        _plan([("x", pa.int64(), "no_such_recv")])
    with pytest.raises(ValueError, match="kinds for"):
        TablePlan(change_batch_schema([pa.field("x", pa.int32())]), [])


def test_copy_bad_input():
    plan = _plan([("id", pa.int32(), "int4recv")])
    with pytest.raises(NativeDecodeError, match="signature"):
        CopyDecoder(plan, 0).feed([b"NOTCOPY" + bytes(20)])
    with pytest.raises(NativeDecodeError, match="fields, expected"):
        CopyDecoder(plan, 0).feed([HEADER + struct.pack(">h", 5)])
    with pytest.raises(NativeDecodeError, match="expected 4"):
        CopyDecoder(plan, 0).feed([HEADER + _row((0, 1), b"\x00\x01")])


def _w(payload: bytes, lsn: int = 0x100) -> bytes:
    return b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload


def test_pgoutput_bad_input_is_a_clear_error():
    def on_relation(*args):
        raise AssertionError("no relation expected")

    dec = PgoutputDecoder(on_relation)
    with pytest.raises(NativeDecodeError, match="unknown pgoutput message type"):
        dec.feed([_w(b"Z")])
    with pytest.raises(NativeDecodeError, match="truncated"):
        dec.feed([_w(b"B\x00\x01")])
    with pytest.raises(NativeDecodeError, match="unexpected CopyData"):
        dec.feed([b"x123"])
    with pytest.raises(NativeDecodeError, match="before its Relation"):
        dec.feed([_w(b"B" + struct.pack(">QqI", 1, 0, 9)), _w(b"I" + struct.pack(">I", 77) + b"N")])
    with pytest.raises(NativeDecodeError, match="two_phase"):
        PgoutputDecoder(on_relation).feed([_w(b"P")])


def test_keepalive_is_reported():
    dec = PgoutputDecoder(lambda *a: None)
    events, nxt = dec.feed([b"k" + struct.pack(">QqB", 1234, 0, 1)])
    assert events == [("keepalive", 1234, True)] and nxt == 1
