"""The sink's change logic without a server (cdc_notebook.sinks.changes): the net effect of a
micro-batch on a keyed mirror, the key-hash split (deletes by their old key), positions and
the Delta types."""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pytest

from cdc_notebook.decode.typespec import change_batch_schema
from cdc_notebook.sinks.changes import (
    after_position,
    delta_type,
    net_effect,
    partition_rows,
    split_partitions,
    to_delta,
    truncate_row,
)
from cdc_notebook.stream.partition import partition_of

FIELDS = [pa.field("id", pa.int64()), pa.field("v", pa.utf8())]
SCHEMA = change_batch_schema(FIELDS)


def _changes(rows):
    """rows: (op, id, v, before_id, toast, end, ordinal)"""
    cols = {n: [] for n in SCHEMA.names}
    for op, id_, v, before, toast, end, ordinal in rows:
        cols["id"].append(id_)
        cols["v"].append(v)
        cols["_cdc_op"].append(op)
        cols["_cdc_lsn"].append(end)
        cols["_cdc_commit_lsn"].append(end)
        cols["_cdc_end_lsn"].append(end)
        cols["_cdc_commit_ts"].append(None)
        cols["_cdc_xid"].append(1)
        cols["_cdc_ordinal"].append(ordinal)
        cols["_cdc_before"].append(None if before is None else {"id": before, "v": None})
        cols["_cdc_unchanged_toast"].append(toast)
        cols["_cdc_unrepresentable"].append([])
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def test_net_effect_folds_moves_deletes_and_reinserts():
    changes = _changes([
        ("c", 1, "a", None, [], 10, 1),
        ("c", 2, "b", None, [], 10, 2),
        ("u", 3, "b2", 2, [], 20, 1),      # key move 2 -> 3
        ("d", None, None, 1, [], 20, 2),   # delete 1
        ("c", 1, "a again", None, [], 30, 1),
        ("u", 4, "x", 9, [], 30, 2),       # 9 (in the mirror) moves to 4
        ("d", None, None, 7, [], 30, 3),   # 7 is in the mirror
    ])
    effect = net_effect(changes, ["id"])
    assert not effect.truncated and not effect.insert_only
    assert sorted(effect.upserts.to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "v": "a again"}, {"id": 3, "v": "b2"}, {"id": 4, "v": "x"}]
    assert sorted(effect.deletes.column("id").to_pylist()) == [2, 7, 9]


def test_net_effect_truncate_and_inserts_only():
    changes = _changes([("c", 1, "a", None, [], 10, 1), ("c", 2, "b", None, [], 10, 2)])
    assert net_effect(changes, ["id"]).insert_only
    t = pa.Table.from_batches([truncate_row(SCHEMA, lsn=15, end_lsn=20, ordinal=1)])
    after = _changes([("c", 5, "e", None, [], 20, 2)])
    effect = net_effect(pa.concat_tables([changes, t, after]), ["id"])
    assert effect.truncated and effect.upserts.to_pylist() == [{"id": 5, "v": "e"}]


def test_unchanged_toast_from_the_batch_and_from_the_mirror():
    changes = _changes([
        ("c", 1, "big", None, [], 10, 1),
        ("u", 1, None, None, ["v"], 20, 1),    # previous version in this batch
        ("u", 8, None, 7, ["v"], 20, 2),       # key move 7 -> 8: the mirror's row 7
        ("u", 9, None, None, ["v"], 20, 3),    # the mirror's row 9
        ("u", 11, None, None, ["v"], 20, 4),   # nowhere: null, counted
    ])
    mirror = pa.table({"id": pa.array([7, 9], pa.int64()), "v": ["seven", "nine"]})

    def lookup(keys, names, columns):
        return mirror.filter(pa.compute.is_in(mirror.column("id"), keys.column("id")))

    effect = net_effect(changes, ["id"], lookup)
    got = {r["id"]: r["v"] for r in effect.upserts.to_pylist()}
    assert got == {1: "big", 8: "seven", 9: "nine", 11: None}
    assert effect.unresolved_toast == 1


def test_split_sends_deletes_and_old_keys_by_their_before_image():
    rows = [("c", i, f"v{i}", None, [], 10, i) for i in range(1, 41)]
    rows += [("d", None, None, i, [], 20, i) for i in range(1, 11)]
    rows += [("u", 100 + i, "moved", i, [], 30, i) for i in range(11, 21)]
    changes = _changes(rows)
    n = 4
    mirror, log = split_partitions(changes, ["id"], n)
    assert sum(p.num_rows for p in log) == changes.num_rows  # every change logged once
    key_part = {i: int(partition_of(pa.table({"id": pa.array([i], pa.int64())}), ["id"], n)[0])
                for i in list(range(1, 41)) + [100 + i for i in range(11, 21)]}
    for p, part in enumerate(mirror):
        for row in part.to_pylist():
            key = row["id"] if row["_cdc_op"] in "cu" else row["_cdc_before"]["id"]
            assert key_part[key] == p, row
    # a move across partitions: an upsert in the new one, a delete of the old key in the old one
    moved_across = [i for i in range(11, 21) if key_part[i] != key_part[100 + i]]
    assert moved_across
    for i in moved_across:
        old = mirror[key_part[i]].to_pylist()
        assert any(r["_cdc_op"] == "d" and r["_cdc_before"]["id"] == i for r in old)
    # a delete's after-image key is null: hashing it would put every delete in one partition
    after, before = partition_rows(changes, ["id"], n)
    deletes = np.asarray(changes.column("_cdc_op").to_pylist()) == "d"
    assert len(set(after[deletes].tolist())) == 1
    assert len(set(before[deletes].tolist())) > 1
    # the same partitions as the readers' (HashPartitioner.split on a change batch)
    from cdc_notebook import HashPartitioner

    theirs = HashPartitioner(["id"], n).split(changes.to_batches(max_chunksize=10**6)[0])
    for mine, other in zip(mirror, theirs, strict=True):
        assert mine.column("_cdc_ordinal").to_pylist() == other.column("_cdc_ordinal").to_pylist()
        assert mine.column("_cdc_op").to_pylist() == other.column("_cdc_op").to_pylist()


def test_after_position_keeps_later_rows_and_snapshot_rows():
    changes = _changes([("c", i, "x", None, [], 10 + i // 3, i % 3 + 1) for i in range(9)])
    kept = after_position(changes, (11, 2))
    assert [(r["_cdc_end_lsn"], r["_cdc_ordinal"]) for r in kept.to_pylist()] == [
        (11, 3), (12, 1), (12, 2), (12, 3)]
    assert after_position(changes, (0, 0)) is changes


@pytest.mark.parametrize("arrow_type, value, expected", [
    (pa.uint32(), 4_000_000_000, 4_000_000_000),
    (pa.uint64(), 2**62, 2**62),
    (pa.time64("us"), datetime.time(1, 2, 3, 4), 3_723_000_004),
    (pa.binary(16), b"0123456789abcdef", b"0123456789abcdef"),
    (pa.month_day_nano_interval(), pa.MonthDayNano([1, 2, 3]),
     {"months": 1, "days": 2, "nanoseconds": 3}),
    (pa.decimal128(10, 2), decimal.Decimal("1.50"), decimal.Decimal("1.50")),
])
def test_delta_types(arrow_type, value, expected):
    table = pa.table({"c": pa.array([value, None], arrow_type)})
    out = to_delta(table)
    assert out.schema.field("c").type == delta_type(arrow_type)
    assert out.column("c").to_pylist() == [expected, None]
    nested = pa.table({"s": pa.array([{"c": value}, None], pa.struct([("c", arrow_type)]))})
    assert to_delta(nested).column("s").to_pylist() == [{"c": expected}, None]


def test_a_transaction_split_across_commits_resumes_at_the_right_row(tmp_path):
    """A transaction bigger than a micro-batch is committed in pieces; the marker's ordinal
    makes a restart write exactly the rest of it (an end-LSN-only marker would skip it)."""
    deltalake = pytest.importorskip("deltalake")
    from cdc_notebook.sinks.writer import DeltaLocation, PartitionWriter, TableSpec, read_marker

    location = DeltaLocation(tmp_path)
    spec = TableSpec.of("s.t", "s", "t", ("id",))
    big = _changes([("c", i, f"v{i}", None, [], 500, i) for i in range(1, 1001)])
    first = PartitionWriter(location, "slot", changelog=True)
    first.apply(spec, big.slice(0, 400))  # the first piece, then the process dies
    mirror = deltalake.DeltaTable(location.uri(spec))
    assert read_marker(mirror, ("slot:s.t", "slot:s.t#ordinal")) == (500, 400)
    again = PartitionWriter(location, "slot", changelog=True)  # restarted: all of it again
    stats = again.apply(spec, big)
    assert stats.skipped == 400
    log = deltalake.DeltaTable(location.uri(spec, changelog=True)).to_pyarrow_table()
    assert sorted(log.column("_cdc_ordinal").to_pylist()) == list(range(1, 1001))
    assert deltalake.DeltaTable(location.uri(spec)).to_pyarrow_table().num_rows == 1000
    assert again.apply(spec, big).skipped == 1000  # and nothing a third time
