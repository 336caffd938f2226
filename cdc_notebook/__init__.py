"""cdc_notebook: Arrow-native PostgreSQL change data capture for notebooks.

The public API, importable from here (the sub-packages follow the data path: ``connection`` →
``provision`` → ``decode`` → ``stream`` → ``snapshot`` → ``live`` → ``widgets``; ``server`` is the
throwaway PostgreSQL)::

    from cdc_notebook import PostgresServer, CDCStream, LiveReader, explore

    with PostgresServer() as server:
        stream = CDCStream(server.conninfo(), "public.*", temporary=True)
        for batch in stream["public.users"].batches():
            ...

Names are imported on first use, so ``import cdc_notebook`` does not load Polars, ipywidgets or
matplotlib until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors (every class is in cdc_notebook.errors; these are the ones worth catching)
    "CDCError": "cdc_notebook.errors",
    "ConnectionFailed": "cdc_notebook.errors",
    "AuthenticationFailed": "cdc_notebook.errors",
    "StreamLost": "cdc_notebook.errors",
    "SlotNotFound": "cdc_notebook.errors",
    "SlotInUse": "cdc_notebook.errors",
    "is_transient": "cdc_notebook.errors",
    # connecting
    "connect": "cdc_notebook.connection.conninfo",
    "redact_conninfo": "cdc_notebook.connection.conninfo",
    "format_lsn": "cdc_notebook.connection.lsn",
    "parse_lsn": "cdc_notebook.connection.lsn",
    # the throwaway server
    "PostgresServer": "cdc_notebook.server.postgres",
    # set-up and teardown
    "TablePattern": "cdc_notebook.provision.patterns",
    "parse_patterns": "cdc_notebook.provision.patterns",
    "preview": "cdc_notebook.provision.patterns",
    "plan_provision": "cdc_notebook.provision.plan",
    "plan_teardown": "cdc_notebook.provision.teardown",
    "teardown": "cdc_notebook.provision.teardown",
    "list_slots": "cdc_notebook.provision.teardown",
    "SlotStatus": "cdc_notebook.provision.status",
    "fetch_slot_status": "cdc_notebook.provision.status",
    # decoding: the events every path produces
    "Begin": "cdc_notebook.decode.events",
    "Commit": "cdc_notebook.decode.events",
    "ChangeBatch": "cdc_notebook.decode.events",
    "RelationSchema": "cdc_notebook.decode.events",
    "Truncate": "cdc_notebook.decode.events",
    "LogicalMessage": "cdc_notebook.decode.events",
    "TableDropped": "cdc_notebook.decode.events",
    "METADATA_COLUMNS": "cdc_notebook.decode.events",
    # the stream
    "CDCStream": "cdc_notebook.stream.cdc_stream",
    "ArrowCDCReaderConfig": "cdc_notebook.stream.cdc_stream",
    "TableReader": "cdc_notebook.stream.reader",
    "HashPartitioner": "cdc_notebook.stream.partition",
    # the snapshot
    "snapshot_table": "cdc_notebook.snapshot.tables",
    # live frames
    "LiveReader": "cdc_notebook.live.tables",
    "LiveFrames": "cdc_notebook.live.tables",
    "LiveTable": "cdc_notebook.live.tables",
    # widgets
    "explore": "cdc_notebook.widgets.dashboard",
    "Dashboard": "cdc_notebook.widgets.dashboard",
}

__all__ = [
    "__version__", "CDCError", "ConnectionFailed", "AuthenticationFailed", "StreamLost",
    "SlotNotFound", "SlotInUse", "is_transient",
    "connect", "redact_conninfo", "format_lsn", "parse_lsn",
    "PostgresServer", "TablePattern", "parse_patterns", "preview", "plan_provision",
    "plan_teardown", "teardown", "list_slots", "SlotStatus", "fetch_slot_status", "Begin",
    "Commit", "ChangeBatch", "RelationSchema", "Truncate", "LogicalMessage", "TableDropped",
    "METADATA_COLUMNS", "CDCStream", "ArrowCDCReaderConfig", "TableReader", "HashPartitioner",
    "snapshot_table", "LiveReader", "LiveFrames", "LiveTable", "explore", "Dashboard",
]

if TYPE_CHECKING:
    from cdc_notebook.connection.conninfo import connect, redact_conninfo
    from cdc_notebook.connection.lsn import format_lsn, parse_lsn
    from cdc_notebook.decode.events import (
        METADATA_COLUMNS,
        Begin,
        ChangeBatch,
        Commit,
        LogicalMessage,
        RelationSchema,
        TableDropped,
        Truncate,
    )
    from cdc_notebook.errors import (
        AuthenticationFailed,
        CDCError,
        ConnectionFailed,
        SlotInUse,
        SlotNotFound,
        StreamLost,
        is_transient,
    )
    from cdc_notebook.live.tables import LiveFrames, LiveReader, LiveTable
    from cdc_notebook.provision.patterns import TablePattern, parse_patterns, preview
    from cdc_notebook.provision.plan import plan_provision
    from cdc_notebook.provision.status import SlotStatus, fetch_slot_status
    from cdc_notebook.provision.teardown import list_slots, plan_teardown, teardown
    from cdc_notebook.server.postgres import PostgresServer
    from cdc_notebook.snapshot.tables import snapshot_table
    from cdc_notebook.stream.cdc_stream import ArrowCDCReaderConfig, CDCStream
    from cdc_notebook.stream.partition import HashPartitioner
    from cdc_notebook.stream.reader import TableReader
    from cdc_notebook.widgets.dashboard import Dashboard, explore


def _brief_errors() -> None:
    """In IPython and Jupyter, the kit's errors show as message and fix (``briefly``)."""
    import sys

    if "IPython" in sys.modules:
        try:
            from cdc_notebook.briefly import install

            install()
        except Exception:  # noqa: BLE001 - never let a display nicety break the import
            pass


_brief_errors()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cdc_notebook' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
