"""The kit (1, 2): ``cdc_notebook.stream.cdc_stream.CDCStream`` over the harness's slot, per-table readers
yielding pyarrow record batches, through wal2arrow or through pgoutput, over the Unix socket
(the kit's default for a local server) or TCP.

The stream is opened on the slot and publication the harness created before the workload (the
kit reuses an existing slot); every table reader is drained with ``batches()`` (not following:
it ends at the server's WAL position taken when iteration starts, which is after the workload's
end position). Rows are counted from the batches. Latency runs follow the stream and
time-stamp each row when the batch holding it is handed out.

The kit's API is imported when the harness checks the consumer: an import error stops the run
(it is never reported as "unavailable"). Only the server may legitimately lack something: for
wal2arrow, a plugin that emits frames on this server (the harness probes it).
"""

from __future__ import annotations

from typing import Any

from . import Consumer, Job, Latencies, Window, now_us, password_env, register


class KitStream(Consumer):
    role = "kit"

    def __init__(self, plugin: str, transport: str):
        self.plugin = plugin
        self.transport = transport
        self.group = 1 if plugin == "wal2arrow" else 2
        self.name = f"kit_{plugin}_{transport}"
        self.title = (f"the kit (CDCStream readers) through {plugin} into pyarrow batches "
                      f"({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        # The kit is what is measured: its API must import (an ImportError propagates and stops
        # the run, it never turns into "unavailable"). Only the server may lack the plugin.
        from cdc_notebook.decode import pgoutput, wal2arrow  # noqa: F401  (the decoders)
        from cdc_notebook.decode.decoder import make_decoder  # noqa: F401
        from cdc_notebook.stream.cdc_stream import CDCStream  # noqa: F401

        return super().unavailable(env)

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts, as a user has it)

        from cdc_notebook.stream.cdc_stream import CDCStream

        conninfo = {**job.conninfo, "application_name": job.application_name}
        password = _password()
        if password:
            conninfo["password"] = password
        # Validation and set-up (catalog checks, the plugin probe) happen once per stream, not
        # per row: the window measures streaming, as it does for the other consumers.
        stream = CDCStream(conninfo, tables=job.tables, slot_name=job.slot,
                           publication=job.publication, plugin=self.plugin)
        window = Window().start()
        try:
            if job.mode == "latency":
                return self._latency(stream, job)
            rows = batches = 0
            for name in stream.readers:
                for batch in stream[name].batches():
                    rows += batch.num_rows
                    batches += 1
            window.stop()
        finally:
            stream.close()
        return window.result(rows, batches=batches)

    @staticmethod
    def _latency(stream, job: Job) -> dict[str, Any]:
        lat = Latencies()
        reader = stream["bench.orders"]
        for batch in reader.batches(follow=True, timeout=120):
            arrival = now_us()
            for note in batch.column("note").to_pylist():
                if lat.note(note, arrival):
                    break
            if lat.stopped:
                break
        return lat.result()


def _password() -> str | None:
    return password_env()


for _plugin in ("wal2arrow", "pgoutput"):
    for _transport in ("unix", "tcp"):
        register(KitStream(_plugin, _transport))
