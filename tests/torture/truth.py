"""The truth: the same WAL decoded by PostgreSQL's own ``test_decoding`` on a second slot.

``test_decoding`` prints every change with the table's name and columns *as of that change*
(the historic catalog snapshot), e.g.::

    BEGIN 755
    table s.tt_a: INSERT: id[integer]:1 "Col A"[text]:'it''s' n[numeric]:12.50 b[boolean]:null
    table s.tt_a: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:3 ...
    table s.tt_a: DELETE: id[integer]:3
    table s.tt_a, s.tt_b: TRUNCATE: (no-flags)
    message: transactional: 1 prefix: cdc_notebook.watermark, sz: 30 content:low ...
    COMMIT 755

(names through ``quote_identifier``, the type without its modifier, values through the type's
output function: numbers, booleans and ``null`` bare, everything else quoted with ``''``; old
tuples leave out their nulls). :func:`parse` turns that into :class:`TruthChange` lists per
transaction; :func:`tag` gives each change its table's identity (oid) and the workload statement
that made it, from the executor's record (:mod:`tests.torture.workload`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .workload import ExecutedUnit, HarnessError

TRUTH_OPTIONS = ("include-xids", "1", "skip-empty-xacts", "1")
UNCHANGED_TOAST = "<unchanged-toast-datum>"


# ------------------------------------------------------------------------------------- values


def canonical_decimal(d: Decimal) -> str:
    """A decimal's value as text, whatever its scale: 12.50, 12.5 and 12.5000 are all 12.5."""
    if d.is_nan():
        return "NaN"
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def normalize_truth(pgtype: str, text: str | None) -> str | None:
    """A value as test_decoding printed it (unquoted already) → the text compared."""
    if text is None or text == UNCHANGED_TOAST:
        return text
    if pgtype == "numeric":
        try:
            return canonical_decimal(Decimal(text))
        except InvalidOperation:
            return text
    return text


def normalize_value(value: Any) -> str | None:
    """A Python value from an Arrow batch or a Polars frame → the text compared."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


# ------------------------------------------------------------------------------------- parsing

Column = tuple[str, str, "str | None"]  # name, type, normalized value


@dataclass
class TruthChange:
    op: str  # c, u, d, t
    tables: tuple[str, ...]  # as printed: quoted "schema.name"
    cols: tuple[Column, ...] = ()  # new tuple (insert, update)
    old: tuple[Column, ...] | None = None  # old key / old row (update, delete), nulls left out
    flags: str = ""  # TRUNCATE's
    xid: int = 0
    lsn: str = ""
    seq: int = 0  # position in the whole truth, in commit order
    stmt: int = -1  # the workload statement that made it (set by tag())
    oids: tuple[int, ...] = ()  # the tables' identities (set by tag())
    raw: str = ""


@dataclass
class TruthTxn:
    xid: int
    changes: list[TruthChange] = field(default_factory=list)
    messages: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, prefix, content)


class _Scanner:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def done(self) -> bool:
        return self.i >= len(self.s)

    def peek(self, literal: str) -> bool:
        return self.s.startswith(literal, self.i)

    def expect(self, literal: str) -> None:
        if not self.peek(literal):
            raise ValueError(f"expected {literal!r} at {self.i} in {self.s!r}")
        self.i += len(literal)

    def ident(self) -> str:
        s, i = self.s, self.i
        if s.startswith('"', i):
            out = []
            i += 1
            while True:
                j = s.index('"', i)
                out.append(s[i:j])
                if s.startswith('""', j):
                    out.append('"')
                    i = j + 2
                else:
                    self.i = j + 1
                    return "".join(out)
        j = i
        while j < len(s) and (s[j].isalnum() or s[j] in "_$"):
            j += 1
        if j == i:
            raise ValueError(f"identifier expected at {i} in {s!r}")
        self.i = j
        return s[i:j]

    def bracketed(self) -> str:
        self.expect("[")
        depth, start = 1, self.i
        while depth:
            c = self.s[self.i]
            depth += (c == "[") - (c == "]")
            self.i += 1
        return self.s[start:self.i - 1]

    def value(self) -> str | None:
        s, i = self.s, self.i
        if s.startswith("'", i):
            out = []
            i += 1
            while True:
                j = s.index("'", i)
                out.append(s[i:j])
                if s.startswith("''", j):
                    out.append("'")
                    i = j + 2
                else:
                    self.i = j + 1
                    return "".join(out)
        j = s.find(" ", i)
        j = len(s) if j < 0 else j
        self.i = j
        text = s[i:j]
        if text == "null":
            return None
        if text == "unchanged-toast-datum":
            return UNCHANGED_TOAST
        return text

    def tuple_(self) -> tuple[Column, ...]:
        cols = []
        while not self.done() and not self.peek("new-tuple:"):
            name = self.ident()
            pgtype = self.bracketed()
            self.expect(":")
            cols.append((name, pgtype, normalize_truth(pgtype, self.value())))
            if not self.done():
                self.expect(" ")
        return tuple(cols)


def parse_change(data: str) -> TruthChange:
    sc = _Scanner(data)
    sc.expect("table ")
    tables = []
    while True:
        start = sc.i  # kept as printed (quote_identifier), as the catalog map has it
        sc.ident()
        sc.expect(".")
        sc.ident()
        tables.append(sc.s[start:sc.i])
        if sc.peek(", "):
            sc.expect(", ")
            continue
        sc.expect(": ")
        break
    rest = sc.s[sc.i:]
    op, _, body = rest.partition(": ")
    if op == "TRUNCATE":
        return TruthChange("t", tuple(tables), flags=body, raw=data)
    sc = _Scanner(body)
    if body == "(no-tuple-data)":
        raise HarnessError(f"a change without its tuple: {data}")
    if op == "INSERT":
        return TruthChange("c", tuple(tables), cols=sc.tuple_(), raw=data)
    if op == "DELETE":
        return TruthChange("d", tuple(tables), old=sc.tuple_(), raw=data)
    if op == "UPDATE":
        old = None
        if sc.peek("old-key: "):
            sc.expect("old-key: ")
            old = sc.tuple_()
            sc.expect("new-tuple: ")
        return TruthChange("u", tuple(tables), cols=sc.tuple_(), old=old, raw=data)
    raise HarnessError(f"unknown change in the truth: {data}")


def _quote(name: str) -> str:
    """quote_identifier's rule for a schema name (keywords aside: the harness's schemas are
    not keywords)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def parse(rows: list[tuple[str, Any, str]], schemas: list[str]) -> list[TruthTxn]:
    """Rows of ``pg_logical_slot_get_changes`` → transactions in commit order, keeping only
    changes to tables of ``schemas`` (and every logical message)."""
    prefixes = tuple(f"table {_quote(s)}." for s in schemas)
    txns: list[TruthTxn] = []
    current: TruthTxn | None = None
    seq = 0
    for lsn, xid, data in rows:
        if data.startswith("BEGIN"):
            current = TruthTxn(int(xid))
        elif data.startswith("COMMIT"):
            if current is not None and (current.changes or current.messages):
                txns.append(current)
            current = None
        elif data.startswith("message: "):
            # message: transactional: 1 prefix: p, sz: 5 content:hello
            head, _, content = data.partition(" content:")
            prefix = head.split(" prefix: ", 1)[1].rsplit(", sz: ", 1)[0]
            target = current if current is not None else TruthTxn(int(xid or 0))
            target.messages.append((seq, prefix, content))
            seq += 1
            if current is None:
                txns.append(target)
        elif data.startswith(prefixes):
            change = parse_change(data)
            change.xid, change.lsn, change.seq = int(xid), str(lsn), seq
            seq += 1
            assert current is not None, data
            current.changes.append(change)
    return txns


# ------------------------------------------------------------------------------------- tagging

_OPS = {"insert": "c", "final_insert": "c", "update": "u", "update_key": "u", "delete": "d", "truncate": "t"}


def tag(units: list[ExecutedUnit], txns: list[TruthTxn]) -> list[TruthChange]:
    """Give every truth change its statement and its tables' oids; check that the truth holds
    exactly the changes the workload made (else the harness, not the product, is wrong)."""
    by_xid = {u.xid: u for u in units if u.xid is not None}
    seen: set[int] = set()
    out: list[TruthChange] = []
    for txn in txns:
        if not txn.changes:
            continue
        unit = by_xid.get(txn.xid)
        if unit is None:
            raise HarnessError(f"the truth has changes of transaction {txn.xid}, which the "
                               f"workload did not run: {txn.changes[0].raw}")
        seen.add(txn.xid)
        changes = iter(txn.changes)
        for executed in unit.stmts:
            for _ in range(executed.changes):
                change = next(changes, None)
                if change is None:
                    raise HarnessError(f"statement #{executed.stmt.index} should have made "
                                       f"{executed.changes} changes; the truth of transaction "
                                       f"{txn.xid} ends early: {executed.stmt.sql}")
                want = _OPS.get(executed.stmt.kind)
                if want is not None and change.op != want:
                    raise HarnessError(f"statement #{executed.stmt.index} ({executed.stmt.kind}) "
                                       f"decoded as {change.raw}")
                try:
                    change.oids = tuple(executed.names[t] for t in change.tables)
                except KeyError as exc:
                    raise HarnessError(f"statement #{executed.stmt.index}: the truth names a "
                                       f"table the catalog did not have then ({exc}): "
                                       f"{change.raw}") from None
                change.stmt = executed.stmt.index
                out.append(change)
        extra = next(changes, None)
        if extra is not None:
            raise HarnessError(f"transaction {txn.xid} has more changes in the truth than its "
                               f"statements made: {extra.raw}")
    for unit in units:
        if unit.xid is not None and unit.xid not in seen and sum(e.changes for e in unit.stmts):
            first = next(e for e in unit.stmts if e.changes)
            raise HarnessError(f"transaction {unit.xid} (statement #{first.stmt.index}: "
                               f"{first.stmt.sql}) made changes the truth does not have")
    return out


def watermarks(txns: list[TruthTxn], prefix: str = "cdc_notebook.watermark"
               ) -> list[tuple[int, str]]:
    """(seq, content) of the kit's join watermarks, in commit order."""
    return [(seq, content) for txn in txns for seq, p, content in txn.messages if p == prefix]
