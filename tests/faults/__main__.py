"""The full form of the fault suite.

    python -m tests.faults --changes 1000000 --pg 15 --plugin both --faults all

Each fault × plugin runs on its own throwaway server (``PostgresServer(version=...)`` with the
fault's settings): writer, consumer process, fault, recovery, drain, comparison
(``tests/faults/harness.py``). Prints the results table and writes it, with the command, the
machine and the date, into ``docs/reliability.md`` (the section of that PostgreSQL version and
number of changes, replaced on the next such run).
Exit status 1 if any fault failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.harness import FAULTS, PLUGINS, EnvironmentUnavailable, Result, run_fault
from tests.faults.report import section, table, update_doc

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=1_000_000,
                        help="changes written per fault (default 1,000,000)")
    parser.add_argument("--pg", default="18", choices=["15", "18"],
                        help="PostgreSQL major version")
    parser.add_argument("--plugin", default="both", choices=["both", *PLUGINS])
    parser.add_argument("--faults", default="all",
                        help=f"comma-separated, or all: {', '.join(FAULTS)}")
    parser.add_argument("--rate", type=float, default=None,
                        help="writer changes per second (default: as fast as it goes)")
    parser.add_argument("--batch-delay", type=float, default=0.1,
                        help="seconds the consumer sleeps per batch before the fault (backlog)")
    parser.add_argument("--doc", default=str(REPO / "docs" / "reliability.md"),
                        help="Markdown file whose PostgreSQL section is rewritten ('' for none)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)

    from cdc_notebook import PostgresServer

    names = list(FAULTS) if args.faults == "all" else [f.strip() for f in args.faults.split(",")]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {list(FAULTS)}")
    plugins = list(PLUGINS) if args.plugin == "both" else [args.plugin]
    command = "python -m tests.faults " + " ".join(shlex.quote(a) for a in (
        argv if argv is not None else sys.argv[1:]))
    started = time.monotonic()
    results: list[Result] = []
    for name in names:
        for plugin in plugins:
            t0 = time.monotonic()
            workdir = Path(tempfile.mkdtemp(prefix=f"faults-{name}-{plugin}-"))

            def say(msg: str, t0: float = t0) -> None:
                print(f"  [{time.monotonic() - t0:7.1f} s] {msg}", flush=True)

            print(f"== {name} / {plugin} / PostgreSQL {args.pg}: {args.changes:,} changes",
                  flush=True)
            with PostgresServer(version=int(args.pg),
                                settings=FAULTS[name].settings) as server:
                try:
                    result = run_fault(server, plugin, name, changes=args.changes,
                                       workdir=workdir, rate=args.rate, say=say,
                                       batch_delay=args.batch_delay)
                except EnvironmentUnavailable as exc:
                    print(f"  not run here: {exc}", flush=True)
                    continue
            results.append(result)
            print(result.explain(), flush=True)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(table(results))
    if args.doc and results:
        update_doc(args.doc, f"pg{args.pg}-{args.changes}",
                   section(results, command, args.pg, args.changes, elapsed))
        print(f"\nwritten to {args.doc}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=1,
                                              default=str))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
