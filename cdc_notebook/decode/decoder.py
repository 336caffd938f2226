"""The one interface between the stream and a decoder, and the choice of decoder per plugin.

A :class:`Decoder` takes the CopyData messages of a replication stream as received (XLogData
``w`` with its 25-byte header, primary keepalives ``k``) and yields the events of
:mod:`cdc_notebook.decode.events`, with a :class:`~cdc_notebook.decode.events.Keepalive` for
every message that carries no event (so the stream learns the server's WAL position and whether
the server asked for a reply). Decoders do no I/O on the stream; pgoutput's keeps an ordinary
connection for type look-ups, closed by :meth:`Decoder.close`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from cdc_notebook.decode.events import Event, Keepalive

XLOGDATA_HEADER_SIZE = 25
_HDR_W = struct.Struct(">QQq")  # data start, WAL end, send time
_HDR_K = struct.Struct(">QqB")  # WAL end, send time, reply requested


def split_copydata(message: Any) -> tuple[int, memoryview | None, bool]:
    """``(wal_end, payload, reply_requested)`` of one CopyData message of a replication stream;
    ``payload`` is None for a keepalive, else a view into the message (not a copy)."""
    view = memoryview(message)
    if view[0] == 0x77:  # 'w' XLogData
        _start, wal_end, _sent = _HDR_W.unpack_from(view, 1)
        return wal_end, view[XLOGDATA_HEADER_SIZE:], False
    wal_end, _sent, reply = _HDR_K.unpack_from(view, 1)
    return wal_end, None, bool(reply)


class Decoder(Protocol):
    """What the stream needs of a decoder (wal2arrow frames, pgoutput messages)."""

    #: True while decoding a binary-mode pgoutput stream (which may need a restart in text).
    binary: bool

    def feed(self, messages: Sequence[Any]) -> Iterator[Event | Keepalive]:
        """The events of ``messages`` (raw CopyData, in order), as the caller iterates."""
        ...

    def close(self) -> None:
        """Release what the decoder holds (pgoutput: its catalog connection)."""
        ...


def make_decoder(plugin: str, publication: str | None,
                 conninfo: Mapping[str, Any] | str | None = None, *,
                 binary: bool | None = None) -> tuple[Decoder, dict[str, str]]:
    """The decoder for ``plugin`` and its START_REPLICATION options.

    ``binary`` applies to pgoutput: None chooses binary when every published column has a
    binary decoder (:func:`cdc_notebook.decode.pgoutput.choose_mode`), False forces text.
    """
    from cdc_notebook.connection.quoting import quote_ident
    from cdc_notebook.errors import DecoderUnavailable

    if plugin == "wal2arrow":
        from cdc_notebook.decode import wal2arrow

        # Logical messages carry the watermarks of tables joining a running stream. The plugin
        # splits publication_names like an identifier list: quoted, a name keeps its case,
        # spaces and commas.
        options = {"format_version": str(wal2arrow.FORMAT_VERSION), "messages": "on"}
        if publication:
            options["publication_names"] = quote_ident(publication)
        return wal2arrow.FrameDecoder(), options
    if plugin == "pgoutput":
        from cdc_notebook.decode import pgoutput

        return pgoutput.make_stream_decoder(publication, conninfo, binary=binary)
    raise DecoderUnavailable(f"no decoder for output plugin {plugin!r}",
                             hint="use plugin='wal2arrow' or plugin='pgoutput'")
