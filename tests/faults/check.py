"""Rows written vs rows delivered: lost, duplicated, out of order per key, and more.

Every delivered row is mapped to the writer's change it reports: an insert or update by the
``seq`` of its after-image, a delete by its before-image key (``tests/faults/workload.py``).
Then, against the writer's log of committed changes:

* **lost**: committed, never delivered (``lost_before_end``: of those, the ones in a transaction
  older than the newest one delivered — a hole, not a tail cut off);
* **duplicated**: deliveries of a change beyond its first;
* **out of order**: changes of one row (``rid``; its key may change) delivered after a later
  change of the same row; ``keys_out_of_order`` counts the rows concerned;
* **phantom**: delivered rows that match no committed change; **mismatched**: delivered rows
  whose op, key, row identity or old key differ from what the writer did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests.faults.records import Records
from tests.faults.workload import WriterLog

_OPS = {"c": ord("c"), "u": ord("u"), "d": ord("d")}


@dataclass
class Comparison:
    written: int
    delivered: int            # rows delivered, duplicates included
    distinct: int             # distinct committed changes delivered
    lost: int
    lost_before_end: int
    duplicated: int
    out_of_order: int
    keys_out_of_order: int
    phantom: int
    mismatched: int
    first_lost_seqs: list[int]
    first_duplicated_seqs: list[int]
    recovery_s: float | None  # fault → first delivered change committed after it

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.phantom
                    or self.mismatched)


def compare(log: WriterLog, recs: Records, *, t_fault: float | None = None,
            seq_at_fault: int | None = None) -> Comparison:
    size = (max(ch.seq for ch in log.changes) + 2) if log.changes else 2
    op_by = np.zeros(size, dtype=np.uint8)
    id_by = np.full(size, -2, dtype=np.int64)
    rid_by = np.full(size, -2, dtype=np.int64)
    old_by = np.full(size, -2, dtype=np.int64)
    txn_by = np.full(size, -1, dtype=np.int64)
    for ch in log.changes:
        op_by[ch.seq] = _OPS[ch.op]
        id_by[ch.seq] = ch.id
        rid_by[ch.seq] = ch.rid
        old_by[ch.seq] = ch.old_id
        txn_by[ch.seq] = ch.txn
    committed = np.array(sorted(log.by_seq), dtype=np.int64)

    # map each delivered row to a writer seq (-1: matches nothing)
    op = recs.op
    seq = recs.cols["seq"].copy()
    is_delete = op == _OPS["d"]
    if is_delete.any():
        before = recs.cols["before_id"][is_delete]
        seq[is_delete] = np.array([log.delete_seq_by_id.get(int(b), -1) for b in before],
                                  dtype=np.int64)
    seq[(seq < 0) | (seq >= size)] = -1
    known = seq >= 0
    known[known] = op_by[seq[known]] != 0
    phantom = int((~known).sum())

    # content: op, key, row identity, old key of a key change
    s = seq[known]
    o = op[known]
    bad = o != op_by[s]
    not_del = o != _OPS["d"]
    bad |= not_del & (recs.cols["id"][known] != id_by[s])
    bad |= not_del & (recs.cols["rid"][known] != rid_by[s])
    key_change = not_del & (old_by[s] != id_by[s]) & (op_by[s] == _OPS["u"])
    bad |= key_change & (recs.cols["before_id"][known] != old_by[s])
    mismatched = int(bad.sum())

    uniq, first_idx, counts = np.unique(s, return_index=True, return_counts=True)
    duplicated = int((counts - 1).sum())
    dup_seqs = uniq[counts > 1][:10].tolist()
    lost_seqs = np.setdiff1d(committed, uniq, assume_unique=True)
    newest_txn = int(txn_by[uniq].max()) if len(uniq) else -1
    lost_before_end = int((txn_by[lost_seqs] < newest_txn).sum()) if len(lost_seqs) else 0

    # order per row: the first deliveries of each row's changes must follow the writer's order
    delivery_order = uniq[np.argsort(first_idx, kind="stable")]
    rids = rid_by[delivery_order]
    by_rid = np.argsort(rids, kind="stable")
    r_sorted, s_sorted = rids[by_rid], delivery_order[by_rid]
    same = r_sorted[1:] == r_sorted[:-1]
    backwards = same & (s_sorted[1:] < s_sorted[:-1])
    out_of_order = int(backwards.sum())
    keys_out_of_order = len(np.unique(r_sorted[1:][backwards]))

    recovery = None
    if t_fault is not None and seq_at_fault is not None:
        after = known.copy()
        after[known] = s > seq_at_fault
        if after.any():
            rec_idx = recs.record_of_row[after]
            recovery = max(0.0, float(recs.t_wall[rec_idx].min()) - t_fault)

    return Comparison(
        written=len(committed), delivered=recs.rows, distinct=len(uniq), lost=len(lost_seqs),
        lost_before_end=lost_before_end, duplicated=duplicated, out_of_order=out_of_order,
        keys_out_of_order=keys_out_of_order, phantom=phantom, mismatched=mismatched,
        first_lost_seqs=lost_seqs[:10].tolist(), first_duplicated_seqs=dup_seqs,
        recovery_s=recovery)
