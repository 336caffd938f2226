"""The kit's two other ways in, beside ``CDCStream``'s drain (``kit_stream``), over the same
slot, plugin (wal2arrow) and transport (the Unix socket):

* ``kit_live_wal2arrow_unix``: a notebook's path, ``LiveReader(stream).start()`` streaming every
  table into its live Polars frames (changelog + mirror), then ``reader.catch_up()``; the
  window ends once every table's mirror is consistent at the workload's end and folded. The
  result carries the mirrors' own Arrow size (``LiveTable.to_arrow()``'s buffers), which the
  peak RSS is compared with.
* ``kit_async_wal2arrow_unix``: the seed's API as its README writes it,
  ``ArrowCDCReaderConfig.auto_configure(...)`` and ``async for batch in
  readers[name].read_batches()``, every table's reader drained concurrently with
  ``asyncio.gather`` on one event loop.

Both count the rows their consumer received, as the drain does, and import what they measure
when the harness checks them (an import error stops the run).
"""

from __future__ import annotations

from typing import Any

from . import Consumer, Job, Latencies, Window, now_us, password_env, register


def _conninfo(job: Job) -> dict[str, Any]:
    conninfo = {**job.conninfo, "application_name": job.application_name}
    if password_env():
        conninfo["password"] = password_env()
    return conninfo


_FLOOR_SCRIPT = """
import sys
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (what the live path imports)
import pyarrow.ipc as ipc
import psycopg  # noqa: F401
frames = []
for path in sys.argv[1:]:
    with pa.OSFile(path) as source:
        frames.append(pl.from_arrow(ipc.open_file(source).read_all()))
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def _floor_rss_kb(tables: list[Any]) -> int | None:
    """The floor under the live path's peak RSS: a fresh process that imports the libraries
    the live path uses and holds the same mirrors as Polars frames, nothing else (no stream,
    no fold). What the live path's peak adds above it is the kit's own cost."""
    import os
    import subprocess
    import sys
    import tempfile

    import pyarrow as pa
    import pyarrow.ipc as ipc

    with tempfile.TemporaryDirectory(prefix="cdc-bench-floor-") as tmp:  # 0700, private
        paths = []
        for i, table in enumerate(tables):
            path = os.path.join(tmp, f"mirror{i}.arrow")
            with pa.OSFile(path, "wb") as sink, ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            paths.append(path)
        del tables
        proc = subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT, *paths],
                              capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return int(proc.stdout.split()[-1])


class KitLive(Consumer):
    group = 1
    role = "kit"
    plugin = "wal2arrow"
    transport = "unix"
    name = "kit_live_wal2arrow_unix"
    title = ("the kit's notebook path: LiveReader streaming CDCStream's readers into the live "
             "Polars mirror (and changelog) through wal2arrow (Unix socket)")

    def unavailable(self, env) -> str | None:
        from cdc_notebook.live.tables import LiveReader  # noqa: F401
        from cdc_notebook.stream.cdc_stream import CDCStream  # noqa: F401

        return super().unavailable(env)

    def run(self, job: Job) -> dict[str, Any]:
        import polars as pl  # noqa: F401  (imported before the clock starts)
        import pyarrow as pa  # noqa: F401

        from cdc_notebook.live.tables import LiveReader
        from cdc_notebook.stream.cdc_stream import CDCStream

        stream = CDCStream(_conninfo(job), tables=job.tables, slot_name=job.slot,
                           publication=job.publication, plugin=self.plugin)
        if job.mode == "latency":
            return self._latency(stream, job)
        window = Window().start()
        reader = LiveReader(stream).start()
        try:
            reader.catch_up(timeout=job.timeout_s)
            frames = reader.frames
            mirror_rows = mirror_bytes = 0
            for live in list(frames.tables.values()):
                if live.has_key:
                    state = live.state()  # folded: the mirror is complete
                    mirror_rows += state.frame.height
            window.stop()
            # the peak of the window, before the sizes below make copies of the mirrors
            from bench.worker import peak_rss_kb

            peak = peak_rss_kb()
            rows = sum(t.stats.rows_received for t in frames.tables.values())
            folds = sum(t.stats.folds for t in frames.tables.values())
            for live in list(frames.tables.values()):
                if live.has_key:
                    mirror_bytes += live.to_arrow().get_total_buffer_size()
            polars_bytes = sum(int(t.state().frame.estimated_size())
                               for t in frames.tables.values() if t.has_key)
            floor = _floor_rss_kb([t.to_arrow() for t in frames.tables.values() if t.has_key])
        finally:
            reader.stop()
        return window.result(rows, mirror_rows=mirror_rows, mirror_arrow_bytes=mirror_bytes,
                             mirror_polars_bytes=polars_bytes, folds=folds, peak_rss_kb=peak,
                             floor_rss_kb=floor)

    @staticmethod
    def _latency(stream, job: Job) -> dict[str, Any]:
        """Commit-to-mirror: a row counts once a state() without a forced fold (what the
        dashboard reads) shows it."""
        import polars as pl

        from cdc_notebook.live.tables import LiveReader

        lat = Latencies()
        reader = LiveReader(stream).start()
        seen = 0
        try:
            import time

            deadline = time.monotonic() + 120
            while not lat.stopped and time.monotonic() < deadline:
                live = reader.frames.tables.get("bench.orders")
                if live is None:
                    time.sleep(0.001)
                    continue
                frame = live.state(fresh=False).frame
                arrival = now_us()
                notes = frame.filter(pl.col("id") >= 10**12).get_column("note")
                for note in notes.slice(seen).to_list():
                    lat.note(note, arrival)
                seen = notes.len()
                time.sleep(0.001)
        finally:
            reader.stop()
        return lat.result()


class KitAsync(Consumer):
    group = 1
    role = "kit"
    plugin = "wal2arrow"
    transport = "unix"
    name = "kit_async_wal2arrow_unix"
    title = ("the seed's API: ArrowCDCReaderConfig.auto_configure(...) and async for ... "
             "read_batches(), the tables gathered on one event loop, through wal2arrow "
             "(Unix socket)")

    def unavailable(self, env) -> str | None:
        from cdc_notebook import ArrowCDCReaderConfig  # noqa: F401

        return super().unavailable(env)

    def run(self, job: Job) -> dict[str, Any]:
        import asyncio

        import pyarrow as pa  # noqa: F401  (imported before the clock starts)

        from cdc_notebook import ArrowCDCReaderConfig

        info = _conninfo(job)
        readers = ArrowCDCReaderConfig.auto_configure(
            host=info["host"], database=info["dbname"], user=info["user"],
            password=info.get("password"), tables=job.tables, port=int(info["port"]),
            slot_name=job.slot, publication=job.publication, plugin=self.plugin)
        stream = next(iter(readers.values())).stream
        counts = {"rows": 0, "batches": 0}
        lat = Latencies() if job.mode == "latency" else None

        async def drain(name: str) -> None:
            follow = lat is not None
            async for batch in readers[name].read_batches(follow=follow):
                counts["rows"] += batch.num_rows
                counts["batches"] += 1
                if lat is not None and name == "bench.orders":
                    arrival = now_us()
                    for note in batch.column("note").to_pylist():
                        lat.note(note, arrival)
                    if lat.stopped:
                        return

        async def main() -> None:
            if lat is not None:
                await drain("bench.orders")
            else:
                await asyncio.gather(*(drain(name) for name in readers))

        window = Window().start()
        try:
            asyncio.run(main())
            window.stop()
        finally:
            stream.close()
        if lat is not None:
            return lat.result(batches=counts["batches"])
        return window.result(counts["rows"], batches=counts["batches"])


register(KitLive())
register(KitAsync())
