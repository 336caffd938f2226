"""The writer: continuous changes whose every row carries a writer sequence number.

The table ``faults.data (id bigint PRIMARY KEY, rid bigint UNIQUE, seq bigint, v text)``:
``rid`` is a row's identity for its whole life, ``id`` its key (a key change moves it to a fresh
id; ids are never reused), ``seq`` the writer's sequence number of the change that wrote the
row version. Every change (insert, update, key-changing update, delete) gets its own ``seq``:

* an insert or update is recognised on the stream by the ``seq`` of its after-image;
* a delete by the key in its before-image (``_cdc_before.id``), which the writer's log maps to
  the delete's ``seq`` (ids are never reused, so a key is deleted at most once).

Transactions vary in size (1 to a few thousand changes, as one to four statements of one kind
each). Each one also inserts its number into ``faults.wtx`` (not captured): when a commit
fails because the server went away, the writer reconnects and looks the number up, so the log
holds exactly the committed transactions, whatever the fault. The log is the truth the
delivered rows are compared with (:func:`tests.faults.check.compare`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

SCHEMA = "faults"
TABLE = f"{SCHEMA}.data"

SETUP_SQL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {TABLE} (id bigint PRIMARY KEY, rid bigint NOT NULL UNIQUE,
                      seq bigint NOT NULL, v text NOT NULL);
CREATE TABLE {SCHEMA}.wtx (txn bigint PRIMARY KEY);
CREATE TABLE {SCHEMA}.filler (v text);
"""

OP_INSERT, OP_UPDATE, OP_DELETE = "c", "u", "d"


@dataclass(slots=True)
class Change:
    seq: int
    op: str          # c, u, d
    rid: int
    id: int          # the key after the change (for a delete: the key deleted)
    old_id: int      # the key before (a key change has old_id != id); 0 for an insert
    txn: int


@dataclass
class WriterLog:
    """What the writer committed, in commit order (one writer connection: seq order)."""

    changes: list[Change] = field(default_factory=list)
    by_seq: dict[int, Change] = field(default_factory=dict)
    delete_seq_by_id: dict[int, int] = field(default_factory=dict)
    txns: int = 0
    aborted_txns: int = 0          # failed and not committed (retried as new transactions)
    ambiguous_commits: int = 0     # commit failed; the marker said whether it happened
    reconnects: int = 0
    final_rows: dict[int, tuple[int, int]] = field(default_factory=dict)  # rid -> (id, seq)

    def record(self, txn_changes: list[Change]) -> None:
        for ch in txn_changes:
            self.changes.append(ch)
            self.by_seq[ch.seq] = ch
            if ch.op == OP_DELETE:
                self.delete_seq_by_id[ch.id] = ch.seq
        self.txns += 1

    @property
    def committed(self) -> int:
        return len(self.changes)

    @property
    def max_seq(self) -> int:
        return self.changes[-1].seq if self.changes else 0


def _payload(rng: random.Random, seq: int) -> str:
    # 20-300 bytes, so the stream's bytes vary (and the spill fault fills a disk)
    return f"{seq}:" + "x" * rng.randint(20, 300)


class Writer(threading.Thread):
    """Writes ``target`` changes (then stops), at up to ``rate`` changes/s (None: unthrottled).

    ``conninfo`` should reach the server directly (not through the fault proxy): the writer is
    the application, not the kit. It survives server restarts and crashes: it reconnects and
    resolves an ambiguous commit through ``faults.wtx``.
    """

    def __init__(self, conninfo: dict[str, Any], target: int, *, rate: float | None = None,
                 seed: int = 1, large_txn_every: int = 40):
        super().__init__(name="fault-writer", daemon=True)
        self.conninfo = conninfo
        self.target = target
        self.rate = rate
        self.rng = random.Random(seed)
        self.large_txn_every = large_txn_every
        self.log = WriterLog()
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self.pause_event = threading.Event()  # set: the writer waits (between transactions)
        self._lock = threading.Lock()
        # model of the table (committed state): rid -> (id, seq)
        self._rows: dict[int, tuple[int, int]] = {}
        self._live: list[int] = []       # rids alive, for random choice
        self._live_pos: dict[int, int] = {}
        self._next_rid = 1
        self._next_id = 1
        self._next_seq = 1
        self._next_txn = 1
        self._conn: psycopg.Connection[Any] | None = None

    # ---- progress, read by the harness from another thread

    @property
    def committed(self) -> int:
        return self.log.committed

    @property
    def max_seq(self) -> int:
        return self.log.max_seq

    # ---- the model

    def _add_live(self, rid: int) -> None:
        self._live_pos[rid] = len(self._live)
        self._live.append(rid)

    def _remove_live(self, rid: int) -> None:
        pos = self._live_pos.pop(rid)
        last = self._live.pop()
        if last != rid:
            self._live[pos] = last
            self._live_pos[last] = pos

    def _txn_size(self) -> int:
        if self.log.txns % self.large_txn_every == self.large_txn_every - 1:
            return self.rng.randint(1000, 3000)
        r = self.rng.random()
        if r < 0.45:
            return self.rng.randint(1, 5)
        if r < 0.85:
            return self.rng.randint(6, 100)
        return self.rng.randint(101, 600)

    def _plan_txn(self, size: int) -> tuple[list[tuple[str, list[Change], list[str]]], dict]:
        """Statements (kind, changes, payloads) for one transaction, against a scratch copy of
        the model: returns the statements and the model's new entries (applied on commit)."""
        txn = self._next_txn
        rows = {}  # rid -> (id, seq) or None (deleted), changes of this transaction
        inserted: list[int] = []  # rids inserted in this txn (some may be deleted again)
        gone = set()  # rids deleted in this txn
        statements: list[tuple[str, list[Change], list[str]]] = []
        remaining = size
        parts = self.rng.randint(1, 4)
        for part in range(parts):
            n = remaining if part == parts - 1 else self.rng.randint(1, max(1, remaining))
            remaining -= n
            if n <= 0:
                break
            kinds = [OP_INSERT] * 5 + [OP_UPDATE] * 3 + [OP_DELETE] * 2
            if len(self._live) + len(inserted) - len(gone) < 200:
                kinds = [OP_INSERT]
            kind = self.rng.choice(kinds)
            changes: list[Change] = []
            payloads: list[str] = []
            if kind == OP_INSERT:
                for _ in range(n):
                    rid, key = self._next_rid, self._next_id
                    self._next_rid += 1
                    self._next_id += 1
                    seq = self._next_seq
                    self._next_seq += 1
                    changes.append(Change(seq, OP_INSERT, rid, key, 0, txn))
                    payloads.append(_payload(self.rng, seq))
                    rows[rid] = (key, seq)
                    inserted.append(rid)
            else:
                chosen: set[int] = set()
                tries = 0
                while len(chosen) < n and tries < 4 * n:
                    tries += 1
                    if inserted and self.rng.random() < 0.2:
                        rid = inserted[self.rng.randrange(len(inserted))]
                    elif self._live:
                        rid = self._live[self.rng.randrange(len(self._live))]
                    else:
                        continue
                    if rid in gone or rid in chosen:
                        continue
                    chosen.add(rid)
                for rid in sorted(chosen):
                    cur = rows[rid] if rid in rows else self._rows[rid]
                    seq = self._next_seq
                    self._next_seq += 1
                    if kind == OP_UPDATE:
                        new_id = cur[0]
                        if self.rng.random() < 0.3:  # a key change: a fresh id
                            new_id = self._next_id
                            self._next_id += 1
                        changes.append(Change(seq, OP_UPDATE, rid, new_id, cur[0], txn))
                        payloads.append(_payload(self.rng, seq))
                        rows[rid] = (new_id, seq)
                    else:
                        changes.append(Change(seq, OP_DELETE, rid, cur[0], cur[0], txn))
                        rows[rid] = None  # type: ignore[assignment]
                        gone.add(rid)
            if changes:
                statements.append((kind, changes, payloads))
        return statements, rows

    def _apply_model(self, rows: dict) -> None:
        for rid, state in rows.items():
            if state is None:
                if rid in self._rows:
                    del self._rows[rid]
                    self._remove_live(rid)
            else:
                if rid not in self._rows:
                    self._add_live(rid)
                self._rows[rid] = state

    # ---- the database

    def _connect(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + 120
        while True:
            try:
                return psycopg.connect(**self.conninfo, autocommit=False, connect_timeout=5)
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.stop_event.is_set():
                    raise
                time.sleep(0.1)

    def _execute(self, conn: psycopg.Connection[Any], kind: str, changes: list[Change],
                 payloads: list[str]) -> None:
        if kind == OP_INSERT:
            cur = conn.execute(
                f"INSERT INTO {TABLE} (id, rid, seq, v) SELECT * FROM "
                "unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[])",
                ([c.id for c in changes], [c.rid for c in changes], [c.seq for c in changes],
                 payloads))
        elif kind == OP_UPDATE:
            cur = conn.execute(
                f"UPDATE {TABLE} d SET id = u.nid, seq = u.seq, v = u.v FROM "
                "unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS u(rid, nid, seq, v) "
                "WHERE d.rid = u.rid",
                ([c.rid for c in changes], [c.id for c in changes], [c.seq for c in changes],
                 payloads))
        else:
            cur = conn.execute(f"DELETE FROM {TABLE} WHERE rid = ANY(%s::bigint[])",
                               ([c.rid for c in changes],))
        if cur.rowcount != len(changes):
            raise AssertionError(f"writer: {kind} touched {cur.rowcount} rows, "
                                 f"expected {len(changes)}: the model is off")

    def _committed_marker(self, txn: int) -> bool:
        conn = self._connect()
        try:
            row = conn.execute(f"SELECT 1 FROM {SCHEMA}.wtx WHERE txn = %s", (txn,)).fetchone()
            conn.rollback()
        finally:
            conn.close()
        return row is not None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported to the harness
            self.error = exc
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def _run(self) -> None:
        self._conn = self._connect()
        started = time.monotonic()
        while self.log.committed < self.target and not self.stop_event.is_set():
            while self.pause_event.is_set() and not self.stop_event.is_set():
                time.sleep(0.02)
            size = min(self._txn_size(), self.target - self.log.committed)
            statements, rows = self._plan_txn(size)
            txn = self._next_txn
            self._next_txn += 1
            changes = [c for _, chs, _ in statements for c in chs]
            committed = False
            try:
                for kind, chs, payloads in statements:
                    self._execute(self._conn, kind, chs, payloads)
                self._conn.execute(f"INSERT INTO {SCHEMA}.wtx VALUES (%s)", (txn,))
                self._conn.commit()
                committed = True
            except (psycopg.OperationalError, psycopg.InterfaceError):
                # The server went away (restart, crash): did the commit happen?
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass
                self.log.reconnects += 1
                self.log.ambiguous_commits += 1
                committed = self._committed_marker(txn)
                self._conn = self._connect()
            if committed:
                with self._lock:
                    self._apply_model(rows)
                    self.log.record(changes)
            else:
                self.log.aborted_txns += 1
                # the seqs and ids of an aborted transaction are simply never used again
            if self.rate:
                ahead = self.log.committed / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                elif ahead < -0.5:  # after an outage: go on at the rate, no catch-up burst
                    started += ahead + 0.5
        self.log.final_rows = dict(self._rows)

    def check_table(self, conn: psycopg.Connection[Any]) -> list[str]:
        """Compare the table with the writer's model: the truth must be true."""
        rows = {rid: (i, s) for i, rid, s in conn.execute(f"SELECT id, rid, seq FROM {TABLE}")}
        problems = []
        if rows != self.log.final_rows:
            missing = set(self.log.final_rows) - set(rows)
            extra = set(rows) - set(self.log.final_rows)
            differ = [r for r in set(rows) & set(self.log.final_rows)
                      if rows[r] != self.log.final_rows[r]]
            problems.append(f"the table differs from the writer's log: {len(missing)} rows "
                            f"missing, {len(extra)} extra, {len(differ)} different")
        return problems


def fill_wal(conn: psycopg.Connection[Any], megabytes: int) -> None:
    """Write about ``megabytes`` of WAL into a table nobody captures."""
    chunk = 8  # MB per statement
    for _ in range(max(1, megabytes // chunk)):
        conn.execute(f"INSERT INTO {SCHEMA}.filler SELECT repeat(md5(g::text), 30) "
                     f"FROM generate_series(1, {chunk * 1024}) g")
        if not conn.autocommit:
            conn.commit()
