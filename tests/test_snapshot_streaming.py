"""The initial snapshot streams to the reader that iterates it (issue 13, finding 5): read by
the stream thread after the first ``batches()`` call, so that reader counts as active and the
snapshot meets backpressure instead of being spilled whole to disk before anyone reads it."""

from __future__ import annotations

import pytest

from cdc_notebook import CDCStream


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_snapshot_flows_into_the_reader_without_spilling(pg, unique_name, plugin):
    schema = unique_name("snapflow")
    rows = 600_000
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id bigint PRIMARY KEY, pad text)")
        conn.execute(f"INSERT INTO {schema}.t SELECT g, repeat('s', 60) FROM "
                     f"generate_series(1, {rows}) g")
    with CDCStream(pg.conninfo(), f"{schema}.t", plugin=plugin, temporary=True, snapshot=True,
                   memory_limit=8 << 20) as stream:
        reader = stream[f"{schema}.t"]
        seen, most_spilled = 0, 0
        for batch in reader.batches(timeout=120):
            seen += sum(1 for op in batch.column("_cdc_op").to_pylist() if op == "r")
            most_spilled = max(most_spilled, reader.spilled_bytes)
        assert seen == rows
        assert most_spilled == 0, f"{most_spilled >> 20} MiB of the snapshot went to disk"
