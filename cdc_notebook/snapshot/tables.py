"""The initial snapshot: a table's rows at the slot's consistent point, as change batches.

Each table is read with ``COPY (SELECT <columns> FROM ONLY t WHERE <ctid range>) TO STDOUT
(FORMAT binary)`` inside REPEATABLE READ transactions that import the snapshot exported with the
slot (``SET TRANSACTION SNAPSHOT``); the COPY stream is received and decoded into Arrow by the
native decoder (:mod:`cdc_notebook._native`, through psycopg's own libpq, without the GIL),
following the type-mapping spec, so the batches have exactly the schema of the change batches
of wal2arrow and pgoutput: ``_cdc_op = 'r'``, ``_cdc_lsn`` and
``_cdc_end_lsn`` the consistent point, ``_cdc_commit_lsn``/``_cdc_commit_ts`` null, ``_cdc_xid``
0, ``_cdc_before`` null. Large tables are cut into ctid ranges read by several connections
sharing the snapshot; batches are yielded as they are decoded (bounded queue: memory stays
bounded whatever the table's size). See docs/snapshot.md for the hand-off to streaming.

    with ExportedSnapshot(conninfo, "my_slot", plugin="pgoutput") as snap:
        for batch in snapshot_table(conninfo, "public.orders", snap, progress=print):
            ...
        # stream the slot from snap.consistent_point: nothing missing, nothing twice
"""

from __future__ import annotations

import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
from psycopg import sql

from cdc_notebook._native import (
    CopyDecoder,
    TablePlan,
    import_batch,
    libpq_bind,
    make_plan,
)
from cdc_notebook.connection.conninfo import connect, connect_session, parse_conninfo
from cdc_notebook.decode import typespec as spec_types
from cdc_notebook.errors import (
    CDCError,
    SnapshotError,
    SnapshotNotImportable,
    TableDroppedDuringSnapshot,
    TablePrivilegeMissing,
)
from cdc_notebook.provision.slots import create_slot

if TYPE_CHECKING:
    from psycopg.pq.abc import PGconn

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_BATCH_BYTES = 32 << 20
# 32 MiB of heap per chunk with 8 kB pages: a COPY's start costs little, and smaller chunks
# keep the workers busy to the end (the last chunks are not read by one worker alone)
DEFAULT_CHUNK_PAGES = 4_096
FEED_MESSAGES = 2048         # COPY messages handed to the decoder per call (pq-layer reader)


# --------------------------------------------------------------------------- exported snapshots


@dataclass
class ExportedSnapshot:
    """A logical slot created with an exported snapshot, kept importable while open.

    The snapshot stays importable while the replication connection that created the slot
    stays idle; :meth:`close` (or leaving the ``with`` block) releases it. Streaming the slot
    from :attr:`consistent_point` then continues exactly where the snapshot ends.

    The slot is created by :func:`cdc_notebook.provision.slots.create_slot` (the kit's one way
    to create a slot, with one error mapping: ``WalLevelNotLogical``, ``PluginNotAllowed``,
    ``SlotError``..., and ``SlotCreationTimeout`` after ``timeout`` seconds of waiting for
    running write transactions).
    """

    conninfo: Mapping[str, Any] | str
    slot_name: str
    plugin: str = "pgoutput"
    temporary: bool = False
    snapshot_name: str = ""
    consistent_point: int = 0
    _conn: psycopg.Connection[Any] | None = field(default=None, repr=False)
    timeout: float = 60.0

    def __post_init__(self) -> None:
        params = parse_conninfo(self.conninfo)
        # an ordinary connection watches who the creation waits for; the slot is created on a
        # replication connection, returned open: the snapshot lives as long as it stays idle
        with connect(params) as monitor:
            created = create_slot(monitor, self.slot_name, plugin=self.plugin,
                                  temporary=self.temporary, export_snapshot=True,
                                  method="replication", timeout=self.timeout, conninfo=params)
        self.consistent_point = created.consistent_point
        self.snapshot_name = created.snapshot_name or ""
        self._conn = created.connection

    @property
    def open(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def close(self) -> None:
        """Release the snapshot (the slot stays, unless it is temporary)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ExportedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- table plans


@dataclass(frozen=True)
class SnapshotColumn:
    name: str
    mapping: spec_types.TypeMapping

    def select_sql(self) -> sql.Composable:
        ident = sql.Identifier(self.name)
        # types the spec keeps as their text output are selected as ::text, so the binary
        # COPY carries exactly that text
        if self.mapping.kind == "other":
            return sql.SQL("{}::text").format(ident)
        return ident


@dataclass(frozen=True)
class TableSnapshotPlan:
    """What to read for one table: its published columns, leaves, and chunking."""

    relid: int
    namespace: str
    name: str
    columns: tuple[SnapshotColumn, ...]
    leaves: tuple[tuple[int, str, str, int], ...]   # (relid, namespace, name, blocks)
    schema: pa.Schema

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def needs_ctid(self) -> bool:
        """Whether the COPY must carry each row's ctid: only an array of an unusual shape
        (multi-dimensional, lower bound not 1) has a text the decoder cannot render, read
        afterwards by ctid; every other value is decoded from the COPY alone."""
        return any(c.mapping.kind == "array" for c in self.columns)

    def new_table_plan(self) -> TablePlan:
        return make_plan([(c.name, c.mapping) for c in self.columns])


_TABLE_QUERY = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       has_table_privilege(c.oid, 'SELECT')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = %s::regclass
"""

_COLUMNS_QUERY = """
SELECT a.attname::text, a.atttypid::int8, a.atttypmod
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""

# The publication's column list of a table (its own entry's, else its nearest partitioned
# ancestor's), from the catalog alone: pg_publication_tables (pg_get_publication_tables) opens
# every table of the publication with ACCESS SHARE on PostgreSQL 16+, so a joiner reading this
# with its table locked waited for any other published table an application's DDL held, while
# that DDL waited for the joiner's table: a deadlock (tests/test_join_locks.py). No column list:
# an empty array. (prattrs: PostgreSQL 15+.)
_PUBLICATION_COLUMNS_QUERY = """
WITH RECURSIVE up(relid, depth) AS (
    SELECT %(relid)s::oid, 0
    UNION ALL
    SELECT i.inhparent, up.depth + 1
    FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.relid
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid AND c.relispartition
)
SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs::int2[])
             ORDER BY a.attnum)
FROM up JOIN pg_catalog.pg_publication_rel pr ON pr.prrelid = up.relid
JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
WHERE p.pubname = %(pub)s
ORDER BY up.depth LIMIT 1
"""

# pg_partition_tree() is empty for a plain table: then the table is its own leaf
_LEAVES_QUERY = """
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND (c.oid = %(relid)s::oid OR c.oid IN (
    SELECT t.relid FROM pg_partition_tree(%(relid)s::oid::regclass) t WHERE t.isleaf))
ORDER BY c.oid
"""


def plan_table(conn: psycopg.Connection[Any], table: str | int,
               catalog: spec_types.TypeCatalog | None = None,
               publication: str | None = None) -> TableSnapshotPlan:
    """Resolve a table (``'schema.name'``, a quoted name, or an OID) into a snapshot plan.

    The columns are those pgoutput and wal2arrow publish: not dropped, not generated, and
    within the publication's column list when ``publication`` has one.
    """
    catalog = catalog or spec_types.TypeCatalog.load(conn)
    try:
        row = conn.execute(_TABLE_QUERY, (str(table) if not isinstance(table, int) else table,)
                           ).fetchone()
    except psycopg.errors.UndefinedTable as exc:
        raise TableDroppedDuringSnapshot(f"table {table} does not exist: {exc}",
                                         hint="check the name; it may have been dropped",
                                         sqlstate=exc.sqlstate) from exc
    if row is None:  # an OID (not a name) whose table no longer exists
        raise TableDroppedDuringSnapshot(f"table {table} does not exist",
                                         hint="check the OID; the table may have been dropped")
    relid, nsp, name, relkind, can_select = row
    if relkind not in ("r", "p"):
        raise SnapshotError(f"{nsp}.{name} is not a table (relkind {relkind!r})",
                            hint="snapshot tables and partitioned tables, not views")
    if not can_select:
        raise TablePrivilegeMissing(
            f"no SELECT privilege on {nsp}.{name}",
            hint=f'GRANT SELECT ON "{nsp}"."{name}" TO <the CDC role>;', sqlstate="42501")
    cols = conn.execute(_COLUMNS_QUERY, (relid,)).fetchall()
    if publication and conn.info.server_version >= 150000:  # (column lists: 15+)
        pub = conn.execute(_PUBLICATION_COLUMNS_QUERY,
                           {"relid": relid, "pub": publication}).fetchone()
        if pub and pub[0]:
            allowed = set(pub[0])
            cols = [c for c in cols if c[0] in allowed]
    columns = tuple(SnapshotColumn(n, catalog.map_type(int(o), int(m))) for n, o, m in cols)
    leaves = tuple((int(r[0]), r[1], r[2], int(r[3]))
                   for r in conn.execute(_LEAVES_QUERY, {"relid": relid}).fetchall())
    schema = spec_types.change_batch_schema([c.mapping.field(c.name) for c in columns])
    return TableSnapshotPlan(int(relid), nsp, name, columns, leaves, schema)


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class SnapshotProgress:
    """Progress of one table's snapshot, for widgets and scripts."""

    table: str
    rows: int
    bytes: int              # COPY bytes received
    elapsed: float          # seconds
    pages_done: int
    pages_total: int
    done: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        if self.done:
            return 1.0
        return min(1.0, self.pages_done / self.pages_total) if self.pages_total else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, estimated from the share of the heap read (None before any)."""
        if self.done:
            return 0.0
        f = self.fraction
        if f <= 0 or self.elapsed <= 0:
            return None
        return self.elapsed * (1 - f) / f


class ProgressBar:
    """A one-line text progress bar for scripts: ``snapshot_table(..., progress=ProgressBar())``."""

    def __init__(self, stream: Any = None, width: int = 30, min_interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._last = 0.0

    def __call__(self, p: SnapshotProgress) -> None:
        from cdc_notebook.units import format_byte_rate, format_bytes

        now = time.monotonic()
        if not p.done and now - self._last < self.min_interval:
            return
        self._last = now
        filled = int(self.width * p.fraction)
        eta = "" if p.eta is None else f" ETA {p.eta:5.1f}s"
        line = (f"\r{p.table} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{p.rows:,} rows {format_bytes(p.bytes)} "
                f"{p.rows_per_second:,.0f} rows/s {format_byte_rate(p.bytes_per_second)}{eta}")
        self.stream.write(line + ("\n" if p.done else ""))
        self.stream.flush()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Chunk:
    index: int
    relid: int
    namespace: str
    name: str
    lo: int          # first block
    hi: int | None   # first block past the chunk (None: to the end)
    pages: int


def _chunks(plan: TableSnapshotPlan, chunk_pages: int) -> list[_Chunk]:
    out: list[_Chunk] = []
    for relid, nsp, name, blocks in plan.leaves:
        lo = 0
        while True:
            hi = lo + chunk_pages
            last = hi >= blocks
            out.append(_Chunk(len(out), relid, nsp, name, lo, None if last else hi,
                              (min(hi, blocks) - lo) if blocks else 0))
            if last:
                break
            lo = hi
    return out


def _copy_query(plan: TableSnapshotPlan, chunk: _Chunk) -> sql.Composed:
    table = sql.Identifier(chunk.namespace, chunk.name)
    where = [sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.lo},0)"))]
    if chunk.hi is not None:
        where.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.hi},0)")))
    select = [c.select_sql() for c in plan.columns]
    if plan.needs_ctid:
        select.insert(0, sql.SQL("ctid"))
    return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(", ").join(select), table, sql.SQL(" AND ").join(where))


def _classify(exc: psycopg.Error, table: str, snapshot_name: str) -> CDCError:
    state = exc.sqlstate
    text = str(exc).strip()
    if state in ("22023", "42704") and "snapshot" in text:
        return SnapshotNotImportable(
            f"snapshot {snapshot_name!r} can no longer be imported: {text}",
            hint="an exported snapshot lives only while the replication connection that "
            "created the slot stays open and idle; keep ExportedSnapshot open until every "
            "table is read, or drop the slot and take a new snapshot", sqlstate=state)
    if state == "42501":
        return TablePrivilegeMissing(f"no SELECT privilege on {table}: {text}",
                                     hint=f"GRANT SELECT ON {table} TO <the CDC role>;",
                                     sqlstate=state)
    if state in ("42P01", "3F000") or "could not open relation" in text \
            or "does not exist" in text:
        return TableDroppedDuringSnapshot(
            f"table {table} was dropped while its snapshot was taken: {text}",
            hint="nothing to copy any more; its reader ends. Re-run the snapshot if the table "
            "was re-created", sqlstate=state)
    return SnapshotError(f"snapshot of {table} failed: {text}", sqlstate=state)


# Whether chunks are received by the native decoder itself (through psycopg's own libpq) when
# that libpq can be found; otherwise, and when False, on psycopg's pq layer.
NATIVE_READ = True

# How many COPYs each reader received in this process ("native": CopyDecoder.read through
# psycopg's libpq; "messages": the pq-layer fallback). The fallback is silent and correct but
# about half as fast, so tests assert the native path is taken (docs/decisions.md, "The
# snapshot's libpq"); read_path_counts() returns a copy.
_read_paths = {"native": 0, "messages": 0}


def read_path_counts() -> dict[str, int]:
    """How many COPYs the native reader and the pq-layer fallback have received so far."""
    with _libpq_lock:
        return dict(_read_paths)


def _loaded_libraries() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            # address perms offset dev inode [path]
            paths = {fields[5].strip() for line in maps if len(fields := line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _libpq_candidates() -> list[str]:
    """Where the libpq psycopg drives its connections with may be: only that library can
    read from psycopg's PGconn (another copy in the process, e.g. psycopg2's, cannot)."""
    impl = psycopg.pq.__impl__
    if impl == "python":
        from psycopg.pq import _pq_ctypes

        # the loaded CDLL: _pq_ctypes.pyi declares the functions only
        return [str(_pq_ctypes.pq._name)]  # type: ignore[attr-defined]
    loaded = [p for p in _loaded_libraries() if Path(p).name.startswith("libpq")]
    if impl == "binary":
        import psycopg_binary

        libs = Path(psycopg_binary.__file__).resolve().parent.parent / "psycopg_binary.libs"
        return [p for p in loaded if Path(p).parent == libs]
    # the C implementation is linked against the system's libpq, not a wheel's bundled copy
    return [p for p in loaded if not Path(p).parent.name.endswith(".libs")]


_libpq_lock = threading.Lock()
_libpq_paths: list[str] | None = None


def _pgconn_ptr(pgconn: PGconn) -> int | None:
    """The address of libpq's PGconn (None once closed): every psycopg pq implementation has
    ``pgconn_ptr``; the PGconn protocol it is typed with does not declare it."""
    ptr: int | None = pgconn.pgconn_ptr  # type: ignore[attr-defined]
    return ptr


def _bind_libpq(conn: psycopg.Connection[Any]) -> bool:
    """Whether CopyDecoder.read() can receive this connection's COPY (see libpq_bind)."""
    global _libpq_paths
    with _libpq_lock:
        if _libpq_paths is None:
            _libpq_paths = _libpq_candidates()
        paths = _libpq_paths
    pgconn = conn.pgconn
    ptr, fd, pid = _pgconn_ptr(pgconn), pgconn.socket, pgconn.backend_pid
    return bool(ptr) and any(libpq_bind(path, ptr, fd, pid) for path in paths)


def receive_copy(conn: psycopg.Connection[Any], decoder: CopyDecoder, *, batch_rows: int,
                 batch_bytes: int, emit: Callable[[], bool],
                 add_bytes: Callable[[int], None] = lambda n: None) -> bool:
    """Decode the COPY running on ``conn`` (started by psycopg), calling ``emit`` whenever the
    decoder holds ``batch_rows`` rows or about ``batch_bytes`` bytes, then read the COPY's
    result (raising the server's error, if any). ``emit`` returns False to stop: then this
    returns False with the COPY unfinished (the connection is to be closed)."""
    native = NATIVE_READ and _bind_libpq(conn)
    with _libpq_lock:
        _read_paths["native" if native else "messages"] += 1
    receive = _receive_native if native else _receive_messages
    if not receive(conn, decoder, batch_rows, batch_bytes, emit, add_bytes):
        return False
    _finish_copy(conn)
    return True


def _receive_native(conn: psycopg.Connection[Any], decoder: CopyDecoder, batch_rows: int,
                    batch_bytes: int, emit: Callable[[], bool],
                    add_bytes: Callable[[int], None]) -> bool:
    """The native decoder receives the messages itself (psycopg's libpq, GIL released):
    Python runs once per batch."""
    pgconn = conn.pgconn
    while True:
        before = decoder.total_bytes
        status = decoder.read(_pgconn_ptr(pgconn), batch_rows, batch_bytes)
        add_bytes(decoder.total_bytes - before)
        if status != 1:
            if status < 0:
                _raise_connection_error(conn)
            return True
        if not emit():
            return False


def _receive_messages(conn: psycopg.Connection[Any], decoder: CopyDecoder, batch_rows: int,
                      batch_bytes: int, emit: Callable[[], bool],
                      add_bytes: Callable[[int], None]) -> bool:
    """The messages are taken on psycopg's pq layer and fed to the decoder in lists (when
    psycopg's libpq cannot be bound, e.g. off Linux)."""
    pgconn = conn.pgconn
    get_copy_data = pgconn.get_copy_data
    fd = pgconn.socket
    pending: list[Any] = []
    append = pending.append
    # a CopyData message holds at most one row: feeding no more messages than the batch has
    # room for keeps batches within batch_rows
    limit = min(FEED_MESSAGES, batch_rows)
    while True:
        nbytes, data = get_copy_data(1)
        if nbytes > 0:
            append(data)
            if len(pending) < limit:
                continue
        elif nbytes == 0 and (not pending or len(pending) < limit // 4):
            # nothing buffered and little to decode: wait for the socket
            select.select((fd,), (), ())
            pgconn.consume_input()
            continue
        if pending:
            before = decoder.total_bytes
            rows = decoder.feed(pending)
            add_bytes(decoder.total_bytes - before)
            pending.clear()
            if rows >= batch_rows or decoder.nbytes >= batch_bytes:
                if not emit():
                    return False
                rows = 0
            limit = min(FEED_MESSAGES, batch_rows - rows)
        if nbytes == -1:   # the end of the COPY: its result follows
            return True
        if nbytes < 0:
            _raise_connection_error(conn)


def _raise_connection_error(conn: psycopg.Connection[Any]) -> None:
    """PQgetCopyData failed (-2): the connection broke; libpq says why."""
    raise psycopg.OperationalError(
        conn.pgconn.get_error_message(conn.info.encoding) or "the connection was lost")


def _finish_copy(conn: psycopg.Connection[Any]) -> None:
    """Read the results that end a COPY whose data was read to its end (PQgetCopyData gave
    -1); raise the server's error, if it sent one, as psycopg would."""
    pgconn = conn.pgconn
    fd = pgconn.socket
    error: psycopg.Error | None = None
    while True:
        while pgconn.is_busy():
            select.select((fd,), (), ())
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if error is None and result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    if error is not None:
        raise error
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError(pgconn.get_error_message(conn.info.encoding))


class _Worker(threading.Thread):
    """One connection in the snapshot: imports it, copies chunks, decodes, queues batches."""

    def __init__(self, owner: _TableSnapshotRun, conninfo: Mapping[str, Any] | str,
                 connection: psycopg.Connection[Any] | None = None):
        super().__init__(daemon=True, name=f"cdc-snapshot-{owner.plan.qualified_name}")
        self.owner = owner
        self.conninfo = conninfo
        self.connection = connection  # the caller's, in the snapshot already (not closed)
        self._texts_conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = connect_session(self.conninfo, autocommit=False)
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                sql.Literal(self.owner.snapshot_name)))
        except BaseException:
            conn.close()
            raise
        return conn

    def run(self) -> None:
        owner = self.owner
        try:
            if self.connection is not None:
                self._read(self.connection)
            else:
                with self._connect() as conn:
                    if self._read(conn):
                        conn.rollback()
        except psycopg.Error as exc:
            owner.fail(_classify(exc, owner.plan.qualified_name, owner.snapshot_name))
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            owner.fail(exc)
        finally:
            if self._texts_conn is not None:
                self._texts_conn.close()
            owner.worker_done()

    def _read(self, conn: psycopg.Connection[Any]) -> bool:
        """Copy chunks until none is left (True) or the snapshot was stopped (False)."""
        owner = self.owner
        while not owner.stop.is_set():
            chunk = owner.next_chunk()
            if chunk is None:
                break
            if not self._copy(conn, chunk):
                # stopped in the middle of a COPY: the connection is dropped with it
                conn.close()
                return False
        return True

    def _copy(self, conn: psycopg.Connection[Any], chunk: _Chunk) -> bool:
        """Read one chunk; False if the snapshot was stopped before its end."""
        owner = self.owner
        plan = owner.plan
        decoder = CopyDecoder(plan.new_table_plan(), owner.lsn, chunk.index << 32,
                              with_ctid=plan.needs_ctid)
        # psycopg starts the COPY (an error at the start is raised with its SQLSTATE);
        # receive_copy takes its data, by the batch, and reads its end
        with conn.cursor() as cur, cur.copy(_copy_query(plan, chunk)):
            if not self._read_stream(conn, chunk, decoder):
                return False
        if not decoder.finished:
            raise SnapshotError(f"the COPY of {plan.qualified_name} ended early")
        self._emit(chunk, decoder, last=True)
        return True

    def _read_stream(self, conn: psycopg.Connection[Any], chunk: _Chunk,
                     decoder: CopyDecoder) -> bool:
        owner = self.owner

        def emit() -> bool:
            self._emit(chunk, decoder)
            return not owner.stop.is_set()

        return receive_copy(conn, decoder, batch_rows=owner.batch_rows,
                            batch_bytes=owner.batch_bytes, emit=emit, add_bytes=owner.add_bytes)

    def _emit(self, chunk: _Chunk, decoder: CopyDecoder, last: bool = False) -> None:
        rows = decoder.rows
        if rows:
            self._fetch_texts(chunk, decoder)
            batch = import_batch(self.owner.plan.schema, decoder.take())
            self.owner.put(batch, rows)
        if last:
            self.owner.chunk_done(chunk)

    def _fetch_texts(self, chunk: _Chunk, decoder: CopyDecoder) -> None:
        """Values Arrow cannot hold whose text the decoder cannot render (arrays of an unusual
        shape): read their text output in the same snapshot, by ctid, on a second connection
        (opened when first needed: the COPY may still be running on the worker's own)."""
        pending = decoder.pending()
        if not pending:
            return
        if self._texts_conn is None:
            self._texts_conn = self._connect()
        conn = self._texts_conn
        by_column: dict[str, list[tuple[int, str]]] = {}
        for index, block, offset, column in pending:
            by_column.setdefault(column, []).append((index, f"({block},{offset})"))
        table = sql.Identifier(chunk.namespace, chunk.name)
        for column, items in by_column.items():
            query = sql.SQL("SELECT ctid::text, {}::text FROM ONLY {} WHERE ctid = ANY(%s::tid[])"
                            ).format(sql.Identifier(column), table)
            texts = dict(conn.execute(query, ([tid for _, tid in items],)).fetchall())
            for index, tid in items:
                decoder.resolve(index, texts[tid])


class _TableSnapshotRun:
    """Shared state of the workers reading one table."""

    def __init__(self, plan: TableSnapshotPlan, snapshot_name: str, lsn: int, *,
                 chunk_pages: int, batch_rows: int, batch_bytes: int, queue_size: int,
                 progress: Callable[[SnapshotProgress], None] | None):
        self.plan = plan
        self.snapshot_name = snapshot_name
        self.lsn = lsn
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.progress = progress
        self.chunks = _chunks(plan, chunk_pages)
        self.pages_total = sum(c.pages for c in self.chunks)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.next_index = 0
        self.workers_left = 0
        self.rows = 0
        self.bytes = 0
        self.pages_done = 0
        self.started = time.monotonic()
        self.error: BaseException | None = None

    def next_chunk(self) -> _Chunk | None:
        with self.lock:
            if self.next_index >= len(self.chunks):
                return None
            chunk = self.chunks[self.next_index]
            self.next_index += 1
            return chunk

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def put(self, batch: pa.RecordBatch, rows: int) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(batch, timeout=0.1)
                break
            except queue.Full:
                continue
        with self.lock:
            self.rows += rows

    def chunk_done(self, chunk: _Chunk) -> None:
        with self.lock:
            self.pages_done += chunk.pages

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def worker_done(self) -> None:
        with self.lock:
            self.workers_left -= 1
            last = self.workers_left == 0
        if last:
            self.queue.put(None)

    def snapshot_progress(self, done: bool = False) -> SnapshotProgress:
        with self.lock:
            return SnapshotProgress(self.plan.qualified_name, self.rows, self.bytes,
                                    time.monotonic() - self.started, self.pages_done,
                                    self.pages_total, done)


def snapshot_table(conninfo: Mapping[str, Any] | str, table: str | int | TableSnapshotPlan,
                   snapshot: ExportedSnapshot | tuple[str, int], *, workers: int = 2,
                   chunk_pages: int = DEFAULT_CHUNK_PAGES,
                   batch_rows: int = DEFAULT_BATCH_ROWS, batch_bytes: int = DEFAULT_BATCH_BYTES,
                   publication: str | None = None,
                   progress: Callable[[SnapshotProgress], None] | None = None,
                   connection: psycopg.Connection[Any] | None = None
                   ) -> Iterator[pa.RecordBatch]:
    """Yield a table's rows at the snapshot as change batches (``_cdc_op = 'r'``).

    ``snapshot`` is an open :class:`ExportedSnapshot` or ``(snapshot_name, consistent_lsn)``.
    Chunks of ``chunk_pages`` heap pages are read by up to ``workers`` connections; batches
    hold at most ``batch_rows`` rows (about ``batch_bytes``) and at most ``2 * workers`` of them
    wait in memory. Chunks come in no fixed order; ``_cdc_ordinal`` is ``chunk << 32 | row``.
    ``progress`` is called after every batch and once at the end. ``connection``: a
    connection already in the snapshot's transaction (with the kit's session settings) that
    reads every chunk itself, instead of ``workers`` new ones (a table locked by that
    transaction is read without asking for the lock again: stream/cdc_stream.py's joins).
    """
    if isinstance(snapshot, ExportedSnapshot):
        if not snapshot.open:
            raise SnapshotNotImportable(
                f"the exported snapshot of slot {snapshot.slot_name!r} was released",
                hint="keep the ExportedSnapshot open until every table is read")
        snapshot_name, lsn = snapshot.snapshot_name, snapshot.consistent_point
    else:
        snapshot_name, lsn = snapshot
    if isinstance(table, TableSnapshotPlan):
        plan = table
    else:
        with connect_session(conninfo, autocommit=False) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    sql.Literal(snapshot_name)))
                plan = plan_table(conn, table, publication=publication)
            except psycopg.Error as exc:
                raise _classify(exc, str(table), snapshot_name) from exc
    run = _TableSnapshotRun(plan, snapshot_name, lsn, chunk_pages=max(1, chunk_pages),
                            batch_rows=batch_rows, batch_bytes=batch_bytes,
                            queue_size=2 * max(1, workers), progress=progress)
    threads = [_Worker(run, conninfo, connection)] if connection is not None else \
        [_Worker(run, conninfo) for _ in range(max(1, min(workers, len(run.chunks))))]
    run.workers_left = len(threads)
    for t in threads:
        t.start()
    try:
        while True:
            item = run.queue.get()
            if item is None:
                break
            if progress:
                progress(run.snapshot_progress())
            yield item
        if run.error is not None:
            raise run.error
        if progress:
            progress(run.snapshot_progress(done=True))
    finally:
        run.stop.set()
        while any(t.is_alive() for t in threads):
            try:
                run.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        for t in threads:
            t.join()


__all__ = ["ExportedSnapshot", "ProgressBar", "SnapshotProgress", "TableSnapshotPlan",
           "plan_table", "snapshot_table"]
