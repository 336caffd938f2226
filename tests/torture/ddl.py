"""The DDL torture test (issue 12): seeded random DDL + DML interleavings, streamed through the
kit, checked change by change against PostgreSQL's own ``test_decoding``, and the live mirror
against ``SELECT``.

One seed is one run:

1. a schema with three empty tables (``tt_a``..``tt_c``; with the prefix pattern
   ``schema.tt_*`` also ``nm_x``, which is written to but never matched); the pattern is
   ``schema.*`` for even seeds and ``schema.tt_*`` for odd ones;
2. a temporary ``test_decoding`` slot (the truth, options ``include-xids``, ``skip-empty-xacts``)
   and, per plugin and mode, a ``CDCStream`` (its slot, its publication) and a ``LiveReader``:

   * ``live``: the LiveReader starts now and reads while the workload runs (temporary slot);
   * ``queued``: the stream starts now (decoding, the catalog watcher: tables created meanwhile
     join) but nobody reads until the workload is over (permanent slot);
   * ``behind``: nothing runs until the workload is over (permanent slot): the decoder and the
     reader are as far behind as the whole run, every schema change already in the catalog;
3. the workload (:mod:`tests.torture.workload`): ``--statements`` statements — INSERT / UPDATE
   (key changes too) / DELETE, ADD / DROP / RENAME / ALTER TYPE column, column name swaps, RENAME
   / DROP / CREATE table (old names again), TRUNCATE, REPLICA IDENTITY FULL / DEFAULT, and
   transactions mixing DML and DDL, some rolled back, some with a savepoint rolled back;
4. every consumer catches up (``LiveReader.catch_up``; tables that joined meanwhile included);
   its mirror of every captured table that still exists is compared with ``SELECT``;
5. the truth is read, each of its changes tied to its table's oid and its statement
   (:mod:`tests.torture.truth`), and compared with what each reader delivered
   (:mod:`tests.torture.check`).

Usage::

    python -m tests.torture.ddl --seeds 10 --statements 2000 --pg 15 --plugin both
    python -m tests.torture.ddl --seed 7 --statements 2000 --pg 15 --plugin pgoutput --mode behind
    python -m tests.torture.ddl --seed 7 --statements 2000 --pg 15 --verbose   # one line per reader
    python -m tests.torture.ddl --seed 7 --statements 2000 --dump-sql > seed7.sql   # the workload
    python -m tests.torture.ddl --script seed7.sql --pg 15 --plugin pgoutput          # a replay

A script (``--dump-sql``'s form, ``{schema}`` for the schema, ``-- setup`` / ``-- workload``
sections) can be cut down by hand and replayed: that is how a finding is reduced to a minimal
reproduction. The exit status is 1 when anything mismatched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .check import (
    Comparison,
    Mismatch,
    TapStream,
    compare_mirror,
    compare_table,
    kit_changes,
    table_state,
)
from .truth import TRUTH_OPTIONS, TruthChange, parse, tag, watermarks
from .workload import (
    MATCHED_NAMES,
    ExecutedUnit,
    Executor,
    Generator,
    HarnessError,
    Unit,
    parse_script,
    qi,
)

PLUGINS = ("wal2arrow", "pgoutput")
MODES = ("behind", "queued", "live")
WATCH_SETTLE = 4.5  # two catalog-watcher rounds (2 s each) and a margin: tables join


@dataclass
class Consumer:
    plugin: str
    mode: str
    stream: Any = None
    tap: TapStream | None = None
    live: Any = None
    result: Comparison = field(default_factory=Comparison)
    readers: list[str] = field(default_factory=list)  # one line per reader (--verbose)
    kit_by_oid: dict[int, list[Any]] = field(default_factory=dict)  # KitChanges per table
    cross: bool = False  # the two plugins compared with each other, not with the truth

    @property
    def name(self) -> str:
        return f"{self.plugin}/{self.mode}"

    def error(self, detail: str) -> None:
        self.result.mismatches.append(Mismatch("error", self.name, "-", detail))


@dataclass
class SeedResult:
    seed: int
    schema: str
    pattern: str
    statements: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    truth_changes: int = 0
    truth_ops: Counter[str] = field(default_factory=Counter)
    transactions: int = 0
    tables: int = 0  # table identities captured over the run
    workload_seconds: float = 0.0
    seconds: float = 0.0
    consumers: list[Consumer] = field(default_factory=list)
    harness_error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    sql_of: dict[int, str] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for c in self.consumers for m in c.result.mismatches]

    @property
    def ok(self) -> bool:
        return self.harness_error is None and not self.mismatches

    def report(self, show: int = 10, reproduce: str = "", verbose: bool = False) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items(), key=lambda x: -x[1]))
        ops = ", ".join(f"{k} {n}" for k, n in sorted(self.truth_ops.items()))
        lines = [f"seed {self.seed}: {self.statements} statements in {self.workload_seconds:.1f} s "
                 f"on {self.pattern} ({kinds})",
                 f"  truth: {self.truth_changes} changes ({ops}) in {self.transactions} "
                 f"transactions over {self.tables} tables; run {self.seconds:.1f} s ("
                 + ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items()) + ")"]
        if self.harness_error:
            lines.append(f"  HARNESS ERROR: {self.harness_error}")
        for c in self.consumers:
            r = c.result
            by_kind = Counter(m.kind for m in r.mismatches)
            mm = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"
            if c.cross:
                lines.append(f"  {c.name}: {r.truth} vs {r.delivered} changes, {r.equal} the "
                             f"same (values, columns, Arrow types); mismatches: {mm}")
            else:
                lines.append(f"  {c.name}: {r.truth} truth changes owed, {r.delivered} delivered "
                             f"(+{r.snapshot_rows} snapshot rows), {r.equal} equal; mismatches: "
                             f"{mm}")
            if verbose:
                lines += [f"    {line}" for line in c.readers]
        for c in self.consumers:
            ms = c.result.mismatches
            groups = [[m for m in ms if m.kind in ("error", "reader", "publication")],
                      sorted((m for m in ms if m.kind not in ("error", "reader", "publication",
                                                              "mirror", "type")),
                             key=lambda m: m.seq),
                      [m for m in ms if m.kind == "type"],
                      [m for m in ms if m.kind == "mirror"]]
            for group in groups:
                lines += ["    " + m.format(self.sql_of) for m in group[:show]]
                if len(group) > show:
                    lines.append(f"    [{c.name}] ... {len(group) - show} more {group[0].kind}")
        if not self.ok and reproduce:
            lines.append(f"  reproduce: {reproduce}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- one run


def run_seed(server: Any, seed: int, statements: int, *, plugins: tuple[str, ...] = PLUGINS,
             modes: tuple[str, ...] = MODES, schema: str | None = None,
             script: str | None = None, pattern_kind: str | None = None,
             catch_up_timeout: float = 60.0,
             log: Callable[[str], None] = lambda s: None) -> SeedResult:
    """One seed's run against ``server`` (a PostgresServer); never raises for the product's
    failures (they are the result's mismatches)."""
    from cdc_notebook import CDCStream, LiveReader

    started = time.monotonic()
    schema = schema or f"tort{seed}_{os.getpid() % 100000}"
    gen = Generator(seed, schema, statements, pattern_kind)
    if script is not None:
        setup, units = parse_script(script, schema)
        kinds: Counter[str] = Counter(s.kind for u in units for s in u.stmts)
    else:
        setup = gen.setup()
        units = gen.workload()
        kinds = gen.kinds
    result = SeedResult(seed, schema, gen.pattern, kinds=kinds,
                        statements=sum(1 for u in units for s in u.stmts if s.index >= 0))
    result.sql_of = {s.index: s.sql for u in units for s in u.stmts if s.index >= 0}
    conn = server.connect()
    truth_conn = server.connect()
    truth_slot = f"{schema}_truth"[:63]
    consumers = [Consumer(p, m) for p in plugins for m in modes]
    result.consumers = consumers
    slots: list[str] = []
    publications: list[str] = []
    try:
        for sql in setup:
            conn.execute(sql)
        truth_conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding', true)",
                           (truth_slot,))
        for c in consumers:
            slot = f"{schema}_{c.plugin[:3]}_{c.mode[0]}"[:63]
            try:
                c.stream = CDCStream(server.conninfo(), gen.pattern, plugin=c.plugin,
                                     slot_name=slot, temporary=c.mode == "live")
            except Exception as exc:  # noqa: BLE001 - a finding of this consumer
                c.error(f"CDCStream failed: {_exc(exc)}")
                continue
            slots.append(slot)
            publications.append(c.stream.publication)
            c.tap = TapStream(c.stream)
            if c.mode == "live":
                c.live = LiveReader(c.tap, close_stream=False).start()
            elif c.mode == "queued":
                c.stream.start()  # decoding and the catalog watcher run; nobody reads yet
        log(f"seed {seed}: {result.statements} statements on {gen.pattern} "
            f"({', '.join(c.name for c in consumers)})")

        executor = Executor(conn, [schema])
        initial = dict(executor.names)
        t0 = time.monotonic()
        executed = executor.run(units)
        result.workload_seconds = time.monotonic() - t0
        mark = _phases(result.phases, t0)
        mark("workload")
        final = executor.catalog()

        behind_started = time.monotonic()
        for c in consumers:
            if c.mode in ("behind", "queued") and c.tap is not None:
                c.live = LiveReader(c.tap, close_stream=False).start()
        # Tables created (or renamed) during the run join through the catalog watcher: let it
        # look twice. Without such statements there is nothing to wait for.
        settle = WATCH_SETTLE if any(s.kind in ("create_table", "rename_table", "drop_table")
                                     for u in units for s in u.stmts) else 0.5
        time.sleep(max(0.0, behind_started + settle - time.monotonic()))
        waits = [threading.Thread(target=_catch_up, args=(c, catch_up_timeout), daemon=True)
                 for c in consumers if c.live is not None]
        for w in waits:
            w.start()
        for w in waits:
            w.join()
        mark("catch-up")

        matched = _matched(gen, executed, initial, script is not None)
        for c in consumers:
            if c.live is not None:
                _check_publication(c, conn, final, matched)
                _check_mirrors(c, conn, final, matched)
        mark("mirrors")
        for c in consumers:
            if c.live is not None:
                _finish(c)
        mark("stop")
        rows = truth_conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_changes(%s, NULL, NULL, "
            + ", ".join(["%s"] * len(TRUTH_OPTIONS)) + ")",
            (truth_slot, *TRUTH_OPTIONS)).fetchall()
        txns = parse(rows, [schema])
        truth = tag(executed, txns)
        result.truth_changes = len(truth)
        result.truth_ops = Counter(t.op for t in truth)
        result.transactions = sum(1 for t in txns if t.changes)
        labels = _labels(executed, initial)
        captured = sorted(o for o in labels if o in matched)
        result.tables = len(captured)
        for c in consumers:
            if c.tap is not None:
                _compare(c, truth, watermarks(txns), initial, matched, labels)
        for mode in modes:
            pair = [c for c in consumers if c.mode == mode and c.tap is not None]
            if len(pair) == 2:
                result.consumers.append(_cross(mode, *pair, labels, set(initial.values())))
        mark("compare")
    except HarnessError as exc:
        result.harness_error = str(exc)
    except Exception:  # noqa: BLE001 - reported with the seed
        result.harness_error = traceback.format_exc()
    finally:
        for c in consumers:
            with contextlib.suppress(Exception):
                if c.live is not None:
                    c.live.stop()
            with contextlib.suppress(Exception):
                if c.stream is not None:
                    c.stream.close()
        _cleanup(server, conn, schema, slots, publications)
        truth_conn.close()
        conn.close()
        result.seconds = time.monotonic() - started
    return result


def _exc(exc: BaseException) -> str:
    """An exception with where it was raised (the innermost frame in the kit, if any)."""
    frames = traceback.extract_tb(exc.__traceback__)
    kit = [f for f in frames if "cdc_notebook" in f.filename] or frames
    if not kit:
        return repr(exc)
    f = kit[-1]
    path = f.filename[f.filename.find("cdc_notebook"):] if "cdc_notebook" in f.filename \
        else os.path.basename(f.filename)
    return f"{exc!r} at {path}:{f.lineno} ({f.name})"


def _phases(phases: dict[str, float], start: float) -> Callable[[str], None]:
    last = [start]

    def mark(name: str) -> None:
        now = time.monotonic()
        phases[name] = now - last[0]
        last[0] = now

    return mark


def _finish(c: Consumer) -> None:
    """Stop the LiveReader, then read on each reader what it left (a LiveReader thread that
    died leaves the rest of its table unread: the comparison of changes still sees it), then
    close the stream."""
    error = c.live.error
    dead = sorted(t.name.removeprefix("cdc-live-") for t in getattr(c.live, "_threads", [])
                  if not t.is_alive())
    try:
        c.live.stop()
    except Exception as exc:  # noqa: BLE001 - a finding
        c.error(f"LiveReader.stop failed: {_exc(exc)}")
    if error is not None:
        c.error(f"the LiveReader failed: {_exc(error)}" +
                (f" (threads ended: {', '.join(dead)})" if dead else ""))
    proxies = list(c.tap.readers.items())  # every reader, joined ones included
    # Readers the stream keeps but no longer lists (a dropped table's, once a new table has
    # its name): what they hold is read too, and that they are out of reach is a finding.
    by_relid = getattr(getattr(c.stream, "readers", None), "by_relid", None) or {}
    for relid, reader in list(by_relid.items()):
        if any(d.reader is reader for d in list(c.tap.delivered.values())):
            continue
        proxy = c.tap.hidden(reader, relid)
        queued = getattr(reader, "queued_batches", "?")
        c.result.mismatches.append(Mismatch(
            "reader", c.name, f"{getattr(reader, 'name', relid)} (oid {relid})",
            f"the stream holds this table's reader ({queued} batches queued) but "
            "stream.readers does not list it: no consumer of stream.readers can read it"))
        proxies.append((getattr(reader, "name", str(relid)), proxy))
    for name, proxy in proxies:
        if getattr(proxy, "closed", False):
            continue
        try:
            for _ in proxy.events(timeout=15):
                pass
        except Exception as exc:  # noqa: BLE001 - a finding
            c.error(f"reading what the LiveReader left of {name} failed: {_exc(exc)}")
    failed = getattr(getattr(c.stream, "router", None), "failed", None)
    if failed is not None and failed is not error:
        c.error(f"the stream failed: {_exc(failed)}")
    try:
        c.stream.close()
    except Exception as exc:  # noqa: BLE001 - a finding
        c.error(f"CDCStream.close failed: {_exc(exc)}")


def _catch_up(c: Consumer, timeout: float, stall: float = 12.0) -> None:
    """``LiveReader.catch_up``, in slices: a catch-up that makes no progress (no event read,
    the stream's position not moving) for ``stall`` seconds is a finding, not a long wait."""
    deadline = time.monotonic() + timeout
    router = getattr(c.stream, "router", None)

    def progress() -> tuple[int, int]:
        acks = getattr(router, "acks", None)
        return c.tap.event_count(), int(getattr(acks, "received", 0) or 0)

    last, moved = progress(), time.monotonic()
    while True:
        waiting_for = "the tables joining the stream"
        try:
            joined = c.stream.wait_for_joins(timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - a finding
            c.error(f"CDCStream.wait_for_joins failed: {_exc(exc)}")
            joined = True
        try:
            if joined:
                c.live.catch_up(timeout=3.0)
                return
        except TimeoutError as exc:
            waiting_for = str(exc)
        except Exception as exc:  # noqa: BLE001 - a finding; then wait our own way
            c.error(f"LiveReader.catch_up failed: {_exc(exc)}")
            break
        failed = c.live.error or getattr(router, "failed", None)
        if failed is not None:
            c.error(f"catching up: the reader failed: {_exc(failed)}")
            break
        now = time.monotonic()
        if progress() != last:
            last, moved = progress(), now
        elif now - moved > stall or now > deadline:
            c.error(f"catching up: no progress for {now - moved:.0f} s, waiting for "
                    f"{waiting_for}")
            break
    # Wait until nothing more arrives for 2 s (bounded): what was delivered is then compared.
    last_n, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = c.tap.event_count()
        if n != last_n:
            last_n, quiet_since = n, time.monotonic()
        elif time.monotonic() - quiet_since > 2.0:
            return
        time.sleep(0.1)


def _matched(gen: Generator, executed: list[ExecutedUnit], initial: dict[str, int],
             from_script: bool) -> set[int]:
    """The oids the pattern captures: every table of the schema, or the tt_* ones (renames
    stay among tt_* names, the unmatched table is never renamed)."""
    oids: set[int] = set(initial.values())
    for unit in executed:
        for e in unit.stmts:
            oids.update(e.names.values())
    if gen.pattern_kind == "schema":
        return oids
    names: dict[int, set[str]] = {}
    for name, oid in initial.items():
        names.setdefault(oid, set()).add(name)
    for unit in executed:
        for e in unit.stmts:
            for name, oid in e.names.items():
                names.setdefault(oid, set()).add(name)
    prefix = MATCHED_NAMES[0][:3]  # tt_
    return {oid for oid, ns in names.items()
            if all(n.split(".", 1)[1].strip('"').startswith(prefix) for n in ns)}


def _labels(executed: list[ExecutedUnit], initial: dict[str, int]) -> dict[int, str]:
    """Each oid's names over the run: 'tt_c (oid 16410: tt_a, tt_c from #120, gone at #300)'."""
    history: dict[int, list[tuple[int, str]]] = {}
    for name, oid in initial.items():
        history[oid] = [(-1, name)]
    present = set(initial.values())
    for unit in executed:
        for e in unit.stmts:
            now = set(e.names.values())
            for oid in present - now:
                history[oid].append((e.stmt.index, ""))  # dropped (or its creation rolled back)
            present = now
            for name, oid in e.names.items():
                h = history.setdefault(oid, [])
                if not h or h[-1][1] != name:
                    h.append((e.stmt.index, name))
    labels = {}
    for oid, h in history.items():
        steps = ", ".join(f"gone at #{i}" if not n else
                          (f"{n.split('.', 1)[1]} from #{i}" if i >= 0 else n.split(".", 1)[1])
                          for i, n in h)
        last = next((n.split(".", 1)[1] for _, n in reversed(h) if n), "?")
        labels[oid] = f"{last} (oid {oid}: {steps})"
    return labels


def _frame_of(frames: Any, oid: int, qname: str, delivered: list[Any]) -> Any:
    """The live frame of a table: the one that says it is this oid, else the one named as its
    reader is now (readers follow renames), was, or as the table is called now."""
    tables = dict(frames.tables)
    for live in tables.values():
        for attr in ("relid", "oid"):
            if getattr(live, attr, None) == oid:
                return live
    plain = ".".join(p.strip('"') for p in qname.split(".", 1))
    names = [n for d in reversed(delivered) for n in (getattr(d.reader, "name", None), d.name)]
    for name in [*names, qname, plain]:
        if name in tables:
            return tables[name]
    return None


def _check_publication(c: Consumer, conn: Any, final: dict[str, int], matched: set[int]) -> None:
    """Every captured table that exists at the end is in the stream's publication (the
    catalog watcher added the ones created later); none that the pattern does not match is."""
    pub = getattr(c.stream, "publication", None)
    if not pub:
        return
    members = {oid for (oid,) in conn.execute(
        "SELECT pr.prrelid::int8 FROM pg_publication_rel pr JOIN pg_publication p "
        "ON p.oid = pr.prpubid WHERE p.pubname = %s", (pub,)).fetchall()}
    for qname, oid in sorted(final.items()):
        if oid in matched and oid not in members:
            c.result.mismatches.append(Mismatch(
                "publication", c.name, f"{qname.split('.', 1)[1]} (oid {oid})",
                f"not in the stream's publication {pub} at the end"))
        if oid not in matched and oid in members:
            c.result.mismatches.append(Mismatch(
                "publication", c.name, f"{qname.split('.', 1)[1]} (oid {oid})",
                f"in the publication {pub}, which the pattern does not match"))


def _check_mirrors(c: Consumer, conn: Any, final: dict[str, int], matched: set[int]) -> None:
    frames = c.live.frames
    by_oid: dict[int, list[Any]] = {}
    for d in list(c.tap.delivered.values()):
        if d.oid is not None:
            by_oid.setdefault(d.oid, []).append(d)
    for qname, oid in sorted(final.items()):
        if oid not in matched:
            continue
        label = f"{qname.split('.', 1)[1]} (oid {oid})"
        live = _frame_of(frames, oid, qname, by_oid.get(oid, []))
        if live is None:
            c.result.mismatches.append(Mismatch(
                "mirror", c.name, label, f"no live frame for the table (frames: "
                f"{sorted(frames.tables)})"))
            continue
        try:
            frame = live.mirror()
        except Exception as exc:  # noqa: BLE001 - a finding
            c.result.mismatches.append(Mismatch("mirror", c.name, label,
                                                f"mirror() failed: {exc!r}"))
            continue
        names, keys, rows = table_state(conn, qname, oid)
        compare_mirror(c.name, label, frame, names, keys, rows, c.result)


def _compare(c: Consumer, truth: list[TruthChange], marks: list[tuple[int, str]],
             initial: dict[str, int], matched: set[int], labels: dict[int, str]) -> None:
    slot = c.stream.slot.slot_name
    joined_at: dict[int, int] = {}  # oid -> seq of this stream's low watermark
    for seq, content in marks:
        kind, _, join_id = content.partition(" ")
        parts = join_id.split(":")
        if kind == "low" and len(parts) >= 3 and parts[0] == slot and parts[1].isdigit():
            joined_at.setdefault(int(parts[1]), seq)
    per_oid: dict[int, list[TruthChange]] = {}
    for t in truth:
        for oid in t.oids:
            per_oid.setdefault(oid, []).append(t)
    initial_oids = set(initial.values())
    seen: Counter[int] = Counter()
    for d in list(c.tap.delivered.values()):
        kit, snap, _others = kit_changes(d.events)
        c.result.snapshot_rows += snap
        if d.oid is None:
            c.result.mismatches.append(Mismatch("reader", c.name, d.name,
                                                "a reader whose table's oid is not known"))
            continue
        label = labels.get(d.oid, f"{d.name} (oid {d.oid})")
        seen[d.oid] += 1
        c.kit_by_oid.setdefault(d.oid, []).extend(kit)
        if d.oid not in matched:
            c.result.mismatches.append(Mismatch(
                "reader", c.name, label, f"a reader ({d.name}) for a table the pattern does "
                f"not match, {len(kit)} changes"))
            continue
        owed = per_oid.get(d.oid, [])
        late = d.oid not in initial_oids or seen[d.oid] > 1
        wm = joined_at.get(d.oid)
        must = next((i for i, t in enumerate(owed) if wm is not None and t.seq > wm), len(owed))
        before = (c.result.truth, c.result.delivered, c.result.equal, len(c.result.mismatches))
        compare_table(c.name, label + f" [reader {d.name}]", owed, kit, late=late, must_from=must,
                      result=c.result)
        after = (c.result.truth, c.result.delivered, c.result.equal, len(c.result.mismatches))
        c.readers.append(f"reader {d.name} → {label}: {len(owed)} truth changes, "
                         f"{after[0] - before[0]} owed{' (joined late)' if late else ''}, "
                         f"{after[1] - before[1]} delivered (+{snap} snapshot rows), "
                         f"{after[2] - before[2]} equal, {after[3] - before[3]} mismatches; "
                         f"other events: {dict(_others)}; reader "
                         + ", ".join(f"{a}={getattr(d.reader, a)!r}" for a in
                                     ("name", "closed", "dropped", "table_gone", "table_dropped")
                                     if hasattr(d.reader, a)))
    for oid in sorted(matched):
        if seen[oid] > 1:
            c.result.mismatches.append(Mismatch("reader", c.name, labels.get(oid, str(oid)),
                                                f"{seen[oid]} readers for one table"))
        if oid in initial_oids and not seen[oid]:
            owed = per_oid.get(oid, [])
            compare_table(c.name, labels.get(oid, str(oid)) + " [no reader]", owed, [],
                          late=False, must_from=0, result=c.result)


def _cross(mode: str, a: Consumer, b: Consumer, labels: dict[int, str],
           initial: set[int]) -> Consumer:
    """The two plugins' deliveries of the same WAL, table by table: the same changes with the
    same Arrow types (each was compared with the truth already; this names where they part).
    A table that joined later may have joined each stream at another point: only the changes
    both delivered (the common tail) are compared there."""
    out = Consumer(f"{a.plugin}={b.plugin}", mode, cross=True)
    for oid in sorted(set(a.kit_by_oid) | set(b.kit_by_oid)):
        ka, kb = a.kit_by_oid.get(oid, []), b.kit_by_oid.get(oid, [])
        if oid not in initial:
            n = min(len(ka), len(kb))
            ka, kb = ka[len(ka) - n:], kb[len(kb) - n:]
        out.result.truth += len(ka)
        out.result.delivered += len(kb)
        sa = [(k.key(), k.types if k.op in ("c", "u") else ()) for k in ka]
        sb = [(k.key(), k.types if k.op in ("c", "u") else ()) for k in kb]
        i = next((i for i, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y),
                 min(len(sa), len(sb)))
        out.result.equal += i
        if sa == sb:
            continue
        what = []
        for name, seq in ((a.plugin, ka), (b.plugin, kb)):
            if i < len(seq):
                what.append(f"{name}: {seq[i].describe()} types {dict(seq[i].types)}")
            else:
                what.append(f"{name}: nothing more")
        out.result.mismatches.append(Mismatch(
            "plugins differ", out.name, labels.get(oid, str(oid)),
            f"{len(ka)} vs {len(kb)} changes, first difference at change {i}:\n        "
            + "\n        ".join(what)))
    return out


def _cleanup(server: Any, conn: Any, schema: str, slots: list[str],
             publications: list[str]) -> None:
    from tests.pgutil import drop_slot

    for slot in slots:
        with contextlib.suppress(Exception):
            drop_slot(server, slot)
    for pub in publications:
        with contextlib.suppress(Exception):
            conn.execute(f"DROP PUBLICATION IF EXISTS {qi(pub)}")
    with contextlib.suppress(Exception):
        conn.execute(f"DROP SCHEMA IF EXISTS {qi(schema)} CASCADE")


# ------------------------------------------------------------------------------------- command


def reproduce_command(seed: int, statements: int, pg: str, plugins: Any = (),
                      modes: Any = ()) -> str:
    """The command that runs this seed again (only the plugins and modes named, if any)."""
    plugins, modes = sorted(set(plugins)), sorted(set(modes))
    flags = "".join(f" --plugin {p}" for p in plugins[:1] if len(plugins) == 1)
    flags += "".join(f" --mode {m}" for m in modes[:1] if len(modes) == 1)
    return (f"python -m tests.torture.ddl --pg {pg}{flags} --seed {seed} "
            f"--statements {statements}   (--dump-sql prints the workload, --verbose each reader)")


def minimize(server: Any, script: str, pattern_kind: str, plugins: tuple[str, ...],
             modes: tuple[str, ...], pattern: str, log: Callable[[str], None] = print,
             tries: int = 3) -> str:
    """Cut a script down to a 1-minimal one (delta debugging over transactions, then over the
    statements inside them) that still gives a mismatch matching the regular expression
    ``pattern``; a candidate counts as reproducing if any of ``tries`` runs does."""
    import re

    setup, units = parse_script(script, "{schema}")
    wanted = re.compile(pattern)
    runs = [0]

    def text(us: list[Unit]) -> str:
        return Generator(0, "{schema}", 0).dump(setup, us)

    def reproduces(us: list[Unit]) -> bool:
        # a cut that breaks the script (a statement naming what is gone) fails fast here
        dry = run_seed(server, 1, 0, plugins=(), modes=(), script=text(us),
                       pattern_kind=pattern_kind)
        if dry.harness_error is not None:
            return False
        for _ in range(tries):
            runs[0] += 1
            r = run_seed(server, 1, 0, plugins=plugins, modes=modes, script=text(us),
                         pattern_kind=pattern_kind, catch_up_timeout=30)
            if r.harness_error is None and any(
                    wanted.search(f"{m.kind} {m.detail}") for m in r.mismatches):
                return True
            if r.harness_error is not None:
                return False  # the cut made the script invalid
        return False

    def ddmin(items: list[Any], rebuild: Callable[[list[Any]], list[Unit]]) -> list[Any]:
        n = 2
        while len(items) >= 2:
            size = -(-len(items) // n)
            for i in range(0, len(items), size):
                candidate = items[:i] + items[i + size:]
                if candidate and reproduces(rebuild(candidate)):
                    items, n = candidate, max(n - 1, 2)
                    log(f"  {len(items)} left ({runs[0]} runs)")
                    break
            else:
                if n >= len(items):
                    break
                n = min(len(items), 2 * n)
        return items

    if not reproduces(units):
        raise SystemExit(f"the script does not reproduce {pattern!r}")
    units = ddmin(units, lambda us: us)
    # then single statements: every statement its own item, transactions kept where they are
    flat = [(i, s) for i, u in enumerate(units) for s in u.stmts]

    def regroup(items: list[Any]) -> list[Unit]:
        out: list[Unit] = []
        for i, u in enumerate(units):
            stmts = [s for j, s in items if j == i]
            if stmts:
                out.append(Unit(stmts, u.explicit, u.commit))
        return out

    flat = ddmin(flat, regroup)
    log(f"minimal after {runs[0]} runs")
    return text(regroup(flat))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.torture.ddl",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1)")
    ap.add_argument("--first-seed", type=int, default=1, help="the first of --seeds (default 1)")
    ap.add_argument("--seed", type=int, action="append", help="this seed (repeatable)")
    ap.add_argument("--statements", type=int, default=2000)
    ap.add_argument("--pg", choices=("15", "18"), default=os.environ.get("CDC_TEST_PG", "15"))
    ap.add_argument("--plugin", choices=(*PLUGINS, "both"), default="both")
    ap.add_argument("--mode", choices=(*MODES, "all"), default="all")
    ap.add_argument("--show", type=int, default=8, help="mismatches shown per consumer")
    ap.add_argument("--dump-sql", action="store_true", help="print the workload and exit")
    ap.add_argument("--script", help="replay this SQL script (--dump-sql's form) instead")
    ap.add_argument("--pattern-kind", choices=("schema", "prefix"),
                    help="schema.* or schema.tt_* (default: by seed parity)")
    ap.add_argument("--minimize", metavar="REGEX",
                    help="cut the seed's workload (or --script) down to a minimal script that "
                    "still gives a mismatch matching REGEX (kind and detail), and print it")
    ap.add_argument("--verbose", action="store_true", help="one line per reader")
    ap.add_argument("--timeout", type=float, default=120.0, help="catch-up timeout, seconds")
    args = ap.parse_args(argv)

    seeds = args.seed or list(range(args.first_seed, args.first_seed + args.seeds))
    plugins = PLUGINS if args.plugin == "both" else (args.plugin,)
    modes = MODES if args.mode == "all" else (args.mode,)
    if args.dump_sql:
        for seed in seeds:
            gen = Generator(seed, "{schema}", args.statements, args.pattern_kind)
            setup = gen.setup()
            sys.stdout.write(gen.dump(setup, gen.workload()))
        return 0
    script = None
    if args.script:
        with open(args.script) as f:
            script = f.read()
    if args.minimize:
        from cdc_notebook import PostgresServer

        seed = seeds[0]
        gen = Generator(seed, "{schema}", args.statements, args.pattern_kind)
        if script is None:
            script = gen.dump(gen.setup(), gen.workload())
        with PostgresServer(version=int(args.pg)) as server:
            print(minimize(server, script, gen.pattern_kind, plugins, modes, args.minimize,
                           log=lambda s: print(s, file=sys.stderr, flush=True)))
        return 0

    from cdc_notebook import PostgresServer

    failed = 0
    totals: Counter[str] = Counter()
    with PostgresServer(version=int(args.pg)) as server:
        print(f"PostgreSQL {args.pg} ({server.conninfo().get('port')}); plugins "
              f"{', '.join(plugins)}; modes {', '.join(modes)}; "
              + (f"script {args.script}" if script else
                 f"{args.statements} statements per seed"), flush=True)
        for seed in seeds:
            schema = f"tort{seed}_{os.getpid() % 100000}"
            result = run_seed(server, seed, args.statements, plugins=plugins, modes=modes,
                              schema=schema, script=script, pattern_kind=args.pattern_kind,
                              catch_up_timeout=args.timeout,
                              log=lambda s: print(s, flush=True))
            failing = [c for c in result.consumers if c.result.mismatches and not c.cross]
            repro = reproduce_command(seed, args.statements, args.pg,
                                      [c.plugin for c in failing], [c.mode for c in failing])
            print(result.report(args.show, repro, args.verbose), flush=True)
            totals["statements"] += result.statements
            totals["truth changes"] += result.truth_changes
            for c in result.consumers:
                if c.cross:
                    totals["plugin differences"] += len(c.result.mismatches)
                    continue
                totals["changes compared"] += c.result.truth
                totals["equal"] += c.result.equal
                totals["mismatches"] += len(c.result.mismatches)
            failed += not result.ok
    print(f"{len(seeds)} seed(s), {failed} failed: " +
          ", ".join(f"{k} {v}" for k, v in totals.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SeedResult", "Unit", "main", "run_seed"]
