"""Progress of the throwaway server's long steps, for a terminal and for a notebook.

Every long step (fetching nanoarrow, compiling wal2arrow, copying the installation, ``initdb``,
starting the server) reports :class:`ProgressEvent` values to a callback: one when it starts,
updates while it runs (bytes downloaded, files compiled), one when it ends. Pass the callback as
``progress=`` to :class:`~cdc_notebook.server.postgres.PostgresServer` or
:func:`~cdc_notebook.server.build.build_plugin`; a notebook widget renders the same events.

:class:`TerminalProgress` is the terminal's renderer: on a TTY one line that updates in place
(with the elapsed time ticking, so a slow step never looks hung), elsewhere (a log, a notebook's
stderr) one line when a step starts and one when it ends. ``progress="auto"`` picks it for every
step on a TTY, and elsewhere only for the plugin build (the only step that can take more than a
few seconds), so a warm start prints nothing outside a terminal; inside a Jupyter kernel it
picks progress bars in the cell instead (:mod:`cdc_notebook.widgets.progress`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO

#: the plugin build's steps (the ones that can be slow on a cold cache)
BUILD_STEPS = frozenset({"download", "extract", "compile"})


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a step. ``state``: ``"start"``, ``"update"``, ``"done"`` or ``"failed"``."""

    step: str                  # download, extract, compile, copy, initdb, start
    message: str               # what is happening, for a person: "compiling wal2arrow"
    state: str = "update"
    done: float | None = None  # units done so far (bytes, files), when countable
    total: float | None = None
    unit: str = ""             # "B" or "files"
    elapsed: float = 0.0       # seconds since the step started

    @property
    def fraction(self) -> float | None:
        if self.done is None or not self.total:
            return None
        return min(1.0, self.done / self.total)

    def amount(self) -> str:
        """``1.2 MiB/3.9 MiB`` or ``12/18 files``; empty when nothing is counted. Sizes in
        IEC units, as everywhere in the kit (:mod:`cdc_notebook.units`)."""
        from cdc_notebook.units import format_bytes

        if self.done is None:
            return ""
        if self.unit == "B":
            done = format_bytes(self.done)
            return f"{done}/{format_bytes(self.total)}" if self.total else done
        total = f"/{self.total:.0f}" if self.total else ""
        return f"{self.done:.0f}{total} {self.unit}".rstrip()

    def text(self) -> str:
        """One line: ``compiling wal2arrow  12/18 files  2.1 s``."""
        parts = [self.message]
        if self.state == "failed":
            parts.append("failed")
        amount = self.amount()
        if amount:
            parts.append(amount)
        parts.append(f"{self.elapsed:.1f} s")
        return "  ".join(parts)


ProgressCallback = Callable[[ProgressEvent], None]
ProgressArg = ProgressCallback | str | None


class Reporter:
    """Sends a step's events to a callback (or nowhere), updates at most ten a second."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback

    @contextmanager
    def step(self, step: str, message: str, *, total: float | None = None,
             unit: str = "") -> Iterator[Callable[..., None]]:
        """``with reporter.step("compile", "compiling wal2arrow", total=18, unit="files") as
        update: update(3)``. A failure inside reports ``failed`` and propagates."""
        start = time.monotonic()
        last = [0.0]
        event = ProgressEvent(step, message, "start", 0 if unit else None, total, unit)
        self._send(event)

        def update(done: float, total: float | None = None, message: str | None = None) -> None:
            nonlocal event
            now = time.monotonic()
            event = replace(event, state="update", done=done,
                            total=event.total if total is None else total,
                            message=message or event.message, elapsed=now - start)
            if now - last[0] >= 0.1 or (event.total and done >= event.total):
                last[0] = now
                self._send(event)

        try:
            yield update
        except BaseException:
            self._send(replace(event, state="failed", elapsed=time.monotonic() - start))
            raise
        self._send(replace(event, state="done", elapsed=time.monotonic() - start))

    def _send(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)


class TerminalProgress:
    """Renders events on a stream (stderr by default): one updating line on a TTY, else a
    line per start and end. ``steps`` limits which steps are shown (None: all)."""

    _SPIN = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: IO[str] | None = None, *, steps: frozenset[str] | None = None,
                 tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.steps = steps
        isatty = getattr(self.stream, "isatty", None)
        self.tty = tty if tty is not None else bool(isatty and isatty())
        self._lock = threading.Lock()
        self._current: ProgressEvent | None = None
        self._started = 0.0
        self._ticker: threading.Thread | None = None
        self._spin = 0

    def __call__(self, event: ProgressEvent) -> None:
        if self.steps is not None and event.step not in self.steps:
            return
        with self._lock:
            if self.tty:
                self._tty(event)
            elif event.state == "start":
                self._write(f"… {event.message}{self._total(event)}\n")
            elif event.state in ("done", "failed"):
                mark = "✓" if event.state == "done" else "✗"
                self._write(f"{mark} {event.text()}\n")

    @staticmethod
    def _total(event: ProgressEvent) -> str:
        if not event.total:
            return ""
        if event.unit == "B":
            from cdc_notebook.units import format_bytes

            return f" ({format_bytes(event.total)})"
        return f" ({event.total:.0f} {event.unit})"

    def _tty(self, event: ProgressEvent) -> None:
        if event.state == "start":
            self._current = event
            self._started = time.monotonic()
            self._draw()
            if self._ticker is None or not self._ticker.is_alive():
                self._ticker = threading.Thread(target=self._tick, name="cdc-progress",
                                                daemon=True)
                self._ticker.start()
        elif event.state == "update":
            self._current = event
            self._draw()
        else:
            self._current = None
            mark = "✓" if event.state == "done" else "✗"
            self._write(f"\r\x1b[K{mark} {event.text()}\n")

    def _draw(self) -> None:
        event = self._current
        if event is None:
            return
        event = replace(event, elapsed=time.monotonic() - self._started)
        self._spin = (self._spin + 1) % len(self._SPIN)
        fraction = event.fraction
        bar = ""
        if fraction is not None:
            filled = int(fraction * 20)
            bar = "[" + "#" * filled + "." * (20 - filled) + "] "
        self._write(f"\r\x1b[K{self._SPIN[self._spin]} {bar}{event.text()}")

    def _tick(self) -> None:
        while True:
            time.sleep(0.25)
            with self._lock:
                if self._current is None:
                    return
                self._draw()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stream: progress is not worth failing for


def resolve(progress: ProgressArg) -> ProgressCallback | None:
    """``"auto"``: every step on a TTY, only the plugin build elsewhere; ``None``: silent;
    a callable: itself."""
    if progress == "auto":
        notebook = _notebook_bars()
        if notebook is not None:
            return notebook
        stream = sys.stderr
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            return TerminalProgress(stream)
        return TerminalProgress(stream, steps=BUILD_STEPS, tty=False)
    if progress is None or callable(progress):
        return progress
    raise ValueError(f"progress must be a callable, 'auto' or None, not {progress!r}")


def _notebook_bars() -> ProgressCallback | None:
    """In a Jupyter kernel, progress bars in the cell (``cdc_notebook.widgets.progress``);
    None elsewhere, or when the widgets cannot be loaded."""
    try:
        from cdc_notebook.widgets.progress import NotebookProgress, in_notebook

        return NotebookProgress() if in_notebook() else None
    except Exception:  # noqa: BLE001 - no bars is better than no server
        return None
