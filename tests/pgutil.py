"""Small helpers shared by the reader tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql


def drop_slot(server, slot: str, *, dbname: str | None = None, like: bool = False) -> None:
    """Drop a slot (or, with ``like=True``, every slot whose name contains ``slot``) once its
    walsender has gone: it exits just after the stream that used it closes."""
    where = "slot_name LIKE %s" if like else "slot_name = %s"
    arg = f"%{slot}%" if like else slot
    extra = {"dbname": dbname} if dbname else {}
    with server.connect(**extra) as conn:
        deadline = time.monotonic() + 15
        while conn.execute(f"SELECT 1 FROM pg_replication_slots WHERE {where} AND active",
                           (arg,)).fetchone() and time.monotonic() < deadline:
            time.sleep(0.1)
        conn.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     f"WHERE {where}", (arg,))


def create_publication(conn: psycopg.Connection[Any], name: str, tables: Iterable[str]) -> None:
    """CREATE PUBLICATION name FOR TABLE ... (a helper for tests and scripts)."""
    idents = [sql.Identifier(*t.split(".", 1)) for t in tables]
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(name), sql.SQL(", ").join(idents)))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0,
             interval: float = 0.05) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(interval)


def relid_of(conn: Any, name: str) -> int:
    """The OID of the relation ``name`` (as ``regclass`` reads it)."""
    return int(conn.execute("SELECT %s::regclass::oid::int8", (name,)).fetchone()[0])


def read_schemas(reader: Any, rows: int, timeout: float = 60.0) -> tuple[list[Any], int]:
    """A reader's ``RelationSchema`` events, read with ``events()`` until ``rows`` change
    rows have come (or ``timeout``); and how many rows came."""
    schemas: list[Any] = []
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < rows and time.monotonic() < deadline:
        for e in reader.events():
            if type(e).__name__ == "RelationSchema":
                schemas.append(e)
            elif hasattr(e, "num_rows"):
                seen += e.num_rows
    return schemas, seen
