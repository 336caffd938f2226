"""Auto-configuration and teardown against real servers: every check, every bad input."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_notebook.connection.conninfo import connect
from cdc_notebook.errors import (
    AuthenticationFailed,
    ConfigurationError,
    InvalidSlotName,
    NoFreeReplicationSlots,
    NoTablesMatched,
    NotKitManaged,
    OwnershipRequired,
    PluginNotAllowed,
    PluginNotInstalled,
    PublicationMismatch,
    ReplicationNotPermitted,
    ServerUnreachable,
    SlotCreationTimeout,
    SlotInUse,
    TablePrivilegeMissing,
    WalLevelNotLogical,
)
from cdc_notebook.provision.plan import plan_provision, provision
from cdc_notebook.provision.slots import create_slot
from cdc_notebook.provision.status import KIT_PREFIX
from cdc_notebook.provision.teardown import (
    kit_publications,
    list_slots,
    plan_teardown,
    teardown,
)
from cdc_notebook.server.postgres import free_port

SETUP = """
CREATE TABLE public.users (id int PRIMARY KEY, name text);
CREATE TABLE public.orders (id int PRIMARY KEY, user_id int, total numeric);
CREATE TABLE public.audit_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, msg text);
CREATE TABLE public.keyless (a int, b text);
CREATE SCHEMA other;
CREATE TABLE other.things (id int PRIMARY KEY);
"""


# --------------------------------------------------------------------------- fixtures


def drop_database_slots(admin: psycopg.Connection[Any], dbname: str) -> None:
    for _ in range(200):
        rows = admin.execute("SELECT slot_name, active_pid FROM pg_replication_slots "
                             "WHERE database = %s", [dbname]).fetchall()
        if not rows:
            return
        for name, pid in rows:
            if pid is not None:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                continue
            try:
                admin.execute("SELECT pg_drop_replication_slot(%s)", [name])
            except (psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                pass
        time.sleep(0.05)
    raise AssertionError(f"the slots of {dbname} would not go away")


@contextmanager
def private_database(server: Any, dbname: str, setup_sql: str = "") -> Iterator[dict[str, Any]]:
    """A database of our own on a shared server (its public schema is ours alone)."""
    with server.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    info = server.conninfo(dbname=dbname)
    if setup_sql:
        with psycopg.connect(**info, autocommit=True) as conn:
            conn.execute(setup_sql)
    try:
        yield info
    finally:
        with server.connect() as admin:
            drop_database_slots(admin, dbname)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))


@pytest.fixture
def db(pg: Any, unique_name: Callable[[str], str]) -> Iterator[dict[str, Any]]:
    with private_database(pg, unique_name("prov"), SETUP) as info:
        yield info


@pytest.fixture
def conn(db: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**db, autocommit=True) as c:
        yield c


def slot_names(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots "
                                       "WHERE database = current_database()").fetchall()}


def start_streaming(params: dict[str, Any], slot: str) -> psycopg.Connection[Any]:
    """A replication connection reading ``slot`` (test_decoding): the slot becomes active."""
    rc = psycopg.connect(**params, replication="database", autocommit=True)
    rc.pgconn.send_query(sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0").format(
        sql.Identifier(slot)).as_bytes(rc))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(**params, autocommit=True) as c:
            row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                            [slot]).fetchone()
        if row and row[0] == rc.info.backend_pid:
            return rc
        time.sleep(0.05)
    raise AssertionError("the slot never became active")


# --------------------------------------------------------------------------- connecting


def test_wrong_password(pg: Any) -> None:
    secret = "not-the-password-4711"
    with pytest.raises(AuthenticationFailed) as info:
        connect(pg.conninfo("tcp", password=secret))
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert "password" in str(info.value) and info.value.sqlstate == "28P01"


def test_unreachable_host(pg: Any) -> None:
    with pytest.raises(ServerUnreachable) as info:
        connect(host="127.0.0.1", port=free_port(), user="postgres", dbname="postgres",
                password="pw-not-shown", connect_timeout=3)
    assert "listen_addresses" in str(info.value) and "pw-not-shown" not in str(info.value)
    with pytest.raises(ServerUnreachable):
        connect(host="no-such-host.invalid", port=5432, user="x", dbname="x", connect_timeout=3)


def test_connect_passes_libpq_options(pg: Any) -> None:
    with connect(pg.dsn("tcp"), application_name="cdc-test", sslmode="disable") as c:
        assert c.execute("SHOW application_name").fetchone()[0] == "cdc-test"
    with connect(pg.conninfo(), replication=True) as rc:
        res = rc.pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert res.ntuples == 1


# --------------------------------------------------------------------------- validation


def test_wal_level_replica(pg_factory: Callable[..., Any]) -> None:
    server = pg_factory(settings={"wal_level": "replica"})
    with server.connect() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        plan = plan_provision(c, "public.t")
        check = plan.report.get("wal_level")
        assert check is not None and check.status == "error"
        with pytest.raises(WalLevelNotLogical) as info:
            plan.apply()
        assert "wal_level = logical" in str(info.value) and "restart" in str(info.value)
        assert kit_publications(c) == {}  # nothing was changed


def test_no_right_to_replicate(pg: Any, db: dict[str, Any],
                               role_factory: Callable[..., str]) -> None:
    role = role_factory("LOGIN")
    with psycopg.connect(**db, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER TABLE public.users OWNER TO {}").format(
            sql.Identifier(role)))
    with pytest.raises(ReplicationNotPermitted) as info:
        connect({**db, "user": role}, replication=True)
    assert f"ALTER ROLE {role} REPLICATION" in str(info.value)
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as c:
        plan = plan_provision(c, "public.users")
        assert plan.report.get("replication").status == "error"
        with pytest.raises(ReplicationNotPermitted, match="rds_replication"):
            plan.apply()
        assert slot_names(c) == set()


def test_ordinary_replication_role_provisions(pg: Any, db: dict[str, Any],
                                              role_factory: Callable[..., str]) -> None:
    """A non-superuser with REPLICATION that owns its tables: the plugin is tried by a slot."""
    role = role_factory("LOGIN REPLICATION")
    with psycopg.connect(**db, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(db["dbname"]), sql.Identifier(role)))
        for t in ("users", "orders"):
            admin.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier("public", t), sql.Identifier(role)))
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as c:
        plan = plan_provision(c, "public.users, public.orders")
        assert plan.report.ok, str(plan.report)
        assert "loads" in plan.report.get("plugin").message
        result = plan.apply()
        with result.slot:
            assert result.slot.created and result.slot.snapshot_name
            assert result.slot.slot_name in slot_names(c)
        # only our own slot remains; the plugin's trial slot is gone
        assert slot_names(c) == {result.slot.slot_name}


def test_missing_select_and_ownership(pg: Any, db: dict[str, Any],
                                      role_factory: Callable[..., str]) -> None:
    role = role_factory("LOGIN REPLICATION")
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as c:
        plan = plan_provision(c, "public.users")
        assert plan.report.get("select").status == "error"
        assert plan.report.get("publication_owner").status == "error"
        with pytest.raises(TablePrivilegeMissing) as info:
            plan.apply()
        assert f"GRANT SELECT ON public.users TO {role}" in str(info.value)
    with psycopg.connect(**db, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT SELECT ON public.users TO {}").format(sql.Identifier(role)))
    with psycopg.connect(**{**db, "user": role}, autocommit=True) as c:
        plan = plan_provision(c, "public.users", plugin="pgoutput")
        assert "CREATE on the database" in plan.report.get("publication_create").message
        with pytest.raises(OwnershipRequired, match=r"ownership of public\.users"):
            plan.apply()


def test_plugin_not_installed(pg_factory: Callable[..., Any],
                              role_factory: Callable[..., str]) -> None:
    server = pg_factory(plugin=False)
    with server.connect() as c:
        # allow it, so what is missing is the library itself
        c.execute("ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2arrow")
        c.execute("SELECT pg_reload_conf()")
        c.execute("CREATE ROLE repl LOGIN REPLICATION")
        c.execute("GRANT CREATE ON DATABASE postgres TO repl")
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("ALTER TABLE t OWNER TO repl")
    for user in ("postgres", "repl"):  # LOAD as a superuser; a trial slot otherwise
        with server.connect(user=user) as c:
            plan = plan_provision(c, "public.t")
            with pytest.raises(PluginNotInstalled) as info:
                plan.apply()
            assert "wal2arrow" in str(info.value) and "pgoutput" in str(info.value)
            assert plan_provision(c, "public.t", plugin="pgoutput").report.ok


def test_plugin_not_allowed(pg_factory: Callable[..., Any]) -> None:
    server = pg_factory(settings={"output_plugin_libraries": "pgoutput, test_decoding"})
    with server.connect() as c:
        c.execute("CREATE ROLE repl LOGIN REPLICATION")
        c.execute("GRANT CREATE ON DATABASE postgres TO repl")
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("ALTER TABLE t OWNER TO repl")
    for user in ("postgres", "repl"):
        with server.connect(user=user) as c:
            plan = plan_provision(c, "public.t")
            with pytest.raises(PluginNotAllowed) as info:
                plan.apply()
            text = str(info.value)
            assert "output_plugin_libraries" in text and "pgoutput" in text
            if user == "postgres":  # the setting is visible: the exact line to write
                assert "output_plugin_libraries = 'pgoutput, test_decoding, wal2arrow'" in text
            result = provision(c, "public.t", plugin="pgoutput", slot_name=f"cdcnb_{user}")
            assert result.slot is not None and result.slot.plugin == "pgoutput"
            result.slot.close()


def test_no_free_slot(pg_factory: Callable[..., Any]) -> None:
    server = pg_factory(settings={"max_replication_slots": "1"})
    with server.connect() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("SELECT pg_create_logical_replication_slot('taken', 'test_decoding')")
        plan = plan_provision(c, "public.t")
        with pytest.raises(NoFreeReplicationSlots, match="max_replication_slots"):
            plan.apply()


def test_pattern_and_name_errors(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NoTablesMatched):
        plan_provision(conn, "public.nothing_here")
    with pytest.raises(InvalidSlotName):
        plan_provision(conn, "public.users", slot_name="Bad-Name")


def test_keyless_tables(conn: psycopg.Connection[Any]) -> None:
    plan = plan_provision(conn, "public.*")
    check = plan.report.get("replica_identity")
    assert check.status == "error" and "public.keyless" in check.message
    assert "REPLICA IDENTITY FULL" in check.hint and "reject" in check.message
    with pytest.raises(ConfigurationError):
        plan.apply()
    skip = plan_provision(conn, "public.*", keyless="skip", plugin="pgoutput")
    assert "public.keyless" not in {t.qualified_name for t in skip.tables} and skip.report.ok
    full = plan_provision(conn, "public.*", keyless="full", plugin="pgoutput")
    assert full.sql[0] == 'ALTER TABLE "public"."keyless" REPLICA IDENTITY FULL'
    result = full.apply()
    result.slot.close()
    assert conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'public.keyless'::regclass"
                        ).fetchone()[0] == "f"
    conn.execute("UPDATE public.keyless SET b = 'x'")  # allowed: the table has an identity


# --------------------------------------------------------------------------- provisioning


def test_provision_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    plan = plan_provision(conn, ["public.*", "!public.keyless"], plugin="pgoutput")
    assert plan.report.ok, str(plan.report)
    kinds = [s.kind for s in plan.steps]
    # pgoutput: the column history before the slot (exact column identity after DDL)
    assert kinds == ["publication", "publication", "column_history", "slot"]
    assert plan.sql[0].startswith("CREATE PUBLICATION") and "CREATE_REPLICATION_SLOT" in plan.sql[-1]
    assert "CREATE EVENT TRIGGER" in plan.sql[2]
    assert plan.slot_name.startswith(KIT_PREFIX) and plan.publication.startswith(KIT_PREFIX)
    events: list[Any] = []
    first = plan.apply(progress=events.append)
    assert first.slot.created and first.slot.consistent_point > 0
    assert [e.kind for e in events][-1] == "created"
    first.slot.close()
    pubs = kit_publications(conn)
    assert pubs[plan.publication]["slots"] == [plan.slot_name]
    published = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s",
        [plan.publication]).fetchall()}
    assert published == {"users", "orders", "audit_log"}

    again = plan_provision(conn, ["public.*", "!public.keyless"], plugin="pgoutput")
    assert again.steps == [] and again.sql == [] and again.report.ok
    assert (again.slot_name, again.publication) == (plan.slot_name, plan.publication)
    second = again.apply()
    assert not second.slot.created and second.actions == [f"reuse slot {plan.slot_name}"]
    assert slot_names(conn) == {plan.slot_name}

    conn.execute("CREATE TABLE public.extra (id int PRIMARY KEY)")
    grown = plan_provision(conn, ["public.*", "!public.keyless"], plugin="pgoutput")
    assert [s.sql.split(" SET ")[0] for s in grown.steps] == [
        f'ALTER PUBLICATION "{plan.publication}"']
    grown.apply()
    assert plan_provision(conn, ["public.*", "!public.keyless"], plugin="pgoutput").steps == []


def test_exported_snapshot_and_temporary_slot(conn: psycopg.Connection[Any],
                                              db: dict[str, Any]) -> None:
    conn.execute("INSERT INTO public.users VALUES (1, 'before')")
    result = provision(conn, "public.users", temporary=True, slot_name="cdcnb_tmp_snap",
                       plugin="pgoutput")
    slot = result.slot
    assert slot.temporary and slot.snapshot_name and slot.connection is not None
    conn.execute("INSERT INTO public.users VALUES (2, 'after')")
    with psycopg.connect(**db) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
            sql.Literal(slot.snapshot_name)))
        assert reader.execute("SELECT id FROM public.users").fetchall() == [(1,)]
        reader.rollback()
    status = {s.slot_name: s for s in list_slots(conn)}["cdcnb_tmp_snap"]
    assert status.temporary and status.active and status.active_pid == \
        slot.connection.info.backend_pid
    slot.close()
    # It vanishes with its connection (the walsender exits just after the close).
    deadline = time.monotonic() + 15
    while "cdcnb_tmp_snap" in slot_names(conn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cdcnb_tmp_snap" not in slot_names(conn)


def test_sql_method_without_snapshot(conn: psycopg.Connection[Any]) -> None:
    result = provision(conn, "public.users", slot_name="cdcnb_sql_made", slot_method="sql",
                       plugin="test_decoding")
    assert result.slot.snapshot_name is None and result.slot.connection is None
    assert result.slot.consistent_point > 0
    assert "cdcnb_sql_made" in slot_names(conn)


def test_grants_only_when_asked_and_password_kept_secret(
        pg: Any, conn: psycopg.Connection[Any], db: dict[str, Any], unique_name: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    plain = plan_provision(conn, "public.users")
    assert not [s for s in plain.steps if s.kind in ("role", "grant")]
    role = unique_name("cdcrole")
    password = "Tr0ub4dor&3-secret"
    caplog.set_level(logging.DEBUG)
    try:
        plan = plan_provision(conn, "public.users, public.orders", create_role=role,
                              role_password=password, plugin="pgoutput")
        assert plan.report.ok, str(plan.report)
        shown = "\n".join(plan.sql) + str(plan) + repr(plan)
        assert password not in shown and "SCRAM-SHA-256" not in shown and "'********'" in shown
        result = plan.apply()
        result.slot.close()
        assert password not in caplog.text and "SCRAM-SHA-256" not in caplog.text
        # the role: LOGIN REPLICATION, SELECT on the matched tables only
        attrs = conn.execute("SELECT rolcanlogin, rolreplication, rolsuper, rolcreaterole, "
                             "rolcreatedb FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        assert attrs == (True, True, False, False, False)
        privs = dict(conn.execute(
            "SELECT t, has_table_privilege(%s, t, 'SELECT') FROM unnest(ARRAY["
            "'public.users', 'public.orders', 'public.audit_log', 'other.things']) t",
            [role]).fetchall())
        assert privs == {"public.users": True, "public.orders": True,
                         "public.audit_log": False, "other.things": False}
        # the password works (it travelled as a SCRAM verifier)
        with psycopg.connect(**pg.conninfo("tcp", dbname=db["dbname"], user=role,
                                           password=password)) as c2:
            assert c2.execute("SELECT count(*) FROM public.users").fetchone()[0] == 0
        again = plan_provision(conn, "public.users, public.orders", create_role=role,
                               role_password=password, plugin="pgoutput")
        assert again.steps == []
        report = teardown(conn, slot_name=plan.slot_name, publication=plan.publication,
                          drop_role=role)
        assert f"drop slot {plan.slot_name}" in report.actions
    finally:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_existing_publication_not_managed_by_the_kit(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE PUBLICATION theirs FOR TABLE public.users")
    ok = plan_provision(conn, "public.users", publication="theirs", plugin="pgoutput")
    assert ok.report.ok and not [s for s in ok.steps if s.kind == "publication"]
    short = plan_provision(conn, "public.users, public.orders", publication="theirs")
    with pytest.raises(PublicationMismatch, match="ALTER PUBLICATION"):
        short.apply()
    with pytest.raises(NotKitManaged):
        teardown(conn, publication="theirs")
    assert conn.execute("SELECT 1 FROM pg_publication WHERE pubname = 'theirs'").fetchone()


# --------------------------------------------------------------------------- slot creation waits


def test_slot_creation_blocked_by_open_transaction_times_out(
        pg: Any, conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    with psycopg.connect(**db) as blocker:
        blocker.execute("INSERT INTO public.users VALUES (10, 'open')")
        blocker_pid = blocker.info.backend_pid
        events: list[Any] = []
        with pytest.raises(SlotCreationTimeout) as info:
            create_slot(conn, "cdcnb_blocked", plugin="pgoutput", timeout=1.0,
                        progress=events.append, poll_interval=0.1)
        assert info.value.blocking_pids == [blocker_pid]
        assert str(blocker_pid) in str(info.value) and "pg_terminate_backend" in str(info.value)
        waits = [e for e in events if e.kind == "waiting"]
        assert waits and all(blocker_pid in [b.pid for b in e.blocking] for e in waits)
        assert "cdcnb_blocked" not in slot_names(conn)  # nothing left half-made
        blocker.rollback()


def test_slot_creation_reports_the_wait_then_completes(
        conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    blocker = psycopg.connect(**db)
    blocker.execute("INSERT INTO public.users VALUES (11, 'open')")
    seen = threading.Event()
    events: list[Any] = []

    def progress(e: Any) -> None:
        events.append(e)
        if e.kind == "waiting" and any(b.pid == blocker.info.backend_pid for b in e.blocking):
            seen.set()

    out: dict[str, Any] = {}

    def run() -> None:
        with psycopg.connect(**db, autocommit=True) as monitor:
            try:
                out["slot"] = create_slot(monitor, "cdcnb_waited", plugin="pgoutput", timeout=60,
                                          progress=progress, poll_interval=0.05)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert seen.wait(30), "the wait was never reported"
        blocker.commit()
    finally:
        worker.join(60)
        blocker.close()
    assert "error" not in out, out.get("error")
    slot = out["slot"]
    slot.close()
    assert slot.created and "cdcnb_waited" in slot_names(conn)
    waiting = next(e for e in events if e.kind == "waiting")
    assert "waiting for pid" in waiting.message and waiting.blocking[0].state
    assert events[-1].kind == "created"


# --------------------------------------------------------------------------- teardown


def test_slot_active_elsewhere(conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    first = provision(conn, "public.users", slot_name="cdcnb_busy", plugin="test_decoding",
                      slot_method="sql")
    reader = start_streaming(db, "cdcnb_busy")
    try:
        plan = plan_provision(conn, "public.users", slot_name="cdcnb_busy",
                              plugin="test_decoding")
        with pytest.raises(SlotInUse) as info:
            plan.apply()
        assert info.value.active_pid == reader.info.backend_pid
        assert f"pg_terminate_backend({reader.info.backend_pid})" in str(info.value)
        with pytest.raises(SlotInUse, match="force=True"):
            teardown(conn, slot_name="cdcnb_busy")
        assert "cdcnb_busy" in slot_names(conn)
        forced = plan_teardown(conn, slot_name="cdcnb_busy", publication=first.publication,
                               force=True)
        assert forced.sql[0] == f"SELECT pg_terminate_backend({reader.info.backend_pid})"
        report = forced.apply()
        assert report.terminated_pids == [reader.info.backend_pid]
        assert report.actions[1:] == ["drop slot cdcnb_busy",
                                      f"drop publication {first.publication}"]
        assert "cdcnb_busy" not in slot_names(conn)
    finally:
        reader.close()


def test_teardown_drops_only_kit_objects(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_create_logical_replication_slot('user_own_slot', 'test_decoding')")
    conn.execute("CREATE PUBLICATION user_own_pub FOR TABLE public.orders")
    a = provision(conn, "public.users", plugin="pgoutput")
    b = provision(conn, "public.orders", slot_name="named_by_user", slot_method="sql",
                  plugin="pgoutput")
    a.slot.close()
    assert {s.slot_name for s in list_slots(conn)} == {a.slot.slot_name, "named_by_user"}
    assert "user_own_slot" in {s.slot_name for s in list_slots(conn, kit_only=False)}
    with pytest.raises(NotKitManaged):
        teardown(conn, slot_name="user_own_slot")
    report = teardown(conn, all_kit_objects=True)
    assert sorted(report.actions) == sorted([
        f"drop slot {a.slot.slot_name}", "drop slot named_by_user",
        f"drop publication {a.publication}", f"drop publication {b.publication}",
        "drop the column history (schema _cdc_notebook and its event triggers: no kit "
        "publication is left)"])
    assert slot_names(conn) == {"user_own_slot"}
    assert conn.execute("SELECT to_regnamespace('_cdc_notebook')").fetchone()[0] is None
    assert {r[0] for r in conn.execute("SELECT pubname FROM pg_publication").fetchall()} == {
        "user_own_pub"}
    again = teardown(conn, all_kit_objects=True, slot_name=a.slot.slot_name)
    assert again.actions == [] and again.skipped == [f"slot {a.slot.slot_name}: does not exist"]


def test_teardown_of_a_slot_takes_the_publication_made_for_it(
        conn: psycopg.Connection[Any]) -> None:
    alone = provision(conn, "public.users", slot_name="cdcnb_alone", slot_method="sql",
                      plugin="pgoutput")
    provision(conn, "public.orders", slot_name="cdcnb_one", publication="cdcnb_shared",
              slot_method="sql", plugin="pgoutput")
    provision(conn, "public.orders", slot_name="cdcnb_two", publication="cdcnb_shared",
              slot_method="sql", plugin="pgoutput")
    assert kit_publications(conn)["cdcnb_shared"]["slots"] == ["cdcnb_one", "cdcnb_two"]
    assert "temporary" not in kit_publications(conn)["cdcnb_shared"]
    report = teardown(conn, slot_name="cdcnb_alone")
    assert report.actions == ["drop slot cdcnb_alone", f"drop publication {alone.publication} "
                              "(made for the slots that go)"]
    plan = plan_teardown(conn, slot_name="cdcnb_one")  # cdcnb_two still uses the publication
    assert [s.kind for s in plan.steps] == ["drop_slot", "unrecord"]
    plan.apply()
    assert kit_publications(conn)["cdcnb_shared"]["slots"] == ["cdcnb_two"]
    # a slot forgotten on the marker is no longer the kit's, whatever its name
    conn.execute("SELECT pg_create_logical_replication_slot('cdcnb_one', 'pgoutput')")
    assert "cdcnb_one" not in {s.slot_name for s in list_slots(conn)}
    with pytest.raises(NotKitManaged):
        teardown(conn, slot_name="cdcnb_one")
    report = teardown(conn, slot_name="cdcnb_two")
    assert report.actions == ["drop slot cdcnb_two",
                              "drop publication cdcnb_shared (made for the slots that go)",
                              "drop the column history (schema _cdc_notebook and its event "
                              "triggers: no kit publication is left)"]
    assert slot_names(conn) == {"cdcnb_one"} and kit_publications(conn) == {}
    conn.execute("SELECT pg_drop_replication_slot('cdcnb_one')")


def test_list_slots_state(pg: Any, conn: psycopg.Connection[Any]) -> None:
    result = provision(conn, "public.users", slot_name="cdcnb_listed", slot_method="sql",
                       plugin="test_decoding")
    (status,) = [s for s in list_slots(conn) if s.slot_name == "cdcnb_listed"]
    assert status.kit_managed and not status.active and status.active_pid is None
    assert status.wal_status == "reserved" and status.plugin == "test_decoding"
    assert status.confirmed_flush_lsn == result.slot.consistent_point
    if pg.major >= 17:
        assert status.inactive_since is not None and status.invalidation_reason is None
    else:
        assert status.inactive_since is None
    assert status.conflicting in (False, None)
