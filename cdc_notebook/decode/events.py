"""The events every decoding path produces (wal2arrow frames, pgoutput, the snapshot).

Decoders turn what the server sends into these; the router and the readers consume only
these, so they do not care which plugin produced a batch. Row data travels in
:class:`ChangeBatch` as a ``pyarrow.RecordBatch`` whose schema is the table's columns followed by
the metadata columns of ``docs/decisions.md`` (``_cdc_op`` ... ``_cdc_unchanged_toast``).

LSNs are ints; timestamps are microseconds since 1970-01-01 UTC (ints), as in the batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from cdc_notebook.errors import ChangeNotDecodable

METADATA_COLUMNS = (
    "_cdc_op",
    "_cdc_lsn",
    "_cdc_commit_lsn",
    "_cdc_end_lsn",
    "_cdc_commit_ts",
    "_cdc_xid",
    "_cdc_ordinal",
    "_cdc_before",
    "_cdc_unchanged_toast",
    "_cdc_unrepresentable",  # map<utf8, utf8>: column -> text of a value Arrow cannot hold (docs/types.md)
)


@dataclass(frozen=True)
class Begin:
    xid: int
    commit_lsn: int  # 0 when unknown (a streamed, still running transaction)
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True)
class Commit:
    xid: int
    commit_lsn: int
    end_lsn: int  # what the stream acknowledges once every batch of it was consumed
    commit_ts: int


@dataclass(frozen=True)
class RelationSchema:
    """A table's schema as sent before its first batch and again after every change to it."""

    relid: int
    schema_version: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    key_columns: tuple[str, ...]
    arrow_schema: pa.Schema  # the full batch schema, metadata columns included
    # Column identity: the attnum of each table column, in the schema's order (0 where it is
    # not known: pgoutput derives them, docs/pgoutput.md). A column that keeps its attnum and
    # changes its name was renamed; a new attnum is a new column, whatever its name.
    column_ids: tuple[int, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class ChangeBatch:
    """Rows of one table from one transaction (a transaction may span several batches)."""

    relid: int
    schema_version: int
    namespace: str
    name: str
    xid: int
    batch: pa.RecordBatch
    subxid: int = 0  # the subtransaction of these rows, for streamed transactions
    # The batch's encapsulated Arrow IPC message as received (wal2arrow), when the decoder has
    # it: a reader that spills the batch to disk writes these bytes as they are.
    ipc_message: pa.Buffer | None = field(default=None, compare=False, repr=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class Truncate:
    xid: int
    lsn: int
    tables: tuple[str, ...]  # qualified names, as of the TRUNCATE
    relids: tuple[int, ...]
    cascade: bool = False
    restart_identity: bool = False
    # Its place among the transaction's changes (a TRUNCATE takes an ordinal, docs/protocol.md)
    # and the transaction's commit (0 where not known): what a batch's marker row carries.
    ordinal: int = 0
    commit_lsn: int = 0
    end_lsn: int = 0
    commit_ts: int = 0


@dataclass(frozen=True)
class DecodeFailed:
    """A change of one table that the kit could not decode (a pgoutput value or relation it
    cannot read: docs/pgoutput.md). It goes to that table's reader, in stream order, where
    ``batches()`` raises it as :class:`~cdc_notebook.errors.ChangeNotDecodable` (``events()``
    yields it); the other tables go on. The table's later changes in the same transaction are
    not decoded either; its changes in later transactions are."""

    relid: int
    namespace: str
    name: str
    xid: int
    lsn: int  # the change's LSN
    message: str
    hint: str
    end_lsn: int = 0  # the transaction's

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def error(self) -> ChangeNotDecodable:
        from cdc_notebook.connection.lsn import format_lsn
        from cdc_notebook.errors import ChangeNotDecodable

        return ChangeNotDecodable(
            f"a change of {self.qualified_name} at LSN {format_lsn(self.lsn)} (transaction "
            f"{self.xid}) could not be decoded: {self.message}", hint=self.hint, event=self)


@dataclass(frozen=True)
class LogicalMessage:
    xid: int  # 0 for a non-transactional message
    lsn: int
    transactional: bool
    prefix: str
    content: bytes


@dataclass(frozen=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True)
class StreamStop:
    pass


@dataclass(frozen=True)
class StreamCommit:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True)
class StreamAbort:
    xid: int
    subxid: int  # equal to xid when the whole transaction aborted


@dataclass(frozen=True)
class TableDropped:
    """The router's event for a table that went away while streaming; its reader ends."""

    qualified_name: str
    relid: int
    lsn: int = field(default=0)


@dataclass(frozen=True)
class TableRenamed:
    """The router's event for a table whose schema or name changed (``ALTER TABLE ... RENAME``,
    ``SET SCHEMA``): the reader follows the table (its OID), and ``reader.name`` becomes
    ``new``. Names are as readers are keyed: ``schema.table``, each part quoted where needed."""

    relid: int
    old: str
    new: str
    lsn: int = field(default=0)


@dataclass(frozen=True)
class WatcherError:
    """The catalog watcher (tables joining, renamed, dropped) failed: its connection is down
    (``transient``: it reconnects and tries again), or a table that matches the patterns
    cannot join (``table``: its name; ``hint``: the fix, e.g. the ``ALTER PUBLICATION`` to run
    as the owner). Sent to every reader's ``events()`` once per distinct problem; the current
    one is in ``stream.status().watcher_error``."""

    message: str
    transient: bool
    hint: str | None = None
    table: str | None = None
    error: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Keepalive:
    """No event, only the server's position: a primary keepalive, or an XLogData message that
    decoded to nothing. ``reply_requested``: the server asks for a status update now (it drops
    the connection after ``wal_sender_timeout`` without one)."""

    wal_end: int
    reply_requested: bool = False


Event = (Begin | Commit | RelationSchema | ChangeBatch | Truncate | LogicalMessage
         | StreamStart | StreamStop | StreamCommit | StreamAbort | TableDropped | DecodeFailed)
