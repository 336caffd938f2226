"""Small helpers shared by the reader tests."""

from __future__ import annotations

import time


def drop_slot(server, slot: str, *, dbname: str | None = None, like: bool = False) -> None:
    """Drop a slot (or, with ``like=True``, every slot whose name contains ``slot``) once its
    walsender has gone: it exits just after the stream that used it closes."""
    where = "slot_name LIKE %s" if like else "slot_name = %s"
    arg = f"%{slot}%" if like else slot
    extra = {"dbname": dbname} if dbname else {}
    with server.connect(**extra) as conn:
        deadline = time.monotonic() + 15
        while conn.execute(f"SELECT 1 FROM pg_replication_slots WHERE {where} AND active",
                           (arg,)).fetchone() and time.monotonic() < deadline:
            time.sleep(0.1)
        conn.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     f"WHERE {where}", (arg,))
