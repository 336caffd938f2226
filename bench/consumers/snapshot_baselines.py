"""Snapshot (7): reading a whole table, PostgreSQL's own export and the usual Python way.

* ``COPY bench.orders TO STDOUT (FORMAT binary)`` run by ``psql`` with its output sent to
  /dev/null: binary COPY drained by psql, the server's fastest export read by a C client (the
  reference the kit's snapshot is compared with), over the Unix socket and over TCP;
* psycopg (3) fetching rows through a server-side cursor, 10,000 rows per fetch, into Python
  tuples: what a notebook user would write.

The table is the standard workload's ``bench.orders`` after the workload (N - N/10 rows).
MB/s figures use the size of the table's binary COPY stream, measured once per round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Consumer, Job, Window, register


class CopyBinaryPsql(Consumer):
    group = 7
    role = "reference"
    label = "binary COPY drained by psql"
    kind = "snapshot"
    latency = False
    uses_worker = False

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"copy_binary_psql_{transport}"
        self.title = (f"binary COPY drained by psql: COPY ... TO STDOUT (FORMAT binary) to "
                      f"/dev/null ({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        if not (env.bindir / "psql").is_file():
            return f"psql is not in {env.bindir}"
        return None

    def command(self, job: Job, job_path: Path) -> list[str]:
        return [str(Path(job.bindir) / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-d", job.dsn(), "-o", "/dev/null",
                "-c", f"COPY {job.table} TO STDOUT (FORMAT binary)"]

    def collect(self, job: Job, returncode: int, wall_s: float) -> dict[str, Any]:
        if returncode != 0:
            return {"error": f"psql exited with code {returncode}"}
        return {"events": job.expected_events, "seconds": wall_s,
                "bytes": job.reference.get("copy_binary_bytes", 0),
                "verified": "exit status only (rows: the table's count)"}


class PsycopgFetchRows(Consumer):
    group = 7
    role = "baseline"
    kind = "snapshot"
    latency = False

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"psycopg_fetch_rows_{transport}"
        self.title = (f"psycopg 3 fetching rows (server-side cursor, 10,000 per fetch) "
                      f"({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def run(self, job: Job) -> dict[str, Any]:
        import psycopg
        from psycopg import sql

        table = sql.Identifier(*job.table.split("."))
        window = Window().start()
        rows = 0
        with psycopg.connect(**job.conninfo, application_name=job.application_name) as conn, \
                conn.cursor(name="bench_fetch") as cur:
            cur.itersize = 10_000
            cur.execute(sql.SQL("SELECT * FROM {}").format(table))
            while chunk := cur.fetchmany(10_000):
                rows += len(chunk)
        window.stop()
        return window.result(rows, bytes=job.reference.get("copy_binary_bytes", 0))


register(CopyBinaryPsql("unix"))
register(CopyBinaryPsql("tcp"))
register(PsycopgFetchRows("unix"))
