"""Progress bars in a notebook for the kit's long steps.

One callable, :class:`NotebookProgress`, renders what each long step reports:

* the throwaway server's steps (:class:`~cdc_notebook.server.progress.ProgressEvent`: fetching
  nanoarrow, compiling wal2arrow, copying the installation, ``initdb``, starting), passed as
  ``PostgresServer(progress=...)`` or ``build_plugin(..., progress=...)``; ``progress="auto"``
  (their default) picks it by itself inside a Jupyter kernel;
* a snapshot, a bar per table with rows, bytes, rate and ETA
  (:class:`~cdc_notebook.snapshot.tables.SnapshotProgress`: ``CDCStream(...,
  snapshot=True, snapshot_progress=...)``);
* :meth:`LiveReader.catch_up <cdc_notebook.live.tables.LiveReader.catch_up>`: how much WAL is
  left to apply (:class:`CatchUpProgress`), shown by itself in a notebook when the wait lasts.

Bars are ``ipywidgets.FloatProgress`` with a line of text beside them, created and displayed in
the calling cell (the thread that runs it), then updated from whatever thread reports: each
bar at most ``min_interval`` apart (four a second), inside ``hold_sync`` (one message per
widget), and once more at the end, so the iopub budget holds whatever the report rate.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from cdc_notebook.live.tables import CatchUpProgress
from cdc_notebook.units import format_bytes, format_seconds

__all__ = ["CatchUpProgress", "NotebookProgress", "TextProgress", "in_notebook",
           "progress_bars"]


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where widgets can be displayed)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None) if ipython is not None else None
    shell = get() if get is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NotebookProgress:
    """Progress bars for server steps, snapshots and catch-up (see the module doc).

    ``display=True`` shows the (empty) box in the calling cell at once, so that reports from
    other threads land there; ``steps`` limits which server steps get a bar (None: all).
    """

    def __init__(self, *, title: str | None = None, display: bool = True,
                 min_interval: float = 0.25, steps: frozenset[str] | None = None) -> None:
        import ipywidgets as w

        self._w = w
        self.min_interval = min_interval
        self.steps = steps
        self._lock = threading.Lock()
        self._bars: dict[str, tuple[Any, Any]] = {}
        self._last: dict[str, float] = {}
        self._pending: dict[str, Any] = {}
        self.updates = 0  # bar writes so far (tests count them)
        children = [w.HTML(f"<b>{title}</b>")] if title else []
        self.box = w.VBox(children)
        if display:
            from IPython.display import display as show

            show(self.box)  # type: ignore[no-untyped-call]  # IPython: unannotated

    # ------------------------------------------------------------------ reports

    def __call__(self, event: Any) -> None:
        from cdc_notebook.server.progress import ProgressEvent
        from cdc_notebook.snapshot.tables import SnapshotProgress

        if isinstance(event, ProgressEvent):
            if self.steps is not None and event.step not in self.steps:
                return
            final = event.state in ("done", "failed")
            self._update(f"step:{event.step}", event.fraction, _step_text(event),
                         "success" if event.state == "done" else
                         "danger" if event.state == "failed" else "info", final)
        elif isinstance(event, SnapshotProgress):
            self._update(f"snapshot:{event.table}", event.fraction, _snapshot_text(event),
                         "success" if event.done else "info", event.done)
        elif isinstance(event, CatchUpProgress):
            self._update("catch-up", event.fraction, _catch_up_text(event),
                         "success" if event.done else "info", event.done)

    def _update(self, key: str, fraction: float | None, text: str, style: str,
                final: bool) -> None:
        now = time.monotonic()
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                w = self._w
                progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                           layout=w.Layout(width="240px"))
                label = w.HTML()
                self._bars[key] = bar = (progress, label)
                self.box.children = (*self.box.children, w.HBox([progress, label]))
            elif not final and now - self._last.get(key, 0.0) < self.min_interval:
                return  # a bar is written at most every min_interval (and at its end)
            self._last[key] = now
            progress, label = bar
            with progress.hold_sync(), label.hold_sync():
                if fraction is not None and progress.value != fraction:
                    progress.value = fraction
                elif fraction is None and final:
                    progress.value = 1.0
                if progress.bar_style != style:
                    progress.bar_style = style
                if label.value != text:
                    label.value = text
            self.updates += 1

    def close(self) -> None:
        """Remove the bars (they are registered as widgets until closed)."""
        with self._lock:
            for progress, label in self._bars.values():
                progress.close()
                label.close()
            self._bars.clear()
            self.box.close()


def _step_text(event: Any) -> str:
    from html import escape

    amount = ""
    if event.done is not None:
        amount = (f"{format_bytes(event.done)}" + (f" of {format_bytes(event.total)}"
                                                   if event.total else "")
                  if event.unit == "B" else event.amount())
    state = {"done": "✓ ", "failed": "✗ "}.get(event.state, "")
    parts = [f"{state}{escape(event.message)}", amount, format_seconds(event.elapsed)]
    return " · ".join(p for p in parts if p)


def _snapshot_text(p: Any) -> str:
    from html import escape

    eta = "" if p.done or p.eta is None else f" · ETA {format_seconds(p.eta)}"
    head = "✓ " if p.done else ""
    return (f"{head}snapshot of <b>{escape(p.table)}</b>: {p.rows:,} rows · "
            f"{format_bytes(p.bytes)} · {p.rows_per_second:,.0f} rows/s · "
            f"{format_seconds(p.elapsed)}{eta}")


def _catch_up_text(p: CatchUpProgress) -> str:
    from html import escape

    from cdc_notebook.connection.lsn import format_lsn

    if p.done:
        return f"✓ caught up at {format_lsn(p.target)} in {format_seconds(p.elapsed)}"
    eta = "" if p.eta is None else f" · ETA {format_seconds(p.eta)}"
    behind = f" ({escape(', '.join(p.behind[:3]))}{'…' if len(p.behind) > 3 else ''})" \
        if p.behind else ""
    return (f"catching up to {format_lsn(p.target)}: {format_bytes(p.remaining_bytes)} of WAL "
            f"to go{behind} · {format_seconds(p.elapsed)}{eta}")


def progress_bars(title: str | None = None, **options: Any) -> Any:
    """Bars in a notebook (:class:`NotebookProgress`), else a text renderer for a terminal or
    a log: server steps as :class:`~cdc_notebook.server.progress.TerminalProgress` writes them,
    snapshots as :class:`~cdc_notebook.snapshot.tables.ProgressBar`, catch-up as a line."""
    if in_notebook():
        return NotebookProgress(title=title, **options)
    return TextProgress()


class TextProgress:
    """The terminal's rendering of the same reports (one line each, updated in place)."""

    def __init__(self) -> None:
        from cdc_notebook.server.progress import TerminalProgress
        from cdc_notebook.snapshot.tables import ProgressBar

        self._server = TerminalProgress()
        self._snapshot = ProgressBar()
        self._last = 0.0

    def __call__(self, event: Any) -> None:
        from cdc_notebook.server.progress import ProgressEvent
        from cdc_notebook.snapshot.tables import SnapshotProgress

        if isinstance(event, ProgressEvent):
            self._server(event)
        elif isinstance(event, SnapshotProgress):
            self._snapshot(event)
        elif isinstance(event, CatchUpProgress):
            now = time.monotonic()
            if event.done or now - self._last >= 0.5:
                self._last = now
                text = _catch_up_text(event).replace("<b>", "").replace("</b>", "")
                sys.stderr.write("\r" + text + ("\n" if event.done else ""))
                sys.stderr.flush()
