"""Exceptions of the kit, one hierarchy under :class:`CDCError`. Each one says what went wrong
and names the fix.

Every class says whether it is **transient** (:attr:`CDCError.transient`): a failure that may go
away by itself, so the stream reconnects and tries again (the connection broke, the server is
restarting or cannot be reached), or **permanent**: trying again gives the same answer until
someone changes something (a wrong password, a missing or invalidated slot, a missing
privilege, a malformed pattern). :func:`is_transient` is what retry loops ask.

==========================  =========  ====================================================
class                       transient  raised when
==========================  =========  ====================================================
``ServerUnreachable``       yes        no server answers (refused, unresolvable, timeout), or
                                       it is starting up, shutting down or recovering
``StreamLost``              yes        the replication connection broke while streaming
everything else             no         (``AuthenticationFailed``, ``ConnectionRejected``,
                                       ``ReplicationNotPermitted``, ``SlotNotFound``,
                                       ``SlotDropped``, ``TemporarySlotLost``, ...)
==========================  =========  ====================================================
"""

from __future__ import annotations

from typing import Any, ClassVar


class CDCError(Exception):
    """Base class of every error the kit raises on purpose."""

    #: True when trying again later may succeed (the stream reconnects); False when it cannot
    #: succeed until something is changed (see the module's table).
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str | None = None, sqlstate: str | None = None):
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate
        text = message
        if sqlstate:
            text = f"{text} (SQLSTATE {sqlstate})"
        if hint:
            text = f"{text}\n  Fix: {hint}"
        super().__init__(text)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure worth retrying (a transient :class:`CDCError`); anything
    else — permanent kit errors, other exceptions, bugs — is not."""
    return isinstance(exc, CDCError) and exc.transient


# --------------------------------------------------------------------------- the throwaway server


class ServerError(CDCError):
    """The throwaway PostgreSQL could not be found, initialised, started or stopped."""


class BinariesNotFound(ServerError):
    """No PostgreSQL installation matches what was asked for."""


class PortInUse(ServerError):
    """The port asked for is already taken."""


class DataDirNotWritable(ServerError):
    """The directory chosen for the server's data cannot be written."""


class UnsafePath(ServerError):
    """A cache or server directory (or a file in one) is not private: owned by another user,
    writable by others, or a symbolic link. The kit refuses to use it rather than load, run or
    write anything there."""


class PluginBuildError(CDCError):
    """wal2arrow failed to compile or link against the server's headers."""


# --------------------------------------------------------------------------- connecting


class ConnectionFailed(CDCError):
    """PostgreSQL could not be reached or refused the connection."""


class AuthenticationFailed(ConnectionFailed):
    """The server rejected the user name or password."""


class ServerUnreachable(ConnectionFailed):
    """No server answered at that host and port (or the host name does not resolve), or it
    answered that it is starting up, shutting down or recovering. Transient."""

    transient = True


class ConnectionRejected(ConnectionFailed):
    """The server answered but pg_hba.conf (or a missing database) turned the connection away."""


# --------------------------------------------------------------------------- table patterns


class PatternError(CDCError):
    """A table pattern is malformed or selects nothing."""


class InvalidPattern(PatternError):
    """A pattern cannot be parsed, or one of its parts is not a valid regular expression."""

    def __init__(self, message: str, *, pattern: str, part: str | None = None,
                 hint: str | None = None):
        self.pattern = pattern
        self.part = part
        super().__init__(message, hint=hint)


class NoTablesMatched(PatternError):
    """A pattern (or the whole list) matches no table the kit can capture."""

    def __init__(self, message: str, *, patterns: list[str], near_misses: list[str],
                 hint: str | None = None):
        self.patterns = patterns
        self.near_misses = near_misses
        super().__init__(message, hint=hint)


# --------------------------------------------------------------------------- auto-configuration


class ConfigurationError(CDCError):
    """The server or the role cannot support change data capture as asked (validation)."""


class UnsupportedServerVersion(ConfigurationError):
    """The server is older than the kit supports."""


class WalLevelNotLogical(ConfigurationError):
    """``wal_level`` is not ``logical``: logical decoding is impossible until a restart."""


class NoFreeReplicationSlots(ConfigurationError):
    """``max_replication_slots`` is used up (or zero)."""


class NoFreeWalSenders(ConfigurationError):
    """``max_wal_senders`` is used up (or zero)."""


class ReplicationNotPermitted(ConfigurationError):
    """The role may not open a replication connection (no REPLICATION attribute)."""


class TablePrivilegeMissing(ConfigurationError):
    """The role lacks SELECT on matched tables (or USAGE on their schema)."""


class OwnershipRequired(ConfigurationError):
    """CREATE/ALTER PUBLICATION or ALTER TABLE needs ownership the role does not have."""


class PluginNotInstalled(ConfigurationError):
    """The output plugin's library is not found by the server."""


class PluginNotAllowed(ConfigurationError):
    """The output plugin is not listed in ``output_plugin_libraries``."""


class PublicationMismatch(ConfigurationError):
    """An existing publication the kit does not manage lacks some of the matched tables."""


class InvalidPublicationName(ConfigurationError):
    """A publication name PostgreSQL cannot hold as given: empty, longer than 63 bytes (the
    server would silently truncate it) or containing a NUL character."""


class PublicationNotFound(ConfigurationError):
    """The stream's publication does not exist (dropped while streaming, or never created):
    the slot is fine, the server cannot decode changes for it until the publication exists."""


# --------------------------------------------------------------------------- slots


class SlotError(CDCError):
    """A replication slot cannot be created, used or dropped as asked."""


class InvalidSlotName(SlotError):
    """Slot names may hold only lower-case letters, digits and underscores (at most 63)."""


class SlotNotFound(SlotError):
    """No replication slot of that name exists."""


class SlotInUse(SlotError):
    """The slot is active in another process."""

    def __init__(self, message: str, *, slot_name: str, active_pid: int | None,
                 hint: str | None = None, sqlstate: str | None = None):
        self.slot_name = slot_name
        self.active_pid = active_pid
        super().__init__(message, hint=hint, sqlstate=sqlstate)


class SlotPluginMismatch(SlotError):
    """An existing slot of that name decodes with another output plugin."""


class SlotCreationTimeout(SlotError):
    """Creating a logical slot waited too long for running write transactions to finish."""

    def __init__(self, message: str, *, blocking_pids: list[int], hint: str | None = None):
        self.blocking_pids = blocking_pids
        super().__init__(message, hint=hint, sqlstate="57014")


class SlotDropped(SlotNotFound):
    """The slot went away while streaming (dropped by someone, or invalidated)."""


class SlotInvalidated(SlotError):
    """The server invalidated the slot (``wal_status = lost``): the WAL it needed was removed,
    past ``max_slot_wal_keep_size`` (or for another reason the server names). Its changes
    cannot be read any more."""


class TemporarySlotLost(SlotError):
    """A temporary slot vanished with its connection: what came after cannot be recovered."""


class NotKitManaged(SlotError):
    """Teardown refused an object the kit did not create."""


# --------------------------------------------------------------------------- streaming


class StreamLost(CDCError):
    """The replication connection broke (server restart, network). The router reconnects."""

    transient = True


# --------------------------------------------------------------------------- decoding


class DecodeError(CDCError):
    """The change stream could not be decoded."""


class DecoderUnavailable(DecodeError):
    """The decoder for the chosen plugin is not part of this installation."""


class FrameError(DecodeError):
    """A frame the decoder cannot read: unknown type, unsupported version, or corrupt."""


class PgoutputError(DecodeError):
    """The pgoutput stream could not be set up or decoded."""


class BinaryModeUnsupported(DecodeError):
    """A relation arrived in a binary-mode stream with a column the kit reads only as text."""


class TypeMappingError(DecodeError):
    """The type-mapping spec or the catalog could not be read."""


class ChangeNotDecodable(DecodeError):
    """A change of one table could not be decoded: raised by that table's reader where the
    change was (``event``, a :class:`~cdc_notebook.decode.events.DecodeFailed`, says which
    table, LSN and transaction); the stream and the other tables go on. Iterating the reader
    again continues after it."""

    def __init__(self, message: str, *, hint: str | None = None, event: Any = None):
        super().__init__(message, hint=hint)
        self.event = event


# --------------------------------------------------------------------------- the snapshot


class SnapshotError(CDCError):
    """The snapshot of a table could not be taken."""


class SnapshotNotImportable(SnapshotError):
    """The exported snapshot is gone (its replication connection ran another command or closed)."""


class TableDroppedDuringSnapshot(SnapshotError):
    """The table was dropped (or its rewrite lost the rows) while it was being read."""


class SnapshotUnavailable(SnapshotError):
    """An initial snapshot was asked for, but the slot cannot provide a consistent one."""


# --------------------------------------------------------------------------- live frames


class MirrorUnavailable(CDCError):
    """The table has no key (no primary key or replica identity index): only its changelog is
    live, because updates and deletes cannot be matched to rows."""
