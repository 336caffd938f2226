"""Issue 6's snapshot goal, measured side by side in one run: the kit's snapshot against binary
COPY drained by psql (plain ``COPY ... TO STDOUT (FORMAT binary)`` to /dev/null), on the same
transport.

    python -m bench.snapshot_perf                        # PG 15 and 18, N=1,000,000, 3 rounds
    python -m bench.snapshot_perf --versions 18 --rounds 5 --rows 200000

One throwaway server per version with the harness's settings (``bench.run.BENCH_SETTINGS``),
loaded with the standard workload (``bench/workload.py``: N inserts, N/2 updates, N/10 deletes;
the snapshot reads ``bench.orders``, N - N/10 rows). In each round, in an order rotated from
round to round, over the Unix socket and over TCP:

* ``psql``: ``COPY bench.orders TO STDOUT (FORMAT binary)`` run by psql with ``-o /dev/null``
  (binary COPY drained by psql; the process' wall time);
* ``kit``: ``snapshot_table`` with its defaults (chunks received by the native decoder through
  psycopg's libpq), every batch a ``pyarrow.RecordBatch``;
* ``kit_messages``: the same with the fallback reader (messages taken on psycopg's pq layer),
  for reference.

Each kit run is its own process (``--client SPEC``): its clock starts once the exported snapshot
exists (as in ``bench/consumers/kit_snapshot.py``); its CPU time and peak RSS are reported too.
Results: medians and ratios to binary COPY drained by psql on standard output (Markdown), the
raw figures with ``--json PATH``. Timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GOAL = 0.8
TABLE = "bench.orders"


def log(msg: str) -> None:
    print(f"[snapshot_perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def client(spec: dict[str, Any]) -> dict[str, Any]:
    """One snapshot of the table, in this process (``--client``)."""
    import pyarrow  # noqa: F401  (imported before the clock starts)

    from cdc_notebook.snapshot import tables as snapshot

    snapshot.NATIVE_READ = spec["native"]
    conninfo = spec["conninfo"]
    rows = batches = 0
    with snapshot.ExportedSnapshot(conninfo, f"snapperf_{os.getpid()}", plugin="pgoutput",
                                   temporary=True) as snap:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for batch in snapshot.snapshot_table(conninfo, TABLE, snap):
            rows += batch.num_rows
            batches += 1
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rows": rows, "batches": batches, "seconds": seconds, "cpu": cpu,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_kit(conninfo: dict[str, Any], native: bool) -> dict[str, Any]:
    spec = json.dumps({"conninfo": conninfo, "native": native})
    out = subprocess.run([sys.executable, "-m", "bench.snapshot_perf", "--client", spec],
                         check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout)


def run_psql(bindir: str, dsn: str) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([str(Path(bindir) / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                    "-o", "/dev/null", "-c", f"COPY {TABLE} TO STDOUT (FORMAT binary)"],
                   check=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds, "cpu": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime)}


def measure(version: int, rows: int, rounds: int) -> dict[str, Any]:
    from bench import workload
    from bench.run import BENCH_SETTINGS
    from cdc_notebook.server.postgres import PostgresServer

    with PostgresServer(version=version, settings=BENCH_SETTINGS, plugin=False) as server:
        with server.connect() as conn:
            workload.create_schema(conn)
            log(f"PG {server.version}: standard workload, N={rows:,}")
            workload.run_standard(conn, rows)
            conn.execute("CHECKPOINT")
            expected = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        bindir = str(server.installation.bindir)
        runs = [(t, name) for t in ("unix", "tcp") for name in ("psql", "kit", "kit_messages")]
        results: dict[str, list[dict[str, Any]]] = {f"{n}_{t}": [] for t, n in runs}
        for r in range(rounds):
            shift = r % len(runs)
            for transport, name in runs[shift:] + runs[:shift]:
                if name == "psql":
                    res = run_psql(bindir, server.dsn(transport))
                    res["rows"] = expected
                else:
                    res = run_kit(server.conninfo(transport), native=name == "kit")
                    if res["rows"] != expected:
                        raise RuntimeError(f"{name} read {res['rows']} rows, not {expected}")
                results[f"{name}_{transport}"].append(res)
                log(f"round {r + 1} {name}_{transport}: {expected / res['seconds']:,.0f} rows/s")
        return {"version": server.version, "rows": expected, "runs": results}


def summary(result: dict[str, Any]) -> str:
    lines = [f"### PostgreSQL {result['version']} ({result['rows']:,} rows, medians of "
             f"{len(next(iter(result['runs'].values())))} rounds)", "",
             "| run | rows/s | × binary COPY drained by psql (same transport) | client CPU s "
             "| peak RSS MB |",
             "|---|---:|---:|---:|---:|"]
    for transport in ("unix", "tcp"):
        psql = statistics.median(r["seconds"] for r in result["runs"][f"psql_{transport}"])
        for name in ("psql", "kit", "kit_messages"):
            runs = result["runs"][f"{name}_{transport}"]
            seconds = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max((r.get("max_rss_mb", 0) for r in runs), default=0)
            lines.append(f"| {name}_{transport} | {result['rows'] / seconds:,.0f} | "
                         f"{psql / seconds:.2f} | {cpu:.2f} | {rss:.0f} |" if name != "psql"
                         else f"| {name}_{transport} (binary COPY drained by psql) | "
                         f"{result['rows'] / seconds:,.0f} "
                         f"| 1.00 | {cpu:.2f} | |")
    lines.append(f"\nGoal: kit ≥ {GOAL}× binary COPY drained by psql on the same transport.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot_perf",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="15,18")
    parser.add_argument("--rows", type=int, default=1_000_000, help="the workload's N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the raw figures there")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(client(json.loads(args.client))))
        return 0
    results = [measure(int(v), args.rows, args.rounds) for v in args.versions.split(",")]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n\n".join(summary(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
