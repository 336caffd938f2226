"""wal2arrow over a streaming replication connection (bench.clients.Wal2ArrowStream), big and streamed
transactions, aborts, savepoints, reconnects."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench.clients import Wal2ArrowStream
from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.decode.events import (
    Begin,
    ChangeBatch,
    Commit,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
)
from cdc_notebook.decode.wal2arrow import frame_header
from tests.test_wal2arrow import Env, batches


@pytest.fixture
def env(pg, unique_name):
    e = Env(pg, unique_name)
    yield e
    e.close()


class Applier:
    """What a consumer keeps: batches of committed transactions, aborted (sub)transactions
    dropped."""

    def __init__(self) -> None:
        self.committed: list[ChangeBatch] = []
        self.open: dict[int, list[ChangeBatch]] = {}
        self.aborts: list[StreamAbort] = []
        self.commits: list[Commit | StreamCommit] = []

    def feed(self, event) -> None:
        if isinstance(event, (Begin, StreamStart)):
            self.open.setdefault(event.xid, [])
        elif isinstance(event, ChangeBatch):
            self.open[event.xid].append(event)
        elif isinstance(event, (Commit, StreamCommit)):
            self.committed += self.open.pop(event.xid, [])
            self.commits.append(event)
        elif isinstance(event, StreamAbort):
            self.aborts.append(event)
            if event.subxid == event.xid:
                self.open.pop(event.xid, None)
            else:
                self.open[event.xid] = [b for b in self.open.get(event.xid, [])
                                        if b.subxid != event.subxid]

    def table(self) -> pa.Table:
        return pa.Table.from_batches([b.batch for b in self.committed])


def stream_until(stream: Wal2ArrowStream, done, timeout: float = 120.0, sink=None) -> list:
    events = []
    deadline = time.monotonic() + timeout
    while not done(events):
        assert time.monotonic() < deadline, f"timed out after {len(events)} events"
        for _wal_end, event in stream.read(timeout=0.2):
            if event is not None:
                events.append(event)
                if sink is not None:
                    sink.feed(event)
    return events


def confirmed_flush(env) -> int:
    value = env.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                             "WHERE slot_name = %s", (env.slot,)).fetchone()[0]
    return parse_lsn(value)


def test_many_small_transactions_none_lost_across_reconnect(env):
    env.run(f"CREATE TABLE {env.q('t')} (id int PRIMARY KEY, v text)")
    for i in range(1, 201):
        env.run(f"INSERT INTO {env.q('t')} VALUES ({i}, 'v{i}')")

    stream = Wal2ArrowStream(env.pg.conninfo())
    try:
        stream.start(env.slot)
        first = stream_until(stream, lambda ev: sum(isinstance(e, Commit) for e in ev) >= 200)
        commits = [e for e in first if isinstance(e, Commit)]
        # each transaction is its own batch of one row, between its BEGIN and COMMIT
        assert [b.batch.num_rows for b in batches(first)] == [1] * 200
        assert stream.decoder.copied_bodies == 0  # read in place: bodies were 8-byte aligned
        acked = commits[99].end_lsn
        stream.send_feedback(acked, reply=True)
        deadline = time.monotonic() + 20
        while confirmed_flush(env) < acked:
            assert time.monotonic() < deadline
            stream.read(timeout=0.1)
    finally:
        stream.close()

    for i in range(201, 251):
        env.run(f"INSERT INTO {env.q('t')} VALUES ({i}, 'v{i}')")

    stream = Wal2ArrowStream(env.pg.conninfo())
    try:
        stream.start(env.slot)  # resumes at the slot's confirmed position
        second = stream_until(stream, lambda ev: any(
            b.batch.column("id")[0].as_py() == 250 for b in batches(ev)))
    finally:
        stream.close()
    seen_first = {(r["_cdc_end_lsn"], r["_cdc_ordinal"]): r["id"]
                  for b in batches(first) for r in b.batch.to_pylist()}
    seen_second = {(r["_cdc_end_lsn"], r["_cdc_ordinal"]): r["id"]
                   for b in batches(second) for r in b.batch.to_pylist()}
    acked_ids = {i for (end, _), i in seen_first.items() if end <= acked}
    assert acked_ids == set(range(1, 101))
    # everything not acknowledged comes again, nothing is lost
    assert set(range(101, 251)) <= set(seen_second.values())
    assert set(seen_first.values()) | set(seen_second.values()) == set(range(1, 251))
    # at-least-once: what comes again has the same idempotence key
    for key in seen_first.keys() & seen_second.keys():
        assert seen_first[key] == seen_second[key]


N_BIG = 1_000_000


def _check_big(table: pa.Table) -> None:
    assert table.num_rows == N_BIG
    assert pc.sum(table.column("id")).as_py() == N_BIG * (N_BIG + 1) // 2
    ordinals = table.column("_cdc_ordinal").to_numpy()
    assert np.array_equal(np.sort(ordinals), np.arange(1, N_BIG + 1, dtype=np.uint64))


def _slot_stats(env, column: str) -> int:
    deadline = time.monotonic() + 10
    while True:
        env.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = env.conn.execute(f"SELECT {column} FROM pg_stat_replication_slots "
                               "WHERE slot_name = %s", (env.slot,)).fetchone()
        if (row and row[0] > 0) or time.monotonic() > deadline:
            return row[0] if row else 0
        time.sleep(0.2)


@pytest.mark.slow
def test_million_row_transaction_spilled(env):
    env.run(f"CREATE TABLE {env.q('big')} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {env.q('big')} SELECT g, 'r' || g FROM generate_series(1, {N_BIG}) g",
            "SET logical_decoding_work_mem = '64kB'")
    events = env.changes({"batch_rows": "100000"})
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Begin" and kinds[-1] == "Commit" and kinds.count("Begin") == 1
    assert [b.batch.num_rows for b in batches(events)] == [100000] * 10
    _check_big(pa.Table.from_batches([b.batch for b in batches(events)]))
    assert _slot_stats(env, "spill_txns") >= 1


@pytest.mark.slow
def test_million_row_transaction_streamed(env):
    env.run(f"CREATE TABLE {env.q('big')} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {env.q('big')} SELECT g, 'r' || g FROM generate_series(1, {N_BIG}) g")
    applier = Applier()
    stream = Wal2ArrowStream(env.pg.conninfo(options="-c logical_decoding_work_mem=64kB"))
    try:
        stream.start(env.slot, 0, {"streaming": "on"})
        events = stream_until(stream, lambda ev: any(isinstance(e, StreamCommit) for e in ev),
                              sink=applier)
    finally:
        stream.close()
    starts = [e for e in events if isinstance(e, StreamStart)]
    assert len(starts) > 1 and starts[0].first_segment and not starts[1].first_segment
    assert sum(isinstance(e, StreamStop) for e in events) == len(starts)
    assert not any(isinstance(e, (Begin, Commit)) for e in events)
    table = applier.table()
    _check_big(table)
    assert table.column("_cdc_commit_lsn").null_count == N_BIG  # unknown while streaming
    commit = applier.commits[0]
    assert commit.end_lsn > commit.commit_lsn > 0
    assert _slot_stats(env, "stream_txns") >= 1


def _has_tag(tag):
    def done(events):
        return any(isinstance(e, ChangeBatch) and tag in e.batch.column("tag").to_pylist()
                   for e in events)
    return done


def test_streamed_abort_and_rolled_back_savepoint_deliver_nothing(env):
    """Transactions streamed while in progress (the server does not stream a transaction it
    already knows aborted), then aborted whole or rolled back to a savepoint."""
    t = env.q("s")
    pad = "repeat('p', 200)"
    env.run(f"CREATE TABLE {t} (id serial PRIMARY KEY, tag text, pad text)")
    applier = Applier()
    events: list = []
    stream = Wal2ArrowStream(env.pg.conninfo(options="-c logical_decoding_work_mem=64kB"))
    writer = env.pg.connect()
    try:
        stream.start(env.slot, 0, {"streaming": "on"})
        writer.execute("BEGIN")
        writer.execute(f"INSERT INTO {t} (tag, pad) SELECT 'gone', {pad} "
                       "FROM generate_series(1, 3000)")
        events += stream_until(stream, _has_tag("gone"), sink=applier)
        writer.execute("ROLLBACK")

        writer.execute("BEGIN")
        writer.execute(f"INSERT INTO {t} (tag, pad) SELECT 'kept1', {pad} "
                       "FROM generate_series(1, 2000)")
        writer.execute("SAVEPOINT s")
        writer.execute(f"INSERT INTO {t} (tag, pad) SELECT 'rolled', {pad} "
                       "FROM generate_series(1, 3000)")
        events += stream_until(stream, _has_tag("rolled"), sink=applier)
        writer.execute("ROLLBACK TO SAVEPOINT s")
        writer.execute(f"INSERT INTO {t} (tag, pad) SELECT 'kept2', {pad} "
                       "FROM generate_series(1, 2000)")
        writer.execute("COMMIT")
        writer.execute(f"INSERT INTO {t} (tag) VALUES ('after')")
        events += stream_until(stream, _has_tag("after"), sink=applier)
    finally:
        writer.close()
        stream.close()
    counts = {d["values"]: d["counts"]
              for d in pc.value_counts(applier.table().column("tag")).to_pylist()}
    assert counts == {"kept1": 2000, "kept2": 2000, "after": 1}
    # the aborted transaction was streamed, then aborted as a whole
    gone = {b.xid for b in batches(events) if "gone" in b.batch.column("tag").to_pylist()}
    assert len(gone) == 1
    assert any(a.xid == a.subxid and a.xid in gone for a in applier.aborts)
    # the savepoint's rows were streamed under their subtransaction id, then aborted
    rolled = {(b.xid, b.subxid) for b in batches(events)
              if "rolled" in b.batch.column("tag").to_pylist()}
    assert rolled and all(xid != subxid for xid, subxid in rolled)
    assert {(a.xid, a.subxid) for a in applier.aborts} >= rolled
    # streamed rows carry no commit position; the commit frame does
    (commit,) = [c for c in applier.commits if isinstance(c, StreamCommit)]
    assert commit.end_lsn > commit.commit_lsn > 0


def test_raw_frames_over_the_stream(env):
    """read_frames hands out the undecoded frames (what a forwarding client stores)."""
    env.run(f"CREATE TABLE {env.q('raw')} (id int PRIMARY KEY)",
            f"INSERT INTO {env.q('raw')} SELECT generate_series(1, 7)")
    with Wal2ArrowStream(env.pg.conninfo("unix")) as stream:
        stream.start(env.slot)
        kinds: list[str] = []
        rows = 0
        deadline = time.monotonic() + 30
        while "commit" not in kinds:
            assert time.monotonic() < deadline
            for _wal_end, frame in stream.read_frames(timeout=0.2):
                if frame is None:
                    continue
                kind, fields = frame_header(frame)
                kinds.append(kind)
                if kind == "batch":
                    rows += fields[4]
                    # the same bytes decode with the reference decoder, in place
                    assert stream.decoder.decode_one(frame).batch.num_rows == fields[4]
                elif kind == "schema":
                    stream.decoder.decode_one(frame)
    assert kinds == ["begin", "schema", "batch", "commit"] and rows == 7
    assert stream.decoder.copied_bodies == 0
    # the walsender lets go of the slot a moment after the connection closed
    deadline = time.monotonic() + 20
    while env.conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           (env.slot,)).fetchone()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
