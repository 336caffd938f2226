"""The kit's side: what its readers delivered, compared with the truth; its mirror with SELECT.

:class:`TapStream` stands between a ``CDCStream`` and the ``LiveReader`` that consumes it and
records every event each reader yields (``events()``, the iteration ``LiveReader`` uses), so the
change-by-change comparison and the mirror check see the same delivery. A reader is tied to its
table's identity (oid) when it is first seen: from the reader itself (``relid`` / ``oid``) when
it says, else from the stream's table list.

Comparison, per table identity and per reader: the truth's changes of that table (commit order,
statement order inside a transaction) against the reader's change rows (and TRUNCATE events),
diffed with :mod:`difflib` so that one lost change is one finding, not a cascade. A change is
``(op, [(column, value)...], before)``; values compare as text (numbers as printed, decimals by
value whatever their scale, text unquoted, NULL as None); the Arrow type of each column is
checked against the type the truth printed for that change. A table that joined the stream
after it started (created later) owes only a suffix of its changes: at least every change after
the join's low watermark.
"""

from __future__ import annotations

import difflib
import threading
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa

from cdc_notebook.decode.events import METADATA_COLUMNS

from .truth import UNCHANGED_TOAST, TruthChange, canonical_decimal, normalize_value
from .workload import qi

# ------------------------------------------------------------------------------------- capture


@dataclass
class Delivered:
    """Everything one reader yielded."""

    name: str  # its key in stream.readers when first seen
    reader: Any
    oid: int | None
    events: list[Any] = field(default_factory=list)


def reader_oid(stream: Any, name: str, reader: Any) -> int | None:
    for attr in ("relid", "oid", "table_oid"):
        value = getattr(reader, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    for info in reversed(list(getattr(stream, "tables", []) or [])):
        if getattr(info, "qualified_name", None) == name:
            return int(info.oid)
    oid = (getattr(stream, "_oids", None) or {}).get(name)
    return None if oid is None else int(oid)


class TapReader:
    def __init__(self, reader: Any, record: Delivered):
        self._reader = reader
        self._record = record

    def _tap(self, it: Any) -> Any:
        for event in it:
            self._record.events.append(event)
            yield event

    def events(self, *args: Any, **kwargs: Any) -> Any:
        return self._tap(self._reader.events(*args, **kwargs))

    def batches(self, *args: Any, **kwargs: Any) -> Any:
        return self._tap(self._reader.batches(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class TapStream:
    """A CDCStream as LiveReader sees it, with every reader's deliveries recorded."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._lock = threading.Lock()
        self.delivered: dict[int, Delivered] = {}
        self._proxies: dict[int, TapReader] = {}

    @property
    def readers(self) -> dict[str, TapReader]:
        out = {}
        for name, reader in list(self._stream.readers.items()):
            with self._lock:
                proxy = self._proxies.get(id(reader))
                if proxy is None:
                    record = Delivered(name, reader, reader_oid(self._stream, name, reader))
                    self.delivered[id(reader)] = record
                    proxy = self._proxies[id(reader)] = TapReader(reader, record)
            out[name] = proxy
        return out

    def hidden(self, reader: Any, relid: int) -> TapReader:
        """A reader the stream no longer lists, recorded like the others."""
        with self._lock:
            record = Delivered(f"{getattr(reader, 'name', relid)} (unlisted)", reader, relid)
            self.delivered[id(reader)] = record
            proxy = self._proxies[id(reader)] = TapReader(reader, record)
        return proxy

    def event_count(self) -> int:
        return sum(len(d.events) for d in list(self.delivered.values()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# ------------------------------------------------------------------------------------- changes

Pairs = tuple[tuple[str, "str | None"], ...]


@dataclass
class KitChange:
    op: str
    cols: Pairs = ()
    before: Pairs | None = None
    types: tuple[tuple[str, str], ...] = ()
    end_lsn: int = 0
    ordinal: int = 0

    def key(self) -> tuple[Any, ...]:
        return change_key(self.op, self.cols, self.before)

    def describe(self) -> str:
        return describe(self.op, self.cols, self.before) + \
            (f"  (end_lsn {self.end_lsn:X}, ordinal {self.ordinal})" if self.end_lsn else "")


def change_key(op: str, cols: Pairs, before: Pairs | None) -> tuple[Any, ...]:
    if op == "c":
        return ("c", cols)
    if op == "u":
        return ("u", cols, before)
    if op == "d":
        return ("d", before)
    return (op,)


def truth_key(c: TruthChange) -> tuple[Any, ...]:
    return change_key(c.op, truth_pairs(c.cols), None if c.old is None else truth_pairs(c.old))


def truth_pairs(cols: Any) -> Pairs:
    return tuple((n, v) for n, _t, v in cols)


def _fmt(v: str | None) -> str:
    return "NULL" if v is None else repr(v)


def describe(op: str, cols: Pairs, before: Pairs | None) -> str:
    name = {"c": "INSERT", "u": "UPDATE", "d": "DELETE", "t": "TRUNCATE"}.get(op, op)
    parts = [name]
    if before is not None:
        parts.append("before(" + ", ".join(f"{n}={_fmt(v)}" for n, v in before) + ")")
    if op in ("c", "u"):
        parts.append("(" + ", ".join(f"{n}={_fmt(v)}" for n, v in cols) + ")")
    return " ".join(parts)


def kit_changes(events: list[Any]) -> tuple[list[KitChange], int, Counter[str]]:
    """A reader's change rows and TRUNCATE events, in delivery order; the number of snapshot
    rows; the other events by type."""
    out: list[KitChange] = []
    snapshot_rows = 0
    others: Counter[str] = Counter()
    meta = set(METADATA_COLUMNS)
    for event in events:
        if isinstance(event, pa.RecordBatch):
            names = [n for n in event.schema.names if n not in meta]
            types = tuple((f.name, str(f.type)) for f in event.schema if f.name not in meta)
            for row in event.to_pylist():
                op = row.get("_cdc_op")
                if op == "r":
                    snapshot_rows += 1
                    continue
                if op in ("t", "T"):
                    out.append(KitChange("t", end_lsn=row.get("_cdc_end_lsn") or 0))
                    continue
                unrep = dict(row.get("_cdc_unrepresentable") or [])
                toast = set(row.get("_cdc_unchanged_toast") or [])
                cols = tuple((n, UNCHANGED_TOAST if n in toast else
                              unrep.get(n, normalize_value(row[n]))) for n in names)
                raw_before = row.get("_cdc_before")
                before = None
                if raw_before is not None:
                    before = tuple((n, unrep.get(f"_cdc_before.{n}", normalize_value(v)))
                                   for n, v in raw_before.items()
                                   if v is not None or f"_cdc_before.{n}" in unrep)
                out.append(KitChange(op, cols if op != "d" else (), before, types,
                                     row.get("_cdc_end_lsn") or 0, row.get("_cdc_ordinal") or 0))
        elif type(event).__name__ == "Truncate":
            out.append(KitChange("t", end_lsn=getattr(event, "lsn", 0) or 0))
        else:
            others[type(event).__name__] += 1
    return out, snapshot_rows, others


_ARROW_TYPES = {"integer": ("int32",), "bigint": ("int64",), "smallint": ("int16",),
                "boolean": ("bool",), "text": ("string", "large_string"),
                "character varying": ("string", "large_string")}


def type_mismatches(truth: TruthChange, kit: KitChange) -> list[str]:
    """Columns whose Arrow type is not the one for the type the truth printed then."""
    kit_types = dict(kit.types)
    bad = []
    for name, pgtype, _v in truth.cols or truth.old or ():
        arrow = kit_types.get(name)
        if arrow is None:
            continue
        if pgtype == "numeric":
            ok = arrow.startswith("decimal") or arrow in ("string", "large_string")
        else:
            ok = arrow in _ARROW_TYPES.get(pgtype, (arrow,))
        if not ok:
            bad.append(f"{name}: {arrow} for {pgtype}")
    return bad


# ------------------------------------------------------------------------------------- findings


@dataclass
class Mismatch:
    kind: str  # missing, extra, value, columns, type, reader, mirror, error, plugins differ
    consumer: str
    table: str  # the table's names over the run, and its oid
    detail: str
    stmt: int = -1  # the statement that made the truth change
    seq: int = -1

    def format(self, sql_of: dict[int, str] | None = None) -> str:
        where = f" #{self.stmt}" if self.stmt >= 0 else ""
        text = f"[{self.consumer}] {self.kind}{where} {self.table}: {self.detail}"
        if sql_of and self.stmt in sql_of:
            sql = sql_of[self.stmt].replace("\n", "\\n")
            text += f"\n        statement #{self.stmt}: {sql[:300]}{'…' if len(sql) > 300 else ''}"
        return text


@dataclass
class Comparison:
    truth: int = 0  # truth changes owed to this consumer
    delivered: int = 0  # change rows and truncates it delivered
    equal: int = 0
    snapshot_rows: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


def compare_table(consumer: str, label: str, truth: list[TruthChange], kit: list[KitChange],
                  *, late: bool, must_from: int, result: Comparison) -> None:
    """One reader's changes against its table's truth (see the module docstring)."""
    tkeys = [truth_key(c) for c in truth]
    kkeys = [k.key() for k in kit]
    start = 0
    if late:
        start = len(tkeys) - len(kkeys)
        if not (0 <= start <= must_from and tkeys[start:] == kkeys):
            first = kkeys[0] if kkeys else None
            start = next((i for i in range(min(must_from + 1, len(tkeys)))
                          if tkeys[i] == first), min(must_from, len(tkeys)))
    owed = truth[start:]
    result.truth += len(owed)
    result.delivered += len(kit)
    matcher = difflib.SequenceMatcher(None, tkeys[start:], kkeys, autojunk=False)
    add = result.mismatches.append
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            result.equal += i2 - i1
            for t, k in zip(owed[i1:i2], kit[j1:j2], strict=True):
                bad = type_mismatches(t, k)
                if bad:
                    add(Mismatch("type", consumer, label, "; ".join(bad) + f" in {k.describe()}",
                                 t.stmt, t.seq))
            continue
        # Inside a differing block, changes of the same operation pair up (a value or a column
        # name differs); the others were lost or added.
        block_t, block_k = owed[i1:i2], kit[j1:j2]
        inner = difflib.SequenceMatcher(None, [t.op for t in block_t], [k.op for k in block_k],
                                        autojunk=False)
        for tag2, a1, a2, b1, b2 in inner.get_opcodes():
            pairs = a2 - a1 if tag2 == "equal" else 0
            for t, k in zip(block_t[a1:a1 + pairs], block_k[b1:b1 + pairs], strict=True):
                names_t = [n for n, _ in truth_pairs(t.cols)]
                kind = "columns" if names_t != [n for n, _ in k.cols] else "value"
                add(Mismatch(kind, consumer, label,
                             f"expected {describe(t.op, truth_pairs(t.cols), _old(t))}\n"
                             f"        got      {k.describe()}", t.stmt, t.seq))
            for t in block_t[a1 + pairs:a2]:
                add(Mismatch("missing", consumer, label,
                             f"expected {describe(t.op, truth_pairs(t.cols), _old(t))}, "
                             "not delivered", t.stmt, t.seq))
            for k in block_k[b1 + pairs:b2]:
                near = (block_t[a1] if a1 < len(block_t) else
                        (owed[i1 + a1] if i1 + a1 < len(owed) else (owed[-1] if owed else None)))
                add(Mismatch("extra", consumer, label, f"delivered {k.describe()}, which the "
                             "table never had there",
                             near.stmt if near is not None else -1,
                             near.seq if near is not None else -1))


def _old(t: TruthChange) -> Pairs | None:
    return None if t.old is None else truth_pairs(t.old)


# ------------------------------------------------------------------------------------- mirror


def table_state(conn: Any, qname: str, oid: int) -> tuple[list[str], list[str], dict[Any, Any]]:
    """The table as SELECT sees it: columns (attnum order), key columns, rows by key."""
    cols = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,)).fetchall()
    keys = [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (oid,)).fetchall()]
    names = [c for c, _ in cols]
    select = ", ".join(f"{qi(c)}::text" for c in names)
    rows = {}
    for values in conn.execute(f"SELECT {select} FROM {qname}").fetchall():
        row = {}
        for (name, typname), v in zip(cols, values, strict=True):
            if v is not None and typname == "numeric":
                v = canonical_decimal(Decimal(v))
            row[name] = v
        rows[tuple(row[k] for k in keys)] = row
    return names, keys, rows


def compare_mirror(consumer: str, label: str, frame: Any, names: list[str], keys: list[str],
                   rows: dict[Any, Any], result: Comparison, limit: int = 3) -> None:
    add = result.mismatches.append
    got_names = list(frame.columns)
    if got_names != names:
        add(Mismatch("mirror", consumer, label,
                     f"columns {got_names}, the table has {names}"))
    if not all(k in got_names for k in keys):
        add(Mismatch("mirror", consumer, label, f"the key {keys} is not among the mirror's "
                     f"columns {got_names}: rows not compared"))
        return
    common = [n for n in names if n in got_names]
    got: dict[Any, Any] = {}
    twice: Counter[Any] = Counter()
    for values in frame.rows():
        row = {n: normalize_value(v) for n, v in zip(got_names, values, strict=True)}
        key = tuple(row[k] for k in keys)
        if key in got:
            twice[key] += 1
        got[key] = row
    if twice:
        add(Mismatch("mirror", consumer, label, f"{sum(twice.values())} rows repeat a key, e.g. "
                     + ", ".join(f"{k} ({n + 1} rows)" for k, n in list(twice.items())[:limit])))
    missing = [k for k in rows if k not in got]
    extra = [k for k in got if k not in rows]
    differ = [k for k in rows if k in got and
              any(rows[k][n] != got[k][n] for n in common)]
    if missing:
        add(Mismatch("mirror", consumer, label, f"{len(missing)} of {len(rows)} rows missing, "
                     f"e.g. " + "; ".join(_row(rows[k], common) for k in missing[:limit])))
    if extra:
        add(Mismatch("mirror", consumer, label, f"{len(extra)} rows the table does not have, "
                     f"e.g. " + "; ".join(_row(got[k], common) for k in extra[:limit])))
    if differ:
        examples = []
        for k in differ[:limit]:
            cols = [n for n in common if rows[k][n] != got[k][n]]
            examples.append(f"key {k}: " + ", ".join(
                f"{n} expected {_fmt(rows[k][n])} got {_fmt(got[k][n])}" for n in cols))
        add(Mismatch("mirror", consumer, label,
                     f"{len(differ)} of {len(rows)} rows differ, e.g. " + "; ".join(examples)))


def _row(row: dict[str, Any], cols: list[str]) -> str:
    return "(" + ", ".join(f"{n}={_fmt(row.get(n))}" for n in cols) + ")"
