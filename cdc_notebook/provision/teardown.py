"""Teardown: listing the kit's slots and publications, and dropping only what the kit created.

The kit recognises its objects by the markers the plan writes, never by their names
(:mod:`~cdc_notebook.provision.records`): a publication is the kit's when its comment carries
the marker, a slot when a kit publication of its database records it, a role by its comment.
Another tool's slot or publication called ``cdcnb_...`` is not touched.

:func:`plan_teardown` shows what it would drop, refuses anything else named
(:class:`NotKitManaged`) and a slot in use by another process (:class:`SlotInUse`, unless
``force``); missing objects are skipped, so teardown is idempotent. What it drops by default:

* ``teardown(stream)`` (or ``stream.teardown()``): the stream's objects. The stream is closed
  first (a temporary slot goes with it), then its slot and the kit publication made for it
  (unless another existing kit slot still uses it: then only the slot's record goes).
* ``slot_name=``: that slot, and the kit publications recording it that no other existing slot
  uses; ``publication=``: that publication.
* ``stale=True``: the kit's slots nobody reads (inactive, or invalidated) and the orphaned
  publications; ``all_kit_objects=True``: every kit slot and publication of the database.
* nothing named: the orphaned kit publications only (every slot they recorded is gone, e.g.
  the temporary slot of a kernel killed mid-stream).

A publication dropped because its slots went is checked again when the plan runs, under the
kit's lock (:func:`~cdc_notebook.provision.records.kit_lock`), so a set-up recording a new
slot on it meanwhile keeps it.

What set-up changed on the user's tables is recorded on the kit's publication (the replica
identity ``keyless="full"`` set to FULL, with the one it replaced): teardown of that publication
reports it, and restores it with ``restore_replica_identity=True``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.quoting import quote_ident_if_needed
from cdc_notebook.errors import NotKitManaged, SlotInUse
from cdc_notebook.provision import column_history
from cdc_notebook.provision.patterns import catalog_cache
from cdc_notebook.provision.plan import Step
from cdc_notebook.provision.records import (
    ROLE_MARKER,
    is_orphaned,
    kit_lock,
    kit_publications,
    make_marker,
    marker_slots,
    parse_marker,
    recorded_slots,
)
from cdc_notebook.provision.status import SlotStatus, fetch_slot_statuses

log = logging.getLogger(__name__)

__all__ = ["TeardownPlan", "TeardownReport", "kit_publications", "list_slots",
           "orphaned_publications", "plan_teardown", "release_publication",
           "sweep_orphaned_publications", "teardown", "wait_inactive"]


def list_slots(conn: psycopg.Connection[Any], *, kit_only: bool = True) -> list[SlotStatus]:
    """The logical slots of this database with their state (the kit's only, by default: those
    a kit publication records)."""
    slots = fetch_slot_statuses(conn)
    return [s for s in slots if s.kit_managed or not kit_only]


def _slot_names(conn: psycopg.Connection[Any]) -> set[str]:
    """The slots of the current database (a marker records slots of its own database)."""
    return {r[0] for r in conn.execute(
        "SELECT slot_name::text FROM pg_replication_slots "
        "WHERE database = current_database()").fetchall()}


def orphaned_publications(conn: psycopg.Connection[Any], *,
                          temporary_only: bool = False) -> dict[str, dict[str, Any]]:
    """Kit publications every slot of which is gone (``temporary_only``: and every one was
    temporary), with their markers. A publication that records no slot is never orphaned."""
    existing = _slot_names(conn)
    return {name: marker for name, marker in kit_publications(conn).items()
            if is_orphaned(marker, existing, temporary_only=temporary_only)}


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
    # publications dropped because their slots go: checked again when the plan runs
    derived: set[str] = field(default_factory=set)
    # step index -> the publication it follows (a replica identity restored after its drop)
    requires: dict[int, str] = field(default_factory=dict)
    stream: Any = field(default=None, repr=False)  # closed first (teardown(stream))
    owns_connection: bool = False  # opened for a stream: closed after apply()

    @property
    def sql(self) -> list[str]:
        return [s.sql for s in self.steps]

    def apply(self, *, wait: float = 10.0) -> TeardownReport:
        report = TeardownReport(skipped=list(self.skipped), notes=list(self.notes))
        try:
            steps = list(enumerate(self.steps))
            for _, step in steps:
                if step.kind == "close_stream":  # first, outside the lock: close() takes it
                    self.stream.close()
                    wait_inactive(self.conn, step.target, wait)
                    report.actions.append(step.description)
            with kit_lock(self.conn, shared=False,
                          wait=wait if self.derived else 0.0) as locked:
                self._apply(steps, report, locked, wait)
        finally:
            catalog_cache.invalidate(self.conn)
            if self.owns_connection:
                self.conn.close()
        return report

    def _apply(self, steps: list[tuple[int, Step]], report: TeardownReport, locked: bool,
               wait: float) -> None:
        kept: set[str] = set()  # publications not dropped after all
        dropped = {s.slot_name for s in self.slots}
        closed = any(step.kind == "close_stream" for _, step in steps)
        if self.stream is not None:
            dropped.add(self.stream.slot.slot_name)
        for index, step in steps:
            if step.kind == "close_stream":
                continue
            if index in self.requires and self.requires[index] in kept:
                continue
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
            elif step.kind == "drop_publication" and step.target in self.derived:
                why = self._keep(step.target, dropped, locked)
                if why == "already gone" and closed:
                    report.actions.append(f"{step.description}: by the stream's close()")
                    continue
                if why is not None:
                    kept.add(step.target)
                    report.skipped.append(f"{step.description}: {why}")
                    continue
                self.conn.execute(step.statement)
            elif step.kind == "unrecord":
                pub, slots = step.statement
                if not _unrecord(self.conn, pub, set(slots)):
                    continue
            elif step.kind == "drop_column_history":
                why = _drop_history(self.conn) if locked else (
                    "left: a set-up of the kit is running on this database")
                if why is not None:
                    report.skipped.append(f"{step.description}: {why}")
                    continue
            else:
                self.conn.execute(step.statement)
            report.actions.append(step.description)

    def _keep(self, publication: str, dropped: set[str], locked: bool) -> str | None:
        """Why a publication dropped because its slots go must stay after all, or None."""
        if not locked:
            return ("left: a set-up of the kit is running on this database; run teardown() "
                    "again")
        row = self.conn.execute(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication "
            "WHERE pubname = %s", [publication]).fetchone()
        if row is None:
            return "already gone"
        marker = parse_marker(row[0])
        if marker is None:
            return "left: it is no longer the kit's"
        using = (marker_slots(marker)[0] - dropped) & _slot_names(self.conn)
        if using:
            return f"left: slot(s) {', '.join(sorted(using))} use it now"
        return None


def _unrecord(conn: psycopg.Connection[Any], publication: str, slots: set[str]) -> bool:
    """Forget ``slots`` on a kit publication's marker (it stays); False if nothing changed."""
    row = conn.execute("SELECT obj_description(oid, 'pg_publication') FROM pg_publication "
                       "WHERE pubname = %s", [publication]).fetchone()
    marker = parse_marker(row[0]) if row is not None else None
    if marker is None:
        return False
    had, temporary = marker_slots(marker)
    if not had & slots:
        return False
    conn.execute(sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
        sql.Identifier(publication), sql.Literal(make_marker(
            had - slots, marker.get("replica_identity"), temporary - slots))))
    return True


def wait_inactive(conn: psycopg.Connection[Any], slot: str, wait: float) -> None:
    """Wait up to ``wait`` seconds for ``slot`` to be released (a reader that just stopped)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           [slot]).fetchone()
        if row is None or not row[0]:
            return
        time.sleep(0.05)


def _is_stream(target: Any) -> bool:
    return not isinstance(target, psycopg.Connection) and hasattr(target, "slot") \
        and hasattr(target, "conninfo") and hasattr(target, "close")


def _inactive_for(s: SlotStatus, seconds: float) -> bool:
    if s.invalidated:
        return True
    if s.active or s.temporary:
        return False
    if s.inactive_since is None or seconds <= 0:
        return True
    return (datetime.now(timezone.utc) - s.inactive_since).total_seconds() >= seconds


def plan_teardown(target: Any, *, slot_name: str | None = None,
                  publication: str | None = None, all_kit_objects: bool = False,
                  stale: bool = False, stale_after: float = 0.0,
                  drop_role: str | None = None, force: bool = False,
                  restore_replica_identity: bool = False, stream: Any = None) -> TeardownPlan:
    """What teardown would drop: only kit-created slots, publications and roles.

    ``target``: a connection, or a :class:`~cdc_notebook.stream.cdc_stream.CDCStream` (then
    its objects, on a connection of the plan's own; ``stream=`` does the same with a
    connection given). With nothing named, only orphaned kit publications (see the module).
    Raises :class:`NotKitManaged` for a named object the kit did not create, and
    :class:`SlotInUse` for a slot active in another process unless ``force`` (then that
    process is terminated first). The replica identity set-up set to FULL on the tables of a
    publication dropped here is restored with ``restore_replica_identity`` (after the drop),
    and reported in ``notes`` otherwise.
    """
    owns = False
    if _is_stream(target):
        from cdc_notebook.connection.conninfo import connect

        stream, conn, owns = target, connect(target.conninfo), True
    else:
        conn = target
    try:
        plan = _plan(conn, slot_name, publication, all_kit_objects, stale, stale_after,
                     drop_role, force, restore_replica_identity, stream)
    except BaseException:
        if owns:
            conn.close()
        raise
    plan.owns_connection = owns
    return plan


def _plan(conn: psycopg.Connection[Any], slot_name: str | None, publication: str | None,
          all_kit_objects: bool, stale: bool, stale_after: float, drop_role: str | None,
          force: bool, restore_replica_identity: bool, stream: Any) -> TeardownPlan:
    pubs = kit_publications(conn)
    slots = {s.slot_name: s for s in fetch_slot_statuses(conn, kit_slots=recorded_slots(pubs))}
    existing = set(slots)
    skipped: list[str] = []
    notes: list[str] = []
    want_slots: list[SlotStatus] = []
    named_pubs: list[str] = []  # dropped as asked
    derived: list[str] = []  # dropped because their slots go (checked again at apply)
    own_slot: str | None = None  # the stream's: closed by the plan, not "another process"
    steps: list[Step] = []

    def want(status: SlotStatus) -> None:
        if status not in want_slots:
            want_slots.append(status)

    if stream is not None:
        own_slot = stream.slot.slot_name
        if not getattr(stream, "closed", False):
            steps.append(Step("close_stream", f"close the stream (slot {own_slot})",
                              "-- stream.close()", None, own_slot))
        status = slots.get(own_slot)
        if status is None:
            if not stream.slot.temporary:
                skipped.append(f"slot {own_slot}: does not exist")
        elif not (status.kit_managed or stream.slot.created):
            notes.append(f"slot {own_slot} was not created by the kit (the stream reused it "
                         "and no kit publication records it): left as it is")
        elif not status.temporary:  # a temporary one goes with the stream's connection
            want(status)
        pub = stream.publication
        if pub is not None and pub not in pubs:
            exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                  [pub]).fetchone()
            if exists is not None:
                notes.append(f"publication {pub} is not the kit's: left as it is")
        elif pub is not None:
            derived.append(pub)
    if all_kit_objects:
        for s in slots.values():
            if s.kit_managed:
                want(s)
        named_pubs += sorted(pubs)
    if stale:
        for s in slots.values():
            if s.kit_managed and _inactive_for(s, stale_after):
                want(s)
    if slot_name is not None:
        status = slots.get(slot_name)
        if status is None:
            skipped.append(f"slot {slot_name}: does not exist")
        elif not status.kit_managed:
            raise NotKitManaged(
                f"slot {slot_name} was not created by the kit (no kit publication records "
                "it; a cdcnb_ name proves nothing): not dropped",
                hint=f"drop it yourself if you mean to: SELECT pg_drop_replication_slot("
                f"'{slot_name}');")
        else:
            want(status)
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
        elif publication not in named_pubs:
            named_pubs.append(publication)
    roles = _roles(conn, drop_role, skipped)
    nothing_named = (stream is None and slot_name is None and publication is None
                     and not all_kit_objects and not stale and drop_role is None)

    # the publications recording the slots that go: dropped when no other slot uses them,
    # else the slots' record goes
    going = {s.slot_name for s in want_slots} | ({own_slot} if own_slot else set())
    unrecord: dict[str, set[str]] = {}
    for name, marker in pubs.items():
        recorded = marker_slots(marker)[0]
        if name in named_pubs or not recorded & going:
            continue
        if (recorded - going) & existing:
            unrecord[name] = recorded & going
        elif name not in derived:
            derived.append(name)
    for name, marker in pubs.items():
        if (stale or nothing_named) and name not in derived and name not in named_pubs \
                and is_orphaned(marker, existing):
            derived.append(name)
    derived = [p for p in derived if p not in named_pubs]
    if nothing_named:
        notes.append("nothing named: only kit publications whose slots are all gone are "
                      "dropped; name a slot or publication, pass a stream (teardown(stream)), "
                      "or use stale=True (the kit's slots nobody reads) or all_kit_objects=True")

    own_pid = conn.info.backend_pid
    for s in want_slots:
        if s.active and s.active_pid != own_pid and s.slot_name != own_slot:
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
    dropping = named_pubs + derived
    for p in dropping:
        stmt = sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(p))
        why = "" if p in named_pubs else " (made for the slots that go)" \
            if recorded_slots({p: pubs[p]}) & going else " (every slot it recorded is gone)"
        steps.append(Step("drop_publication", f"drop publication {p}{why}",
                          stmt.as_string(conn), stmt, p))
    for p, gone in sorted(unrecord.items()):
        marker = pubs[p]
        had, temporary = marker_slots(marker)
        stmt = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(sql.Identifier(p), sql.Literal(
            make_marker(had - gone, marker.get("replica_identity"), temporary - gone)))
        steps.append(Step("unrecord", f"forget slot(s) {', '.join(sorted(gone))} on "
                          f"publication {p} (other slots still use it)", stmt.as_string(conn),
                          (p, tuple(sorted(gone))), p))
    requires: dict[int, str] = {}
    for p in dropping:
        for step in _identity_steps(conn, p, pubs[p], set(dropping), restore_replica_identity,
                                    notes):
            if p in derived:
                requires[len(steps)] = p
            steps.append(step)
    if dropping and set(pubs) <= set(dropping) and \
            column_history.state(conn) not in ("absent", "foreign"):
        # the last of the kit's publications goes: so does the column history
        steps.append(Step("drop_column_history", "drop the column history (schema "
                          f"{column_history.SCHEMA} and its event triggers: no kit "
                          "publication is left)", column_history.uninstall_sql(), None,
                          column_history.SCHEMA))
    for r in roles:
        for stmt in (sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)),
                     sql.SQL("DROP ROLE {}").format(sql.Identifier(r))):
            steps.append(Step("drop_role", f"{stmt.as_string(conn)}", stmt.as_string(conn), stmt))
    return TeardownPlan(conn, want_slots, dropping, roles, force, skipped, steps, notes,
                        set(derived), requires, stream)


def _roles(conn: psycopg.Connection[Any], drop_role: str | None,
           skipped: list[str]) -> list[str]:
    if drop_role is None:
        return []
    row = conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                       "WHERE rolname = %s", [drop_role]).fetchone()
    if row is None:
        skipped.append(f"role {drop_role}: does not exist")
        return []
    if row[0] != ROLE_MARKER:
        raise NotKitManaged(f"role {drop_role} was not created by the kit: not dropped",
                            hint="drop it yourself if you mean to")
    return [drop_role]


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


def teardown(target: Any, **options: Any) -> TeardownReport:
    """:func:`plan_teardown` then apply; returns what was done and what was skipped.
    ``teardown(stream)`` takes down that stream's objects (see the module)."""
    return plan_teardown(target, **options).apply()


# --------------------------------------------------------------------------- automatic clean-up


def release_publication(conn: psycopg.Connection[Any], publication: str, slot_name: str, *,
                        wait: float = 2.0) -> str | None:
    """A temporary slot went (its stream closed): forget it on its kit publication, and drop
    the publication (restoring the replica identity set-up changed) when every slot it
    recorded was temporary and none is left. Returns what was done, or None. Under the kit's
    lock: when a set-up holds it longer than ``wait`` seconds, nothing is done here and the
    next :func:`sweep_orphaned_publications` (or ``teardown()``) does it."""
    with kit_lock(conn, shared=False, wait=wait) as locked:
        if not locked:
            log.info("publication %s: left for the next clean-up (a set-up of the kit holds "
                     "its lock)", publication)
            return None
        row = conn.execute("SELECT obj_description(oid, 'pg_publication') FROM pg_publication "
                           "WHERE pubname = %s", [publication]).fetchone()
        marker = parse_marker(row[0]) if row is not None else None
        if marker is None:
            return None
        existing = _slot_names(conn) - {slot_name}
        if is_orphaned(marker, existing, temporary_only=True):
            _drop_restoring(conn, publication)
            return f"dropped publication {publication}"
        had, temporary = marker_slots(marker)
        dead = {slot_name} | (temporary - existing)
        if had & dead and _unrecord(conn, publication, dead):
            return f"forgot slot(s) {', '.join(sorted(had & dead))} on publication {publication}"
        return None


def _drop_restoring(conn: psycopg.Connection[Any], publication: str) -> None:
    """Drop a kit publication and restore the replica identity its set-up changed, in one
    transaction that waits at most 5 s for a lock (and the column history with the last kit
    publication, when the role may)."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '5s'")
        plan = _plan(conn, None, publication, False, False, 0.0, None, False, True, None)
        for step in plan.steps:
            if step.kind == "drop_column_history":
                why = _drop_history(conn)
                if why is not None:
                    log.info("%s: %s", step.description, why)
                continue
            conn.execute(step.statement)


def _drop_history(conn: psycopg.Connection[Any]) -> str | None:
    """Drop the column history when no kit publication is left; why not, or None."""
    left = kit_publications(conn)
    if left:
        return f"left: publication(s) {', '.join(sorted(left))} of the kit remain"
    try:
        column_history.uninstall(conn)
    except psycopg.Error as exc:
        return (f"left: {exc.diag.message_primary or exc} (a superuser can drop it: "
                f"{column_history.uninstall_sql()})")
    return None


def sweep_orphaned_publications(conn: psycopg.Connection[Any]) -> list[str]:
    """What a kit start does first: drop the kit publications made for temporary slots that
    are all gone (a kernel killed mid-stream leaves its publication: its slot went with its
    connection), restoring what their set-up changed, and forget dead temporary slots on the
    others. Only when no set-up of the kit is running on the database (its lock is free).
    Returns what was done; problems (rights, locks) are logged, never raised."""
    done: list[str] = []
    with kit_lock(conn, shared=False, wait=0.0) as locked:
        if not locked:
            return done
        existing = _slot_names(conn)
        for name, marker in kit_publications(conn).items():
            try:
                if is_orphaned(marker, existing, temporary_only=True):
                    _drop_restoring(conn, name)
                    done.append(f"dropped publication {name} (its temporary slots are gone)")
                    continue
                dead = marker_slots(marker)[1] - existing
                if dead and _unrecord(conn, name, dead):
                    done.append(f"forgot gone temporary slot(s) {', '.join(sorted(dead))} on "
                                f"publication {name}")
            except psycopg.Error as exc:
                log.warning("clean-up of publication %s failed: %s", name,
                            exc.diag.message_primary or exc)
    for line in done:
        log.info("clean-up: %s", line)
    return done
