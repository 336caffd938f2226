"""The column history that makes pgoutput column identity exact (issue 12, finding 9 on the
pgoutput path; cdc_notebook/provision/column_history.py): set-up installs it for pgoutput as a
superuser and says so otherwise, it records what any role's DDL does and nothing else, no
other slot or subscriber sees it, teardown drops it with the last kit publication, and a
history emptied by a crash gives unknown ids, never wrong ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_notebook import CDCStream
from cdc_notebook.provision import column_history
from cdc_notebook.provision.patterns import preview
from cdc_notebook.provision.plan import plan_provision
from cdc_notebook.provision.teardown import teardown

from .pgutil import drop_slot, read_schemas
from .test_provision import drop_database_slots, private_database


@pytest.fixture
def db(pg: Any, unique_name: Callable[[str], str]) -> Iterator[dict[str, Any]]:
    with private_database(pg, unique_name("hist"),
                          "CREATE TABLE public.t1 (id int PRIMARY KEY, v int);"
                          "CREATE TABLE public.t2 (id int PRIMARY KEY, v int);") as info:
        yield info


@pytest.fixture
def conn(db: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**db, autocommit=True) as c:
        yield c


def rows_of(conn: psycopg.Connection[Any], table: str) -> list[tuple[list[int], list[str]]]:
    return [(list(a), list(n)) for a, n in conn.execute(
        "SELECT attnums, names FROM _cdc_notebook.column_history WHERE relid = %s::regclass "
        "ORDER BY lsn, id", (table,)).fetchall()]


def test_pgoutput_set_up_installs_it_once_and_the_last_teardown_drops_it(conn):
    """Only pgoutput set-ups install it (wal2arrow sends attnums), before the slot, once per
    database; tearing down one of two kit streams leaves it, the last one drops it (the event
    triggers with it)."""
    assert "column_history" not in [
        s.kind for s in plan_provision(conn, "public.t1", plugin="wal2arrow").steps]
    first = plan_provision(conn, "public.t1", plugin="pgoutput")
    assert [s.kind for s in first.steps][-2:] == ["column_history", "slot"]
    first.apply().slot.close()
    assert column_history.state(conn) == "installed"
    assert rows_of(conn, "public.t1") == [([1, 2], ["id", "v"])]  # the baseline
    second = plan_provision(conn, "public.t2", plugin="pgoutput")
    assert "column_history" not in [s.kind for s in second.steps]
    second.apply().slot.close()

    report = teardown(conn, slot_name=first.slot_name)
    assert column_history.state(conn) == "installed", str(report)
    report = teardown(conn, slot_name=second.slot_name)
    assert any("column history" in a for a in report.actions), str(report)
    assert column_history.state(conn) == "absent"
    assert conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE "
                        "'\\_cdc\\_notebook%'").fetchone()[0] == 0


def test_it_records_every_roles_ddl_and_only_column_changes(conn, db, role_factory):
    """A role without privileges on the history: its DDL is recorded (the function is
    SECURITY DEFINER), it can read the history but not write it nor run the function; a
    rolled-back ALTER leaves no row, a GRANT none either; a partition's columns are recorded
    when its parent changes; a table without columns and temporary tables do not break or
    clutter it; no publication, FOR ALL TABLES included, ever has it."""
    column_history.install(conn)
    role = role_factory("LOGIN")
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as other:
        other.execute("CREATE TABLE public.theirs (a int, b int)")
        other.execute("ALTER TABLE public.theirs RENAME COLUMN b TO c")
        other.execute("GRANT SELECT ON public.theirs TO PUBLIC")
        with pytest.raises(psycopg.errors.DivisionByZero), other.transaction():
            other.execute("ALTER TABLE public.theirs DROP COLUMN c")
            other.execute("SELECT 1/0")
        assert rows_of(other, "public.theirs") == [([1, 2], ["a", "b"]), ([1, 2], ["a", "c"])]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            other.execute("INSERT INTO _cdc_notebook.column_history (relid, lsn, attnums, "
                          "names, types) VALUES (1, '0/1', '{}', '{}', '{}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            other.execute("DELETE FROM _cdc_notebook.column_history")
        with pytest.raises(psycopg.Error):
            other.execute("SELECT _cdc_notebook.record_columns()")
        other.execute("CREATE TEMPORARY TABLE scratch (x int)")
        other.execute("ALTER TABLE scratch ADD COLUMN y int")
    conn.execute("CREATE TABLE public.parted (k int, v text) PARTITION BY LIST (k)")
    conn.execute("CREATE TABLE public.part1 PARTITION OF public.parted FOR VALUES IN (1)")
    conn.execute("ALTER TABLE public.parted ADD COLUMN w int")
    assert rows_of(conn, "public.part1")[-1] == ([1, 2, 3], ["k", "v", "w"])
    conn.execute("CREATE TABLE public.bare ()")
    conn.execute("ALTER TABLE public.t1 DROP COLUMN v")
    assert rows_of(conn, "public.bare") == [([], [])]
    assert rows_of(conn, "public.t1")[-1] == ([1], ["id"])
    assert conn.execute("SELECT count(*) FROM _cdc_notebook.column_history h "
                        "JOIN pg_class c ON c.oid = h.relid WHERE c.relpersistence <> 'p' "
                        "OR c.relnamespace = '_cdc_notebook'::regnamespace").fetchone()[0] == 0
    seen = preview(conn, ["*.*", "_cdc_notebook.*"], max_age=0)  # patterns never see it
    assert seen.error is None and seen.tables, seen
    assert not [t for t in seen.tables + [t for t, _why in seen.skipped]
                if t.schema == "_cdc_notebook"]
    conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = "
                        "'everything' AND schemaname = '_cdc_notebook'").fetchone()[0] == 0
    assert column_history.uninstall(conn) and column_history.state(conn) == "absent"


def test_without_a_superuser_set_up_says_identity_is_derived(conn, db, role_factory):
    """Event triggers need a superuser: a non-superuser's pgoutput set-up installs nothing
    and its plan says that column identity after renames is derived, and how to install the
    history; a schema of that name the kit did not make is left alone."""
    role = role_factory("LOGIN REPLICATION")
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(db["dbname"]), sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER TABLE public.t1 OWNER TO {}").format(sql.Identifier(role)))
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as other:
        plan = plan_provision(other, "public.t1", plugin="pgoutput")
        assert "column_history" not in [s.kind for s in plan.steps]
        assert any("derived" in n and "superuser" in n and "column_history.install" in n
                   for n in plan.notes), plan.notes
    conn.execute("CREATE SCHEMA _cdc_notebook")
    plan = plan_provision(conn, "public.t1", plugin="pgoutput")
    assert "column_history" not in [s.kind for s in plan.steps]
    assert any("not the kit's" in n for n in plan.notes), plan.notes
    with pytest.raises(psycopg.errors.DuplicateSchema):
        column_history.install(conn)


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_a_history_emptied_by_a_crash_gives_unknown_ids_never_wrong_ones(pg_factory, plugin):
    """The history is unlogged: a crash empties it. Changes read after that, from before it,
    get derived ids; every id either equals wal2arrow's (the server's attnum) or is 0, and
    the change after the next DDL is exact again."""
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (a int PRIMARY KEY, b int)")
    streams = {p: CDCStream(server.conninfo("tcp"), "public.t", plugin=p, slot_name=f"s_{p}",
                            temporary=False) for p in ("wal2arrow", plugin)}
    for s in streams.values():
        s.close()
    with server.connect() as conn:
        conn.execute("INSERT INTO t VALUES (1, 10)")
        conn.execute("ALTER TABLE t DROP COLUMN b")
        conn.execute("ALTER TABLE t ADD COLUMN b int")
        conn.execute("INSERT INTO t VALUES (2, 20)")
    server.kill()
    server.start_again()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM _cdc_notebook.column_history").fetchone()[0] == 0
        conn.execute("ALTER TABLE t RENAME COLUMN b TO c")
        conn.execute("INSERT INTO t VALUES (3, 30)")
    ids: dict[str, list[tuple[int, ...]]] = {}
    for p in streams:
        s = CDCStream(server.conninfo("tcp"), "public.t", plugin=p, slot_name=f"s_{p}",
                      temporary=False)
        try:
            schemas, _seen = read_schemas(s["public.t"], 3)
            ids[p] = [(tuple(e.arrow_schema.names[:2]), e.column_ids) for e in schemas]
            assert s.column_identity.startswith("exact" if p == "wal2arrow" else "derived for 2 of 3"), \
                s.column_identity
        finally:
            s.close()
        drop_slot(server, f"s_{p}")
    truth, derived = ids["wal2arrow"], ids[plugin]
    assert truth == [(("a", "b"), (1, 2)), (("a", "b"), (1, 3)), (("a", "c"), (1, 3))]
    for names, have in derived:  # each id is 0 or the attnum of a column of that name
        assert any(n == names and all(h in (0, w) for w, h in zip(want, have, strict=True))
                   for n, want in truth), (truth, derived)
    assert derived[0][1] == (1, 0)  # "b" was dropped and added again: which b, unknown
    assert derived[-1] == (("a", "c"), (1, 3))  # after the DDL that followed the crash: exact


def test_ddl_inside_a_big_streamed_transaction_and_a_rolled_back_savepoint(pg_factory):
    """A transaction bigger than logical_decoding_work_mem (pgoutput streams it in chunks, the
    kit replays it at its commit) renames a column and adds one of the old name half-way, and
    drops and adds columns in a savepoint it rolls back: pgoutput's ids equal wal2arrow's at
    every schema, and both mirrors equal the table."""
    server = pg_factory(settings={"logical_decoding_work_mem": "64kB"})
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (a int PRIMARY KEY, b int)")
    slots = {p: f"big_{p}" for p in ("wal2arrow", "pgoutput")}
    for p, slot in slots.items():
        for name in (slot, slot + "_live"):  # one read for its events, one by a LiveReader
            CDCStream(server.conninfo("tcp"), "public.t", plugin=p, slot_name=name,
                      temporary=False).close()
    with server.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO t SELECT i, i FROM generate_series(1, 3000) i")
        conn.execute("ALTER TABLE t RENAME COLUMN b TO c")
        conn.execute("ALTER TABLE t ADD COLUMN b int")
        conn.execute("INSERT INTO t SELECT i, i, -i FROM generate_series(3001, 6000) i")
        conn.execute("UPDATE t SET b = 7 WHERE a <= 10")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("ALTER TABLE t DROP COLUMN c")
            conn.execute("ALTER TABLE t ADD COLUMN c text")
            conn.execute("INSERT INTO t VALUES (9999, 1, 'gone')")
            conn.execute("SELECT 1/0")
        conn.execute("INSERT INTO t VALUES (6001, 6001, 1)")
    with server.connect() as conn:
        want = conn.execute("SELECT a, c, b FROM t ORDER BY a").fetchall()
    ids: dict[str, list[tuple[tuple[str, ...], tuple[int, ...]]]] = {}
    mirrors = {}
    for p, slot in slots.items():
        stream = CDCStream(server.conninfo("tcp"), "public.t", plugin=p, slot_name=slot,
                           temporary=False)
        try:
            schemas, seen = read_schemas(stream["public.t"], 6011, timeout=120)
            got: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
            for e in schemas:
                names = tuple(n for n in e.arrow_schema.names if not n.startswith("_cdc"))
                if not got or got[-1] != (names, e.column_ids):
                    got.append((names, e.column_ids))
            assert seen == 6011, (p, seen)
            ids[p] = got
            if p == "pgoutput":
                assert stream.column_identity.startswith("exact"), stream.column_identity
        finally:
            stream.close()
        live_stream = CDCStream(server.conninfo("tcp"), "public.t", plugin=p,
                                slot_name=slot + "_live", temporary=False)
        try:
            from .test_schema_versions import mirror_of
            mirrors[p] = mirror_of(live_stream, "public.t").mirror().sort("a")
        finally:
            live_stream.close()
    with server.connect() as conn:  # pgoutput did stream it (in chunks, before its commit)
        assert conn.execute("SELECT stream_txns FROM pg_stat_replication_slots WHERE "
                            "slot_name = %s", (slots["pgoutput"],)).fetchone()[0] > 0
    assert ids["pgoutput"] == ids["wal2arrow"] == [
        (("a", "b"), (1, 2)), (("a", "c", "b"), (1, 2, 3))]
    for p, frame in mirrors.items():
        assert frame.columns == ["a", "c", "b"], p
        assert frame.rows() == want, p


def test_a_copy_of_the_database_makes_its_history_again(pg, db, unique_name):
    """The history's rows hold one database's OIDs and LSNs: in a copy (here a database made
    from it as a template; a restored dump or an upgraded cluster alike) it is "outdated",
    not trusted (the decoder derives), and the next pgoutput set-up replaces it."""
    with psycopg.connect(**db, autocommit=True) as c:
        assert column_history.install(c) and column_history.state(c) == "installed"
    copy = unique_name("copy")
    with pg.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(copy), sql.Identifier(db["dbname"])))
    try:
        with psycopg.connect(**pg.conninfo(dbname=copy), autocommit=True) as c:
            assert column_history.state(c) == "outdated"
            plan = plan_provision(c, "public.t1", plugin="pgoutput", slot_method="sql")
            (step,) = [s for s in plan.steps if s.kind == "column_history"]
            assert step.description.startswith("replace") and "DROP SCHEMA" in step.sql
            plan.apply()
            assert column_history.state(c) == "installed"
            assert rows_of(c, "public.t1") == [([1, 2], ["id", "v"])]
    finally:
        with pg.connect() as admin:
            drop_database_slots(admin, copy)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(copy)))
