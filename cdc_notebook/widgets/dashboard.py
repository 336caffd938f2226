"""``explore()``: the dashboard composing every widget, with the reader's controls.

Everything on screen is refreshed by one :class:`~cdc_notebook.pump.UIPump`; the reader only
applies batches to the live frames. ``Dashboard.stop()`` stops the reader and the pump and
closes every widget it created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ..live import LiveFrames, LiveReader
from ..pump import UIPump, held, set_changed
from ._base import Model, WidgetView, esc, message_html
from .connection import ConnectionModel, ConnectionWidget
from .patterns import PatternsModel, PatternsWidget
from .setup import SetupModel, SetupWidget
from .status import StatusModel, StatusWidget, frames_counters
from .table import TableViewModel, TableViewWidget


class ReaderModel(Model):
    """Start, pause, resume and stop the live reader (code or buttons)."""

    def __init__(self, connection: ConnectionModel, patterns: PatternsModel,
                 setup: SetupModel, frames: LiveFrames, *,
                 stream_factory: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.connection = connection
        self.patterns = patterns
        self.setup = setup
        self.frames = frames
        self.reader: LiveReader | None = None
        self._stream_factory = stream_factory
        self.log: list[str] = []  # appended to the widget's Output by the pump

    @property
    def state(self) -> str:
        if self.reader is None:
            return "stopped"
        if self.reader.error is not None:
            return "failed"
        return self.reader.state

    def _note(self, text: str) -> None:
        with self.lock:
            self.log.append(text)
            self.info = text

    def start(self) -> Any:
        def work() -> None:
            if self.reader is not None and self.reader.state in ("running", "paused"):
                self.reader.resume()
                return
            if self._stream_factory is None:
                from ..reader import CDCStream
                factory: Callable[..., Any] = CDCStream
            else:
                factory = self._stream_factory
            stream = factory(self.connection.conninfo(), self.patterns.selection(),
                             slot_name=self.setup.slot_name or None,
                             publication=self.setup.publication or None,
                             plugin=self.setup.plugin, temporary=self.setup.temporary)
            reader = LiveReader(stream, self.frames).start()
            with self.lock:
                self.reader = reader
            self.setup.slot_name = stream.slot.slot_name
            self._note(f"streaming {len(stream.readers)} table(s) from slot "
                       f"{stream.slot.slot_name}")
        return self.run("starting the reader", work)

    def pause(self) -> None:
        if self.reader is not None:
            self.reader.pause()
            self._note("paused")
        self.bump()

    def resume(self) -> None:
        if self.reader is not None:
            self.reader.resume()
            self._note("resumed")
        self.bump()

    def stop(self) -> Any:
        def work() -> None:
            if self.reader is not None:
                self.reader.stop()
                self._note("stopped")
        return self.run("stopping the reader", work)


class ReaderWidget(WidgetView):
    def __init__(self, model: ReaderModel) -> None:
        super().__init__()
        self.model = model
        m = self.make
        self.start_button = m(w.Button(description="Start", button_style="success"))
        self.pause_button = m(w.Button(description="Pause"))
        self.resume_button = m(w.Button(description="Resume"))
        self.stop_button = m(w.Button(description="Stop", button_style="danger"))
        self.state = m(w.HTML())
        self.log = m(w.Output(layout=w.Layout(max_height="120px", overflow="auto")))
        self._logged = 0
        self.box = m(w.VBox([m(w.HTML("<b>Reader</b>")),
                             m(w.HBox([self.start_button, self.pause_button,
                                       self.resume_button, self.stop_button])),
                             self.state, self.log]))
        self.start_button.on_click(lambda _: model.start())
        self.pause_button.on_click(lambda _: model.pause())
        self.resume_button.on_click(lambda _: model.resume())
        self.stop_button.on_click(lambda _: model.stop())
        self.refresh(0.0)

    def version(self) -> tuple[int, str]:
        return (self.model.version, self.model.state)

    def refresh(self, now: float) -> None:
        m = self.model
        state = m.state
        with m.lock:
            busy, error, new_lines = m.busy, m.error, m.log[self._logged:]
            self._logged = len(m.log)
        if m.reader is not None and m.reader.error is not None and not error:
            error = f"{type(m.reader.error).__name__}: {m.reader.error}"
        text = f"reader: <b>{esc(state)}</b>" + (f" <i>({esc(busy)}…)</i>" if busy else "")
        with held(self.state, self.start_button, self.pause_button, self.resume_button,
                  self.stop_button):
            set_changed(self.state, value=text + message_html(error))
            set_changed(self.start_button, disabled=bool(busy) or state == "running")
            set_changed(self.pause_button, disabled=state != "running")
            set_changed(self.resume_button, disabled=state != "paused")
            set_changed(self.stop_button, disabled=state not in ("running", "paused"))
        for line in new_lines:
            self.log.append_stdout(line + "\n")  # never `with out:` from a thread


class Dashboard:
    """The models, their widgets and the pump, composed. Display it in a cell."""

    def __init__(self, *, server: Any = None, embedded: bool = True,
                 frames: LiveFrames | None = None, tables: str = "public.*",
                 connect: bool = False, pump_interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, start_pump: bool = True,
                 stream_factory: Callable[..., Any] | None = None) -> None:
        self.frames = frames if frames is not None else LiveFrames()
        self.connection = ConnectionModel(
            server_factory=(lambda: server) if server is not None else None, embedded=embedded)
        self.patterns = PatternsModel(self.connection, include=tables, clock=clock)
        self.setup = SetupModel(self.connection, self.patterns)
        self.status = StatusModel(self.connection, counters=frames_counters(self.frames),
                                  clock=clock)
        self.reader = ReaderModel(self.connection, self.patterns, self.setup, self.frames,
                                  stream_factory=stream_factory)
        self.table = TableViewModel(self.frames)
        self.views: list[WidgetView] = [
            ConnectionWidget(self.connection), PatternsWidget(self.patterns),
            SetupWidget(self.setup), ReaderWidget(self.reader), StatusWidget(self.status),
            TableViewWidget(self.table)]
        status_view = self.views[4]
        assert isinstance(status_view, StatusWidget)
        self.pump = UIPump(interval=pump_interval, clock=clock)
        self.pump.add_hook(self.patterns.poll)
        self.pump.add_hook(self._poll_status)
        for view in self.views:
            self.pump.add(view)
        self.pump.add(status_view.chart)
        titles = ["Connection", "Tables", "Set-up", "Reader", "Status", "Live table"]
        self.widget = w.Tab(children=[v.box for v in self.views])  # type: ignore[attr-defined]
        for i, title in enumerate(titles):
            self.widget.set_title(i, title)
        self.stopped = False
        if connect:
            self.connection.connect()
        if start_pump:
            self.pump.start()

    def _poll_status(self, now: float) -> None:
        if self.status.slot_name is None and self.setup.slot_name:
            self.status.slot_name = self.setup.slot_name
        elif self.setup.slot_name and self.status.slot_name != self.setup.slot_name:
            self.status.slot_name = self.setup.slot_name
        self.status.poll(now)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for every model's queued database work (scripts and tests)."""
        for model in (self.connection, self.patterns, self.setup, self.status, self.reader):
            model.wait(timeout)

    def stop(self) -> None:
        """Stop the reader and the pump; close every widget and connection."""
        if self.stopped:
            return
        self.stopped = True
        if self.reader.reader is not None:
            self.reader.reader.stop()
        self.pump.close()
        self.widget.close()
        for model in (self.patterns, self.setup, self.reader, self.table):
            model.shutdown()
        self.status.close()
        self.connection.close()


def explore(server: Any = None, **options: Any) -> Dashboard:
    """The dashboard: connection, table patterns, set-up/teardown, reader, status, live table.

    ``server``: an embedded :class:`~cdc_notebook.server.PostgresServer` to use (default: one is
    started when you connect with "embedded server" ticked). Display the returned object.
    """
    return Dashboard(server=server, **options)
