"""Validation before set-up: the server's facts, one function per check, and the report.

Each ``check_*`` function looks at one capability and returns its :class:`Check` (``ok``,
``warning`` or ``error`` with the fix and the exception to raise); the few that may find
several problems return a list. Validation is by capability: the right to replicate and the
plugin are tried (a replication connection, loading the plugin), not guessed from role names.
:func:`~cdc_notebook.provision.plan.plan_provision` runs them in order into a
:class:`ValidationReport`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc_notebook.connection.conninfo import connect, conninfo_of
from cdc_notebook.connection.quoting import quote_ident
from cdc_notebook.errors import (
    CDCError,
    ConfigurationError,
    ConnectionFailed,
    NoFreeReplicationSlots,
    NoFreeWalSenders,
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
from cdc_notebook.provision.patterns import TableInfo
from cdc_notebook.provision.status import KIT_PREFIX

MIN_SERVER_VERSION = 150000  # 14 and older are out of community support (Nov 2026)
MANAGED_SERVICE_ROLES = ("rds_replication", "rds_superuser", "azure_pg_admin",
                         "cloudsqlsuperuser", "alloydbsuperuser")


# --------------------------------------------------------------------------- the report


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

    def extend(self, checks: Check | Iterable[Check]) -> None:
        """Append a check function's result: one :class:`Check` or several, in order."""
        self.checks.extend([checks] if isinstance(checks, Check) else checks)

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


# --------------------------------------------------------------------------- the facts


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
    values = (*row[:13], tuple(row[13]), tuple(row[14]))  # the two arrays as tuples
    return ServerFacts(*values)


# --------------------------------------------------------------------------- the server


def check_server_version(facts: ServerFacts) -> Check:
    if facts.server_version < MIN_SERVER_VERSION:
        return Check("server_version", "error",
                     f"PostgreSQL {facts.server_version // 10000} is too old; the kit needs 15+",
                     hint="upgrade the server to PostgreSQL 15 or newer",
                     error=UnsupportedServerVersion)
    return Check("server_version", "ok", f"PostgreSQL {facts.server_version // 10000}")


def check_wal_level(facts: ServerFacts) -> Check:
    if facts.wal_level != "logical":
        return Check("wal_level", "error", f"wal_level is {facts.wal_level}, not logical",
                     hint="set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET "
                     "wal_level = logical) and restart the server; on managed services: "
                     "rds.logical_replication = 1 (RDS/Aurora parameter group), "
                     "cloudsql.logical_decoding = on (Cloud SQL)", error=WalLevelNotLogical,
                     sqlstate="55000")
    return Check("wal_level", "ok", "wal_level = logical")


def _capacity(name: str, setting: str, maximum: int, used: int, one: str, many: str,
              then: str, error: type[CDCError], sqlstate: str) -> Check:
    """A free one of ``maximum`` (the server's ``setting``), or the fix: raise it, ``then``."""
    free = maximum - used
    if free <= 0:
        return Check(name, "error", f"no free {one} ({used} of {setting} = {maximum} in use)",
                     hint=f"raise {setting} = {maximum + 4} in postgresql.conf and {then}",
                     error=error, sqlstate=sqlstate)
    return Check(name, "ok", f"{free} of {maximum} {many} free")


def check_free_slots(facts: ServerFacts) -> Check:
    """A slot to create needs a free one of ``max_replication_slots``."""
    return _capacity("slots", "max_replication_slots", facts.max_replication_slots,
                     facts.used_slots, "replication slot", "slots",
                     "restart, or drop unused slots (list_slots(), teardown())",
                     NoFreeReplicationSlots, "53400")


def check_existing_slot(conn: psycopg.Connection[Any], name: str, ex: dict[str, Any],
                        plugin: str, facts: ServerFacts, temporary: bool) -> Check:
    """A slot of that name exists: same plugin, same database, not lost, not in use."""
    if ex["slot_type"] != "logical" or ex["plugin"] != plugin:
        return Check("slot", "error",
                     f"slot {name} exists but decodes with "
                     f"{ex['plugin'] or 'nothing (physical)'}, not {plugin}",
                     hint=f"pass plugin='{ex['plugin']}', another slot_name, or drop the slot",
                     error=SlotPluginMismatch)
    if ex["database"] != facts.database:
        return Check("slot", "error", f"slot {name} belongs to database {ex['database']}",
                     hint="connect to that database, or choose another slot_name",
                     error=SlotError)
    if ex["wal_status"] == "lost":
        return Check("slot", "error",
                     f"slot {name} was invalidated (wal_status = lost): changes are missing",
                     hint="drop it (teardown(conn, slot_name=..., force=True)) and start again "
                     "with a new slot and snapshot", error=SlotError)
    if ex["active"] and ex["active_pid"] != conn.info.backend_pid:
        return Check(
            "slot", "error",
            f"slot {name} is active in another process (pid {ex['active_pid']})",
            hint=f"stop that reader, or end it: SELECT pg_terminate_backend({ex['active_pid']}); "
            "or teardown(conn, slot_name=..., force=True)", error=SlotInUse,
            sqlstate="55006", details={"slot_name": name, "active_pid": ex["active_pid"]})
    if temporary:
        return Check("slot", "warning", f"slot {name} exists (permanent); it is reused as is")
    return Check("slot", "ok", f"slot {name} exists and is free: reused")


def check_wal_senders(facts: ServerFacts) -> Check:
    """Streaming needs a free one of ``max_wal_senders``."""
    return _capacity("wal_senders", "max_wal_senders", facts.max_wal_senders,
                     facts.used_wal_senders, "WAL sender", "WAL senders", "restart the server",
                     NoFreeWalSenders, "53300")


# --------------------------------------------------------------------------- the role, the plugin


def check_replication_right(facts: ServerFacts, params: dict[str, Any]) -> Check:
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


def _plugin_list(setting: str) -> list[str]:
    return [p.strip().strip('"').strip("'") for p in setting.split(",") if p.strip()]


def _plugin_not_allowed(facts: ServerFacts, plugin: str) -> Check:
    current = _plugin_list(facts.output_plugin_libraries or "pgoutput, test_decoding")
    wanted = ", ".join([*current, plugin])
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


def check_plugin(conn: psycopg.Connection[Any], facts: ServerFacts, plugin: str,
                 probe_timeout: float) -> Check:
    """Is ``plugin`` installed and allowed by ``output_plugin_libraries``? Try it, not guess.

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


# --------------------------------------------------------------------------- the tables


def _names(tables: list[TableInfo]) -> str:
    """The first ten tables, quoted, for a message."""
    return ", ".join(t.quoted_name for t in tables[:10])


def check_select(facts: ServerFacts, matched: list[TableInfo]) -> Check:
    """SELECT on every matched table and USAGE on its schema."""
    no_select = [t for t in matched if not t.can_select]
    if no_select:
        names = _names(no_select)
        schemas = sorted({quote_ident(t.schema) for t in no_select})
        return Check("select", "error",
                     f"role {facts.current_user} cannot SELECT {len(no_select)} table(s): "
                     f"{names}" + (" ..." if len(no_select) > 10 else ""),
                     hint=f"GRANT USAGE ON SCHEMA {', '.join(schemas)} TO "
                     f"{facts.current_user}; GRANT SELECT ON {names} TO {facts.current_user};",
                     error=TablePrivilegeMissing, sqlstate="42501")
    return Check("select", "ok", f"SELECT on all {len(matched)} table(s)")


def keyless_tables(matched: list[TableInfo]) -> list[TableInfo]:
    """The tables without a primary key or replica identity."""
    return [t for t in matched if not t.has_replica_identity]


def check_keys(matched: list[TableInfo], keyless: str) -> list[Check]:
    """Tables without a key, and what ``keyless`` (``"error"``, ``"skip"``, ``"full"``) does
    with them; ``"full"`` needs their ownership (ALTER TABLE)."""
    lacking = keyless_tables(matched)
    if not lacking:
        return [Check("replica_identity", "ok", "every table has a key for updates and deletes")]
    names = _names(lacking)
    if keyless == "error":
        lack = ("their updates and deletes would carry no old key (a delete would not say which "
                "row went; an update would not give the old values)")
        return [Check("replica_identity", "error",
                      f"{len(lacking)} table(s) have no primary key or replica "
                      f"identity: {names}; {lack}, and once they are in a publication "
                      "PostgreSQL rejects UPDATE and DELETE on them",
                      hint="add a primary key, or pass keyless='full' to run ALTER TABLE ... "
                      "REPLICA IDENTITY FULL (old rows then carry every column; more WAL), "
                      "or keyless='skip' to leave them out", error=ConfigurationError)]
    if keyless == "skip":
        checks = [Check("replica_identity", "warning",
                        f"left out {len(lacking)} table(s) without a key: {names}")]
        if len(lacking) == len(matched):
            checks.append(Check("tables", "error", "every selected table lacks a key",
                                hint="add primary keys, or use keyless='full'",
                                error=ConfigurationError))
        return checks
    not_owned = [t for t in lacking if not t.is_owner]
    if not_owned:
        return [Check("replica_identity", "error",
                      f"ALTER TABLE ... REPLICA IDENTITY FULL needs ownership of "
                      f"{_names(not_owned)}",
                      hint="run as the tables' owner, or have the owner run the "
                      "statements in plan.sql", error=OwnershipRequired, sqlstate="42501")]
    return [Check("replica_identity", "warning",
                  f"will set REPLICA IDENTITY FULL on {names} (old rows carry every column)")]


# --------------------------------------------------------------------------- the publication


def check_foreign_publication(conn: psycopg.Connection[Any], name: str, state: dict[str, Any],
                              tables: list[TableInfo]) -> Check:
    """A publication the kit did not make is used as it is, if it covers every table."""
    missing = [t for t in tables if not state["all_tables"]
               and t.qualified_name not in state["names"] and t.oid not in state["relids"]]
    if not missing:
        return Check("publication", "ok",
                     f"publication {name} (not managed by the kit) covers every table")
    return Check("publication", "error",
                 f"publication {name} exists, is not managed by the kit, and lacks "
                 f"{_names(missing)}",
                 hint=sql.SQL("ALTER PUBLICATION {} ADD TABLE {};").format(
                     sql.Identifier(name), sql.SQL(", ").join(t.sql_identifier() for t in missing)
                 ).as_string(conn) + " (by its owner), or choose another publication=",
                 error=PublicationMismatch)


def check_publication_rights(facts: ServerFacts, name: str, state: dict[str, Any] | None,
                             tables: list[TableInfo], changes: int) -> list[Check]:
    """Ownership for publication changes: CREATE on the database to create it, its ownership
    to alter it, and ownership of the tables for FOR TABLE (``changes``: its planned steps)."""
    checks: list[Check] = []
    if state is None and not facts.can_create_in_database:
        checks.append(Check(
            "publication_create", "error",
            f"role {facts.current_user} may not create publications in database "
            f"{facts.database} (CREATE PUBLICATION needs CREATE on the database)",
            hint=f"GRANT CREATE ON DATABASE {quote_ident(facts.database)} TO "
            f"{quote_ident(facts.current_user)}; or have an administrator run "
            "the publication statement from plan.sql and pass publication=<its name>",
            error=OwnershipRequired, sqlstate="42501"))
    if state is not None and not state["is_owner"]:
        checks.append(Check(
            "publication_owner", "error",
            f"publication {name} belongs to another role; ALTER PUBLICATION needs "
            "its owner", hint="run as its owner (or a superuser), or choose "
            "another publication=", error=OwnershipRequired, sqlstate="42501"))
    not_owned = [t for t in tables if not t.is_owner]
    needs_tables = state is None or state["relids"] != {t.oid for t in tables}
    if needs_tables and not_owned and not facts.is_superuser:
        checks.append(Check(
            "publication_owner", "error",
            f"{'CREATE' if state is None else 'ALTER'} PUBLICATION ... FOR TABLE needs "
            f"ownership of {_names(not_owned)}" + (" ..." if len(not_owned) > 10 else ""),
            hint="run as the tables' owner or a superuser, or have an administrator run "
            "the publication statement from plan.sql and pass publication=<its name>",
            error=OwnershipRequired, sqlstate="42501"))
    elif not checks:
        checks.append(Check("publication", "ok", f"publication {name}: "
                            + ("up to date" if not changes else f"{changes} change(s)")))
    return checks


# --------------------------------------------------------------------------- grants


def check_grants(facts: ServerFacts, role: str, grantee: dict[str, Any] | None,
                 create_role: bool, need: list[TableInfo], changes: int) -> list[Check]:
    """The role to grant to: it exists (or may be created), can replicate, and the grants of
    SELECT on ``need`` (the tables it cannot read yet) are ours to give."""
    checks: list[Check] = []
    if grantee is None:
        if not create_role:
            return [Check("grants", "error", f"role {role} does not exist",
                          hint="create it, or pass create_role= to let the kit create it",
                          error=ConfigurationError, sqlstate="42704")]
        if not (facts.is_superuser or facts.can_create_role):
            checks.append(Check("grants", "error",
                                f"role {facts.current_user} may not create roles",
                                hint=f"ALTER ROLE {facts.current_user} CREATEROLE; or have an "
                                "administrator create the role", error=OwnershipRequired,
                                sqlstate="42501"))
    else:
        if create_role:
            checks.append(Check("role", "ok", f"role {role} exists; its password and "
                                "attributes are left unchanged"))
        if not grantee["replication"]:
            checks.append(Check("role_replication", "warning",
                                f"role {role} has no REPLICATION attribute: it can read the "
                                "tables but not stream changes",
                                hint=f"ALTER ROLE {role} REPLICATION; (as a superuser)"))
    not_owned = [t for t in need if not t.is_owner]
    if not_owned and not facts.is_superuser:
        checks.append(Check("grants", "error",
                            f"granting SELECT needs ownership (or GRANT OPTION) of "
                            f"{_names(not_owned)}",
                            hint="run as the tables' owner, or have the owner run the GRANT "
                            "from plan.sql", error=OwnershipRequired, sqlstate="42501"))
    if not any(c.name == "grants" for c in checks):
        checks.append(Check("grants", "ok", f"{role}: " + (f"{changes} grant step(s)" if changes
                                                           else "already has what it needs")))
    return checks
