"""Status: slot lag (bytes and time), retained WAL, wal_status, events/s and MB/s, a live chart.

The chart is one ``matplotlib.figure.Figure`` on the Agg canvas (never pyplot's global state),
its lines updated with ``set_data`` and rendered to PNG into an ``ipywidgets.Image`` at most
once a second.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ipywidgets as w
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cdc_notebook.provision.status import SlotStatus, _fmt_bytes, fetch_slot_status
from cdc_notebook.widgets._base import Model, WidgetView, esc, message_html
from cdc_notebook.widgets.connection import ConnectionModel
from cdc_notebook.widgets.pump import held, set_changed

_MB = 1024 * 1024


def frames_counters(frames: Any) -> Callable[[], tuple[int, int]]:
    """Cumulative (rows, bytes) received by live frames, for the throughput figures."""
    def counters() -> tuple[int, int]:
        tables = list(frames.tables.values())
        return (sum(t.stats.rows_received for t in tables),
                sum(t.stats.bytes_received for t in tables))
    return counters


class StatusModel(Model):
    """Polls the slot's state every ``poll_interval`` seconds (on the worker, with its own
    connection) and keeps a bounded history of throughput and lag for the chart."""

    def __init__(self, connection: ConnectionModel, *, slot_name: str | None = None,
                 counters: Callable[[], tuple[int, int]] | None = None,
                 poll_interval: float = 1.0, history: int = 120,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.connection = connection
        self.slot_name = slot_name
        self.counters = counters
        self.poll_interval = poll_interval
        self.clock = clock
        self.status: SlotStatus | None = None
        self.events_per_second = 0.0
        self.bytes_per_second = 0.0
        self.history: deque[tuple[float, float, float, float]] = deque(maxlen=history)
        self.polls = 0
        self._conn: Any = None
        self._last_poll: float | None = None
        self._last_counts: tuple[float, int, int] | None = None

    def poll(self, now: float) -> None:
        """Start a poll when one is due (called by the pump on every tick)."""
        with self.lock:
            due = self._last_poll is None or now - self._last_poll >= self.poll_interval
            if not due or self.busy or not self.slot_name or not self.connection.connected:
                return
            self._last_poll = now
        self.refresh_status(now)

    def refresh_status(self, now: float | None = None) -> Any:
        now = self.clock() if now is None else now

        def work() -> None:
            if self._conn is None or self._conn.closed:
                self._conn = self.connection.open(application_name="cdc_notebook status")
            slot = self.slot_name
            if not slot:
                raise RuntimeError("no slot chosen: set up one, or start the reader")
            status = fetch_slot_status(self._conn, slot)
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
            with self.lock:
                self.status = status
                self.events_per_second, self.bytes_per_second = eps, bps
                self.history.append((now, eps, bps / _MB, float(status.lag_bytes or 0)))
                self.polls += 1
                self.error = None
        return self.run("polling the slot", work, clear_error=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.shutdown()


def status_html(s: SlotStatus | None, eps: float, bps: float) -> str:
    if s is None:
        return "<i>no status yet</i>"
    lag_time = "n/a" if s.lag_seconds is None else f"{s.lag_seconds:.3f} s"
    state = f"active (pid {s.active_pid})" if s.active else "inactive"
    cells = [("slot", s.slot_name), ("state", state), ("lag", _fmt_bytes(s.lag_bytes)),
             ("lag (time)", lag_time), ("retained WAL", _fmt_bytes(s.retained_wal_bytes)),
             ("wal_status", s.wal_status or "n/a"),
             ("max_slot_wal_keep_size", "unbounded" if s.max_slot_wal_keep_size is None
              else _fmt_bytes(s.max_slot_wal_keep_size)),
             ("events/s", f"{eps:,.0f}"), ("MB/s", f"{bps / _MB:.2f}")]
    body = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th><td>{esc(v)}</td></tr>"
                   for k, v in cells)
    advice = "".join(f"<li>{esc(a)}</li>" for a in s.advice)
    return (f"<table class='cdc-status'>{body}</table>"
            + (f"<div class='cdc-advice'><b>Advice</b><ul>{advice}</ul></div>" if advice
               else ""))


class StatusWidget(WidgetView):
    """The numbers (refreshed at the pump's rate)."""

    shows = ("status", "events_per_second", "bytes_per_second", "error")

    def __init__(self, model: StatusModel) -> None:
        super().__init__(model)
        self.numbers = self.make(w.HTML())
        self.message = self.make(w.HTML())
        self.chart = StatusChart(model)
        self.box = self.make(w.VBox([self.make(w.HTML("<b>Status</b>")), self.numbers,
                                     self.chart.image, self.message]))
        self.refresh(0.0)

    def show(self, state: SimpleNamespace) -> None:
        with held(self.numbers, self.message):
            set_changed(self.numbers, value=status_html(state.status, state.events_per_second,
                                                        state.bytes_per_second))
            set_changed(self.message, value=message_html(state.error))

    def close(self) -> None:
        self.chart.close()
        super().close()


class StatusChart(WidgetView):
    """Throughput and lag over time: one Figure, Agg canvas, PNG into an Image (≤ 1 Hz)."""

    min_interval = 1.0
    shows = ("history",)
    model: StatusModel

    def __init__(self, model: StatusModel, *, width: float = 6.4, height: float = 2.4) -> None:
        super().__init__(model)
        self.figure = Figure(figsize=(width, height), dpi=100)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self.lag_axes = self.axes.twinx()
        (self.rate_line,) = self.axes.plot([], [], color="tab:blue", label="events/s")
        (self.lag_line,) = self.lag_axes.plot([], [], color="tab:red", label="lag (bytes)")
        self.axes.set_xlabel("seconds")
        self.axes.set_ylabel("events/s", color="tab:blue")
        self.lag_axes.set_ylabel("lag (bytes)", color="tab:red")
        self.figure.tight_layout()
        self.image = self.make(w.Image(format="png", layout=w.Layout(width=f"{int(width*100)}px")))
        self.renders = 0

    def version(self) -> int:
        return self.model.polls  # a new point in the history, not every change of the model

    def render(self, points: list[tuple[float, float, float, float]]) -> bytes:
        if points:
            t0 = points[0][0]
            xs = [p[0] - t0 for p in points]
            self.rate_line.set_data(xs, [p[1] for p in points])
            self.lag_line.set_data(xs, [p[3] for p in points])
            for axes in (self.axes, self.lag_axes):
                axes.relim()
                axes.autoscale_view()
            self.axes.set_xlim(0, max(1.0, xs[-1]))
        buffer = io.BytesIO()
        self.canvas.print_png(buffer)  # type: ignore[no-untyped-call]  # matplotlib: unannotated
        self.renders += 1
        return buffer.getvalue()

    def show(self, state: SimpleNamespace) -> None:
        png = self.render(state.history)
        with self.image.hold_sync():
            self.image.value = png
