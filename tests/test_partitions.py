"""Partitions that are real and readers that survive cancellation (issue 13, findings 1, 3).

N consumers of N partitions of one table each have their own cursor: together they receive
every change exactly once (a key moved across partitions is a delete in the old one and an
update in the new one), and the slot is acknowledged no further than every partition read."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pyarrow as pa
import pytest

from cdc_notebook import CDCStream, HashPartitioner
from cdc_notebook.connection.lsn import parse_lsn

N = 4


def _workload(conn, table: str, seed: int, rows: int = 4000) -> int:
    """Inserts, updates (a tenth of them moving the key), deletes; returns the change count."""
    rng = random.Random(seed)
    changes = 0
    ids = list(range(1, rows + 1))
    next_id = rows + 1
    with conn.transaction():
        conn.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, {rows}) g")
    changes += rows
    for _ in range(40):
        with conn.transaction():
            for _ in range(50):
                roll = rng.random()
                key = rng.choice(ids)
                if roll < 0.5:
                    conn.execute(f"UPDATE {table} SET v = v || '+' WHERE id = %s", (key,))
                elif roll < 0.7:
                    conn.execute(f"UPDATE {table} SET id = %s WHERE id = %s", (next_id, key))
                    ids[ids.index(key)] = next_id
                    next_id += 1
                elif roll < 0.85:
                    conn.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                    ids.remove(key)
                else:
                    conn.execute(f"INSERT INTO {table} VALUES (%s, 'n')", (next_id,))
                    ids.append(next_id)
                    next_id += 1
                changes += 1
    return changes


def _check(per_partition: list[list[dict]], expected: dict[int, str], changes: int) -> None:
    """Every change exactly once over the partitions (a key moved across partitions: an update
    in the new one and a delete in the old one, at the same position); each partition's mirror
    holds its own keys; their union is the table."""
    seen: dict[tuple[int, int], list[tuple[int, str]]] = {}
    union: dict[int, str] = {}
    for part, rows in enumerate(per_partition):
        mirror: dict[int, str] = {}
        for row in rows:
            op, before = row["_cdc_op"], row["_cdc_before"]
            seen.setdefault((row["_cdc_end_lsn"], row["_cdc_ordinal"]), []).append((part, op))
            if before is not None:
                mirror.pop(before["id"], None)
            if op in ("c", "r", "u"):
                mirror[row["id"]] = row["v"]
        assert not set(mirror) & set(union), "a key in two partitions"
        union.update(mirror)
    assert len(seen) == changes, f"{changes - len(seen)} changes lost"
    for position, rows in seen.items():
        ops = sorted(op for _, op in rows)
        assert len(rows) == 1 or (ops == ["d", "u"] and rows[0][0] != rows[1][0]), \
            f"change {position} delivered as {rows}"
    assert union == expected


def test_n_threads_on_n_partitions_get_every_change_once(pg, unique_name):
    table = unique_name("part")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    stream = CDCStream(pg.conninfo(), f"public.{table}", temporary=True)
    try:
        reader = stream[f"public.{table}"]
        with pg.connect() as conn:
            changes = _workload(conn, table, seed=1)
            expected = dict(conn.execute(f"SELECT id, v FROM {table}").fetchall())
            conn.execute(f"TRUNCATE {table}")  # the end marker, in every partition
        got: list[list[dict]] = [[] for _ in range(N)]
        slot_at: list[int] = []

        def consume(i: int) -> None:
            for batch in reader.batches(partition=(i, N), follow=True, timeout=60):
                if i == 0:
                    time.sleep(0.01)  # the slowest partition holds acknowledgement back
                rows = batch.to_pylist()
                if rows[-1]["_cdc_op"] == "t":
                    got[i] += rows[:-1]
                    return
                got[i] += rows

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(1, N)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # Partitions 1..N-1 read everything; partition 0 nothing: nothing may be acknowledged.
        time.sleep(1.5)
        with pg.connect() as conn:
            slot_at.append(parse_lsn(conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (stream.slot.slot_name,)).fetchone()[0]))
        first_end = min(r["_cdc_end_lsn"] for rows in got[1:] for r in rows)
        assert slot_at[0] < first_end
        consume(0)
        _check(got, expected, changes)
    finally:
        stream.close()


def test_n_asyncio_tasks_on_n_partitions_get_every_change_once(pg, unique_name):
    table = unique_name("apart")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    stream = CDCStream(pg.conninfo(), f"public.{table}", temporary=True)
    try:
        reader = stream[f"public.{table}"]
        with pg.connect() as conn:
            changes = _workload(conn, table, seed=2)
            expected = dict(conn.execute(f"SELECT id, v FROM {table}").fetchall())
            conn.execute(f"TRUNCATE {table}")

        async def consume(i: int) -> list[dict]:
            rows: list[dict] = []
            async for batch in reader.read_batches(partition=(i, N), follow=True, timeout=60):
                part = batch.to_pylist()
                if part[-1]["_cdc_op"] == "t":
                    return rows + part[:-1]
                rows += part
            return rows

        async def main() -> list[list[dict]]:
            return list(await asyncio.gather(*(consume(i) for i in range(N))))

        _check(asyncio.run(main()), expected, changes)
    finally:
        stream.close()


def test_cancelled_async_reads_leave_the_reader_usable(pg, unique_name):
    table = unique_name("cancel")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"public.{table}", temporary=True)
    reader = stream[f"public.{table}"]
    finished = threading.Event()
    outcome: dict[str, object] = {}

    async def main() -> None:
        # a timeout on an idle table: TimeoutError, and the reader is not left busy
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read_batches(follow=True).__anext__(), 0.5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read_batches(follow=True).__anext__(), 0.5)
        assert not reader._all_reading()  # nobody reads now: the router spills, never blocks
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 10)")
        # break out of async for, then aclose() of another iteration
        async for batch in reader.read_batches(follow=True):
            outcome["first"] = batch.column("id").to_pylist()
            break
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (11)")
        iterator = reader.read_batches(follow=True)
        outcome["second"] = (await iterator.__anext__()).column("id").to_pylist()
        await iterator.aclose()
        # task cancellation while waiting
        task = asyncio.create_task(reader.read_batches(follow=True).__anext__())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (12)")
        outcome["third"] = [b.column("id").to_pylist() async for b in reader.read_batches()]

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc
        finished.set()

    try:
        threading.Thread(target=run, daemon=True).start()
        assert finished.wait(60), "asyncio.run() did not return"
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        assert outcome["first"] == list(range(1, 11))
        assert outcome["second"] == [11]
        assert outcome["third"] == [[12]]
    finally:
        stream.close()


def test_hash_partitioner_splits_deletes_and_key_moves_by_the_old_key():
    before = pa.struct([("id", pa.int64())])
    batch = pa.RecordBatch.from_pydict({
        "id": pa.array([None, 1000], pa.int64()),
        "_cdc_op": ["d", "u"],
        "_cdc_before": pa.array([{"id": 7}, {"id": 8}], before),
    })
    parts = HashPartitioner(["id"], 8).split(batch)
    by_key = HashPartitioner(["id"], 8)
    home = {k: int(by_key.split(pa.RecordBatch.from_pydict({"id": pa.array([k], pa.int64())}))
                   .index(next(p for p in by_key.split(pa.RecordBatch.from_pydict(
                       {"id": pa.array([k], pa.int64())})) if p.num_rows)))
            for k in (7, 8, 1000)}
    assert parts[home[7]].column("_cdc_op").to_pylist()[:1] == ["d"]  # delete by its old key
    if home[8] != home[1000]:
        assert "d" in parts[home[8]].column("_cdc_op").to_pylist()     # moved out: a delete
        assert parts[home[1000]].column("id").to_pylist() == [1000]   # moved in: the update
    assert sum(p.num_rows for p in parts) in (2, 3)
