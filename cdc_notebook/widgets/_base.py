"""What every widget model and view shares: a version counter, a worker for database work,
error text, and the pump's ``version()``/``refresh()`` around the model.

A model is plain Python that code can drive (set attributes, call methods); its widget is a
thin view the UI pump refreshes when ``model.view_version()`` moved. Button callbacks only call
model methods, which hand database work to the model's worker and return at once; the worker's
result (or error, as text) lands in the model and bumps its version. A view names the model
attributes it shows (``shows``); ``refresh`` copies them under the model's lock and hands them
to the view's one hook, ``show``, which writes only what changed.
"""

from __future__ import annotations

import html
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from cdc_notebook.briefly import describe_error

__all__ = ["CONTROL_CSS", "Model", "WidgetView", "describe_error", "esc", "message_html",
           "off_main_shell"]


# What a clicked control shows until the click is handled (the pump then disables it): at once
# and in the browser alone, so a click that waits behind a running cell says so.
CONTROL_CLASS = "cdc-control"
CONTROL_CSS = ("<style>.cdc-control:focus:not(:disabled)::after{content:' (requested…)';"
               "font-style:italic}</style>")


def off_main_shell(widget: Any) -> bool:
    """Handle the front-end's messages to ``widget`` (a click) on the kernel subshell the
    front-end sends them to, not on the main shell, where they wait until the running cell
    ends. JupyterLab ≥ 4.4 sends widget messages to a subshell of ipykernel ≥ 7, which routes
    each back to the shell that last wrote to the widget, the main one for a widget made in a
    cell; this keeps the front-end's choice. Only for widgets whose handlers are thread-safe
    (model methods that take the model's lock and hand work to its worker). Returns whether it
    applies (ipykernel 7's comms); elsewhere the click waits and :data:`CONTROL_CSS` says so."""
    widget.add_class(CONTROL_CLASS)
    comm = getattr(widget, "comm", None)
    if comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    comm._reply_subshell_for = lambda data, default: default
    return True


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def message_html(error: str | None, info: str | None = None) -> str:
    if error:
        return f'<div class="cdc-error" style="color:#b00020"><b>Error:</b> {esc(error)}</div>'
    if info:
        return f'<div class="cdc-info">{esc(info)}</div>'
    return ""


class Model:
    """A version counter, an error message, a busy flag and a one-thread worker."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.version = 0
        self.error: str | None = None
        self.info: str | None = None
        self.busy: str | None = None  # what the worker is doing, for the view
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future[Any]] = []

    def bump(self) -> None:
        with self.lock:
            self.version += 1

    def view_version(self) -> Any:
        """What a view compares to know it is stale (cheap: no I/O, no copy). The version
        counter; a model whose views also show something it does not count extends it."""
        return self.version

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.error = describe_error(exc)
            self.bump()

    def run(self, what: str, fn: Callable[[], Any],
            done: Callable[[Any], None] | None = None, *,
            clear_error: bool = True) -> Future[Any]:
        """Run ``fn`` on the worker; ``done(result)`` runs there too; errors become text.

        ``clear_error=False`` (periodic polls) keeps the last error shown until one succeeds.
        """
        with self.lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix=type(self).__name__)
            self.busy = what
            if clear_error:
                self.error = None
            self.bump()

        def job() -> Any:
            try:
                result = fn()
                if done is not None:
                    done(result)
                return result
            except Exception as exc:  # noqa: BLE001 - shown in the widget, not raised
                self.fail(exc)
                return None
            finally:
                with self.lock:
                    self.busy = None
                    self.bump()

        future = self._executor.submit(job)
        self._futures = [f for f in self._futures if not f.done()] + [future]
        return future

    def wait(self, timeout: float | None = 60.0) -> None:
        """Wait for the worker's queued jobs (tests, scripts)."""
        for future in list(self._futures):
            future.result(timeout)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _copied(value: Any) -> Any:
    """A container copied, so the worker may change the model's own once the lock is let go."""
    if isinstance(value, (list, deque)):
        return list(value)
    if isinstance(value, (set, frozenset)):
        return set(value)
    if isinstance(value, dict):
        return dict(value)
    return value


class WidgetView:
    """A thin view over a model, driven by the pump: :meth:`version` and :meth:`refresh`.

    ``refresh`` copies the model attributes named in ``shows`` under the model's lock and
    hands them to :meth:`show` (the one hook a view writes), outside the lock. It also keeps
    every widget the view creates, so :meth:`close` unregisters them all (ipywidgets keeps
    each widget, its layout and its style, in a global registry until closed)."""

    min_interval = 0.25
    shows: tuple[str, ...] = ()  # the model's attributes show() receives

    def __init__(self, model: Any) -> None:
        self.model = model
        self._widgets: list[Any] = []

    def version(self) -> Any:
        return self.model.view_version()

    def refresh(self, now: float) -> None:
        with self.model.lock:
            state = SimpleNamespace(**{name: _copied(getattr(self.model, name))
                                       for name in self.shows})
        self.show(state)

    def show(self, state: SimpleNamespace) -> None:
        """Write what ``state`` (the ``shows`` attributes) says, setting only what changed."""
        raise NotImplementedError

    def make(self, widget: Any) -> Any:
        self._widgets.append(widget)
        return widget

    def close(self) -> None:
        for widget in reversed(self._widgets):
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None and hasattr(part, "close"):
                    part.close()
            widget.close()
        self._widgets.clear()
