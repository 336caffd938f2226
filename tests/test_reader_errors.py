"""Each bad input to the reader raises its own clear exception, naming the fix."""

from __future__ import annotations

import pytest

from cdc_notebook import errors
from cdc_notebook.stream.cdc_stream import CDCStream

from .pgutil import drop_slot


@pytest.fixture
def table(pg, unique_name):
    schema = unique_name("bad")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    yield f"{schema}.t"
    drop_slot(pg, schema, like=True)  # leave no slot behind to pin the shared server's WAL


def test_wrong_password(pg, table):
    params = pg.conninfo("tcp")
    params["password"] = "not-the-password"
    with pytest.raises(errors.AuthenticationFailed) as info:
        CDCStream(params, table)
    assert "not-the-password" not in str(info.value)
    assert "Fix:" in str(info.value)


def test_unreachable_host(table):
    with pytest.raises(errors.ServerUnreachable, match="Fix:"):
        CDCStream({"host": "127.0.0.1", "port": 1, "user": "x", "dbname": "x"}, table)


def test_pattern_that_matches_nothing(pg, table):
    with pytest.raises(errors.NoTablesMatched, match="no_such_table"):
        CDCStream(pg.conninfo(), table.split(".")[0] + ".no_such_table")


def test_invalid_regular_expression(pg, table):
    with pytest.raises(errors.InvalidPattern, match=r"user_\[0-9"):
        CDCStream(pg.conninfo(), "public.user_[0-9+")


def test_wal_level_replica(pg_factory):
    server = pg_factory(settings={"wal_level": "replica"})
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(errors.WalLevelNotLogical, match="wal_level = logical"):
        CDCStream(server.conninfo(), "public.t")


def test_no_right_to_replicate(pg, table, unique_name):
    role = unique_name("norep")
    with pg.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
        conn.execute(f"GRANT USAGE ON SCHEMA {table.split('.')[0]} TO {role}")
        conn.execute(f"GRANT SELECT ON {table} TO {role}")
    with pytest.raises((errors.ReplicationNotPermitted, errors.OwnershipRequired),
                       match="REPLICATION|owner"):
        CDCStream(pg.conninfo("tcp", user=role, password=f"pw-{role}"), table)


def test_plugin_not_allowed(pg_factory):
    server = pg_factory(settings={"output_plugin_libraries": "pgoutput, test_decoding"})
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(errors.PluginNotAllowed, match="output_plugin_libraries"):
        CDCStream(server.conninfo(), "public.t", plugin="wal2arrow")


def test_plugin_not_installed(pg_factory):
    # Allowed by name, but the library is nowhere on the server.
    server = pg_factory(plugin=False, settings={
        "output_plugin_libraries": "pgoutput, test_decoding, wal2arrow"})
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(errors.PluginNotInstalled, match="pgoutput"):
        CDCStream(server.conninfo(), "public.t", plugin="wal2arrow")


def test_slot_already_active_elsewhere(pg, table):
    first = CDCStream(pg.conninfo(), table)
    first.start()
    try:
        with pytest.raises(errors.SlotInUse, match="active in another process") as info:
            CDCStream(pg.conninfo(), table, slot_name=first.slot.slot_name)
        assert info.value.active_pid is not None
    finally:
        first.close()


def test_slot_creation_blocked_by_an_open_transaction(pg, table):
    with pg.connect(autocommit=False) as blocker:
        blocker.execute(f"INSERT INTO {table} VALUES (1)")  # a running write transaction
        pid = blocker.info.backend_pid
        with pytest.raises(errors.SlotCreationTimeout, match=str(pid)):
            CDCStream(pg.conninfo(), table, slot_name="cdcnb_blocked_slot", slot_timeout=2)
        blocker.rollback()
