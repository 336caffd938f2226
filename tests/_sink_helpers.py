"""Helpers for the Delta sink tests: workloads, a reference capture on a second slot, and the
comparisons (mirror against SELECT, changelog against the reference)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from cdc_notebook import CDCStream
from cdc_notebook.decode.events import Truncate

deltalake = __import__("pytest").importorskip("deltalake")


def create_tables(pg: Any, schema: str) -> None:
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.a (id bigint PRIMARY KEY, v text, big text)")
        conn.execute(f"ALTER TABLE {schema}.a ALTER big SET STORAGE EXTERNAL")
        conn.execute(f"CREATE TABLE {schema}.b (k1 int, k2 text, n numeric(10,2), "
                     "PRIMARY KEY (k1, k2))")


def scripted_workload(pg: Any, schema: str, round_: int) -> None:
    """Inserts, updates (unchanged TOAST values among them), key moves (to other partitions
    too), deletes, a TRUNCATE, and a transaction that does all of it to one row."""
    base = round_ * 100_000
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {schema}.a SELECT {base} + g, 'v' || g, repeat('x', 2500) || g "
                     "FROM generate_series(1, 400) g")
        conn.execute(f"INSERT INTO {schema}.b SELECT {base} + g, 'k' || g, g / 7.0 "
                     "FROM generate_series(1, 200) g")
        conn.execute(f"UPDATE {schema}.a SET v = v || '+' WHERE id BETWEEN {base} + 1 AND "
                     f"{base} + 60")  # big is an unchanged TOAST value
        conn.execute(f"UPDATE {schema}.a SET id = id + 50000 WHERE id BETWEEN {base} + 61 AND "
                     f"{base} + 90")  # key moves, TOAST unchanged
        conn.execute(f"DELETE FROM {schema}.a WHERE id BETWEEN {base} + 100 AND {base} + 140")
        conn.execute(f"UPDATE {schema}.b SET k2 = k2 || 'x' WHERE k1 <= {base} + 20")
        conn.execute(f"DELETE FROM {schema}.b WHERE k1 > {base} + 180")
        with conn.transaction():
            conn.execute(f"INSERT INTO {schema}.a VALUES ({base} + 90000, 'x', 'y')")
            conn.execute(f"UPDATE {schema}.a SET v = 'z' WHERE id = {base} + 90000")
            conn.execute(f"UPDATE {schema}.a SET id = {base} + 90001 WHERE id = {base} + 90000")
            conn.execute(f"UPDATE {schema}.a SET v = 'w', id = {base} + 90002 "
                         f"WHERE id = {base} + 2")
            conn.execute(f"DELETE FROM {schema}.a WHERE id = {base} + 3")
            conn.execute(f"INSERT INTO {schema}.a VALUES ({base} + 3, 'back', 'again')")
        if round_ == 1:
            conn.execute(f"TRUNCATE {schema}.b")
            conn.execute(f"INSERT INTO {schema}.b SELECT {base} + g, 'after', g / 3.0 "
                         "FROM generate_series(1, 30) g")


class ContinuousWriter:
    """Inserts, updates (key moves among them) and deletes on ``schema``.a and .b until
    stopped, in transactions of 1-30 changes, with a TRUNCATE of .b now and then."""

    def __init__(self, pg: Any, schema: str, seed: int = 7, truncate_every: float = 0.0):
        self.pg, self.schema = pg, schema
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.truncate_every = truncate_every
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ContinuousWriter:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # noqa: BLE001 - raised by finish()
            self.error = exc

    def _write(self) -> None:
        rng, s = self.rng, self.schema
        next_id = 1
        last_truncate = time.monotonic()
        with self.pg.connect() as conn:
            while not self.stop.is_set():
                if self.truncate_every and time.monotonic() - last_truncate > self.truncate_every:
                    conn.execute(f"TRUNCATE {s}.b")
                    last_truncate = time.monotonic()
                with conn.transaction():
                    for _ in range(rng.randint(1, 30)):
                        table = rng.choice(("a", "b"))
                        roll = rng.random()
                        if roll < 0.55 or next_id < 20:
                            conn.execute(f"INSERT INTO {s}.{table} (id, v) VALUES (%s, %s)",
                                         (next_id, f"v{next_id}"))
                            next_id += 1
                        elif roll < 0.75:
                            conn.execute(f"UPDATE {s}.{table} SET v = v || '+' WHERE id = %s",
                                         (rng.randrange(1, next_id),))
                        elif roll < 0.88:
                            conn.execute(f"UPDATE {s}.{table} SET id = %s WHERE id = %s",
                                         (next_id, rng.randrange(1, next_id)))
                            next_id += 1
                        else:
                            conn.execute(f"DELETE FROM {s}.{table} WHERE id = %s",
                                         (rng.randrange(1, next_id),))
                time.sleep(0.002)


def create_simple_tables(pg: Any, schema: str) -> None:
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {schema}.{table} (id bigint PRIMARY KEY, v text)")


class Reference:
    """Every change of ``pattern``, read on a temporary slot of its own created now: the
    ground truth the changelog is compared with."""

    def __init__(self, pg: Any, pattern: str, plugin: str):
        self.stream = CDCStream(pg.conninfo(), pattern, temporary=True, plugin=plugin)

    def changes(self, keys: dict[str, str]) -> dict[str, Counter[tuple[Any, ...]]]:
        """Per table: (end_lsn, ordinal, op, key) of every change, counted."""
        out: dict[str, Counter[tuple[Any, ...]]] = {}
        try:
            for name, reader in self.stream.readers.items():
                key = keys[name.split(".")[-1]]
                found: Counter[tuple[Any, ...]] = Counter()
                for event in reader.events():
                    if isinstance(event, pa.RecordBatch):
                        for row in change_keys(pa.Table.from_batches([event]), key):
                            found[row] += 1
                    elif isinstance(event, Truncate):
                        found[(event.end_lsn, event.ordinal, "t", None)] += 1
                out[name] = found
        finally:
            self.stream.close()
        return out


def change_keys(table: pa.Table, key: str) -> list[tuple[Any, ...]]:
    """(end_lsn, ordinal, op, key) per change row; a delete's key is its before-image's."""
    rows = []
    ends = table.column("_cdc_end_lsn").to_pylist()
    ords = table.column("_cdc_ordinal").to_pylist()
    ops = table.column("_cdc_op").to_pylist()
    keys = table.column(key).to_pylist()
    before = table.column("_cdc_before").to_pylist()
    for e, o, op, k, b in zip(ends, ords, ops, keys, before, strict=True):
        if op == "t":
            k = None
        elif op == "d":
            k = (b or {}).get(key)
        rows.append((e, o, op, k))
    return rows


def changelog(directory: Path, table: str, key: str) -> Counter[tuple[Any, ...]]:
    data = deltalake.DeltaTable(str(directory / f"{table}.changes")).to_pyarrow_table()
    return Counter(change_keys(data, key))


def mirror_rows(directory: Path, table: str) -> list[tuple[Any, ...]]:
    data = deltalake.DeltaTable(str(directory / table)).to_pyarrow_table()
    names = [n for n in data.column_names if not n.startswith("_cdc_")]
    return sorted(tuple(r[n] for n in names) for r in data.select(names).to_pylist())


def select_rows(pg: Any, table: str, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
    cols = "*" if columns is None else ", ".join(columns)
    with pg.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(f"SELECT {cols} FROM {table}").fetchall())


def assert_mirror_equals_select(pg: Any, directory: Path, table: str) -> int:
    got = mirror_rows(directory, table)
    want = select_rows(pg, table)
    if got != want:
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        short = [tuple(str(v)[:40] for v in r) for r in missing], \
            [tuple(str(v)[:40] for v in r) for r in extra]
        raise AssertionError(f"{table}: mirror {len(got)} rows, SELECT {len(want)}; "
                             f"missing {short[0]}, extra {short[1]}")
    return len(got)


def assert_changelog_exact(directory: Path, table: str, key: str,
                           reference: Counter[tuple[Any, ...]]) -> int:
    got = changelog(directory, table, key)
    duplicated = {k: n for k, n in got.items() if n > 1}
    lost = reference - got
    extra = got - reference
    assert not duplicated, f"{table}: {len(duplicated)} duplicated changes, e.g. " \
                           f"{list(duplicated.items())[:3]}"
    assert not lost, f"{table}: {sum(lost.values())} lost changes, e.g. {list(lost)[:3]}"
    assert not extra, f"{table}: {sum(extra.values())} changes not in the stream, " \
                      f"e.g. {list(extra)[:3]}"
    return sum(got.values())


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
