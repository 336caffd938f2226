"""The set-up plan: the state wanted, the checks, and the SQL that gets there.

The seed's seven steps, each visible before it runs::

    plan = plan_provision(conn, "public.*")       # reads the catalog and the server, changes nothing
    print(plan.report)                            # what is fine, what is not and how to fix it
    print("\\n".join(plan.sql))                    # the SQL the plan will run (passwords redacted)
    result = plan.apply(progress=print)           # raises the first fatal problem's exception
    result.slot.snapshot_name                     # exported snapshot; result.slot.connection keeps it

* Validation (:mod:`~cdc_notebook.provision.checks`) is by capability, one function per check,
  and every problem names its fix.
* Objects the kit creates are recognisable: a kit publication carries a ``COMMENT`` marker
  (:func:`~cdc_notebook.provision.records.parse_marker`) that also records its slots (and
  which of them are temporary); teardown (:mod:`~cdc_notebook.provision.teardown`) drops
  nothing else. Names default to ``cdcnb_...``, but a name proves nothing.
* Running it twice changes nothing: the plan compares the wanted state with the catalog and
  only the difference becomes SQL.
* The slot is created last (:mod:`~cdc_notebook.provision.slots`): the wait for running write
  transactions is reported and times out cleanly.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import conninfo_of
from cdc_notebook.errors import (
    CDCError,
    ConfigurationError,
    InvalidPublicationName,
    OwnershipRequired,
)
from cdc_notebook.provision import column_history
from cdc_notebook.provision.checks import (
    ServerFacts,
    ValidationReport,
    check_existing_slot,
    check_foreign_publication,
    check_free_slots,
    check_grants,
    check_keys,
    check_plugin,
    check_publication_rights,
    check_replication_right,
    check_select,
    check_server_version,
    check_wal_level,
    check_wal_senders,
    keyless_tables,
    server_facts,
)
from cdc_notebook.provision.patterns import (
    TableInfo,
    TablePattern,
    catalog_cache,
    match_tables,
    parse_patterns,
)
from cdc_notebook.provision.records import (
    MARKER_PREFIX,
    ROLE_MARKER,
    kit_lock,
    make_marker,
    marker_slots,
    parse_marker,
)
from cdc_notebook.provision.slots import (
    DEFAULT_PLUGIN,
    CreatedSlot,
    ProgressEvent,
    create_slot,
    slot_state,
    validate_plugin_name,
    validate_slot_name,
)
from cdc_notebook.provision.status import KIT_PREFIX

log = logging.getLogger(__name__)

__all__ = ["MARKER_PREFIX", "ROLE_MARKER", "ProvisionPlan", "ProvisionResult", "Step",
           "default_names", "parse_marker", "plan_provision", "provision", "scram_verifier",
           "validate_publication_name"]

_REDACTED = "'********'"


@dataclass(frozen=True)
class Step:
    """One change the plan makes: what it does and the SQL it runs (shown redacted)."""

    kind: str  # "publication", "replica_identity", "role", "grant", "slot"
    description: str
    sql: str
    statement: Any = field(default=None, repr=False, compare=False)  # sql.Composable to run
    target: str = ""  # the object the step acts on


@dataclass
class ProvisionResult:
    tables: list[TableInfo]
    publication: str | None
    slot: CreatedSlot | None
    actions: list[str]
    report: ValidationReport


@dataclass
class ProvisionPlan:
    """The state wanted, the checks, and the SQL that gets there; nothing ran yet."""

    conn: psycopg.Connection[Any] = field(repr=False)
    tables: list[TableInfo]
    report: ValidationReport
    publication: str | None
    slot_name: str | None
    plugin: str
    temporary: bool
    export_snapshot: bool
    slot_method: str
    slot_timeout: float
    steps: list[Step]
    existing_slot: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sql(self) -> list[str]:
        """Every statement, in order, as text (passwords redacted)."""
        return [s.sql for s in self.steps]

    def __str__(self) -> str:
        head = [f"-- {len(self.tables)} table(s): "
                + ", ".join(t.quoted_name for t in self.tables[:20])
                + (" ..." if len(self.tables) > 20 else "")]
        head += [f"-- {n}" for n in self.notes]
        if not self.steps:
            head.append("-- nothing to change")
        for s in self.steps:
            head.append(f"-- {s.description}")
            head.append(s.sql + ("" if s.sql.endswith(";") else ";"))
        return "\n".join(head)

    def apply(self, progress: Callable[[ProgressEvent], None] | None = None) -> ProvisionResult:
        """Run the steps in order (publication first, the slot last). Raises the first fatal
        validation problem before changing anything."""
        self.report.raise_for_errors()
        # Shared: clean-up of orphaned publications (exclusive) waits until the slot this
        # plan records on its publication exists.
        with kit_lock(self.conn, shared=True, wait=10.0) as locked:
            if not locked:
                log.warning("provision: the kit's lock was not free within 10 s (a clean-up "
                            "is running?); going on without it")
            return self._apply(progress)

    def _apply(self, progress: Callable[[ProgressEvent], None] | None) -> ProvisionResult:
        actions: list[str] = []
        slot: CreatedSlot | None = None
        for step in self.steps:
            if progress:
                progress(ProgressEvent("step", step.description))
            if step.kind == "column_history":
                try:
                    column_history.install(self.conn)
                except psycopg.Error as exc:
                    raise _server_error(exc, step.description) from None
            elif step.kind == "slot":
                if not self.conn.autocommit:
                    self.conn.commit()  # the slot would wait for our own open transaction
                slot = create_slot(self.conn, self.slot_name or "", plugin=self.plugin,
                                   temporary=self.temporary,
                                   export_snapshot=self.export_snapshot,
                                   method=self.slot_method, timeout=self.slot_timeout,
                                   progress=progress)
            else:
                log.info("provision: %s", step.sql)
                try:
                    self.conn.execute(step.statement)
                except psycopg.Error as exc:
                    raise _server_error(exc, step.description) from None
            actions.append(step.description)
        if self.slot_name and slot is None and self.existing_slot is not None:
            ex = self.existing_slot
            slot = CreatedSlot(self.slot_name, ex["plugin"], ex["confirmed_flush"] or 0, None,
                               bool(ex["temporary"]), created=False)
            actions.append(f"reuse slot {self.slot_name}")
            if progress:
                progress(ProgressEvent("reused", f"slot {self.slot_name} exists: reused"))
        if not self.conn.autocommit:
            self.conn.commit()
        catalog_cache.invalidate(self.conn)
        return ProvisionResult(self.tables, self.publication, slot, actions, self.report)


def _server_error(exc: psycopg.Error, what: str) -> CDCError:
    msg = exc.diag.message_primary or str(exc)
    if exc.sqlstate == "42501":
        return OwnershipRequired(f"{what}: {msg}", hint="run as the owner of the objects (or a "
                                 "superuser), or ask an administrator to run the step shown in "
                                 "plan.sql", sqlstate=exc.sqlstate)
    return ConfigurationError(f"{what}: {msg}", sqlstate=exc.sqlstate)


def _slug(patterns: Sequence[TablePattern]) -> str:
    text = "_".join(p.text for p in patterns if not p.exclude)
    text = text.replace("*", "all").lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:24] or "tables"


def default_names(patterns: Sequence[TablePattern], plugin: str,
                  database: str) -> tuple[str, str]:
    """The slot and publication names the kit uses for these patterns (stable across runs)."""
    key = "\n".join([database, plugin, *sorted(p.text for p in patterns)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = f"{KIT_PREFIX}{_slug(patterns)}_{digest}"
    return name, name


# --------------------------------------------------------------------------- markers


def validate_publication_name(name: object) -> str:
    """A publication name the server keeps as given: any characters (the kit quotes it on
    every path, wal2arrow's and pgoutput's ``publication_names`` included) but not empty, no
    NUL, at most 63 bytes (a longer one would be silently truncated)."""
    problem = ("is not a string" if not isinstance(name, str) else "is empty" if not name
               else "contains a NUL character" if "\x00" in name
               else f"is {len(name.encode())} bytes long (at most 63)"
               if len(name.encode()) > 63 else None)
    if problem is not None or not isinstance(name, str):
        raise InvalidPublicationName(
            f"invalid publication name {name!r}: it {problem}",
            hint="use 1-63 bytes without NUL (any other characters work, e.g. MyPub, 'a b', "
            "'a,b'), or leave publication= out to use the kit's name")
    return name


# --------------------------------------------------------------------------- the plan


def plan_provision(
    conn: psycopg.Connection[Any],
    tables: str | TablePattern | Iterable[str | TablePattern],
    *,
    slot_name: str | None = None,
    publication: str | None = None,
    plugin: str = DEFAULT_PLUGIN,
    temporary: bool = False,
    create_slot: bool = True,
    export_snapshot: bool = True,
    slot_method: str = "replication",
    slot_timeout: float = 60.0,
    manage_publication: bool = True,
    keyless: str = "error",
    grant_to: str | None = None,
    create_role: str | None = None,
    role_password: str | None = None,
    replication_conninfo: dict[str, Any] | None = None,
    probe_timeout: float = 5.0,
) -> ProvisionPlan:
    """Validate and plan CDC for the tables the patterns select. Changes nothing.

    ``keyless``: what to do with selected tables that have no primary key or replica identity
    (in a publication that publishes updates and deletes, PostgreSQL then *rejects* UPDATE and
    DELETE on them): ``"error"`` (default: stop and say so), ``"full"`` (ALTER TABLE ...
    REPLICA IDENTITY FULL: old rows carry every column) or ``"skip"`` (leave them out).
    ``grant_to`` an existing role, or ``create_role`` (LOGIN REPLICATION, with
    ``role_password``): SELECT on the selected tables and USAGE on their schemas, nothing more.
    ``slot_method``: ``"replication"`` (CREATE_REPLICATION_SLOT on a replication connection,
    exporting a snapshot) or ``"sql"`` (pg_create_logical_replication_slot, no snapshot).
    Raises :class:`InvalidPattern`/:class:`NoTablesMatched` (nothing to plan for) and
    :class:`InvalidSlotName`; every other problem is in ``plan.report``.
    """
    if keyless not in ("error", "full", "skip"):
        raise ValueError("keyless must be 'error', 'full' or 'skip'")
    if slot_method not in ("replication", "sql"):
        raise ValueError("slot_method must be 'replication' or 'sql'")
    validate_plugin_name(plugin)
    patterns = parse_patterns(tables)

    # the facts
    facts = server_facts(conn)
    slot_name, publication = _object_names(patterns, plugin, facts.database, slot_name,
                                           publication, create_slot, manage_publication)
    matched = match_tables(conn, patterns)
    existing = slot_state(conn, slot_name) if slot_name else None

    # the checks, in order: the server, the slot, the role, the plugin, the tables
    report = ValidationReport()
    report.extend(check_server_version(facts))
    report.extend(check_wal_level(facts))
    if existing is not None:
        report.extend(check_existing_slot(conn, slot_name or "", existing, plugin, facts,
                                          temporary))
    elif slot_name:
        report.extend(check_free_slots(facts))
    senders = check_wal_senders(facts)
    report.extend(senders)
    if senders.status == "ok":  # a free WAL sender to try replication with
        report.extend(check_replication_right(facts, replication_conninfo or conninfo_of(conn)))
    replication = report.get("replication")
    if replication is None or replication.status == "ok":
        report.extend(check_plugin(conn, facts, plugin, probe_timeout))
    report.extend(check_select(facts, matched))
    report.extend(check_keys(matched, keyless))

    # the steps: replica identity first (a keyless table must never sit in the publication
    # without one), then the publication, the grants, and the slot last
    selected = ([t for t in matched if t.has_replica_identity] if keyless == "skip"
                else list(matched))
    steps = _identity_steps(conn, matched) if keyless == "full" else []
    notes: list[str] = []
    # what set-up changes, recorded on the kit's publication for teardown to restore
    identities = {str(t.oid): {"table": [t.schema, t.name], "was": t.replica_identity}
                  for t in keyless_tables(matched)} if keyless == "full" else {}
    slot_temporary = bool(existing["temporary"]) if existing is not None else temporary
    recorded = False
    if publication:
        pub_steps, recorded = _publication(conn, report, facts, publication, selected,
                                           slot_name, identities, notes, slot_temporary)
        steps += pub_steps
    elif identities:
        notes.append(_unrecorded_identity(identities, "the kit manages no publication here"))
    if slot_name and not recorded and existing is None and create_slot:
        notes.append(f"slot {slot_name} is recorded on no publication of the kit's (the kit "
                     "recognises its slots by that record): teardown(stream) drops it, "
                     "teardown(conn, slot_name=...) will not")
    if grant_to or create_role:
        steps += _grants(conn, report, facts, selected, grant_to, create_role, role_password)
    if plugin == "pgoutput" and slot_name:  # before the slot: its changes all have a row
        steps += _history_steps(conn, facts, notes)
    if slot_name and existing is None and create_slot:
        steps.append(_slot_step(slot_name, plugin, temporary, export_snapshot, slot_method))
    elif existing is not None:
        notes.append(f"slot {slot_name} exists and will be reused")
    return ProvisionPlan(conn, selected, report, publication, slot_name, plugin, temporary,
                         export_snapshot, slot_method, slot_timeout, steps, existing, notes)


def _object_names(patterns: Sequence[TablePattern], plugin: str, database: str,
                  slot_name: str | None, publication: str | None, create_slot: bool,
                  manage_publication: bool) -> tuple[str | None, str | None]:
    """The slot and publication to use: those given, else the kit's names for the patterns."""
    default_slot, default_pub = default_names(patterns, plugin, database)
    if publication is not None:
        validate_publication_name(publication)
    if slot_name is not None:
        validate_slot_name(slot_name)
        if publication is None:
            publication = (slot_name if slot_name.startswith(KIT_PREFIX)
                           else f"{KIT_PREFIX}{slot_name}")[:63]
    return (slot_name or (default_slot if create_slot else None),
            publication or (default_pub if manage_publication else None))


def _identity_steps(conn: psycopg.Connection[Any], matched: list[TableInfo]) -> list[Step]:
    """``keyless="full"``: REPLICA IDENTITY FULL on every table without a key."""
    steps = []
    for t in keyless_tables(matched):
        stmt = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(t.sql_identifier())
        steps.append(Step("replica_identity", f"replica identity FULL on {t.quoted_name}",
                          stmt.as_string(conn), stmt))
    return steps


def _history_steps(conn: psycopg.Connection[Any], facts: ServerFacts,
                   notes: list[str]) -> list[Step]:
    """pgoutput: the column history (exact column identity after DDL), when it is not there
    and the role may install it (event triggers: a superuser)."""
    state = column_history.state(conn)
    if state == "installed":
        return []
    derived = ("pgoutput column identity after renames and column drops is derived, not "
               "exact (docs/pgoutput.md, \"Column identity\"): ")
    if state == "foreign":
        notes.append(derived + f"a schema {column_history.SCHEMA} exists that is not the kit's "
                     "column history")
        return []
    if not facts.is_superuser:
        notes.append(derived + "the column history needs a superuser (event triggers); one "
                     "can install it with cdc_notebook.provision.column_history.install(conn)")
        return []
    what = "replace" if state in ("outdated", "disabled") else "install"
    return [Step("column_history", f"{what} the column history (an event trigger recording "
                 f"each table's columns after DDL, in schema {column_history.SCHEMA}: exact "
                 "pgoutput column identity)",
                 (column_history.uninstall_sql() + "\n" if what == "replace" else "")
                 + column_history.install_sql(), None, column_history.SCHEMA)]


def _slot_step(slot_name: str, plugin: str, temporary: bool, export_snapshot: bool,
               slot_method: str) -> Step:
    """The slot's creation, shown as the command :func:`create_slot` will send."""
    kind = "temporary " if temporary else ""
    if slot_method == "replication":
        text = (f"CREATE_REPLICATION_SLOT {slot_name} {'TEMPORARY ' if temporary else ''}"
                f"LOGICAL {plugin} (SNAPSHOT '{'export' if export_snapshot else 'nothing'}')")
    else:
        text = (f"SELECT pg_create_logical_replication_slot('{slot_name}', '{plugin}', "
                f"{'true' if temporary else 'false'})")
    where = " on a replication connection" if slot_method == "replication" else ""
    return Step("slot", f"create {kind}slot {slot_name} ({plugin}){where}", text)


# --------------------------------------------------------------------------- the publication


def _unrecorded_identity(identities: dict[str, Any], why: str) -> str:
    names = ", ".join(".".join(r["table"]) for r in identities.values())
    return (f"replica identity FULL on {names} is not recorded for teardown to restore ({why}): "
            "undo it with ALTER TABLE ... REPLICA IDENTITY DEFAULT when capture ends")


def _publication(conn: psycopg.Connection[Any], report: ValidationReport, facts: ServerFacts,
                 name: str, tables: list[TableInfo], slot_name: str | None,
                 identities: dict[str, Any] | None = None,
                 notes: list[str] | None = None,
                 temporary: bool = False) -> tuple[list[Step], bool]:
    """The publication's steps, and its checks into ``report``; and whether it is (or will
    be) the kit's, recording the slot."""
    state = _publication_state(conn, name)
    if state is not None and state["marker"] is None:
        # someone else's publication: used as it is, if it covers the tables
        report.extend(check_foreign_publication(conn, name, state, tables))
        if identities and notes is not None:
            notes.append(_unrecorded_identity(identities, f"publication {name} is not the "
                                              "kit's"))
        return [], False
    steps = _publication_steps(conn, name, state, tables, slot_name, identities, temporary)
    report.extend(check_publication_rights(facts, name, state, tables, len(steps)))
    return steps, True


def _publication_state(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    row = conn.execute(
        """SELECT p.puballtables, p.pubviaroot, pg_has_role(p.pubowner, 'USAGE'),
                  obj_description(p.oid, 'pg_publication'),
                  ARRAY(SELECT pr.prrelid::int8 FROM pg_publication_rel pr
                         WHERE pr.prpubid = p.oid),
                  ARRAY(SELECT format('%%s.%%s', pt.schemaname, pt.tablename)
                          FROM pg_publication_tables pt WHERE pt.pubname = p.pubname),
                  p.pubupdate AND p.pubdelete
             FROM pg_publication p WHERE p.pubname = %s""", [name]).fetchone()
    if row is None:
        return None
    alltables, viaroot, owner, comment, relids, names, upd_del = row
    return {"all_tables": alltables, "via_root": viaroot, "is_owner": owner,
            "marker": parse_marker(comment), "relids": set(relids), "names": set(names),
            "publishes_update_delete": upd_del}


def _publication_steps(conn: psycopg.Connection[Any], name: str, state: dict[str, Any] | None,
                       tables: list[TableInfo], slot_name: str | None,
                       identities: dict[str, Any] | None = None,
                       temporary: bool = False) -> list[Step]:
    """Create the kit's publication with its marker, or bring an existing one up to date; the
    marker records ``slot_name`` (and whether it is ``temporary``)."""
    pub = sql.Identifier(name)
    table_list = sql.SQL(", ").join(t.sql_identifier() for t in tables)
    via_root = any(t.relkind == "p" for t in tables)
    steps: list[Step] = []
    had, had_temporary = marker_slots(state["marker"]) if state else (set(), set())
    slots, temp = set(had), set(had_temporary)
    if slot_name:
        slots.add(slot_name)
        temp = (temp | {slot_name}) if temporary else (temp - {slot_name})
    recorded = dict(state["marker"].get("replica_identity") or {}) if state else {}
    # the first original recorded wins: a table already FULL was not changed by this run
    identity = {**(identities or {}), **recorded}
    if state is None:
        stmt = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, table_list)
        if via_root:
            stmt = sql.SQL("{} WITH (publish_via_partition_root = true)").format(stmt)
        steps.append(Step("publication", f"create publication {name} for {len(tables)} table(s)",
                          stmt.as_string(conn), stmt))
        comment = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(pub, sql.Literal(
            make_marker(slots, identity, temp)))
        steps.append(Step("publication", f"mark publication {name} as the kit's",
                          comment.as_string(conn), comment))
        return steps
    if state["relids"] != {t.oid for t in tables}:
        stmt = sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, table_list)
        steps.append(Step("publication", f"set the tables of publication {name} "
                          f"({len(tables)} table(s))", stmt.as_string(conn), stmt))
    if state["via_root"] != via_root:
        stmt = sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = {})").format(
            pub, sql.SQL("true" if via_root else "false"))
        steps.append(Step("publication", f"publish partitions via their root: {via_root}",
                          stmt.as_string(conn), stmt))
    if had != slots or had_temporary != temp or identity != recorded:
        comment = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(pub, sql.Literal(
            make_marker(slots, identity, temp)))
        what = " and ".join(w for w, changed in (
            (f"slot {slot_name}", had != slots or had_temporary != temp),
            ("the replica identity set-up changed", identity != recorded)) if changed)
        steps.append(Step("publication", f"record {what} on publication {name}",
                          comment.as_string(conn), comment))
    return steps


# --------------------------------------------------------------------------- grants


def _grants(conn: psycopg.Connection[Any], report: ValidationReport, facts: ServerFacts,
            tables: list[TableInfo], grant_to: str | None, create_role: str | None,
            password: str | None) -> list[Step]:
    """The grant steps for ``create_role`` or ``grant_to``, and their checks into ``report``."""
    role = create_role or grant_to
    if not role:  # plan_provision asks for grants only when one of them is given
        raise ValueError("grants need grant_to= or create_role=")
    grantee = _grantee_state(conn, role, tables)
    need = [t for t in tables if grantee is None or t.oid not in grantee["tables"]]
    if grantee is None and not create_role:
        steps: list[Step] = []  # nothing to grant to (the check says so)
    else:
        steps = _grant_steps(conn, role, grantee, tables, need, password)
    report.extend(check_grants(facts, role, grantee, bool(create_role), need, len(steps)))
    return steps


def _grantee_state(conn: psycopg.Connection[Any], role: str,
                   tables: list[TableInfo]) -> dict[str, Any] | None:
    """Whether ``role`` can replicate, and the schemas and tables it can already use."""
    row = conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = %s",
                       [role]).fetchone()
    if row is None:
        return None
    have = conn.execute(
        """SELECT n.nspname::text, has_schema_privilege(%(r)s, n.oid, 'USAGE'),
                  c.oid::int8, has_table_privilege(%(r)s, c.oid, 'SELECT')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = ANY(%(oids)s)""",
        {"r": role, "oids": [t.oid for t in tables]}).fetchall()
    return {"replication": row[0], "schemas": {r[0] for r in have if r[1]},
            "tables": {r[2] for r in have if r[3]}}


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, so the password itself never reaches the server or its logs.

    Computed by libpq (``PQencryptPasswordConn``, through psycopg): SASLprep, a random salt and
    libpq's iteration count (4096, PostgreSQL's default), exactly as ``\\password`` does."""
    from psycopg import pq

    if iterations != 4096:
        raise ValueError("libpq computes SCRAM-SHA-256 verifiers with 4096 iterations")
    # PQencryptPasswordConn needs a connection object but, given the algorithm, never uses the
    # connection: this one has an unknown option on purpose, so it never connects anywhere.
    pgconn = pq.PGconn.connect_start(b"cdc_notebook_no_connection=1")
    try:
        return pgconn.encrypt_password(password.encode(), b"", b"scram-sha-256").decode()
    finally:
        pgconn.finish()


def _grant_steps(conn: psycopg.Connection[Any], role: str, grantee: dict[str, Any] | None,
                 tables: list[TableInfo], need: list[TableInfo],
                 password: str | None) -> list[Step]:
    """Create the kit's role (``grantee`` None) with its marker, then USAGE on the schemas
    and SELECT on ``need``, the tables it cannot read yet."""
    rid = sql.Identifier(role)
    steps: list[Step] = []
    if grantee is None:
        if password is not None:
            stmt = sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                rid, sql.Literal(scram_verifier(password)))
            shown = sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD ").format(rid).as_string(
                conn) + _REDACTED
        else:
            stmt = sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(rid)
            shown = stmt.as_string(conn)
        steps.append(Step("role", f"create role {role} (LOGIN REPLICATION)", shown, stmt))
        comment = sql.SQL("COMMENT ON ROLE {} IS {}").format(rid, sql.Literal(ROLE_MARKER))
        steps.append(Step("role", f"mark role {role} as the kit's", comment.as_string(conn),
                          comment))
    schemas = sorted({t.schema for t in tables} - (grantee["schemas"] if grantee else set()))
    if schemas:
        stmt = sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(s) for s in schemas), rid)
        steps.append(Step("grant", f"USAGE on {len(schemas)} schema(s) to {role}",
                          stmt.as_string(conn), stmt))
    if need:
        stmt = sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(t.sql_identifier() for t in need), rid)
        steps.append(Step("grant", f"SELECT on {len(need)} table(s) to {role}",
                          stmt.as_string(conn), stmt))
    return steps


def provision(conn: psycopg.Connection[Any],
              tables: str | TablePattern | Iterable[str | TablePattern],
              *, progress: Callable[[ProgressEvent], None] | None = None,
              **options: Any) -> ProvisionResult:
    """:func:`plan_provision` then :meth:`ProvisionPlan.apply`."""
    return plan_provision(conn, tables, **options).apply(progress)
