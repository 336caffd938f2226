"""Baseline (5): what Python users write today. psycopg2's ``LogicalReplicationConnection``
streams wal2json format 2 (one JSON document per change); each document is parsed with
``json.loads`` and the rows are gathered per table into ``pyarrow`` record batches of up to
10,000 rows. Feedback (flush position) is sent after every batch.
"""

from __future__ import annotations

import json
import select
from typing import Any

from . import Consumer, Job, Latencies, Window, now_us, register

BATCH_ROWS = 10_000


class Psycopg2Wal2Json(Consumer):
    group = 5
    role = "baseline"
    plugin = "wal2json"

    def __init__(self, transport: str):
        self.transport = transport
        self.name = f"psycopg2_wal2json_{transport}"
        self.title = (f"psycopg2 + wal2json format 2 + json.loads into pyarrow batches "
                      f"({'TCP' if transport == 'tcp' else 'Unix socket'})")

    def unavailable(self, env) -> str | None:
        reason = super().unavailable(env)
        if reason:
            return reason
        try:
            import psycopg2.extras  # noqa: F401
        except ImportError as exc:
            return f"psycopg2 is not installed ({exc}); pip install psycopg2-binary"
        return None

    def run(self, job: Job) -> dict[str, Any]:
        import psycopg2
        import psycopg2.extras
        import pyarrow as pa

        window = Window()
        lat = Latencies() if job.mode == "latency" else None
        buffers: dict[str, list[dict[str, Any]]] = {}
        batches = 0
        batch_rows = 0
        events = 0
        last_lsn = 0
        pending_notes: list[str | None] = []  # latency run: rows not yet in a batch

        def flush(cur) -> None:
            nonlocal batches, batch_rows
            for rows in buffers.values():
                if rows:
                    pa.RecordBatch.from_pylist(rows)
                    batches += 1
                    rows.clear()
            batch_rows = 0
            if lat is not None:
                arrival = now_us()  # a row has arrived once it is in a batch
                for note in pending_notes:
                    lat.note(note, arrival)
                pending_notes.clear()
            if last_lsn:
                cur.send_feedback(flush_lsn=last_lsn)

        pa.RecordBatch.from_pylist([{"warm": 1}])  # pyarrow's first call loads lazily: not timed
        window.start()
        conn = psycopg2.connect(**job.conninfo, application_name=job.application_name,
                                connection_factory=psycopg2.extras.LogicalReplicationConnection)
        cur = conn.cursor()
        cur.start_replication(slot_name=job.slot, decode=False,
                              options={"format-version": "2"})
        try:
            while True:
                msg = cur.read_message()
                if msg is None:
                    if lat is None and cur.wal_end >= job.end_lsn:
                        break
                    if lat is not None and lat.stopped:
                        break
                    select.select([cur], [], [], 1.0)
                    continue
                doc = json.loads(msg.payload)
                action = doc["action"]
                if action in ("I", "U", "D"):
                    events += 1
                    row = {c["name"]: c["value"] for c in doc.get("columns", ())}
                    if action == "D":
                        row.update((c["name"], c["value"]) for c in doc.get("identity", ()))
                    row["_op"] = action
                    key = doc["schema"] + "." + doc["table"]
                    buffers.setdefault(key, []).append(row)
                    batch_rows += 1
                    if lat is not None and action == "I":
                        pending_notes.append(row.get("note"))
                elif action == "C":
                    last_lsn = msg.data_start
                    if batch_rows >= BATCH_ROWS or lat is not None:
                        flush(cur)
            flush(cur)
        finally:
            window.stop()
            conn.close()
        if lat is not None:
            return lat.result(batches=batches)
        return window.result(events, batches=batches)


register(Psycopg2Wal2Json("tcp"))
register(Psycopg2Wal2Json("unix"))
