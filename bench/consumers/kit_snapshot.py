"""The kit's snapshot (7): a whole table read into pyarrow record batches by the kit
(``cdc_notebook.snapshot.tables.snapshot_table``: binary COPY over ctid chunks, decoded by its native
code, two connections by default), against ``COPY ... (FORMAT binary)`` drained by psql (the
ceiling, ``snapshot_baselines``) on the same transport.

The exported snapshot it reads at (a temporary slot, ``ExportedSnapshot``) is created before the
clock starts: the comparison is reading the table. Availability is checked by feature at run
time (the module and those two names).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import Consumer, Job, Window, password_env, register


def _api() -> tuple[Any, str | None]:
    try:
        module = importlib.import_module("cdc_notebook.snapshot.tables")
    except ImportError as exc:
        return None, f"not available yet: cdc_notebook.snapshot.tables ({exc})"
    missing = [n for n in ("ExportedSnapshot", "snapshot_table") if not hasattr(module, n)]
    if missing:
        return None, f"not available yet: cdc_notebook.snapshot.tables has no {', '.join(missing)}"
    return module, None


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
        return _api()[1]

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts)

        api, reason = _api()
        if api is None:
            raise RuntimeError(reason)
        conninfo = {**job.conninfo, "application_name": job.application_name}
        if password_env():
            conninfo["password"] = password_env()
        rows = batches = 0
        with api.ExportedSnapshot(conninfo, f"{job.application_name}_snap"[:63],
                                  plugin="pgoutput", temporary=True) as snap:
            window = Window().start()
            for batch in api.snapshot_table(conninfo, job.table, snap):
                rows += batch.num_rows
                batches += 1
            window.stop()
        return window.result(rows, batches=batches,
                             bytes=job.reference.get("copy_binary_bytes", 0))


register(KitSnapshot("unix"))
register(KitSnapshot("tcp"))
