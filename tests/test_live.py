"""Live frames on hand-built batches of the change-batch schema (docs/decisions.md).

A reference model (a dict per key, in plain Python: test code) replays the same changes; the
mirror must equal it. The real-stream acceptance tests are in test_live_stream.py.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from cdc_notebook.decode.events import (
    Begin,
    ChangeBatch,
    Commit,
    RelationSchema,
    StreamAbort,
    Truncate,
)
from cdc_notebook.errors import MirrorUnavailable
from cdc_notebook.live.tables import (
    LiveFrames,
    LiveTable,
    fold_changes,
)

TABLE_FIELDS = [
    pa.field("id", pa.int64()),  # nullable: a delete's after-image is null
    pa.field("v", pa.int64()),
    pa.field("doc", pa.string(), metadata={"pg_type": "text"}),
    pa.field("u", pa.uuid()),
]


def contract_schema(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema([
        *fields,
        pa.field("_cdc_op", pa.string()),
        pa.field("_cdc_lsn", pa.uint64()),
        pa.field("_cdc_commit_lsn", pa.uint64()),
        pa.field("_cdc_end_lsn", pa.uint64()),
        pa.field("_cdc_commit_ts", pa.timestamp("us", tz="UTC")),
        pa.field("_cdc_xid", pa.uint32()),
        pa.field("_cdc_ordinal", pa.uint64()),
        pa.field("_cdc_before", pa.struct(fields)),
        pa.field("_cdc_unchanged_toast", pa.list_(pa.string())),
    ])


SCHEMA = contract_schema(TABLE_FIELDS)


def _storage_type(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):
        return t.storage_type
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_storage_type(f.type)) for f in t])
    return t


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """``from_pylist`` cannot build extension arrays: build the storage, then cast."""
    return pa.schema([f.with_type(_storage_type(f.type)) for f in schema],
                     metadata=schema.metadata)


class Transactions:
    """Builds batches the way a decoder would: one transaction, consecutive ordinals."""

    def __init__(self, schema: pa.Schema = SCHEMA, start_lsn: int = 0x1000000) -> None:
        self.schema = schema
        self.lsn = start_lsn
        self.xid = 700

    def batch(self, changes: list[dict[str, Any]], *, snapshot_lsn: int | None = None
              ) -> pa.RecordBatch:
        """``changes``: dicts with 'op', the after-image columns, optional 'before', 'toast'."""
        self.xid += 1
        rows = []
        for ordinal, change in enumerate(changes, start=1):
            self.lsn += 40
            row = {k: v for k, v in change.items() if k not in ("op", "before", "toast")}
            if isinstance(row.get("u"), uuid.UUID):
                row["u"] = row["u"].bytes
            before = change.get("before")
            if before is not None and isinstance(before.get("u"), uuid.UUID):
                before = {**before, "u": before["u"].bytes}
            row.update({
                "_cdc_op": change["op"],
                "_cdc_lsn": snapshot_lsn if snapshot_lsn is not None else self.lsn,
                "_cdc_ordinal": ordinal,
                "_cdc_xid": self.xid,
                "_cdc_before": before,
                "_cdc_unchanged_toast": change.get("toast", []),
            })
            rows.append(row)
        self.lsn += 40
        end = snapshot_lsn if snapshot_lsn is not None else self.lsn + 16
        for row in rows:
            row["_cdc_commit_lsn"] = end - 16 if snapshot_lsn is None else end
            row["_cdc_end_lsn"] = end
            row["_cdc_commit_ts"] = 1_700_000_000_000_000
        self.lsn = end
        return pa.RecordBatch.from_pylist(rows, schema=storage_schema(self.schema)) \
            .cast(self.schema)


class Model:
    """The table as a dict, applying changes row by row (the test's oracle)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def apply(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            op = change["op"]
            after = {k: change.get(k) for k in ("id", "v", "doc", "u")}
            if op in ("r", "c"):
                self.rows[after["id"]] = after
            elif op == "u":
                old_key = change["before"]["id"] if change.get("before") else after["id"]
                previous = self.rows.pop(old_key)
                for column in change.get("toast", []):
                    after[column] = previous[column]
                self.rows[after["id"]] = after
            elif op == "d":
                del self.rows[change["before"]["id"]]

    def frame(self) -> pl.DataFrame:
        rows = sorted(self.rows.values(), key=lambda r: r["id"])
        return pl.DataFrame(
            {"id": [r["id"] for r in rows], "v": [r["v"] for r in rows],
             "doc": [r["doc"] for r in rows],
             "u": [str(r["u"]) if r["u"] is not None else None for r in rows]},
            schema={"id": pl.Int64, "v": pl.Int64, "doc": pl.String, "u": pl.String})


def random_changes(rng: random.Random, model_keys: set[int], count: int,
                   next_key: list[int]) -> list[dict[str, Any]]:
    """Random inserts, updates (some changing the key, some with unchanged TOAST) and deletes,
    valid against ``model_keys`` (updated in place)."""
    changes: list[dict[str, Any]] = []
    for _ in range(count):
        roll = rng.random()
        if not model_keys or roll < 0.35:
            key = next_key[0]
            next_key[0] += 1
            model_keys.add(key)
            changes.append({"op": "c", "id": key, "v": rng.randrange(1000),
                            "doc": f"doc-{rng.randrange(10**6)}", "u": uuid.uuid4()})
            continue
        key = rng.choice(sorted(model_keys))
        if roll < 0.75:
            new_key = key
            before = None
            if rng.random() < 0.2:
                new_key = next_key[0]
                next_key[0] += 1
                model_keys.discard(key)
                model_keys.add(new_key)
                before = {"id": key}
            toast = ["doc"] if rng.random() < 0.5 else []
            changes.append({"op": "u", "id": new_key, "v": rng.randrange(1000),
                            "doc": None if toast else f"new-{rng.randrange(10**6)}",
                            "u": uuid.uuid4(), "before": before, "toast": toast})
        else:
            model_keys.discard(key)
            changes.append({"op": "d", "id": None, "v": None, "doc": None, "u": None,
                            "before": {"id": key}})
    return changes


def sorted_mirror(live: LiveTable) -> pl.DataFrame:
    return live.mirror().sort("id")


# --------------------------------------------------------------------------- basics


def test_insert_update_delete_and_key_change() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 10, "doc": "a", "u": u1},
                         {"op": "c", "id": 2, "v": 20, "doc": "b", "u": u2},
                         {"op": "c", "id": 3, "v": 30, "doc": "c", "u": None}]))
    live.apply(tx.batch([{"op": "u", "id": 1, "v": 11, "doc": "a2", "u": u1},
                         {"op": "u", "id": 20, "v": 21, "doc": "b", "u": u2,
                          "before": {"id": 2}},
                         {"op": "d", "before": {"id": 3}}]))
    frame = sorted_mirror(live)
    assert frame.to_dicts() == [
        {"id": 1, "v": 11, "doc": "a2", "u": str(u1)},
        {"id": 20, "v": 21, "doc": "b", "u": str(u2)},
    ]
    assert live.state().lsn == tx.lsn
    assert live.changelog().height == 6
    assert live.changelog().get_column("_cdc_op").to_list() == ["c", "c", "c", "u", "u", "d"]


def test_unchanged_toast_kept_from_previous_version_in_mirror_and_within_one_fold() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600)
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "big text", "u": None}]))
    live.refresh()
    # One fold: a chain of unchanged-TOAST updates, one of which moves the key.
    live.apply(tx.batch([{"op": "u", "id": 1, "v": 2, "doc": None, "toast": ["doc"]}]))
    live.apply(tx.batch([{"op": "u", "id": 5, "v": 3, "doc": None, "toast": ["doc"],
                          "before": {"id": 1}}]))
    live.apply(tx.batch([{"op": "u", "id": 5, "v": 4, "doc": None, "toast": ["doc"]},
                         {"op": "c", "id": 9, "v": 9, "doc": "other", "u": None},
                         {"op": "u", "id": 9, "v": 10, "doc": None, "toast": ["doc"]}]))
    assert sorted_mirror(live).select("id", "v", "doc").to_dicts() == [
        {"id": 5, "v": 4, "doc": "big text"}, {"id": 9, "v": 10, "doc": "other"}]
    assert live.stats.unresolved_toast == 0


def test_long_unchanged_toast_chain_is_resolved() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600)
    live.apply(tx.batch([{"op": "c", "id": 0, "v": 0, "doc": "origin", "u": None}]))
    changes = []
    key = 0
    for i in range(1, 300):
        new_key = key + 1 if i % 7 == 0 else key
        changes.append({"op": "u", "id": new_key, "v": i, "doc": None, "toast": ["doc"],
                        "before": {"id": key} if new_key != key else None})
        key = new_key
    live.apply(tx.batch(changes))
    assert sorted_mirror(live).select("id", "v", "doc").to_dicts() == [
        {"id": key, "v": 299, "doc": "origin"}]


def test_unknown_previous_version_leaves_null_and_is_counted() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "u", "id": 4, "v": 1, "doc": None, "toast": ["doc"]}]))
    assert sorted_mirror(live).select("id", "doc").to_dicts() == [{"id": 4, "doc": None}]
    assert live.stats.unresolved_toast == 1


def test_redelivery_is_skipped_by_the_high_water_mark() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    first = tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}])
    second = tx.batch([{"op": "u", "id": 1, "v": 2, "doc": "y", "u": None},
                       {"op": "c", "id": 2, "v": 2, "doc": "z", "u": None}])
    third = tx.batch([{"op": "d", "before": {"id": 1}}])
    for batch in (first, second, third):
        live.apply(batch)
    before = live.mirror()
    # The server resends from the start; a partial transaction replay too.
    assert live.apply(first) == 0
    assert live.apply(second.slice(0, 1)) == 0
    assert live.apply(second) == 0
    assert live.apply(third) == 0
    assert live.mirror().equals(before)
    assert live.stats.rows_skipped == 5
    assert live.changelog().height == 4


def test_snapshot_rows_then_changes_and_a_second_snapshot_chunk() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    consistent = 0x500
    chunk1 = tx.batch([{"op": "r", "id": i, "v": i, "doc": "s", "u": None} for i in range(5)],
                      snapshot_lsn=consistent)
    chunk2 = tx.batch([{"op": "r", "id": i, "v": i, "doc": "s", "u": None}
                       for i in range(5, 8)], snapshot_lsn=consistent)
    live.apply(chunk1)
    live.apply(chunk2)
    live.apply(tx.batch([{"op": "d", "before": {"id": 0}}]))
    # A stale snapshot chunk delivered again after changes is dropped.
    assert live.apply(chunk1) == 0
    assert sorted_mirror(live).get_column("id").to_list() == [1, 2, 3, 4, 5, 6, 7]
    assert live.changelog().height == 1  # snapshot rows are not changes


def test_uncommitted_rows_wait_for_commit_and_abort_drops_them() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}]))
    lsn_before = live.state().lsn
    open_batch = tx.batch([{"op": "c", "id": 2, "v": 2, "doc": "y", "u": None}])
    live.apply(open_batch, committed=False)
    state = live.state()
    assert state.frame.get_column("id").to_list() == [1]
    assert state.lsn == lsn_before and state.pending_rows == 1
    live.commit(tx.lsn)
    assert sorted_mirror(live).get_column("id").to_list() == [1, 2]
    live.apply(tx.batch([{"op": "c", "id": 3, "v": 3, "doc": "z", "u": None}]),
               committed=False)
    assert live.abort() == 1
    assert sorted_mirror(live).get_column("id").to_list() == [1, 2]


def test_truncate_applies_once_in_stream_order() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600)
    b1 = tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}])
    live.apply(b1)
    truncate_lsn = tx.lsn + 8
    tx.lsn += 16
    assert live.truncate(truncate_lsn)
    b2 = tx.batch([{"op": "c", "id": 2, "v": 2, "doc": "y", "u": None}])
    live.apply(b2)
    assert sorted_mirror(live).get_column("id").to_list() == [2]
    # Redelivered: the truncate and both batches are skipped.
    assert not live.truncate(truncate_lsn)
    live.apply(b1)
    live.apply(b2)
    assert sorted_mirror(live).get_column("id").to_list() == [2]
    assert live.stats.truncates == 1 and live.stats.truncates_skipped == 1


def test_fold_cadence_is_independent_of_ingest_rate() -> None:
    now = [0.0]
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=0.5, clock=lambda: now[0])
    for i in range(200):  # 200 batches within one interval: no fold
        live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": None}]))
    assert live.stats.folds == 0
    now[0] = 0.6
    live.apply(tx.batch([{"op": "c", "id": 1000, "v": 0, "doc": "x", "u": None}]))
    assert live.stats.folds == 1 and live.stats.rows_folded == 201
    for i in range(300, 310):
        live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": None}]))
    assert live.stats.folds == 1
    assert live.mirror().height == 211  # a read folds at once
    assert live.stats.folds == 2


def test_pending_rows_bound_forces_a_fold() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600, max_pending_rows=50,
                     clock=lambda: 0.0)
    for i in range(12):
        live.apply(tx.batch([{"op": "c", "id": i * 10 + j, "v": j, "doc": "x", "u": None}
                             for j in range(10)]))
    assert live.stats.folds == 2  # at 50 and at 100 pending rows


def test_changelog_is_bounded() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], changelog_rows=25)
    for i in range(10):
        live.apply(tx.batch([{"op": "c", "id": i * 10 + j, "v": j, "doc": "x", "u": None}
                             for j in range(10)]))
    log = live.changelog()
    assert log.height == 25
    assert log.get_column("id").to_list() == list(range(75, 100))
    assert live.changelog(5).get_column("id").to_list() == list(range(95, 100))


def test_version_moves_only_on_changes() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    v0 = live.version
    batch = tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}])
    live.apply(batch)
    v1 = live.version
    assert v1 > v0
    live.mirror()
    live.apply(batch)  # a duplicate changes nothing
    assert live.version == v1


def test_keyless_table_keeps_a_changelog_and_says_why_there_is_no_mirror() -> None:
    tx = Transactions()
    live = LiveTable("public.nokey", SCHEMA, [])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}]))
    assert live.changelog().height == 1
    with pytest.raises(MirrorUnavailable, match="primary key"):
        live.mirror()


# --------------------------------------------------------------------------- schema changes


def test_schema_change_add_drop_and_cast() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 5, "doc": "x", "u": None}]))
    fields = [TABLE_FIELDS[0], pa.field("v", pa.string()), TABLE_FIELDS[3],
              pa.field("extra", pa.int32())]
    new_schema = contract_schema(fields)
    change = live.change_schema(new_schema, schema_version=2)
    assert change.added == ("extra",) and change.dropped == ("doc",)
    assert change.cast == ("v",) and change.rebuild == ()
    assert "added extra" in change.describe() and "dropped doc" in change.describe()
    tx.schema = new_schema
    live.apply(tx.batch([{"op": "c", "id": 2, "v": "seven", "u": None, "extra": 3}]))
    assert sorted_mirror(live).to_dicts() == [
        {"id": 1, "v": "5", "u": None, "extra": None},
        {"id": 2, "v": "seven", "u": None, "extra": 3}]
    assert live.schema_changes == [change]


def test_a_schema_change_where_every_column_is_new_keeps_the_mirrors_height() -> None:
    """Torture finding (issue 12, an extra all-NULL row): when no column of the new schema
    continues an old one, the mirror was rebuilt from literals alone, which polars broadcasts
    to ONE row: an empty mirror gained an all-NULL row, a full one collapsed to one row."""
    other = [pa.field("k", pa.int64()), pa.field("w", pa.string())]
    for rows in (0, 3):
        tx = Transactions()
        live = LiveTable("public.t", SCHEMA, ["id"])
        if rows:
            live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": None}
                                 for i in range(rows)]))
        live.change_schema(contract_schema(other), ["k"], column_ids=(7, 8))
        frame = live.mirror()
        assert frame.columns == ["k", "w"]
        assert frame.height == rows
        assert frame.null_count().row(0) == (rows, rows)


def test_retype_that_does_not_cast_marks_the_frame_for_rebuild() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 5, "doc": "not a number", "u": None}]))
    fields = [TABLE_FIELDS[0], TABLE_FIELDS[1], pa.field("doc", pa.int64()), TABLE_FIELDS[3]]
    change = live.change_schema(contract_schema(fields))
    assert change.rebuild == ("doc",) and "rebuild" in change.describe()
    assert live.needs_rebuild == ("doc",)
    live.rebuild(pa.table({"id": [1], "v": [5], "doc": [42], "u": pa.array([None], pa.uuid())}),
                 lsn=tx.lsn + 100)
    assert live.needs_rebuild == ()
    assert live.mirror().to_dicts() == [{"id": 1, "v": 5, "doc": 42, "u": None}]


def test_a_batch_with_a_new_schema_changes_the_schema_by_itself() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 5, "doc": "x", "u": None}]))
    tx.schema = contract_schema([*TABLE_FIELDS, pa.field("n", pa.float64())])
    live.apply(tx.batch([{"op": "c", "id": 2, "v": 6, "doc": "y", "u": None, "n": 1.5}]))
    assert sorted_mirror(live).get_column("n").to_list() == [None, 1.5]
    assert live.schema_changes[-1].added == ("n",)


# --------------------------------------------------------------------------- random model


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_match_the_model_also_when_delivered_twice(seed: int) -> None:
    rng = random.Random(seed)
    tx = Transactions()
    model = Model()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600, clock=lambda: 0.0)
    keys: set[int] = set()
    next_key = [1]
    batches = []
    for _ in range(120):
        changes = random_changes(rng, keys, rng.randrange(1, 40), next_key)
        model.apply(changes)
        batches.append(tx.batch(changes))
    for i, batch in enumerate(batches):
        live.apply(batch)
        if rng.random() < 0.15:
            live.refresh()  # folds at arbitrary points
        if i % 25 == 24:
            # A reconnect: the server resends from an earlier transaction.
            for old in batches[max(0, i - rng.randrange(1, 10)):i + 1]:
                live.apply(old)
    assert sorted_mirror(live).equals(model.frame())
    assert live.stats.unresolved_toast == 0
    for batch in batches:  # everything delivered again
        live.apply(batch)
    assert sorted_mirror(live).equals(model.frame())


def test_composite_key_fold_with_key_change_delete_and_unchanged_toast() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id", "u"], fold_interval=3600, clock=lambda: 0.0)
    u1, u2, u3, u4, u9 = (uuid.uuid4() for _ in range(5))
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "a", "u": u1},
                         {"op": "c", "id": 2, "v": 1, "doc": "b", "u": u2},
                         {"op": "c", "id": 3, "v": 1, "doc": "c", "u": u3}]))
    live.refresh()
    # The previous versions are in the mirror: found by the whole composite key.
    live.apply(tx.batch([{"op": "u", "id": 1, "v": 2, "doc": None, "u": u1, "toast": ["doc"]},
                         {"op": "u", "id": 2, "v": 2, "doc": None, "u": u9, "toast": ["doc"],
                          "before": {"id": 2, "u": u2}},
                         {"op": "d", "before": {"id": 3, "u": u3}},
                         {"op": "c", "id": 3, "v": 3, "doc": "d", "u": u4}]))
    assert sorted_mirror(live).sort("id", "u").to_dicts() == [
        {"id": 1, "v": 2, "doc": "a", "u": str(u1)},
        {"id": 2, "v": 2, "doc": "b", "u": str(u9)},
        {"id": 3, "v": 3, "doc": "d", "u": str(u4)}]
    assert live.stats.unresolved_toast == 0


def test_many_small_folds_keep_the_mirror_in_a_bounded_number_of_chunks() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600, clock=lambda: 0.0)
    for i in range(300):
        live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": None},
                             {"op": "u", "id": i // 2, "v": -i, "doc": "y", "u": None}]))
        live.refresh()
    frame = live.mirror()
    assert frame.n_chunks() <= 65
    assert frame.sort("id").get_column("id").to_list() == list(range(300))
    # Row i < 150 was last updated by batch 2i + 1; the others were never updated.
    expected = [-(2 * i + 1) if i < 150 else i for i in range(300)]
    assert frame.sort("id").get_column("v").to_list() == expected


def test_fold_changes_is_pure() -> None:
    tx = Transactions()
    mirror = LiveTable("public.t", SCHEMA, ["id"]).mirror()
    from cdc_notebook.live.polars_types import arrow_to_polars
    changes = arrow_to_polars(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}]))
    out, unresolved = fold_changes(mirror, changes, ["id"])
    assert mirror.height == 0 and out.height == 1 and unresolved == 0
    assert "_cdc_op" in changes.columns and "__cdc_seq__" not in changes.columns


# --------------------------------------------------------------------------- views, checkpoint


def test_partitioned_views_cover_the_mirror_disjointly() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": uuid.uuid4()}
                         for i in range(100)]))
    seen: list[pa.Table] = []

    def by_modulo(keys: pa.Table, key_columns: Any, count: int) -> np.ndarray:
        seen.append(keys)
        return keys.column("id").to_numpy() % count

    parts = live.partitions(4, by_modulo)
    assert seen[0].schema.field("id").type == pa.int64()
    assert sorted(parts) == [0, 1, 2, 3]
    assert sum(p.height for p in parts.values()) == 100
    for number, part in parts.items():
        assert (part.get_column("id") % 4 == number).all()


def test_default_partitions_are_the_routers() -> None:
    from cdc_notebook.stream.partition import HashPartitioner
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["u", "id"])
    batch = tx.batch([{"op": "c", "id": i, "v": i, "doc": "x", "u": uuid.uuid4()}
                      for i in range(200)])
    live.apply(batch)
    parts = live.partitions(3)
    routed = HashPartitioner(["u", "id"], 3).split(batch)
    for number in range(3):
        assert sorted(parts[number].get_column("id").to_list()) == \
            sorted(routed[number].column("id").to_pylist())
    assert min(p.height for p in parts.values()) > 0


def test_checkpoint_and_resume_without_a_new_snapshot(tmp_path: Any) -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    batches = [tx.batch([{"op": "c", "id": i, "v": i, "doc": f"d{i}", "u": uuid.uuid4()}])
               for i in range(5)]
    for batch in batches[:3]:
        live.apply(batch)
    path = tmp_path / "public.t.parquet"
    lsn = live.save(path)
    assert lsn == live.state().lsn
    resumed = LiveTable.load(path)
    assert resumed.state().lsn == lsn
    assert resumed.mirror().sort("id").equals(live.mirror().sort("id"))
    assert resumed.arrow_schema.field("doc").metadata == {b"pg_type": b"text"}
    # The slot resends from before the checkpoint; what was saved is skipped.
    for batch in batches:
        resumed.apply(batch)
    assert resumed.mirror().sort("id").get_column("id").to_list() == [0, 1, 2, 3, 4]
    assert resumed.stats.rows_skipped == 3
    assert resumed.to_arrow().schema.field("u").type == pa.uuid()


def test_pandas_on_request() -> None:
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    u = uuid.uuid4()
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": u}]))
    assert live.to_pandas().to_dict("records") == [{"id": 1, "v": 1, "doc": "x", "u": str(u)}]


# --------------------------------------------------------------------------- the event sink


def test_live_frames_handle_reader_events() -> None:
    tx = Transactions()
    frames = LiveFrames()
    rel = RelationSchema(16384, 1, "public", "t", "d", ("id",), SCHEMA)
    frames.handle(rel)
    frames.handle(Begin(xid=900, commit_lsn=0, end_lsn=0, commit_ts=0))
    batch = tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}])
    frames.handle(ChangeBatch(16384, 1, "public", "t", 900, batch))
    assert frames["public.t"].mirror().height == 0  # not committed yet
    frames.handle(Commit(xid=900, commit_lsn=tx.lsn - 16, end_lsn=tx.lsn, commit_ts=0))
    assert frames["t"].mirror().height == 1
    assert frames.lsn == tx.lsn
    frames.handle(Begin(xid=901, commit_lsn=0, end_lsn=0, commit_ts=0))
    frames.handle(ChangeBatch(16384, 1, "public", "t", 901,
                              tx.batch([{"op": "c", "id": 2, "v": 1, "doc": "x", "u": None}])))
    frames.handle(StreamAbort(xid=901, subxid=901))
    tx.lsn += 100
    frames.handle(Truncate(xid=902, lsn=tx.lsn, tables=("public.t",), relids=(16384,)))
    assert frames["public.t"].mirror().height == 0
    frames.advance(tx.lsn + 1000)
    assert frames["public.t"].state().lsn == tx.lsn + 1000
    assert "public.t" in frames and len(frames) == 1


def test_a_reconnect_renumbering_schemas_is_not_a_schema_change() -> None:
    import pyarrow as pa

    from cdc_notebook.decode.events import RelationSchema
    from cdc_notebook.live.tables import LiveFrames

    frames = LiveFrames()
    schema = pa.schema([pa.field("id", pa.int64())])
    frames.handle(RelationSchema(1, 3, "public", "t", "d", ("id",), schema))
    live = frames["public.t"]
    frames.handle(RelationSchema(1, 1, "public", "t", "d", ("id",), schema))  # after a reconnect
    assert live.schema_changes == [] and live.schema_version == 1
    wider = schema.append(pa.field("note", pa.string()))
    frames.handle(RelationSchema(1, 2, "public", "t", "d", ("id",), wider))
    assert len(live.schema_changes) == 1 and live.schema_changes[0].added == ("note",)


# --------------------------------------------------------------------------- the fast path


def test_the_mirror_does_not_keep_the_batches_as_received_alive() -> None:
    """A fold copies what the mirror keeps: the batch's own buffers (a whole wal2arrow message,
    before-images and metadata included) are freed once the batch is folded and dropped."""
    import gc

    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"], fold_interval=3600, clock=lambda: 0.0)
    live.apply(tx.batch([{"op": "c", "id": 0, "v": 0, "doc": "x", "u": None}]))
    live.refresh()
    gc.collect()
    before = pa.total_allocated_bytes()
    big = "y" * 2000
    batch = tx.batch([{"op": "c", "id": i, "v": i, "doc": big, "u": uuid.uuid4()}
                      for i in range(1, 2001)])
    assert pa.total_allocated_bytes() - before > 4_000_000  # the batch, in pyarrow's pool
    live.apply(batch)
    live.refresh()
    assert live.mirror().height == 2001
    del batch
    live._changelog.clear()  # (the changelog keeps the newest batches as they came)
    gc.collect()
    assert pa.total_allocated_bytes() - before < 100_000


def test_op_letters_reads_the_operation_column_without_compute() -> None:
    from cdc_notebook.live.tables import op_letters

    ops = pa.array(["c", "u", "d", "r", "t", "u"])
    assert op_letters(ops) == b"cudrtu"
    assert op_letters(ops.slice(2, 3)) == b"drt"
    assert op_letters(ops.slice(6)) == b""
    assert op_letters(pa.array(["c", "uu"])) is None  # not one letter a row: compute instead
    assert op_letters(pa.chunked_array([ops])) is None


def test_chunks_are_merged_a_few_at_a_time() -> None:
    """Past the chunk bound, the smallest neighbours merge (no copy of the whole mirror)."""
    from cdc_notebook.live.tables import compact_chunks

    parts = [pl.DataFrame({"id": list(range(i * 10, i * 10 + i % 4)),
                           "s": [f"v{x}" for x in range(i * 10, i * 10 + i % 4)]},
                          schema={"id": pl.Int64, "s": pl.String}) for i in range(90)]
    frame = pl.concat(parts, rechunk=False)
    compacted = compact_chunks(frame, 48)
    assert compacted.equals(frame)
    lengths = compacted.to_series(0).chunk_lengths()
    assert len(lengths) <= 48 and 0 not in lengths
    assert max(lengths) < frame.height / 4  # merged locally, never into one chunk


def test_changelog_rows_and_types_survive_schema_changes() -> None:
    """The changelog keeps batches as they arrived and converts them when read: a schema
    change in the middle still reads as one frame, types converted (UUIDs as text)."""
    tx = Transactions()
    live = LiveTable("public.t", SCHEMA, ["id"])
    u = uuid.uuid4()
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "a", "u": u}]))
    wider = contract_schema([*TABLE_FIELDS, pa.field("extra", pa.int32())])
    tx2 = Transactions(wider, start_lsn=tx.lsn)
    live.apply(tx2.batch([{"op": "c", "id": 2, "v": 2, "doc": "b", "u": None, "extra": 7}]))
    log = live.changelog()
    assert log.get_column("id").to_list() == [1, 2]
    assert log.get_column("u").to_list() == [str(u), None]
    assert log.get_column("extra").to_list() == [None, 7]


def test_live_reader_bounds_the_queues_it_reads() -> None:
    from cdc_notebook.live.tables import LiveReader

    class Reader:
        memory_limit = 256 << 20
        key_columns = ("id",)
        schema = None

    class Stream:
        def __init__(self) -> None:
            self.readers = {"public.t": Reader()}

        def close(self) -> None:
            pass

    stream = Stream()
    reader = LiveReader(stream, queue_bytes=8 << 20)
    reader._bound_queue(stream.readers["public.t"])
    assert stream.readers["public.t"].memory_limit == 8 << 20
    reader.stop()
