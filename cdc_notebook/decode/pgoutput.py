"""The pgoutput fallback: PostgreSQL's built-in output plugin decoded into the kit's batches.

When wal2arrow is not on the server (managed services), the slot uses ``pgoutput`` and this
module turns its messages into the same events and the same Arrow schema as the wal2arrow path
(:mod:`cdc_notebook.decode.events`, ``docs/decisions.md``, the type-mapping spec of
:mod:`cdc_notebook.decode.typespec`). Decoding is native (:mod:`cdc_notebook._native`): messages cross
from Python to C in lists, rows never pass through Python.

* **Protocol version** 1 to 4, the newest the server supports (:func:`protocol_version_for`):
  v2+ streams large in-progress transactions, which the decoder buffers per transaction
  (spilled to a temporary file past ``spill_bytes``), drops on abort (a rolled-back
  subtransaction's rows on its own abort) and emits at stream commit as an ordinary
  ``Begin ... Commit`` sequence, one bounded batch at a time.
* **Binary or text**: binary (PostgreSQL 14+) applies to the whole stream, so it is chosen
  only when every published column's type has a complete binary decoder in the kit
  (:func:`choose_mode`); each Relation message is checked again, and a table that needs text
  raises :class:`BinaryModeUnsupported`, on which :class:`PgoutputStream` restarts in text mode
  from the last acknowledged position (nothing of the interrupted transaction was emitted).
* **Batches**: rows accumulate per relation within a transaction and are emitted at its commit
  (with its end LSN), in change order across TRUNCATEs and logical messages, and sealed into a
  new batch every ``max_rows`` rows / ``max_bytes`` bytes.

See docs/pgoutput.md for the message-by-message mapping.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa

from cdc_notebook._native import PgoutputDecoder as _NativeDecoder
from cdc_notebook._native import TablePlan, import_batch, make_plan
from cdc_notebook.connection.conninfo import connect_session
from cdc_notebook.connection.quoting import quote_ident
from cdc_notebook.decode import typespec as spec_types
from cdc_notebook.decode.events import (
    Begin,
    ChangeBatch,
    Commit,
    DecodeFailed,
    Event,
    Keepalive,
    LogicalMessage,
    RelationSchema,
    Truncate,
)
from cdc_notebook.errors import BinaryModeUnsupported, PgoutputError, TypeMappingError
from cdc_notebook.provision import column_history

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 65_536
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_SPILL_BYTES = 16 << 20


def protocol_version_for(server_version_num: int) -> int:
    """The newest pgoutput protocol version a server supports (1 to 4)."""
    if server_version_num >= 160000:
        return 4  # parallel streaming (abort LSN and time on StreamAbort, when asked)
    if server_version_num >= 150000:
        return 3  # two-phase commit (not enabled by the kit)
    if server_version_num >= 140000:
        return 2  # streaming of in-progress transactions
    return 1


def _binary_capable(mapping: spec_types.TypeMapping) -> bool:
    # arrays of an unusual shape need the server's text, which only text mode carries;
    # 'other' types are their text output
    return mapping.kind not in ("array", "other")


_PUBLISHED_COLUMNS = """
SELECT pt.schemaname::text, pt.tablename::text, a.attname::text, a.atttypid::int8, a.atttypmod
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_class c ON c.relname = pt.tablename
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND n.nspname = pt.schemaname
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE pt.pubname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
"""


@dataclass(frozen=True)
class ModeChoice:
    binary: bool
    reason: str

    @property
    def mode(self) -> str:
        return "binary" if self.binary else "text"


def choose_mode(conn: psycopg.Connection[Any], publications: Iterable[str],
                catalog: spec_types.TypeCatalog | None = None) -> ModeChoice:
    """Binary when the server has it and every published column has a binary decoder."""
    version = conn.info.server_version
    if version < 140000:
        return ModeChoice(False, f"server {version} predates binary pgoutput (PostgreSQL 14)")
    catalog = catalog or spec_types.TypeCatalog.load(conn)
    rows = conn.execute(_PUBLISHED_COLUMNS, (list(publications),)).fetchall()
    blockers = []
    for nsp, rel, col, typoid, typmod in rows:
        mapping = catalog.map_type(int(typoid), int(typmod))
        if not _binary_capable(mapping):
            blockers.append(f"{nsp}.{rel}.{col} ({mapping.metadata.get('pg.type', '?')})")
    if blockers:
        shown = ", ".join(sorted(blockers)[:5]) + (" ..." if len(blockers) > 5 else "")
        return ModeChoice(False, f"text: {len(blockers)} published column(s) need the server's "
                          f"text output: {shown}")
    return ModeChoice(True, f"binary: all {len(rows)} published columns have binary decoders")


def start_options(publications: Iterable[str], *, protocol_version: int, binary: bool,
                  streaming: bool = True, messages: bool = True,
                  parallel: bool = False) -> dict[str, str]:
    """START_REPLICATION options for pgoutput."""
    opts = {"proto_version": str(protocol_version),
            "publication_names": ",".join(quote_ident(p) for p in publications)}
    if protocol_version >= 2 or binary:
        opts["binary"] = "true" if binary else "false"
    if messages:
        opts["messages"] = "true"
    if protocol_version >= 2:
        opts["streaming"] = ("parallel" if parallel and protocol_version >= 4
                             else "on" if streaming else "off")
    return opts


_ATTRIBUTES = """
SELECT attnum::int, attname::text, atttypid::int8, attisdropped
FROM pg_catalog.pg_attribute
WHERE attrelid = %s AND attnum > 0 AND attgenerated = ''
ORDER BY attnum
"""


def derive_column_ids(columns: Sequence[tuple[str, int]],
                      attributes: Sequence[tuple[int, str, int, bool]]) -> tuple[int, ...]:
    """Column identity (attnum) for the columns of a pgoutput Relation message.

    ``columns`` are the message's ``(name, type OID)`` in its order, which is attnum order;
    ``attributes`` are pg_attribute's ``(attnum, name, type OID, dropped)`` of the relation
    *now* (the reader may be behind later DDL; generated columns left out). Attnums are never
    reused and a dropped column stays in pg_attribute, so the message's columns are: every
    attribute live now up to the message's highest attnum, plus some attributes dropped since
    (docs/pgoutput.md). Each way of choosing them is scored by what the live attributes say
    (the same type +1, another type -2; the same name +1, another name -1); the best choice gives the ids, and
    where equally good choices disagree the id is 0 (not known).
    """
    k = len(columns)
    if k == 0:
        return ()
    now = {a: (name, typ) for a, name, typ, dropped in attributes if not dropped}
    dropped = sorted(a for a, _n, _t, d in attributes if d)
    best_score: int | None = None
    best: list[list[int]] = []
    for top in sorted(a for a, *_rest in attributes):
        required = [a for a in now if a <= top]
        if len(required) > k:
            break
        forced = [] if top in now else [top]
        optional = [a for a in dropped if a < top]
        need = k - len(required) - len(forced)
        if need < 0 or need > len(optional) or math.comb(len(optional), need) > 256:
            continue
        for chosen in itertools.combinations(optional, need):
            attnums = sorted(required + forced + list(chosen))
            score = 0
            for (name, typ), attnum in zip(columns, attnums, strict=True):
                if attnum in now:
                    now_name, now_typ = now[attnum]
                    score += (1 if now_typ == typ else -2) + (1 if now_name == name else -1)
            if best_score is None or score > best_score:
                best_score, best = score, [attnums]
            elif score == best_score:
                best.append(attnums)
    if not best:
        return (0,) * k
    return tuple(ids[0] if all(i == ids[0] for i in ids) else 0 for ids in zip(*best,
                                                                                 strict=True))


# --------------------------------------------------------------------------- the decoder


@dataclass
class _RelationState:
    signature: tuple[Any, ...]
    version: int
    plan: TablePlan
    schema: pa.Schema
    namespace: str
    name: str
    column_ids: tuple[int, ...] = ()


class PgoutputEventDecoder:
    """pgoutput CopyData messages → :mod:`cdc_notebook.decode.events`.

    ``catalog`` is an ordinary connection (or a :class:`~cdc_notebook.decode.typespec.TypeCatalog`) used
    to map the types of Relation messages through the spec. ``binary`` says whether the stream
    was started in binary mode (a relation that would need text then raises
    :class:`BinaryModeUnsupported`).
    """

    def __init__(self, catalog: psycopg.Connection[Any] | spec_types.TypeCatalog, *,
                 binary: bool = False, max_rows: int = DEFAULT_MAX_ROWS,
                 max_bytes: int = DEFAULT_MAX_BYTES, spill_bytes: int = DEFAULT_SPILL_BYTES,
                 abort_info: bool = False, owns_connection: bool = False,
                 mode_reason: str = ""):
        self._owned = catalog if owns_connection and not isinstance(
            catalog, spec_types.TypeCatalog) else None
        self.catalog = (catalog if isinstance(catalog, spec_types.TypeCatalog)
                        else spec_types.TypeCatalog.load(catalog))
        self.binary = binary
        self.mode_reason = mode_reason or ("binary" if binary else "text")
        self.relations: dict[int, _RelationState] = {}
        self._begin = Begin(0, 0, 0, 0)  # the transaction being converted
        self._relation_failures: set[str] = set()  # why plans could not be built
        self._versions: dict[int, int] = {}  # the last schema version of each relation
        self._by_plan: dict[int, _RelationState] = {}  # id(TablePlan) -> its relation state
        # the column history (None: not looked for yet) and how each schema's ids were found
        self._history: bool | None = None
        self.identity_counts = {"exact": 0, "derived": 0}
        self._native = _NativeDecoder(self._on_relation, max_rows=max_rows, max_bytes=max_bytes,
                                      spill_bytes=spill_bytes, abort_info=abort_info)

    # ---- relations

    def _on_relation(self, relid: int, namespace: str, name: str, identity: str,
                     columns: tuple[tuple[str, int, int, int], ...], lsn: int = 0
                     ) -> tuple[TablePlan | None, Any]:
        """The plan and RelationSchema event of a Relation message; ``(None, why)`` when no
        plan can be built (a type the catalog no longer has): the relation's changes then
        become :class:`DecodeFailed` events until its next Relation message."""
        namespace = namespace or "pg_catalog"
        signature = (namespace, name, identity, columns)
        state = self.relations.get(relid)
        if state is not None and state.signature == signature:
            # the same names and types: the same columns, unless the history says otherwise
            # ("drop b, add b" sends what it sent before)
            if not self._history:
                return state.plan, None
            ids = self._column_ids(relid, [(c, t) for c, _f, t, _m in columns], lsn)
            if ids == state.column_ids or not all(ids):
                return state.plan, None
        mapped = []
        for col, _f, typoid, typmod in columns:
            try:
                mapped.append((col, self.catalog.map_type(typoid, typmod)))
            except TypeMappingError as exc:
                self.relations.pop(relid, None)
                why = f"column {col!r} (type OID {typoid}): {exc.message}"
                self._relation_failures.add(why)
                return None, why
        if self.binary:
            text_only = [f"{col} ({m.metadata.get('pg.type', '?')})" for col, m in mapped
                         if not _binary_capable(m)]
            if text_only:
                raise BinaryModeUnsupported(
                    f"{namespace}.{name} has columns the kit reads only as text in a binary "
                    f"stream: {', '.join(text_only)}",
                    hint="restart the stream with binary=false (PgoutputStream does this itself)")
        plan = make_plan(mapped)
        version = self._versions[relid] = self._versions.get(relid, 0) + 1
        schema = plan.schema
        state = _RelationState(signature, version, plan, schema, namespace, name)
        self.relations[relid] = state
        # Batches name the plan they were built with: a batch decoded before a schema change
        # keeps its schema however late it is converted (a relation message may come later in
        # the same transaction or the same read).
        self._by_plan[id(plan)] = state
        keys = tuple(col for col, flags, _t, _m in columns if flags & 1)
        ids = self._column_ids(relid, [(col, typoid) for col, _f, typoid, _m in columns], lsn)
        state.column_ids = ids
        event = RelationSchema(relid, version, namespace, name, identity, keys, schema, ids)
        return plan, event

    def _column_ids(self, relid: int, columns: list[tuple[str, int]],
                    lsn: int = 0) -> tuple[int, ...]:
        """The attnums of a Relation message's columns (pgoutput does not send them): from
        the column history when set-up installed it (exact: the table's columns at the
        change's LSN, :mod:`cdc_notebook.provision.column_history`), else derived from
        pg_attribute as it is now (:func:`derive_column_ids`)."""
        conn = getattr(self.catalog, "_conn", None)
        if conn is None:
            return (0,) * len(columns)
        if self._history is not False:
            try:
                if self._history is None:
                    self._history = column_history.state(conn) == "installed"
                if self._history:
                    exact = column_history.column_ids(conn, relid, lsn, columns)
                    if exact is not None:
                        self.identity_counts["exact"] += 1
                        return exact
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable,
                    psycopg.errors.InvalidSchemaName) as exc:
                # no right to read it, or dropped meanwhile: derived, as without it (a lost
                # connection is not caught here: the stream reconnects with a new decoder)
                log.warning("pgoutput: the column history could not be read (%s); column "
                            "identity is derived", exc.diag.message_primary or exc)
                self._history = False
        self.identity_counts["derived"] += 1
        attributes = conn.execute(_ATTRIBUTES, (relid,)).fetchall()
        return derive_column_ids(columns, [(int(a), n, int(t), bool(d))
                                           for a, n, t, d in attributes])

    # ---- messages

    def _convert(self, raw: list[tuple[Any, ...]]) -> Iterator[Event | Keepalive]:
        for item in raw:
            tag = item[0]
            if tag == "batch":
                state = self._by_plan[id(item[5])]
                yield ChangeBatch(item[1], state.version, state.namespace, state.name, item[2],
                                  import_batch(state.schema, item[3]))
            elif tag == "begin":
                self._begin = Begin(item[1], item[2], item[3], item[4])
                yield self._begin
            elif tag == "commit":
                yield Commit(item[1], item[2], item[3], item[4])
            elif tag == "relation":
                yield item[2]
            elif tag == "truncate":
                # the names in force at the TRUNCATE (a later Relation message may rename)
                relids = tuple(int(r) for r in item[3])
                names = tuple(f"{label[0]}.{label[1]}" if label else str(relid)
                              for relid, label in zip(relids, item[5], strict=True))
                b = self._begin
                yield Truncate(item[1], item[2], names, relids, bool(item[4] & 1),
                               bool(item[4] & 2), item[6], b.commit_lsn, b.end_lsn, b.commit_ts)
            elif tag == "error":
                _tag, relid, lsn, xid, message, label = item
                if self.binary and message not in self._relation_failures:
                    # binary values the kit could not read: the stream starts again in text
                    raise BinaryModeUnsupported(
                        f"a change of {label[0]}.{label[1]} could not be decoded from binary: "
                        f"{message}", hint="restart the stream in text mode (CDCStream does "
                        "this itself)")
                yield DecodeFailed(relid, label[0], label[1], xid, lsn, message,
                                   self._failure_hint(message), self._begin.end_lsn)
            elif tag == "message":
                yield LogicalMessage(item[1], item[2], item[3], item[4], item[5])
            elif tag == "keepalive":
                yield Keepalive(item[1], item[2])
            else:
                raise PgoutputError(f"unknown native event {tag!r}")

    @staticmethod
    def _failure_hint(message: str) -> str:
        repair = ("the table's changes from this one to the end of its transaction are not in "
                  "its reader: rebuild what was built from them from a snapshot of the table")
        if "is not in pg_type" in message:
            return ("the column's type was dropped before the stream read this change (the "
                    "pgoutput decoder maps types with the catalog as it is now; wal2arrow "
                    "decodes in the server with the catalog of the change's time): " + repair)
        return (repair + "; if PostgreSQL accepts the value, report its type to the kit's "
                "maintainers")

    def feed(self, messages: Sequence[Any]) -> Iterator[Event | Keepalive]:
        """Decode CopyData messages (XLogData 'w' with its 25-byte header, keepalives 'k').

        A generator: a committed streamed transaction is replayed one batch at a time as the
        caller iterates, so a huge transaction never sits in memory as Arrow.
        """
        start = 0
        while start < len(messages):
            raw, start = self._native.feed(messages, start)
            yield from self._convert(raw)
            while True:
                step = self._native.replay_step()
                if step is None:
                    break
                yield from self._convert(step)

    def decode(self, payload: Any) -> list[Event]:
        """One XLogData payload (the pgoutput message after the 25-byte header), for readers
        that hand messages one at a time. The header's change LSN is recovered when the payload
        is a view into the received message; otherwise ``_cdc_lsn`` is 0."""
        base = getattr(payload, "obj", None)
        if isinstance(base, (bytes, bytearray)) and len(base) == len(payload) + 25 \
                and base[:1] == b"w":
            message: Any = base
        else:
            message = b"w" + bytes(24) + bytes(payload)
        return [e for e in self.feed([message]) if not isinstance(e, Keepalive)]

    def close(self) -> None:
        """Close the catalog connection the decoder opened for itself (the Decoder protocol)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def reset(self) -> None:
        """Forget partial transactions (after a reconnect, the server starts at a boundary)."""
        self._native.reset()

    @property
    def in_transaction(self) -> bool:
        return bool(self._native.in_transaction)

    @property
    def streamed_xids(self) -> list[int]:
        return list(self._native.streamed_xids)

    @property
    def stats(self) -> dict[str, int]:
        n = self._native
        return {"messages": n.messages, "rows": n.rows, "spilled_bytes": n.spilled_bytes,
                "buffered_bytes": n.buffered_bytes}


def make_stream_decoder(publication: str | None, conninfo: Mapping[str, Any] | str | None = None,
                        *, catalog: psycopg.Connection[Any] | None = None,
                        binary: bool | None = None) -> tuple[PgoutputEventDecoder, dict[str, str]]:
    """A decoder and its START_REPLICATION options, for a reader's replication loop.

    The decoder needs an ordinary connection for type lookups (``catalog``, or one opened from
    ``conninfo`` with the kit's session settings).
    """
    if not publication:
        raise PgoutputError("pgoutput streams need a publication",
                            hint="pass the publication the slot's tables are in")
    owned = catalog is None
    if catalog is None:
        if conninfo is None:
            raise PgoutputError("the pgoutput decoder needs a catalog connection for type lookups",
                                hint="pass conninfo= or catalog= to make_stream_decoder")
        catalog = connect_session(conninfo, autocommit=True)
    try:
        version = protocol_version_for(catalog.info.server_version)
        choice = (choose_mode(catalog, [publication]) if binary is None
                  else ModeChoice(binary, "binary, as asked" if binary else "text, as asked"))
        options = start_options([publication], protocol_version=version, binary=choice.binary)
        decoder = PgoutputEventDecoder(catalog, binary=choice.binary, owns_connection=owned,
                                       mode_reason=choice.reason)
    except BaseException:
        if owned:
            catalog.close()
        raise
    return decoder, options


__all__ = ["Keepalive", "ModeChoice", "PgoutputEventDecoder", "choose_mode",
           "make_stream_decoder", "protocol_version_for", "start_options"]
