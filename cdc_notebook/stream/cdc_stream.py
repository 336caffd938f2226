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

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import (
    apply_session_settings,
    connect,
    conninfo_of,
    one_row,
    session_conninfo,
)
from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.errors import (
    CDCError,
    SlotNotFound,
    SnapshotUnavailable,
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
from cdc_notebook.provision.status import SlotStatus, fetch_slot_status
from cdc_notebook.stream.joins import WATERMARK_PREFIX, TableJoin
from cdc_notebook.stream.reader import TableReader
from cdc_notebook.stream.replication import ReplicationConnection
from cdc_notebook.stream.router import ChangeRouter
from cdc_notebook.stream.source import ReplicationSource, plugin_decoders


class CDCStream:
    """CDC over one slot: validated, provisioned, streamed once, fanned out per table.

    Parameters mirror :func:`cdc_notebook.provision.plan.plan_provision` (``tables`` patterns,
    ``slot_name``, ``publication``, ``plugin``, ``temporary``, ``keyless``...); ``conninfo`` is a
    DSN string or a dict of libpq parameters (TLS options pass through).
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
        self.catalog = connect(conninfo)
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
                                       table_changes=self._table_changes)
            self.router.acks.durable_only = acknowledge == "durable"
            self.readers: dict[str, TableReader] = {}
            self._oids = {info.qualified_name: info.oid for info in self.tables}
            for info in self.tables:
                self.readers[info.qualified_name] = self.router.add_reader(
                    info.qualified_name, info.change_key)
        except BaseException:
            self.catalog.close()  # nothing else was opened, or it closed itself
            raise
        self._finalizer = weakref.finalize(self, CDCStream._cleanup, self.router, self.catalog,
                                           self.slot)

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
                self.router.put_snapshot(info.qualified_name, batch)

    def _table_changes(self) -> tuple[list[str], int]:
        """Readers whose table no longer exists (and the WAL position when that was seen);
        tables that started matching the patterns join the stream."""
        with self._catalog_lock:
            # Any cached answer is checked against the catalog fingerprint (max_age of a
            # microsecond); the whole catalog is read again only when that changed.
            catalog = (self._catalog_cache.tables(self.catalog, max_age=1e-6)
                       if self.watch else None)
            present_oids, lsn = one_row(self.catalog.execute(
                "SELECT array(SELECT oid::bigint FROM pg_class WHERE oid = ANY(%s::oid[])), "
                "pg_current_wal_lsn()::text", (list(self._oids.values()),)))
        present = set(present_oids)
        gone = [name for name, oid in self._oids.items() if oid not in present]
        for name in gone:
            del self._oids[name]
        if catalog is not None:
            known = set(self.readers)
            for info in select_tables(catalog, self.patterns).tables:
                if info.qualified_name not in known and info.has_replica_identity:
                    self._join(info)
        return gone, parse_lsn(lsn)

    def _join(self, info: TableInfo) -> None:
        """Add a table to the running stream: publication, reader, watermarked snapshot."""
        name = info.qualified_name
        keys = info.change_key
        if self.publication is None:  # watch is off without a publication: nothing joins
            raise RuntimeError(f"internal error: {name} joins a stream without a publication")
        with self._catalog_lock:
            self.catalog.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(self.publication), sql.Identifier(info.schema, info.name)))
        join = TableJoin(f"{self.slot.slot_name}:{info.oid}:{time.monotonic_ns()}", name, keys)
        self.router.joins[join.id] = join  # before the reader appears: wait_for_joins sees it
        self.readers[name] = self.router.add_reader(name, keys)
        self._oids[name] = info.oid
        self.tables.append(info)
        threading.Thread(target=self._snapshot_joining_table, args=(info, join),
                         name=f"cdc-join-{name}", daemon=True).start()
        self.joined.append(name)
        if self.on_table_added is not None:
            self.on_table_added(name)

    def wait_for_joins(self, timeout: float = 60.0) -> bool:
        """Wait until every table that joined the stream has had its snapshot delivered (its
        high watermark was read); False if that did not happen within ``timeout``."""
        deadline = time.monotonic() + timeout
        for join in list(self.router.joins.values()) + list(self.router._joins_at_commit):
            if not join.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _snapshot_joining_table(self, info: TableInfo, join: TableJoin) -> None:
        from cdc_notebook.snapshot.tables import snapshot_table

        emit = "SELECT pg_logical_emit_message(true, %s, %s)"
        try:
            with connect(self.conninfo) as conn:
                conn.execute(emit, (WATERMARK_PREFIX, f"low {join.id}"))
                with connect(self.conninfo, autocommit=False) as reader_conn:
                    reader_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    name = one_row(reader_conn.execute("SELECT pg_export_snapshot()"))[0]
                    lsn = parse_lsn(one_row(reader_conn.execute(
                        "SELECT pg_current_wal_lsn()::text"))[0])
                    join.batches = list(snapshot_table(self.conninfo, info.oid, (name, lsn),
                                                       workers=1))
                    reader_conn.rollback()
                join.ready.set()
                conn.execute(emit, (WATERMARK_PREFIX, f"high {join.id}"))
        except BaseException as exc:  # noqa: BLE001 - reported on the stream
            join.error = exc
            join.ready.set()

    def current_wal_lsn(self) -> int:
        with self._catalog_lock:
            try:
                text = one_row(self.catalog.execute("SELECT pg_current_wal_lsn()::text"))[0]
            except psycopg.OperationalError:
                self.catalog = connect(self.conninfo)
                text = one_row(self.catalog.execute("SELECT pg_current_wal_lsn()::text"))[0]
        return parse_lsn(text)

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

    def __getitem__(self, name: str) -> TableReader:
        return self.readers[name]

    # ---- status

    def status(self) -> SlotStatus:
        """The slot as the server reports it plus the reader's throughput, latency and the WAL
        each unread reader holds back."""
        with self._catalog_lock:
            status = fetch_slot_status(self.catalog, self.slot.slot_name)
        stats = self.router.stats
        p50, p99 = stats.latency_percentiles()
        elapsed = max(1e-9, time.monotonic() - stats.started_at)
        held = {name: max(0, status.current_lsn - lsn) for name, r in self.readers.items()
                if (lsn := r.held_back_lsn) is not None}
        oldest = self.router.acks.oldest_unacknowledged_commit_ts
        return status.with_reader(
            events_per_second=stats.rows / elapsed, bytes_per_second=stats.bytes / elapsed,
            latency_p50_ms=p50, latency_p99_ms=p99, held_back_by_table=held,
            spilled_by_table={name: r.spilled_bytes for name, r in self.readers.items()
                              if r.spilled_bytes},
            oldest_unacked_commit_ts=(None if oldest is None else
                                      datetime.fromtimestamp(oldest / 1e6, timezone.utc)))

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> CDCStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _cleanup(router: ChangeRouter, catalog: psycopg.Connection[Any], slot: Any) -> None:
        router.close()
        slot.close()
        try:
            # The walsender exits just after its connection closes: return once the server has
            # let go of the slot, so a teardown right after close() does not find it in use.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and catalog.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                    (slot.slot_name,)).fetchone():
                time.sleep(0.02)
        except psycopg.Error:
            pass  # the server is gone: nothing holds the slot
        try:
            catalog.close()
        except Exception:  # noqa: BLE001
            pass


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
