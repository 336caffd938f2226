"""The DDL torture workload: a seeded random generator of SQL and the executor that runs it.

The generator keeps a model of the tables (names, columns with their types and key flags, the
keys present) so that every statement it writes is valid and its row count is known in advance;
it never looks at the server, so a seed always gives the same SQL (``--dump-sql``). Statements
come in *units*: one statement on its own (run in a transaction of its own), or an explicit
transaction of several statements, DDL among them, with savepoints rolled back and whole
transactions rolled back now and then.

The executor runs the units on one connection and records, for every statement, how many
changes the server's decoder must show for it (the row count; 1 for a TRUNCATE; 0 inside a
rolled-back transaction or savepoint), the transaction id of its unit, and the tables'
``schema.name → oid`` map in force when it ran. That is all the truth decoder needs to give each
decoded change its table's identity (:mod:`tests.torture.truth`).
"""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# ------------------------------------------------------------------------------------- quoting


def qi(name: str) -> str:
    """An identifier, always double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def ql(text: str) -> str:
    """A string literal (standard_conforming_strings is on: backslashes are plain)."""
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------------------------- the model

MATCHED_NAMES = tuple(f"tt_{c}" for c in "abcdefgh")  # the pattern's tables (names re-used)
UNMATCHED_NAME = "nm_x"  # written to, never matched by the prefix pattern
COLUMN_NAMES = tuple(f"c{i}" for i in range(1, 13))
ODD_COLUMN_NAMES = ("Mixed", "with space", 'q"uote')
TEXTS = ("", "null", "NULL", "it's", 'say "hi"', "back\\slash", "tab\there", "two\nlines",
         "é ✓ 日本", " lead", "trail ", "1.50", "true", "a:b[c] d", "old-key: x", "new-tuple:",
         "unchanged-toast-datum", "(no-tuple-data)", "'quoted'", "x''y")
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789'\"_-:[]"


@dataclass
class Column:
    name: str
    type: str  # integer, bigint, text, varchar(n), numeric(p,s), boolean
    key: bool = False


@dataclass
class Table:
    name: str
    columns: list[Column]
    matched: bool
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    next_key: int = 1
    full: bool = False  # REPLICA IDENTITY FULL
    initial: bool = False  # created before the stream

    @property
    def key_columns(self) -> list[Column]:
        return [c for c in self.columns if c.key]

    @property
    def value_columns(self) -> list[Column]:
        return [c for c in self.columns if not c.key]


@dataclass
class Stmt:
    sql: str
    kind: str
    expect: int | None = None  # changes the truth decoder must show (None: not known in advance)
    index: int = -1  # the statement's number in the run (what a report cites)


@dataclass
class Unit:
    """One statement in a transaction of its own, or an explicit transaction."""

    stmts: list[Stmt]
    explicit: bool = False
    commit: bool = True


# DML and DDL statement kinds; savepoint handling is not counted as a statement.
DML_KINDS = ("insert", "update", "update_key", "delete", "truncate", "final_insert")
CONTROL_KINDS = ("savepoint", "rollback_to")


def _is_text(t: str) -> bool:
    return t == "text" or t.startswith("varchar")


def _numeric_ps(t: str) -> tuple[int, int]:
    p, s = re.fullmatch(r"numeric\((\d+),(\d+)\)", t).groups()  # type: ignore[union-attr]
    return int(p), int(s)


class Generator:
    """A seeded workload over one schema. ``pattern_kind`` is ``"schema"`` (``schema.*``: every
    table matches) or ``"prefix"`` (``schema.tt_*``, with an unmatched table written to as well).
    """

    def __init__(self, seed: int, schema: str, statements: int, pattern_kind: str | None = None):
        self.seed = seed
        self.rng = random.Random(seed)
        self.schema = schema
        self.target = statements
        self.pattern_kind = pattern_kind or ("schema" if seed % 2 == 0 else "prefix")
        self.tables: dict[str, Table] = {}
        self.used_names: set[str] = set()
        self.kinds: Counter[str] = Counter()
        self.count = 0

    # ---- names

    @property
    def pattern(self) -> str:
        return f"{self.schema}.*" if self.pattern_kind == "schema" else f"{self.schema}.tt_*"

    def rel(self, name: str) -> str:
        return f"{qi(self.schema)}.{qi(name)}"

    # ---- values

    def _text(self, limit: int | None = None) -> str:
        rng = self.rng
        if rng.random() < 0.45:
            s = rng.choice(TEXTS)
        else:
            s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24)))
        return s[:limit] if limit is not None else s

    def value(self, col: Column) -> str:
        """A literal for a non-key column of the column's current type (sometimes NULL)."""
        rng = self.rng
        t = col.type
        if rng.random() < 0.12:
            return "NULL"
        if t == "integer":
            return str(rng.choice([rng.randint(-1000, 1000), rng.randint(-2**31, 2**31 - 1)]))
        if t == "bigint":
            return str(rng.choice([rng.randint(-1000, 1000), rng.randint(-2**63, 2**63 - 1)]))
        if t == "boolean":
            return rng.choice(["true", "false"])
        if t == "text":
            return ql(self._text())
        if t.startswith("varchar"):
            n = int(t[8:-1])
            return ql(self._text(n))
        if t.startswith("numeric"):
            p, s = _numeric_ps(t)
            digits = rng.choice([p, max(1, p // 2), 1])
            n = rng.randint(-(10**digits - 1), 10**digits - 1)
            return f"{Decimal(n).scaleb(-s):f}"
        raise AssertionError(t)

    def key_literal(self, col: Column, value: Any) -> str:
        return ql(str(value)) if _is_text(col.type) else str(value)

    def fresh_key(self, table: Table) -> tuple[Any, ...]:
        n = table.next_key
        table.next_key += 1
        out: list[Any] = []
        for i, col in enumerate(table.key_columns):
            if i > 0:  # the second part of a composite key: a text that repeats
                out.append(f"p{n % 3} '{n % 2}'")
            elif col.type == "bigint":
                out.append(n + 5_000_000_000)
            elif _is_text(col.type):
                out.append(f"k{n} x")
            else:
                out.append(n)
        return tuple(out)

    def where_keys(self, table: Table, keys: list[tuple[Any, ...]]) -> str:
        cols = table.key_columns
        lhs = ", ".join(qi(c.name) for c in cols)
        rows = ", ".join("(" + ", ".join(self.key_literal(c, v) for c, v in zip(cols, key, strict=True)) + ")"
                         for key in keys)
        return f"({lhs}) IN ({rows})"

    # ---- set-up

    def new_table_columns(self) -> list[Column]:
        rng = self.rng
        layout = rng.choice([[("id", "integer")], [("id", "integer")], [("id", "bigint")],
                             [("id", "text")], [("k1", "integer"), ("k2", "text")]])
        cols = [Column(n, t, key=True) for n, t in layout]
        names = list(COLUMN_NAMES)
        rng.shuffle(names)
        for name in names[: rng.randint(1, 4)]:
            cols.append(Column(name, self.random_type()))
        return cols

    def random_type(self) -> str:
        rng = self.rng
        kind = rng.choice(["integer", "bigint", "text", "varchar", "numeric", "numeric",
                           "boolean"])
        if kind == "varchar":
            return f"varchar({rng.choice([5, 12, 40])})"
        if kind == "numeric":
            p = rng.choice([5, 8, 12, 20, 30])
            return f"numeric({p},{rng.choice([0, 2, 3])})"
        return kind

    def create_sql(self, name: str, cols: list[Column]) -> str:
        defs = ", ".join(f"{qi(c.name)} {c.type}" + (" NOT NULL" if c.key else "") for c in cols)
        pk = ", ".join(qi(c.name) for c in cols if c.key)
        return f"CREATE TABLE {self.rel(name)} ({defs}, PRIMARY KEY ({pk}))"

    def setup(self) -> list[str]:
        """The schema and the tables that exist before the stream starts (empty)."""
        out = [f"CREATE SCHEMA {qi(self.schema)}"]
        for name in MATCHED_NAMES[:3]:
            cols = self.new_table_columns()
            self.tables[name] = Table(name, cols, matched=True, initial=True)
            self.used_names.add(name)
            out.append(self.create_sql(name, cols))
        if self.pattern_kind == "prefix":
            cols = self.new_table_columns()
            self.tables[UNMATCHED_NAME] = Table(UNMATCHED_NAME, cols, matched=False)
            out.append(self.create_sql(UNMATCHED_NAME, cols))
        return out

    # ---- statements

    def _stmt(self, sql: str, kind: str, expect: int | None = 0) -> Stmt:
        return Stmt(sql, kind, expect)

    def pick_table(self, *, matched_only: bool = False) -> Table | None:
        names = sorted(n for n, t in self.tables.items() if t.matched or not matched_only)
        if not names:
            return None
        # the unmatched table is written to, but less often
        weights = [1 if self.tables[n].matched else 0.3 for n in names]
        return self.tables[self.rng.choices(names, weights)[0]]

    def insert(self, t: Table, rows: int | None = None) -> Stmt:
        rng = self.rng
        n = rows or rng.choice([1, 1, 1, 2, 3, 5])
        cols = t.key_columns + [c for c in t.value_columns if rng.random() < 0.85]
        rows = []
        for _ in range(n):
            key = self.fresh_key(t)
            t.keys.append(key)
            vals = [self.key_literal(c, v) for c, v in zip(t.key_columns, key, strict=True)]
            vals += [self.value(c) for c in cols[len(t.key_columns):]]
            rows.append("(" + ", ".join(vals) + ")")
        names = ", ".join(qi(c.name) for c in cols)
        return self._stmt(f"INSERT INTO {self.rel(t.name)} ({names}) VALUES {', '.join(rows)}",
                          "insert", n)

    def update(self, t: Table) -> Stmt | None:
        rng = self.rng
        if not t.keys:
            return None
        values = t.value_columns
        if values:
            chosen = rng.sample(values, rng.randint(1, min(2, len(values))))
            sets = ", ".join(f"{qi(c.name)} = {self.value(c)}" for c in chosen)
        else:
            k = t.key_columns[0]
            sets = f"{qi(k.name)} = {qi(k.name)}"  # an update that changes nothing
        if len(t.keys) <= 40 and rng.random() < 0.06:
            return self._stmt(f"UPDATE {self.rel(t.name)} SET {sets}", "update", len(t.keys))
        keys = rng.sample(t.keys, min(len(t.keys), rng.choice([1, 1, 1, 2, 3])))
        return self._stmt(f"UPDATE {self.rel(t.name)} SET {sets} WHERE {self.where_keys(t, keys)}",
                          "update", len(keys))

    def update_key(self, t: Table) -> Stmt | None:
        rng = self.rng
        if not t.keys:
            return None
        old = rng.choice(t.keys)
        new = self.fresh_key(t)
        first = t.key_columns[0]
        new_key = (new[0], *old[1:])
        sets = f"{qi(first.name)} = {self.key_literal(first, new[0])}"
        if t.value_columns and rng.random() < 0.4:
            c = rng.choice(t.value_columns)
            sets += f", {qi(c.name)} = {self.value(c)}"
        t.keys[t.keys.index(old)] = new_key
        return self._stmt(f"UPDATE {self.rel(t.name)} SET {sets} WHERE "
                          f"{self.where_keys(t, [old])}", "update_key", 1)

    def delete(self, t: Table) -> Stmt | None:
        rng = self.rng
        if not t.keys:
            return None
        if len(t.keys) <= 25 and rng.random() < 0.05:
            n = len(t.keys)
            t.keys = []
            return self._stmt(f"DELETE FROM {self.rel(t.name)}", "delete", n)
        keys = rng.sample(t.keys, min(len(t.keys), rng.choice([1, 1, 2, 3])))
        for k in keys:
            t.keys.remove(k)
        return self._stmt(f"DELETE FROM {self.rel(t.name)} WHERE {self.where_keys(t, keys)}",
                          "delete", len(keys))

    def truncate(self, t: Table) -> Stmt:
        others = [o for o in self.tables.values() if o is not t]
        targets = [t]
        if others and self.rng.random() < 0.25:
            targets.append(self.rng.choice(sorted(others, key=lambda o: o.name)))
        for o in targets:
            o.keys = []
        return self._stmt("TRUNCATE " + ", ".join(self.rel(o.name) for o in targets),
                          "truncate", 1)

    def free_column_name(self, t: Table) -> str:
        used = {c.name for c in t.columns}
        pool = COLUMN_NAMES + (ODD_COLUMN_NAMES if self.rng.random() < 0.15 else ())
        free = [n for n in pool if n not in used]
        return self.rng.choice(free)

    def add_column(self, t: Table) -> Stmt | None:
        if len(t.columns) >= 9:
            return None
        col = Column(self.free_column_name(t), self.random_type())
        t.columns.append(col)
        return self._stmt(f"ALTER TABLE {self.rel(t.name)} ADD COLUMN {qi(col.name)} {col.type}",
                          "add_column")

    def drop_column(self, t: Table) -> Stmt | None:
        if not t.value_columns:
            return None
        col = self.rng.choice(t.value_columns)
        t.columns.remove(col)
        return self._stmt(f"ALTER TABLE {self.rel(t.name)} DROP COLUMN {qi(col.name)}",
                          "drop_column")

    def rename_column(self, t: Table) -> Stmt | None:
        col = self.rng.choice(t.columns)  # key columns included
        new = self.free_column_name(t)
        old, col.name = col.name, new
        return self._stmt(f"ALTER TABLE {self.rel(t.name)} RENAME COLUMN {qi(old)} TO {qi(new)}",
                          "rename_column")

    def swap_columns(self, t: Table) -> list[Stmt]:
        """Two columns exchange their names (three renames, no change in between): only the
        columns' identity tells this from two values changing places."""
        if len(t.columns) < 2:
            return []
        a, b = self.rng.sample(t.columns, 2)
        tmp = self.free_column_name(t)
        rel = self.rel(t.name)
        out = [self._stmt(f"ALTER TABLE {rel} RENAME COLUMN {qi(a.name)} TO {qi(tmp)}",
                          "rename_column"),
               self._stmt(f"ALTER TABLE {rel} RENAME COLUMN {qi(b.name)} TO {qi(a.name)}",
                          "rename_column"),
               self._stmt(f"ALTER TABLE {rel} RENAME COLUMN {qi(tmp)} TO {qi(b.name)}",
                          "rename_column")]
        a.name, b.name = b.name, a.name
        return out

    def widenings(self, col: Column) -> list[str]:
        t = col.type
        if t == "integer":
            return ["bigint", "text"] + ([] if col.key else ["numeric(12,0)"])
        if t == "bigint":
            return ["text"] + ([] if col.key else ["numeric(20,0)"])
        if t.startswith("varchar"):
            n = int(t[8:-1])
            return ["text", f"varchar({n * 3})"]
        if t.startswith("numeric"):
            p, s = _numeric_ps(t)
            out = []
            if p + 4 <= 38:
                out += [f"numeric({p + 4},{s})", f"numeric({p + 4},{s + 2})"]
            return out
        if t == "boolean":
            return ["text"]
        return []

    def alter_type(self, t: Table) -> Stmt | None:
        options = [(c, w) for c in t.columns for w in self.widenings(c)]
        if not options:
            return None
        col, new = self.rng.choice(options)
        col.type = new
        return self._stmt(f"ALTER TABLE {self.rel(t.name)} ALTER COLUMN {qi(col.name)} "
                          f"TYPE {new}", "alter_type")

    def free_table_name(self, prefer_used: bool) -> str | None:
        free = [n for n in MATCHED_NAMES if n not in self.tables]
        if not free:
            return None
        reused = [n for n in free if n in self.used_names]
        if prefer_used and reused:
            return self.rng.choice(reused)
        return self.rng.choice(free)

    def rename_table(self, t: Table) -> Stmt | None:
        if not t.matched:
            return None
        new = self.free_table_name(prefer_used=self.rng.random() < 0.5)
        if new is None:
            return None
        del self.tables[t.name]
        old, t.name = t.name, new
        self.tables[new] = t
        self.used_names.add(new)
        return self._stmt(f"ALTER TABLE {self.rel(old)} RENAME TO {qi(new)}", "rename_table")

    def drop_table(self, t: Table) -> Stmt | None:
        if not t.matched or sum(o.matched for o in self.tables.values()) <= 1:
            return None
        if t.initial and self.rng.random() < 0.75:
            return None  # the tables a reader far behind follows from the start live longer
        del self.tables[t.name]
        return self._stmt(f"DROP TABLE {self.rel(t.name)}", "drop_table")

    def create_table(self) -> Stmt | None:
        name = self.free_table_name(prefer_used=self.rng.random() < 0.6)
        if name is None:
            return None
        cols = self.new_table_columns()
        self.tables[name] = Table(name, cols, matched=True)
        self.used_names.add(name)
        return self._stmt(self.create_sql(name, cols), "create_table")

    def replica_identity(self, t: Table) -> Stmt:
        t.full = not t.full
        return self._stmt(f"ALTER TABLE {self.rel(t.name)} REPLICA IDENTITY "
                          f"{'FULL' if t.full else 'DEFAULT'}", "replica_identity")

    # the statement mix: (kind, weight outside transactions, weight inside)
    MIX = (("insert", 30, 26), ("update", 16, 14), ("update_key", 6, 6), ("delete", 9, 8),
           ("truncate", 2, 3), ("add_column", 4, 8), ("drop_column", 3, 6),
           ("rename_column", 4, 7), ("swap_columns", 0.4, 1.5), ("alter_type", 4, 7),
           ("rename_table", 2.5, 4), ("drop_table", 1.2, 2), ("create_table", 2, 3),
           ("replica_identity", 0.8, 1))

    def one(self, in_txn: bool) -> list[Stmt]:
        """One random action (usually one statement) applied to the model."""
        rng = self.rng
        kinds = [k for k, *_ in self.MIX]
        weights = [w[2 if in_txn else 1] for w in self.MIX]
        for _ in range(50):
            kind = rng.choices(kinds, weights)[0]
            if kind == "create_table":
                made = self.create_table()
                if made is not None:
                    return [made]
                continue
            table = self.pick_table(matched_only=kind not in DML_KINDS and kind != "add_column")
            if table is None:
                continue
            if kind == "swap_columns":
                out = self.swap_columns(table)
            else:
                made = getattr(self, kind)(table)
                out = [] if made is None else [made]
            if out:
                return out
        table = self.pick_table()
        assert table is not None, "the generator keeps at least one table"
        return [self.insert(table)]

    def workload(self) -> list[Unit]:
        """Units until ``statements`` statements were written (savepoint control excluded)."""
        rng = self.rng
        units: list[Unit] = []
        while self.count < self.target:
            if rng.random() < 0.22:
                units.append(self.transaction())
            else:
                units.append(Unit(self.one(in_txn=False)))
            for stmt in units[-1].stmts:
                if stmt.kind not in CONTROL_KINDS:
                    stmt.index = self.count
                    self.count += 1
                    self.kinds[stmt.kind] += 1
        # Logical decoding sends a table's schema only with its next change: one last row in
        # every table, so that no schema change is left without a change after it.
        for name in sorted(self.tables):
            units.append(Unit([self.insert(self.tables[name], rows=1)]))
            stmt = units[-1].stmts[0]
            stmt.kind, stmt.index = "final_insert", self.count
            self.count += 1
            self.kinds[stmt.kind] += 1
        self.kinds["transactions"] = sum(u.explicit for u in units)
        self.kinds["rolled_back"] = sum(u.explicit and not u.commit for u in units)
        self.kinds["savepoints_rolled_back"] = sum(
            1 for u in units for s in u.stmts if s.kind == "rollback_to")
        return units

    def transaction(self) -> Unit:
        """BEGIN; several statements, DDL among them, a savepoint sometimes; COMMIT or
        ROLLBACK."""
        rng = self.rng
        saved = self._save()
        stmts: list[Stmt] = []
        n = rng.randint(2, 7)
        savepoint_at = rng.randrange(n) if rng.random() < 0.15 else -1
        for i in range(n):
            if i == savepoint_at:
                inner = self._save()
                stmts.append(Stmt("SAVEPOINT sp", "savepoint"))
                for _ in range(rng.randint(1, 3)):
                    stmts += self.one(in_txn=True)
                if rng.random() < 0.7:
                    stmts.append(Stmt("ROLLBACK TO SAVEPOINT sp", "rollback_to"))
                    self._restore(inner)
            stmts += self.one(in_txn=True)
        commit = rng.random() >= 0.08
        if not commit:
            self._restore(saved)
        return Unit(stmts, explicit=True, commit=commit)

    def _save(self) -> Any:
        return copy.deepcopy((self.tables, self.used_names))

    def _restore(self, saved: Any) -> None:
        tables, used = copy.deepcopy(saved)
        self.tables, self.used_names = tables, used

    def dump(self, setup: list[str], units: list[Unit]) -> str:
        """The run as a SQL script (what ``--script`` replays)."""
        lines = ["-- setup"] + [s + ";" for s in setup] + ["-- workload"]
        for u in units:
            if u.explicit:
                lines.append("BEGIN;")
            for s in u.stmts:
                tag = f"  -- #{s.index}" if s.index >= 0 else ""
                lines.append(s.sql + ";" + tag)
            if u.explicit:
                lines.append("COMMIT;" if u.commit else "ROLLBACK;")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- scripts

_KIND_OF = (("insert", "insert"), ("update", "update"), ("delete", "delete"),
            ("truncate", "truncate"), ("savepoint", "savepoint"),
            ("rollback to", "rollback_to"), ("create table", "create_table"),
            ("drop table", "drop_table"))


def parse_script(text: str, schema: str) -> tuple[list[str], list[Unit]]:
    """A script as ``dump()`` writes it (statements end a line with ``;``, ``-- setup`` and
    ``-- workload`` sections, ``{schema}`` replaced): the setup statements and the units.
    Row counts are not known in advance (``expect`` None): the executor records them."""
    setup: list[str] = []
    units: list[Unit] = []
    section = "workload"
    current: Unit | None = None
    buf: list[str] = []
    index = 0
    for raw in text.replace("{schema}", schema).splitlines():
        line = raw.strip()
        if line.lower() in ("-- setup", "-- workload"):
            section = line[3:].lower()
            continue
        if not line or (line.startswith("--") and not buf):
            continue
        buf.append(raw)
        if not re.search(r";\s*(--.*)?$", line):
            continue
        sql = re.sub(r";\s*(--.*)?$", "", "\n".join(buf).strip())
        buf = []
        low = sql.lower()
        if section == "setup":
            setup.append(sql)
            continue
        if low in ("begin", "start transaction"):
            current = Unit([], explicit=True)
            continue
        if low in ("commit", "end", "rollback"):
            assert current is not None, f"{sql} outside a transaction"
            current.commit = low != "rollback"
            units.append(current)
            current = None
            continue
        kind = next((k for prefix, k in _KIND_OF if low.startswith(prefix)), "ddl")
        if low.startswith("alter table") and " rename to " in low:
            kind = "rename_table"
        stmt = Stmt(sql, kind, None, -1 if kind in CONTROL_KINDS else index)
        if kind not in CONTROL_KINDS:
            index += 1
        if current is not None:
            current.stmts.append(stmt)
        else:
            units.append(Unit([stmt]))
    return setup, units


# ------------------------------------------------------------------------------------- executor


class HarnessError(AssertionError):
    """The harness itself went wrong (its model of the tables, or the truth's bookkeeping)."""


@dataclass
class Executed:
    stmt: Stmt
    changes: int  # changes the truth must show for it
    names: dict[str, int]  # quoted "schema.name" -> oid, in force when it ran


@dataclass
class ExecutedUnit:
    xid: int | None
    stmts: list[Executed]
    committed: bool


class Executor:
    """Runs units on one autocommit connection (each single statement in a transaction of its
    own, so that its transaction id can be recorded)."""

    CATALOG = ("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.oid::int8 "
               "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')")

    def __init__(self, conn: Any, schemas: list[str]):
        self.conn = conn
        self.schemas = schemas
        self.names = self.catalog()
        self.done: list[ExecutedUnit] = []

    def catalog(self) -> dict[str, int]:
        return dict(self.conn.execute(self.CATALOG, (self.schemas,)).fetchall())

    def run(self, units: list[Unit]) -> list[ExecutedUnit]:
        for unit in units:
            self.run_unit(unit)
        return self.done

    def run_unit(self, unit: Unit) -> ExecutedUnit:
        conn = self.conn
        conn.execute("BEGIN")
        executed: list[Executed] = []
        savepoints: list[int] = []
        try:
            for stmt in unit.stmts:
                cur = conn.execute(stmt.sql)
                if stmt.kind in ("insert", "update", "update_key", "delete", "final_insert"):
                    count = cur.rowcount
                    if stmt.expect is not None and count != stmt.expect:
                        raise HarnessError(f"statement #{stmt.index} changed {count} rows, the "
                                           f"model expected {stmt.expect}: {stmt.sql}")
                elif stmt.kind == "truncate":
                    count = 1
                else:
                    count = 0
                    if stmt.kind == "savepoint":
                        savepoints.append(len(executed))
                    elif stmt.kind == "rollback_to":
                        for e in executed[savepoints[-1]:]:
                            e.changes = 0
                    self.names = self.catalog()
                executed.append(Executed(stmt, count, self.names))
            xid = conn.execute("SELECT pg_current_xact_id_if_assigned()::text").fetchone()[0]
            conn.execute("COMMIT" if unit.commit else "ROLLBACK")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if not unit.commit:
            for e in executed:
                e.changes = 0
            self.names = self.catalog()
        done = ExecutedUnit(None if xid is None else int(xid) % 2**32, executed, unit.commit)
        self.done.append(done)
        return done
