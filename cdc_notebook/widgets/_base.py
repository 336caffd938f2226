"""What every widget model shares: a version counter, a worker for database work, error text.

A model is plain Python that code can drive (set attributes, call methods); its widget is a
thin view the UI pump refreshes when ``model.version`` moved. Button callbacks only call model
methods, which hand database work to the model's worker and return at once; the worker's result
(or error, as text) lands in the model and bumps its version.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cdc_notebook.errors import CDCError


def describe_error(exc: BaseException) -> str:
    """One readable message (with the fix when the kit knows it), never a traceback."""
    if isinstance(exc, CDCError):
        text = exc.message
        if exc.sqlstate:
            text += f" (SQLSTATE {exc.sqlstate})"
        if exc.hint:
            text += f". Fix: {exc.hint}"
        return text
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        sqlstate = getattr(exc, "sqlstate", None)
        hint = getattr(diag, "message_hint", None)
        return primary + (f" (SQLSTATE {sqlstate})" if sqlstate else "") + \
            (f". Hint: {hint}" if hint else "")
    return f"{type(exc).__name__}: {exc}"


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


class WidgetView:
    """Keeps every widget a view creates, so :meth:`close` unregisters them all (ipywidgets
    keeps each widget, its layout and its style, in a global registry until closed)."""

    min_interval = 0.25

    def __init__(self) -> None:
        self._widgets: list[Any] = []

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
