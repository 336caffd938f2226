"""The key-hash partitioner: stable across processes, even spread, no per-row Python."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from cdc_notebook.stream.partition import HashPartitioner, key_hash, partition_of

SAMPLE = pa.record_batch({
    "id": pa.array([1, 2, 3, None, 2**62], pa.int64()),
    "name": pa.array(["a", "", "ünïcode", None, "x" * 300]),
    "amount": pa.array([Decimal("1.10"), None, Decimal("-3.00"), Decimal("0"), Decimal("9.99")],
                       pa.decimal128(12, 2)),
    "ref": pa.array([b"\x00" * 16, b"\x01" * 16, None, b"\xff" * 16, b"\x02" * 16],
                    pa.binary(16)),
    "flag": pa.array([True, False, None, True, False]),
    "ts": pa.array([0, 1, 2, 3, None], pa.timestamp("us", tz="UTC")),
})

_SCRIPT = """
import json, sys
import pyarrow as pa
sys.path.insert(0, {root!r})
from decimal import Decimal
from cdc_notebook.stream.partition import key_hash
from tests.test_partition import SAMPLE
print(json.dumps([int(x) for x in key_hash(SAMPLE, {cols!r})]))
"""


@pytest.mark.parametrize("cols", [["id"], ["name"], ["amount", "ref"], ["flag", "ts", "name"]])
def test_same_key_same_hash_in_another_process(cols: list[str]) -> None:
    import pathlib
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    here = [int(x) for x in key_hash(SAMPLE, cols)]
    for seed in ("0", "12345"):  # a different PYTHONHASHSEED must not matter
        out = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=root, cols=cols)],
                             capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"})
        assert json.loads(out.stdout) == here


def test_hash_is_a_pure_function_of_the_key_bytes() -> None:
    # Slicing, chunking or reordering rows does not change a row's hash.
    full = key_hash(SAMPLE, ["name", "id"])
    sliced = key_hash(SAMPLE.slice(2), ["name", "id"])
    assert list(sliced) == list(full[2:])
    table = pa.Table.from_batches([SAMPLE.slice(0, 2), SAMPLE.slice(2)])
    assert list(key_hash(table, ["name", "id"])) == list(full)
    # Column order matters (no XOR), and distinct values give distinct hashes here.
    a = pa.record_batch({"x": [1, 2], "y": [2, 1]})
    assert key_hash(a, ["x", "y"])[0] != key_hash(a, ["x", "y"])[1]
    assert len(set(full.tolist())) == SAMPLE.num_rows
    # NULL differs from the empty string and from zero.
    assert full[3] != full[1]


def test_known_values_do_not_drift() -> None:
    # Pinned: a change to the hash would silently re-partition users' data.
    batch = pa.record_batch({"id": pa.array([1, 2, 3], pa.int64()), "s": ["a", "bc", ""]})
    assert key_hash(batch, ["id"]).tolist() == [
        13045298085281297205, 14512096047815996213, 13870843970901563103]
    assert key_hash(batch, ["s"]).tolist() == [
        4245461705502846770, 18001881769391241999, 5921754258051786655]
    assert key_hash(batch, ["id", "s"]).tolist() == [
        4282093717986018257, 13014119498941923769, 684870106880944658]


def test_one_million_random_keys_spread_evenly_over_8_partitions() -> None:
    rng = np.random.default_rng(7)
    ids = pa.array(rng.integers(0, 2**63 - 1, 1_000_000, dtype=np.int64))
    parts = partition_of(pa.record_batch({"id": ids}), ["id"], 8)
    counts = np.bincount(parts, minlength=8)
    assert counts.sum() == 1_000_000
    assert np.all(np.abs(counts - 125_000) <= 0.05 * 125_000), counts
    # Sequential ids (the common case) and string keys spread as well.
    seq = partition_of(pa.record_batch({"id": pa.array(np.arange(1_000_000))}), ["id"], 8)
    assert np.all(np.abs(np.bincount(seq, minlength=8) - 125_000) <= 6_250)
    names = pa.array([f"user-{i}" for i in range(200_000)])
    sp = np.bincount(partition_of(pa.record_batch({"n": names}), ["n"], 8), minlength=8)
    assert np.all(np.abs(sp - 25_000) <= 1_250), sp


def test_partitioner_splits_and_keeps_every_row() -> None:
    batch = pa.record_batch({"id": pa.array(range(10_000)), "v": pa.array(range(10_000))})
    parts = HashPartitioner(["id"], 4).split(batch)
    assert len(parts) == 4
    assert sum(p.num_rows for p in parts) == 10_000
    seen = sorted(v for p in parts for v in p.column("v").to_pylist())
    assert seen == list(range(10_000))
    for i, p in enumerate(parts):
        assert set(partition_of(p, ["id"], 4).tolist()) <= {i}
