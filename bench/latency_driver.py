"""The latency run's writer: single-row transactions at a fixed rate, ``synchronous_commit = on``.

Run as its own process (``python -m bench.latency_driver JOB.json``) so that the harness, the
consumer and the writer do not share an interpreter. Each row carries ``clock_timestamp()`` in
its note (``lat:<epoch µs>``); a last row with the note ``lat:stop`` tells the consumer to stop.
Prints one JSON line: rows committed, the achieved rate, and the end LSN.
"""

from __future__ import annotations

import json
import sys
import time

import psycopg

from .workload import (
    LATENCY_ID_BASE,
    LATENCY_INSERT,
    LATENCY_STOP_NOTE,
    flush_and_end_lsn,
)


def drive(conninfo: dict, rate: float, seconds: float, id_base: int) -> dict:
    sql = LATENCY_INSERT
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        total = int(rate * seconds)
        t0 = time.perf_counter()
        late = 0
        for k in range(total):
            due = t0 + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.001:
                late += 1
            conn.execute(sql, {"id": id_base + k})
        elapsed = time.perf_counter() - t0
        conn.execute(
            "INSERT INTO bench.orders (id, note) VALUES (%s, %s)", (id_base + total, LATENCY_STOP_NOTE))
        end_lsn = flush_and_end_lsn(conn)
    return {"rows": total, "seconds": elapsed, "rate": total / elapsed if elapsed else 0.0,
            "late_rows": late, "end_lsn": end_lsn}


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        job = json.load(fh)
    result = drive(job["conninfo"], job["rate"], job["seconds"],
                   job.get("id_base", LATENCY_ID_BASE))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
