"""``python -m cdc_notebook sink``: a slot's tables into Delta Lake, exactly once, without a
notebook.

::

    python -m cdc_notebook sink --dsn "host=db dbname=shop user=cdc" --tables "public.*" \\
        --slot lake --to delta:/data/lake [--changelog] [--partitions N] [--ray local|ADDRESS] \\
        [--once]

``--once`` drains to the server's WAL position at the start and exits 0; otherwise it follows
the stream until SIGTERM or Ctrl-C, which stop it after the commit in progress (and one more of
what it holds). Running it again with the same slot resumes where the Delta tables are. One
progress line per second; the connection string is shown with its password masked.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from cdc_notebook.connection.conninfo import redact_conninfo, redact_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", required=True, help="libpq connection string or URI")
    parser.add_argument("--tables", required=True,
                        help='table patterns, comma-separated (e.g. "public.*,!public.audit_*")')
    parser.add_argument("--slot", required=True,
                        help="the permanent replication slot (created when missing); the same "
                        "slot resumes")
    parser.add_argument("--to", required=True, metavar="delta:DIR",
                        help="where the Delta tables go: delta:DIR (a directory or a URI)")
    parser.add_argument("--changelog", action="store_true",
                        help="also write DIR/<schema>.<table>.changes, every change once")
    parser.add_argument("--partitions", type=int, default=1,
                        help="key-hash partitions, each written by its own writer (default 1)")
    parser.add_argument("--ray", default=None, metavar="local|ADDRESS",
                        help="write the partitions on Ray actors: a local Ray, or a cluster")
    parser.add_argument("--once", action="store_true",
                        help="drain to the server's current WAL position, then exit 0")
    parser.add_argument("--plugin", default=None, choices=("wal2arrow", "pgoutput"),
                        help="output plugin (default: wal2arrow where the server allows it)")
    parser.add_argument("--publication", default=None, help="publication name (default: the kit's)")
    parser.add_argument("--max-rows", type=int, default=250_000,
                        help="rows per micro-batch at most (default 250,000)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds a change waits for its micro-batch at most (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _target(text: str) -> str:
    scheme, sep, rest = text.partition(":")
    if not sep or scheme != "delta" or not rest:
        raise SystemExit(f"--to {text!r}: expected delta:DIR (a directory or a URI)")
    return rest


def run(args: argparse.Namespace) -> int:
    from cdc_notebook.connection.lsn import format_lsn
    from cdc_notebook.errors import CDCError
    from cdc_notebook.sinks.delta import DeltaSink, SinkProgress
    from cdc_notebook.stream.cdc_stream import CDCStream

    directory = _target(args.to)
    if args.partitions < 1:
        raise SystemExit("--partitions must be at least 1")
    for module, extra in (("deltalake", "delta"), ("ray", "ray")):
        if module == "ray" and not args.ray:
            continue
        try:
            __import__(module)
        except ImportError:
            print(f"error: the sink needs {module}\nfix: pip install 'cdc-notebook[{extra}]' "
                  f"(from a clone: pip install -e '.[{extra}]')", file=sys.stderr, flush=True)
            return 1
    shown = redact_conninfo(args.dsn)
    print(f"sink: {shown} | tables {args.tables} | slot {args.slot} | delta:{directory}"
          + (" + changelog" if args.changelog else "")
          + (f" | {args.partitions} partitions" if args.partitions > 1 else "")
          + (f" on Ray ({args.ray})" if args.ray else ""), flush=True)
    stream: Any = None
    sink: DeltaSink | None = None
    stopped_by: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopped_by.append(signal.Signals(signum).name)
        if sink is not None:
            sink.stop()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        stream = CDCStream(args.dsn, args.tables, slot_name=args.slot, plugin=args.plugin,
                           publication=args.publication, acknowledge="durable")
        print(f"stream: {stream.plugin_reason}", flush=True)
        sink = DeltaSink(stream, directory, changelog=args.changelog,
                         partitions=args.partitions, ray=args.ray, max_rows=args.max_rows,
                         interval=args.interval)
        if stopped_by:
            sink.stop()
        placement = getattr(sink.committer, "placement", None)
        if placement is not None:
            for i, where in enumerate(placement()):
                print(f"ray: partition {i} on node {where['node_id'][:12]} ({where['host']}, "
                      f"pid {where['pid']})", flush=True)

        def progress(report: SinkProgress) -> None:
            if not args.quiet:
                print(report.line(), flush=True)

        try:
            report = sink.run(once=args.once, progress=progress)
        except KeyboardInterrupt:
            print("interrupted: stopped after the commits in progress; run the same command "
                  "again to resume", flush=True)
            return 130
        for label, position in sorted(sink.resumed.items()):
            if position > (0, 0):
                print(f"  {label}: resumed after {format_lsn(position[0])} #{position[1]}")
        how = ("caught up" if args.once else
               f"stopped ({stopped_by[0]})" if stopped_by else "stopped")
        print(f"{how}: {report.committed:,} changes committed in {report.elapsed:.1f} s "
              f"({report.rate:,.0f}/s), {report.mirror_commits} mirror and "
              f"{report.changelog_commits} changelog commits, acknowledged "
              f"{format_lsn(report.acknowledged_lsn)}", flush=True)
        return 0
    except CDCError as exc:
        hint = getattr(exc, "hint", None)
        print(redact_text(f"error: {exc}" + (f"\nfix: {hint}" if hint else "")),
              file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stream is not None:
            stream.close()
