"""The main job: the quickstart, headless. A throwaway PostgreSQL with wal2arrow, a workload,
a live reader streaming it into Polars frames, the live summary printed while it runs, the
frames checked against SQL, everything removed.

``notebooks/01_quickstart.ipynb`` runs the same steps in a kernel (with the dashboard); the
workload and the SQL comparison used there live here so both say the same thing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from cdc_notebook.connection.conninfo import one_row
from cdc_notebook.connection.lsn import format_lsn
from cdc_notebook.server.postgres import PostgresServer

SHOP_SQL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE {schema}.customers (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    region     text
);
CREATE TABLE {schema}.orders (
    id          bigint PRIMARY KEY,
    customer_id bigint,
    status      text,
    amount      numeric(12,2),
    is_paid     bool,
    note        text
);
"""

# One round of the workload, all in SQL (set-based: no row goes through Python). Each round is
# one transaction: new customers, new orders, updates of recent orders, a key change (an order
# renumbered), deletes of the oldest orders.
ROUND_SQL = """
INSERT INTO {schema}.customers (id, name, region)
SELECT g, 'customer ' || g, (ARRAY['north','south','east','west'])[1 + g %% 4]
FROM generate_series(%(c_lo)s::bigint, %(c_hi)s::bigint) g;
INSERT INTO {schema}.orders (id, customer_id, status, amount, is_paid, note)
SELECT g, 1 + g %% %(c_hi)s, 'new', ((g * 37) %% 100000) / 100.0, false,
       'order ' || lpad(g::text, 10, '0')
FROM generate_series(%(o_lo)s::bigint, %(o_hi)s::bigint) g;
UPDATE {schema}.orders SET status = 'paid', is_paid = true, amount = amount + 1
WHERE id BETWEEN %(u_lo)s AND %(u_hi)s;
UPDATE {schema}.orders SET id = %(moved_to)s, note = 'renumbered from ' || id
WHERE id = %(moved_from)s;
DELETE FROM {schema}.orders WHERE id BETWEEN %(d_lo)s AND %(d_hi)s;
"""


class Workload:
    """A shop's writes, in a background thread: inserts, updates, key changes and deletes.

    Every round is one transaction of about ``batch * 1.7`` row changes. ``rate`` bounds the
    row changes per second (None: as fast as the server takes them). Counters say what was
    written; ``error`` keeps what stopped it (its repr, and :meth:`wait`, say so).
    ``conninfo``: a DSN string (``"host=... dbname=..."`` or a URL) or a dict of libpq
    parameters (``server.conninfo()``).
    """

    def __init__(self, conninfo: str | dict[str, Any], *, schema: str = "shop",
                 batch: int = 1_000) -> None:
        from cdc_notebook.connection.conninfo import parse_conninfo

        self.conninfo = parse_conninfo(conninfo)
        self.schema = schema
        self.batch = batch
        self.rounds = 0
        self.changes = 0
        self.error: BaseException | None = None
        self._next_order = 1
        self._next_customer = 1
        self._oldest = 1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # One statement per execute: bound parameters go through the extended protocol.
        self._statements = [part.strip() for part in ROUND_SQL.format(schema=schema).split(";")
                            if part.strip()]

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        failed = ""
        if self.error is not None:
            from cdc_notebook.briefly import describe_error

            state, failed = "failed", f"; error: {describe_error(self.error)}"
        return (f"<Workload {self.schema} {state}: {self.rounds} transactions, "
                f"{self.changes:,} row changes{failed}>")

    @property
    def state(self) -> str:
        """``running``, ``failed`` (see ``error``) or ``idle``."""
        return "running" if self.running else "failed" if self.error is not None else "idle"

    def _connect(self) -> Any:
        from cdc_notebook.connection.conninfo import connect

        return connect(self.conninfo, application_name="cdc_notebook workload")

    def create(self) -> Workload:
        """Create the schema and its two tables (fails when they exist)."""
        with self._connect() as conn:
            conn.execute(SHOP_SQL.format(schema=self.schema))
        return self

    def run_round(self, conn: Any) -> int:
        """One transaction of the workload; returns its row changes."""
        b = self.batch
        o_lo = self._next_order
        o_hi = o_lo + b - 1
        c_lo = self._next_customer
        c_hi = c_lo + max(1, b // 100) - 1
        u_lo = max(self._oldest, o_hi - b // 2 + 1)
        d_lo, d_hi = self._oldest, self._oldest + b // 10 - 1
        params = {"c_lo": c_lo, "c_hi": c_hi, "o_lo": o_lo, "o_hi": o_hi, "u_lo": u_lo,
                  "u_hi": o_hi,
                  "moved_from": o_hi - b // 2 - 1 if o_hi - b // 2 - 1 > d_hi else o_hi,
                  "moved_to": o_hi + 1, "d_lo": d_lo, "d_hi": d_hi}
        with conn.transaction():
            for statement in self._statements:
                conn.execute(statement, {k: v for k, v in params.items()
                                         if f"%({k})s" in statement})
        self._next_order = o_hi + 2  # o_hi + 1 is the renumbered order's new key
        self._next_customer = c_hi + 1
        self._oldest = d_hi + 1
        changes = (c_hi - c_lo + 1) + b + (o_hi - u_lo + 1) + 1 + (d_hi - d_lo + 1)
        self.rounds += 1
        self.changes += changes
        return changes

    def run(self, rounds: int) -> Workload:
        """Run ``rounds`` transactions now, in this thread."""
        with self._connect() as conn:
            for _ in range(rounds):
                self.run_round(conn)
        return self

    def start(self, *, rate: float | None = None, duration: float | None = None,
              rounds: int | None = None) -> Workload:
        """Write in the background until :meth:`stop`, ``duration`` seconds or ``rounds``."""
        if self.running:
            return self
        self._stop.clear()
        self.error = None
        self._thread = threading.Thread(target=self._loop, args=(rate, duration, rounds),
                                        name="cdc-demo-workload", daemon=True)
        self._thread.start()
        return self

    def _loop(self, rate: float | None, duration: float | None, rounds: int | None) -> None:
        started = time.monotonic()
        done = 0
        try:
            with self._connect() as conn:
                while not self._stop.is_set():
                    if duration is not None and time.monotonic() - started >= duration:
                        return
                    if rounds is not None and done >= rounds:
                        return
                    changes = self.run_round(conn)
                    done += 1
                    if rate:
                        self._stop.wait(changes / rate)
        except Exception as exc:  # noqa: BLE001 - kept for the caller, and said at once
            self.error = exc
            from cdc_notebook.briefly import describe_error

            # A background thread's failure is otherwise silent (a dashboard would only show
            # 0 events/s): one line where the cell that started it shows its output.
            print(f"cdc_notebook: the workload stopped: {describe_error(exc)}",
                  file=sys.stderr)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Workload:
        """Wait for a bounded run (``duration``/``rounds``) to end; raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> Workload:
        self._stop.set()
        return self.wait(30)


def sql_frame(conn: Any, query: str, like: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``query`` as a Polars frame with ``like``'s columns and types.

    The rows travel as CSV (``COPY ... TO STDOUT``) and are parsed by Polars in one go, so the
    comparison with a live frame involves no per-row Python.
    """
    buffer = io.BytesIO()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)") as copy:
        for chunk in copy:
            buffer.write(chunk)
    text_schema = {name: (pl.String if dtype == pl.Boolean else dtype)
                   for name, dtype in like.schema.items()}
    frame = pl.read_csv(buffer.getvalue(), schema=text_schema) if buffer.tell() else \
        like.clear()
    booleans = [n for n, t in like.schema.items() if t == pl.Boolean]
    return frame.with_columns([pl.col(n) == "t" for n in booleans])


def assert_mirror_matches(reader: Any, conn: Any, table: str,
                          key: str | list[str] | tuple[str, ...] = "id") -> int:
    """The table's mirror equals ``SELECT * FROM table ORDER BY key``; returns the row count."""
    from polars.testing import assert_frame_equal

    keys = [key] if isinstance(key, str) else list(key)
    mirror: pl.DataFrame = reader[table].mirror().sort(keys)
    columns = ", ".join(f'"{c}"' for c in mirror.columns)
    order = ", ".join(f'"{k}"' for k in keys)
    expected = sql_frame(conn, f"SELECT {columns} FROM {table} ORDER BY {order}", mirror)
    assert_frame_equal(mirror, expected)
    return mirror.height


def run_quickstart(server: PostgresServer, *, seconds: float = 10.0, rate: float | None = None,
                   say: Callable[[str], None] = print, interval: float = 1.0) -> dict[str, int]:
    """The quickstart's steps against a running server; returns rows per table."""
    from cdc_notebook.live.tables import LiveReader
    from cdc_notebook.stream.cdc_stream import CDCStream
    from cdc_notebook.widgets.summary import SummaryModel

    workload = Workload(server.conninfo()).create()
    say("  created shop.customers and shop.orders")
    stream = CDCStream(server.conninfo(), "shop.*", temporary=True)
    reader = LiveReader(stream).start()
    say(f"  streaming {', '.join(stream.readers)} through temporary slot "
        f"{stream.slot.slot_name} ({stream.plugin})")
    summary = SummaryModel(reader.frames, reader=reader)
    summary.sample()  # the first sample: rates are measured from here
    try:
        workload.start(rate=rate, duration=seconds)
        say(f"  workload: inserts, updates, key changes and deletes for {seconds:.0f} s "
            f"({'full speed' if not rate else f'{rate:,.0f} rows/s'})")
        next_line = time.monotonic() + interval
        while workload.running:
            time.sleep(max(0.0, min(0.1, next_line - time.monotonic())))
            if time.monotonic() >= next_line:
                summary.poll_lag(wait=True)
                say("  " + summary.sample().text())
                next_line += interval
        workload.wait()
        lsn = reader.catch_up(timeout=120)
        summary.poll_lag(wait=True)
        say("  " + summary.sample().text())
        rows = {}
        with server.connect() as conn:
            for table in ("shop.customers", "shop.orders"):
                rows[table] = assert_mirror_matches(reader, conn, table)
        say(f"  caught up at {format_lsn(lsn)}: the live frames equal SELECT * ORDER BY id "
            f"({', '.join(f'{t} {n:,} rows' for t, n in rows.items())})")
        return rows
    finally:
        summary.close()
        reader.stop()
        with server.connect() as conn:
            left = one_row(conn.execute("SELECT count(*) FROM pg_replication_slots"))[0]
            pubs = one_row(conn.execute("SELECT count(*) FROM pg_publication"))[0]
        say(f"  reader stopped; the temporary slot and its publication are gone ({left} "
            f"slot(s), {pubs} publication(s) left)")


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(version: int | str | None = None, *, hold: bool = False, seconds: float = 10.0,
             rate: float | None = None) -> int:
    from cdc_notebook.server.progress import TerminalProgress

    t0 = time.monotonic()
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    # Every long step shows: on a terminal one updating line (bytes, files compiled, elapsed
    # time), in a log a line when each step starts and ends.
    server = PostgresServer(version=version, progress=TerminalProgress(sys.stderr))
    _say(f"starting PostgreSQL {server.version} ({server.installation.source}) "
         "with wal_level=logical and wal2arrow ...")
    with server:
        _say(f"  ready in {time.monotonic() - t0:.1f} s: {server!r}")
        if hold:
            _say(f"READY {server.instance_dir} {server.pid}")
            while True:
                time.sleep(0.2)
        run_quickstart(server, seconds=seconds, rate=rate, say=_say)
    _say(f"stopped; server directory removed. total {time.monotonic() - t0:.1f} s")
    return 0


def notebooks_source() -> Path:
    """The repository's tutorial notebooks (next to the package in a checkout)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def working_notebooks_dir() -> Path:
    """Where ``lab`` keeps the user's working copies: ``$CDC_NOTEBOOK_WORKDIR``, else
    ``$XDG_DATA_HOME/cdc_notebook/notebooks`` (``~/.local/share/cdc_notebook/notebooks``)."""
    env = os.environ.get("CDC_NOTEBOOK_WORKDIR")
    if env:
        return Path(os.path.abspath(env))
    data = os.environ.get("XDG_DATA_HOME", "")
    if not (data and os.path.isabs(data)):
        data = str(Path(os.environ.get("HOME") or Path.home()) / ".local" / "share")
    return Path(data) / "cdc_notebook" / "notebooks"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def working_copies(source: Path, dest: Path, *, fresh: bool = False) -> dict[str, str]:
    """Copy the tutorial notebooks into ``dest`` (a private directory): a missing one, or one
    the user has not changed since it was copied (so a newer tutorial replaces it); a copy the
    user edited is kept (``fresh=True`` replaces it too). Returns name -> what happened."""
    from cdc_notebook.server.private import ensure_private_dir

    ensure_private_dir(dest)
    manifest_path = dest / ".copied.json"
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    outcome: dict[str, str] = {}
    for notebook in sorted(source.glob("*.ipynb")):
        target = dest / notebook.name
        new = _sha256(notebook)
        if target.is_symlink():
            target.unlink()
        if not target.exists():
            outcome[notebook.name] = "copied"
        elif _sha256(target) == new:
            outcome[notebook.name] = "up to date"
            manifest[notebook.name] = new
            continue
        elif fresh or _sha256(target) == manifest.get(notebook.name):
            outcome[notebook.name] = "updated"
        else:
            outcome[notebook.name] = "kept (you changed it)"
            continue
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(notebook, tmp)
        os.replace(tmp, target)
        manifest[notebook.name] = new
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return outcome


def lab_command(root_dir: Path, *, ip: str = "127.0.0.1", port: int | None = 8888,
                open_browser: bool = True, allow_root: bool = False,
                extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The JupyterLab command line: ours first, the user's options after (they win)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ip={ip}",
           f"--ServerApp.root_dir={root_dir}",
           "--ServerApp.default_url=/lab/tree/01_quickstart.ipynb"]
    if port is not None:
        cmd.append(f"--port={port}")
    if not open_browser:
        cmd.append("--no-browser")
    if allow_root or (os.geteuid() == 0 and "--allow-root" not in extra):
        cmd.append("--allow-root")  # JupyterLab refuses root without it
    return cmd + list(extra)


def run_lab(*, ip: str = "127.0.0.1", port: int | None = 8888, open_browser: bool = True,
            allow_root: bool = False, fresh: bool = False,
            extra: list[str] | tuple[str, ...] = (), dry_run: bool = False) -> int:
    """JupyterLab on working copies of the tutorial notebooks, opened on the quickstart.

    The copies live in :func:`working_notebooks_dir`, so running the notebooks never rewrites
    the repository's. ``extra`` goes to JupyterLab as is (``--ServerApp.token=...``, ...);
    as root ``--allow-root`` is added. ``dry_run``: print the command, do not start it.
    """
    import subprocess

    source = notebooks_source()
    if not (source / "01_quickstart.ipynb").is_file():
        _say(f"the tutorial notebooks are not next to this installation ({source}); "
             "run from a clone of the repository (pip install -e '.[notebook]')")
        return 2
    if not dry_run:
        try:
            import jupyterlab  # noqa: F401
        except ImportError:
            _say("JupyterLab is not installed: pip install -e '.[notebook]'")
            return 2
    dest = working_notebooks_dir()
    outcome = working_copies(source, dest, fresh=fresh)
    _say(f"working copies of the tutorial notebooks in {dest} (the repository's stay as they "
         "are; --fresh copies them again):")
    for name, what in outcome.items():
        _say(f"  {name}: {what}")
    cmd = lab_command(dest, ip=ip, port=port, open_browser=open_browser,
                      allow_root=allow_root, extra=extra)
    _say("starting JupyterLab: " + " ".join(cmd[2:]))
    if dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(run_demo())
