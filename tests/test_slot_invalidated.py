"""A slot the server invalidates mid-stream (``max_slot_wal_keep_size``) ends the stream with
an error that says so and names the fix, not a bare ``START_REPLICATION failed``."""

from __future__ import annotations

import time

import pytest

from cdc_notebook import CDCStream
from cdc_notebook.errors import SlotInvalidated, is_transient


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_slot_invalidated_mid_stream_names_wal_status_and_the_fix(pg_factory, plugin):
    server = pg_factory(settings={"max_slot_wal_keep_size": "1MB"})
    with server.connect() as conn:
        conn.execute("CREATE TABLE kept (id bigint PRIMARY KEY, pad text)")
        conn.execute("CREATE TABLE unread (id bigint PRIMARY KEY, pad text)")
    stream = CDCStream(server.conninfo(), "public.*", plugin=plugin, slot_name="inv_slot")
    try:
        stream.start()
        slot = stream.slot.slot_name
        # Rows nobody reads pin the slot while WAL grows past max_slot_wal_keep_size.
        deadline = time.monotonic() + 120
        status = None
        with server.connect() as conn:
            while time.monotonic() < deadline:
                conn.execute("INSERT INTO unread SELECT g, repeat('x', 200) FROM "
                             "generate_series((SELECT coalesce(max(id), 0) + 1 FROM unread), "
                             "(SELECT coalesce(max(id), 0) + 20000 FROM unread)) g")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
                status = conn.execute("SELECT wal_status FROM pg_replication_slots "
                                      "WHERE slot_name = %s", (slot,)).fetchone()
                if status and status[0] == "lost":
                    break
        assert status is not None and status[0] == "lost", status
        with pytest.raises(SlotInvalidated) as err:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    for _ in stream["public.kept"].batches(timeout=1):
                        pass
                except TimeoutError:
                    continue  # not failed yet: the server is still invalidating the slot
        text = str(err.value)
        assert "wal_status = lost" in text and "max_slot_wal_keep_size" in text
        assert "new snapshot" in text and not is_transient(err.value)
    finally:
        stream.close()
