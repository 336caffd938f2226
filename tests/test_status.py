"""SlotStatus against real slots: lag, retained WAL, activity, advice, invalidation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_notebook.errors import SlotNotFound
from cdc_notebook.provision.status import fetch_slot_status, fetch_slot_statuses


@pytest.fixture
def conn(pg: Any) -> Iterator[psycopg.Connection[Any]]:
    with pg.connect() as c:
        yield c


@pytest.fixture
def slot(conn: psycopg.Connection[Any], unique_name: Callable[[str], str]) -> Iterator[str]:
    name = unique_name("cdcnb_status")
    table = name + "_t"
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(
        sql.Identifier(table)))
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [name])
    yield name
    for _ in range(100):
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                           [name]).fetchone()
        if row is None:
            break
        if row[0] is None:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [name])
            break
        time.sleep(0.05)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


def write(conn: psycopg.Connection[Any], slot: str, n: int) -> None:
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, repeat('x', 100) FROM generate_series(1, %s) g "
                         "ON CONFLICT (id) DO UPDATE SET v = excluded.v").format(
        sql.Identifier(slot + "_t")), [n])


def test_lag_and_retained_wal(conn: psycopg.Connection[Any], slot: str) -> None:
    before = fetch_slot_status(conn, slot)
    write(conn, slot, 2000)
    s = fetch_slot_status(conn, slot)
    assert s.slot_name == slot and s.plugin == "test_decoding" and not s.temporary
    assert not s.active and s.active_pid is None
    assert s.current_lsn > before.current_lsn
    assert s.lag_bytes == s.current_lsn - s.confirmed_flush_lsn > 100_000
    assert s.retained_wal_bytes == s.current_lsn - s.restart_lsn >= s.lag_bytes
    assert s.wal_status == "reserved"
    assert s.max_slot_wal_keep_size == 4 * 1024**3  # the test server's setting
    assert s.safe_wal_size is not None and 0 < s.safe_wal_size <= s.max_slot_wal_keep_size + 64 * 1024**2
    assert s.lag_seconds is None  # behind, and no reader told us the commit time
    assert not s.unbounded_retention and not s.invalidated
    # the consumer acknowledges everything: no lag, in bytes or in time
    conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", [slot])
    caught_up = fetch_slot_status(conn, slot)
    assert caught_up.confirmed_flush_lsn >= s.current_lsn
    assert caught_up.lag_seconds == (0.0 if caught_up.lag_bytes == 0 else None)


def test_reader_fields_and_time_lag(conn: psycopg.Connection[Any], slot: str) -> None:
    write(conn, slot, 10)
    commit_ts = conn.execute("SELECT now() - interval '2 seconds'").fetchone()[0]
    s = fetch_slot_status(conn, slot, oldest_unacked_commit_ts=commit_ts)
    assert s.lag_seconds is not None and s.lag_seconds >= 2.0
    assert s.lag_seconds == (s.server_time - commit_ts).total_seconds()
    r = s.with_reader(events_per_second=12_345.0, bytes_per_second=3 * 1024 * 1024,
                      latency_p50_ms=0.8, latency_p99_ms=7.5,
                      held_back_by_table={"public.orders": 4096})
    assert r.mb_per_second == 3.0 and r.held_back_by_table == {"public.orders": 4096}
    assert r.lag_seconds == s.lag_seconds
    text = r.summary()
    assert "12,345 events/s" in text and "3.0 MiB/s" in text and "p99 7.50 ms" in text
    d = r.as_dict()
    assert d["slot_name"] == slot and d["mb_per_second"] == 3.0


def test_active_slot_shows_its_pid(pg: Any, conn: psycopg.Connection[Any], slot: str) -> None:
    rc = psycopg.connect(**pg.conninfo(), replication="database", autocommit=True)
    try:
        rc.pgconn.send_query(sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0").format(
            sql.Identifier(slot)).as_bytes(rc))
        for _ in range(600):
            s = fetch_slot_status(conn, slot)
            if s.active:
                break
            time.sleep(0.05)
        assert s.active and s.active_pid == rc.info.backend_pid
        assert s.walsender_flush_lag is None or isinstance(s.walsender_flush_lag, timedelta)
        assert not [a for a in s.advice if "No process reads" in a]
    finally:
        rc.close()


def test_listing_and_version_columns(pg: Any, conn: psycopg.Connection[Any], slot: str) -> None:
    (s,) = [x for x in fetch_slot_statuses(conn) if x.slot_name == slot]
    assert not s.kit_managed  # a cdcnb_ name proves nothing: no kit publication records it
    if pg.major >= 17:
        assert s.inactive_since is not None
    else:
        assert s.inactive_since is None and s.invalidation_reason is None
    if pg.major >= 16:
        assert s.conflicting is False
    else:
        assert s.conflicting is None


def test_missing_slot(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(SlotNotFound, match="list_slots"):
        fetch_slot_status(conn, "cdcnb_no_such_slot")


def test_unbounded_retention_advice_and_invalidation(pg_factory: Callable[..., Any]) -> None:
    unbounded = pg_factory(settings={"max_slot_wal_keep_size": "-1"})
    with unbounded.connect() as c:
        c.execute("SELECT pg_create_logical_replication_slot('cdcnb_u', 'test_decoding')")
        s = fetch_slot_status(c, "cdcnb_u")
        assert s.unbounded_retention and s.max_slot_wal_keep_size is None
        assert s.safe_wal_size is None
        assert any("max_slot_wal_keep_size = '10GB'" in a for a in s.advice)
    bounded = pg_factory(settings={"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB",
                                   "min_wal_size": "32MB"})
    with bounded.connect() as c:
        c.execute("CREATE TABLE t (v text)")
        c.execute("SELECT pg_create_logical_replication_slot('cdcnb_b', 'test_decoding')")
        assert not any("max_slot_wal_keep_size = -1" in a
                       for a in fetch_slot_status(c, "cdcnb_b").advice)
        for _ in range(6):  # leave WAL segments behind the slot
            c.execute("INSERT INTO t VALUES ('x')")
            c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
        s = fetch_slot_status(c, "cdcnb_b")
        assert s.invalidated and s.wal_status == "lost"
        if bounded.major >= 17:
            assert s.invalidation_reason == "wal_removed"
        assert any("invalidated" in a for a in s.advice)
