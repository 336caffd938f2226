"""The live summary: rows per table, events/s, MiB/s and the slot's lag, in one line.

The same figures are printed by ``python -m cdc_notebook demo`` and shown above the dashboard.
Rates are measured between two samples of the frames' counters (rows and bytes received), so
they say what the reader is doing now, not an average since it started; the slot's lag comes
from the server (``pg_current_wal_lsn() - confirmed_flush_lsn``) through a connection of its
own, polled at most once a second on the model's worker — or, in the dashboard, from the
status tab's latest snapshot (``status_source``), so the two never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import ipywidgets as w

from cdc_notebook.connection.lsn import format_lsn
from cdc_notebook.provision.status import fetch_slot_status
from cdc_notebook.units import MiB, format_byte_rate, format_bytes, format_seconds
from cdc_notebook.widgets._base import (
    Model,
    WidgetView,
    describe_error,
    esc,
    message_html,
)
from cdc_notebook.widgets.pump import set_changed

_MB = MiB


@dataclass(frozen=True)
class TableSummary:
    name: str
    rows: int | None  # mirror rows (None: the table has no key, only a changelog)
    changes: int  # rows received (snapshot rows and changes)
    lsn: int  # where the frame is consistent


@dataclass(frozen=True)
class LiveSummary:
    """One sample of what the reader is doing."""

    state: str
    tables: tuple[TableSummary, ...]
    events_per_second: float
    bytes_per_second: float
    rows_received: int
    slot_name: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    retained_wal_bytes: int | None = None
    error: str | None = None
    taken_at: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        """The summary as one line of text (what the demo prints)."""
        parts = [f"reader {self.state}"]
        parts += [f"{t.name}: {t.rows:,} rows" if t.rows is not None else
                  f"{t.name}: {t.changes:,} changes" for t in self.tables]
        parts.append(f"{self.events_per_second:,.0f} events/s")
        parts.append(format_byte_rate(self.bytes_per_second))
        if self.lag_bytes is not None:
            lag = f"slot lag {format_bytes(self.lag_bytes)}"
            if self.lag_seconds is not None:
                lag += f" ({format_seconds(self.lag_seconds)})"
            parts.append(lag)
        if self.error:
            parts.append(f"error: {self.error}")
        return " | ".join(parts)

    def html(self) -> str:
        rows = "".join(
            f"<tr><td>{esc(t.name)}</td><td class='cdc-rows'>"
            f"{'' if t.rows is None else f'{t.rows:,}'}</td><td>{t.changes:,}</td>"
            f"<td>{esc(format_lsn(t.lsn))}</td></tr>" for t in self.tables)
        lag = "n/a" if self.lag_bytes is None else format_bytes(self.lag_bytes)
        if self.lag_seconds is not None:
            lag += f" ({format_seconds(self.lag_seconds)})"
        head = (f"<div class='cdc-summary'>reader <b>{esc(self.state)}</b> · "
                f"<span class='cdc-throughput'>{self.events_per_second:,.0f} events/s</span> · "
                f"{esc(format_byte_rate(self.bytes_per_second))} · slot lag "
                f"<span class='cdc-lag'>{esc(lag)}</span></div>")
        table = ("<table class='cdc-summary-tables'><tr><th>table</th><th>rows</th>"
                 "<th>changes received</th><th>consistent at</th></tr>" + rows + "</table>")
        return head + table + message_html(self.error)

    def live_html(self, beat: int) -> str:
        """:meth:`html` inside a heartbeat: the pump writes it again at least every
        ``HEARTBEAT`` seconds (``beat`` changes), which restarts a CSS animation; when the kernel
        is gone (restarted, shut down) nothing writes it any more, and after ``STALE_AFTER``
        seconds the output dims and says *disconnected*. Plain HTML and CSS: it also works in
        a notebook saved with its outputs."""
        return (f"<div class='cdc-live' data-beat='{beat}'>{_STALE_CSS}"
                "<span class='cdc-disconnected'>disconnected: the kernel no longer updates "
                "this output (it was restarted or shut down); run the cells again</span>"
                f"<div class='cdc-live-body'>{self.html()}</div></div>")


HEARTBEAT = 2.0  # seconds between two writes of the live summary, at the least
STALE_AFTER = 8.0  # seconds without a write before it says "disconnected"
_STALE_CSS = (
    "<style>"
    ".cdc-live .cdc-disconnected{display:block;font-size:0;color:#b00020;font-weight:bold;"
    f"animation:cdc-stale-label 0.2s linear {STALE_AFTER}s forwards}}"
    f".cdc-live .cdc-live-body{{animation:cdc-stale-body 0.2s linear {STALE_AFTER}s forwards}}"
    "@keyframes cdc-stale-label{to{font-size:100%}}"
    "@keyframes cdc-stale-body{to{opacity:0.45}}"
    "</style>")


class SummaryModel(Model):
    """Samples a :class:`~cdc_notebook.live.tables.LiveReader` (or bare frames plus a slot name)."""

    def __init__(self, frames: Any, *, reader: Any = None, slot_name: str | None = None,
                 conninfo: Callable[[], dict[str, Any]] | dict[str, Any] | None = None,
                 lag_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 status_source: Callable[[], tuple[Any, float | None]] | None = None) -> None:
        super().__init__()
        self.frames = frames
        self.reader = reader
        self.slot_name = slot_name
        # () -> (SlotStatus or None, lag in seconds): the status tab's latest snapshot, used
        # instead of polling the server here
        self.status_source = status_source
        self._conninfo = conninfo
        self.lag_interval = lag_interval
        self.clock = clock
        self.summary: LiveSummary | None = None
        self._previous: tuple[float, int, int] | None = None
        self._lag: tuple[int | None, float | None, int | None] = (None, None, None)
        self._lag_error: str | None = None
        self._last_lag_poll: float | None = None
        self._conn: Any = None

    def _counts(self) -> tuple[int, int]:
        tables = list(self.frames.tables.values())
        return (sum(t.stats.rows_received for t in tables),
                sum(t.stats.bytes_received for t in tables))

    def sample(self, now: float | None = None) -> LiveSummary:
        """Take a sample now (rates since the previous sample)."""
        now = self.clock() if now is None else now
        rows, nbytes = self._counts()
        eps = bps = 0.0
        if self._previous is not None:
            then, rows0, bytes0 = self._previous
            if now > then:
                eps, bps = (rows - rows0) / (now - then), (nbytes - bytes0) / (now - then)
        self._previous = (now, rows, nbytes)
        tables = []
        with self.frames.lock:
            for name, live in list(self.frames.tables.items()):
                height = live.state(fresh=False).frame.height if live.has_key else None
                tables.append(TableSummary(name, height, live.stats.rows_received,
                                           live._consistent_lsn()))
        reader = self.reader
        state = "stopped" if reader is None else reader.state
        error = self._lag_error
        if reader is not None and reader.error is not None:
            error = describe_error(reader.error)
        lag_bytes, lag_seconds, retained = self._lag
        if self.status_source is not None:
            status, lag_seconds = self.status_source()
            if status is not None:
                lag_bytes, retained = status.lag_bytes, status.retained_wal_bytes
        summary = LiveSummary(state, tuple(tables), eps, bps, rows, self._slot(), lag_bytes,
                              lag_seconds, retained, error, now)
        with self.lock:
            self.summary = summary
            self.bump()
        return summary

    def _slot(self) -> str | None:
        if self.slot_name:
            return self.slot_name
        slot = getattr(getattr(getattr(self.reader, "stream", None), "slot", None),
                       "slot_name", None)
        return slot

    def _params(self) -> dict[str, Any] | None:
        params = self._conninfo() if callable(self._conninfo) else self._conninfo
        if params:
            return dict(params)
        stream = getattr(self.reader, "stream", None)
        params = getattr(stream, "conninfo", None)
        return dict(params) if params else None

    def poll_lag(self, now: float | None = None, *, wait: bool = False) -> None:
        """Ask the server for the slot's lag (on the worker) when a poll is due."""
        now = self.clock() if now is None else now
        if self.status_source is not None:
            return  # the status tab's snapshot is the one the summary shows
        with self.lock:
            due = self._last_lag_poll is None or now - self._last_lag_poll >= self.lag_interval
            if not due or self.busy:
                return
            self._last_lag_poll = now
        slot = self._slot()
        if slot is None:
            return

        def work() -> None:
            from cdc_notebook.connection.conninfo import connect

            try:
                if self._conn is None or self._conn.closed:
                    params = self._params()
                    if not params:
                        raise RuntimeError("no connection parameters for the slot's server")
                    self._conn = connect(params, application_name="cdc_notebook summary")
                status = fetch_slot_status(self._conn, slot)
                self._lag = (status.lag_bytes, status.lag_seconds, status.retained_wal_bytes)
                self._lag_error = None
            except Exception as exc:  # noqa: BLE001 - shown in the summary
                self._lag_error = describe_error(exc)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        future = self.run("polling the slot", work, clear_error=False)
        if wait:
            future.result(30)

    def close(self) -> None:
        self.shutdown()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


class SummaryWidget(WidgetView):
    """One HTML line plus a small table; refreshed by the pump (its hook takes the samples)."""

    min_interval = 0.5
    shows = ("summary",)

    def __init__(self, model: SummaryModel) -> None:
        super().__init__(model)
        self.html = self.make(w.HTML("<i>waiting for the reader…</i>"))
        self.box = self.html

    def show(self, state: SimpleNamespace) -> None:
        if state.summary is not None:
            beat = int(state.summary.taken_at // HEARTBEAT)
            set_changed(self.html, value=state.summary.live_html(beat))

    def hook(self, now: float) -> None:
        """Pump hook: a sample every ``min_interval`` (cheap) and a lag poll when due."""
        m = self.model
        previous = m.summary.taken_at if m.summary is not None else None
        if previous is None or now - previous >= self.min_interval:
            m.sample(now)
        m.poll_lag(now)
