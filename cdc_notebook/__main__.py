"""Command line: ``python -m cdc_notebook demo`` (the main job) and friends."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from cdc_notebook.demo import run_demo

    return run_demo(version=args.pg, hold=args.hold, seconds=args.seconds, rate=args.rate)


def _lab(args: argparse.Namespace) -> int:
    from cdc_notebook.demo import run_lab

    return run_lab(ip=args.ip, port=args.port, open_browser=not args.no_browser,
                   allow_root=args.allow_root, fresh=args.fresh, extra=args.jupyter_args,
                   dry_run=args.dry_run)


def _build(args: argparse.Namespace) -> int:
    from cdc_notebook.server.build import build_plugin
    from cdc_notebook.server.postgres import find_installation
    from cdc_notebook.server.progress import TerminalProgress

    inst = find_installation(args.pg)
    out = build_plugin(inst.pg_config, force=args.force, progress=TerminalProgress(sys.stderr))
    print(f"wal2arrow for PostgreSQL {inst.version} ({inst.source}): {out / 'wal2arrow.so'}")
    return 0


def _sink(args: argparse.Namespace) -> int:
    from cdc_notebook.sinks.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdc_notebook",
                                     description="Arrow-native PostgreSQL CDC for notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the quickstart, headless: a throwaway PostgreSQL, a "
                          "workload streamed into live Polars frames, the live summary, stop")
    demo.add_argument("--pg", default=None,
                      help="PostgreSQL to use: 18 (embedded wheel, default), 15, or a pg_config path")
    demo.add_argument("--seconds", type=float, default=10.0,
                      help="how long the workload runs (default 10)")
    demo.add_argument("--rate", type=float, default=None,
                      help="row changes per second (default: as fast as the server takes them)")
    demo.add_argument("--hold", action="store_true",
                      help="after start-up, print READY and wait to be interrupted (for tests)")
    demo.set_defaults(func=_demo)
    lab = sub.add_parser(
        "lab", allow_abbrev=False, help="JupyterLab on working copies of the tutorial notebooks, at the quickstart",
        description="JupyterLab on working copies of the tutorial notebooks (in "
        "~/.local/share/cdc_notebook/notebooks), so the repository's stay clean. Options it "
        "does not know, and everything after --, go to JupyterLab as they are "
        "(e.g. -- --ServerApp.token=secret). As root, --allow-root is added.")
    lab.add_argument("--ip", default="127.0.0.1",
                     help="the address JupyterLab listens on (default 127.0.0.1)")
    lab.add_argument("--port", type=int, default=8888, help="its port (default 8888)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    lab.add_argument("--allow-root", action="store_true",
                     help="let JupyterLab run as root (added by itself when you are root)")
    lab.add_argument("--fresh", action="store_true",
                     help="copy the tutorial notebooks again, over your working copies")
    lab.add_argument("--dry-run", action="store_true",
                     help="make the working copies and print the command, do not start it")
    lab.set_defaults(func=_lab)
    build = sub.add_parser("build-plugin", help="build wal2arrow for a PostgreSQL installation")
    build.add_argument("--pg", default=None)
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=_build)
    sink = sub.add_parser("sink", help="a slot's tables into Delta Lake, exactly once "
                          "(needs the delta extra; --ray the ray extra)")
    from cdc_notebook.sinks.cli import add_arguments

    add_arguments(sink)
    sink.set_defaults(func=_sink)
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["lab"] and "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args, unknown = parser.parse_known_args(argv)
    if args.command == "lab":
        args.jupyter_args = unknown + passthrough
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    start = time.monotonic()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - start:.1f} s; the server was stopped "
              "and its directory removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
