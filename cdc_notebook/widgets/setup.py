"""Setup and teardown: the SQL shown first, then confirmation; the kit's slots and their state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import ipywidgets as w

from cdc_notebook.provision.plan import plan_provision
from cdc_notebook.provision.slots import DEFAULT_PLUGIN
from cdc_notebook.provision.status import SlotStatus
from cdc_notebook.provision.teardown import (
    list_slots,
    orphaned_publications,
    plan_teardown,
    wait_inactive,
)
from cdc_notebook.units import format_bytes
from cdc_notebook.widgets._base import Model, WidgetView, esc, message_html
from cdc_notebook.widgets.connection import ConnectionModel
from cdc_notebook.widgets.patterns import PatternsModel
from cdc_notebook.widgets.pump import held, set_changed


def is_stale(slot: SlotStatus, *, older_than: float = 300.0,
             now: datetime | None = None) -> bool:
    """A slot nobody reads: invalidated, or inactive (for ``older_than`` seconds when the
    server says since when, PostgreSQL 17+)."""
    if slot.invalidated:
        return True
    if slot.active or slot.temporary:
        return False
    if slot.inactive_since is None:
        return True
    now = now or datetime.now(timezone.utc)
    return (now - slot.inactive_since).total_seconds() >= older_than


class SetupModel(Model):
    """Plans (SQL first), confirmation, apply; slot listing and stale-slot clean-up."""

    def __init__(self, connection: ConnectionModel, patterns: PatternsModel, *,
                 plugin: str = DEFAULT_PLUGIN, stale_after: float = 0.0) -> None:
        super().__init__()
        self.connection = connection
        self.patterns = patterns
        self.slot_name = ""
        self.publication = ""
        self.plugin = plugin
        self.temporary = False
        self.keyless = "error"
        self.stale_after = stale_after
        self.release_wait = 3.0  # seconds teardown waits for a just-stopped reader's slot
        self.pending: Any = None  # a ProvisionPlan or TeardownPlan waiting for confirmation
        self.pending_kind: str | None = None  # "setup" or "teardown"
        self.pending_errors: list[str] = []  # why the pending plan cannot be confirmed
        self.result: Any = None
        self.slots: list[SlotStatus] = []
        self.orphans: list[str] = []  # kit publications whose slots are all gone
        # leftovers dropped from their row: (kind, name) -> "dropping", "dropped", "failed"
        self.drops: dict[tuple[str, str], str] = {}
        # set by the dashboard: () -> the reader's stream ("Plan teardown" with no name takes
        # it down), and how to stop that reader first
        self.current_stream: Callable[[], Any] | None = None
        self.stop_reader: Callable[[], None] | None = None
        connection.on_change(lambda _: self.refresh_slots() if connection.connected else None)

    @property
    def pending_sql(self) -> str:
        if self.pending is None:
            return ""
        if self.pending_kind == "setup":
            return str(self.pending)
        return "\n".join(s.sql + ";" for s in self.pending.steps) or "-- nothing to drop"

    def _conn(self) -> Any:
        conn = self.connection.connection
        if conn is None:
            raise RuntimeError("connect first")
        return conn

    def plan_setup(self) -> Any:
        def work() -> None:
            plan = plan_provision(
                self._conn(), self.patterns.selection(), slot_name=self.slot_name or None,
                publication=self.publication or None, plugin=self.plugin,
                temporary=self.temporary, keyless=self.keyless, export_snapshot=False,
                slot_method="sql")
            with self.lock:
                self.pending, self.pending_kind = plan, "setup"
                problems = list(plan.report.errors)
                self.pending_errors = [c.message + (f" (fix: {c.hint})" if c.hint else "")
                                       for c in problems]
                self.info = "review the SQL, then confirm" if not problems else None
                if problems:
                    self.error = "; ".join(self.pending_errors)
        return self.run("planning set-up", work)

    def set_keyless(self, keyless: str) -> Any:
        """What to do with tables that have no key (``"error"``, ``"full"``, ``"skip"``);
        a set-up plan waiting for confirmation is made again with it."""
        if keyless not in ("error", "full", "skip"):
            raise ValueError("keyless must be 'error', 'full' or 'skip'")
        with self.lock:
            self.keyless = keyless
            replan = self.pending_kind == "setup"
            self.bump()
        return self.plan_setup() if replan else None

    def plan_teardown(self, slot_name: str | None = None, *, publication: str | None = None,
                      force: bool = False) -> Any:
        """Plan the teardown of the slot (and publication) named; with no name, of the
        reader's stream (it is stopped first), else of the kit's publications whose slots are
        all gone. The kit publication made for a slot goes with it (teardown.py)."""
        def work() -> None:
            conn = self._conn()
            slot = slot_name or self.slot_name or None
            pub = publication if publication is not None else (self.publication or None)
            stream = None
            if slot is None and pub is None and self.current_stream is not None:
                stream = self.current_stream()
            if slot is not None and not force:
                # A reader stopped a moment ago: its walsender lets go of the slot shortly
                # after the connection closed.
                wait_inactive(conn, slot, self.release_wait)
            if stream is not None:
                plan = plan_teardown(conn, stream=stream, force=force)
                info = (f"the reader's stream (slot {stream.slot.slot_name}; the reader stops "
                        "first): review what will be dropped, then confirm")
            elif slot is None and pub is None:
                plan = plan_teardown(conn, force=force)
                info = ("no slot named and no reader: the kit's publications whose slots are "
                        "all gone (leftover slots are listed below, each with its Drop)")
            else:
                plan = plan_teardown(conn, slot_name=slot, publication=pub, force=force)
                info = "review what will be dropped, then confirm"
            with self.lock:
                self.pending, self.pending_kind = plan, "teardown"
                self.pending_errors = []
                self.info = info
        return self.run("planning teardown", work)

    def plan_drop_stale(self) -> Any:
        """Plan dropping the kit's slots nobody reads (inactive for ``stale_after`` seconds,
        or invalidated), with their publications, and the publications whose slots are gone."""
        def work() -> None:
            conn = self._conn()
            plan = plan_teardown(conn, stale=True, stale_after=self.stale_after)
            with self.lock:
                self.pending, self.pending_kind = plan, "teardown"
                self.pending_errors = []
                self.info = (f"{len(plan.slots)} stale slot(s), {len(plan.publications)} "
                             "publication(s): review, then confirm" if plan.steps
                             else "no stale slot, no orphaned publication")
        return self.run("looking for stale slots", work)

    def confirm(self) -> Any:
        def work() -> None:
            with self.lock:
                plan, kind, problems = self.pending, self.pending_kind, self.pending_errors
            if plan is None:
                raise RuntimeError("nothing to confirm: plan a set-up or teardown first")
            if problems:
                raise RuntimeError("the plan cannot be applied: " + "; ".join(problems))
            if kind == "setup":
                result = plan.apply()
                if result.slot is not None and not self.temporary:
                    result.slot.close()
                text = "; ".join(result.actions) or "nothing to change"
            else:
                stream = getattr(plan, "stream", None)
                if stream is not None and not getattr(stream, "closed", True) \
                        and self.stop_reader is not None:
                    self.stop_reader()  # the reader first (its threads, then its stream)
                result = plan.apply()
                text = str(result)
            with self.lock:
                self.result = result
                self.pending, self.pending_kind, self.pending_errors = None, None, []
                self.info = text
            self._list_slots()
        return self.run("applying", work)

    def cancel(self) -> None:
        with self.lock:
            self.pending, self.pending_kind, self.pending_errors = None, None, []
            self.error = None
            self.info = "cancelled"
            self.bump()

    def _list_slots(self) -> None:
        conn = self._conn()
        slots = list_slots(conn)
        orphans = sorted(orphaned_publications(conn))
        with self.lock:
            self.slots = slots
            self.orphans = orphans

    def refresh_slots(self) -> Any:
        with self.lock:  # rows dropped earlier leave the list now
            self.drops = {k: v for k, v in self.drops.items() if v == "dropping"}
        return self.run("listing slots", self._list_slots)

    @property
    def leftovers(self) -> list[tuple[str, str, str]]:
        """What the kit left on this database and nobody uses, as ``(kind, name, text)``: its
        slots nobody reads (each retains WAL) and its publications whose slots are gone."""
        rows = []
        for s in self.slots:
            if s.kit_managed and (s.invalidated or not (s.active or s.temporary)):
                since = (f" since {s.inactive_since:%Y-%m-%d %H:%M:%S}"
                         if s.inactive_since is not None else "")
                state = "invalidated" if s.invalidated else f"inactive{since}"
                rows.append(("slot", s.slot_name,
                             f"slot {s.slot_name} ({s.kind}, {state}): retains "
                             f"{format_bytes(s.retained_wal_bytes)} of WAL"))
        rows += [("publication", p, f"publication {p}: every slot it recorded is gone")
                 for p in self.orphans]
        return rows

    def drop_leftover(self, name: str, *, kind: str = "slot") -> Any:
        """Drop one leftover (a kit slot with the publication made for it, or an orphaned kit
        publication) on the worker; ``drops[(kind, name)]`` follows it."""
        if kind not in ("slot", "publication"):
            raise ValueError("kind must be 'slot' or 'publication'")
        key = (kind, name)
        with self.lock:
            self.drops[key] = "dropping"
            self.bump()

        def work() -> None:
            try:
                conn = self._conn()
                plan = (plan_teardown(conn, slot_name=name) if kind == "slot"
                        else plan_teardown(conn, publication=name))
                report = plan.apply()
            except Exception:
                with self.lock:
                    self.drops[key] = "failed"
                raise
            with self.lock:
                self.drops[key] = "dropped"
                self.info = str(report)
            self._list_slots()
        return self.run(f"dropping {kind} {name}", work)

    def take_slots(self, slots: list[SlotStatus]) -> None:
        """The kit's slots from another poll (the status tab's snapshot, once a second): the
        list follows the server without a click, and says what the status tab says."""
        with self.lock:
            if slots != self.slots:
                self.slots = list(slots)
                self.bump()


KEYLESS_CHOICES = [("refuse them (the plan says which)", "error"),
                   ("REPLICA IDENTITY FULL (ALTER TABLE, restored by teardown)", "full"),
                   ("leave them out", "skip")]


# a leftover's Drop button: what it says, disabled, style (by the drop's state)
_DROP_STATES = {"": ("Drop", False, "danger"), "dropping": ("Dropping…", True, "warning"),
                "dropped": ("Dropped", True, "success"),
                "failed": ("Failed: retry", False, "danger")}


def slots_html(slots: list[SlotStatus], stale_after: float) -> str:
    if not slots:
        return "<i>no slot of the kit on this database</i>"
    rows = []
    for s in slots:
        state = "active" if s.active else "inactive"
        if not s.active and s.inactive_since is not None:
            state += f" since {s.inactive_since:%Y-%m-%d %H:%M:%S}"
        mark = " <b>stale</b>" if is_stale(s, older_than=stale_after) else ""
        rows.append(
            f"<tr><td>{esc(s.slot_name)}</td><td>{esc(s.plugin or '')}</td>"
            f"<td>{esc(state)}{mark}</td><td>{esc(s.wal_status or 'n/a')}</td>"
            f"<td>{'yes' if s.invalidated else 'no'}</td>"
            f"<td>{esc(format_bytes(s.retained_wal_bytes))}</td>"
            f"<td>{'temporary' if s.temporary else 'permanent'}</td></tr>")
    return ("<table><tr><th>slot</th><th>plugin</th><th>state</th><th>wal_status</th>"
            "<th>invalidated</th><th>retained WAL</th><th>kind</th></tr>"
            + "".join(rows) + "</table>")


class SetupWidget(WidgetView):
    shows = ("pending_sql", "pending", "pending_errors", "busy", "error", "info", "slots",
             "stale_after", "keyless", "leftovers", "drops")

    def __init__(self, model: SetupModel) -> None:
        super().__init__(model)
        m = self.make
        self.slot_name = m(w.Text(value=model.slot_name, description="slot",
                                  placeholder="(generated: cdcnb_...)"))
        self.publication = m(w.Text(value=model.publication, description="publication",
                                    placeholder="(generated)"))
        self.plugin = m(w.Dropdown(options=["wal2arrow", "pgoutput"], value=model.plugin,
                                   description="plugin"))
        self.temporary = m(w.Checkbox(value=model.temporary, description="temporary slot",
                                      indent=False))
        self.keyless = m(w.Dropdown(options=KEYLESS_CHOICES, value=model.keyless,
                                    description="no key",
                                    style={"description_width": "initial"},
                                    layout=w.Layout(width="auto")))
        self.keyless.tooltip = (
            "tables without a primary key or replica identity index: their updates and "
            "deletes cannot be matched to rows")
        self.plan_button = m(w.Button(description="Plan set-up", button_style="primary"))
        self.teardown_button = m(w.Button(description="Plan teardown", button_style="warning"))
        self.stale_button = m(w.Button(description="Drop stale slots…"))
        self.refresh_button = m(w.Button(description="Refresh slots"))
        self.confirm_button = m(w.Button(description="Confirm", button_style="danger"))
        self.cancel_button = m(w.Button(description="Cancel"))
        self.sql = m(w.HTML())
        self.message = m(w.HTML())
        self.slots = m(w.HTML())
        self.leftovers = m(w.VBox())  # a row per leftover: its Drop button and what it is
        self._rows: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._leftover_head = m(w.HTML())
        self.confirm_row = m(w.HBox([self.confirm_button, self.cancel_button]))
        self.box = m(w.VBox([
            m(w.HTML("<b>Set-up and teardown</b>")),
            m(w.HBox([self.slot_name, self.publication])),
            m(w.HBox([self.plugin, self.temporary])),
            self.keyless,
            m(w.HBox([self.plan_button, self.teardown_button, self.stale_button,
                      self.refresh_button])),
            self.sql, self.confirm_row, self.message, self.slots, self.leftovers]))
        for name in ("slot_name", "publication", "plugin", "temporary"):
            getattr(self, name).observe(
                lambda c, n=name: setattr(model, n, c["new"]), names="value")
        self.keyless.observe(lambda c: model.set_keyless(c["new"]), names="value")
        self.plan_button.on_click(lambda _: model.plan_setup())
        self.teardown_button.on_click(lambda _: model.plan_teardown())
        self.stale_button.on_click(lambda _: model.plan_drop_stale())
        self.refresh_button.on_click(lambda _: model.refresh_slots())
        self.confirm_button.on_click(lambda _: model.confirm())
        self.cancel_button.on_click(lambda _: model.cancel())
        self.refresh(0.0)

    def show(self, state: SimpleNamespace) -> None:
        pending, busy = state.pending is not None, state.busy
        blocked = bool(state.pending_errors)
        sql_html = ""
        if pending:
            head = ("<div><i>The plan cannot be confirmed until the problem below is fixed "
                    "(for tables without a key: choose what to do with them above).</i></div>"
                    if blocked else "")
            style = "white-space:pre-wrap" + (";opacity:0.55" if blocked else "")
            sql_html = f"{head}<pre style='{style}'>{esc(state.pending_sql)}</pre>"
        status = (f"<i>{esc(busy)}…</i>" if busy else "") + message_html(state.error, state.info)
        buttons = (self.plan_button, self.teardown_button, self.stale_button,
                   self.refresh_button, self.confirm_button)
        with held(self.sql, self.message, self.slots, *buttons):
            set_changed(self.sql, value=sql_html)
            set_changed(self.message, value=status)
            set_changed(self.slots, value=slots_html(state.slots, state.stale_after))
            for button in buttons:
                set_changed(button, disabled=bool(busy))
            set_changed(self.confirm_button, disabled=bool(busy) or not pending or blocked)
            set_changed(self.keyless, value=state.keyless)
        set_changed(self.confirm_row.layout, display="" if pending else "none")
        self._show_leftovers(state.leftovers, state.drops)

    def _show_leftovers(self, leftovers: list[tuple[str, str, str]],
                        drops: dict[tuple[str, str], str]) -> None:
        texts = {(kind, name): text for kind, name, text in leftovers}
        keys = list(texts) + [k for k in drops if k not in texts]
        for key in [k for k in self._rows if k not in keys]:
            for widget in self._rows.pop(key):
                widget.close()
                self._widgets.remove(widget)
        for key in keys:
            if key not in self._rows:
                button = self.make(w.Button(layout=w.Layout(width="auto")))
                label = self.make(w.HTML())
                button.on_click(lambda _, k=key: self.model.drop_leftover(k[1], kind=k[0]))
                self._rows[key] = (button, label, self.make(w.HBox([button, label])))
        head = ("<b>Leftovers</b>: the kit's slots nobody reads (each keeps WAL on the server) "
                "and publications whose slots are gone" if keys else "")
        set_changed(self._leftover_head, value=head)
        children = (self._leftover_head, *(self._rows[k][2] for k in keys))
        if tuple(self.leftovers.children) != children:
            self.leftovers.children = children
        for key in keys:
            button, label, _ = self._rows[key]
            description, disabled, style = _DROP_STATES[drops.get(key, "")]
            text = texts.get(key) or f"{key[0]} {key[1]}"
            with held(button, label):
                set_changed(label, value=esc(text))
                set_changed(button, description=description, disabled=disabled,
                            button_style=style)
