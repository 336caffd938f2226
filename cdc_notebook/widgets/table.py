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

OP_WORDS = {"r": "snapshot", "c": "insert", "u": "update", "d": "delete", "t": "truncate"}
_PLAIN = (pl.Boolean, pl.String, pl.Date, pl.Datetime, pl.Time, pl.Duration, pl.Decimal)


def _as_text(expr: pl.Expr, dtype: Any) -> pl.Expr | None:
    if dtype.is_numeric() or isinstance(dtype, _PLAIN):
        return expr.cast(pl.String, strict=False)
    return None  # nested values are left out of the one-line text


def changelog_display(frame: pl.DataFrame, key_columns: tuple[str, ...] = ()) -> pl.DataFrame:
    """The changelog as people read it: the operation in words, the LSN as PostgreSQL writes
    it, the commit time, the key (a delete's from its before-image, as its after-image is
    empty), the before-image in one line (``id=5, status=new``: key changes, REPLICA IDENTITY
    FULL) and the after-image's columns. The bookkeeping columns (xid, ordinal, end LSN, ...)
    are left to ``LiveTable.changelog()``."""
    from cdc_notebook.decode.events import METADATA_COLUMNS

    columns = [c for c in frame.columns if c not in METADATA_COLUMNS]
    before = frame.schema.get("_cdc_before")
    fields = {f.name: f.dtype for f in before.fields} if isinstance(before, pl.Struct) else {}
    keys = [k for k in key_columns if k in columns]
    out: list[pl.Expr] = []
    if "_cdc_op" in frame.columns:
        out.append(pl.col("_cdc_op").replace_strict(OP_WORDS, default=pl.col("_cdc_op"),
                                                    return_dtype=pl.String).alias("change"))
    if "_cdc_lsn" in frame.columns:
        out.append(pl.col("_cdc_lsn").alias("lsn"))  # as text once sliced: lsn_text()
    if "_cdc_commit_ts" in frame.columns:
        out.append(pl.col("_cdc_commit_ts").alias("committed"))
    for key in keys:
        value = pl.col(key)
        if key in fields:
            value = pl.coalesce(value, pl.col("_cdc_before").struct.field(key))
        out.append(value.alias(key))
    if fields:
        parts = []
        for name, dtype in fields.items():
            text = _as_text(pl.col("_cdc_before").struct.field(name), dtype)
            if text is not None:
                parts.append(pl.when(text.is_not_null()).then(pl.lit(f"{name}=") + text))
        if parts:
            out.append(pl.concat_str(parts, separator=", ", ignore_nulls=True)
                       .replace("", None).alias("before"))
    out += [pl.col(c) for c in columns if c not in keys]
    return frame.select(out)


def lsn_text(frame: pl.DataFrame, column: str = "lsn") -> pl.DataFrame:
    """A (bounded) frame's LSN column as PostgreSQL writes LSNs (``0/16B3748``)."""
    if column not in frame.columns:
        return frame
    values = frame.get_column(column).to_list()
    return frame.with_columns(pl.Series(column, [None if v is None else format_lsn(int(v))
                                                 for v in values], dtype=pl.String))


class TableViewModel(Model):
    """Which table, which frame (mirror or changelog), and which rows to show."""

    def __init__(self, frames: LiveFrames, *, table: str | None = None, mode: str = "tail",
                 rows: int = 10, source: str = "mirror", where: str = "",
                 view: str | None = None) -> None:
        from cdc_notebook.widgets.grid import grid_available

        super().__init__()
        self.frames = frames
        self.table = table
        # "grid" (Perspective: sort, filter and scroll the whole frame; the grid extra; the
        # dashboard's default when it is installed) or "table" (HTML of a bounded slice:
        # head, tail, a Polars-SQL filter)
        self.view = view if view is not None and (view != "grid" or grid_available()) \
            else "table"
        self.mode = mode  # head, tail or filter
        self.rows = rows
        self.source = source  # mirror or changelog
        self.where = where  # a Polars SQL condition for mode "filter"

    def set(self, **values: Any) -> None:
        """Change what is shown (``table=``, ``mode=``, ``rows=``, ``source=``, ``where=``)."""
        with self.lock:
            for name, value in values.items():
                if name not in ("table", "mode", "rows", "source", "where", "view"):
                    raise AttributeError(name)
                setattr(self, name, value)
            self.rows = max(1, min(int(self.rows), MAX_ROWS))
            self.bump()

    def view_version(self) -> tuple[int, int]:
        return (self.version, self.frames.version)  # the frames move without a bump

    def current(self) -> str | None:
        """The table shown: the one chosen, else the first."""
        names = list(self.frames.tables)
        with self.lock:
            table = self.table
        if table is None or table not in names:
            return names[0] if names else None
        return table

    def describe(self) -> tuple[str, str | None]:
        """(a line about the frame, an error) without slicing it (the grid's caption)."""
        table = self.current()
        if table is None:
            return "no table yet", None
        live = self.frames.tables[table]
        try:
            if self.source == "changelog":
                return f"{table}: changelog, the last {live.changelog_rows:,} changes", None
            state = live.state(fresh=False)
        except MirrorUnavailable as exc:
            return table, str(exc)
        return (f"{table}: {state.frame.height:,} rows (mirror), consistent at LSN "
                f"{format_lsn(state.lsn)}", None)

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
        matched: int | None = None
        try:
            if source == "changelog":
                frame, lsn = changelog_display(live.changelog(), live.key_columns), None
            else:
                state = live.state()
                frame, lsn = state.frame, state.lsn
            total = frame.height
            if mode == "filter" and where.strip():
                frame = frame.sql(f"SELECT * FROM self WHERE {where}")
                matched = frame.height
            frame = frame.head(rows) if mode == "head" else frame.tail(rows) \
                if mode == "tail" else frame.head(rows)
            if source == "changelog":
                frame = lsn_text(frame)
        except MirrorUnavailable as exc:
            return None, table, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad filter is the user's input
            return None, table, describe_error(exc)
        if matched is not None:
            line = f"{table}: {matched:,} of {total:,} rows match ({source})"
        else:
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
        from cdc_notebook.widgets.grid import grid_available

        views = ["grid", "table"] if grid_available() else ["table"]
        self.view = m(w.ToggleButtons(options=views, value=model.view if model.view in views
                                      else views[-1]))
        self.view.tooltip = ("grid: the whole frame, sorted, filtered and scrolled in the "
                             "browser; table: a slice as HTML")
        self.slice_controls = m(w.VBox([self.rows, self.mode, self.where]))
        self.holder = m(w.VBox(layout=w.Layout(width="100%")))  # the grid, or the HTML slice
        self.grid: Any = None
        self._grid_for: tuple[str, str] | None = None
        self._grid_at = float("-inf")
        self._now = 0.0
        self.box = m(w.VBox([m(w.HTML("<b>Live table</b>")),
                             m(w.HBox([self.table, self.view])), self.source,
                             self.slice_controls, self.info, self.holder]))

        def select_table(change: dict[str, Any]) -> None:
            if change["new"]:
                model.set(table=change["new"])

        self.table.observe(select_table, names="value")
        self._pushed: dict[str, Any] = {name: getattr(model, name) for name in self.shows}

        def typed(name: str) -> Any:
            def handler(change: dict[str, Any]) -> None:
                self._pushed[name] = change["new"]
                model.set(**{name: change["new"]})
            return handler

        for name in ("source", "mode", "rows", "where", "view"):
            getattr(self, name).observe(typed(name), names="value")
        self.refresh(0.0)

    shows = ("rows", "mode", "source", "where", "view")

    def refresh(self, now: float) -> None:
        self._now = now
        super().refresh(now)

    def show(self, state: SimpleNamespace) -> None:
        names = tuple(self.model.frames.tables)
        if state.view == "grid" and self.view.options == ("grid", "table"):
            self._show_grid(state.source)
            line, error = self.model.describe()
            body = None
            if error:
                self._drop_grid()
                self.holder.children = ()
        else:
            frame, line, error = self.model.render()
            body = frame_html(frame) if frame is not None else ""
            self._drop_grid()
        # Code may change the model (table.set(rows=8)): the controls say what is shown. Only
        # what the model changed since the controls last took it is written (never an older
        # copy over what is being typed).
        with held(self.rows, self.mode, self.source, self.where):
            for name in self.shows:
                value = getattr(state, name)
                if value != self._pushed.get(name):
                    set_changed(getattr(self, name), value=value)
                    self._pushed[name] = value
        with held(self.info, self.html, self.table):
            if self.table.options != names:
                self.table.options = names
            wanted = self.model.table if self.model.table in names else \
                (names[0] if names else None)
            if wanted is not None and self.table.value != wanted:
                self.table.value = wanted
            set_changed(self.info, value=esc(line) + message_html(error))
            if body is not None:
                set_changed(self.html, value=body)
        if body is not None and self.holder.children != (self.html,):
            self.holder.children = (self.html,)
        set_changed(self.slice_controls.layout,
                    display="none" if body is None else "")

    def _show_grid(self, source: str) -> None:
        """The grid of the table and source shown, made (or remade) when they change, fed at
        its own rate (LiveGrid.min_interval)."""
        from cdc_notebook.widgets.grid import LiveGrid

        table = self.model.current()
        if table is None:
            self._drop_grid()
            self.holder.children = ()
            return
        wanted = (table, source)
        if self._grid_for != wanted:
            self._drop_grid()
            try:
                self.grid = LiveGrid(self.model.frames.tables[table], source=source)
            except MirrorUnavailable:
                return
            self._grid_for = wanted
            self._grid_at = self._now
            self.holder.children = (self.grid.box,)
            return
        if self.grid is not None and self._now - self._grid_at >= self.grid.min_interval:
            self._grid_at = self._now
            self.grid.refresh(self._now)

    def _drop_grid(self) -> None:
        if self.grid is not None:
            self.grid.close()
            self.grid, self._grid_for = None, None

    def close(self) -> None:
        self._drop_grid()
        super().close()
