"""Tables by identity (issue 12, findings 4-8 and 11): a table is its OID, not its name.

Each test is a regression test for one finding, on both plugins:

* 4: a renamed table keeps its reader (which says so), and the catalog watcher goes on; a
  table renamed while it joins, its old name taken by another, is the one published;
* 5: DROP + CREATE under the same name is a new table, and it joins;
* 6: after a server restart the watcher reconnects (its errors are surfaced, not hidden), new
  tables join, and ``status()`` reconnects;
  plus: an ``ALTER PUBLICATION`` the watcher may not run is reported with the fix;
* 7: ``"s.x"."y"`` and ``"s"."x.y"`` are two readers;
* 8: publication names that need quoting work on both plugins, a missing publication is
  reported as such (not as a dropped slot), and an invalid name is refused up front;
* 11: teardown reports, and when asked restores, the replica identity set-up changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from cdc_notebook.decode.events import TableDropped, TableRenamed, WatcherError
from cdc_notebook.errors import InvalidPublicationName, PublicationNotFound
from cdc_notebook.live.tables import LiveReader
from cdc_notebook.provision.teardown import plan_teardown, teardown
from cdc_notebook.stream.cdc_stream import CDCStream
from cdc_notebook.stream.reader import TableReader

from .pgutil import drop_slot, wait_for

PLUGINS = ["wal2arrow", "pgoutput"]


def _events_until(reader: TableReader, done: Callable[[list[Any]], bool],
                  timeout: float = 60.0) -> list[Any]:
    """The reader's events (following the stream) until ``done(events)``; a wait of more than
    ``timeout`` for the next one fails the test (TimeoutError)."""
    got: list[Any] = []
    it = reader.events(follow=True, timeout=timeout)
    try:
        for event in it:
            got.append(event)
            if done(got):
                break
    finally:
        it.close()
    return got


def _rows(events: list[Any]) -> list[dict[str, Any]]:
    return [r for e in events if isinstance(e, pa.RecordBatch) for r in e.to_pylist()]



def _close(server: Any, stream: CDCStream) -> None:
    stream.close()
    drop_slot(server, stream.slot.slot_name)


# --------------------------------------------------------------------------- finding 4


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_renamed_table_keeps_its_reader(pg, unique_name, plugin):
    schema = unique_name("ren")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.users (id int PRIMARY KEY, note text)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin)
    try:
        reader = stream[f"{schema}.users"]
        relid = reader.relid
        stream.start()
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {schema}.users VALUES (1, 'before')")
            conn.execute(f"ALTER TABLE {schema}.users RENAME TO members")
            conn.execute(f"INSERT INTO {schema}.members VALUES (2, 'after')")
        events = _events_until(reader, lambda ev: len(_rows(ev)) >= 2 and any(
            isinstance(e, TableRenamed) for e in ev))
        assert [r["note"] for r in _rows(events)] == ["before", "after"]
        renames = [e for e in events if isinstance(e, TableRenamed)]
        assert [(e.relid, e.old, e.new) for e in renames] == [
            (relid, f"{schema}.users", f"{schema}.members")]
        assert reader.name == f"{schema}.members"
        assert stream[f"{schema}.members"] is reader
        assert f"{schema}.members" in stream.readers
        assert stream.status().tables[f"{schema}.members"] == relid

        # The watcher is not stuck on the renamed table: a table created later still joins.
        with pg.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.later (id int PRIMARY KEY, note text)")
            conn.execute(f"INSERT INTO {schema}.later VALUES (3, 'later')")
        wait_for(lambda: f"{schema}.later" in stream.readers, "the later table did not join")
        later = _events_until(stream[f"{schema}.later"], lambda ev: len(_rows(ev)) >= 1)
        assert [r["note"] for r in _rows(later)] == ["later"]
        status = stream.status()
        assert status.watcher_error is None, status.watcher_error
        assert set(status.tables) == {f"{schema}.members", f"{schema}.later"}
    finally:
        _close(pg, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_table_renamed_while_joining_whose_name_another_takes_is_published(pg, unique_name,
                                                                             plugin):
    """The torture test's lost changes of a table renamed then dropped (repro
    ``tests/torture/repro/join_while_renamed_name_taken.sql``): the watcher added a joining
    table to the publication by the name it had read, after the table was renamed and another
    one took that name; it published the other one, and the joining table's changes never
    came. The rename is held open until the watcher's ALTER PUBLICATION waits for it."""
    schema = unique_name("joinren")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.keep (id int PRIMARY KEY, v text)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin)
    try:
        stream.start()
        app = pg.connect()
        try:
            app.execute(f"CREATE TABLE {schema}.joining (id int PRIMARY KEY, w int)")
            app.execute(f"INSERT INTO {schema}.joining VALUES (1, 10)")
            relid = int(app.execute(f"SELECT '{schema}.joining'::regclass::oid::int8")
                        .fetchall()[0][0])
            app.autocommit = False
            app.execute(f"ALTER TABLE {schema}.joining RENAME TO moved")
            with pg.connect() as watch:  # the watcher waits for the renamed table's lock
                wait_for(lambda: watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'ALTER PUBLICATION%%'").fetchall(),
                    "the watcher did not try to add the joining table")
            app.execute(f"ALTER TABLE {schema}.keep RENAME TO joining")  # takes the old name
            app.commit()
        finally:
            app.close()
        wait_for(lambda: relid in stream.readers, "the renamed table did not join")
        reader = stream.readers[relid]
        assert stream.wait_for_joins(timeout=60)
        with pg.connect() as conn:
            published = conn.execute(
                "SELECT c.relname::text FROM pg_publication_rel pr JOIN pg_publication p "
                "ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid "
                "WHERE p.pubname = %s ORDER BY 1", (stream.publication,)).fetchall()
            conn.execute(f"INSERT INTO {schema}.moved VALUES (2, 20)")
            conn.execute(f"UPDATE {schema}.moved SET w = 11 WHERE id = 1")
            conn.execute(f"DROP TABLE {schema}.moved")
        events = _events_until(reader, lambda ev: isinstance(ev[-1], TableDropped))
        assert [(r["id"], r["w"], r["_cdc_op"]) for r in _rows(events)] == [
            (1, 10, "r"), (2, 20, "c"), (1, 11, "u")]
        assert [r[0] for r in published] == ["joining", "moved"]  # (before the drop)
        assert stream.status().watcher_error is None
    finally:
        _close(pg, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_live_frames_follow_a_renamed_table(pg, unique_name, plugin):
    schema = unique_name("liveren")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f'CREATE TABLE {schema}."Users" (id int PRIMARY KEY, note text)')
    live = LiveReader(CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin,
                                temporary=True)).start()
    try:
        with pg.connect() as conn:
            conn.execute(f'INSERT INTO {schema}."Users" VALUES (1, \'a\')')
            conn.execute(f'ALTER TABLE {schema}."Users" ADD COLUMN extra int')
            conn.execute(f'INSERT INTO {schema}."Users" VALUES (2, \'b\', 2)')
            conn.execute(f'ALTER TABLE {schema}."Users" RENAME TO members')
            conn.execute(f"INSERT INTO {schema}.members VALUES (3, 'c', 3)")
        live.catch_up(timeout=60)
        wait_for(lambda: f"{schema}.members" in live.frames.tables, "the frames did not follow")
        frame = live[f"{schema}.members"].mirror().sort("id")
        assert frame["id"].to_list() == [1, 2, 3]
        assert frame["extra"].to_list() == [None, 2, 3]
        assert list(live.frames.tables) == [f"{schema}.members"]
        assert live.error is None
    finally:
        live.stop()


# --------------------------------------------------------------------------- finding 5


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_table_dropped_and_created_again_is_a_new_table(pg, unique_name, plugin):
    schema = unique_name("recreate")
    name = f"{schema}.t"
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)")
    stream = CDCStream(pg.conninfo(), name, plugin=plugin)
    try:
        old = stream[name]
        stream.start()
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {name} VALUES (1, 10)")
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, label text)")
            conn.execute(f"INSERT INTO {name} VALUES (2, 'new')")
        events = _events_until(old, lambda ev: isinstance(ev[-1], TableDropped))
        assert [r["id"] for r in _rows(events)] == [1]
        assert old.dropped
        wait_for(lambda: stream[name] is not old, "the new table under the old name did not join")
        new = stream[name]
        assert new.relid != old.relid
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {name} VALUES (3, 'newer')")
        rows = _rows(_events_until(new, lambda ev: len(_rows(ev)) >= 2))
        assert sorted((r["id"], r["label"]) for r in rows) == [(2, "new"), (3, "newer")]
        assert list(stream.readers) == [name]
    finally:
        _close(pg, stream)


# --------------------------------------------------------------------------- finding 6


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_watcher_and_status_survive_a_server_restart(pg_factory, plugin):
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("CREATE SCHEMA rs")
        conn.execute("CREATE TABLE rs.a (id int PRIMARY KEY, note text)")
    stream = CDCStream(server.conninfo(), "rs.*", plugin=plugin)
    try:
        stream.start()
        with server.connect() as conn:
            conn.execute("INSERT INTO rs.a VALUES (1, 'before')")
        assert [r["id"] for r in _rows(_events_until(stream["rs.a"],
                                                     lambda ev: len(_rows(ev)) >= 1))] == [1]
        server.kill()
        time.sleep(4)  # the watcher's checks fail meanwhile: two of them at least
        server.start_again()
        status = stream.status()  # reconnects its catalog connection
        assert status.slot_name == stream.slot.slot_name
        assert status.watcher_failures >= 1
        with server.connect() as conn:
            conn.execute("CREATE TABLE rs.b (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO rs.b VALUES (2, 'after')")
        wait_for(lambda: "rs.b" in stream.readers, "a table created after the restart did "
                  "not join")
        rows = _rows(_events_until(stream["rs.b"], lambda ev: len(_rows(ev)) >= 1))
        assert [r["id"] for r in rows] == [2]
        # the failed checks were surfaced as events too, not swallowed
        events = list(stream["rs.a"].events(timeout=60))
        errors = [e for e in events if isinstance(e, WatcherError)]
        assert errors and errors[0].transient
        assert stream.status().watcher_error is None
    finally:
        stream.close()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_join_the_role_may_not_run_is_reported_with_the_fix(pg, unique_name, plugin):
    schema = unique_name("own")
    role = unique_name("cdcrole")
    with pg.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
        conn.execute(f"GRANT CREATE ON DATABASE postgres TO {role}")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    with pg.connect(user=role) as conn:
        conn.execute(f"CREATE TABLE {schema}.mine (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(user=role), f"{schema}.*", plugin=plugin)
    try:
        stream.start()
        with pg.connect() as conn:  # a superuser's table: the role cannot add it
            conn.execute(f"CREATE TABLE {schema}.theirs (id int PRIMARY KEY)")
            conn.execute(f"GRANT SELECT ON {schema}.theirs TO {role}")
        events = _events_until(stream[f"{schema}.mine"],
                               lambda ev: any(isinstance(e, WatcherError) for e in ev))
        error = next(e for e in events if isinstance(e, WatcherError))
        assert f"{schema}.theirs" in error.message
        assert not error.transient
        assert "ALTER PUBLICATION" in (error.hint or "")
        assert f"{schema}.theirs" in (stream.status().watcher_error or "")
        assert f"{schema}.theirs" not in stream.readers
    finally:
        _close(pg, stream)


# --------------------------------------------------------------------------- finding 7


@pytest.mark.parametrize("plugin", PLUGINS)
def test_tables_whose_names_join_to_the_same_text_have_their_own_readers(pg, unique_name,
                                                                         plugin):
    base = unique_name("amb")
    with pg.connect() as conn:
        conn.execute(f'CREATE SCHEMA "{base}.x"')
        conn.execute(f'CREATE TABLE "{base}.x"."y" (id int PRIMARY KEY, a text)')
        conn.execute(f'CREATE SCHEMA "{base}"')
        conn.execute(f'CREATE TABLE "{base}"."x.y" (id int PRIMARY KEY, b int)')
    stream = CDCStream(pg.conninfo(), [f'"{base}.x"."y"', f'"{base}"."x.y"'], plugin=plugin)
    try:
        first = stream[f'"{base}.x"."y"']
        second = stream[f'"{base}"."x.y"']
        assert first is not second
        assert sorted(stream.readers) == sorted([f'"{base}.x".y', f'{base}."x.y"'])
        assert stream[f'"{base}.x".y'] is first and stream[f'{base}."x.y"'] is second
        with pytest.raises(KeyError, match="ambiguous") as ambiguous:
            stream[f"{base}.x.y"]
        assert f'"{base}.x".y' in str(ambiguous.value) and f'{base}."x.y"' in str(
            ambiguous.value)
        with pg.connect() as conn:
            conn.execute(f'INSERT INTO "{base}.x"."y" VALUES (1, \'one\')')
            conn.execute(f'INSERT INTO "{base}"."x.y" VALUES (2, 2)')
        rows_1 = _rows(_events_until(first, lambda ev: len(_rows(ev)) >= 1))
        rows_2 = _rows(_events_until(second, lambda ev: len(_rows(ev)) >= 1))
        assert [(r["id"], r["a"]) for r in rows_1] == [(1, "one")] and "b" not in rows_1[0]
        assert [(r["id"], r["b"]) for r in rows_2] == [(2, 2)] and "a" not in rows_2[0]
        assert list(first.batches(timeout=30)) == [] and list(second.batches(timeout=30)) == []
    finally:
        _close(pg, stream)


# --------------------------------------------------------------------------- finding 8


@pytest.mark.parametrize("plugin", PLUGINS)
def test_publication_names_that_need_quoting(pg, unique_name, plugin):
    schema = unique_name("pubq")
    suffix = schema.rsplit("_", 2)[-2]
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    for i, publication in enumerate([f"MyPub{suffix}", f"a b; {suffix}", f"a,{suffix}"]):
        stream = CDCStream(pg.conninfo(), f"{schema}.t", plugin=plugin, publication=publication)
        try:
            assert stream.publication == publication
            with pg.connect() as conn:
                conn.execute(f"INSERT INTO {schema}.t VALUES ({i})")
            rows = _rows(_events_until(stream[f"{schema}.t"], lambda ev: len(_rows(ev)) >= 1))
            assert [r["id"] for r in rows] == [i], publication
        finally:
            _close(pg, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_missing_publication_is_not_reported_as_a_dropped_slot(pg, unique_name, plugin):
    schema = unique_name("nopub")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo(), f"{schema}.t", plugin=plugin, publication=f"Pub{schema}")
    try:
        stream.start()
        with pg.connect() as conn:
            conn.execute(f'DROP PUBLICATION "Pub{schema}"')
            conn.execute(f"INSERT INTO {schema}.t VALUES (1)")
        with pytest.raises(PublicationNotFound) as missing:
            _events_until(stream[f"{schema}.t"], lambda ev: False, timeout=60)
        assert f"Pub{schema}" in missing.value.message
        assert "CREATE PUBLICATION" in (missing.value.hint or "")
        with pg.connect() as conn:  # the slot is fine: nothing tells anyone to drop it
            assert conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                (stream.slot.slot_name,)).fetchone()
    finally:
        _close(pg, stream)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_invalid_publication_name_is_refused_up_front(pg, unique_name, plugin):
    schema = unique_name("badpub")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    for bad in ["p" * 64, "", "nul\x00name"]:
        with pytest.raises(InvalidPublicationName) as refused:
            CDCStream(pg.conninfo(), f"{schema}.t", plugin=plugin, publication=bad)
        assert refused.value.hint
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname LIKE 'ppp%'"
                            ).fetchone()[0] == 0


# --------------------------------------------------------------------------- finding 11


@pytest.mark.parametrize("plugin", PLUGINS)
def test_teardown_reports_and_restores_the_replica_identity_it_changed(pg, unique_name, plugin):
    schema = unique_name("ident")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.plain (a int, b text)")
        conn.execute(f"CREATE TABLE {schema}.nothing (a int, b text)")
        conn.execute(f"ALTER TABLE {schema}.nothing REPLICA IDENTITY NOTHING")
        conn.execute(f"CREATE TABLE {schema}.keyed (id int PRIMARY KEY)")

    def identities() -> dict[str, str]:
        with pg.connect() as conn:
            return dict(conn.execute(
                "SELECT relname::text, relreplident::text FROM pg_class "
                "WHERE relnamespace = %s::regnamespace AND relkind = 'r'", (schema,)).fetchall())

    stream = CDCStream(pg.conninfo(), f"{schema}.*", plugin=plugin, keyless="full")
    stream.close()
    drop_slot(pg, stream.slot.slot_name)
    assert identities() == {"plain": "f", "nothing": "f", "keyed": "d"}
    with pg.connect() as conn:
        plan = plan_teardown(conn, publication=stream.publication)
        text = "\n".join(plan.notes)
        assert f"{schema}.plain" in text and f"{schema}.nothing" in text
        assert "restore_replica_identity=True" in text
        report = teardown(conn, publication=stream.publication, restore_replica_identity=True)
    assert identities() == {"plain": "d", "nothing": "n", "keyed": "d"}
    done = "\n".join(report.actions)
    assert f"{schema}.plain" in done and "DEFAULT" in done
    assert f"{schema}.nothing" in done and "NOTHING" in done
