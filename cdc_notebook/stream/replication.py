"""The replication connection: COPY BOTH on psycopg 3's ``pq`` layer, decoder-agnostic.

``ReplicationConnection`` opens a ``replication=database`` connection (every libpq option —
TLS included — passes through), sends ``START_REPLICATION``, and then reads CopyData messages
without ever blocking longer than the caller's timeout: it waits on the socket with
``select`` and calls ``consume_input()``; ``get_copy_data(1)`` (async mode) never blocks.
XLogData (``w``) payloads are handed out as memoryviews of the received message, so a decoder
can read an Arrow body in place. Keepalives (``k``) are answered at once when the server asks.

Replication connections speak only the simple query protocol: no bound parameters here; the
one command with user input (the slot name and plugin options) is built with quoted
identifiers and literals.
"""

from __future__ import annotations

import re
import select
import struct
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import pq

from cdc_notebook.connection.conninfo import connect
from cdc_notebook.connection.lsn import format_lsn
from cdc_notebook.connection.quoting import quote_ident, quote_literal
from cdc_notebook.errors import (
    CDCError,
    PublicationNotFound,
    SlotDropped,
    SlotInUse,
    SlotInvalidated,
    StreamLost,
)

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_HDR_W = struct.Struct(">QQq")  # data start, WAL end, send time
_HDR_K = struct.Struct(">QqB")  # WAL end, send time, reply requested
_STATUS = struct.Struct(">cQQQqB")


def _raise_for(result: Any, slot: str) -> None:
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode(
        errors="replace")
    hint = (result.error_field(pq.DiagnosticField.MESSAGE_HINT) or b"").decode(errors="replace")
    state = sqlstate.decode() if sqlstate else None
    if state is None or state.startswith(("57P", "08")):
        # No server error: the connection broke (shutdown, restart, network) — try again.
        detail = message or (result.error_message or b"").decode(errors="replace").strip()
        raise StreamLost(f"the replication connection broke while starting: {detail}")
    if "publication" in message and "does not exist" in message:
        # wal2arrow and pgoutput load the publications when they decode: the slot is fine.
        raise PublicationNotFound(
            f"the stream's publication does not exist: {message}",
            hint="create it again (CREATE PUBLICATION ... FOR TABLE ...; a new CDCStream with "
            "the same patterns does that) or stream with the publication the tables are in; "
            "keep the slot: it resumes where it was once the publication exists",
            sqlstate=state)
    if state == "42704" or "does not exist" in message:
        raise SlotDropped(f"replication slot {slot!r} does not exist (anymore): {message}",
                          hint="it was dropped or invalidated; create a new slot (and take a "
                          "new snapshot: changes since the old slot's position are lost)",
                          sqlstate=state)
    detail = (result.error_field(pq.DiagnosticField.MESSAGE_DETAIL) or b"").decode(
        errors="replace")
    if state == "55000" and ("invalidated" in detail or "can no longer" in message):
        raise SlotInvalidated(
            f"replication slot {slot!r} was invalidated by the server (wal_status = lost): "
            f"{message}{' — ' + detail if detail else ''}",
            hint="its changes since the last acknowledged position are gone: drop the slot and "
            "start again with a new one and a new snapshot (CDCStream(..., snapshot=True)); to "
            "keep it from happening, raise max_slot_wal_keep_size (or set it to -1) in "
            "postgresql.conf, or keep a reader consuming so the slot does not fall behind "
            "(stream.status() shows wal_status and the WAL retained)", sqlstate=state)
    if state == "55006" or "is active for PID" in message:
        match = re.search(r"PID (\d+)", message)
        raise SlotInUse(f"replication slot {slot!r} is already being read: {message}",
                        slot_name=slot, active_pid=int(match.group(1)) if match else None,
                        hint="stop the other consumer (or terminate that backend), or use "
                        "another slot", sqlstate=state)
    raise CDCError(f"START_REPLICATION failed: {message}", hint=hint or None, sqlstate=state)


class ReplicationConnection:
    """One replication connection streaming one logical slot."""

    def __init__(self, conninfo: Mapping[str, Any] | str, *, connect_timeout: int = 10):
        # Through the kit's one connect(): a wrong password is AuthenticationFailed, a missing
        # REPLICATION attribute ReplicationNotPermitted (both permanent); only a server that
        # cannot be reached (down, restarting) is ServerUnreachable, which the router retries.
        self.conn = connect(conninfo, replication=True, connect_timeout=connect_timeout)
        self.pgconn = self.conn.pgconn
        self.slot: str | None = None
        self.streaming = False
        self.last_wal_end = 0
        self.bytes_received = 0

    @classmethod
    def adopt(cls, conn: psycopg.Connection[Any]) -> ReplicationConnection:
        """Stream on an already open replication connection (the one that created a
        temporary slot, which lives only as long as that connection)."""
        self = cls.__new__(cls)
        self.conn = conn
        self.pgconn = conn.pgconn
        self.slot = None
        self.streaming = False
        self.last_wal_end = 0
        self.bytes_received = 0
        return self

    # ---- commands

    def command(self, sql: str) -> list[tuple[Any, ...]]:
        """A replication command (simple protocol, no parameters), e.g. IDENTIFY_SYSTEM."""
        return self.conn.execute(sql.encode(), prepare=False).fetchall()

    def start(self, slot: str, start_lsn: int = 0, options: Mapping[str, str] | None = None
              ) -> None:
        opts = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in (options or {}).items())
        sql = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)}"
        if opts:
            sql += f" ({opts})"
        self.slot = slot
        self.pgconn.send_query(sql.encode())
        while True:
            self._wait_readable(1.0)
            self.pgconn.consume_input()
            if self.pgconn.is_busy():
                continue
            result = self.pgconn.get_result()
            if result is None:
                raise StreamLost("the server closed the replication connection at start")
            if result.status == pq.ExecStatus.COPY_BOTH:
                break
            if result.status == pq.ExecStatus.FATAL_ERROR:
                while self.pgconn.get_result() is not None:
                    pass
                _raise_for(result, slot)
        self.pgconn.nonblocking = 1
        self.streaming = True

    # ---- streaming

    def _wait_readable(self, timeout: float) -> bool:
        try:
            readable, _, _ = select.select([self.pgconn.socket], [], [], timeout)
        except (OSError, ValueError, psycopg.OperationalError) as exc:
            # (libpq drops the socket once a write found the connection gone: its socket then
            # raises OperationalError, which is a lost connection like any other)
            raise StreamLost(f"replication connection lost: {exc}") from exc
        return bool(readable)

    def read_raw(self, timeout: float = 0.1, max_messages: int = 4096) -> list[Any]:
        """Received CopyData messages as they are (``w`` + 24-byte header + payload, or ``k``).

        For decoders that take a whole bulk of messages in one call (pgoutput's native
        decoder). Waits at most ``timeout`` for the first message.
        """
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        get = self.pgconn.get_copy_data
        while len(out) < max_messages:
            try:
                nbytes, data = get(1)
            except psycopg.OperationalError as exc:
                raise StreamLost(f"replication connection lost: {exc}") from exc
            if nbytes == 0:
                if out:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._wait_readable(remaining):
                    break
                try:
                    self.pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    raise StreamLost(f"replication connection lost: {exc}") from exc
                continue
            if nbytes < 0:
                self._end_of_copy()
            self.bytes_received += nbytes
            out.append(data)
        return out

    @staticmethod
    def split(message: Any) -> tuple[int, memoryview | None, bool]:
        """``(wal_end, payload, reply_requested)`` of one raw message (payload None for a
        keepalive); the payload is a view into the message, not a copy."""
        view = memoryview(message)
        if view[0] == 0x77:  # 'w' XLogData
            _start, wal_end, _sent = _HDR_W.unpack_from(view, 1)
            return wal_end, view[25:], False
        wal_end, _sent, reply = _HDR_K.unpack_from(view, 1)
        return wal_end, None, bool(reply)

    def read(self, timeout: float = 0.1, max_messages: int = 1024
             ) -> list[tuple[int, memoryview | None]]:
        """Received messages as ``(wal_end, payload)``; payload None for a keepalive.

        Returns what is available, waiting at most ``timeout`` for the first message.
        """
        out: list[tuple[int, memoryview | None]] = []
        for message in self.read_raw(timeout, max_messages):
            wal_end, payload, reply = self.split(message)
            self.last_wal_end = max(self.last_wal_end, wal_end)
            if reply:
                self.reply_requested = True
            out.append((wal_end, payload))
        return out

    reply_requested = False

    def _end_of_copy(self) -> None:
        """The server ended the COPY: an error (slot dropped, shutdown) or a clean end."""
        self.streaming = False
        result = self.pgconn.get_result()
        while result is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
                state = sqlstate.decode() if sqlstate else ""
                if state.startswith(("57P", "08")):  # admin shutdown, connection failure
                    raise StreamLost("the server ended the replication stream (shutdown or "
                                     "restart)")
                _raise_for(result, self.slot or "?")
            result = self.pgconn.get_result()
        raise StreamLost("the server ended the replication stream")

    def send_feedback(self, flush_lsn: int, reply: bool = False) -> None:
        """Standby status update: written/flushed/applied up to ``flush_lsn``."""
        now = time.time_ns() // 1000 - _PG_EPOCH_US
        msg = _STATUS.pack(b"r", flush_lsn, flush_lsn, flush_lsn, now, 1 if reply else 0)
        try:
            if self.pgconn.put_copy_data(msg) != 1:
                raise StreamLost("could not queue a status update")
            while self.pgconn.flush() == 1:
                select.select([], [self.pgconn.socket], [], 1.0)
        except psycopg.OperationalError as exc:
            raise StreamLost(f"replication connection lost: {exc}") from exc
        self.reply_requested = False

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    @property
    def backend_pid(self) -> int:
        return int(self.pgconn.backend_pid)
