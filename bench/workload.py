"""The standard workload of ``bench-workload.md``, its wide-row (TOAST) variant, and the latency
driver. The SQL is the document's, verbatim; only the batch bounds are parameters.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;
CREATE TABLE bench.orders (
    id          bigint PRIMARY KEY,
    customer_id int,
    status      text,
    amount      numeric(12,2),
    created_at  timestamptz,
    is_paid     bool,
    note        text,
    payload     jsonb,
    ref         uuid
);
CREATE TABLE bench.customers (
    id         bigint PRIMARY KEY,
    name       text,
    email      text,
    region     text,
    created_at timestamptz
);
DROP PUBLICATION IF EXISTS bench_pub;
CREATE PUBLICATION bench_pub FOR TABLE bench.orders, bench.customers;
"""

INSERT_SQL = """
INSERT INTO bench.orders (id, customer_id, status, amount, created_at, is_paid, note, payload, ref)
SELECT g,
       (g * 7919 % 100000)::int,
       (ARRAY['new','paid','shipped','cancelled'])[1 + g % 4],
       ((g * 37) % 100000) / 100.0,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
       g % 3 = 0,
       'order note ' || lpad(g::text, 12, '0') || ' lorem ipsum dolor',
       jsonb_build_object('sku', 'SKU-' || (g % 5000), 'qty', 1 + g % 9, 'gift', g % 11 = 0),
       md5(g::text)::uuid
FROM generate_series(lo::bigint, hi::bigint) AS g
"""

UPDATE_SQL = """
UPDATE bench.orders SET status = 'shipped', amount = amount + 1, is_paid = true
WHERE id BETWEEN lo AND hi
"""

DELETE_SQL = "DELETE FROM bench.orders WHERE id BETWEEN lo AND hi"

LATENCY_INSERT_SQL = """
INSERT INTO bench.orders (id, customer_id, status, amount, created_at, is_paid, note, payload, ref)
SELECT id, 1, 'new', 1.00, t.ts, false,
       'lat:' || (extract(epoch FROM t.ts) * 1000000)::bigint,
       '{"sku": "SKU-1", "qty": 1, "gift": false}', md5(id::text)::uuid
FROM (SELECT clock_timestamp() AS ts) AS t
"""
# the latency run's rows: one id per row, far above the workload's ids
LATENCY_ID_BASE = 10**12
# the row that tells a streaming consumer the latency run is over
LATENCY_STOP_NOTE = "lat:stop"

# The wide-row variant (this harness's definition; bench/README.md documents it): rows whose
# ``body`` is stored out of line (STORAGE EXTERNAL: no compression, so every value > ~2 kB goes
# to the TOAST table), inserted, then every row updated without touching ``body`` (the
# unchanged-TOAST case that placeholder-writing connectors get wrong).
WIDE_SCHEMA_SQL = """
DROP TABLE IF EXISTS bench.documents;
CREATE TABLE bench.documents (
    id         bigint PRIMARY KEY,
    title      text,
    version    int,
    body       text,
    updated_at timestamptz
);
ALTER TABLE bench.documents ALTER COLUMN body SET STORAGE EXTERNAL;
DROP PUBLICATION IF EXISTS bench_wide_pub;
CREATE PUBLICATION bench_wide_pub FOR TABLE bench.documents;
"""
WIDE_BODY_CHARS = 2304  # 72 md5 digests: past the 2 kB TOAST threshold, two TOAST chunks

WIDE_INSERT_SQL = """
INSERT INTO bench.documents (id, title, version, body, updated_at)
SELECT g, 'document ' || g, 1, repeat(md5(g::text), 72),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(lo::bigint, hi::bigint) AS g
"""

WIDE_UPDATE_SQL = """
UPDATE bench.documents SET version = version + 1, title = title || ' (rev)'
WHERE id BETWEEN lo AND hi
"""

BATCH = 1000


def executable(text: str, names: tuple[str, ...]) -> str:
    """The document's SQL with its free names (lo, hi, id) as psycopg placeholders.

    The SQL above is kept as the document writes it; ``%`` (an operator there) is doubled.
    """
    text = text.replace("%", "%%")
    return re.sub(r"\b(" + "|".join(names) + r")\b(?=::|\s|,|$)",
                  lambda m: f"%({m.group(1)})s", text)


@dataclass
class WorkloadResult:
    events: int  # row changes committed (what every consumer must deliver)
    inserts: int
    updates: int
    deletes: int
    seconds: float
    end_lsn: int  # pg_current_wal_insert_lsn() after the flushing transaction
    wal_bytes: int


_INSERT_SQL = executable(INSERT_SQL, ("lo", "hi"))
_UPDATE_SQL = executable(UPDATE_SQL, ("lo", "hi"))
_DELETE_SQL = executable(DELETE_SQL, ("lo", "hi"))
_WIDE_INSERT_SQL = executable(WIDE_INSERT_SQL, ("lo", "hi"))
_WIDE_UPDATE_SQL = executable(WIDE_UPDATE_SQL, ("lo", "hi"))
# (``id`` is also a column name in the INSERT's column list: substitute after SELECT only)
_head, _sep, _tail = LATENCY_INSERT_SQL.partition("\nSELECT ")
LATENCY_INSERT = _head.replace("%", "%%") + _sep + executable(_tail, ("id",))


def _batches(lo: int, hi: int, size: int = BATCH):
    start = lo
    while start <= hi:
        yield start, min(start + size - 1, hi)
        start += size


def lsn_int(conn: psycopg.Connection, expr: str = "pg_current_wal_insert_lsn()") -> int:
    return int(conn.execute(f"SELECT {expr} - '0/0'::pg_lsn").fetchone()[0])


def flush_and_end_lsn(conn: psycopg.Connection) -> int:
    """Flush the WAL with a trivial synchronous transaction; return the end position.

    The transaction must write WAL, or its commit is not flushed (an xid alone, as from
    ``txid_current()``, writes none): it emits a transactional logical message, which pgoutput
    does not send (no ``messages`` option) and which consumers do not count as a row change.
    """
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT pg_logical_emit_message(true, 'bench_flush', '')")
    end = lsn_int(conn)
    # a background record (running xacts) inserted after the commit is flushed by the WAL
    # writer within wal_writer_delay: wait for it, so decoding up to ``end`` never waits
    deadline = time.monotonic() + 30
    while lsn_int(conn, "pg_current_wal_flush_lsn()") < end and time.monotonic() < deadline:
        time.sleep(0.01)
    return end


def create_schema(conn: psycopg.Connection) -> None:
    conn.execute(SCHEMA_SQL)


def run_standard(conn: psycopg.Connection, n: int) -> WorkloadResult:
    """N inserts, N/2 updates (ids 1..N/2), N/10 deletes (the highest ids), 1,000 per commit.

    ``conn`` must be in autocommit mode: each statement is its own transaction.
    """
    start_lsn = lsn_int(conn)
    t0 = time.perf_counter()
    counts = [0, 0, 0]
    for lo, hi in _batches(1, n):
        counts[0] += conn.execute(_INSERT_SQL, {"lo": lo, "hi": hi}).rowcount
    for lo, hi in _batches(1, n // 2):
        counts[1] += conn.execute(_UPDATE_SQL, {"lo": lo, "hi": hi}).rowcount
    for lo, hi in _batches(n - n // 10 + 1, n):
        counts[2] += conn.execute(_DELETE_SQL, {"lo": lo, "hi": hi}).rowcount
    end = flush_and_end_lsn(conn)
    return WorkloadResult(sum(counts), *counts, time.perf_counter() - t0, end, end - start_lsn)


def create_wide_schema(conn: psycopg.Connection) -> None:
    conn.execute(WIDE_SCHEMA_SQL)


def run_wide(conn: psycopg.Connection, rows: int) -> WorkloadResult:
    """``rows`` wide inserts, then ``rows`` updates leaving the TOASTed body unchanged."""
    start_lsn = lsn_int(conn)
    t0 = time.perf_counter()
    inserts = updates = 0
    for lo, hi in _batches(1, rows):
        inserts += conn.execute(_WIDE_INSERT_SQL, {"lo": lo, "hi": hi}).rowcount
    for lo, hi in _batches(1, rows):
        updates += conn.execute(_WIDE_UPDATE_SQL, {"lo": lo, "hi": hi}).rowcount
    end = flush_and_end_lsn(conn)
    return WorkloadResult(inserts + updates, inserts, updates, 0, time.perf_counter() - t0, end,
                          end - start_lsn)
