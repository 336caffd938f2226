"""Table patterns: include and exclude text with a debounced live preview, per-table checkboxes."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ipywidgets as w

from cdc_notebook.connection.quoting import quote_qualified
from cdc_notebook.errors import InvalidPattern
from cdc_notebook.provision import patterns as pat
from cdc_notebook.widgets._base import Model, WidgetView, esc, message_html
from cdc_notebook.widgets.connection import ConnectionModel
from cdc_notebook.widgets.pump import held, set_changed


def exact_pattern(qualified: tuple[str, str]) -> str:
    """A pattern matching exactly one table (both parts quoted: exact and case-sensitive)."""
    schema, name = qualified
    return quote_qualified(schema, name)


class PatternsModel(Model):
    """What the patterns select, previewed against the catalog while the user types.

    Typing only records the text and the time; :meth:`poll` (the pump calls it every tick)
    starts one preview on the worker once the text has been still for ``debounce`` seconds.
    """

    def __init__(self, connection: ConnectionModel, *, include: str = "public.*",
                 exclude: str = "", debounce: float = 0.3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.connection = connection
        self.include = include
        self.exclude = exclude
        self.debounce = debounce
        self.clock = clock
        self.preview: pat.PatternPreview | None = None
        self.unchecked: set[str] = set()
        self.previews_run = 0
        self._changed_at: float | None = clock()
        connection.on_change(lambda _: self._mark_changed())

    def _mark_changed(self, now: float | None = None) -> None:
        with self.lock:
            self._changed_at = self.clock() if now is None else now
            self.bump()

    def set_include(self, text: str, now: float | None = None) -> None:
        if text != self.include:
            self.include = text
            self._mark_changed(now)

    def set_exclude(self, text: str, now: float | None = None) -> None:
        if text != self.exclude:
            self.exclude = text
            self._mark_changed(now)

    def set_checked(self, qualified_name: str, checked: bool) -> None:
        with self.lock:
            before = qualified_name in self.unchecked
            if checked:
                self.unchecked.discard(qualified_name)
            else:
                self.unchecked.add(qualified_name)
            if before != (not checked):
                self.bump()

    def pattern_list(self) -> list[str]:
        """The include patterns, then the exclude field's patterns as exclusions."""
        out = [self.include]
        if self.exclude.strip():
            for p in pat.parse_patterns(self.exclude):
                out.append(p.text if p.exclude else "!" + p.text)
        return out

    def selection(self) -> list[str]:
        """The patterns to capture with: the fields, minus the tables unchecked by hand."""
        with self.lock:
            unchecked = set(self.unchecked)
            tables = self.preview.tables if self.preview is not None else []
        return self.pattern_list() + ["!" + exact_pattern((t.schema, t.name))
                                      for t in tables if t.qualified_name in unchecked]

    def selected_tables(self) -> list[pat.TableInfo]:
        with self.lock:
            if self.preview is None:
                return []
            return [t for t in self.preview.tables if t.qualified_name not in self.unchecked]

    def poll(self, now: float) -> None:
        """Start a preview when the text has been still long enough (called by the pump)."""
        with self.lock:
            due = self._changed_at is not None and now - self._changed_at >= self.debounce
            if not due or self.busy or not self.connection.connected:
                return
            self._changed_at = None
        self.refresh_preview()

    def refresh_preview(self) -> Any:
        """Preview now (on the worker), without waiting for the debounce."""
        def work() -> None:
            try:
                patterns = self.pattern_list()
            except InvalidPattern as exc:
                result = pat.PatternPreview(self.exclude, error=exc.message, error_part=exc.part)
            else:
                conn = self.connection.connection
                if conn is None:
                    raise RuntimeError("connect first")
                result = pat.preview(conn, patterns)
            with self.lock:
                self.preview = result
                self.previews_run += 1
                names = set(result.names)
                self.unchecked &= names
                self.bump()
        return self.run("previewing", work)


class PatternsWidget(WidgetView):
    """Two text fields, the preview, and one checkbox per matched table (up to ``max_rows``)."""

    shows = ("preview", "busy", "error", "unchecked")

    def __init__(self, model: PatternsModel, *, max_rows: int = 100) -> None:
        super().__init__(model)
        self.max_rows = max_rows
        m = self.make
        self.include = m(w.Text(value=model.include, description="include",
                                placeholder="public.*, sales.order_*"))
        self.exclude = m(w.Text(value=model.exclude, description="exclude",
                                placeholder="public.audit_*"))
        self.summary = m(w.HTML())
        self.checkboxes: list[w.Checkbox] = []
        self._names: list[str] = []
        self.list = m(w.VBox(layout=w.Layout(max_height="240px", overflow="auto")))
        self.box = m(w.VBox([m(w.HTML("<b>Tables</b>")), self.include, self.exclude,
                             self.summary, self.list]))
        self.include.observe(lambda c: model.set_include(c["new"]), names="value")
        self.exclude.observe(lambda c: model.set_exclude(c["new"]), names="value")
        self.refresh(0.0)

    def _checkbox(self, index: int) -> w.Checkbox:
        while len(self.checkboxes) <= index:
            box = self.make(w.Checkbox(indent=False, layout=w.Layout(width="auto")))
            position = len(self.checkboxes)
            box.observe(lambda c, i=position: self._toggled(i, c["new"]), names="value")
            self.checkboxes.append(box)
        return self.checkboxes[index]

    def _toggled(self, index: int, value: bool) -> None:
        if index < len(self._names):
            self.model.set_checked(self._names[index], value)

    def show(self, state: SimpleNamespace) -> None:
        preview, busy, error, unchecked = state.preview, state.busy, state.error, state.unchecked
        tables = preview.tables if preview is not None else []
        if preview is None:
            text = "connect to preview the matching tables" \
                if not self.model.connection.connected else "previewing…"
        elif preview.error:
            text = message_html(preview.error + (f" (in {preview.error_part!r})"
                                                 if preview.error_part else ""))
        else:
            text = f"{len(tables)} table(s) match"
            if preview.unmatched:
                misses = "; ".join(f"{esc(p)} matches nothing"
                                   + (f" (did you mean {esc(', '.join(n))}?)" if n else "")
                                   for p, n in preview.unmatched.items())
                text += f"<br>{misses}"
            if preview.without_key:
                text += ("<br>without a primary key or replica identity (updates and deletes "
                         "carry no old key): " + esc(", ".join(t.qualified_name
                                                              for t in preview.without_key)))
            if len(tables) > self.max_rows:
                text += f"<br>showing the first {self.max_rows}"
        if busy:
            text += f" <i>({esc(busy)}…)</i>"
        text += message_html(error)
        shown = tables[: self.max_rows]
        self._names = [t.qualified_name for t in shown]
        boxes = [self._checkbox(i) for i in range(len(shown))]
        with held(self.summary, self.list, *boxes):
            set_changed(self.summary, value=text)
            for box, table in zip(boxes, shown, strict=True):
                label = table.qualified_name + ("" if table.has_replica_identity
                                                else "  (no key)")
                set_changed(box, description=label,
                            value=table.qualified_name not in unchecked)
            children = tuple(boxes)
            if self.list.children != children:
                self.list.children = children
