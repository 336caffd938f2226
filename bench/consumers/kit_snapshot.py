"""The kit's snapshot (7): a whole table read into pyarrow record batches by the kit
(``cdc_notebook.snapshot.tables.snapshot_table``: binary COPY over ctid chunks, decoded by its native
code, two connections by default), against binary COPY drained by psql (``COPY ... (FORMAT
binary)`` to /dev/null, ``snapshot_baselines``) on the same transport.

The exported snapshot it reads at (a temporary slot, ``ExportedSnapshot``) is created before the
clock starts: the comparison is reading the table. Those two names are imported when the harness
checks the consumer: an import error stops the run, it is never reported as "unavailable".
"""

from __future__ import annotations

from typing import Any

from . import Consumer, Job, Window, password_env, register


class KitSnapshot(Consumer):
    group = 7
    role = "kit"
    kind = "snapshot"
    latency = False

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"kit_snapshot_{transport}"
        self.title = (f"the kit's snapshot (snapshot_table, exported snapshot) into pyarrow "
                      f"batches ({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        # an import error propagates: it stops the run, it is never "unavailable"
        from cdc_notebook.snapshot.tables import ExportedSnapshot, snapshot_table  # noqa: F401

        return super().unavailable(env)

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts)

        from cdc_notebook.snapshot.tables import ExportedSnapshot, snapshot_table

        conninfo = {**job.conninfo, "application_name": job.application_name}
        if password_env():
            conninfo["password"] = password_env()
        rows = batches = 0
        with ExportedSnapshot(conninfo, f"{job.application_name}_snap"[:63],
                          plugin="pgoutput", temporary=True) as snap:
            window = Window().start()
            for batch in snapshot_table(conninfo, job.table, snap):
                rows += batch.num_rows
                batches += 1
            window.stop()
        return window.result(rows, batches=batches,
                             bytes=job.reference.get("copy_binary_bytes", 0))


register(KitSnapshot("unix"))
register(KitSnapshot("tcp"))
