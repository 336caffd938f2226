"""A minimal wal2arrow client (1): ``bench.clients.Wal2ArrowStream`` (bench/clients.py: the
kit's replication connection plus its frame decoder, no router), each ``ChangeBatch`` a pyarrow
record batch decoded in place; every commit acknowledged by its end LSN, as the kit does.
Over the Unix socket and TCP.

It stops at the first message at or past the workload's end position (a keepalive: the server
sends one when it has nothing more and the client has not confirmed everything it sent).
The client and the kit's event types are imported when the harness checks the consumer (an
import error stops the run); only the server may lack a wal2arrow that encodes.
"""

from __future__ import annotations

from typing import Any

from . import Consumer, Job, Latencies, Window, now_us, password_env, register


class KitWal2ArrowClient(Consumer):
    group = 1
    role = "kit"
    plugin = "wal2arrow"

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"kit_wal2arrow_client_{transport}"
        self.title = (f"a minimal wal2arrow client (bench/clients.py: Wal2ArrowStream, frames "
                      f"decoded into pyarrow batches, no router) "
                      f"({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        # an import error propagates: it stops the run, it is never "unavailable"
        from bench.clients import Wal2ArrowStream  # noqa: F401
        from cdc_notebook.decode.events import ChangeBatch, Commit  # noqa: F401

        return super().unavailable(env)

    def run(self, job: Job) -> dict[str, Any]:
        import pyarrow as pa  # noqa: F401  (imported before the clock starts)

        from bench.clients import Wal2ArrowStream
        from cdc_notebook.decode.events import ChangeBatch, Commit

        conninfo = {**job.conninfo, "application_name": job.application_name}
        if password_env():
            conninfo["password"] = password_env()
        lat = Latencies() if job.mode == "latency" else None
        rows = batches = 0
        window = Window().start()
        with Wal2ArrowStream(conninfo) as stream:
            stream.start(job.slot, 0, {"publication_names": job.publication})
            done = False
            while not done:
                for wal_end, event in stream.read(timeout=1.0):
                    if isinstance(event, ChangeBatch):
                        rows += event.batch.num_rows
                        batches += 1
                        if lat is not None and "note" in event.batch.schema.names:
                            arrival = now_us()
                            for note in event.batch.column("note").to_pylist():
                                lat.note(note, arrival)
                    elif isinstance(event, Commit):
                        stream.send_feedback(event.end_lsn)
                    if lat is not None:
                        done = lat.stopped
                    elif wal_end >= job.end_lsn:
                        done = True
                    if done:
                        break
            window.stop()
        if lat is not None:
            return lat.result(batches=batches)
        return window.result(rows, batches=batches)


register(KitWal2ArrowClient("unix"))
register(KitWal2ArrowClient("tcp"))
