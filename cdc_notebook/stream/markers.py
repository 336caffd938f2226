"""TRUNCATE in the batch API: a marker row (``_cdc_op = 't'``) in a batch of the table's schema.

``reader.batches()`` / ``read_batches()`` yield one such row where a TRUNCATE of the table is in
the stream, so that a consumer that only reads batches sees it in order with the changes: every
table column is null, ``_cdc_before`` is null, ``_cdc_lsn`` is the TRUNCATE's LSN, and the
transaction's columns and ``_cdc_ordinal`` place it among the transaction's changes (a TRUNCATE
takes an ordinal of its own on both plugins), so the high-water mark treats it as any change.
``events()`` yields the :class:`~cdc_notebook.decode.events.Truncate` event instead.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from cdc_notebook.decode.events import Truncate

TRUNCATE_OP = "t"


def truncate_marker(schema: pa.Schema, event: Truncate) -> pa.RecordBatch:
    """The one-row batch of ``schema`` that stands for ``event`` (docs/decisions.md)."""
    values = {
        "_cdc_op": TRUNCATE_OP,
        "_cdc_lsn": event.lsn,
        "_cdc_commit_lsn": event.commit_lsn or None,  # 0: not known (in progress)
        "_cdc_end_lsn": event.end_lsn,
        "_cdc_commit_ts": event.commit_ts if event.commit_lsn else None,
        "_cdc_xid": event.xid,
        "_cdc_ordinal": event.ordinal,
        "_cdc_unchanged_toast": [],
        "_cdc_unrepresentable": [],
    }
    return one_row(schema, values)


def one_row(schema: pa.Schema, values: dict[str, Any]) -> pa.RecordBatch:
    """A one-row batch of ``schema``: ``values`` by column name (``_cdc_commit_ts`` in
    microseconds), every other column null."""
    arrays = []
    for field in schema:
        value = values.get(field.name)
        if field.name == "_cdc_commit_ts" and value is not None:
            arrays.append(pa.array([value], pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array([value], field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
