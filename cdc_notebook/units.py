"""One way of writing what the kit shows: sizes, rates, durations and LSNs.

* **Sizes** count in powers of 2 and say so (IEC units): ``512 B``, ``1.5 KiB``, ``29.4 MiB``,
  ``1.2 GiB`` (30,860,232 bytes is 29.4 MiB, never "29.4 MB").
* **Rates**: ``12.34 MiB/s`` for bytes, ``12,345 events/s`` for rows.
* **Durations**: ``850 ms`` below a second, ``12.3 s`` below a minute, ``4 min 05 s`` above.
* **LSNs**: PostgreSQL's ``X/XXXXXXXX`` (:func:`cdc_notebook.connection.lsn.format_lsn`).

The widgets, the demo's summary line and :meth:`SlotStatus.summary` use these functions.
"""

from __future__ import annotations

import math

from cdc_notebook.connection.lsn import format_lsn

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float | None) -> str:
    """A size in bytes, in the largest IEC unit below it (``n/a`` for None)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_byte_rate(bytes_per_second: float | None) -> str:
    """A throughput in bytes per second as MiB/s."""
    if bytes_per_second is None:
        return "n/a"
    return f"{bytes_per_second / MiB:,.2f} MiB/s"


def format_rate(events_per_second: float | None, unit: str = "events/s") -> str:
    if events_per_second is None:
        return "n/a"
    return f"{events_per_second:,.0f} {unit}"


def format_seconds(seconds: float | None) -> str:
    """A duration: ``850 ms``, ``12.3 s``, ``4 min 05 s`` (``n/a`` for None)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = ["GiB", "KiB", "MiB", "format_byte_rate", "format_bytes", "format_lsn",
           "format_rate", "format_seconds"]
