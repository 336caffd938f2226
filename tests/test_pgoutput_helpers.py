"""Helpers of the pgoutput and snapshot tests: read a slot until a marker message."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from bench.clients import PgoutputStream
from cdc_notebook.decode.events import ChangeBatch, LogicalMessage

END_PREFIX = "cdc-test-end"


def emit_end(conn: Any, tag: str = "") -> None:
    conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (END_PREFIX, tag))


def read_until_end(stream: PgoutputStream, tag: str = "", timeout: float = 120.0) -> list[Any]:
    """Events up to the end marker with ``tag``; acknowledges what it read."""
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in stream.events(timeout=1.0):
            events.append(event)
            if isinstance(event, LogicalMessage) and event.prefix == END_PREFIX \
                    and event.content.decode() == tag:
                return events
    raise AssertionError(f"no end marker {tag!r} within {timeout}s; got {len(events)} events")


def batches_of(events: list[Any], table: str) -> pa.Table | None:
    batches = [e.batch for e in events if isinstance(e, ChangeBatch) and e.qualified_name == table]
    return pa.Table.from_batches(batches) if batches else None


def drop_slot(conn: Any, slot: str) -> None:
    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                 "WHERE slot_name = %s AND NOT active", (slot,))
