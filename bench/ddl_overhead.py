"""What the column history costs the application's DDL (pgoutput's exact column identity,
``cdc_notebook/provision/column_history.py``): the same DDL statements timed without and with
the event trigger installed, rounds alternating (ABAB...) on one throwaway server, medians.

    python -m bench.ddl_overhead --pg 15 --statements 500 --rounds 6

Kinds: a temporary table created and dropped (the trigger runs and records nothing), a column
added and dropped on an ordinary table (one row per command), a table created and dropped.
Writes ``bench/results/ddl-overhead-<date>-pg<N>.{md,json}``; the ratio is with / without.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cdc_notebook.provision import column_history
from cdc_notebook.server.postgres import PostgresServer

KINDS = {
    "temp table create + drop": ["CREATE TEMPORARY TABLE scratch (a int, b text)",
                                 "DROP TABLE scratch"],
    "add + drop column": ["ALTER TABLE target ADD COLUMN extra int",
                          "ALTER TABLE target DROP COLUMN extra"],
    "table create + drop": ["CREATE TABLE made (a int PRIMARY KEY, b text)", "DROP TABLE made"],
}


def _time_kind(conn: Any, statements: list[str], n: int) -> float:
    """Seconds per statement pair, over ``n`` pairs (on a new ``target``: a table holds at most
    1,600 attnums, dropped ones included)."""
    conn.execute("DROP TABLE IF EXISTS target")
    conn.execute("CREATE TABLE target (a int PRIMARY KEY, b text)")
    conn.execute("INSERT INTO target SELECT i, 'x' FROM generate_series(1, 1000) i")
    start = time.perf_counter()
    for _ in range(n):
        for stmt in statements:
            conn.execute(stmt)
    return (time.perf_counter() - start) / n


def run(pg: int, statements: int, rounds: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {k: {"without": [], "with": []} for k in KINDS}
    rows: list[int] = []  # history rows after each round with it
    settings = {"fsync": "off", "synchronous_commit": "off"}
    with PostgresServer(version=pg, settings=settings) as server, server.connect() as conn:
        for stmts in KINDS.values():  # warm-up
            _time_kind(conn, stmts, 20)
        for r in range(rounds):
            for installed in ((False, True) if r % 2 == 0 else (True, False)):
                if installed:
                    column_history.install(conn)
                else:
                    column_history.uninstall(conn)
                for kind, stmts in KINDS.items():
                    results[kind]["with" if installed else "without"].append(
                        _time_kind(conn, stmts, statements))
                if installed:  # what the trigger wrote: it was there
                    rows.append(conn.execute(
                        "SELECT count(*) FROM _cdc_notebook.column_history").fetchone()[0])
        version = conn.execute("SHOW server_version").fetchone()[0]
    summary = {}
    for kind, got in results.items():
        without, with_ = statistics.median(got["without"]), statistics.median(got["with"])
        summary[kind] = {"without_ms": without * 1e3, "with_ms": with_ * 1e3,
                         "ratio": with_ / without}
    return {"pg": version, "statements": statements, "rounds": rounds, "summary": summary,
            "raw": results, "history_rows": rows, "date": _dt.date.today().isoformat()}


def render(result: dict[str, Any]) -> str:
    lines = [f"# DDL with and without the column history: PostgreSQL {result['pg']}",
             "",
             f"`python -m bench.ddl_overhead` — {result['statements']} pairs per kind per round, "
             f"{result['rounds']} rounds alternating, medians of the per-pair times "
             f"({result['date']}).",
             "",
             "| DDL (a pair of statements) | without (ms) | with the history (ms) | with / without |",
             "|---|---|---|---|"]
    for kind, s in result["summary"].items():
        lines.append(f"| {kind} | {s['without_ms']:.3f} | {s['with_ms']:.3f} | "
                     f"{s['ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", type=int, choices=(15, 18), default=15)
    ap.add_argument("--statements", type=int, default=500, help="pairs per kind per round "
                    "(at most 1,500: dropped columns count towards a table's 1,600)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    result = run(args.pg, args.statements, args.rounds)
    stem = args.out / f"ddl-overhead-{result['date']}-pg{args.pg}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = render(result)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
