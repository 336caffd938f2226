"""The exactly-once Delta Lake sink (cdc_notebook.sinks.delta): mirror and changelog equal the
source after inserts, updates (unchanged TOAST values), key moves, deletes and TRUNCATE, on both
plugins, in one partition and in three; a second run on the same slot resumes without
duplicating anything; the slot is never acknowledged past what Delta holds."""

from __future__ import annotations

import pytest

from cdc_notebook import CDCStream
from cdc_notebook.connection.lsn import parse_lsn

from ._sink_helpers import (
    Reference,
    assert_changelog_exact,
    assert_mirror_equals_select,
    create_tables,
    scripted_workload,
)
from .pgutil import drop_slot

deltalake = pytest.importorskip("deltalake")


def _run_sink(pg, schema, slot, plugin, directory, partitions):
    from cdc_notebook.sinks.delta import DeltaSink

    stream = CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot, plugin=plugin,
                       acknowledge="durable")
    try:
        sink = DeltaSink(stream, directory, changelog=True, partitions=partitions,
                         max_rows=300, interval=0.2)
        report = sink.run(once=True, timeout=120)
        return report, sink
    finally:
        stream.close()


def _confirmed(pg, slot):
    with pg.connect() as conn:
        text = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                            "WHERE slot_name = %s", (slot,)).fetchone()[0]
    return parse_lsn(text)


@pytest.mark.parametrize("partitions", [1, 3], ids=["1part", "3parts"])
@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_mirror_and_changelog_equal_the_source(pg, unique_name, tmp_path, plugin, partitions,
                                              monkeypatch):
    from cdc_notebook.sinks import writer

    # micro-batches that start with inserts append them in a commit of their own, and those
    # with many unchanged TOAST values are committed in pieces
    monkeypatch.setattr(writer, "LEADING_INSERTS", 20)
    monkeypatch.setattr(writer, "TOAST_LOOKUP_ROWS", 7)
    schema = unique_name("sink")
    slot = f"cdcnb_{schema}"[:63]
    create_tables(pg, schema)
    directory = tmp_path / "lake"
    reference = Reference(pg, f"{schema}.*", plugin)
    # A permanent slot made before the changes (the sink's first run creates it otherwise).
    CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot, plugin=plugin).close()
    try:
        scripted_workload(pg, schema, 0)
        first, sink = _run_sink(pg, schema, slot, plugin, directory, partitions)
        assert first.committed > 0 and first.mirror_commits >= 2  # several micro-batches
        assert _confirmed(pg, slot) <= sink.acknowledged
        for table in ("a", "b"):
            assert_mirror_equals_select(pg, directory, f"{schema}.{table}")
        scripted_workload(pg, schema, 1)  # TRUNCATE of b in this round
        second, sink = _run_sink(pg, schema, slot, plugin, directory, partitions)
        # the second run resumed where the Delta tables were: nothing of round 0 again
        assert 0 < second.committed < first.committed + 2_000
        assert all(pos > (0, 0) for pos in sink.resumed.values())
        counts = {}
        for table in ("a", "b"):
            counts[table] = assert_mirror_equals_select(pg, directory, f"{schema}.{table}")
        assert counts["a"] > 0 and counts["b"] == 30  # b was truncated, then refilled
        truth = reference.changes({"a": "id", "b": "k1"})
        for table, key in (("a", "id"), ("b", "k1")):
            logged = assert_changelog_exact(directory, f"{schema}.{table}", key,
                                            truth[f"{schema}.{table}"])
            assert logged > 0
        truncates = [k for k in truth[f"{schema}.b"] if k[2] == "t"]
        assert len(truncates) == 1
        if partitions > 1:
            data = deltalake.DeltaTable(str(directory / f"{schema}.a")).to_pyarrow_table()
            assert set(data.column("_cdc_partition").to_pylist()) == set(range(partitions))
    finally:
        drop_slot(pg, slot)
