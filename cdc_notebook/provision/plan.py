"""Auto-configuration (validation, publication, grants, slot) and teardown.

The seed's seven steps, each visible before it runs::

    plan = plan_provision(conn, "public.*")       # reads the catalog and the server, changes nothing
    print(plan.report)                            # what is fine, what is not and how to fix it
    print("\\n".join(plan.sql))                    # the SQL the plan will run (passwords redacted)
    result = plan.apply(progress=print)           # raises the first fatal problem's exception
    result.slot.snapshot_name                     # exported snapshot; result.slot.connection keeps it

* Validation is by capability: it tries what it can (a replication connection, loading the
  plugin) instead of guessing from role names, and every problem names its fix.
* Objects the kit creates are recognisable: slot and publication names start with ``cdcnb_``
  (unless a slot name is given) and a kit publication carries a ``COMMENT`` marker that also
  records its slots. Teardown drops nothing else.
* Running it twice changes nothing: the plan compares the wanted state with the catalog and
  only the difference becomes SQL.
* Creating a logical slot waits for every running write transaction to end; the wait is
  reported (``progress``), the blocking process ids are named, and it times out cleanly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import select
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import connect, conninfo_of
from cdc_notebook.connection.lsn import format_lsn, parse_lsn
from cdc_notebook.connection.quoting import quote_ident
from cdc_notebook.errors import (
    CDCError,
    ConfigurationError,
    ConnectionFailed,
    InvalidSlotName,
    NoFreeReplicationSlots,
    NoFreeWalSenders,
    NotKitManaged,
    OwnershipRequired,
    PluginNotAllowed,
    PluginNotInstalled,
    PublicationMismatch,
    ReplicationNotPermitted,
    SlotCreationTimeout,
    SlotError,
    SlotInUse,
    SlotPluginMismatch,
    TablePrivilegeMissing,
    UnsupportedServerVersion,
    WalLevelNotLogical,
)
from cdc_notebook.provision.patterns import (
    TableInfo,
    TablePattern,
    catalog_cache,
    match_tables,
    parse_patterns,
)
from cdc_notebook.provision.status import KIT_PREFIX, SlotStatus, fetch_slot_statuses

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = 150000  # 14 and older are out of community support (Nov 2026)
MARKER_PREFIX = "cdc_notebook "
ROLE_MARKER = "cdc_notebook managed role"
DEFAULT_PLUGIN = "wal2arrow"
MANAGED_SERVICE_ROLES = ("rds_replication", "rds_superuser", "azure_pg_admin",
                         "cloudsqlsuperuser", "alloydbsuperuser")
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")
_REDACTED = "'********'"


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Check:
    """One validation result."""

    name: str
    status: str  # "ok", "warning" or "error"
    message: str
    hint: str | None = None
    error: type[CDCError] | None = None  # raised for an "error"
    sqlstate: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # extra exception arguments

    def exception(self, message: str | None = None) -> CDCError:
        cls = self.error or ConfigurationError
        kwargs: dict[str, Any] = dict(self.details)
        if cls is not SlotCreationTimeout:  # it always carries 57014
            kwargs["sqlstate"] = self.sqlstate
        return cls(message or self.message, hint=self.hint, **kwargs)


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Check:
        check = Check(*args, **kwargs)
        self.checks.append(check)
        return check

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def raise_for_errors(self) -> None:
        """Raise the first fatal problem's own exception (the others are listed in it)."""
        if not self.errors:
            return
        first = self.errors[0]
        message = first.message
        if len(self.errors) > 1:
            message += " (also: " + "; ".join(c.message for c in self.errors[1:]) + ")"
        raise first.exception(message)

    def __str__(self) -> str:
        marks = {"ok": "ok  ", "warning": "warn", "error": "FAIL"}
        lines = []
        for c in self.checks:
            lines.append(f"[{marks[c.status]}] {c.name}: {c.message}")
            if c.hint and c.status != "ok":
                lines.append(f"       fix: {c.hint}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ServerFacts:
    server_version: int
    wal_level: str
    max_replication_slots: int
    used_slots: int
    max_wal_senders: int
    used_wal_senders: int
    current_user: str
    database: str
    is_superuser: bool
    has_replication_attr: bool
    can_create_role: bool
    can_create_in_database: bool  # CREATE on the database: CREATE PUBLICATION needs it
    output_plugin_libraries: str | None  # None: the server has no such setting, or hidden
    managed_roles_present: tuple[str, ...]
    managed_roles_member: tuple[str, ...]


_FACTS_SQL = """
SELECT current_setting('server_version_num')::int,
       current_setting('wal_level'),
       current_setting('max_replication_slots')::int,
       (SELECT count(*) FROM pg_replication_slots)::int,
       current_setting('max_wal_senders')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
       current_user::text, current_database()::text,
       r.rolsuper, r.rolreplication, r.rolcreaterole,
       has_database_privilege(current_database(), 'CREATE'),
       (SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'),
       ARRAY(SELECT b.rolname::text FROM pg_roles b WHERE b.rolname = ANY(%(managed)s)),
       ARRAY(SELECT b.rolname::text FROM pg_roles b
              WHERE b.rolname = ANY(%(managed)s) AND pg_has_role(r.oid, b.oid, 'MEMBER'))
  FROM pg_roles r WHERE r.rolname = current_user
"""


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(_FACTS_SQL, {"managed": list(MANAGED_SERVICE_ROLES)}).fetchone()
    if row is None:  # pg_roles has no row for current_user: the role was dropped meanwhile
        raise ConfigurationError("the role of this session no longer exists",
                                 hint="connect again as an existing role")
    return ServerFacts(*row[:13], tuple(row[13]), tuple(row[14]))


def _plugin_list(setting: str) -> list[str]:
    return [p.strip().strip('"').strip("'") for p in setting.split(",") if p.strip()]


def _allow_line(facts: ServerFacts, plugin: str) -> str:
    current = _plugin_list(facts.output_plugin_libraries or "pgoutput, test_decoding")
    wanted = ", ".join(current + [plugin])
    return wanted


def _plugin_not_allowed(facts: ServerFacts, plugin: str) -> Check:
    wanted = _allow_line(facts, plugin)
    return Check(
        "plugin", "error",
        f"output plugin {plugin} is not allowed by output_plugin_libraries "
        f"({facts.output_plugin_libraries or 'hidden from this role'})",
        hint=f"add it in postgresql.conf: output_plugin_libraries = '{wanted}' and reload "
        f"(SELECT pg_reload_conf()); a superuser may instead run, per session, SET "
        f"output_plugin_libraries = {wanted}; or use the built-in pgoutput (plugin='pgoutput'), "
        "which is always available", error=PluginNotAllowed, sqlstate="42501")


def _plugin_not_installed(plugin: str, detail: str) -> Check:
    state = ("is installed but cannot be loaded (built for another server version?)"
             if "could not load library" in detail else "is not installed on the server")
    return Check(
        "plugin", "error", f"output plugin {plugin} {state} ({detail})",
        hint="build and install it for this server (cd wal2arrow && make PG_CONFIG=<the "
        "server's pg_config> install), or put its directory in dynamic_library_path; or use "
        "the built-in pgoutput (plugin='pgoutput'), which is always available",
        error=PluginNotInstalled, sqlstate="58P01")


def _check_plugin(conn: psycopg.Connection[Any], facts: ServerFacts, plugin: str,
                  probe_timeout: float) -> Check:
    """Can this role decode with ``plugin``? Try it rather than guess.

    A superuser can ``LOAD`` the library (no slot, no waiting). Anyone else creates a temporary
    slot: the server loads the plugin (and checks output_plugin_libraries) before it waits for
    running transactions, so a timeout while waiting still proves the plugin loads.
    """
    listed = (None if facts.output_plugin_libraries is None else
              plugin in _plugin_list(facts.output_plugin_libraries))
    if plugin == "pgoutput":
        if listed is False:
            return _plugin_not_allowed(facts, plugin)
        return Check("plugin", "ok", "pgoutput is built into the server")
    params = conninfo_of(conn)
    if facts.is_superuser:
        if listed is False:  # the server checks the list before it loads the library
            return _plugin_not_allowed(facts, plugin)
        try:
            with connect(params) as lc:  # a throwaway session: the library stays loaded in it
                lc.execute(sql.SQL("LOAD {}").format(sql.Literal(plugin)))
        except ConnectionFailed as exc:
            return Check("plugin", "warning", f"{plugin} could not be tried: {exc.message}")
        except psycopg.Error as exc:
            return _plugin_not_installed(plugin, exc.diag.message_primary or str(exc))
        return Check("plugin", "ok", f"{plugin} loads and is allowed")
    if facts.wal_level != "logical":
        return Check("plugin", "warning", f"{plugin} could not be tried (wal_level is not logical)")
    if facts.used_slots >= facts.max_replication_slots:
        return Check("plugin", "warning", f"{plugin} could not be tried (no free slot)")
    probe = f"{KIT_PREFIX}probe_{os.getpid()}_{int(time.monotonic() * 1000) % 10**9}"
    try:
        with connect(params) as pc:
            pc.execute(sql.SQL("SET statement_timeout = {}").format(
                sql.Literal(f"{int(probe_timeout * 1000)}ms")))
            try:
                pc.execute("SELECT pg_create_logical_replication_slot(%s, %s, true)",
                           [probe, plugin])
            except psycopg.errors.QueryCanceled:
                return Check("plugin", "ok", f"{plugin} loads (the trial slot then waited for "
                             "running transactions, so it was abandoned)")
            except psycopg.Error as exc:
                msg = exc.diag.message_primary or str(exc)
                if "may not be used as an output plugin" in msg:
                    return _plugin_not_allowed(facts, plugin)
                if exc.sqlstate == "58P01" or "could not load library" in msg:
                    return _plugin_not_installed(plugin, msg)
                return Check("plugin", "error", f"trying {plugin} failed: {msg}",
                             error=PluginNotInstalled, sqlstate=exc.sqlstate)
            pc.execute("SELECT pg_drop_replication_slot(%s)", [probe])
    except ConnectionFailed as exc:
        return Check("plugin", "warning", f"{plugin} could not be tried: {exc.message}")
    return Check("plugin", "ok", f"{plugin} loads and is allowed")


def _check_replication_right(conn: psycopg.Connection[Any], facts: ServerFacts,
                             params: dict[str, Any]) -> Check:
    """Open a replication connection and run IDENTIFY_SYSTEM: the only reliable test."""
    user = facts.current_user
    try:
        with connect(params, replication=True) as rc:
            rc.pgconn.exec_(b"IDENTIFY_SYSTEM")
    except ReplicationNotPermitted as exc:
        if "rds_replication" in facts.managed_roles_present:
            via = f"GRANT rds_replication TO {user}; (as the rds_superuser admin)"
        else:
            via = (f"ALTER ROLE {user} REPLICATION; (as a superuser; on Amazon RDS/Aurora: "
                   f"GRANT rds_replication TO {user};)")
        return Check("replication", "error", exc.message,
                     hint=f"{via} or connect as a role that has REPLICATION",
                     error=ReplicationNotPermitted, sqlstate="42501")
    except ConnectionFailed as exc:
        return Check("replication", "error", exc.message, hint=exc.hint, error=type(exc),
                     sqlstate=exc.sqlstate)
    how = ("superuser" if facts.is_superuser else "REPLICATION attribute"
           if facts.has_replication_attr else
           f"membership of {', '.join(facts.managed_roles_member) or 'a replication role'}")
    return Check("replication", "ok", f"role {user} may replicate ({how})")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Step:
    """One change the plan makes: what it does and the SQL it runs (shown redacted)."""

    kind: str  # "publication", "replica_identity", "role", "grant", "slot"
    description: str
    sql: str
    statement: Any = field(default=None, repr=False, compare=False)  # sql.Composable to run
    target: str = ""  # the object the step acts on


@dataclass(frozen=True)
class ProgressEvent:
    """What :meth:`ProvisionPlan.apply` and :func:`create_slot` report while they work."""

    kind: str  # "step", "waiting", "created", "reused"
    message: str
    elapsed: float = 0.0
    blocking: tuple[BlockingProcess, ...] = ()


@dataclass(frozen=True)
class BlockingProcess:
    """A session whose open transaction the slot creation waits for."""

    pid: int
    user: str | None
    application_name: str | None
    client: str | None
    state: str | None
    xact_age: timedelta | None
    query: str | None

    def __str__(self) -> str:
        age = f", transaction open {self.xact_age.total_seconds():.1f} s" if self.xact_age else ""
        app = f" ({self.application_name})" if self.application_name else ""
        return f"pid {self.pid}{app} user {self.user} {self.state or ''}{age}"


@dataclass
class CreatedSlot:
    """A slot ready to stream from, and the connection that must stay open for it.

    ``snapshot_name`` (exported snapshots only) is valid while ``connection`` stays open and
    runs no other command; a temporary slot lives as long as ``connection``.
    """

    slot_name: str
    plugin: str
    consistent_point: int
    snapshot_name: str | None
    temporary: bool
    created: bool  # False: an existing slot was reused
    connection: psycopg.Connection[Any] | None = field(default=None, repr=False)
    waited: float = 0.0

    @property
    def consistent_point_text(self) -> str:
        return format_lsn(self.consistent_point)

    def close(self) -> None:
        """Close the connection (a temporary slot and an exported snapshot end with it)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self) -> CreatedSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        actions: list[str] = []
        slot: CreatedSlot | None = None
        for step in self.steps:
            if progress:
                progress(ProgressEvent("step", step.description))
            if step.kind == "slot":
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


def validate_slot_name(name: str) -> str:
    if not isinstance(name, str) or not _SLOT_NAME.fullmatch(name):
        raise InvalidSlotName(
            f"invalid replication slot name {name!r}",
            hint="use 1-63 lower-case letters, digits and underscores, e.g. cdcnb_orders")
    return name


def _validate_plugin_name(plugin: str) -> str:
    if not isinstance(plugin, str) or not _PLUGIN_NAME.fullmatch(plugin):
        raise ConfigurationError(f"invalid output plugin name {plugin!r}",
                                 hint="use wal2arrow or pgoutput")
    return plugin


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, so the password itself never reaches the server or its logs."""
    normalized = unicodedata.normalize("NFKC", password)  # SASLprep's normalization step
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", normalized.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def _marker(slots: Iterable[str]) -> str:
    return MARKER_PREFIX + json.dumps({"managed": True, "slots": sorted(set(slots))})


def parse_marker(comment: str | None) -> dict[str, Any] | None:
    """The kit's marker in a publication comment, or None when the kit did not create it."""
    if not comment or not comment.startswith(MARKER_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARKER_PREFIX):])
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("managed") is True else None


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


def _slot_state(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    row = conn.execute(
        """SELECT plugin, slot_type, database, temporary, active, active_pid, wal_status,
                  confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = %s""", [name]).fetchone()
    if row is None:
        return None
    keys = ("plugin", "slot_type", "database", "temporary", "active", "active_pid",
            "wal_status", "confirmed_flush")
    state = dict(zip(keys, row))
    if state["confirmed_flush"]:
        state["confirmed_flush"] = parse_lsn(state["confirmed_flush"])
    return state


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
    _validate_plugin_name(plugin)
    patterns = parse_patterns(tables)
    facts = server_facts(conn)
    default_slot, default_pub = default_names(patterns, plugin, facts.database)
    if slot_name is not None:
        validate_slot_name(slot_name)
        if publication is None:
            publication = (slot_name if slot_name.startswith(KIT_PREFIX)
                           else f"{KIT_PREFIX}{slot_name}")[:63]
    slot_name = slot_name or (default_slot if create_slot else None)
    publication = publication or (default_pub if manage_publication else None)
    matched = match_tables(conn, patterns)
    report = ValidationReport()
    notes: list[str] = []
    params = replication_conninfo or conninfo_of(conn)

    # 1. the server
    if facts.server_version < MIN_SERVER_VERSION:
        report.add("server_version", "error",
                   f"PostgreSQL {facts.server_version // 10000} is too old; the kit needs 15+",
                   hint="upgrade the server to PostgreSQL 15 or newer",
                   error=UnsupportedServerVersion)
    else:
        report.add("server_version", "ok", f"PostgreSQL {facts.server_version // 10000}")
    if facts.wal_level != "logical":
        report.add("wal_level", "error", f"wal_level is {facts.wal_level}, not logical",
                   hint="set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET "
                   "wal_level = logical) and restart the server; on managed services: "
                   "rds.logical_replication = 1 (RDS/Aurora parameter group), "
                   "cloudsql.logical_decoding = on (Cloud SQL)", error=WalLevelNotLogical,
                   sqlstate="55000")
    else:
        report.add("wal_level", "ok", "wal_level = logical")

    # 2. the slot: reuse or a free one
    existing = _slot_state(conn, slot_name) if slot_name else None
    if existing is not None:
        _check_existing_slot(report, conn, slot_name or "", existing, plugin, facts, temporary)
    elif slot_name:
        free = facts.max_replication_slots - facts.used_slots
        if free <= 0:
            report.add("slots", "error",
                       f"no free replication slot ({facts.used_slots} of "
                       f"max_replication_slots = {facts.max_replication_slots} in use)",
                       hint=f"raise max_replication_slots = {facts.max_replication_slots + 4} "
                       "in postgresql.conf and restart, or drop unused slots (list_slots(), "
                       "teardown())", error=NoFreeReplicationSlots, sqlstate="53400")
        else:
            report.add("slots", "ok", f"{free} of {facts.max_replication_slots} slots free")
    free_senders = facts.max_wal_senders - facts.used_wal_senders
    if free_senders <= 0:
        report.add("wal_senders", "error",
                   f"no free WAL sender ({facts.used_wal_senders} of max_wal_senders = "
                   f"{facts.max_wal_senders} in use)",
                   hint=f"raise max_wal_senders = {facts.max_wal_senders + 4} in "
                   "postgresql.conf and restart the server", error=NoFreeWalSenders,
                   sqlstate="53300")
    else:
        report.add("wal_senders", "ok", f"{free_senders} of {facts.max_wal_senders} WAL senders "
                   "free")

    # 3. the right to replicate, tried
    if free_senders > 0:
        report.checks.append(_check_replication_right(conn, facts, params))

    # 4. the plugin, tried
    if report.get("replication") is None or report.get("replication").status == "ok":
        report.checks.append(_check_plugin(conn, facts, plugin, probe_timeout))

    # 5. the tables: SELECT, keys
    no_select = [t for t in matched if not t.can_select]
    if no_select:
        names = ", ".join(t.quoted_name for t in no_select[:10])
        schemas = sorted({quote_ident(t.schema) for t in no_select})
        report.add("select", "error",
                   f"role {facts.current_user} cannot SELECT {len(no_select)} table(s): {names}"
                   + (" ..." if len(no_select) > 10 else ""),
                   hint=f"GRANT USAGE ON SCHEMA {', '.join(schemas)} TO {facts.current_user}; "
                   f"GRANT SELECT ON {names} TO {facts.current_user};",
                   error=TablePrivilegeMissing, sqlstate="42501")
    else:
        report.add("select", "ok", f"SELECT on all {len(matched)} table(s)")
    keyless_tables = [t for t in matched if not t.has_replica_identity]
    selected = list(matched)
    identity_steps: list[Step] = []
    if keyless_tables:
        names = ", ".join(t.quoted_name for t in keyless_tables[:10])
        lack = ("their updates and deletes would carry no old key (a delete would not say which "
                "row went; an update would not give the old values)")
        if keyless == "error":
            report.add("replica_identity", "error",
                       f"{len(keyless_tables)} table(s) have no primary key or replica "
                       f"identity: {names}; {lack}, and once they are in a publication "
                       "PostgreSQL rejects UPDATE and DELETE on them",
                       hint="add a primary key, or pass keyless='full' to run ALTER TABLE ... "
                       "REPLICA IDENTITY FULL (old rows then carry every column; more WAL), "
                       "or keyless='skip' to leave them out", error=ConfigurationError)
        elif keyless == "skip":
            skipped = {t.oid for t in keyless_tables}
            selected = [t for t in matched if t.oid not in skipped]
            report.add("replica_identity", "warning",
                       f"left out {len(keyless_tables)} table(s) without a key: {names}")
            if not selected:
                report.add("tables", "error", "every selected table lacks a key",
                           hint="add primary keys, or use keyless='full'",
                           error=ConfigurationError)
        else:
            for t in keyless_tables:
                stmt = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(t.sql_identifier())
                identity_steps.append(Step("replica_identity",
                                           f"replica identity FULL on {t.quoted_name}",
                                           stmt.as_string(conn), stmt))
            not_owned = [t for t in keyless_tables if not t.is_owner]
            if not_owned:
                report.add("replica_identity", "error",
                           f"ALTER TABLE ... REPLICA IDENTITY FULL needs ownership of "
                           f"{', '.join(t.quoted_name for t in not_owned[:10])}",
                           hint="run as the tables' owner, or have the owner run the "
                           "statements in plan.sql", error=OwnershipRequired, sqlstate="42501")
            else:
                report.add("replica_identity", "warning",
                           f"will set REPLICA IDENTITY FULL on {names} (old rows carry every "
                           "column)")
    else:
        report.add("replica_identity", "ok", "every table has a key for updates and deletes")

    # 6. the publication
    # replica identity first: a keyless table must never sit in the publication without one
    steps: list[Step] = list(identity_steps)
    if publication:
        steps += _publication_steps(conn, report, publication, selected, slot_name, facts)

    # 7. grants, only when asked
    if grant_to or create_role:
        steps += _grant_steps(conn, report, selected, grant_to, create_role, role_password,
                              facts)

    if slot_name and existing is None and create_slot:
        kind = "temporary " if temporary else ""
        if slot_method == "replication":
            text = (f"CREATE_REPLICATION_SLOT {slot_name} {'TEMPORARY ' if temporary else ''}"
                    f"LOGICAL {plugin} (SNAPSHOT '{'export' if export_snapshot else 'nothing'}')")
        else:
            text = (f"SELECT pg_create_logical_replication_slot('{slot_name}', '{plugin}', "
                    f"{'true' if temporary else 'false'})")
        where = " on a replication connection" if slot_method == "replication" else ""
        steps.append(Step("slot", f"create {kind}slot {slot_name} ({plugin}){where}", text))
    elif existing is not None:
        notes.append(f"slot {slot_name} exists and will be reused")
    return ProvisionPlan(conn, selected, report, publication, slot_name, plugin, temporary,
                         export_snapshot, slot_method, slot_timeout, steps, existing, notes)


def _check_existing_slot(report: ValidationReport, conn: psycopg.Connection[Any], name: str,
                         ex: dict[str, Any], plugin: str, facts: ServerFacts,
                         temporary: bool) -> None:
    if ex["slot_type"] != "logical" or ex["plugin"] != plugin:
        report.add("slot", "error",
                   f"slot {name} exists but decodes with {ex['plugin'] or 'nothing (physical)'}, "
                   f"not {plugin}",
                   hint=f"pass plugin='{ex['plugin']}', another slot_name, or drop the slot",
                   error=SlotPluginMismatch)
    elif ex["database"] != facts.database:
        report.add("slot", "error", f"slot {name} belongs to database {ex['database']}",
                   hint="connect to that database, or choose another slot_name",
                   error=SlotError)
    elif ex["wal_status"] == "lost":
        report.add("slot", "error",
                   f"slot {name} was invalidated (wal_status = lost): changes are missing",
                   hint="drop it (teardown(conn, slot_name=..., force=True)) and start again "
                   "with a new slot and snapshot", error=SlotError)
    elif ex["active"] and ex["active_pid"] != conn.info.backend_pid:
        report.checks.append(Check(
            "slot", "error",
            f"slot {name} is active in another process (pid {ex['active_pid']})",
            hint=f"stop that reader, or end it: SELECT pg_terminate_backend({ex['active_pid']}); "
            "or teardown(conn, slot_name=..., force=True)", error=SlotInUse,
            sqlstate="55006", details={"slot_name": name, "active_pid": ex["active_pid"]}))
    elif temporary:
        report.add("slot", "warning", f"slot {name} exists (permanent); it is reused as is")
    else:
        report.add("slot", "ok", f"slot {name} exists and is free: reused")


def _publication_steps(conn: psycopg.Connection[Any], report: ValidationReport, name: str,
                       tables: list[TableInfo], slot_name: str | None,
                       facts: ServerFacts) -> list[Step]:
    pub = sql.Identifier(name)
    state = _publication_state(conn, name)
    table_list = sql.SQL(", ").join(t.sql_identifier() for t in tables)
    via_root = any(t.relkind == "p" for t in tables)
    steps: list[Step] = []
    if state is not None and state["marker"] is None:
        # someone else's publication: use it as it is, if it covers the tables
        covered = state["all_tables"] or all(
            t.qualified_name in state["names"] or t.oid in state["relids"] for t in tables)
        missing = [t for t in tables if not state["all_tables"]
                   and t.qualified_name not in state["names"] and t.oid not in state["relids"]]
        if covered:
            report.add("publication", "ok",
                       f"publication {name} (not managed by the kit) covers every table")
        else:
            report.add("publication", "error",
                       f"publication {name} exists, is not managed by the kit, and lacks "
                       f"{', '.join(t.quoted_name for t in missing[:10])}",
                       hint=sql.SQL("ALTER PUBLICATION {} ADD TABLE {};").format(
                           pub, sql.SQL(", ").join(t.sql_identifier() for t in missing)
                       ).as_string(conn) + " (by its owner), or choose another publication=",
                       error=PublicationMismatch)
        return steps
    not_owned = [t for t in tables if not t.is_owner]
    want_relids = {t.oid for t in tables}
    slots = set(state["marker"].get("slots", [])) if state else set()
    if slot_name:
        slots.add(slot_name)
    if state is None:
        if not facts.can_create_in_database:
            report.add("publication_create", "error",
                       f"role {facts.current_user} may not create publications in database "
                       f"{facts.database} (CREATE PUBLICATION needs CREATE on the database)",
                       hint=f"GRANT CREATE ON DATABASE {quote_ident(facts.database)} TO "
                       f"{quote_ident(facts.current_user)}; or have an administrator run "
                       "the publication statement from plan.sql and pass publication=<its name>",
                       error=OwnershipRequired, sqlstate="42501")
        stmt = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, table_list)
        if via_root:
            stmt = sql.SQL("{} WITH (publish_via_partition_root = true)").format(stmt)
        steps.append(Step("publication", f"create publication {name} for {len(tables)} table(s)",
                          stmt.as_string(conn), stmt))
        comment = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(pub, sql.Literal(
            _marker(slots)))
        steps.append(Step("publication", f"mark publication {name} as the kit's",
                          comment.as_string(conn), comment))
    else:
        if not state["is_owner"]:
            report.add("publication_owner", "error",
                       f"publication {name} belongs to another role; ALTER PUBLICATION needs "
                       "its owner", hint="run as its owner (or a superuser), or choose "
                       "another publication=", error=OwnershipRequired, sqlstate="42501")
        if state["relids"] != want_relids:
            stmt = sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, table_list)
            steps.append(Step("publication", f"set the tables of publication {name} "
                              f"({len(tables)} table(s))", stmt.as_string(conn), stmt))
        if state["via_root"] != via_root:
            stmt = sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = {})").format(
                pub, sql.SQL("true" if via_root else "false"))
            steps.append(Step("publication", f"publish partitions via their root: {via_root}",
                              stmt.as_string(conn), stmt))
        if set(state["marker"].get("slots", [])) != slots:
            comment = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(pub, sql.Literal(
                _marker(slots)))
            steps.append(Step("publication", f"record slot {slot_name} on publication {name}",
                              comment.as_string(conn), comment))
    needs_tables = state is None or state["relids"] != want_relids
    if needs_tables and not_owned and not facts.is_superuser:
        report.add("publication_owner", "error",
                   f"{'CREATE' if state is None else 'ALTER'} PUBLICATION ... FOR TABLE needs "
                   f"ownership of {', '.join(t.quoted_name for t in not_owned[:10])}"
                   + (" ..." if len(not_owned) > 10 else ""),
                   hint="run as the tables' owner or a superuser, or have an administrator run "
                   "the publication statement from plan.sql and pass publication=<its name>",
                   error=OwnershipRequired, sqlstate="42501")
    elif report.get("publication_owner") is None and report.get("publication_create") is None:
        report.add("publication", "ok", f"publication {name}: "
                   + ("up to date" if not steps else f"{len(steps)} change(s)"))
    return steps


def _grant_steps(conn: psycopg.Connection[Any], report: ValidationReport,
                 tables: list[TableInfo], grant_to: str | None, create_role: str | None,
                 password: str | None, facts: ServerFacts) -> list[Step]:
    role = create_role or grant_to
    if not role:  # plan_provision asks for grants only when one of them is given
        raise ValueError("grants need grant_to= or create_role=")
    rid = sql.Identifier(role)
    steps: list[Step] = []
    row = conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = %s",
                       [role]).fetchone()
    if row is None:
        if not create_role:
            report.add("grants", "error", f"role {role} does not exist",
                       hint="create it, or pass create_role= to let the kit create it",
                       error=ConfigurationError, sqlstate="42704")
            return steps
        if not (facts.is_superuser or facts.can_create_role):
            report.add("grants", "error", f"role {facts.current_user} may not create roles",
                       hint=f"ALTER ROLE {facts.current_user} CREATEROLE; or have an "
                       "administrator create the role", error=OwnershipRequired,
                       sqlstate="42501")
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
        have_schema: set[str] = set()
        have_table: set[int] = set()
    else:
        if create_role:
            report.add("role", "ok", f"role {role} exists; its password and attributes are "
                       "left unchanged")
        if not row[0]:
            report.add("role_replication", "warning",
                       f"role {role} has no REPLICATION attribute: it can read the tables "
                       "but not stream changes",
                       hint=f"ALTER ROLE {role} REPLICATION; (as a superuser)")
        have = conn.execute(
            """SELECT n.nspname::text, has_schema_privilege(%(r)s, n.oid, 'USAGE'),
                      c.oid::int8, has_table_privilege(%(r)s, c.oid, 'SELECT')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = ANY(%(oids)s)""",
            {"r": role, "oids": [t.oid for t in tables]}).fetchall()
        have_schema = {r[0] for r in have if r[1]}
        have_table = {r[2] for r in have if r[3]}
    schemas = sorted({t.schema for t in tables} - have_schema)
    if schemas:
        stmt = sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(s) for s in schemas), rid)
        steps.append(Step("grant", f"USAGE on {len(schemas)} schema(s) to {role}",
                          stmt.as_string(conn), stmt))
    need = [t for t in tables if t.oid not in have_table]
    if need:
        stmt = sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(t.sql_identifier() for t in need), rid)
        steps.append(Step("grant", f"SELECT on {len(need)} table(s) to {role}",
                          stmt.as_string(conn), stmt))
        not_owned = [t for t in need if not t.is_owner]
        if not_owned and not facts.is_superuser:
            report.add("grants", "error",
                       f"granting SELECT needs ownership (or GRANT OPTION) of "
                       f"{', '.join(t.quoted_name for t in not_owned[:10])}",
                       hint="run as the tables' owner, or have the owner run the GRANT from "
                       "plan.sql", error=OwnershipRequired, sqlstate="42501")
    if report.get("grants") is None:
        report.add("grants", "ok", f"{role}: " + (f"{len(steps)} grant step(s)" if steps
                                                  else "already has what it needs"))
    return steps


def provision(conn: psycopg.Connection[Any],
              tables: str | TablePattern | Iterable[str | TablePattern],
              *, progress: Callable[[ProgressEvent], None] | None = None,
              **options: Any) -> ProvisionResult:
    """:func:`plan_provision` then :meth:`ProvisionPlan.apply`."""
    return plan_provision(conn, tables, **options).apply(progress)


# --------------------------------------------------------------------------- slots


_BLOCKERS_SQL = """
SELECT a.pid, a.usename::text, a.application_name, a.client_addr::text, a.state,
       now() - a.xact_start, left(a.query, 200)
  FROM pg_stat_activity a
 WHERE a.pid = ANY(pg_blocking_pids(%s))
 ORDER BY a.xact_start NULLS LAST
"""


def blocking_processes(monitor: psycopg.Connection[Any], pid: int) -> list[BlockingProcess]:
    """The sessions the backend ``pid`` waits for (pg_blocking_pids + pg_stat_activity)."""
    rows = monitor.execute(_BLOCKERS_SQL, [pid]).fetchall()
    return [BlockingProcess(*r) for r in rows]


def _result_error(res: Any, what: str, slot_name: str, plugin: str) -> CDCError:
    from psycopg.pq import DiagnosticField

    raw_state = res.error_field(DiagnosticField.SQLSTATE)
    sqlstate = raw_state.decode() if raw_state else None
    raw = res.error_field(DiagnosticField.MESSAGE_PRIMARY)
    msg = raw.decode(errors="replace") if raw else (res.error_message or b"").decode(
        errors="replace").strip()
    return _slot_error(sqlstate, msg, what, slot_name, plugin)


def _slot_error(sqlstate: str | None, msg: str, what: str, slot_name: str,
                plugin: str) -> CDCError:
    if "may not be used as an output plugin" in msg:
        return PluginNotAllowed(
            f"{what}: {msg}",
            hint=f"add {plugin} to output_plugin_libraries in postgresql.conf and reload; or "
            "use plugin='pgoutput', which is always available", sqlstate=sqlstate)
    if sqlstate == "58P01":
        return PluginNotInstalled(f"{what}: {msg}", hint=f"install {plugin} on the server, or "
                                  "use plugin='pgoutput'", sqlstate=sqlstate)
    if sqlstate == "42710":
        return SlotError(f"{what}: {msg}", hint="choose another slot_name, or reuse the slot",
                         sqlstate=sqlstate)
    if sqlstate == "53400":
        return NoFreeReplicationSlots(f"{what}: {msg}", hint="raise max_replication_slots in "
                                      "postgresql.conf and restart, or drop unused slots",
                                      sqlstate=sqlstate)
    if "wal_level" in msg:
        return WalLevelNotLogical(f"{what}: {msg}", hint="set wal_level = logical in "
                                  "postgresql.conf and restart the server", sqlstate=sqlstate)
    if sqlstate == "55006":
        return SlotInUse(f"{what}: {msg}", slot_name=slot_name, active_pid=None,
                         sqlstate=sqlstate)
    if sqlstate == "42501":
        return ReplicationNotPermitted(f"{what}: {msg}", hint="ALTER ROLE <you> REPLICATION;",
                                       sqlstate=sqlstate)
    return SlotError(f"{what}: {msg}", sqlstate=sqlstate)


def create_slot(
    conn: psycopg.Connection[Any],
    slot_name: str,
    *,
    plugin: str = DEFAULT_PLUGIN,
    temporary: bool = False,
    export_snapshot: bool = True,
    method: str = "replication",
    timeout: float = 60.0,
    progress: Callable[[ProgressEvent], None] | None = None,
    poll_interval: float = 0.2,
    conninfo: dict[str, Any] | None = None,
) -> CreatedSlot:
    """Create a logical slot, reporting the wait for running write transactions.

    ``conn`` is an ordinary connection: it watches who blocks the creation. The slot is
    created on a new connection (a ``replication=database`` one for ``method="replication"``,
    which can export a snapshot), returned open in :attr:`CreatedSlot.connection` when it
    holds something (an exported snapshot or a temporary slot), closed otherwise.
    After ``timeout`` seconds the creation is cancelled (nothing is left behind) and
    :class:`SlotCreationTimeout` names the blocking process ids.
    """
    validate_slot_name(slot_name)
    _validate_plugin_name(plugin)
    if method not in ("replication", "sql"):
        raise ValueError("method must be 'replication' or 'sql'")
    params = conninfo or conninfo_of(conn)
    replication = method == "replication"
    # the watcher must not hold a transaction open: the creation would wait for it
    monitor = conn if conn.autocommit else connect(params)
    try:
        worker = connect(params, replication=replication)
    except BaseException:
        if monitor is not conn:
            monitor.close()
        raise
    keep_open = False
    try:
        if replication:
            command = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL {} (SNAPSHOT {})").format(
                sql.Identifier(slot_name), sql.SQL("TEMPORARY " if temporary else ""),
                sql.Identifier(plugin),
                sql.Literal("export" if export_snapshot else "nothing")).as_bytes(worker)
        else:
            command = sql.SQL(
                "SELECT slot_name::text, lsn::text, NULL::text, {} "
                "FROM pg_create_logical_replication_slot({}, {}, {})").format(
                sql.Literal(plugin), sql.Literal(slot_name), sql.Literal(plugin),
                sql.Literal(temporary)).as_bytes(worker)
        started = time.monotonic()
        res = _run_waiting(worker, monitor, command, timeout, poll_interval, progress, slot_name,
                           started)
        waited = time.monotonic() - started
        if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
            raise _result_error(res, f"creating slot {slot_name}", slot_name, plugin)
        _name, lsn_text, snapshot, _plugin = (
            (res.get_value(0, i) or b"").decode() or None for i in range(4))
        lsn = parse_lsn(lsn_text or "0/0")
        snapshot_name = snapshot if replication and export_snapshot else None
        keep_open = temporary or snapshot_name is not None
        created = CreatedSlot(slot_name, plugin, lsn, snapshot_name, temporary, True,
                              worker if keep_open else None, waited)
        log.info("created slot %s at %s (waited %.2f s)", slot_name,
                 created.consistent_point_text, waited)
        if progress:
            progress(ProgressEvent("created", f"slot {slot_name} created at "
                                   f"{created.consistent_point_text}", waited))
        return created
    finally:
        if not keep_open:
            worker.close()
        if monitor is not conn:
            monitor.close()


def _run_waiting(worker: psycopg.Connection[Any], monitor: psycopg.Connection[Any],
                 command: bytes, timeout: float, poll_interval: float,
                 progress: Callable[[ProgressEvent], None] | None, slot_name: str,
                 started: float) -> Any:
    """Send ``command`` without blocking; while it runs, report who it waits for."""
    pgconn = worker.pgconn
    pid = worker.info.backend_pid
    pgconn.send_query(command)
    blockers: list[BlockingProcess] = []
    try:
        while True:
            while pgconn.flush() != 0:
                select.select([], [pgconn.socket], [], poll_interval)
            ready, _, _ = select.select([pgconn.socket], [], [], poll_interval)
            if ready:
                pgconn.consume_input()
            if not pgconn.is_busy():
                break
            elapsed = time.monotonic() - started
            blockers = blocking_processes(monitor, pid)
            if progress:
                who = ", ".join(str(b) for b in blockers) or "a consistent point"
                progress(ProgressEvent("waiting", f"creating slot {slot_name}: waiting for {who}",
                                       elapsed, tuple(blockers)))
            if elapsed >= timeout:
                raise SlotCreationTimeout(
                    f"creating slot {slot_name} waited {elapsed:.1f} s for running write "
                    "transactions"
                    + (f" of pid {', '.join(str(b.pid) for b in blockers)}" if blockers else "")
                    + " and was cancelled",
                    blocking_pids=[b.pid for b in blockers],
                    hint="commit or roll back those transactions (or end them: SELECT "
                    "pg_terminate_backend(pid)), then retry; or allow longer (timeout=)")
    except BaseException:
        _cancel(worker, monitor, pid)
        raise
    result = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    return result


def _cancel(worker: psycopg.Connection[Any], monitor: psycopg.Connection[Any], pid: int) -> None:
    """Cancel the pending creation and wait for its error so no half-made slot remains."""
    try:
        monitor.execute("SELECT pg_cancel_backend(%s)", [pid])
    except psycopg.Error:
        pass
    pgconn = worker.pgconn
    deadline = time.monotonic() + 10
    try:
        while pgconn.is_busy() and time.monotonic() < deadline:
            select.select([pgconn.socket], [], [], 0.1)
            pgconn.consume_input()
        while pgconn.get_result() is not None:
            pass
    except psycopg.Error:
        pass
    worker.close()


# --------------------------------------------------------------------------- listing, teardown


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

    def __str__(self) -> str:
        lines = [f"done: {a}" for a in self.actions] + [f"skipped: {s}" for s in self.skipped]
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

    @property
    def sql(self) -> list[str]:
        return [s.sql for s in self.steps]

    def apply(self, *, wait: float = 10.0) -> TeardownReport:
        report = TeardownReport(skipped=list(self.skipped))
        for step in self.steps:
            if step.kind == "terminate":
                pid = step.statement[1]
                self.conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                report.terminated_pids.append(pid)
                _wait_inactive(self.conn, step.statement[0], wait)
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


def _wait_inactive(conn: psycopg.Connection[Any], slot: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           [slot]).fetchone()
        if row is None or not row[0]:
            return
        time.sleep(0.05)


def plan_teardown(conn: psycopg.Connection[Any], *, slot_name: str | None = None,
                  publication: str | None = None, all_kit_objects: bool = False,
                  drop_role: str | None = None, force: bool = False) -> TeardownPlan:
    """What teardown would drop: only kit-created slots, publications and roles.

    Raises :class:`NotKitManaged` for a named object the kit did not create, and
    :class:`SlotInUse` for a slot active in another process unless ``force`` (then that
    process is terminated first).
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
    for r in roles:
        for stmt in (sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)),
                     sql.SQL("DROP ROLE {}").format(sql.Identifier(r))):
            steps.append(Step("drop_role", f"{stmt.as_string(conn)}", stmt.as_string(conn), stmt))
    return TeardownPlan(conn, want_slots, want_pubs, roles, force, skipped, steps)


def teardown(conn: psycopg.Connection[Any], **options: Any) -> TeardownReport:
    """:func:`plan_teardown` then apply; returns what was done and what was skipped."""
    return plan_teardown(conn, **options).apply()
