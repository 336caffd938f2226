"""Creating a logical slot: the wait for running write transactions, reported and bounded.

Creating a logical slot waits until every transaction that had written when it started has
ended. :func:`create_slot` sends the command without blocking and, while it waits, asks
``pg_blocking_pids()`` + ``pg_stat_activity`` who it waits for (``progress`` receives each
:class:`ProgressEvent`); past ``timeout`` it cancels the creation cleanly and
:class:`SlotCreationTimeout` names the blocking process ids. Slot and plugin names are checked
before anything is sent.
"""

from __future__ import annotations

import logging
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import connect, conninfo_of
from cdc_notebook.connection.lsn import format_lsn, parse_lsn
from cdc_notebook.errors import (
    CDCError,
    ConfigurationError,
    InvalidSlotName,
    NoFreeReplicationSlots,
    PluginNotAllowed,
    PluginNotInstalled,
    ReplicationNotPermitted,
    SlotCreationTimeout,
    SlotError,
    SlotInUse,
    WalLevelNotLogical,
)

log = logging.getLogger(__name__)

DEFAULT_PLUGIN = "wal2arrow"
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")


@dataclass(frozen=True)
class ProgressEvent:
    """What :func:`create_slot` (and :meth:`~cdc_notebook.provision.plan.ProvisionPlan.apply`)
    report while they work."""

    kind: str  # "step", "waiting", "created", "reused"
    message: str
    elapsed: float = 0.0
    blocking: tuple[BlockingProcess, ...] = ()


@dataclass(frozen=True)
class BlockingProcess:
    """A session whose open transaction the slot creation waits for."""

    pid: int
    user: str | None
    application_name: str | None
    client: str | None
    state: str | None
    xact_age: timedelta | None
    query: str | None

    def __str__(self) -> str:
        age = f", transaction open {self.xact_age.total_seconds():.1f} s" if self.xact_age else ""
        app = f" ({self.application_name})" if self.application_name else ""
        return f"pid {self.pid}{app} user {self.user} {self.state or ''}{age}"


@dataclass
class CreatedSlot:
    """A slot ready to stream from, and the connection that must stay open for it.

    ``snapshot_name`` (exported snapshots only) is valid while ``connection`` stays open and
    runs no other command; a temporary slot lives as long as ``connection``.
    """

    slot_name: str
    plugin: str
    consistent_point: int
    snapshot_name: str | None
    temporary: bool
    created: bool  # False: an existing slot was reused
    connection: psycopg.Connection[Any] | None = field(default=None, repr=False)
    waited: float = 0.0

    @property
    def consistent_point_text(self) -> str:
        return format_lsn(self.consistent_point)

    def close(self) -> None:
        """Close the connection (a temporary slot and an exported snapshot end with it)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self) -> CreatedSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validate_slot_name(name: str) -> str:
    if not isinstance(name, str) or not _SLOT_NAME.fullmatch(name):
        raise InvalidSlotName(
            f"invalid replication slot name {name!r}",
            hint="use 1-63 lower-case letters, digits and underscores, e.g. cdcnb_orders")
    return name


def validate_plugin_name(plugin: str) -> str:
    if not isinstance(plugin, str) or not _PLUGIN_NAME.fullmatch(plugin):
        raise ConfigurationError(f"invalid output plugin name {plugin!r}",
                                 hint="use wal2arrow or pgoutput")
    return plugin


def slot_state(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    """An existing slot's plugin, type, database and state, or None."""
    row = conn.execute(
        """SELECT plugin, slot_type, database, temporary, active, active_pid, wal_status,
                  confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = %s""", [name]).fetchone()
    if row is None:
        return None
    keys = ("plugin", "slot_type", "database", "temporary", "active", "active_pid",
            "wal_status", "confirmed_flush")
    state = dict(zip(keys, row, strict=True))
    if state["confirmed_flush"]:
        state["confirmed_flush"] = parse_lsn(state["confirmed_flush"])
    return state


_BLOCKERS_SQL = """
SELECT a.pid, a.usename::text, a.application_name, a.client_addr::text, a.state,
       now() - a.xact_start, left(a.query, 200)
  FROM pg_stat_activity a
 WHERE a.pid = ANY(pg_blocking_pids(%s))
 ORDER BY a.xact_start NULLS LAST
"""


def blocking_processes(monitor: psycopg.Connection[Any], pid: int) -> list[BlockingProcess]:
    """The sessions the backend ``pid`` waits for (pg_blocking_pids + pg_stat_activity)."""
    rows = monitor.execute(_BLOCKERS_SQL, [pid]).fetchall()
    return [BlockingProcess(*r) for r in rows]


def _result_error(res: Any, what: str, slot_name: str, plugin: str) -> CDCError:
    from psycopg.pq import DiagnosticField

    raw_state = res.error_field(DiagnosticField.SQLSTATE)
    sqlstate = raw_state.decode() if raw_state else None
    raw = res.error_field(DiagnosticField.MESSAGE_PRIMARY)
    msg = raw.decode(errors="replace") if raw else (res.error_message or b"").decode(
        errors="replace").strip()
    return _slot_error(sqlstate, msg, what, slot_name, plugin)


def _slot_error(sqlstate: str | None, msg: str, what: str, slot_name: str,
                plugin: str) -> CDCError:
    if "may not be used as an output plugin" in msg:
        return PluginNotAllowed(
            f"{what}: {msg}",
            hint=f"add {plugin} to output_plugin_libraries in postgresql.conf and reload; or "
            "use plugin='pgoutput', which is always available", sqlstate=sqlstate)
    if sqlstate == "58P01":
        return PluginNotInstalled(f"{what}: {msg}", hint=f"install {plugin} on the server, or "
                                  "use plugin='pgoutput'", sqlstate=sqlstate)
    if sqlstate == "42710":
        return SlotError(f"{what}: {msg}", hint="choose another slot_name, or reuse the slot",
                         sqlstate=sqlstate)
    if sqlstate == "53400":
        return NoFreeReplicationSlots(f"{what}: {msg}", hint="raise max_replication_slots in "
                                      "postgresql.conf and restart, or drop unused slots",
                                      sqlstate=sqlstate)
    if "wal_level" in msg:
        return WalLevelNotLogical(f"{what}: {msg}", hint="set wal_level = logical in "
                                  "postgresql.conf and restart the server", sqlstate=sqlstate)
    if sqlstate == "55006":
        return SlotInUse(f"{what}: {msg}", slot_name=slot_name, active_pid=None,
                         sqlstate=sqlstate)
    if sqlstate == "42501":
        return ReplicationNotPermitted(f"{what}: {msg}", hint="ALTER ROLE <you> REPLICATION;",
                                       sqlstate=sqlstate)
    return SlotError(f"{what}: {msg}", sqlstate=sqlstate)


def create_slot(
    conn: psycopg.Connection[Any],
    slot_name: str,
    *,
    plugin: str = DEFAULT_PLUGIN,
    temporary: bool = False,
    export_snapshot: bool = True,
    method: str = "replication",
    timeout: float = 60.0,
    progress: Callable[[ProgressEvent], None] | None = None,
    poll_interval: float = 0.2,
    conninfo: dict[str, Any] | None = None,
) -> CreatedSlot:
    """Create a logical slot, reporting the wait for running write transactions.

    ``conn`` is an ordinary connection: it watches who blocks the creation. The slot is
    created on a new connection (a ``replication=database`` one for ``method="replication"``,
    which can export a snapshot), returned open in :attr:`CreatedSlot.connection` when it
    holds something (an exported snapshot or a temporary slot), closed otherwise.
    After ``timeout`` seconds the creation is cancelled (nothing is left behind) and
    :class:`SlotCreationTimeout` names the blocking process ids.
    """
    validate_slot_name(slot_name)
    validate_plugin_name(plugin)
    if method not in ("replication", "sql"):
        raise ValueError("method must be 'replication' or 'sql'")
    params = conninfo or conninfo_of(conn)
    replication = method == "replication"
    # the watcher must not hold a transaction open: the creation would wait for it
    monitor = conn if conn.autocommit else connect(params)
    try:
        worker = connect(params, replication=replication)
    except BaseException:
        if monitor is not conn:
            monitor.close()
        raise
    keep_open = False
    try:
        if replication:
            command = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL {} (SNAPSHOT {})").format(
                sql.Identifier(slot_name), sql.SQL("TEMPORARY " if temporary else ""),
                sql.Identifier(plugin),
                sql.Literal("export" if export_snapshot else "nothing")).as_bytes(worker)
        else:
            command = sql.SQL(
                "SELECT slot_name::text, lsn::text, NULL::text, {} "
                "FROM pg_create_logical_replication_slot({}, {}, {})").format(
                sql.Literal(plugin), sql.Literal(slot_name), sql.Literal(plugin),
                sql.Literal(temporary)).as_bytes(worker)
        started = time.monotonic()
        res = _run_waiting(worker, monitor, command, timeout, poll_interval, progress, slot_name,
                           started)
        waited = time.monotonic() - started
        if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
            raise _result_error(res, f"creating slot {slot_name}", slot_name, plugin)
        _name, lsn_text, snapshot, _plugin = (
            (res.get_value(0, i) or b"").decode() or None for i in range(4))
        lsn = parse_lsn(lsn_text or "0/0")
        snapshot_name = snapshot if replication and export_snapshot else None
        keep_open = temporary or snapshot_name is not None
        created = CreatedSlot(slot_name, plugin, lsn, snapshot_name, temporary, True,
                              worker if keep_open else None, waited)
        log.info("created slot %s at %s (waited %.2f s)", slot_name,
                 created.consistent_point_text, waited)
        if progress:
            progress(ProgressEvent("created", f"slot {slot_name} created at "
                                   f"{created.consistent_point_text}", waited))
        return created
    finally:
        if not keep_open:
            worker.close()
        if monitor is not conn:
            monitor.close()


def _run_waiting(worker: psycopg.Connection[Any], monitor: psycopg.Connection[Any],
                 command: bytes, timeout: float, poll_interval: float,
                 progress: Callable[[ProgressEvent], None] | None, slot_name: str,
                 started: float) -> Any:
    """Send ``command`` without blocking; while it runs, report who it waits for."""
    pgconn = worker.pgconn
    pid = worker.info.backend_pid
    pgconn.send_query(command)
    blockers: list[BlockingProcess] = []
    try:
        while True:
            while pgconn.flush() != 0:
                select.select([], [pgconn.socket], [], poll_interval)
            ready, _, _ = select.select([pgconn.socket], [], [], poll_interval)
            if ready:
                pgconn.consume_input()
            if not pgconn.is_busy():
                break
            elapsed = time.monotonic() - started
            blockers = blocking_processes(monitor, pid)
            if progress:
                who = ", ".join(str(b) for b in blockers) or "a consistent point"
                progress(ProgressEvent("waiting", f"creating slot {slot_name}: waiting for {who}",
                                       elapsed, tuple(blockers)))
            if elapsed >= timeout:
                raise SlotCreationTimeout(
                    f"creating slot {slot_name} waited {elapsed:.1f} s for running write "
                    "transactions"
                    + (f" of pid {', '.join(str(b.pid) for b in blockers)}" if blockers else "")
                    + " and was cancelled",
                    blocking_pids=[b.pid for b in blockers],
                    hint="commit or roll back those transactions (or end them: SELECT "
                    "pg_terminate_backend(pid)), then retry; or allow longer (timeout=)")
    except BaseException:
        _cancel(worker, monitor, pid)
        raise
    result = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    return result


def _cancel(worker: psycopg.Connection[Any], monitor: psycopg.Connection[Any], pid: int) -> None:
    """Cancel the pending creation and wait for its error so no half-made slot remains."""
    try:
        monitor.execute("SELECT pg_cancel_backend(%s)", [pid])
    except psycopg.Error:
        pass
    pgconn = worker.pgconn
    deadline = time.monotonic() + 10
    try:
        while pgconn.is_busy() and time.monotonic() < deadline:
            select.select([pgconn.socket], [], [], 0.1)
            pgconn.consume_input()
        while pgconn.get_result() is not None:
            pass
    except psycopg.Error:
        pass
    worker.close()
