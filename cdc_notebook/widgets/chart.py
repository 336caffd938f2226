"""The status chart: events/s per table, the slot's lag in bytes and in seconds, over time.

In the browser it is an SVG drawn by the kernel at most once a second (an ``HTML`` widget: no
front-end code to install): three panels on one time axis, a line per table for events/s,
readable units on every axis (``50K``, ``12.0 MiB``, ``850 ms``), the exact value of any point
on hover, a window (the last minute, five, or all) and a tick box per table to pick what is
drawn. The same figures render as a PNG (matplotlib's Agg canvas, never pyplot's global state)
for exported notebooks: displaying the chart itself (``display(dash.chart)``) puts the PNG
beside the widget in the cell's output, and an export without widget state shows that.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import ipywidgets as w

from cdc_notebook.units import format_bytes, format_seconds
from cdc_notebook.widgets._base import WidgetView
from cdc_notebook.widgets.pump import held, set_changed

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22")
LAG_COLOR, LAG_TIME_COLOR = "#d62728", "#7f7f7f"
WINDOWS = (("last minute", 60.0), ("5 minutes", 300.0), ("all", math.inf))


@dataclass(frozen=True)
class ChartPoint:
    """One poll of the status: when, events/s per table, throughput and the slot's lag."""

    t: float  # the pump's clock (monotonic seconds)
    tables: dict[str, float] = field(default_factory=dict)  # events/s per table
    events_per_second: float = 0.0
    bytes_per_second: float = 0.0
    lag_bytes: int | None = None
    lag_seconds: float | None = None


def format_count(value: float) -> str:
    """``950``, ``12K``, ``1.5M``: counts per second on an axis."""
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{value:.0f}"


def nice_ticks(high: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``high``."""
    if not high or high <= 0 or math.isnan(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(math.ceil(high / step - 1e-9) + 1)]


def byte_ticks(high: float, count: int = 4) -> list[float]:
    """Ticks on a bytes axis at round numbers of its unit (KiB, MiB, GiB)."""
    unit = 1.0
    for size in (1024.0 ** 3, 1024.0 ** 2, 1024.0):
        if high >= size:
            unit = size
            break
    return [t * unit for t in nice_ticks(high / unit, count)]


def seconds_ticks(high: float, count: int = 4) -> list[float]:
    """Ticks on a seconds axis at least a millisecond apart: ``format_seconds`` writes whole
    milliseconds below a second, so finer steps would label two ticks alike (2 ms, 2 ms)."""
    return [t / 1000 for t in nice_ticks(max(high * 1000, count), count)]


def _time_label(seconds_ago: float) -> str:
    if seconds_ago < 0.5:
        return "now"
    if seconds_ago < 120:
        return f"−{seconds_ago:.0f} s"
    return f"−{seconds_ago / 60:.0f} min"


@dataclass
class _Panel:
    title: str
    series: list[tuple[str, str, list[float | None]]]  # (label, color, values)
    fmt: Callable[[float], str]
    ticks: Callable[[float], list[float]]


def _panels(points: Sequence[ChartPoint], tables: Sequence[str]) -> list[_Panel]:
    rates = [(name, PALETTE[i % len(PALETTE)], [p.tables.get(name) for p in points])
             for i, name in enumerate(tables)]
    return [
        _Panel("events/s", rates, format_count, nice_ticks),
        _Panel("lag (WAL not yet acknowledged)",
               [("lag", LAG_COLOR, [None if p.lag_bytes is None else float(p.lag_bytes)
                                    for p in points])], format_bytes, byte_ticks),
        _Panel("lag (time since the oldest unacknowledged commit)",
               [("lag (time)", LAG_TIME_COLOR, [p.lag_seconds for p in points])],
               format_seconds, seconds_ticks),
    ]


def svg_chart(points: Sequence[ChartPoint], tables: Sequence[str], *, width: int = 640,
              panel_height: int = 96) -> str:
    """The chart as SVG (three panels on one time axis), with a ``<title>`` per point."""
    if not points:
        return "<i>the chart starts with the first status poll (once a second)</i>"
    left, right, top_pad, gap = 62, 12, 18, 26
    plot_w = width - left - right
    now = points[-1].t
    span = max(1.0, now - points[0].t)

    def x_of(t: float) -> float:
        return left + plot_w * (1 - (now - t) / span)

    panels = _panels(points, tables)
    height = len(panels) * (panel_height + top_pad + gap) + 20
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"class='cdc-chart' font-family='sans-serif' font-size='10' "
           f"data-lag-seconds='{_attr(points[-1].lag_seconds)}' "
           f"data-lag-bytes='{_attr(points[-1].lag_bytes)}' "
           f"data-events-per-second='{points[-1].events_per_second:.0f}'>"]
    y0 = 0.0
    for panel in panels:
        top = y0 + top_pad
        bottom = top + panel_height
        values = [v for _, _, vs in panel.series for v in vs if v is not None]
        ticks = panel.ticks(max(values) if values else 0.0)
        high = ticks[-1] or 1.0

        def y_of(v: float, top: float = top, high: float = high) -> float:
            return top + panel_height * (1 - v / high)

        last = [(label, vs[-1]) for label, _, vs in panel.series if vs and vs[-1] is not None]
        now_text = " · ".join(f"{label} {panel.fmt(v)}" if len(panel.series) > 1
                              else panel.fmt(v) for label, v in last)
        out.append(f"<text x='{left}' y='{top - 5:.0f}' font-weight='bold'>"
                   f"{html.escape(panel.title)}</text>")
        out.append(f"<text x='{width - right}' y='{top - 5:.0f}' text-anchor='end' "
                   f"class='cdc-now'>{html.escape(now_text or 'n/a')}</text>")
        for tick in ticks:
            y = y_of(tick)
            out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                       "stroke='#e5e5e5'/>")
            out.append(f"<text x='{left - 4}' y='{y + 3:.1f}' text-anchor='end' "
                       f"fill='#555'>{html.escape(panel.fmt(tick))}</text>")
        for label, color, vs in panel.series:
            segment: list[str] = []
            segments = [segment]
            for p, v in zip(points, vs, strict=True):
                if v is None:
                    segment = []
                    segments.append(segment)
                    continue
                segment.append(f"{x_of(p.t):.1f},{y_of(v):.1f}")
            for seg in segments:
                if len(seg) > 1:
                    out.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.6' "
                               f"points='{' '.join(seg)}'/>")
            for p, v in zip(points, vs, strict=True):
                if v is None:
                    continue
                tip = f"{label}: {panel.fmt(v)} ({_time_label(now - p.t)})"
                out.append(f"<circle cx='{x_of(p.t):.1f}' cy='{y_of(v):.1f}' r='2.2' "
                           f"fill='{color}'><title>{html.escape(tip)}</title></circle>")
        y0 = bottom + gap - top_pad
    axis_y = y0 + top_pad + 4
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * frac
        out.append(f"<text x='{x:.1f}' y='{axis_y:.0f}' text-anchor='middle' fill='#555'>"
                   f"{_time_label(span * (1 - frac))}</text>")
    out.append("</svg>")
    legend = " ".join(
        f"<span style='color:{PALETTE[i % len(PALETTE)]}'>■</span> {html.escape(name)}"
        for i, name in enumerate(tables))
    return f"<div class='cdc-chart-box'>{''.join(out)}<div>{legend}</div></div>"


def _attr(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def png_chart(points: Sequence[ChartPoint], tables: Sequence[str], *, width: float = 6.4,
              height: float = 4.8, dpi: int = 100) -> bytes:
    """The same three panels as a PNG (the static rendering, for exported notebooks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, 1, sharex=True)
    now = points[-1].t if points else 0.0
    xs = [p.t - now for p in points]
    for ax, panel in zip(axes, _panels(points, tables), strict=True):
        for label, color, vs in panel.series:
            ax.plot(xs, [math.nan if v is None else v for v in vs], color=color, label=label,
                    linewidth=1.4)
        values = [v for _, _, vs in panel.series for v in vs if v is not None]
        ticks = panel.ticks(max(values) if values else 0.0)
        ax.set_yticks(ticks)
        ax.set_ylim(0, ticks[-1] or 1.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, f=panel.fmt: f(v)))
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.grid(True, color="#e5e5e5")
        if len(panel.series) > 1:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1].xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _time_label(-v)))
    if not points:
        axes[0].text(0.5, 0.5, "no status poll yet", ha="center", transform=axes[0].transAxes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


class StatusChart(WidgetView):
    """The chart over a :class:`~cdc_notebook.widgets.status.StatusModel`'s history, redrawn
    at most once a second when a poll added a point (or the window or tables changed)."""

    min_interval = 1.0
    shows = ("history",)

    def __init__(self, model: Any, *, width: int = 640) -> None:
        super().__init__(model)
        self.width = width
        m = self.make
        self.html = m(w.HTML("<i>the chart starts with the first status poll</i>"))
        self.window = m(w.ToggleButtons(options=[label for label, _ in WINDOWS],
                                        value=WINDOWS[0][0], style={"button_width": "90px"}))
        self.picks = m(w.HBox())  # a tick box per table
        self._picked: dict[str, Any] = {}
        self.box = m(w.VBox([m(w.HBox([self.window, self.picks])), self.html]))
        self.renders = 0
        self._settings = 0
        self.window.observe(self._changed, names="value")

    def _changed(self, _change: Any = None) -> None:
        self._settings += 1  # redraw at the next tick, not here (the pump writes widgets)

    def version(self) -> tuple[int, int]:
        return (self.model.polls, self._settings)

    def selected(self, tables: Sequence[str]) -> list[str]:
        return [t for t in tables if t not in self._picked or self._picked[t].value]

    def points(self, history: Sequence[ChartPoint]) -> list[ChartPoint]:
        window = dict(WINDOWS)[self.window.value]
        if not history:
            return []
        newest = history[-1].t
        return [p for p in history if newest - p.t <= window]

    def show(self, state: SimpleNamespace) -> None:
        history: list[ChartPoint] = list(state.history)
        tables = sorted({name for p in history for name in p.tables})
        new = [t for t in tables if t not in self._picked]
        if new:
            for name in new:
                box = self.make(w.Checkbox(value=True, description=name, indent=False,
                                           layout=w.Layout(width="auto")))
                box.observe(self._changed, names="value")
                self._picked[name] = box
            self.picks.children = tuple(self._picked.values())
        points = self.points(history)
        with held(self.html):
            set_changed(self.html, value=svg_chart(points, self.selected(tables),
                                                   width=self.width))
        self.renders += 1

    # ------------------------------------------------------------------ the static figure

    def png(self) -> bytes:
        """The chart as it stands, as a PNG (what an exported notebook shows)."""
        with self.model.lock:
            history = list(self.model.history)
        tables = sorted({name for p in history for name in p.tables})
        return png_chart(self.points(history), self.selected(tables))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget in a live notebook; the PNG of the chart as it stands where there are
        no widgets (nbconvert without widget state, a notebook viewer)."""
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data = dict(data or {})
        data["image/png"] = base64.b64encode(self.png()).decode()
        data["text/plain"] = "<status chart: events/s per table, lag in bytes and in seconds>"
        return data


def frames_table_counters(frames: Any) -> Callable[[], dict[str, int]]:
    """Rows received per table so far (the chart's events/s per table)."""
    def counters() -> dict[str, int]:
        return {name: live.stats.rows_received for name, live in list(frames.tables.items())}
    return counters


def rates(previous: tuple[float, dict[str, int]] | None, now: float,
          counts: dict[str, int]) -> dict[str, float]:
    """Events/s per table between two samples of the counters."""
    if previous is None:
        return dict.fromkeys(counts, 0.0)
    then, before = previous
    dt = now - then
    if dt <= 0:
        return dict.fromkeys(counts, 0.0)
    return {name: max(0.0, (n - before.get(name, 0)) / dt) for name, n in counts.items()}


__all__ = ["ChartPoint", "StatusChart", "format_count", "frames_table_counters", "nice_ticks",
           "png_chart", "rates", "svg_chart"]
