"""``explore()``: the dashboard composing every widget, with the reader's controls.

Everything on screen is refreshed by one :class:`~cdc_notebook.widgets.pump.UIPump`; the reader only
applies batches to the live frames. ``Dashboard.stop()`` stops the reader and the pump and
closes every widget it created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ipywidgets as w

from cdc_notebook.live.tables import LiveFrames, LiveReader
from cdc_notebook.widgets._base import (
    CONTROL_CSS,
    Model,
    WidgetView,
    describe_error,
    esc,
    message_html,
    off_main_shell,
)
from cdc_notebook.widgets.chart import StatusChart, frames_table_counters
from cdc_notebook.widgets.connection import ConnectionModel, ConnectionWidget
from cdc_notebook.widgets.patterns import PatternsModel, PatternsWidget, exact_pattern
from cdc_notebook.widgets.pump import UIPump, held, set_changed
from cdc_notebook.widgets.setup import SetupModel, SetupWidget
from cdc_notebook.widgets.status import StatusModel, StatusWidget, frames_counters
from cdc_notebook.widgets.summary import SummaryModel, SummaryWidget
from cdc_notebook.widgets.table import TableViewModel, TableViewWidget


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

    def view_version(self) -> tuple[int, str]:
        return (self.version, self.state)  # the reader changes state without a bump

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
                from cdc_notebook.stream.cdc_stream import CDCStream
                factory: Callable[..., Any] = CDCStream
            else:
                factory = self._stream_factory
            # Without a slot chosen in set-up, the reader's slot is temporary: it goes with
            # the reader (stop, kernel shutdown or restart). A permanent slot stays only when
            # the user named or created one.
            chosen = bool(self.setup.slot_name)
            stream = factory(self.connection.conninfo(), self.patterns.selection(),
                             slot_name=self.setup.slot_name or None,
                             publication=self.setup.publication or None,
                             plugin=self.setup.plugin,
                             temporary=self.setup.temporary if chosen else True)
            reader = LiveReader(stream, self.frames).start()
            with self.lock:
                self.reader = reader
            if chosen:
                self.setup.slot_name = stream.slot.slot_name
            describe = getattr(stream, "slot_description", None)  # temporary or permanent
            self._note(f"streaming {len(stream.readers)} table(s) from "
                       + (describe() if callable(describe)
                          else f"slot {stream.slot.slot_name}"))
        return self.run("starting the reader", work)

    def pause(self) -> None:
        """Stop applying changes (the threads stop after the event each is applying): a
        click waits for that half a second at most, so it always answers within a second."""
        if self.reader is not None:
            self.reader.pause(timeout=0.5)
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
    shows = ("state", "busy", "error", "log", "reader")

    def __init__(self, model: ReaderModel) -> None:
        super().__init__(model)
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
        # A click while a cell runs: handled on a subshell within the pump's next tick
        # (ipykernel 7 + JupyterLab 4.4+), else shown as requested until the cell ends.
        applied = [off_main_shell(b) for b in (self.start_button, self.pause_button,
                                               self.resume_button, self.stop_button)]
        self.concurrent = all(applied)
        self.box.children = (*self.box.children, m(w.HTML(CONTROL_CSS)))
        self.refresh(0.0)

    def show(self, shown: SimpleNamespace) -> None:
        state, busy, error, reader = shown.state, shown.busy, shown.error, shown.reader
        new_lines, self._logged = shown.log[self._logged:], len(shown.log)
        if reader is not None and reader.error is not None and not error:
            error = describe_error(reader.error)
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
                 stream_factory: Callable[..., Any] | None = None,
                 reader: LiveReader | None = None,
                 dsn: str | dict[str, Any] | None = None) -> None:
        if reader is not None:
            frames = reader.frames
        self.frames = frames if frames is not None else LiveFrames()
        self.connection = ConnectionModel(
            server_factory=(lambda: server) if server is not None else None, embedded=embedded,
            dsn=dsn)
        if reader is not None and server is None and dsn is None:
            # the form points at the reader's server (password kept in memory only)
            self.connection.use_dsn(getattr(reader.stream, "conninfo", None) or {})
        self.patterns = PatternsModel(self.connection, include=tables, clock=clock)
        self.setup = SetupModel(self.connection, self.patterns)
        self.status = StatusModel(self.connection, counters=frames_counters(self.frames),
                                  clock=clock, reader=lambda: self.reader.reader,
                                  table_counters=frames_table_counters(self.frames))
        self.reader = ReaderModel(self.connection, self.patterns, self.setup, self.frames,
                                  stream_factory=stream_factory)
        # "Plan teardown" with no name takes down the reader's stream, stopping it first
        self.setup.current_stream = lambda: getattr(self.reader.reader, "stream", None)
        self.setup.stop_reader = self._stop_reader
        self.table = TableViewModel(self.frames, view="grid")  # HTML without the grid extra
        if reader is not None:
            self.reader.reader = reader
            if tables == "public.*" and getattr(reader.stream, "tables", None):
                self.patterns.include = ", ".join(
                    exact_pattern((t.schema, t.name)) for t in reader.stream.tables)
        self.summary = SummaryModel(self.frames, reader=reader, clock=clock,
                                    conninfo=self.connection.conninfo,
                                    status_source=self._status_snapshot)
        # one snapshot of the slots per poll, shown by every tab
        self.status.on_poll(lambda status: self.setup.take_slots(status.slots))
        status_view = StatusWidget(self.status)
        self.views: list[WidgetView] = [
            ConnectionWidget(self.connection), PatternsWidget(self.patterns),
            SetupWidget(self.setup), ReaderWidget(self.reader), status_view,
            TableViewWidget(self.table)]
        summary_view = SummaryWidget(self.summary)
        self.pump = UIPump(interval=pump_interval, clock=clock)
        self.pump.add_hook(self.patterns.poll)
        self.pump.add_hook(self._poll_status)
        self.pump.add_hook(self._sample_summary)
        for view in self.views:
            self.pump.add(view)
        self.pump.add(status_view.chart)
        self.chart: StatusChart = status_view.chart  # display(dash.chart): widget + PNG
        self.pump.add(summary_view)
        self._summary_view = summary_view
        titles = ["Connection", "Tables", "Set-up", "Reader", "Status", "Live table"]
        self.tabs = w.Tab(children=[v.box for v in self.views])  # type: ignore[attr-defined]
        for i, title in enumerate(titles):
            self.tabs.set_title(i, title)
        if reader is not None:
            self.tabs.selected_index = titles.index("Live table")
        self.widget = w.VBox([summary_view.box, self.tabs])
        self.stopped = False
        if connect or reader is not None or dsn is not None:
            self.connection.connect()
        if start_pump:
            self.pump.start()

    def _status_snapshot(self) -> tuple[Any, float | None]:
        with self.status.lock:
            return self.status.status, self.status.lag_seconds

    def _sample_summary(self, now: float) -> None:
        self.summary.reader = self.reader.reader
        self._summary_view.hook(now)

    def _stop_reader(self) -> None:
        if self.reader.reader is not None:
            self.reader.reader.stop()

    def _reader_slot(self) -> str | None:
        live = self.reader.reader
        slot = getattr(getattr(live, "stream", None), "slot", None) if live is not None else None
        return getattr(slot, "slot_name", None)

    def _poll_status(self, now: float) -> None:
        slot = self.setup.slot_name or self._reader_slot()
        if slot and self.status.slot_name != slot:
            self.status.slot_name = slot
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
        self.tabs.close()
        self.widget.close()
        for model in (self.patterns, self.setup, self.reader, self.table):
            model.shutdown()
        self.summary.close()
        self.status.close()
        self.connection.close()


def explore(server: Any = None, reader: LiveReader | None = None, *,
            dsn: str | dict[str, Any] | None = None, **options: Any) -> Dashboard:
    """The dashboard: a live summary above tabs for the connection, table patterns,
    set-up/teardown, the reader, the slot's status and the live table.

    ``server``: an embedded :class:`~cdc_notebook.server.postgres.PostgresServer` to use
    (default: one is started when you connect with "embedded server" ticked). ``dsn``: a server
    of yours instead (``"host=... dbname=... user=..."``, a URL or a dict of libpq
    parameters): the form is filled from it and the connection made at once. ``reader``: a
    running :class:`~cdc_notebook.live.tables.LiveReader` to show and control (its frames, its
    slot), the connection made at once. Display the returned object.
    """
    return Dashboard(server=server, reader=reader, dsn=dsn, **options)
