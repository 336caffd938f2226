"""The one UI pump: the only code that writes to widgets while a reader streams.

Why one pump, at a bounded rate: the Jupyter server drops iopub messages above 1,000/s
(averaged over 3 s, and the counters only reset when the kernel goes idle, which a background
reader never lets happen), a dropped widget update is never resent, and ipywidgets has no
locking. So the reader only applies batches to the live frames and bumps their version; the
pump wakes a few times a second, asks each view whether its source moved, lets the view copy
what it needs (under the frames' lock, inside the view) and write only the values that changed,
each widget inside ``hold_sync`` so several changes make one message.

Views declare their own minimum interval (numbers and tables 0.25–0.5 s, charts ≥ 1 s). The
clock is injectable, so tests drive :meth:`UIPump.tick` by hand and count messages.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol


class View(Protocol):
    """What the pump drives. ``version()`` must be cheap (no I/O, no copy)."""

    min_interval: float

    def version(self) -> Any: ...

    def refresh(self, now: float) -> None: ...


@dataclass
class _Entry:
    view: Any
    last_time: float = float("-inf")
    last_version: Any = field(default_factory=object)  # never equal to a real version


class UIPump:
    """Ticks views at a bounded rate, from a daemon thread or by hand (``tick(now)``)."""

    def __init__(self, *, interval: float = 0.25, clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[Any, BaseException], None] | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self.ticks = 0
        self.refreshes = 0
        self.errors: list[str] = []
        self.last_traceback: str | None = None
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error
        self._hooks: list[Callable[[float], None]] = []

    # ------------------------------------------------------------------ registration

    def add(self, view: Any) -> Any:
        with self._lock:
            if not any(e.view is view for e in self._entries):
                self._entries.append(_Entry(view))
        return view

    def remove(self, view: Any) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e.view is not view]

    def add_hook(self, hook: Callable[[float], None]) -> None:
        """A function called on every tick before the views (debounce timers, poll schedules).
        It must not block: hand slow work to a worker."""
        self._hooks.append(hook)

    @property
    def views(self) -> list[Any]:
        with self._lock:
            return [e.view for e in self._entries]

    # ------------------------------------------------------------------ ticking

    def tick(self, now: float | None = None) -> int:
        """Refresh the views that are due and whose source moved; returns how many."""
        now = self.clock() if now is None else now
        self.ticks += 1
        for hook in list(self._hooks):
            self._guard(hook, hook, now)
        with self._lock:
            entries = list(self._entries)
        refreshed = 0
        for entry in entries:
            min_interval = getattr(entry.view, "min_interval", self.interval)
            # A microsecond of slack: clock sums such as 5 × 0.05 must not skip a period.
            if now - entry.last_time < min_interval - 1e-6:
                continue
            version = entry.view.version()
            if version == entry.last_version:
                continue
            if self._guard(entry.view, entry.view.refresh, now):
                entry.last_version = version
            entry.last_time = now
            refreshed += 1
        self.refreshes += refreshed
        return refreshed

    def _guard(self, who: Any, fn: Callable[[float], None], now: float) -> bool:
        # A view's bug must not stop the pump (the reader keeps streaming regardless).
        try:
            fn(now)
            return True
        except Exception as exc:  # noqa: BLE001 - reported, and the pump goes on
            self.errors.append(f"{who!r}: {exc!r}")
            del self.errors[:-20]
            self.last_traceback = traceback.format_exc()
            if self._on_error is not None:
                self._on_error(who, exc)
            else:
                # one line where the dashboard is shown, not a traceback every tick
                # (pump.last_traceback keeps the whole of the last one)
                from cdc_notebook.widgets._base import describe_error

                print(f"cdc_notebook: {type(who).__name__} could not refresh: "
                      f"{describe_error(exc)} (the pump goes on; pump.last_traceback has the "
                      "traceback)", file=sys.stderr)
            return False

    # ------------------------------------------------------------------ the thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> UIPump:
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cdc-ui-pump", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop ticking and close every view that has ``close()`` (widgets are registered
        globally until closed)."""
        self.stop()
        for view in self.views:
            close = getattr(view, "close", None)
            if close is not None:
                close()
        with self._lock:
            self._entries.clear()


# --------------------------------------------------------------------------- widget writes


def set_changed(widget: Any, **values: Any) -> int:
    """Set only the traits whose value differs; returns how many were set.

    Call inside :func:`held` so they travel as one message.
    """
    changed = 0
    for name, value in values.items():
        if getattr(widget, name) != value:
            setattr(widget, name, value)
            changed += 1
    return changed


@contextmanager
def held(*widgets: Any) -> Iterator[None]:
    """``hold_sync`` on several widgets: each sends at most one update when the block ends."""
    with ExitStack() as stack:
        for widget in widgets:
            stack.enter_context(widget.hold_sync())
        yield
