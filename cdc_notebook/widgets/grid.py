"""A real grid for a live mirror or changelog: Perspective's Jupyter widget, fed Arrow deltas.

``pip install 'cdc-notebook[grid]'`` (``perspective-python``, its JupyterLab extension ships in
the wheel). The grid keeps a Perspective table in the kernel (``binding_mode="server"``): the
browser's ``<perspective-viewer>`` asks for the rows it shows, so scrolling, sorting and
filtering a mirror of millions of rows moves only what is on screen through the comm.

* **The mirror**: an indexed Perspective table (the key column; a composite key becomes one
  ``__key__`` text column), loaded once from the mirror, then kept current with what each fold
  changed (:meth:`LiveTable.subscribe`): the keys that left (``remove``) and the rows that
  entered (``update``, upserts by key), as Arrow. A TRUNCATE, a schema change or a backlog past
  ``max_rows`` reloads it whole (``replace``). Never a full-table message per update.
* **The changelog**: a Perspective table bounded to the changelog's rows (``limit``), fed the
  rows appended since the last refresh, as people read them
  (:func:`~cdc_notebook.widgets.table.changelog_display`: a delete shows its key).

The grid is a pump view like the others (at most twice a second, only when the frames moved);
the reader never touches it.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from cdc_notebook.widgets._base import WidgetView, off_main_shell

if TYPE_CHECKING:
    from cdc_notebook.live.tables import MirrorDeltas

KEY = "__key__"

# perspective-python's widget is an anywidget whose front-end module (6 MB, one file) defines
# custom elements; anywidget evaluates a widget's module once per widget, so a second grid in
# a page (another table, a cell run again, a restarted kernel) failed with "the name
# 'regular-layout' has already been used". This module loads it once per page and hands every
# widget the same one.
_ONCE_PER_PAGE = """const SOURCE = __SOURCE__;
const KEY = "__cdc_notebook_perspective__";
function load() {
  if (!globalThis[KEY]) {
    const url = URL.createObjectURL(new Blob([SOURCE], { type: "text/javascript" }));
    globalThis[KEY] = import(/* webpackIgnore: true */ url);
  }
  return globalThis[KEY];
}
export default async function () {
  const mod = await load();
  return typeof mod.default === "function" ? mod.default() : mod.default;
}
"""
_WIDGET_CLASS: Any = None


def perspective_widget_class() -> Any:
    """``PerspectiveWidget`` with its front-end module loaded once per page (see above)."""
    global _WIDGET_CLASS
    if _WIDGET_CLASS is None:
        import json
        from pathlib import Path

        import perspective.widget
        from perspective.widget import PerspectiveWidget

        source = Path(perspective.widget.__file__).parent / "static" / \
            "perspective-anywidget.js"
        esm = _ONCE_PER_PAGE.replace("__SOURCE__", json.dumps(source.read_text()))

        class OncePerPagePerspectiveWidget(PerspectiveWidget):  # type: ignore[misc]
            _esm = esm

        _WIDGET_CLASS = OncePerPagePerspectiveWidget
    return _WIDGET_CLASS


def grid_available() -> bool:
    """Whether Perspective's widget can be used here (the ``grid`` extra is installed)."""
    try:
        import perspective.widget  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or its widget module cannot load
        return False
    return True


def grid_frame(frame: pl.DataFrame, keys: tuple[str, ...] = ()) -> pl.DataFrame:
    """The frame in the types Perspective holds: decimals as floats, nested values, binaries
    and durations as text; a composite key as one ``__key__`` text column (first)."""
    columns: list[pl.Expr] = []
    if len(keys) > 1:
        columns.append(pl.concat_str([pl.col(k).cast(pl.String) for k in keys],
                                     separator=" | ", ignore_nulls=False).alias(KEY))
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Decimal):
            col = col.cast(pl.Float64)
        elif isinstance(dtype, pl.Struct):
            col = col.struct.json_encode()
        elif isinstance(dtype, (pl.List, pl.Array)):
            col = col.cast(pl.List(pl.String), strict=False).list.join(", ")
        elif isinstance(dtype, pl.Binary):
            col = col.bin.encode("hex")
        elif isinstance(dtype, (pl.Duration, pl.Time, pl.Object, pl.Null)) or \
                dtype == pl.UInt64 or isinstance(dtype, pl.Categorical | pl.Enum):
            col = col.cast(pl.String, strict=False) if dtype != pl.UInt64 else \
                col.cast(pl.Int64, strict=False)
        columns.append(col.alias(name))
    return frame.select(columns)


def arrow_ipc(frame: pl.DataFrame) -> bytes:
    """A frame as one Arrow IPC stream (what Perspective's tables take)."""
    table = frame.to_arrow()
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


class LiveGrid(WidgetView):
    """A Perspective grid over one table's mirror (``source="mirror"``) or changelog."""

    min_interval = 0.5

    def __init__(self, live: Any, *, source: str = "mirror", max_rows: int = 500_000,
                 height: str = "420px", **viewer: Any) -> None:
        import perspective

        PerspectiveWidget = perspective_widget_class()
        super().__init__(live)
        self.live = live
        self.source = source
        self.keys = tuple(live.key_columns)
        self.index = (self.keys[0] if len(self.keys) == 1 else KEY) if source == "mirror" \
            else None
        self.client = perspective.Server().new_local_client()
        self.deltas = live.subscribe(max_rows) if source == "mirror" else None
        self._cursor: Any = None
        self.table: Any = None
        self.rows_sent = 0  # rows handed to the Perspective table (tests, the budget)
        self.reloads = 0
        first, _ = self._first_frame()
        options = {"index": self.index} if self.index else {"limit": live.changelog_rows}
        self.table = self.client.table(arrow_ipc(first), name=f"cdc-{id(self)}", **options)
        self.rows_sent += first.height
        self.widget = self.make(PerspectiveWidget(self.table, plugin="Datagrid",
                                                  settings=False, **viewer))
        self.widget.layout.height = height
        self.widget.layout.width = "100%"
        # the browser's requests (the rows on screen) answered beside a running cell
        off_main_shell(self.widget)
        # The grid's size, in px and !important: anywidget shares one style element between
        # the widgets of a class and removes it with the first of them to close, and inside a
        # box (a flex item) the viewer's 100% height resolved to 0 (measured in chromium).
        import ipywidgets as w

        self.style = self.make(w.HTML(
            "<style>.PSPContainer{display:block;flex:none!important;width:100%;"
            f"height:{height}!important;min-height:{height}!important;overflow:hidden}}"
            f".PSPContainer perspective-viewer{{display:block;height:{height}!important}}"
            "</style>"))
        self.box = self.make(w.VBox([self.style, self.widget],
                                    layout=w.Layout(width="100%")))

    def version(self) -> Any:
        return self.live.version

    def _first_frame(self) -> tuple[pl.DataFrame, bool]:
        if self.source == "mirror":
            with self.live.lock:  # what the deltas add from here on is not in this frame
                if self.deltas is not None:
                    self.deltas.take()
                frame = self.live.state().frame  # (folded now: a grid is made once)
            return grid_frame(frame, self.keys), False
        frame, self._cursor, _ = self.live.changelog_since(None)
        return self._changelog_frame(frame), False

    def _changelog_frame(self, frame: pl.DataFrame | None) -> pl.DataFrame:
        from cdc_notebook.widgets.table import changelog_display, lsn_text

        if frame is None:
            frame = self.live.changelog(0)
        return grid_frame(lsn_text(changelog_display(frame, self.keys)))

    def refresh(self, now: float) -> None:
        self.show(SimpleNamespace())

    def show(self, state: SimpleNamespace) -> None:
        if self.deltas is not None:  # (the mirror's grid: it follows the deltas)
            self._apply_mirror(self.deltas)
        else:
            self._apply_changelog()

    def _apply_mirror(self, deltas: MirrorDeltas) -> None:
        with self.live.lock:
            reset, steps = deltas.take()
            whole = self.live.state(fresh=False).frame if reset else None
        if whole is not None:
            self.table.replace(arrow_ipc(grid_frame(whole, self.keys)))
            self.rows_sent += whole.height
            self.reloads += 1
            return
        for kind, frame in steps:
            data = arrow_ipc(grid_frame(frame, self.keys))
            if kind == "remove":
                if len(self.keys) > 1:  # the composite key's one column, and only it
                    data = arrow_ipc(grid_frame(frame, self.keys).select(KEY))
                self.table.remove(data)
            else:
                self.table.update(data)
            self.rows_sent += frame.height

    def _apply_changelog(self) -> None:
        frame, self._cursor, reset = self.live.changelog_since(self._cursor)
        if reset:
            self.table.replace(arrow_ipc(self._changelog_frame(frame)))
            self.reloads += 1
        elif frame is not None and frame.height:
            self.table.update(arrow_ipc(self._changelog_frame(frame)))
        self.rows_sent += 0 if frame is None else frame.height

    def close(self) -> None:
        if self.deltas is not None:
            self.deltas.close()
        super().close()
        try:
            self.table.delete()
        except Exception:  # noqa: BLE001 - a viewer may still hold it; it goes with the kernel
            pass
