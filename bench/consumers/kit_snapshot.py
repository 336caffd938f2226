"""The kit's snapshot (7): a whole table read into pyarrow record batches by the kit
(binary COPY decoded by its native code), against ``COPY ... (FORMAT binary)`` drained by psql
(the ceiling, ``snapshot_baselines``) on the same transport.

Availability is checked by feature at run time: the module ``cdc_notebook.snapshot`` and its
table reader, the first of ``ENTRY_POINTS`` it has, called as ``reader(conninfo, table)`` and
iterated for ``pyarrow.RecordBatch`` objects.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import Consumer, Job, Window, password_env, register

ENTRY_POINTS = ("read_table", "snapshot_table", "table_batches")


def _entry_point() -> tuple[Any, str | None]:
    try:
        module = importlib.import_module("cdc_notebook.snapshot")
    except ImportError as exc:
        return None, f"not available yet: cdc_notebook.snapshot ({exc})"
    for name in ENTRY_POINTS:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn, None
    return None, ("not available yet: cdc_notebook.snapshot has none of "
                  f"{', '.join(ENTRY_POINTS)} (a table reader yielding pyarrow batches)")


class KitSnapshot(Consumer):
    group = 7
    role = "kit"
    kind = "snapshot"
    latency = False

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"kit_snapshot_{transport}"
        self.title = (f"the kit's snapshot of a table into pyarrow batches "
                      f"({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        return _entry_point()[1]

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts)

        reader, reason = _entry_point()
        if reader is None:
            raise RuntimeError(reason)
        conninfo = {**job.conninfo, "application_name": job.application_name}
        if password_env():
            conninfo["password"] = password_env()
        window = Window().start()
        rows = batches = 0
        for batch in reader(conninfo, job.table):
            rows += batch.num_rows
            batches += 1
        window.stop()
        return window.result(rows, batches=batches, bytes=job.reference.get("copy_binary_bytes", 0))


register(KitSnapshot("unix"))
register(KitSnapshot("tcp"))
