"""The kit's Delta Lake sink (issue 16): ``DeltaSink`` drains the harness's slot (wal2arrow, Unix
socket) into a Delta mirror per table, exactly once, and the figure is changes per second
*committed into Delta* (merge by key: inserts appended, updates and deletes merged).

* ``kit_sink_delta_unix``: one process, one partition (a writer thread beside the stream);
* ``kit_sink_delta_ray_unix``: two key-hash partitions written by two actors of a local Ray
  (``ray.init()`` and the actors' start-up happen before the measured window, as connecting
  does for the other consumers; the window covers streaming, splitting, the object store and
  the commits).

The window runs from the sink's start to the commit of the last change up to the workload's end
position (``sink.run(once=True)``); the count is the rows committed, which must equal the
workload's. After the window the mirror is checked against the table: same row count as
``SELECT count(*)`` for each table. The Delta tables are written under the job's work
directory and removed afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import Consumer, Job, Window, password_env, register


class KitSink(Consumer):
    role = "kit"
    plugin = "wal2arrow"
    transport = "unix"
    latency = False  # commits every micro-batch: its latency is the commit interval

    def __init__(self, ray: bool):
        self.ray = ray
        self.group = 1
        self.name = "kit_sink_delta_ray_unix" if ray else "kit_sink_delta_unix"
        self.title = ("the kit's Delta Lake sink (DeltaSink: a mirror per table, exactly once) "
                      + ("with 2 partitions on Ray actors " if ray else "")
                      + "through wal2arrow (Unix socket)")
        self.label = "changes committed into the Delta mirror"

    def unavailable(self, env) -> str | None:
        # The kit is what is measured: its API must import (an ImportError stops the run).
        from cdc_notebook.sinks.delta import DeltaSink  # noqa: F401
        from cdc_notebook.stream.cdc_stream import CDCStream  # noqa: F401

        try:
            import deltalake  # noqa: F401
        except ImportError:
            return "deltalake is not installed (pip install -e '.[delta]')"
        if self.ray:
            from cdc_notebook.sinks.ray import RayCommitter  # noqa: F401

            try:
                import ray  # noqa: F401
            except ImportError:
                return "ray is not installed (pip install -e '.[ray]')"
        return super().unavailable(env)

    def supports(self, mode: str) -> str | None:
        if mode == "latency":
            return "commits micro-batches (every 2 s at most): no per-row arrival latency"
        return super().supports(mode)

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts)
        from deltalake import DeltaTable

        from cdc_notebook.sinks.delta import DeltaSink
        from cdc_notebook.stream.cdc_stream import CDCStream

        conninfo = {**job.conninfo, "application_name": job.application_name}
        password = password_env()
        if password:
            conninfo["password"] = password
        target = Path(job.work_dir) / f"delta-{self.name}-{job.workload}"
        shutil.rmtree(target, ignore_errors=True)
        stream = CDCStream(conninfo, tables=job.tables, slot_name=job.slot,
                           publication=job.publication, plugin=self.plugin,
                           acknowledge="durable")
        extra: dict[str, Any] = {}
        try:
            sink = DeltaSink(stream, target, partitions=2 if self.ray else 1,
                             ray="local" if self.ray else None,
                             ray_options={"init_options": {"num_cpus": 2}} if self.ray else None)
            if self.ray:
                placement = sink.committer.placement()  # type: ignore[attr-defined]
                extra["actors"] = len(placement)
            window = Window().start()
            report = sink.run(once=True)
            window.stop()
            extra.update(mirror_commits=report.mirror_commits, tables=report.tables,
                         partitions=report.partitions)
            rows = {}
            with stream.catalog.cursor() as cur:
                for spec in {t.spec.directory: t.spec for t in sink._tables.values()}.values():
                    mirror = DeltaTable(str(target / spec.directory))
                    got = mirror.to_pyarrow_dataset().count_rows()
                    want = cur.execute(f"SELECT count(*) FROM {spec.label}").fetchone()[0]
                    if got != want:
                        return {"error": f"the Delta mirror of {spec.label} has {got} rows, "
                                         f"the table {want}"}
                    rows[spec.label] = got
            extra["mirror_rows"] = rows
        finally:
            stream.close()
            shutil.rmtree(target, ignore_errors=True)
        return window.result(report.committed,
                             verified="rows committed into Delta; each mirror's row count "
                                      "equals SELECT count(*)", **extra)


register(KitSink(ray=False))
register(KitSink(ray=True))
