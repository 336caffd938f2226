"""Teardown: listing the kit's slots and publications, and dropping only what the kit created.

The kit recognises its objects by their names (``cdcnb_`` prefix) and by the markers the plan
writes (:func:`~cdc_notebook.provision.plan.parse_marker`: a publication's comment that also
records its slots, a role's comment). :func:`plan_teardown` shows what it would drop, refuses
anything else named (:class:`NotKitManaged`) and a slot in use by another process
(:class:`SlotInUse`, unless ``force``); missing objects are skipped, so teardown is idempotent.

What set-up changed on the user's tables is recorded on the kit's publication (the replica
identity ``keyless="full"`` set to FULL, with the one it replaced): teardown of that publication
reports it, and restores it with ``restore_replica_identity=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.quoting import quote_ident_if_needed
from cdc_notebook.errors import NotKitManaged, SlotInUse
from cdc_notebook.provision.patterns import catalog_cache
from cdc_notebook.provision.plan import ROLE_MARKER, Step, parse_marker
from cdc_notebook.provision.status import KIT_PREFIX, SlotStatus, fetch_slot_statuses


def kit_publications(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Publications of the current database that carry the kit's marker."""
    rows = conn.execute(
        "SELECT pubname::text, obj_description(oid, 'pg_publication') FROM pg_publication"
    ).fetchall()
    out = {}
    for name, comment in rows:
        marker = parse_marker(comment)
        if marker is not None:
            out[name] = marker
    return out


def list_slots(conn: psycopg.Connection[Any], *, kit_only: bool = True) -> list[SlotStatus]:
    """The logical slots of this database with their state (the kit's only, by default)."""
    recorded = {s for m in kit_publications(conn).values() for s in m.get("slots", [])}
    slots = fetch_slot_statuses(conn, kit_slots=recorded)
    return [s for s in slots if s.kit_managed or not kit_only]


@dataclass
class TeardownReport:
    actions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    terminated_pids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is left as set-up changed it

    def __str__(self) -> str:
        lines = [f"done: {a}" for a in self.actions] + [f"skipped: {s}" for s in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) or "nothing to do"


@dataclass
class TeardownPlan:
    conn: psycopg.Connection[Any] = field(repr=False)
    slots: list[SlotStatus]
    publications: list[str]
    roles: list[str]
    force: bool
    skipped: list[str]
    steps: list[Step]
    notes: list[str] = field(default_factory=list)  # what is left as set-up changed it

    @property
    def sql(self) -> list[str]:
        return [s.sql for s in self.steps]

    def apply(self, *, wait: float = 10.0) -> TeardownReport:
        report = TeardownReport(skipped=list(self.skipped), notes=list(self.notes))
        for step in self.steps:
            if step.kind == "terminate":
                pid = step.statement[1]
                self.conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                report.terminated_pids.append(pid)
                wait_inactive(self.conn, step.statement[0], wait)
            elif step.kind == "drop_slot":
                try:
                    self.conn.execute(step.statement)
                except psycopg.errors.UndefinedObject:
                    report.skipped.append(f"{step.description}: already gone")
                    continue
                except psycopg.errors.ObjectInUse as exc:
                    raise SlotInUse(f"{step.description}: {exc.diag.message_primary}",
                                    slot_name=step.target, active_pid=None,
                                    hint="pass force=True to end the process using it",
                                    sqlstate="55006") from None
            else:
                self.conn.execute(step.statement)
            report.actions.append(step.description)
        catalog_cache.invalidate(self.conn)
        return report


def wait_inactive(conn: psycopg.Connection[Any], slot: str, wait: float) -> None:
    """Wait up to ``wait`` seconds for ``slot`` to be released (a reader that just stopped)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           [slot]).fetchone()
        if row is None or not row[0]:
            return
        time.sleep(0.05)


def plan_teardown(conn: psycopg.Connection[Any], *, slot_name: str | None = None,
                  publication: str | None = None, all_kit_objects: bool = False,
                  drop_role: str | None = None, force: bool = False,
                  restore_replica_identity: bool = False) -> TeardownPlan:
    """What teardown would drop: only kit-created slots, publications and roles.

    Raises :class:`NotKitManaged` for a named object the kit did not create, and
    :class:`SlotInUse` for a slot active in another process unless ``force`` (then that
    process is terminated first). The replica identity set-up set to FULL on the tables of a
    publication dropped here is restored with ``restore_replica_identity`` (after the drop),
    and reported in ``notes`` otherwise.
    """
    pubs = kit_publications(conn)
    recorded = {s for m in pubs.values() for s in m.get("slots", [])}
    slots = {s.slot_name: s for s in fetch_slot_statuses(conn, kit_slots=recorded)}
    skipped: list[str] = []
    want_slots: list[SlotStatus] = []
    want_pubs: list[str] = []
    if all_kit_objects:
        want_slots = [s for s in slots.values() if s.kit_managed]
        want_pubs = sorted(pubs)
    if slot_name is not None:
        status = slots.get(slot_name)
        if status is None:
            skipped.append(f"slot {slot_name}: does not exist")
        elif not status.kit_managed:
            raise NotKitManaged(
                f"slot {slot_name} was not created by the kit (no {KIT_PREFIX} prefix, not "
                "recorded on a kit publication): not dropped",
                hint=f"drop it yourself if you mean to: SELECT pg_drop_replication_slot("
                f"'{slot_name}');")
        elif status not in want_slots:
            want_slots.append(status)
    if publication is not None:
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                              [publication]).fetchone()
        if exists is None:
            skipped.append(f"publication {publication}: does not exist")
        elif publication not in pubs:
            raise NotKitManaged(
                f"publication {publication} was not created by the kit (no marker comment): "
                "not dropped", hint=f"drop it yourself if you mean to: DROP PUBLICATION "
                f"{sql.Identifier(publication).as_string(conn)};")
        elif publication not in want_pubs:
            want_pubs.append(publication)
    roles: list[str] = []
    if drop_role is not None:
        row = conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                           "WHERE rolname = %s", [drop_role]).fetchone()
        if row is None:
            skipped.append(f"role {drop_role}: does not exist")
        elif row[0] != ROLE_MARKER:
            raise NotKitManaged(f"role {drop_role} was not created by the kit: not dropped",
                                hint="drop it yourself if you mean to")
        else:
            roles.append(drop_role)
    steps: list[Step] = []
    own_pid = conn.info.backend_pid
    for s in want_slots:
        if s.active and s.active_pid != own_pid:
            if not force:
                raise SlotInUse(
                    f"slot {s.slot_name} is active in another process (pid {s.active_pid}): "
                    "not dropped", slot_name=s.slot_name, active_pid=s.active_pid,
                    hint=f"stop that reader first, or pass force=True to end pid "
                    f"{s.active_pid} (SELECT pg_terminate_backend({s.active_pid}))",
                    sqlstate="55006")
            steps.append(Step("terminate", f"end pid {s.active_pid}, which uses slot "
                              f"{s.slot_name}", f"SELECT pg_terminate_backend({s.active_pid})",
                              (s.slot_name, s.active_pid)))
        if s.temporary and s.active:
            continue  # a temporary slot vanishes with the process that was just ended
        stmt = sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(s.slot_name))
        steps.append(Step("drop_slot", f"drop slot {s.slot_name}", stmt.as_string(conn), stmt,
                          s.slot_name))
    for p in want_pubs:
        stmt = sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(p))
        steps.append(Step("drop_publication", f"drop publication {p}", stmt.as_string(conn),
                          stmt))
    notes: list[str] = []
    for p in want_pubs:
        steps += _identity_steps(conn, p, pubs[p], set(want_pubs), restore_replica_identity,
                                 notes)
    for r in roles:
        for stmt in (sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)),
                     sql.SQL("DROP ROLE {}").format(sql.Identifier(r))):
            steps.append(Step("drop_role", f"{stmt.as_string(conn)}", stmt.as_string(conn), stmt))
    return TeardownPlan(conn, want_slots, want_pubs, roles, force, skipped, steps, notes)


_IDENTITY = {"d": "DEFAULT", "n": "NOTHING"}


def _identity_steps(conn: psycopg.Connection[Any], publication: str, marker: dict[str, Any],
                    dropped: set[str], restore: bool, notes: list[str]) -> list[Step]:
    """Restore (or report) the replica identity the publication's set-up changed to FULL,
    on the tables that still exist and are still FULL."""
    recorded = marker.get("replica_identity") or {}
    if not recorded:
        return []
    rows = conn.execute(
        """SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relreplident::text,
                  ARRAY(SELECT pt.pubname::text FROM pg_publication_tables pt
                         JOIN pg_publication p ON p.pubname = pt.pubname
                        WHERE pt.schemaname = n.nspname AND pt.tablename = c.relname
                          AND (p.pubupdate OR p.pubdelete))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = ANY(%s::oid[])""", [[int(oid) for oid in recorded]]).fetchall()
    steps: list[Step] = []
    for oid, schema, name, current, publications in rows:
        was = _IDENTITY.get(str(recorded.get(str(oid), {}).get("was")))
        if current != "f" or was is None:
            continue  # changed since, by someone else
        table = sql.Identifier(schema, name)
        shown = f"{quote_ident_if_needed(schema)}.{quote_ident_if_needed(name)}"
        stmt = sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(table, sql.SQL(was))
        others = sorted(set(publications) - dropped)
        if others:
            notes.append(f"{shown}: replica identity FULL (set by the kit; it was {was}) is "
                         f"left in place: publication(s) {', '.join(others)} still publish its "
                         "updates and deletes, which need it")
        elif restore:
            steps.append(Step("replica_identity", f"restore replica identity {was} on {shown} "
                              f"(set to FULL for publication {publication})",
                              stmt.as_string(conn), stmt, shown))
        else:
            notes.append(f"{shown}: replica identity FULL was set by the kit for publication "
                         f"{publication} (it was {was}) and is left in place: pass "
                         f"restore_replica_identity=True to restore it, or run "
                         f"{stmt.as_string(conn)};")
    return steps


def teardown(conn: psycopg.Connection[Any], **options: Any) -> TeardownReport:
    """:func:`plan_teardown` then apply; returns what was done and what was skipped."""
    return plan_teardown(conn, **options).apply()
