"""Live table view: head, tail or a filter of a live frame, as bounded HTML."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import ipywidgets as w
import polars as pl

from cdc_notebook.connection.lsn import format_lsn
from cdc_notebook.errors import MirrorUnavailable
from cdc_notebook.live.tables import LiveFrames
from cdc_notebook.widgets._base import (
    Model,
    WidgetView,
    describe_error,
    esc,
    message_html,
)
from cdc_notebook.widgets.pump import held, set_changed

MAX_ROWS = 200
MAX_COLUMNS = 30


class TableViewModel(Model):
    """Which table, which frame (mirror or changelog), and which rows to show."""

    def __init__(self, frames: LiveFrames, *, table: str | None = None, mode: str = "tail",
                 rows: int = 10, source: str = "mirror", where: str = "") -> None:
        super().__init__()
        self.frames = frames
        self.table = table
        self.mode = mode  # head, tail or filter
        self.rows = rows
        self.source = source  # mirror or changelog
        self.where = where  # a Polars SQL condition for mode "filter"

    def set(self, **values: Any) -> None:
        """Change what is shown (``table=``, ``mode=``, ``rows=``, ``source=``, ``where=``)."""
        with self.lock:
            for name, value in values.items():
                if name not in ("table", "mode", "rows", "source", "where"):
                    raise AttributeError(name)
                setattr(self, name, value)
            self.rows = max(1, min(int(self.rows), MAX_ROWS))
            self.bump()

    def view_version(self) -> tuple[int, int]:
        return (self.version, self.frames.version)  # the frames move without a bump

    def render(self) -> tuple[pl.DataFrame | None, str, str | None]:
        """(the bounded slice, a line about the frame, an error) — never raises."""
        with self.lock:
            table, mode, rows, source, where = (self.table, self.mode, self.rows, self.source,
                                                self.where)
        names = list(self.frames.tables)
        if table is None or table not in names:
            if not names:
                return None, "no table yet", None
            table = names[0]
        live = self.frames.tables[table]
        try:
            if source == "changelog":
                frame, lsn = live.changelog(), None
            else:
                state = live.state()
                frame, lsn = state.frame, state.lsn
            total = frame.height
            if mode == "filter" and where.strip():
                frame = frame.sql(f"SELECT * FROM self WHERE {where}")
            frame = frame.head(rows) if mode == "head" else frame.tail(rows) \
                if mode == "tail" else frame.head(rows)
        except MirrorUnavailable as exc:
            return None, table, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad filter is the user's input
            return None, table, describe_error(exc)
        line = f"{table}: {total:,} rows ({source})"
        if lsn is not None:
            line += f", consistent at LSN {format_lsn(lsn)}"
        changes = [c.describe() for c in live.schema_changes[-3:]]
        if changes:
            line += " — schema: " + " | ".join(changes)
        if live.needs_rebuild:
            line += f" — rebuild needed for {', '.join(live.needs_rebuild)}"
        return frame, line, None


def frame_html(frame: pl.DataFrame, max_columns: int = MAX_COLUMNS) -> str:
    """HTML of an already bounded slice (never the whole frame)."""
    with pl.Config(tbl_rows=frame.height, tbl_cols=max_columns, fmt_str_lengths=60):
        return frame._repr_html_()


class TableViewWidget(WidgetView):
    """The slice the model renders (it reads the frames under their own lock)."""

    def __init__(self, model: TableViewModel) -> None:
        super().__init__(model)
        m = self.make
        self.table = m(w.Dropdown(options=[], description="table"))
        self.source = m(w.ToggleButtons(options=["mirror", "changelog"], value=model.source))
        self.mode = m(w.ToggleButtons(options=["head", "tail", "filter"], value=model.mode))
        self.rows = m(w.BoundedIntText(value=model.rows, min=1, max=MAX_ROWS,
                                       description="rows"))
        self.where = m(w.Text(value=model.where, description="where",
                              placeholder="amount > 100 AND status = 'paid'",
                              continuous_update=False))
        self.info = m(w.HTML())
        self.html = m(w.HTML())
        self.box = m(w.VBox([m(w.HTML("<b>Live table</b>")),
                             m(w.HBox([self.table, self.rows])), self.source, self.mode,
                             self.where, self.info, self.html]))

        def select_table(change: dict[str, Any]) -> None:
            if change["new"]:
                model.set(table=change["new"])

        self.table.observe(select_table, names="value")
        for name in ("source", "mode", "rows", "where"):
            getattr(self, name).observe(lambda c, n=name: model.set(**{n: c["new"]}),
                                        names="value")
        self.refresh(0.0)

    def show(self, state: SimpleNamespace) -> None:
        frame, line, error = self.model.render()
        names = tuple(self.model.frames.tables)
        body = frame_html(frame) if frame is not None else ""
        with held(self.info, self.html, self.table):
            if self.table.options != names:
                self.table.options = names
            wanted = self.model.table if self.model.table in names else \
                (names[0] if names else None)
            if wanted is not None and self.table.value != wanted:
                self.table.value = wanted
            set_changed(self.info, value=esc(line) + message_html(error))
            set_changed(self.html, value=body)
