"""A minimal wal2arrow streaming client: frames over a replication connection, decoded in place.

Built on :class:`cdc_notebook.stream.replication.ReplicationConnection` (COPY BOTH on psycopg's ``pq``
layer, non-blocking reads) and :class:`cdc_notebook.decode.wal2arrow.FrameDecoder`. It acknowledges only
what the caller says is done: ``send_feedback(lsn)`` reports ``lsn`` as written, flushed and
applied; a keepalive that asks for a reply is answered with the last acknowledged LSN, never
with the server's position (which may be past rows still being consumed)::

    with Wal2ArrowStream(server.conninfo()) as stream:
        stream.start("my_slot", 0, {"publication_names": "my_pub"})
        for wal_end, event in stream.events(idle_timeout=1.0):
            if isinstance(event, Commit):
                ...                                  # consume the transaction, then
                stream.send_feedback(event.end_lsn)  # acknowledge it

Arrow bodies are read without copies: the plugin aligns them to 8 bytes within the CopyData
message and the decoder wraps the received buffer (``FrameDecoder.copied_bodies`` counts the
exceptions).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from cdc_notebook.decode.events import Event
from cdc_notebook.decode.wal2arrow import FORMAT_VERSION, FrameDecoder
from cdc_notebook.errors import StreamLost
from cdc_notebook.stream.replication import ReplicationConnection


class Wal2ArrowStream:
    """One wal2arrow slot streamed over one replication connection."""

    def __init__(self, conninfo: Mapping[str, Any] | str, *, connect_timeout: int = 10):
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self.rc: ReplicationConnection | None = None
        self.decoder = FrameDecoder()
        self.acknowledged = 0  # the last LSN reported flushed

    def connect(self) -> Wal2ArrowStream:
        if self.rc is None:
            self.rc = ReplicationConnection(self._conninfo, connect_timeout=self._connect_timeout)
        return self

    def start(self, slot: str, start_lsn: int = 0,
              options: Mapping[str, str] | None = None) -> None:
        """START_REPLICATION with wal2arrow's options (format_version added when missing).

        Starting from ``start_lsn`` 0 resumes at the slot's confirmed position; a fresh
        decoder is used, since the plugin resends schemas at the start of every session."""
        self.connect()
        assert self.rc is not None
        opts = {"format_version": str(FORMAT_VERSION), **dict(options or {})}
        self.decoder = FrameDecoder()
        self.acknowledged = max(self.acknowledged, start_lsn)
        self.rc.start(slot, start_lsn, opts)

    def read(self, timeout: float = 0.1) -> list[tuple[int, Event | None]]:
        """What arrived within ``timeout``: ``(wal_end, event)``, event None for a keepalive."""
        return [(wal_end, None if frame is None else self.decoder.decode_one(frame))
                for wal_end, frame in self.read_frames(timeout)]

    def read_frames(self, timeout: float = 0.1) -> list[tuple[int, memoryview | None]]:
        """What arrived within ``timeout``, undecoded: ``(wal_end, frame)``, frame None for a
        keepalive. Each frame is a view of the received message (docs/protocol.md), for
        clients that forward or store frames without reading them (``frames.frame_header``
        reads a frame's fixed fields without pyarrow)."""
        if self.rc is None:
            raise StreamLost("the stream is not connected", hint="call start() first")
        out = self.rc.read(timeout=timeout)
        if self.rc.reply_requested:
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
        if self.rc is None:
            raise StreamLost("the stream is not connected", hint="call start() first")
        self.acknowledged = max(self.acknowledged, flush_lsn)
        self.rc.send_feedback(self.acknowledged, reply=reply)

    def close(self) -> None:
        if self.rc is not None:
            self.rc.close()
            self.rc = None

    def __enter__(self) -> Wal2ArrowStream:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
