"""Each bad input to the reader raises its own clear exception, naming the fix."""

from __future__ import annotations

import time

import pytest

from cdc_notebook import errors
from cdc_notebook.stream.cdc_stream import CDCStream
from cdc_notebook.stream.replication import ReplicationConnection

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
    with pytest.raises(errors.ServerUnreachable, match="Fix:") as info:
        CDCStream({"host": "127.0.0.1", "port": 1, "user": "x", "dbname": "x"}, table)
    assert errors.is_transient(info.value)  # the server may come back: worth retrying


@pytest.mark.parametrize("cls, transient", [
    (errors.StreamLost, True), (errors.ServerUnreachable, True),
    (errors.AuthenticationFailed, False), (errors.ConnectionRejected, False),
    (errors.ConnectionFailed, False), (errors.ReplicationNotPermitted, False),
    (errors.SlotNotFound, False), (errors.SlotDropped, False), (errors.SlotInUse, False),
    (errors.TemporarySlotLost, False), (errors.FrameError, False),
    (errors.MirrorUnavailable, False), (errors.SnapshotUnavailable, False),
])
def test_transient_or_permanent(cls, transient):
    assert issubclass(cls, errors.CDCError)
    assert cls.transient is transient
    exc = cls.__new__(cls)
    assert errors.is_transient(exc) is transient
    assert not errors.is_transient(RuntimeError("a bug is never retried"))


@pytest.mark.parametrize("text", [
    'connection to server on socket "/tmp/s/.s.PGSQL.5432" failed: FATAL:  the database '
    "system is starting up",
    'connection to server at "127.0.0.1", port 5432 failed: FATAL:  the database system is '
    "shutting down",
    'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
])
def test_a_restarting_server_is_transient(text):
    import psycopg

    from cdc_notebook.connection.conninfo import _connection_error

    exc = _connection_error(psycopg.OperationalError(text), {"host": "h", "user": "u"}, True)
    assert isinstance(exc, errors.ServerUnreachable) and errors.is_transient(exc)


def test_replication_connection_with_a_wrong_password_is_permanent(pg):
    params = pg.conninfo("tcp")
    params["password"] = "not-the-password"
    with pytest.raises(errors.AuthenticationFailed) as info:
        ReplicationConnection(params)
    assert not errors.is_transient(info.value)
    assert "not-the-password" not in str(info.value)


def test_wrong_password_on_reconnect_fails_instead_of_retrying(pg, table, unique_name):
    # The password is rotated while the stream runs; the connection then breaks. The reconnect
    # is refused with AuthenticationFailed (permanent): the stream fails with it, at once.
    role = unique_name("rotated")
    password = f"pw-{role}"
    with pg.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
    stream = None
    try:
        stream = CDCStream(pg.conninfo("tcp", user=role, password=password), table)
        stream.start()
        with pg.connect() as conn:
            deadline = time.monotonic() + 10
            while not (pid := conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                    (stream.slot.slot_name,)).fetchone()[0]):
                assert time.monotonic() < deadline, "the stream never became active"
                time.sleep(0.05)
            conn.execute(f"ALTER ROLE {role} PASSWORD 'rotated-{role}'")
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        started = time.monotonic()
        with pytest.raises(errors.AuthenticationFailed) as info:
            for _ in stream[table].batches(follow=True, timeout=60):
                pass
        assert time.monotonic() - started < 30
        assert not errors.is_transient(info.value)
        assert stream.router.reconnects == 1  # one attempt, not a retry loop
        assert password not in str(info.value)
    finally:
        if stream is not None:
            stream.close()
        with pg.connect() as conn:
            conn.execute(f"DROP OWNED BY {role}")  # the publication the stream created
            conn.execute(f"DROP ROLE {role}")


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
                       match=r"REPLICATION|owner"):
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
