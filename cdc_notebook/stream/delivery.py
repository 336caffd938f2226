"""At-least-once made once per consumer: the high-water mark ``(end_lsn, ordinal)``.

After a reconnect or a crash the server may resend what was acknowledged (PostgreSQL does not
persist every status update). Every change carries ``(_cdc_end_lsn, _cdc_ordinal)``, which
orders changes; a consumer drops the rows at or below the newest position it accepted. Both the
per-table readers and the live frames use :func:`drop_redelivered`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

Position = tuple[int, int]  # (end_lsn, ordinal)


def drop_redelivered(batch: pa.RecordBatch, high_water: Position, *,
                     snapshot_rows: bool = False) -> tuple[pa.RecordBatch, Position]:
    """The rows of ``batch`` past ``high_water``, and the new high-water mark.

    Change rows arrive in ``(end_lsn, ordinal)`` order, so a batch whose first row is past the
    mark is kept whole without a filter. With ``snapshot_rows=True``, snapshot rows (``op =
    'r'``, which come in no fixed order and share the snapshot's position) are kept when their
    end LSN is at or past the mark's, and the mark becomes the largest position kept.
    """
    if batch.num_rows == 0:
        return batch, high_water
    end = batch.column("_cdc_end_lsn")
    ordinal = batch.column("_cdc_ordinal")
    hw_end, hw_ord = high_water
    unordered = snapshot_rows and batch.column("_cdc_op")[0].as_py() == "r"
    if not unordered and end[0].as_py() > hw_end:
        keep = batch
    else:
        end_hw = pa.scalar(hw_end, pa.uint64())
        mask = pc.or_(pc.greater(end, end_hw),
                      pc.and_(pc.equal(end, end_hw),
                              pc.greater(ordinal, pa.scalar(hw_ord, pa.uint64()))))
        if snapshot_rows:
            mask = pc.or_(mask, pc.and_(pc.equal(batch.column("_cdc_op"), "r"),
                                        pc.greater_equal(end, end_hw)))
        mask = pc.fill_null(mask, False)
        keep = batch.filter(mask)
    if keep.num_rows == 0:
        return keep, high_water
    if not unordered:
        last = (keep.column("_cdc_end_lsn")[-1].as_py(), keep.column("_cdc_ordinal")[-1].as_py())
    else:
        kept_end = keep.column("_cdc_end_lsn")
        newest = pc.max(kept_end).as_py()
        at_newest = pc.filter(keep.column("_cdc_ordinal"), pc.equal(kept_end, newest))
        last = (newest, pc.max(at_newest).as_py())
    return keep, max(high_water, last)
