"""Column history: exact column identity for the pgoutput path.

pgoutput's Relation message names a table's columns in attnum order but does not send the
attnums, so after the fact "rename b to c, then add b" and "drop b, add c, add b" look alike
to a reader that is behind (docs/pgoutput.md, "Column identity"). wal2arrow sends attnums; for
pgoutput the kit keeps a history of every table's columns in the database, written by an event
trigger at the end of each DDL command:

* ``_cdc_notebook.column_history(relid, lsn, attnums, names, types)``: one row per table whose
  columns a command changed (and per inheritance child or partition of it), with the WAL insert
  position at the end of that command. A change at LSN ``L`` is decoded with the columns of the
  newest row of its table whose ``lsn <= L``: every column-changing ``ALTER TABLE`` holds the
  table's ACCESS EXCLUSIVE lock until it commits, so no change of the table lies between the
  command and its row, and a rolled-back command's row is rolled back with it.
* The table is ``UNLOGGED``: its rows write no WAL, so no slot or subscriber (a ``FOR ALL
  TABLES`` publication of another tool included) ever sees it. A crash of the server empties
  it; changes before the next DDL of a table then get derived ids, as without a history (a
  row is only ever used for changes at or after its own LSN, so an emptied history is never
  wrong, only silent).
* Set-up (:func:`install`) records every existing table's columns first (the baseline), then
  the slot is created, so every change the slot decodes has a row at or before it.
* The trigger function is ``SECURITY DEFINER`` (any role's DDL records its table), with a fixed
  ``search_path``; the table is readable by every role (what ``pg_attribute`` shows, with its
  past) and writable only by the function's owner. Event triggers need a superuser: without one
  set-up leaves the history out, says so, and pgoutput column identity is derived as before.
* Teardown drops it with the last of the kit's publications in the database
  (:func:`uninstall`).

Not recorded (the decoder then derives the ids as without a history): columns added to typed
tables by ``ALTER TYPE ... CASCADE``, and a DDL command that was already running when the
history was installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from cdc_notebook.connection.lsn import format_lsn

log = logging.getLogger(__name__)

SCHEMA = "_cdc_notebook"
VERSION = 1
COMMENT = f"cdc_notebook column history v{VERSION}"  # + " <system identifier>:<database OID>"
# The history's rows hold OIDs and LSNs of one database of one cluster: a copy elsewhere (a
# restored dump, a template, an upgraded cluster) is not to be trusted, and is made again.
_WHERE = ("(SELECT system_identifier FROM pg_catalog.pg_control_system())::text || ':' || "
          "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())::text")
TRIGGERS = ("_cdc_notebook_columns", "_cdc_notebook_columns_dropped")

__all__ = ["COMMENT", "SCHEMA", "TRIGGERS", "VERSION", "column_ids", "install", "install_sql",
           "state", "uninstall", "uninstall_sql"]

_RECORD = """
INSERT INTO _cdc_notebook.column_history (relid, lsn, attnums, names, types)
SELECT c.oid, pg_catalog.pg_current_wal_insert_lsn(), cols.attnums, cols.names, cols.types
FROM {source} t
JOIN pg_catalog.pg_class c ON c.oid = t.oid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
    AND c.relnamespace IS DISTINCT FROM (SELECT n.oid FROM pg_catalog.pg_namespace n
                                         WHERE n.nspname = '_cdc_notebook')
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(a.attnum ORDER BY a.attnum), '{{}}') AS attnums,
           coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{{}}') AS names,
           coalesce(array_agg(a.atttypid ORDER BY a.attnum), '{{}}') AS types
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) cols
WHERE NOT EXISTS (
    SELECT 1 FROM (SELECT h.attnums, h.names, h.types FROM _cdc_notebook.column_history h
                   WHERE h.relid = c.oid ORDER BY h.lsn DESC, h.id DESC LIMIT 1) last
    WHERE last.attnums = cols.attnums AND last.names = cols.names AND last.types = cols.types)
"""

_TREE = """(WITH RECURSIVE tree(oid) AS (
          SELECT unnest(rels)
          UNION
          SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
      SELECT DISTINCT oid FROM tree)"""

_BASELINE = """(SELECT c.oid FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%')"""


def install_sql() -> str:
    """The SQL :func:`install` runs (as one transaction), for an administrator to run."""
    record = _RECORD.format(source=_TREE)
    baseline = _RECORD.format(source=_BASELINE)
    return f"""CREATE SCHEMA {SCHEMA};
DO $c$ BEGIN
    EXECUTE pg_catalog.format('COMMENT ON SCHEMA {SCHEMA} IS %L', '{COMMENT} ' || {_WHERE});
END $c$;
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;
GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC;
CREATE UNLOGGED TABLE {SCHEMA}.column_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid oid NOT NULL,
    lsn pg_lsn NOT NULL,
    attnums int2[] NOT NULL,
    names text[] NOT NULL,
    types oid[] NOT NULL,
    recorded timestamptz NOT NULL DEFAULT now());
CREATE INDEX column_history_relid_lsn ON {SCHEMA}.column_history (relid, lsn);
REVOKE ALL ON {SCHEMA}.column_history FROM PUBLIC;
GRANT SELECT ON {SCHEMA}.column_history TO PUBLIC;
CREATE FUNCTION {SCHEMA}.record_columns() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    rels oid[];
BEGIN
    IF tg_event = 'sql_drop' THEN
        -- columns dropped by a command on another object (DROP TYPE ... CASCADE)
        SELECT array_agg(DISTINCT d.objid) INTO rels FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.object_type = 'table column';
    ELSE
        SELECT array_agg(DISTINCT d.objid) INTO rels FROM pg_catalog.pg_event_trigger_ddl_commands() d
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass;
    END IF;
    IF rels IS NULL OR pg_catalog.to_regclass('_cdc_notebook.column_history') IS NULL THEN
        RETURN;  -- nothing of a table; or the table was dropped by hand: never fail the DDL
    END IF;
{_indent(record, 4)};
END
$fn$;
REVOKE ALL ON FUNCTION {SCHEMA}.record_columns() FROM PUBLIC;
CREATE EVENT TRIGGER {TRIGGERS[0]} ON ddl_command_end
    EXECUTE FUNCTION {SCHEMA}.record_columns();
CREATE EVENT TRIGGER {TRIGGERS[1]} ON sql_drop
    EXECUTE FUNCTION {SCHEMA}.record_columns();
ALTER EVENT TRIGGER {TRIGGERS[0]} ENABLE ALWAYS;
ALTER EVENT TRIGGER {TRIGGERS[1]} ENABLE ALWAYS;
-- the baseline: every table's columns as they are now
{baseline.strip()};"""


def uninstall_sql() -> str:
    """The SQL :func:`uninstall` runs (the event triggers go with the function)."""
    return f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;"


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.strip().splitlines())


def state(conn: psycopg.Connection[Any]) -> str:
    """``"installed"`` (this version, made in this database of this cluster, both triggers
    enabled), ``"absent"``, ``"foreign"`` (a schema of that name the kit did not make),
    ``"outdated"`` (another version of the kit's, or a copy: a restored dump, a template, an
    upgraded cluster) or ``"disabled"`` (a trigger missing or disabled)."""
    row = conn.execute(
        "SELECT pg_catalog.obj_description(n.oid, 'pg_namespace'), " + _WHERE +
        " FROM pg_catalog.pg_namespace n WHERE n.nspname = %s", (SCHEMA,)).fetchone()
    if row is None:
        return "absent"
    comment, where = row[0] or "", row[1]
    if not comment.startswith("cdc_notebook column history"):
        return "foreign"
    if comment != f"{COMMENT} {where}":  # another version, or a copy from elsewhere
        return "outdated"
    enabled = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s) "
        "AND evtenabled <> 'D'", (list(TRIGGERS),)).fetchone()
    return "installed" if enabled and enabled[0] == len(TRIGGERS) else "disabled"


def install(conn: psycopg.Connection[Any]) -> bool:
    """Install the history (a superuser's right: event triggers), in one transaction.
    Returns False when it was there already. Raises psycopg errors as they come."""
    now = state(conn)
    if now == "installed":
        return False
    if now == "foreign":
        raise psycopg.errors.DuplicateSchema(
            f"schema {SCHEMA} exists and is not the kit's column history: not replaced")
    with conn.transaction():
        if now != "absent":  # another version, or a trigger disabled: made again
            conn.execute(uninstall_sql())
        conn.execute(install_sql())
    return True


def uninstall(conn: psycopg.Connection[Any]) -> bool:
    """Drop the history (the schema, the function, both event triggers). False if absent or
    not the kit's."""
    if state(conn) in ("absent", "foreign"):
        return False
    with conn.transaction():
        conn.execute(uninstall_sql())
    return True


_LOOKUP = f"""
SELECT attnums, names, types FROM {SCHEMA}.column_history
WHERE relid = %s AND lsn <= %s::pg_catalog.pg_lsn
ORDER BY lsn DESC, id DESC LIMIT 1
"""


def column_ids(conn: psycopg.Connection[Any], relid: int, lsn: int,
               columns: Sequence[tuple[str, int]]) -> tuple[int, ...] | None:
    """The attnums of a pgoutput Relation message's ``columns`` (``(name, type OID)`` in the
    message's order) for a change at ``lsn``, from the history; None when the history has no
    row for the table at or before ``lsn`` or its row does not match the message (the caller
    derives the ids then)."""
    if lsn <= 0:
        return None
    row = conn.execute(_LOOKUP, (relid, format_lsn(lsn))).fetchone()
    if row is None:
        return None
    attnums, names, types = row
    where = {name: i for i, name in enumerate(names)}
    ids: list[int] = []
    for name, typ in columns:
        i = where.get(name)
        if i is None or int(types[i]) != int(typ) or (ids and int(attnums[i]) <= ids[-1]):
            return None
        ids.append(int(attnums[i]))
    return tuple(ids)
