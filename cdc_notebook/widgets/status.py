"""Status: slot lag (bytes and time), retained WAL, wal_status, events/s and MiB/s, a live chart
(:mod:`cdc_notebook.widgets.chart`: events/s per table, lag in bytes and in seconds over time,
an SVG in the browser and a PNG for exported notebooks)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import ipywidgets as w
import psycopg

from cdc_notebook.errors import SlotNotFound
from cdc_notebook.provision.status import SlotStatus, fetch_slot_statuses
from cdc_notebook.provision.teardown import kit_publications
from cdc_notebook.units import MiB, format_byte_rate, format_bytes, format_seconds
from cdc_notebook.widgets._base import Model, WidgetView, esc, message_html
from cdc_notebook.widgets.chart import ChartPoint, StatusChart, rates
from cdc_notebook.widgets.connection import ConnectionModel
from cdc_notebook.widgets.pump import held, set_changed

_MB = MiB


def frames_counters(frames: Any) -> Callable[[], tuple[int, int]]:
    """Cumulative (rows, bytes) received by live frames, for the throughput figures."""
    def counters() -> tuple[int, int]:
        tables = list(frames.tables.values())
        return (sum(t.stats.rows_received for t in tables),
                sum(t.stats.bytes_received for t in tables))
    return counters


def reader_figures(reader: Any) -> dict[str, Any]:
    """What a running :class:`~cdc_notebook.live.tables.LiveReader`'s stream knows that the
    server does not: the commit time of the oldest change it received and has not yet
    acknowledged (lag in time), and whether it holds anything back at all. No I/O."""
    acks = getattr(getattr(getattr(reader, "stream", None), "router", None), "acks", None)
    if acks is None:
        return {}
    oldest = acks.oldest_unacknowledged_commit_ts
    return {"oldest_unacked_commit_ts": None if oldest is None else
            datetime.fromtimestamp(oldest / 1e6, timezone.utc),
            "in_flight": int(acks.in_flight)}


def lag_seconds(status: SlotStatus | None, in_flight: int | None = None) -> float | None:
    """The slot's lag in time: since the commit of the oldest change the reader has not
    acknowledged; else the server's own measure (``pg_stat_replication.flush_lag``); else 0
    when the reader holds nothing back (what is left of the lag in bytes is WAL with nothing
    for it, or an acknowledgement on its way). None when none of that is known."""
    if status is None:
        return None
    if status.lag_seconds is not None:
        return status.lag_seconds
    if status.walsender_flush_lag is not None:
        return status.walsender_flush_lag.total_seconds()
    if in_flight == 0 and status.active:
        return 0.0
    return None


class StatusModel(Model):
    """Polls the slot's state every ``poll_interval`` seconds (on the worker, with its own
    connection) and keeps a bounded history of throughput and lag for the chart.

    One poll is one snapshot: every logical slot of the database in one query (``slots``: the
    kit's, for the set-up tab) and the chosen slot's row among them (``status``), plus the
    reader's figures taken at the same moment; every view shows the latest snapshot, so the
    tabs never disagree. ``on_poll(listener)`` tells others (the set-up tab) after each one."""

    def __init__(self, connection: ConnectionModel, *, slot_name: str | None = None,
                 counters: Callable[[], tuple[int, int]] | None = None,
                 poll_interval: float = 1.0, history: int = 600,
                 clock: Callable[[], float] = time.monotonic,
                 reader: Callable[[], Any] | None = None,
                 table_counters: Callable[[], dict[str, int]] | None = None) -> None:
        super().__init__()
        self.connection = connection
        self.slot_name = slot_name
        self.counters = counters
        self.reader = reader  # () -> the running LiveReader (its stream's figures), or None
        self.slots: list[SlotStatus] = []  # the kit's slots, from the same poll
        self.lag_seconds: float | None = None
        self._listeners: list[Callable[[StatusModel], None]] = []
        self.poll_interval = poll_interval
        self.clock = clock
        self.status: SlotStatus | None = None
        self.events_per_second = 0.0
        self.bytes_per_second = 0.0
        self.history: deque[ChartPoint] = deque(maxlen=history)  # one point per poll
        self.table_counters = table_counters  # () -> rows received per table (the chart)
        self._last_tables: tuple[float, dict[str, int]] | None = None
        self.polls = 0
        self._conn: Any = None
        self._last_poll: float | None = None
        self._last_counts: tuple[float, int, int] | None = None

    def on_poll(self, listener: Callable[[StatusModel], None]) -> None:
        """``listener(model)`` after every successful poll (on the worker thread)."""
        self._listeners.append(listener)

    def poll(self, now: float) -> None:
        """Start a poll when one is due (called by the pump on every tick)."""
        with self.lock:
            due = self._last_poll is None or now - self._last_poll >= self.poll_interval
            if not due or self.busy or not self.connection.connected:
                return
            self._last_poll = now
        self.refresh_status(now)

    def refresh_status(self, now: float | None = None) -> Any:
        now = self.clock() if now is None else now

        def work() -> None:
            if self._conn is None or self._conn.closed:
                self._conn = self.connection.open(application_name="cdc_notebook status")
            slot = self.slot_name
            recorded = {s for m in kit_publications(self._conn).values()
                        for s in m.get("slots", [])}
            every = fetch_slot_statuses(self._conn, kit_slots=recorded)
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._conn.rollback()
            kit = [s for s in every if s.kit_managed or s.slot_name == slot]
            if not slot:
                with self.lock:
                    self.slots = kit
                self._told()
                return
            status = next((s for s in every if s.slot_name == slot), None)
            if status is None:
                with self.lock:
                    self.slots = kit
                self._told()
                raise SlotNotFound(f"replication slot {slot!r} does not exist",
                                   hint="it may have been dropped, or was temporary and went "
                                   "with its connection", sqlstate="42704")
            live = self.reader() if self.reader is not None else None
            figures = reader_figures(live) if live is not None else {}
            in_flight = figures.pop("in_flight", None)
            if figures:
                status = status.with_reader(**figures)
            eps = bps = 0.0
            if self.counters is not None:
                rows, nbytes = self.counters()
                if self._last_counts is not None:
                    then, rows0, bytes0 = self._last_counts
                    dt = now - then
                    if dt > 0:
                        eps = (rows - rows0) / dt
                        bps = (nbytes - bytes0) / dt
                self._last_counts = (now, rows, nbytes)
                status = status.with_reader(events_per_second=eps, bytes_per_second=bps)
            lag = lag_seconds(status, in_flight)
            per_table: dict[str, float] = {}
            if self.table_counters is not None:
                counts = self.table_counters()
                per_table = rates(self._last_tables, now, counts)
                self._last_tables = (now, counts)
            with self.lock:
                self.status = status
                self.slots = kit
                self.lag_seconds = lag
                self.events_per_second, self.bytes_per_second = eps, bps
                self.history.append(ChartPoint(now, per_table, eps, bps, status.lag_bytes, lag))
                self.polls += 1
                self.error = None
            self._told()
        return self.run("polling the slot", work, clear_error=False)

    def _told(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.shutdown()


def status_html(s: SlotStatus | None, eps: float, bps: float,
                lag_time: float | None = None) -> str:
    if s is None:
        return "<i>no status yet</i>"
    if lag_time is None:
        lag_time = s.lag_seconds
    state = f"active (pid {s.active_pid})" if s.active else "inactive"
    cells = [("slot", f"{s.slot_name} ({s.kind})"), ("state", state), ("lag", format_bytes(s.lag_bytes)),
             ("lag (time)", format_seconds(lag_time)),
             ("retained WAL", format_bytes(s.retained_wal_bytes)),
             ("wal_status", s.wal_status or "n/a"),
             ("max_slot_wal_keep_size", "unbounded" if s.max_slot_wal_keep_size is None
              else format_bytes(s.max_slot_wal_keep_size)),
             ("events/s", f"{eps:,.0f}"), ("throughput", format_byte_rate(bps))]
    body = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th><td>{esc(v)}</td></tr>"
                   for k, v in cells)
    advice = "".join(f"<li>{esc(a)}</li>" for a in s.advice)
    return (f"<table class='cdc-status'>{body}</table>"
            + (f"<div class='cdc-advice'><b>Advice</b><ul>{advice}</ul></div>" if advice
               else ""))


class StatusWidget(WidgetView):
    """The numbers (refreshed at the pump's rate)."""

    shows = ("status", "events_per_second", "bytes_per_second", "error", "lag_seconds")

    def __init__(self, model: StatusModel) -> None:
        super().__init__(model)
        self.numbers = self.make(w.HTML())
        self.message = self.make(w.HTML())
        self.chart = StatusChart(model)
        self.box = self.make(w.VBox([self.make(w.HTML("<b>Status</b>")), self.numbers,
                                     self.chart.box, self.message]))
        self.refresh(0.0)

    def show(self, state: SimpleNamespace) -> None:
        with held(self.numbers, self.message):
            set_changed(self.numbers, value=status_html(state.status, state.events_per_second,
                                                        state.bytes_per_second,
                                                        state.lag_seconds))
            set_changed(self.message, value=message_html(state.error))

    def close(self) -> None:
        self.chart.close()
        super().close()
