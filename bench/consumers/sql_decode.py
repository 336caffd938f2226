"""Reference (3a): pgoutput's in-server decode rate, ``pg_logical_slot_get_binary_changes``.

Decode only: the backend decodes the slot up to the end position and the query counts the rows
(messages I, U, D) and bytes; nothing is streamed. The backend holding the slot is measured as
the "walsender" of this path.
"""

from __future__ import annotations

from typing import Any

from . import Consumer, Job, Window, register

COUNT_SQL = """
SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)),  -- 'I', 'U', 'D'
       count(*),
       coalesce(sum(octet_length(data)), 0)
FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, NULL,
                                        'proto_version', '1', 'publication_names', %s)
"""


class SqlDecodePgoutput(Consumer):
    name = "sql_decode_pgoutput"
    label = "pgoutput's in-server decode rate"
    title = ("pgoutput's in-server decode rate: pg_logical_slot_get_binary_changes, decode "
             "only, rows counted in SQL")
    group = 3
    role = "reference"
    plugin = "pgoutput"
    transport = "server"
    latency = False

    def run(self, job: Job) -> dict[str, Any]:
        import psycopg

        window = Window()
        with psycopg.connect(**job.conninfo, application_name=job.application_name,
                             autocommit=True) as conn:
            window.start()
            rows, messages, nbytes = conn.execute(
                COUNT_SQL, (job.slot, job.end_lsn_text, job.publication)).fetchone()
            window.stop()
        # pg_recvlogical writes every message followed by a newline: the size its file must have
        return window.result(int(rows), messages=int(messages), bytes=int(nbytes),
                             recvlogical_file_bytes=int(nbytes) + int(messages))


register(SqlDecodePgoutput())
