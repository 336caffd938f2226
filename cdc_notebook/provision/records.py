"""How the kit recognises what it created, and keeps clean-up away from a set-up in progress.

* A kit publication carries a ``COMMENT`` marker (:func:`make_marker`, :func:`parse_marker`):
  ``cdc_notebook {"managed": true, "slots": [...], "temporary": [...], ...}``. It is the
  kit's record of its slots too: a slot is the kit's when a kit publication of its database
  lists it (:func:`recorded_slots`), never because of its name (another tool may name a slot
  ``cdcnb_...`` as well). ``temporary`` lists the slots among ``slots`` that were temporary:
  a publication all of whose slots were temporary was made for streams that leave nothing
  behind, and goes when its last slot goes (:func:`is_orphaned`).
* A kit role carries :data:`ROLE_MARKER`.
* :func:`kit_lock`: set-up holds a shared advisory lock of the database from before it writes a
  publication's marker until the slot that marker names exists; clean-up of what looks orphaned
  takes it exclusively, so it never drops a publication whose slot is being created.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

log = logging.getLogger(__name__)

KIT_PREFIX = "cdcnb_"  # the names the kit makes up start with it; it proves nothing
MARKER_PREFIX = "cdc_notebook "
ROLE_MARKER = "cdc_notebook managed role"
# pg_advisory_lock(bigint) key of the kit's set-up/clean-up lock (per database): "cdnb" 1
KIT_LOCK_KEY = (0x63646E62 << 32) | 1

__all__ = ["KIT_LOCK_KEY", "KIT_PREFIX", "MARKER_PREFIX", "ROLE_MARKER", "is_orphaned",
           "kit_lock", "kit_publications", "make_marker", "marker_slots", "parse_marker",
           "recorded_slots"]


def make_marker(slots: Iterable[str], replica_identity: dict[str, Any] | None = None,
                temporary: Iterable[str] = ()) -> str:
    """The comment that marks a publication as the kit's and records its slots (those of them
    that are temporary in ``temporary``), and the replica identity of each table set-up
    changed to FULL before (``{"<oid>": {"table": [schema, name], "was": "d" | "n"}}``), so
    teardown can restore it."""
    names = sorted(set(slots))
    data: dict[str, Any] = {"managed": True, "slots": names}
    temp = sorted(set(temporary) & set(names))
    if temp:
        data["temporary"] = temp
    if replica_identity:
        data["replica_identity"] = replica_identity
    return MARKER_PREFIX + json.dumps(data)


def parse_marker(comment: str | None) -> dict[str, Any] | None:
    """The kit's marker in a publication comment, or None when the kit did not create it."""
    if not comment or not comment.startswith(MARKER_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARKER_PREFIX):])
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("managed") is not True:
        return None
    for key in ("slots", "temporary"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            data[key] = []
    return data


def marker_slots(marker: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The slots a marker records, and those of them that were temporary."""
    slots = set(marker.get("slots") or [])
    return slots, set(marker.get("temporary") or []) & slots


def kit_publications(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Publications of the current database that carry the kit's marker, with it."""
    rows = conn.execute(
        "SELECT pubname::text, obj_description(oid, 'pg_publication') FROM pg_publication"
    ).fetchall()
    out = {}
    for name, comment in rows:
        marker = parse_marker(comment)
        if marker is not None:
            out[name] = marker
    return out


def recorded_slots(publications: dict[str, dict[str, Any]]) -> set[str]:
    """Every slot the kit's publications record: the kit's slots (of this database)."""
    return {s for marker in publications.values() for s in marker_slots(marker)[0]}


def is_orphaned(marker: dict[str, Any], existing: set[str], *,
                temporary_only: bool = False) -> bool:
    """A kit publication none of whose recorded slots exists any more (one that records no
    slot was made on purpose without one: never orphaned). ``temporary_only``: and every
    slot it recorded was temporary (made for streams that leave nothing behind)."""
    slots, temporary = marker_slots(marker)
    if not slots or slots & existing:
        return False
    return not temporary_only or temporary == slots


def _run_quietly(conn: psycopg.Connection[Any], query: str) -> Any:
    """``query`` (an advisory lock function) without leaving a transaction the caller did not
    have: one opened here is committed; the caller's own is left as it is."""
    from psycopg.pq import TransactionStatus

    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        conn.rollback()
        status = TransactionStatus.IDLE
    row = conn.execute(query, [KIT_LOCK_KEY]).fetchone()
    if status == TransactionStatus.IDLE and not conn.autocommit:
        conn.commit()
    return row[0] if row else None


@contextmanager
def kit_lock(conn: psycopg.Connection[Any], *, shared: bool,
             wait: float = 0.0) -> Iterator[bool]:
    """The kit's advisory lock of this database (session level), tried for up to ``wait``
    seconds; yields whether it was taken (and lets it go at the end). Set-up takes it shared,
    clean-up of what looks orphaned exclusively."""
    suffix = "_shared" if shared else ""
    taken = False
    deadline = time.monotonic() + wait
    try:
        while not (taken := bool(_run_quietly(
                conn, f"SELECT pg_try_advisory_lock{suffix}(%s::int8)"))):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    except psycopg.Error as exc:
        log.debug("kit lock not taken: %s", exc)
    try:
        yield taken
    finally:
        if taken and not conn.closed and not conn.broken:
            try:
                _run_quietly(conn, f"SELECT pg_advisory_unlock{suffix}(%s::int8)")
            except psycopg.Error as exc:  # the session's end lets it go anyway
                log.debug("kit lock not released: %s", exc)
