"""The reader end to end: one stream, per-table readers, acknowledgements, the seed's API."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psycopg
import pyarrow as pa
import pytest

from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.stream.cdc_stream import ArrowCDCReaderConfig, CDCStream

from .pgutil import drop_slot

PLUGINS = ["wal2arrow", "pgoutput"]


def _make_tables(conn, schema: str, names: list[str]) -> None:
    conn.execute(f"CREATE SCHEMA {schema}")
    for name in names:
        conn.execute(f"CREATE TABLE {schema}.{name} (id bigint PRIMARY KEY, v bigint, note text)")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_interleaved_transactions_arrive_per_table_in_commit_order(pg, unique_name, plugin):
    schema = unique_name("rd")
    names = ["a", "b", "c"]
    with pg.connect() as conn:
        _make_tables(conn, schema, names)
    stream = CDCStream(pg.conninfo("tcp"), f"{schema}.*", plugin=plugin)
    try:
        # 100,000 changes: 300 transactions each touching all three tables, plus updates and
        # deletes, so that tables interleave inside and across transactions.
        expected: dict[str, list[tuple[str, int, int]]] = {n: [] for n in names}
        with pg.connect() as conn:
            next_id = 1
            for txn in range(300):
                with conn.transaction():
                    for name in names:
                        lo, hi = next_id, next_id + 99
                        conn.execute(f"INSERT INTO {schema}.{name} SELECT g, %s, 'n' || g "
                                     f"FROM generate_series(%s::bigint, %s::bigint) g",
                                     (txn, lo, hi))
                        expected[name] += [("c", i, txn) for i in range(lo, hi + 1)]
                next_id += 100
            for name in names:
                conn.execute(f"UPDATE {schema}.{name} SET v = -1 WHERE id <= 300")
                conn.execute(f"DELETE FROM {schema}.{name} WHERE id > 29800")
        for name in names:
            expected[name] += [("u", i, -1) for i in range(1, 301)]
            expected[name] += [("d", i, None) for i in range(29801, 30001)]
        assert sum(len(v) for v in expected.values()) >= 90_000

        results: dict[str, list[pa.RecordBatch]] = {}

        async def consume(name: str) -> None:
            results[name] = [b async for b in stream[f"{schema}.{name}"].read_batches()]

        async def main() -> None:
            await asyncio.gather(*(consume(n) for n in names))

        asyncio.run(main())
        for name in names:
            table = pa.Table.from_batches(results[name])
            ops = table.column("_cdc_op").to_pylist()
            before = table.column("_cdc_before").to_pylist()
            ids = [b["id"] if op == "d" else i for op, b, i in
                   zip(ops, before, table.column("id").to_pylist(), strict=True)]
            got = list(zip(ops, ids, table.column("v").to_pylist(), strict=True))
            got = [(op, i, None if op == "d" else v) for op, i, v in got]
            assert got == expected[name]
            ends = table.column("_cdc_end_lsn").to_pylist()
            assert ends == sorted(ends)  # commit order
    finally:
        stream.close()
        drop_slot(pg, stream.slot.slot_name)


def test_acknowledgement_follows_consumption(pg, unique_name):
    schema = unique_name("ack")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["t"])
    stream = CDCStream(pg.conninfo(), f"{schema}.*")
    slot = stream.slot.slot_name
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.t SELECT g, g, 'x' FROM generate_series(1, 1000) g")
            end = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        it = stream[f"{schema}.t"].batches(follow=True, timeout=30)
        first = next(it)  # held by the consumer: not acknowledged yet
        assert first.num_rows == 1000
        time.sleep(2.5)
        with pg.connect() as conn:
            flushed = parse_lsn(conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (slot,)).fetchone()[0])
        assert flushed < end
        it.close()  # finished with it: now the transaction may be acknowledged
        deadline = time.monotonic() + 20
        while True:
            with pg.connect() as conn:
                flushed = parse_lsn(conn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,)).fetchone()[0])
            if flushed >= end:
                break
            assert time.monotonic() < deadline, (flushed, end)
            time.sleep(0.2)
    finally:
        stream.close()
        drop_slot(pg, slot)


def test_idle_slot_pins_no_wal(pg, unique_name):
    schema = unique_name("idle")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["watched", "other"])
    stream = CDCStream(pg.conninfo(), f"{schema}.watched")
    slot = stream.slot.slot_name
    reader = stream[f"{schema}.watched"]
    stop = threading.Event()

    def follow() -> None:
        for _ in reader.batches(follow=True):
            if stop.is_set():
                return

    stream.start()
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        with pg.connect() as conn:
            for _ in range(30):  # ~40 MB of WAL, none of it for the watched table
                conn.execute(f"INSERT INTO {schema}.other SELECT g, g, repeat('x', 1000) "
                             "FROM generate_series(1, 1000) g ON CONFLICT (id) DO UPDATE "
                             "SET v = excluded.v + 1")
            conn.execute("CHECKPOINT")
            deadline = time.monotonic() + 30
            while True:
                current, restart = conn.execute(
                    "SELECT pg_current_wal_lsn()::text, restart_lsn::text FROM "
                    "pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
                gap = parse_lsn(current) - parse_lsn(restart)
                if gap <= 16 * 1024 * 1024:
                    break
                assert time.monotonic() < deadline, f"restart_lsn {gap} bytes behind"
                time.sleep(0.5)
                conn.execute("CHECKPOINT")
    finally:
        stop.set()
        stream.close()
        drop_slot(pg, slot)


def test_server_restart_mid_stream_loses_nothing(pg_factory, unique_name):
    server = pg_factory()
    with server.connect() as conn:
        _make_tables(conn, "rs", ["t"])
    stream = CDCStream(server.conninfo(), "rs.t")
    reader = stream["rs.t"]
    seen: list[int] = []
    done = threading.Event()

    def consume() -> None:
        for batch in reader.batches(follow=True):
            seen.extend(batch.column("id").to_pylist())
            if len(seen) >= 2000:
                done.set()
                return

    stream.start()
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    with server.connect() as conn:
        conn.execute("INSERT INTO rs.t SELECT g, g, 'a' FROM generate_series(1, 1000) g")
    server.restart()
    with server.connect() as conn:
        conn.execute("INSERT INTO rs.t SELECT g, g, 'b' FROM generate_series(1001, 2000) g")
    assert done.wait(60), f"only {len(seen)} rows after the restart"
    thread.join(5)
    assert sorted(seen) == list(range(1, 2001))  # none lost, none twice
    assert stream.router.reconnects >= 1
    stream.close()


def test_the_first_connection_of_the_stream_thread_is_retried_like_a_reconnect(
        pg_factory, unique_name):
    """The stream thread opens its replication connection after the stream was set up; a
    server that restarts in between (the connection refused, a transient failure) is waited
    for as any reconnect is, not a stream that is dead for good."""
    server = pg_factory()
    with server.connect() as conn:
        _make_tables(conn, "fc", ["t"])
    stream = CDCStream(server.conninfo(), "fc.t")
    try:
        reader = stream["fc.t"]
        server.kill()  # down before the stream thread's first connection
        stream.start()
        deadline = time.monotonic() + 10
        while stream.router.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.router.last_error is not None  # it tried, and failed, while down
        assert stream.router.failed is None
        server.start_again()
        with server.connect() as conn:
            conn.execute("INSERT INTO fc.t SELECT g, g, 'a' FROM generate_series(1, 100) g")
        seen: list[int] = []
        for batch in reader.batches(follow=True, timeout=60):
            seen.extend(batch.column("id").to_pylist())
            if len(seen) >= 100:
                break
        assert sorted(seen) == list(range(1, 101))
        assert stream.router.failed is None and stream.router.reconnects >= 1
    finally:
        stream.close()


def test_seed_readme_usage_runs_as_written(pg, unique_name):
    db = unique_name("seeddb")
    with pg.connect() as conn:
        conn.execute(f"CREATE DATABASE {db}")
    with pg.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric(10,2))")
    params = pg.conninfo("tcp")
    out: list[str] = []
    print = out.append  # the snippets print; collect what they say

    # --- the seed README, Basic Usage (only the import line differs) ---
    readers = ArrowCDCReaderConfig.auto_configure(
        host=params["host"],
        database=db,
        user=params["user"],
        password=params["password"],
        port=params["port"],
        tables="public.*"  # Flink CDC pattern
    )
    with pg.connect(dbname=db) as conn:
        conn.execute("INSERT INTO users VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')")
        conn.execute("INSERT INTO orders SELECT g, 1 + g % 3, g FROM generate_series(1, 8) g")

    async def sequential() -> None:
        # Process tables separately
        async for batch in readers['public.users'].read_batches():
            print(f"Users changed: {batch.num_rows} rows")

        async for batch in readers['public.orders'].read_batches():
            print(f"Orders changed: {batch.num_rows} rows")

    asyncio.run(asyncio.wait_for(sequential(), 60))
    assert out == ["Users changed: 3 rows", "Orders changed: 8 rows"]

    # --- Parallel Processing ---
    with pg.connect(dbname=db) as conn:
        conn.execute("UPDATE users SET name = upper(name)")
        conn.execute("DELETE FROM orders WHERE id > 4")
    counts = {"users": 0, "orders": 0}

    async def process_users():
        async for batch in readers['public.users'].read_batches():
            # User-specific processing
            counts["users"] += batch.num_rows

    async def process_orders():
        async for batch in readers['public.orders'].read_batches():
            # Order-specific processing
            counts["orders"] += batch.num_rows

    async def parallel() -> None:
        await asyncio.gather(
            process_users(),
            process_orders()
        )

    asyncio.run(asyncio.wait_for(parallel(), 60))
    assert counts == {"users": 3, "orders": 4}
    stream = readers["public.users"].stream
    slot = stream.slot.slot_name
    stream.close()
    # A permanent slot, as the seed's flow creates it: reused when named again.
    again = ArrowCDCReaderConfig.auto_configure(
        host=params["host"], database=db, user=params["user"], password=params["password"],
        port=params["port"], tables="public.*", slot_name=slot)
    assert set(again) == {"public.users", "public.orders"}
    assert again["public.users"].stream.slot.created is False
    again["public.users"].stream.close()
    drop_slot(pg, slot)


def test_plugin_is_chosen_and_the_choice_explained(pg, pg_factory, unique_name):
    schema = unique_name("pc")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["t"])
    with CDCStream(pg.conninfo(), f"{schema}.t") as stream:
        assert stream.plugin == "wal2arrow"
        assert "allows it" in stream.plugin_reason
    drop_slot(pg, stream.slot.slot_name)
    bare = pg_factory(plugin=False)  # a server where no plugin can be installed
    with bare.connect() as conn:
        _make_tables(conn, "s", ["t"])
    with CDCStream(bare.conninfo(), "s.t") as stream:
        assert stream.plugin == "pgoutput"
        assert "wal2arrow cannot be used" in stream.plugin_reason
        with bare.connect() as conn:
            conn.execute("INSERT INTO s.t VALUES (1, 1, 'x'), (2, 2, 'y')")
        table = pa.Table.from_batches(list(stream["s.t"].batches(timeout=30)))
        assert table.column("id").to_pylist() == [1, 2]
        assert min(table.column("_cdc_lsn").to_pylist()) > 0


def test_a_dropped_table_ends_its_reader_and_the_others_go_on(pg, unique_name):
    schema = unique_name("drop")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["gone", "stays"])
    stream = CDCStream(pg.conninfo(), f"{schema}.*")
    try:
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.gone VALUES (1, 1, 'last words')")
            conn.execute(f"DROP TABLE {schema}.gone")
            conn.execute(f"INSERT INTO {schema}.stays VALUES (1, 1, 'still here')")
        events = list(stream[f"{schema}.gone"].events(follow=True, timeout=60))
        kinds = [type(e).__name__ for e in events]
        assert kinds[-1] == "TableDropped"
        rows = [r for e in events if isinstance(e, pa.RecordBatch) for r in e.to_pylist()]
        assert [r["note"] for r in rows] == ["last words"]
        assert stream[f"{schema}.gone"].dropped
        stays = pa.Table.from_batches(list(stream[f"{schema}.stays"].batches(timeout=30)))
        assert stays.column("note").to_pylist() == ["still here"]
    finally:
        stream.close()
        drop_slot(pg, stream.slot.slot_name)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_unread_reader_spills_and_holds_back_wal(pg, unique_name, plugin):
    schema = unique_name("spill")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["read", "unread"])
    stream = CDCStream(pg.conninfo(), f"{schema}.*", memory_limit=4 << 20, plugin=plugin)
    slot = stream.slot.slot_name
    try:
        with pg.connect() as conn:
            for i in range(8):  # ~8 MB for the table nobody reads yet
                conn.execute(f"INSERT INTO {schema}.unread SELECT g, g, repeat('u', 1000) "
                             f"FROM generate_series({i * 1000 + 1}, {i * 1000 + 1000}) g")
            conn.execute(f"INSERT INTO {schema}.read VALUES (1, 1, 'r')")
        got = list(stream[f"{schema}.read"].batches(timeout=60))
        assert sum(b.num_rows for b in got) == 1
        unread = stream[f"{schema}.unread"]
        assert unread.spilled_bytes > 0  # past its memory bound: on disk, not in memory
        status = stream.status()
        assert status.held_back_by_table.get(f"{schema}.unread", 0) > 0
        assert status.spilled_by_table == {f"{schema}.unread": unread.spilled_bytes}
        assert "spilled to disk" in status.summary()
        with pg.connect() as conn:
            flushed = parse_lsn(conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (slot,)).fetchone()[0])
        assert flushed < unread.held_back_lsn  # the unread table's WAL is not acknowledged
        spilled_size = os.fstat(unread._spill.fileno()).st_size
        back = pa.Table.from_batches(list(unread.batches(timeout=60)))
        assert back.column("id").to_pylist() == list(range(1, 8001))
        assert back.column("v").to_pylist() == list(range(1, 8001))
        assert set(back.column("note").to_pylist()) == {"u" * 1000}
        assert unread.spilled_bytes == 0
        # Drained: the disk space is given back at once, and the file starts over rather than
        # growing with every spill.
        assert os.fstat(unread._spill.fileno()).st_size == 0
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.unread SELECT g, -g, repeat('w', 1000) "
                         f"FROM generate_series(8001, 16000) g")
            conn.execute(f"INSERT INTO {schema}.read VALUES (2, 2, 'r')")
        assert sum(b.num_rows for b in stream[f"{schema}.read"].batches(timeout=60)) == 1
        assert unread.spilled_bytes > 0
        assert 0 < os.fstat(unread._spill.fileno()).st_size <= spilled_size
        back = pa.Table.from_batches(list(unread.batches(timeout=60)))
        assert back.column("v").to_pylist() == [-i for i in range(8001, 16001)]
    finally:
        stream.close()
        drop_slot(pg, slot)


def test_temporary_slot_reconnect_is_an_explicit_error(pg_factory):
    from cdc_notebook.errors import TemporarySlotLost

    server = pg_factory()
    with server.connect() as conn:
        _make_tables(conn, "tmp", ["t"])
    stream = CDCStream(server.conninfo(), "tmp.t", temporary=True)
    with server.connect() as conn:
        conn.execute("INSERT INTO tmp.t VALUES (1, 1, 'a')")
    assert sum(b.num_rows for b in stream["tmp.t"].batches(timeout=30)) == 1
    server.restart()
    with pytest.raises(TemporarySlotLost, match="vanished with its connection"):
        for _ in stream["tmp.t"].batches(follow=True, timeout=60):
            pass
    stream.close()


def test_slot_dropped_while_streaming(pg, unique_name):
    from cdc_notebook.errors import SlotDropped

    schema = unique_name("sd")
    with pg.connect() as conn:
        _make_tables(conn, schema, ["t"])
    stream = CDCStream(pg.conninfo(), f"{schema}.t")
    stream.start()
    with pg.connect() as conn:
        deadline = time.monotonic() + 10
        while True:
            pid = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (stream.slot.slot_name,)).fetchone()[0]
            if pid:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Terminate the walsender and drop the slot while it is inactive; the stream may be
        # back on it first (it reconnects after a transient loss), so until the drop succeeds.
        deadline = time.monotonic() + 30
        while True:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND active_pid IS NOT NULL",
                         (stream.slot.slot_name,))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (stream.slot.slot_name,))
                break
            except psycopg.errors.ObjectInUse:
                assert time.monotonic() < deadline, "the slot never became inactive"
                time.sleep(0.05)
    with pytest.raises(SlotDropped, match="does not exist"):
        for _ in stream[f"{schema}.t"].batches(follow=True, timeout=60):
            pass
    stream.close()
