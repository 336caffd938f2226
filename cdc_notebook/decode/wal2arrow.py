"""The reference decoder of wal2arrow's wire format (docs/protocol.md), into cdc_notebook.decode.events.

One frame per plugin write: from ``pg_logical_slot_get_binary_changes`` each row's ``data``,
from a replication stream each XLogData message's payload. Arrow bodies are read in place:
``pyarrow.ipc.read_record_batch`` over a buffer that views the frame (no copy when the body is
8-byte aligned, which the plugin arranges for streaming CopyData messages).

    decoder = FrameDecoder()
    for frame in frames:
        for event in decoder.decode(frame):   # Begin, RelationSchema, ChangeBatch, Commit, ...
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cdc_notebook.decode.decoder import split_copydata
from cdc_notebook.decode.events import (
    Begin,
    ChangeBatch,
    Commit,
    Event,
    Keepalive,
    LogicalMessage,
    RelationSchema,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
)
from cdc_notebook.errors import FrameError

if TYPE_CHECKING:
    import psycopg

# 2: schema frames carry each column's attnum; a TRUNCATE frame carries its ordinal and follows
# the schema frames of its relations (docs/protocol.md).
FORMAT_VERSIONS = (1, 2)
FORMAT_VERSION = max(FORMAT_VERSIONS)


Buffer = bytes | bytearray | memoryview

_PREFIX = struct.Struct("<BBH")  # tag, format version, body offset
_TXN = struct.Struct("<IQQq")  # xid, commit lsn, end lsn, commit timestamp (us since 1970)
_SCHEMA = struct.Struct("<IIB")  # relid, schema version, replica identity
_BATCH = struct.Struct("<IIIIIB")  # relid, schema version, xid, subxid, rows, flags
_TRUNCATE = struct.Struct("<IQBI")  # xid, lsn, flags, relation count
_MESSAGE = struct.Struct("<IQB")  # xid, lsn, transactional
_STREAM_START = struct.Struct("<IB")  # xid, first segment
_STREAM_ABORT = struct.Struct("<IIQ")  # xid, subxid, abort lsn
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

TAGS = {
    ord("B"): "begin", ord("C"): "commit", ord("R"): "schema", ord("D"): "batch",
    ord("T"): "truncate", ord("M"): "message", ord("S"): "stream_start",
    ord("E"): "stream_stop", ord("K"): "stream_commit", ord("A"): "stream_abort",
}


# the fixed fields that follow each tag's 4-byte prefix (strings and bodies come after them)
_FIXED = {
    "begin": _TXN, "commit": _TXN, "stream_commit": _TXN, "schema": _SCHEMA, "batch": _BATCH,
    "truncate": _TRUNCATE, "message": _MESSAGE, "stream_start": _STREAM_START,
    "stream_stop": struct.Struct("<"), "stream_abort": _STREAM_ABORT,
}


def _byte_view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _frame_kind(view: memoryview, offset: int) -> tuple[str, int]:
    """The kind and body offset of the frame at ``view[offset:]``, its prefix checked."""
    if len(view) - offset < _PREFIX.size:
        raise FrameError(f"frame of {len(view) - offset} bytes is too short",
                         hint="is this slot using the wal2arrow plugin?")
    tag, version, body_offset = _PREFIX.unpack_from(view, offset)
    kind = TAGS.get(tag)
    if kind is None:
        raise FrameError(
            f"unknown wal2arrow frame type 0x{tag:02x} ({chr(tag)!r})",
            hint="the plugin speaks a newer protocol than this client, or the slot does not "
            "use wal2arrow: upgrade cdc_notebook or pass format_version "
            f"{FORMAT_VERSION} when starting replication")
    if version not in FORMAT_VERSIONS:
        raise FrameError(
            f"wal2arrow frame of format version {version}; this client reads {FORMAT_VERSIONS}",
            hint=f"start replication with format_version '{FORMAT_VERSION}'")
    return kind, body_offset


def frame_header(frame: Buffer, offset: int = 0) -> tuple[str, tuple[Any, ...]]:
    """A frame's kind (``"batch"``, ``"commit"``, ...) and fixed fields, without pyarrow.

    For clients that route, count or store frames without reading their Arrow bodies: a
    batch's fields are ``(relid, schema_version, xid, subxid, rows, flags)``, a commit's
    ``(xid, commit_lsn, end_lsn, commit_ts_us)`` (docs/protocol.md lists every tag's).
    """
    view = _byte_view(frame)
    kind, _body = _frame_kind(view, offset)
    fixed = _FIXED[kind]
    if len(view) - offset < _PREFIX.size + fixed.size:
        raise FrameError("truncated frame", hint="the stream was cut; reconnect")
    return kind, fixed.unpack_from(view, offset + _PREFIX.size)


class _Reader:
    __slots__ = ("view", "pos")

    def __init__(self, view: memoryview, pos: int):
        self.view = view
        self.pos = pos

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        if self.pos + st.size > len(self.view):
            raise FrameError(f"truncated frame: needs {self.pos + st.size} bytes, has "
                             f"{len(self.view)}", hint="the stream was cut; reconnect")
        values = st.unpack_from(self.view, self.pos)
        self.pos += st.size
        return values

    def string(self) -> str:
        (length,) = self.unpack(_U16)
        return self.raw(length).decode("utf-8")

    def raw(self, length: int) -> bytes:
        if self.pos + length > len(self.view):
            raise FrameError("truncated frame", hint="the stream was cut; reconnect")
        data = bytes(self.view[self.pos:self.pos + length])
        self.pos += length
        return data


class FrameDecoder:
    """Decodes frames into events, remembering relation schemas by (relid, schema version)."""

    binary = False  # the Decoder protocol's flag (pgoutput's binary mode); frames are Arrow

    def __init__(self) -> None:
        self._schemas: dict[tuple[int, int], RelationSchema] = {}
        self.copied_bodies = 0  # Arrow bodies that were not 8-byte aligned and had to be copied
        self._version = FORMAT_VERSION  # of the frame being decoded
        self._txn = (0, 0, 0)  # commit LSN, end LSN, commit time of the transaction (BEGIN)

    def feed(self, messages: Sequence[Any]) -> Iterator[Event | Keepalive]:
        """The events of raw CopyData messages (the :class:`~cdc_notebook.decode.decoder.Decoder`
        protocol): one frame per XLogData message, read in place; a keepalive or an empty
        message becomes a :class:`Keepalive`."""
        for message in messages:
            wal_end, payload, reply = split_copydata(message)
            if payload is None or len(payload) == 0:
                yield Keepalive(wal_end, reply)
            else:
                yield self.decode_one(payload)

    def close(self) -> None:
        """Nothing to release (the Decoder protocol)."""

    def schema(self, relid: int, version: int) -> RelationSchema:
        try:
            return self._schemas[(relid, version)]
        except KeyError:
            raise FrameError(
                f"batch for relation {relid} schema version {version} before its schema frame",
                hint="decode every frame of the stream in order, from the start of the "
                "decoding session") from None

    def decode(self, frame: Buffer) -> list[Event]:
        """The events of one frame (one plugin write): the decoder protocol of the reader."""
        return [self.decode_one(frame)]

    def decode_one(self, frame: Buffer, offset: int = 0) -> Event:
        """Decode the frame at ``frame[offset:]`` (offset 25 for a raw XLogData message)."""
        view = _byte_view(frame)
        kind, body_offset = _frame_kind(view, offset)
        self._version = view[offset + 1]
        reader = _Reader(view, offset + _PREFIX.size)
        decode: Callable[[_Reader, memoryview, int, int], Event] = getattr(self, f"_decode_{kind}")
        return decode(reader, view, offset, body_offset)

    def decode_all(self, frames: Iterable[Buffer]) -> list[Event]:
        return [self.decode_one(frame) for frame in frames]

    def _body(self, view: memoryview) -> pa.Buffer:
        buf = pa.py_buffer(view)
        if buf.address % 8 == 0:
            return buf
        self.copied_bodies += 1
        return pa.py_buffer(bytes(view))  # bytes' data is 16-byte aligned

    # -- mirror of wal2arrow/src/frame.c

    def _decode_begin(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        begin = Begin(*r.unpack(_TXN))
        self._txn = (begin.commit_lsn, begin.end_lsn, begin.commit_ts)
        return begin

    def _decode_commit(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        return Commit(*r.unpack(_TXN))

    def _decode_stream_commit(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        return StreamCommit(*r.unpack(_TXN))

    def _decode_schema(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        relid, version, replident = r.unpack(_SCHEMA)
        namespace = r.string()
        name = r.string()
        (nkeys,) = r.unpack(_U16)
        keys = tuple(r.string() for _ in range(nkeys))
        ids: tuple[int, ...] = ()
        if self._version >= 2:
            (ncols,) = r.unpack(_U16)
            ids = tuple(r.unpack(_U16)[0] for _ in range(ncols))
        if body == 0 or start + body > len(view):
            raise FrameError("schema frame without an Arrow body", hint="corrupt stream")
        schema = pa.ipc.read_schema(self._body(view[start + body:]))
        event = RelationSchema(relid, version, namespace, name, chr(replident), keys, schema,
                               ids)
        self._schemas[(relid, version)] = event
        return event

    def _decode_batch(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        relid, version, xid, subxid, nrows, _flags = r.unpack(_BATCH)
        rel = self.schema(relid, version)
        if body == 0 or start + body > len(view):
            raise FrameError("batch frame without an Arrow body", hint="corrupt stream")
        message = self._body(view[start + body:])
        batch = pa.ipc.read_record_batch(message, rel.arrow_schema)
        if batch.num_rows != nrows:
            raise FrameError(f"batch frame announces {nrows} rows but holds {batch.num_rows}",
                             hint="corrupt stream")
        return ChangeBatch(relid, version, rel.namespace, rel.name, xid, batch, subxid, message)

    def _decode_truncate(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        xid, lsn, flags, count = r.unpack(_TRUNCATE)
        ordinal = r.unpack(_U64)[0] if self._version >= 2 else 0
        relids, names = [], []
        for _ in range(count):
            (relid,) = r.unpack(_U32)
            namespace = r.string()
            relids.append(relid)
            names.append(f"{namespace}.{r.string()}")
        commit_lsn, end_lsn, commit_ts = self._txn
        return Truncate(xid, lsn, tuple(names), tuple(relids), cascade=bool(flags & 1),
                        restart_identity=bool(flags & 2), ordinal=ordinal,
                        commit_lsn=commit_lsn, end_lsn=end_lsn, commit_ts=commit_ts)

    def _decode_message(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        xid, lsn, transactional = r.unpack(_MESSAGE)
        prefix = r.string()
        (length,) = r.unpack(_U32)
        return LogicalMessage(xid, lsn, bool(transactional), prefix, r.raw(length))

    def _decode_stream_start(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        xid, first = r.unpack(_STREAM_START)
        self._txn = (0, 0, 0)  # in progress: no commit yet
        return StreamStart(xid, bool(first))

    def _decode_stream_stop(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        return StreamStop()

    def _decode_stream_abort(self, r: _Reader, view: memoryview, start: int, body: int) -> Event:
        xid, subxid, _lsn = r.unpack(_STREAM_ABORT)
        return StreamAbort(xid, subxid)


def slot_changes(conn: psycopg.Connection[Any], slot: str, options: dict[str, str] | None = None,
                 *, peek: bool = False, upto_nchanges: int | None = None,
                 decoder: FrameDecoder | None = None) -> list[Event]:
    """Decode a wal2arrow slot's pending changes through the SQL interface.

    ``pg_logical_slot_get_binary_changes`` (or ``..._peek_...`` with ``peek=True``, which does
    not consume them) over an ordinary psycopg connection; ``options`` are the plugin's options.
    """
    flat: list[str] = []
    for key, value in (options or {}).items():
        flat += [key, str(value)]
    func = "pg_logical_slot_peek_binary_changes" if peek else "pg_logical_slot_get_binary_changes"
    rows = conn.execute(
        f"SELECT data FROM pg_catalog.{func}(%s, NULL, %s, VARIADIC %s::text[])",
        (slot, upto_nchanges, flat)).fetchall()
    decoder = decoder or FrameDecoder()
    return [decoder.decode_one(row[0]) for row in rows]
