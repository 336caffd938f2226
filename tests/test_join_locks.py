"""A joining table's locks never fail an application's transaction, nor the kit (issue 12,
the DDL torture test on PostgreSQL 18: the workload's own DDL died of ``DeadlockDetected``).

The deadlock: the joiner's snapshot transaction held the joining table ``t`` (ACCESS SHARE)
and then read the publication's column list through ``pg_publication_tables``, which on
PostgreSQL 16+ opens every table of the publication (ACCESS SHARE each); an application
transaction that altered a published table ``a`` and then ``t`` waited for the joiner, which
waited for it. The application, waiting first, ran the deadlock detector first and was the
one cancelled.

Each interleaving is made exact by stopping the joiner at a point of the join (a gate in
``plan_table``, run with the table locked) and running the application's SQL there; each on
both plugins (``--pg 15`` / ``--pg 18``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

import cdc_notebook.snapshot.tables as snapshot_tables
from cdc_notebook.errors import SnapshotError
from cdc_notebook.stream import cdc_stream
from cdc_notebook.stream.cdc_stream import CDCStream

from .pgutil import relid_of, wait_for

PLUGINS = ["wal2arrow", "pgoutput"]




def _waiting_for(pg: Any, relid: int) -> bool:
    """Whether some session waits for a lock on ``relid``."""
    with pg.connect() as conn:
        return bool(conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'relation' AND relation = %s::oid "
            "AND NOT granted", (relid,)).fetchall())


def _rows(reader: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for item in reader.events(follow=False, timeout=5):
        if isinstance(item, pa.RecordBatch):
            rows.extend(item.to_pylist())
    return rows


class _App(threading.Thread):
    """An application session running statements in one transaction, in order; each step
    waits for its go-ahead; the error it met (if any) is kept."""

    def __init__(self, pg: Any, statements: list[str]):
        super().__init__(daemon=True)
        self.pg = pg
        self.statements = statements
        self.go = [threading.Event() for _ in statements]
        self.done = [threading.Event() for _ in statements]
        self.error: BaseException | None = None
        self.committed = threading.Event()
        self.pid = 0

    def run(self) -> None:
        try:
            with self.pg.connect(autocommit=False) as conn:
                self.pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                for go, done, statement in zip(self.go, self.done, self.statements, strict=True):
                    assert go.wait(60)
                    conn.execute(statement)
                    done.set()
                conn.commit()
                self.committed.set()
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            self.error = exc
        finally:
            for done in self.done:
                done.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Stops the joiner of a table named ``t`` in ``plan_table`` (the table is locked then)
    until ``gate['go']`` is set; ``gate['at']`` is set when it got there."""
    state: dict[str, Any] = {"at": threading.Event(), "go": threading.Event(), "name": "t"}
    real = snapshot_tables.plan_table

    def plan_table(conn: Any, table: Any, *args: Any, **kw: Any) -> Any:
        if threading.current_thread().name.startswith("cdc-join-") and \
                threading.current_thread().name.endswith(f".{state['name']}"):
            state["at"].set()
            assert state["go"].wait(60)
        return real(conn, table, *args, **kw)

    monkeypatch.setattr(snapshot_tables, "plan_table", plan_table)
    yield state
    state["go"].set()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_application_altering_a_published_table_then_the_joining_one_is_not_deadlocked(
        pg, unique_name, plugin, gate):
    """The torture test's deadlock, made exact: the joiner holds ``t``; the application alters
    ``a`` (published) and then ``t`` (waits for the joiner); the joiner goes on. It must never
    wait for ``a`` while holding ``t``: the application's transaction commits, and the table
    joins with its rows."""
    schema = unique_name("joinlock")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True).start()
    app = _App(pg, [f"ALTER TABLE {schema}.a ADD COLUMN extra int",
                    f"ALTER TABLE {schema}.t ADD COLUMN w int"])
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {schema}.t VALUES (1, 'one')")
            oid_t = relid_of(conn, f"{schema}.t")
        assert gate["at"].wait(60), "the table did not join"
        app.start()
        app.go[0].set()
        assert app.done[0].wait(10)
        app.go[1].set()  # waits for the joiner's lock on t
        wait_for(lambda: _waiting_for(pg, oid_t), "the application did not wait for t")
        gate["go"].set()
        assert app.committed.wait(30), f"the application's transaction failed: {app.error!r}"
        assert app.error is None, app.error
        assert stream.wait_for_joins(timeout=60), "the join never ended"
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.t VALUES (2, 'two', 2)")
        rows = _rows(stream.router.readers[oid_t])  # raises the join's error if it failed
        assert [(r["_cdc_op"], r["id"], r["v"]) for r in rows] == [
            ("r", 1, "one"), ("c", 2, "two")]
    finally:
        gate["go"].set()
        app.join(30)
        stream.close()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_joiner_waiting_for_a_locked_table_yields_and_joins_once_it_is_free(
        pg, unique_name, plugin, monkeypatch):
    """An application holds the joining table (ALTER TABLE, ACCESS EXCLUSIVE) in a long
    transaction: the joiner's lock waits end after a short ``lock_timeout`` (well below the
    server's ``deadlock_timeout``), it lets go and tries again; the application commits, then
    the table joins with the application's column."""
    schema = unique_name("joinwait")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True).start()
    app = _App(pg, [f"ALTER TABLE {schema}.t ADD COLUMN w int DEFAULT 7",
                    "SELECT pg_sleep(2.5)"])
    reading = CDCStream._read_joining_table
    joins: list[Any] = []

    def before_snapshot(self: CDCStream, conn: Any, info: Any, join: Any) -> None:
        if info.name == "t" and not app.is_alive() and not app.committed.is_set():
            joins.append(join)
            app.start()
            app.go[0].set()
            assert app.done[0].wait(10)
            app.go[1].set()
        reading(self, conn, info, join)

    monkeypatch.setattr(CDCStream, "_read_joining_table", before_snapshot)
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {schema}.t VALUES (1, 'one')")
            oid_t = relid_of(conn, f"{schema}.t")
        wait_for(lambda: app.committed.is_set() or app.error is not None, "no commit")
        assert app.error is None, app.error
        assert stream.wait_for_joins(timeout=60), "the join never ended"
        rows = _rows(stream.router.readers[oid_t])
        snapshot = [(r["id"], r["v"], r.get("w")) for r in rows if r["_cdc_op"] == "r"]
        assert snapshot == [(1, "one", 7)]
        assert joins and joins[0].attempts >= 2  # it let go and tried again
    finally:
        app.join(30)
        stream.close()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_joiner_that_cannot_lock_the_table_in_time_fails_the_join_naming_the_fix(
        pg, unique_name, plugin, monkeypatch):
    """Past the join's deadline the joiner gives up with an error on the table's reader that
    names the table and the fix (never a silently skipped join); the application's transaction
    is untouched."""
    monkeypatch.setattr(cdc_stream, "JOIN_LOCK_DEADLINE_SECONDS", 1.5)
    schema = unique_name("joinlate")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True).start()
    app = _App(pg, [f"ALTER TABLE {schema}.t ADD COLUMN w int", "SELECT pg_sleep(4)"])
    reading = CDCStream._read_joining_table

    def before_snapshot(self: CDCStream, conn: Any, info: Any, join: Any) -> None:
        if info.name == "t" and not app.is_alive() and not app.committed.is_set():
            app.start()
            app.go[0].set()
            assert app.done[0].wait(10)
            app.go[1].set()
        reading(self, conn, info, join)

    monkeypatch.setattr(CDCStream, "_read_joining_table", before_snapshot)
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            oid_t = relid_of(conn, f"{schema}.t")
        wait_for(lambda: oid_t in stream.router.readers, "the table did not join")
        with pytest.raises(SnapshotError) as raised:
            list(stream.router.readers[oid_t].events(follow=True, timeout=30))
        assert f"{schema}.t" in str(raised.value)
        assert "lock" in str(raised.value)
        assert raised.value.hint
        wait_for(lambda: app.committed.is_set() or app.error is not None, "no commit")
        assert app.error is None, app.error
    finally:
        app.join(30)
        stream.close()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_waiting_for_earlier_writers_does_not_block_later_ones(
        pg, unique_name, plugin, monkeypatch):
    """The joiner waits for the transactions that wrote to the table before it was published
    without taking a lock a writer would queue behind (a SHARE lock did: every later INSERT
    waited for the oldest open writer); both writers' rows reach the reader."""
    schema = unique_name("joinwriters")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, temporary=True)
    release = threading.Event()
    joined = threading.Event()
    real_join = CDCStream._join

    def held_join(self: CDCStream, conn: Any, info: Any, lsn: int) -> None:
        if info.name == "t":
            assert release.wait(60)
        real_join(self, conn, info, lsn)
        if info.name == "t":
            joined.set()

    monkeypatch.setattr(CDCStream, "_join", held_join)
    stream.start()
    try:
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
            oid_t = relid_of(conn, f"{schema}.t")
        with pg.connect(autocommit=False) as first:
            first.execute(f"INSERT INTO {schema}.t VALUES (1, 'first')")  # before published
            release.set()
            assert joined.wait(60), "the table did not join"
            time.sleep(0.5)  # the joiner waits for `first`
            with pg.connect() as later:
                later.execute("SET statement_timeout = '3s'")
                later.execute(f"INSERT INTO {schema}.t VALUES (2, 'later')")
            first.commit()
        assert stream.wait_for_joins(timeout=60), "the join never ended"
        rows = _rows(stream.router.readers[oid_t])
        assert {1, 2} <= {r["id"] for r in rows}, rows
    finally:
        release.set()
        stream.close()
