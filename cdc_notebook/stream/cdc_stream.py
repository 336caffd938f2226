"""Auto-configured CDC: patterns → publication and slot → one stream → per-table readers.

``CDCStream`` is what the seed calls ``ArrowCDCReader``; ``ArrowCDCReaderConfig.auto_configure``
keeps the seed's API as its README writes it::

    readers = ArrowCDCReaderConfig.auto_configure(host="localhost", database="mydb",
                                                  user="postgres", password="...",
                                                  tables="public.*")
    async for batch in readers["public.users"].read_batches():
        ...
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import (
    apply_session_settings,
    connect,
    connect_session,
    conninfo_of,
    one_row,
    session_conninfo,
)
from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.decode.events import LogicalMessage, RelationSchema, WatcherError
from cdc_notebook.errors import (
    CDCError,
    OwnershipRequired,
    PublicationNotFound,
    ServerUnreachable,
    SlotNotFound,
    SnapshotError,
    SnapshotUnavailable,
    TableDroppedDuringSnapshot,
    TemporarySlotLost,
)
from cdc_notebook.provision.patterns import (
    CatalogCache,
    TableInfo,
    TablePattern,
    parse_patterns,
    select_tables,
)
from cdc_notebook.provision.plan import plan_provision
from cdc_notebook.provision.slots import DEFAULT_PLUGIN
from cdc_notebook.provision.status import SlotStatus, _fmt_bytes, fetch_slot_status
from cdc_notebook.stream.joins import WATERMARK_PREFIX, TableJoin, snapshot_relation
from cdc_notebook.stream.names import ReaderMap
from cdc_notebook.stream.reader import TableReader
from cdc_notebook.stream.replication import ReplicationConnection
from cdc_notebook.stream.router import CatalogChanges, ChangeRouter, WalsenderState
from cdc_notebook.stream.source import ReplicationSource, plugin_decoders

T = TypeVar("T")
log = logging.getLogger(__name__)

# How many times a joining table's snapshot is tried when the table is renamed under it.
JOIN_SNAPSHOT_ATTEMPTS = 20
# The joiner's locks never make an application's transaction fail (docs/reader.md, "Joins and
# locks"): each lock it asks for is waited for at most JOIN_LOCK_TIMEOUT_MS, and at most a
# fifth of the server's deadlock_timeout (the application's deadlock check comes later); when
# the wait ends, the attempt lets go of everything it held, backs off and tries again. Past
# JOIN_LOCK_DEADLINE_SECONDS (counted from the join's start, the wait for earlier writers
# included) the join fails with an error naming the table and the sessions in its way.
JOIN_LOCK_TIMEOUT_MS = 200
JOIN_LOCK_DEADLINE_SECONDS = 300.0
# How many times the joiner gives up a read of the table because an application's lock request
# (an ALTER TABLE) waits for it; after that it reads to the end (the ALTER waits for the read).
JOIN_YIELDS = 10

# The transactions that hold a lock on the table (or a partition of it) that a writer holds:
# they may have written to it before it was added to the publication. (pg_inherits, not
# pg_partition_tree(), which locks every partition.)
_TABLE_TREE = """
WITH RECURSIVE tree(relid) AS (
    SELECT %(relid)s::oid
    UNION ALL
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
)"""
_WRITERS = _TABLE_TREE + """
SELECT DISTINCT l.virtualtransaction, l.pid FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND l.relation IN (SELECT relid FROM tree)
  AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                 'AccessExclusiveLock')
  AND l.pid IS DISTINCT FROM pg_backend_pid()
"""
_STILL_OPEN = """
SELECT DISTINCT virtualtransaction, pid FROM pg_catalog.pg_locks
WHERE virtualtransaction = ANY(%s)
"""
# A session whose lock request on the table waits for the joiner's read (its ACCESS SHARE).
_WAITING_FOR_READER = """
SELECT l.pid FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND NOT l.granted AND l.relation = ANY(%s::oid[])
  AND %s = ANY(pg_catalog.pg_blocking_pids(l.pid))
LIMIT 1
"""
# Who holds the table in a way the joiner's ACCESS SHARE waits for (for the error).
_HOLDERS = _TABLE_TREE + """
SELECT DISTINCT l.pid FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND l.relation IN (SELECT relid FROM tree)
  AND l.mode = 'AccessExclusiveLock' AND l.pid IS DISTINCT FROM pg_backend_pid()
ORDER BY 1
"""


# Whether the publication lists a table by itself (catalog only: no table is opened).
_PUBLISHED = """
    SELECT 1 FROM pg_catalog.pg_publication_rel pr
    JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
    WHERE p.pubname = %s AND pr.prrelid = %s::oid
"""


class _TryAgain(Exception):
    """DDL got in the way of a joining table's snapshot (see _read_joining_table): the attempt
    let go of everything it held; tried again."""


class _LockBusy(_TryAgain):
    """A lock the joiner asked for was not free within its lock_timeout, or it gave way to
    an application waiting for the table: tried again until JOIN_LOCK_DEADLINE_SECONDS."""


def _relation_by_oid(conn: psycopg.Connection[Any], relid: int) -> tuple[str, str, str] | None:
    """The relation's current schema, name and relkind (None: there is no such relation)."""
    row = conn.execute(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::oid",
        (relid,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _join_lock_timeout_ms(conn: psycopg.Connection[Any]) -> int:
    """The joiner's lock_timeout: JOIN_LOCK_TIMEOUT_MS, at most a fifth of the server's
    deadlock_timeout (milliseconds), at least 10 ms."""
    row = conn.execute("SELECT setting::int8 FROM pg_catalog.pg_settings "
                       "WHERE name = 'deadlock_timeout'").fetchone()
    deadlock_ms = int(row[0]) if row else 1000
    return max(10, min(JOIN_LOCK_TIMEOUT_MS, deadlock_ms // 5))


def _backoff(attempt: int) -> float:
    """Seconds before a joiner's next try: doubling from 25 ms to 2 s, jittered."""
    return float(min(2.0, 0.025 * 2 ** min(attempt, 7)) * random.uniform(0.5, 1.0))


# A table that matches the patterns but could not join (its ALTER PUBLICATION failed) is tried
# again this often; sooner when it turns up in the publication (someone ran the fix).
JOIN_RETRY_SECONDS = 30.0
# Tries at adding a joining table to the publication under its current name (each one undone
# when the name turned out to be another table's by then: CDCStream._publish).
JOIN_PUBLISH_ATTEMPTS = 5


class _Connections:
    """The stream's ordinary connections, apart from the stream so its finalizer can close
    them: ``catalog`` (status, WAL positions; opened again after a server restart) and
    ``watch``, the catalog watcher's own (opened by the watcher thread, again after a failure).
    """

    def __init__(self, catalog: psycopg.Connection[Any]):
        self.catalog = catalog
        self.watch: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        for conn in (self.catalog, self.watch):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass


def _broken(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.closed or conn.broken)


def _wal_lsn(conn: psycopg.Connection[Any]) -> int:
    return parse_lsn(str(conn.execute("SELECT pg_current_wal_lsn()::text").fetchall()[0][0]))


class CDCStream:
    """CDC over one slot: validated, provisioned, streamed once, fanned out per table.

    Parameters mirror :func:`cdc_notebook.provision.plan.plan_provision` (``tables`` patterns,
    ``slot_name``, ``publication``, ``plugin``, ``temporary``, ``keyless``...); ``conninfo`` is a
    DSN string or a dict of libpq parameters (TLS options pass through).

    What it leaves on the server (docs/provisioning.md, "Leaving nothing behind"): with
    ``temporary=True`` nothing once closed — the slot goes with the stream's connection, and the
    kit publication made for it is dropped by :meth:`close` (also when the stream is garbage
    collected or the interpreter exits); a publication left by a process killed mid-stream is
    dropped by the next stream's start (:func:`~cdc_notebook.provision.teardown.
    sweep_orphaned_publications`) or by ``teardown(conn)``. A permanent slot (the default,
    so a reader can stop and resume) stays with its publication, retaining WAL, until
    :meth:`teardown`; ``repr(stream)`` and ``status().summary()`` say which it is.
    """

    def __init__(self, conninfo: str | dict[str, Any] | None = None,
                 tables: str | Iterable[str | TablePattern] = "public.*", *,
                 slot_name: str | None = None, publication: str | None = None,
                 plugin: str | None = None, temporary: bool = False,
                 memory_limit: int = 256 << 20, reconnect: bool = True,
                 slot_timeout: float = 60.0, snapshot: bool = False,
                 snapshot_progress: Callable[[Any], None] | None = None,
                 snapshot_workers: int = 2, watch: bool = True,
                 on_table_added: Callable[[str], None] | None = None,
                 status_interval: float = 1.0, acknowledge: str = "consumed",
                 **provision_options: Any):
        self._source: ReplicationSource | None = None
        self._conns = _Connections(connect(conninfo))
        created = None  # the slot this start made, until the stream stands
        try:
            self._catalog_lock = threading.Lock()
            self.conninfo = conninfo_of(self.catalog)
            if isinstance(conninfo, dict) and conninfo.get("password"):
                self.conninfo["password"] = conninfo["password"]
            elif isinstance(conninfo, str):
                self.conninfo = {**psycopg.conninfo.conninfo_to_dict(conninfo)}
            options = dict(tables=tables, slot_name=slot_name, publication=publication,
                           temporary=temporary, export_snapshot=snapshot,
                           slot_method="replication" if temporary or snapshot else "sql",
                           slot_timeout=slot_timeout, **provision_options)
            _sweep(self.catalog)
            if plugin is None:
                # wal2arrow when the server has it and allows it; pgoutput (always there) otherwise.
                self.plan = plan_provision(self.catalog, plugin=DEFAULT_PLUGIN, **options)
                check = self.plan.report.get("plugin")
                if check is not None and check.status == "error":
                    self.plugin = "pgoutput"
                    self.plugin_reason = (f"pgoutput, because {DEFAULT_PLUGIN} cannot be used here: "
                                          f"{check.message}" + (f" (to use it: {check.hint})"
                                                                if check.hint else ""))
                    self.plan = plan_provision(self.catalog, plugin="pgoutput", **options)
                else:
                    self.plugin = DEFAULT_PLUGIN
                    self.plugin_reason = f"{DEFAULT_PLUGIN}, because the server has it and allows it"
            else:
                self.plugin = plugin
                self.plugin_reason = f"{plugin}, as asked"
                self.plan = plan_provision(self.catalog, plugin=plugin, **options)
            result = self.plan.apply()
            created = result.slot if result.slot is not None and result.slot.created else None
            self.tables: list[TableInfo] = result.tables
            self.publication = result.publication
            if result.slot is None:  # create_slot=False, and no slot of that name exists
                raise SlotNotFound(
                    "there is no replication slot to stream from"
                    + (f": {slot_name!r} does not exist" if slot_name else ""),
                    hint="pass the slot_name of an existing slot, or let the kit create one "
                    "(create_slot=True, the default)")
            self.slot = result.slot
            self.temporary = temporary
            self.snapshot = snapshot
            self.patterns = parse_patterns(tables)
            self.watch = watch and self.publication is not None
            self._catalog_cache = CatalogCache()
            self.on_table_added = on_table_added
            self.joined: list[str] = []
            self.snapshot_progress = snapshot_progress
            self.snapshot_workers = snapshot_workers
            if snapshot and not (self.slot.created and self.slot.snapshot_name):
                raise SnapshotUnavailable(
                    f"slot {self.slot.slot_name} already exists, so no snapshot consistent with "
                    "it can be taken", hint="resume without snapshot=True (the slot goes on "
                    "where it was acknowledged), or drop the slot to start over with a snapshot")
            self.decoder_name = self.plugin
            self._first_connection = self.slot.connection
            if acknowledge not in ("consumed", "durable"):
                raise ValueError("acknowledge must be 'consumed' or 'durable'")
            self.router = ChangeRouter(self._open_source, current_wal_lsn=self.current_wal_lsn,
                                       memory_limit=memory_limit, reconnect=reconnect,
                                       status_interval=status_interval,
                                       table_changes=self._table_changes,
                                       walsender_state=self._walsender_state)
            self.router.acks.durable_only = acknowledge == "durable"
            self._join_failures: dict[int, tuple[WatcherError, float]] = {}
            # The names read now label the tables from this WAL position on: a rename the
            # stream meets later relabels a reader, an older change does not.
            seen_at = self.current_wal_lsn()
            for info in self.tables:
                self.router.add_reader(info.oid, info.schema, info.name, info.change_key,
                                       label_lsn=seen_at)
            # Readers by table identity (OID), looked up by name: names.ReaderMap.
            self.readers = ReaderMap(self.router.readers)
        except BaseException:
            if created is not None and created.temporary:
                # nothing of a temporary stream that could not start stays behind
                created.close()
                publication = getattr(self, "publication", None) or self.plan.publication
                if publication:
                    _release(self._conns, self.conninfo, publication, created.slot_name)
            self.catalog.close()  # nothing else was opened, or it closed itself
            raise
        # a temporary slot's publication goes with it (unless another kit slot still uses it)
        release = (self.publication, self.conninfo) if self.slot.temporary and \
            self.publication else None
        self._finalizer = weakref.finalize(self, CDCStream._cleanup, self.router, self._conns,
                                           self.slot, release)

    @property
    def catalog(self) -> psycopg.Connection[Any]:
        """The stream's ordinary connection (status, positions), opened again after a server
        restart."""
        return self._conns.catalog

    def _on_catalog(self, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``query`` on the catalog connection; a connection the server dropped (a restart) is
        opened again first (a server still down raises :class:`ServerUnreachable`)."""
        with self._catalog_lock:
            conn = self._conns.catalog
            if not _broken(conn):
                try:
                    return query(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    if not _broken(conn):
                        raise
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conns.catalog = connect(self.conninfo)
            return query(self._conns.catalog)

    # ---- the stream

    def _open_source(self, flushed: int) -> ReplicationSource:
        if self._first_connection is not None:
            conn, self._first_connection = self._first_connection, None
            if self.snapshot:
                # The exported snapshot lives until this connection runs another command:
                # read every table at it first, then start streaming on the same connection.
                self._take_snapshot()
            # pgoutput's text output follows the walsender's session settings
            apply_session_settings(conn)
            rc = ReplicationConnection.adopt(conn)
        else:
            if self.temporary and (self.router.reconnects or self.router.restarts):
                raise TemporarySlotLost(
                    f"the temporary slot {self.slot.slot_name!r} vanished with its connection; "
                    "changes after the last one read cannot be recovered",
                    hint="use a permanent slot (temporary=False) to survive reconnects")
            rc = ReplicationConnection(session_conninfo(self.conninfo))
        # pgoutput in binary mode needs a new connection to switch to text for a relation that
        # needs it, which a temporary slot does not survive: text from the start there; after
        # a switch, reconnects stay in text.
        binary = False if self.temporary or self.router.restarts else None
        source = ReplicationSource(
            rc, self.slot.slot_name, plugin_decoders(self.plugin, self.publication, self.conninfo),
            binary=binary)
        if self.plugin == "pgoutput" and source.decoder is not None and binary is False:
            error = self.router.last_error
            source.decoder.mode_reason = (  # type: ignore[attr-defined]
                f"text: switched from binary: {getattr(error, 'message', error)}"
                if self.router.restarts else
                "text: a temporary slot streams pgoutput in text (switching from binary for a "
                "relation that needs text takes a new connection, which the slot would not "
                "survive)")
        self._source = source
        return source

    @property
    def decoding_mode(self) -> str:
        """How the stream is decoded: Arrow IPC frames (wal2arrow), or pgoutput's binary or
        text mode and why (a binary stream switches to text for a relation that needs it)."""
        source = self._source
        return source.mode_reason if source is not None else "not started"

    def table_schema(self, relid: int) -> RelationSchema | None:
        """A table's schema as the catalog has it now (its published columns, key and
        attnums), for a reader that has had no change yet: ``LiveReader`` starts its mirror
        empty with it. None when the table is gone or not readable."""
        from cdc_notebook.snapshot.tables import plan_table

        def query(conn: psycopg.Connection[Any]) -> RelationSchema | None:
            try:
                plan = plan_table(conn, relid, publication=self.publication)
            except CDCError as exc:
                log.info("table %s: no schema from the catalog (%s)", relid, exc)
                return None
            return snapshot_relation(conn, relid, plan.namespace, plan.name, plan.schema)

        return self._on_catalog(query)

    @property
    def column_identity(self) -> str:
        """Where the schemas' ``column_ids`` (attnums) come from: wal2arrow sends them;
        pgoutput's come from the column history when set-up installed it, else are derived
        from the catalog (docs/pgoutput.md, "Column identity")."""
        source = self._source
        if source is None:
            return "not started"
        counts = getattr(source.decoder, "identity_counts", None)
        if counts is None:
            return "exact: wal2arrow sends each column's attnum"
        if counts["derived"]:
            return (f"derived for {counts['derived']} of {counts['derived'] + counts['exact']} "
                    "Relation message(s): no column history covers their changes "
                    "(docs/pgoutput.md, \"Column identity\")")
        return (f"exact: from the column history ({counts['exact']} Relation message(s) so "
                "far)")

    def _take_snapshot(self) -> None:
        from cdc_notebook.snapshot.tables import snapshot_table

        if not self.slot.snapshot_name:  # __init__ refused snapshot=True without one
            raise RuntimeError(f"internal error: slot {self.slot.slot_name} exported no snapshot")
        snap = (self.slot.snapshot_name, self.slot.consistent_point)
        for info in self.tables:
            for batch in snapshot_table(self.conninfo, info.oid, snap,
                                        workers=self.snapshot_workers,
                                        publication=self.publication,
                                        progress=self.snapshot_progress):
                self.router.put_snapshot(info.oid, batch)

    # ---- the catalog watcher (docs/reader.md)

    def _table_changes(self) -> CatalogChanges:
        """One look at the catalog, on the watcher's own connection (opened again after a
        failure): the stream's tables that were dropped or renamed (by OID, with the WAL
        position they were seen at), and tables that started matching the patterns, which
        join. Raises when the catalog cannot be read: the router reports it and tries again."""
        conns = self._conns
        try:
            if conns.watch is None or _broken(conns.watch):
                if conns.watch is not None:
                    conns.watch.close()
                conns.watch = None
                conns.watch = connect(self.conninfo)
            return self._look_at_catalog(conns.watch)
        except psycopg.Error as exc:
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                raise ServerUnreachable(
                    f"the catalog watcher lost its connection: {exc}",
                    hint="it connects again by itself once the server answers; meanwhile "
                    "tables do not join and renames and drops are not seen") from None
            raise CDCError(f"the catalog watcher's query failed: "
                           f"{exc.diag.message_primary or exc}", sqlstate=exc.sqlstate) from None

    def _look_at_catalog(self, conn: psycopg.Connection[Any]) -> CatalogChanges:
        readers = {relid: r for relid, r in list(self.router.readers.items())
                   if not r.table_dropped}
        # Any cached answer is checked against the catalog fingerprint (max_age of a
        # microsecond); the whole catalog is read again only when that changed.
        catalog = self._catalog_cache.tables(conn, max_age=1e-6) if self.watch else None
        rows = conn.execute(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::oid[])",
            (list(readers),)).fetchall()
        # Read after the catalog: every change made before the drops and renames it shows
        # is before this position.
        changes = CatalogChanges(_wal_lsn(conn))
        present = {int(oid): (schema, table) for oid, schema, table in rows}
        for relid, reader in readers.items():
            where = present.get(relid)
            if where is None:
                changes.gone.append(relid)
            elif where != (reader.schema_name, reader.table_name):
                changes.renamed.append((relid, where[0], where[1]))
        if self.publication is not None and not conn.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)).fetchall():
            # wal2arrow (and pgoutput before PostgreSQL 18) fail when they decode a change;
            # pgoutput on 18 skips a missing publication silently: its changes never arrive.
            changes.fatal = PublicationNotFound(
                f"the stream's publication {self.publication} does not exist (it was dropped "
                "while streaming): the server no longer sends the changes of its tables",
                hint="create it again (CREATE PUBLICATION ... FOR TABLE ...; a new CDCStream "
                "with the same patterns does that) and resume from the slot, which is fine; on "
                "PostgreSQL 18 pgoutput skips the changes made while it was missing")
        elif catalog is not None:
            changes.problems = self._join_new_tables(conn, catalog, set(readers), changes.lsn)
        return changes

    def _join_new_tables(self, conn: psycopg.Connection[Any], catalog: list[TableInfo],
                         known: set[int], lsn: int) -> list[WatcherError]:
        """Tables (OIDs) the stream has no reader for that match the patterns join it; those
        that cannot are the watcher's problems (tried again every JOIN_RETRY_SECONDS)."""
        problems: list[WatcherError] = []
        failing: dict[int, tuple[WatcherError, float]] = {}
        for info in select_tables(catalog, self.patterns).tables:
            if info.oid in known or not info.has_replica_identity:
                continue
            earlier = self._join_failures.get(info.oid)
            if earlier is not None and time.monotonic() < earlier[1] \
                    and not self._in_publication(conn, info.oid):
                failing[info.oid] = earlier
                problems.append(earlier[0])
                continue
            try:
                self._join(conn, info, lsn)
            except CDCError as exc:
                problem = WatcherError(
                    f"table {info.quoted_name} matches the patterns but cannot join the "
                    f"stream: {exc.message}", exc.transient, exc.hint, info.quoted_name, exc)
                failing[info.oid] = (problem, time.monotonic() + JOIN_RETRY_SECONDS)
                problems.append(problem)
        self._join_failures = failing
        return problems

    def _in_publication(self, conn: psycopg.Connection[Any], relid: int) -> bool:
        return bool(conn.execute(
            "SELECT 1 FROM pg_get_publication_tables(%s::text) t WHERE t.relid = %s::oid",
            (self.publication, relid)).fetchall())

    def _join(self, conn: psycopg.Connection[Any], info: TableInfo, lsn: int) -> None:
        """Add a table to the running stream: publication, reader, watermarked snapshot."""
        keys = info.change_key
        if self.publication is None:  # watch is off without a publication: nothing joins
            raise RuntimeError(f"internal error: {info.quoted_name} joins a stream without a "
                               "publication")
        if not self._publish(conn, info):
            return  # dropped meanwhile
        join = TableJoin(f"{self.slot.slot_name}:{info.oid}:{time.monotonic_ns()}",
                         info.quoted_name, keys, relid=info.oid,
                         spill_dir=self.router.spill_dir)
        self.router.joins[join.id] = join  # before the reader appears: wait_for_joins sees it
        reader = self.router.add_reader(info.oid, info.schema, info.name, keys, label_lsn=lsn,
                                        joining=True)
        self.tables.append(info)
        threading.Thread(target=self._snapshot_joining_table, args=(info, join),
                         name=f"cdc-join-{reader.name}", daemon=True).start()
        self.joined.append(reader.name)
        if self.on_table_added is not None:
            self.on_table_added(reader.name)

    def _publish(self, conn: psycopg.Connection[Any], info: TableInfo) -> bool:
        """Add the table with OID ``info.oid`` to the publication (False: it was dropped).

        ``ALTER PUBLICATION ... ADD TABLE`` takes a name, and a name is a label: the joining
        table may have been renamed since the catalog was read, and another table may have
        its old name (or take it while the ALTER waits for the lock): the ALTER then publishes
        that other table (or fails as "already member"), the joining table gets a reader but
        is never published, and every change it has from then on is lost. So the name is read
        by OID, and the ALTER runs in a transaction that checks, by OID, that it published
        this table (the ALTER's lock on the table keeps its name until the commit); if it did
        not, it is rolled back and tried again under the table's current name."""
        statement: sql.Composable = sql.SQL("")
        for _ in range(JOIN_PUBLISH_ATTEMPTS):
            if self._in_publication(conn, info.oid):
                return True  # (added by someone else meanwhile)
            found = _relation_by_oid(conn, info.oid)
            if found is None:
                return False
            where = found[:2]
            statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(self.publication or ""), sql.Identifier(*where))
            try:
                with conn.transaction():
                    conn.execute(statement)
                    if not conn.execute(_PUBLISHED, (self.publication, info.oid)).fetchall():
                        raise _TryAgain(f"{where[0]}.{where[1]} is another table now")
                return True
            except (_TryAgain, psycopg.errors.DuplicateObject, psycopg.errors.UndefinedTable):
                continue  # the name is another table's now (or no table's): look again
            except psycopg.errors.InsufficientPrivilege as exc:
                raise OwnershipRequired(
                    str(exc.diag.message_primary or exc),
                    hint=f"as the owner of table {info.quoted_name} and of publication "
                    f"{self.publication} (or a superuser) run: {statement.as_string(conn)}; "
                    "the table then joins by itself", sqlstate=exc.sqlstate) from None
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error as exc:
                raise CDCError(str(exc.diag.message_primary or exc),
                               sqlstate=exc.sqlstate) from None
        raise CDCError(
            f"table {info.quoted_name} (OID {info.oid}) could not be added to publication "
            f"{self.publication}: it was renamed during each of {JOIN_PUBLISH_ATTEMPTS} tries",
            hint="nothing to do: the watcher tries again (its changes are not sent until it "
            "joins; its snapshot then has them)")

    def wait_for_joins(self, timeout: float = 60.0) -> bool:
        """Wait until every table that joined the stream has had its snapshot delivered (its
        high watermark was read); False if that did not happen within ``timeout``."""
        deadline = time.monotonic() + timeout
        for join in list(self.router.joins.values()) + list(self.router._joins_at_commit):
            if not join.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _snapshot_joining_table(self, info: TableInfo, join: TableJoin) -> None:
        emit = "SELECT pg_logical_emit_message(true, %s, %s)"
        try:
            with connect(self.conninfo) as conn:
                deadline = time.monotonic() + JOIN_LOCK_DEADLINE_SECONDS
                self._wait_for_writers(conn, info, join, deadline)
                conn.execute(emit, (WATERMARK_PREFIX, f"low {join.id}"))
                renamed = 0
                while True:
                    join.attempts += 1
                    try:
                        self._read_joining_table(conn, info, join)
                        break
                    except _TryAgain as why:
                        # (the attempt's transaction is gone: it holds nothing any more)
                        join.discard()
                        join.spooled_rows = 0
                        if not isinstance(why, _LockBusy):
                            renamed += 1
                            if renamed >= JOIN_SNAPSHOT_ATTEMPTS:
                                raise SnapshotError(
                                    f"the snapshot of joining table {join.name} could not be "
                                    f"read in {renamed} attempts: {why}",
                                    hint="DDL on the table kept getting in the way; it joins "
                                    "again when the stream is opened again") from None
                        elif time.monotonic() >= deadline:
                            raise self._lock_deadline_error(conn, info, join, why) from None
                        log.debug("joining %s: try %d gave way (%s)", join.name,
                                  join.attempts, why)
                        time.sleep(_backoff(join.attempts))
                join.ready.set()
                conn.execute(emit, (WATERMARK_PREFIX, f"high {join.id}"))
        except BaseException as exc:  # noqa: BLE001 - reported on the stream
            join.error = exc
            join.ready.set()
            # The high watermark ends the window whatever happened: the reader's hold is
            # lifted there (with the error; or, for a table dropped meanwhile, with what it
            # holds delivered as it is).
            try:
                with connect(self.conninfo) as conn:
                    conn.execute(emit, (WATERMARK_PREFIX, f"high {join.id}"))
            except Exception as again:  # noqa: BLE001 - the reader stays held: say why
                log.warning("the high watermark of %s could not be written (%s): its reader "
                            "holds its changes until the stream is opened again", join.name,
                            again)

    @staticmethod
    def _lock_deadline_error(conn: psycopg.Connection[Any], info: TableInfo, join: TableJoin,
                             why: BaseException) -> SnapshotError:
        try:
            pids = [int(r[0]) for r in conn.execute(_HOLDERS, {"relid": info.oid}).fetchall()]
        except psycopg.Error:
            pids = []
        who = (f"session(s) {', '.join(map(str, pids))} hold it (ACCESS EXCLUSIVE; see "
               "pg_stat_activity)" if pids else "other sessions kept it locked")
        return SnapshotError(
            f"the snapshot of joining table {join.name} could not lock it for reading within "
            f"{JOIN_LOCK_DEADLINE_SECONDS:.0f} s ({join.attempts} tries, {join.yields} given "
            f"up for an application waiting for the table): {why}",
            hint=f"{who}. The joiner gives way to other sessions' locks rather than block or "
            "deadlock them; end those transactions (or let their DDL finish), then open the "
            "stream again: the table joins again (the deadline is cdc_notebook.stream."
            "cdc_stream.JOIN_LOCK_DEADLINE_SECONDS)")

    @staticmethod
    def _wait_for_writers(conn: psycopg.Connection[Any], info: TableInfo, join: TableJoin,
                          deadline: float) -> None:
        """Wait until every transaction that wrote to the joining table before it was added
        to the publication has ended. Logical decoding decodes a transaction with the catalog
        as of its changes: what such a transaction wrote before the table was published is
        not sent even if it commits later, so it must commit before the low watermark (then
        the snapshot has it). The transactions holding a writer's lock on the table now (read
        after the table was published) are waited for by watching ``pg_locks``: no lock is
        asked for, so no writer queues behind the joiner (a SHARE lock made every later
        INSERT wait for the oldest open writer) and no deadlock can involve it."""
        open_ = {(r[0], r[1]) for r in conn.execute(_WRITERS, {"relid": info.oid}).fetchall()}
        pause = 0.02
        warned = time.monotonic()
        while open_:
            if time.monotonic() >= deadline:
                pids = ", ".join(str(pid) for _, pid in sorted(open_, key=str))
                raise SnapshotError(
                    f"the snapshot of joining table {join.name} waited "
                    f"{JOIN_LOCK_DEADLINE_SECONDS:.0f} s for transactions that wrote to it "
                    "before it joined the publication",
                    hint=f"session(s) {pids} (pg_stat_activity) still have them open: their "
                    "changes to the table are not decoded, so the snapshot must come after "
                    "their commit. Commit or roll them back, then open the stream again: the "
                    "table joins again")
            if time.monotonic() - warned > 30:
                warned = time.monotonic()
                log.warning("joining %s waits for open transactions that wrote to it before "
                            "it was published (pids %s)", join.name,
                            sorted(pid for _, pid in open_ if pid is not None))
            time.sleep(pause)
            pause = min(0.5, pause * 2)
            still = {(r[0], r[1]) for r in conn.execute(
                _STILL_OPEN, ([vxid for vxid, _ in open_],)).fetchall()}
            open_ &= still

    def _read_joining_table(self, conn: psycopg.Connection[Any], info: TableInfo,
                            join: TableJoin) -> None:
        """Read a joining table at a snapshot into ``join``'s spool, with the table locked
        (ACCESS SHARE, as any read) before the snapshot is taken and until it was read: no
        DDL commits between the catalog the snapshot sees (the columns, their names, the
        rows' labels) and the COPY, which names the table and its columns as they are now
        (and a rewrite committed after the snapshot would hide its rows from it).

        The locks never make an application wait in a cycle with the joiner: the table is
        the only lock asked for (a partitioned table's partitions with it, NOWAIT), every
        query run while it is held reads the catalog alone (not pg_publication_tables, which
        opens every published table on PostgreSQL 16+), and every wait is bounded by a
        lock_timeout below the server's deadlock_timeout. While the table is read, a session
        whose lock request waits for the read (an ALTER TABLE) makes the joiner give up the
        read (JOIN_YIELDS times at most). The COPY runs on the locking transaction's own
        connection: a second connection asking for the lock would queue behind an ALTER
        waiting for this one. Raises :class:`_TryAgain` when the table was renamed before it
        was locked, :class:`_LockBusy` when a lock was not free in time or the read gave way.
        """
        from cdc_notebook.snapshot.tables import plan_table

        where = _relation_by_oid(conn, info.oid)
        if where is None:
            raise TableDroppedDuringSnapshot(
                f"table {join.name} (OID {info.oid}) was dropped before its snapshot was read",
                hint="nothing to read: its changes up to the drop are delivered as they are")
        nsp, rel, relkind = where
        timeout_ms = _join_lock_timeout_ms(conn)
        with connect_session(self.conninfo, autocommit=False) as reader_conn:
            try:
                reader_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                reader_conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{timeout_ms}ms")))
                # (LOCK takes no snapshot: the snapshot is taken after the lock. A partitioned
                # table's partitions are locked after it: NOWAIT, no wait while holding it.)
                lock = sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE" +
                               (" NOWAIT" if relkind == "p" else "")).format(
                    sql.Identifier(nsp, rel))
                try:
                    reader_conn.execute(lock)
                except psycopg.errors.UndefinedTable:
                    raise _TryAgain(f"{nsp}.{rel} was renamed or dropped") from None
                locked = reader_conn.execute(
                    "SELECT c.oid::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                    (nsp, rel)).fetchone()
                if locked is None or int(locked[0]) != info.oid:
                    raise _TryAgain(f"{nsp}.{rel} is another table now")
                name = one_row(reader_conn.execute("SELECT pg_export_snapshot()"))[0]
                lsn = parse_lsn(one_row(reader_conn.execute(
                    "SELECT pg_current_wal_lsn()::text"))[0])
                # The table as the snapshot sees it: its columns (the rows' schema), and their
                # names, key and attnums, which label the rows (a column renamed since is the
                # same column under another name).
                plan = plan_table(reader_conn, info.oid, publication=self.publication)
                join.relation = snapshot_relation(reader_conn, plan.relid, plan.namespace,
                                                  plan.name, plan.schema)
                self._copy_joining_table(conn, reader_conn, join, plan, (name, lsn),
                                         timeout_ms)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                raise _LockBusy(f"{join.name} was locked by another session: "
                                f"{exc.diag.message_primary or exc}") from None
            if not reader_conn.closed:
                reader_conn.rollback()

    def _copy_joining_table(self, conn: psycopg.Connection[Any],
                            reader_conn: psycopg.Connection[Any], join: TableJoin, plan: Any,
                            snapshot: tuple[str, int], timeout_ms: int) -> None:
        """COPY the locked table on ``reader_conn`` into the spool; ``conn`` (idle meanwhile)
        watches for a session whose lock request waits for the read, and cancels the read
        for it (the caller tries again later)."""
        from cdc_notebook.snapshot.tables import snapshot_table

        # (A second connection reads only the text of unusual arrays: its lock waits end
        # after the same lock_timeout; a wait means an ALTER queued behind this one's.)
        params = dict(self.conninfo)
        params["options"] = (str(params.get("options") or "")
                             + f" -c lock_timeout={timeout_ms}").strip()
        relids = sorted({plan.relid, *(leaf[0] for leaf in plan.leaves)})
        gave_way = threading.Event()
        stop = threading.Event()
        pid = reader_conn.info.backend_pid

        def watch() -> None:
            try:
                while not stop.wait(max(0.05, timeout_ms / 1000)):
                    waiting = conn.execute(_WAITING_FOR_READER, (relids, pid)).fetchone()
                    if waiting is not None and not stop.is_set():
                        gave_way.set()
                        reader_conn.cancel_safe()
                        return
            except Exception as exc:  # noqa: BLE001 - the read goes on without a watch
                log.debug("the watch of %s's read ended: %s", join.name, exc)

        watcher = None
        if join.yields < JOIN_YIELDS:
            watcher = threading.Thread(target=watch, daemon=True,
                                       name=f"cdc-join-watch-{join.name}")
            watcher.start()
        try:
            for batch in snapshot_table(params, plan, snapshot, connection=reader_conn):
                join.spool(batch)  # to a private file: a big table stays on disk
            join.finish_spool()
        except (SnapshotError, psycopg.Error) as exc:
            if gave_way.is_set():
                join.yields += 1
                raise _LockBusy(f"gave way to a session waiting for {join.name}") from None
            if exc.sqlstate in ("55P03", "40P01"):  # lock_not_available, deadlock_detected
                raise _LockBusy(f"an ALTER of {join.name} was waiting") from None
            raise
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
    def current_wal_lsn(self) -> int:
        return self._on_catalog(_wal_lsn)

    def _walsender_state(self, pid: int) -> WalsenderState:
        """The stream's walsender ``pid`` and slot as the server sees them (asked by the router
        while a reader holds the stream back)."""
        def query(conn: psycopg.Connection[Any]) -> WalsenderState:
            row = one_row(conn.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s), "
                "(SELECT wait_event FROM pg_stat_activity WHERE pid = %s), "
                "(SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s)",
                (pid, pid, self.slot.slot_name)))
            return WalsenderState(bool(row[0]), row[1], row[2])
        return self._on_catalog(query)

    # ---- acknowledgement (docs/delivery.md)

    @property
    def acknowledge_mode(self) -> str:
        """``"consumed"``: the slot advances over what the readers consumed; ``"durable"``: no
        further than what the consumer reported durable with :meth:`acknowledge`."""
        return "durable" if self.router.acks.durable_only else "consumed"

    def acknowledge_durable_only(self) -> None:
        """Switch to ``acknowledge="durable"`` (a consumer that persists: a checkpoint, a sink).
        Only before anything was acknowledged: afterwards the slot may already be past what the
        consumer holds."""
        acks = self.router.acks
        if acks.durable_only:
            return
        if self.router.started and acks.flushed > 0:
            raise CDCError(
                "this stream has already acknowledged changes as they were consumed",
                hint="create the stream with acknowledge='durable' (or attach the persisting "
                "consumer before reading from it)")
        acks.durable_only = True

    def acknowledge(self, end_lsn: int) -> None:
        """Everything the readers consumed up to ``end_lsn`` (a transaction's ``_cdc_end_lsn``)
        is durably committed by the consumer: with ``acknowledge="durable"`` the slot's
        confirmed position may advance that far (and no further)."""
        self.router.acks.durable(end_lsn)

    def start(self) -> CDCStream:
        self.router.ensure_started()
        return self

    def messages(self, *, follow: bool = False, timeout: float | None = None,
                 prefix: str | None = None) -> Iterator[LogicalMessage]:
        """The logical messages (``pg_logical_emit_message``) of the stream, in stream order,
        from the first call on (the kit's own watermarks left out; ``prefix=`` keeps one
        prefix). Ends like ``batches()``: at the WAL position current when iterating starts,
        or never with ``follow=True``. Unread messages hold back acknowledgement, as an unread
        table's batches do (docs/reader.md)."""
        reader = self.router.enable_messages()

        def iterate() -> Iterator[LogicalMessage]:
            for event in reader.events(follow=follow, timeout=timeout):
                if isinstance(event, LogicalMessage) and (prefix is None
                                                          or event.prefix == prefix):
                    yield event
        return iterate()

    def __getitem__(self, key: str | int) -> TableReader:
        """A table's reader, by name (``'public.users'``, a quoted spelling, a name the table
        had before a rename) or OID: :class:`~cdc_notebook.stream.names.ReaderMap`."""
        return self.readers[key]

    # ---- status

    def status(self) -> SlotStatus:
        """The slot as the server reports it plus the reader's throughput, latency, the WAL
        each unread reader holds back, the tables by their current names, and the catalog
        watcher's current problem."""
        status = self._on_catalog(lambda conn: fetch_slot_status(conn, self.slot.slot_name))
        stats = self.router.stats
        p50, p99 = stats.latency_percentiles()
        elapsed = max(1e-9, time.monotonic() - stats.started_at)
        readers = list(self.readers.values())
        held = {r.name: max(0, status.current_lsn - lsn) for r in readers
                if (lsn := r.held_back_lsn) is not None}
        oldest = self.router.acks.oldest_unacknowledged_commit_ts
        problem = self.router.watcher_error
        return status.with_reader(
            events_per_second=stats.rows / elapsed, bytes_per_second=stats.bytes / elapsed,
            latency_p50_ms=p50, latency_p99_ms=p99, held_back_by_table=held,
            spilled_by_table={r.name: r.spilled_bytes for r in readers if r.spilled_bytes},
            oldest_unacked_commit_ts=(None if oldest is None else
                                      datetime.fromtimestamp(oldest / 1e6, timezone.utc)),
            tables={r.name: r.relid for r in readers if not r.table_dropped},
            watcher_error=(None if problem is None else problem.message
                           + (f" (fix: {problem.hint})" if problem.hint else "")),
            watcher_failures=self.router.watcher_failures)

    # ---- what it leaves behind

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def slot_description(self, status: SlotStatus | None = None) -> str:
        """What the slot is and what it costs: a temporary one goes with the stream; a
        permanent one stays after :meth:`close`, retaining WAL (how much: from ``status``, or
        asked of the server) until :meth:`teardown`."""
        name = self.slot.slot_name
        if self.slot.temporary:
            return (f"temporary slot {name}: it goes when the stream closes, and with it the "
                    "kit's publication made for it")
        if status is None:
            status = self._slot_status()
        retained = ("" if status is None else
                    f", now {_fmt_bytes(status.retained_wal_bytes)} of WAL")
        return (f"permanent slot {name}: it stays after close() and retains WAL until "
                f"dropped{retained}; stream.teardown() drops it and its publication")

    def _slot_status(self) -> SlotStatus | None:
        try:
            if not self.closed:
                return self.status()
            with connect(self.conninfo, connect_timeout=3) as conn:
                return fetch_slot_status(conn, self.slot.slot_name)
        except Exception:  # noqa: BLE001 - a description without the figure
            return None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        tables = [r.name for r in self.readers.values()] if hasattr(self, "readers") else []
        return (f"<CDCStream {state}: {self.slot_description()}; plugin {self.plugin}, "
                f"publication {self.publication}, tables {tables}>")

    def teardown(self, **options: Any) -> Any:
        """Close the stream, then drop what it stands on: its slot (a temporary one already
        went with it) and the kit publication made for it, unless another existing kit slot
        still uses it (then only this slot's record on it goes). Objects another tool made are
        left. Options of :func:`~cdc_notebook.provision.teardown.plan_teardown` (``force``,
        ``restore_replica_identity``); returns the ``TeardownReport``."""
        from cdc_notebook.provision.teardown import teardown

        return teardown(self, **options)

    def close(self) -> None:
        """Stop streaming and close the connections. A temporary slot goes with them, and so
        does the kit publication made for it (unless another kit slot still uses it); a
        permanent slot and its publication stay (:meth:`teardown` drops them)."""
        self._finalizer()

    def __enter__(self) -> CDCStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _cleanup(router: ChangeRouter, conns: _Connections, slot: Any,
                 release: tuple[str, dict[str, Any]] | None = None) -> None:
        try:
            CDCStream._stop(router, conns, slot)
        finally:
            if release is not None:
                _release(conns, release[1], release[0], slot.slot_name)
            conns.close()

    @staticmethod
    def _stop(router: ChangeRouter, conns: _Connections, slot: Any) -> None:
        router.close()
        slot.close()
        try:
            # The walsender exits just after its connection closes: return once the server has
            # let go of the slot, so a teardown right after close() does not find it in use.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and conns.catalog.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                    (slot.slot_name,)).fetchone():
                time.sleep(0.02)
        except psycopg.Error:
            pass  # the server is gone (or restarted): nothing holds the slot


def _sweep(conn: psycopg.Connection[Any]) -> None:
    """A kit start first drops the publications left by temporary streams that were killed."""
    from cdc_notebook.provision.teardown import sweep_orphaned_publications

    try:
        sweep_orphaned_publications(conn)
    except psycopg.Error as exc:
        log.warning("the clean-up of orphaned kit publications failed: %s",
                    exc.diag.message_primary or exc)


def _release(conns: _Connections, conninfo: dict[str, Any], publication: str,
             slot_name: str) -> None:
    """A temporary slot went: its kit publication goes too (unless another kit slot uses it).
    Never raises: what cannot be done now, the next kit start does."""
    from cdc_notebook.provision.teardown import release_publication

    conn = conns.catalog
    opened = None
    try:
        if _broken(conn):
            conn = opened = connect(conninfo, connect_timeout=5)
        done = release_publication(conn, publication, slot_name)
        if done:
            log.info("close: %s", done)
    except Exception as exc:  # noqa: BLE001 - at exit or in a finalizer: log, never raise
        log.warning("publication %s of temporary slot %s was not released (%s); the next "
                    "kit start or teardown(conn) drops it", publication, slot_name, exc)
    finally:
        if opened is not None:
            opened.close()


class ArrowCDCReaderConfig:
    """The seed's entry point, kept as its README writes it."""

    @staticmethod
    def auto_configure(host: str = "localhost", database: str = "postgres", user: str = "postgres",
                       password: str | None = None, tables: str | list[str] = "public.*", *,
                       port: int = 5432, slot_name: str | None = None, plugin: str | None = None,
                       **options: Any) -> dict[str, TableReader]:
        """Validate, create the publication and a permanent slot, return ``{'schema.table':
        reader}`` (an existing ``slot_name`` is reused)."""
        params = {"host": host, "dbname": database, "user": user, "port": port}
        if password is not None:
            params["password"] = password
        stream = CDCStream(params, tables, slot_name=slot_name, plugin=plugin, **options)
        readers = dict(stream.readers)
        for reader in readers.values():
            reader.stream = stream  # type: ignore[attr-defined]  # keeps the stream alive
        return readers


__all__ = ["ArrowCDCReaderConfig", "CDCStream"]
