"""Minimal clients of one slot for the tests and benchmarks: loops over the product's stream
source (:class:`cdc_notebook.stream.source.ReplicationSource`), without the router.

They see every event in stream order (``Begin``, ``RelationSchema``, ``ChangeBatch``,
``Commit``, logical messages...), which the decoder tests need, and acknowledge only what the
caller says is done: ``send_feedback(lsn)`` / ``acknowledge(lsn)`` report ``lsn`` as flushed; a
keepalive that asks for a reply is answered with the last acknowledged LSN, never with the
server's position (which may be past rows still being consumed). The product (``CDCStream``)
reads the same source through its router.

    with Wal2ArrowStream(server.conninfo()) as stream:
        stream.start("my_slot", 0, {"publication_names": '"my_pub"'})
        for wal_end, event in stream.events(idle_timeout=1.0):
            if isinstance(event, Commit):
                ...                                  # consume the transaction, then
                stream.send_feedback(event.end_lsn)  # acknowledge it
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cdc_notebook.connection.conninfo import connect_session, session_conninfo
from cdc_notebook.decode import typespec
from cdc_notebook.decode.decoder import Decoder, split_copydata
from cdc_notebook.decode.events import Event, Keepalive
from cdc_notebook.decode.pgoutput import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_SPILL_BYTES,
    ModeChoice,
    PgoutputEventDecoder,
    choose_mode,
    protocol_version_for,
    start_options,
)
from cdc_notebook.decode.wal2arrow import FORMAT_VERSION, FrameDecoder
from cdc_notebook.errors import PgoutputError, StreamLost
from cdc_notebook.stream.replication import ReplicationConnection
from cdc_notebook.stream.source import ReplicationSource


class Wal2ArrowStream:
    """One wal2arrow slot streamed over one replication connection."""

    def __init__(self, conninfo: Mapping[str, Any] | str, *, connect_timeout: int = 10):
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self.rc: ReplicationConnection | None = None
        self.source: ReplicationSource | None = None
        self.decoder = FrameDecoder()
        self.acknowledged = 0  # the last LSN reported flushed

    def connect(self) -> Wal2ArrowStream:
        if self.rc is None:
            self.rc = ReplicationConnection(self._conninfo, connect_timeout=self._connect_timeout)
        return self

    def start(self, slot: str, start_lsn: int = 0,
              options: Mapping[str, str] | None = None) -> None:
        """START_REPLICATION with wal2arrow's options (format_version added when missing).

        Starting from ``start_lsn`` 0 resumes at the slot's confirmed position; a fresh decoder
        is used, since the plugin resends schemas at the start of every session."""
        self.connect()
        if self.rc is None:
            raise StreamLost("the stream is not connected", hint="call connect() first")
        opts = {"format_version": str(FORMAT_VERSION), **dict(options or {})}

        def decoders(_binary: bool | None) -> tuple[Decoder, dict[str, str]]:
            self.decoder = FrameDecoder()
            return self.decoder, opts

        self.acknowledged = max(self.acknowledged, start_lsn)
        self.source = ReplicationSource(self.rc, slot, decoders, start_lsn=start_lsn)

    def _source(self) -> ReplicationSource:
        if self.source is None:
            raise StreamLost("the stream is not started", hint="call start() first")
        return self.source

    def read(self, timeout: float = 0.1) -> list[tuple[int, Event | None]]:
        """What arrived within ``timeout``: ``(wal_end, event)``, event None for a keepalive."""
        return [(wal_end, None if frame is None else self.decoder.decode_one(frame))
                for wal_end, frame in self.read_frames(timeout)]

    def read_frames(self, timeout: float = 0.1) -> list[tuple[int, memoryview | None]]:
        """What arrived within ``timeout``, undecoded: ``(wal_end, frame)``, frame None for a
        keepalive (for clients that forward or store frames without reading them)."""
        source = self._source()
        out: list[tuple[int, memoryview | None]] = []
        reply = False
        for message in source.rc.read_raw(timeout=timeout):
            wal_end, payload, asked = split_copydata(message)
            reply = reply or asked
            out.append((wal_end, payload))
        if reply:
            self.send_feedback(self.acknowledged)
        return out

    def events(self, idle_timeout: float = 1.0, *, keepalives: bool = False
               ) -> Iterator[tuple[int, Event | None]]:
        """Iterate ``(wal_end, event)`` until nothing but keepalives came for ``idle_timeout``."""
        last = time.monotonic()
        while time.monotonic() - last < idle_timeout:
            for wal_end, event in self.read(timeout=min(0.1, idle_timeout)):
                if event is not None:
                    last = time.monotonic()
                    yield wal_end, event
                elif keepalives:
                    yield wal_end, None

    def send_feedback(self, flush_lsn: int, reply: bool = False) -> None:
        """Report ``flush_lsn`` (a transaction's end LSN the caller is done with)."""
        self.acknowledged = max(self.acknowledged, flush_lsn)
        self._source().send_feedback(self.acknowledged, reply=reply)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
        elif self.rc is not None:
            self.rc.close()
        self.rc = None

    def __enter__(self) -> Wal2ArrowStream:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PgoutputStream:
    """A pgoutput slot streamed and decoded into events, every event in stream order.

    ``events()`` yields events as they come (``Keepalive`` markers included when
    ``keepalives=True``); :meth:`acknowledge` reports a flush position (send it only for
    transactions whose batches were consumed: the end LSN of their ``Commit``). A binary stream
    that meets a relation needing text restarts in text mode (the product's source does it);
    :attr:`mode` and :attr:`mode_reason` say which and why.
    """

    def __init__(self, conninfo: Mapping[str, Any] | str, slot: str,
                 publications: Iterable[str] | str, *, start_lsn: int = 0,
                 binary: bool | None = None, streaming: bool = True, messages: bool = True,
                 protocol_version: int | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                 max_bytes: int = DEFAULT_MAX_BYTES, spill_bytes: int = DEFAULT_SPILL_BYTES,
                 feedback_interval: float = 10.0):
        self.slot = slot
        self.publications = [publications] if isinstance(publications, str) else list(publications)
        self.catalog = connect_session(conninfo, autocommit=True)
        try:
            server = self.catalog.info.server_version
            self.protocol_version = protocol_version or protocol_version_for(server)
            if self.protocol_version > protocol_version_for(server):
                raise PgoutputError(
                    f"protocol version {self.protocol_version} needs a newer server than "
                    f"{server}", hint=f"use proto_version <= {protocol_version_for(server)}")
            types = typespec.TypeCatalog.load(self.catalog)
            first = (choose_mode(self.catalog, self.publications, types) if binary is None
                     else ModeChoice(binary, "binary asked by the caller" if binary
                                     else "text asked by the caller"))
            streaming = streaming and self.protocol_version >= 2

            def decoders(wanted: bool | None) -> tuple[Decoder, dict[str, str]]:
                choice = first if wanted is None else ModeChoice(wanted, "text")
                decoder = PgoutputEventDecoder(types, binary=choice.binary, max_rows=max_rows,
                                               max_bytes=max_bytes, spill_bytes=spill_bytes,
                                               mode_reason=choice.reason)
                return decoder, start_options(self.publications,
                                              protocol_version=self.protocol_version,
                                              binary=choice.binary, streaming=streaming,
                                              messages=messages)

            self._conninfo = conninfo
            self._decoders = decoders
            self.flushed = start_lsn
            self.feedback_interval = feedback_interval
            self._last_feedback = time.monotonic()
            self.last_wal_end = 0
            rc = ReplicationConnection(session_conninfo(conninfo))
            self.source = ReplicationSource(rc, slot, decoders, start_lsn=start_lsn)
        except BaseException:
            self.catalog.close()
            raise

    @property
    def decoder(self) -> Decoder | None:
        return self.source.decoder

    def _restart_in_text(self, why: Exception) -> None:
        """Start again in text mode from what was acknowledged, on a new connection (as the
        product's router does)."""
        self.source.close()
        rc = ReplicationConnection(session_conninfo(self._conninfo))
        self.source = ReplicationSource(rc, self.slot, self._decoders, start_lsn=self.flushed,
                                        binary=False)
        decoder = self.source.decoder
        decoder.mode_reason = f"text: switched from binary: {getattr(why, 'message', why)}"

    @property
    def mode(self) -> str:
        return "binary" if self.source.binary else "text"

    @property
    def mode_reason(self) -> str:
        return self.source.mode_reason

    def events(self, timeout: float | None = None, *, keepalives: bool = False,
               idle_timeout: float | None = None) -> Iterator[Event | Keepalive]:
        """Events until ``timeout`` seconds passed, or ``idle_timeout`` seconds without data
        (keepalives do not count as data)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_data = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            got_data = False
            try:
                for event in self.source.read(0.1):
                    if isinstance(event, Keepalive):
                        self.last_wal_end = max(self.last_wal_end, event.wal_end)
                        if event.reply_requested:
                            self.send_feedback()
                        if keepalives:
                            yield event
                        continue
                    got_data = True
                    yield event
            except Exception as exc:
                if not self.source.needs_text_restart(exc):
                    raise
                self._restart_in_text(exc)
                continue
            if time.monotonic() - self._last_feedback > self.feedback_interval:
                self.send_feedback()
            if got_data:
                last_data = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last_data > idle_timeout:
                return

    def acknowledge(self, lsn: int) -> None:
        """Report everything up to ``lsn`` as flushed."""
        self.flushed = max(self.flushed, lsn)
        self.send_feedback()

    def send_feedback(self) -> None:
        self.source.send_feedback(self.flushed, reply=False)
        self._last_feedback = time.monotonic()

    def close(self) -> None:
        self.source.close()
        self.catalog.close()

    def __enter__(self) -> PgoutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
