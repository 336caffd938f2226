"""The replication transport (COPY BOTH on psycopg's pq layer), with test_decoding."""

from __future__ import annotations

import time

import pytest

from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.errors import SlotDropped, SlotInUse, StreamLost
from cdc_notebook.stream.replication import ReplicationConnection


def _collect(rc: ReplicationConnection, until, timeout: float = 20.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out; got {got[-5:]}"
        for _wal_end, payload in rc.read(timeout=0.2):
            if payload is not None:
                got.append(bytes(payload))
    return got


@pytest.fixture
def slot(pg, unique_name):
    name = unique_name("rslot")
    with pg.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (name,))
    yield name
    with pg.connect() as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND NOT active", (name,))


def test_streams_changes_and_acknowledges(pg, slot, unique_name) -> None:
    table = unique_name("rt")
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 500) g")
        end = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    rc = ReplicationConnection(pg.conninfo("tcp"))
    try:
        rc.start(slot, 0, {"include-xids": "0"})
        got = _collect(rc, lambda g: sum(b.startswith(b"table") for b in g) >= 500)
        inserts = [b for b in got if b.startswith(b"table")]
        assert len(inserts) == 500
        assert b"id[integer]:500" in inserts[-1]
        rc.send_feedback(end)
        deadline = time.monotonic() + 10
        with pg.connect() as conn:
            while True:
                flushed = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                       " WHERE slot_name = %s", (slot,)).fetchone()[0]
                if parse_lsn(flushed) >= end:
                    break
                assert time.monotonic() < deadline, flushed
                rc.read(timeout=0.1)
    finally:
        rc.close()


def test_slot_in_use_elsewhere(pg, slot) -> None:
    first = ReplicationConnection(pg.conninfo())
    try:
        first.start(slot)
        second = ReplicationConnection(pg.conninfo())
        try:
            with pytest.raises(SlotInUse, match="already being read"):
                second.start(slot)
        finally:
            second.close()
    finally:
        first.close()


def test_missing_slot(pg) -> None:
    rc = ReplicationConnection(pg.conninfo())
    try:
        with pytest.raises(SlotDropped, match="does not exist"):
            rc.start("no_such_slot_here")
    finally:
        rc.close()


def test_server_restart_is_a_lost_stream(pg_factory, unique_name) -> None:
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s', 'test_decoding')")
    rc = ReplicationConnection(server.conninfo())
    rc.start("s")
    server.restart()
    with pytest.raises(StreamLost):
        for _ in range(200):
            rc.read(timeout=0.1)
    rc.close()
