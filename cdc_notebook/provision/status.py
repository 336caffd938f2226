"""Slot lag, retained WAL and the reader's throughput and latency: one object for the widgets.

The server side (:func:`fetch_slot_status`, :func:`fetch_slot_statuses`) comes from one query
over ``pg_replication_slots``; the reader fills the rest (:meth:`SlotStatus.with_reader`).

Lag in bytes is ``current WAL position − confirmed_flush_lsn`` (what the consumer has not yet
acknowledged); retained WAL is ``current − restart_lsn`` (what the server keeps on disk for
this slot). Lag in time is only reported when it can be derived honestly: from the commit
timestamp of the oldest transaction the reader has received but not acknowledged (the reader
supplies it), or 0 when nothing is unacknowledged. The server cannot tell the commit time of
an LSN the client has not seen, so otherwise it is ``None``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cdc_notebook.connection.lsn import parse_lsn_or_none
from cdc_notebook.errors import SlotNotFound
from cdc_notebook.provision.records import KIT_PREFIX, MARKER_PREFIX, parse_marker
from cdc_notebook.units import format_bytes

__all__ = ["KIT_PREFIX", "SlotStatus", "fetch_slot_status", "fetch_slot_statuses"]
_MB = 1024 * 1024
IDLE_RETENTION_ADVICE = 16 * _MB  # one WAL segment: below that an idle slot costs nothing


def _fmt_bytes(n: int | None) -> str:
    """Sizes as everything the kit shows them: IEC units (cdc_notebook.units)."""
    return format_bytes(n)


@dataclass(frozen=True)
class SlotStatus:
    """A slot's state as the server reports it, plus what the reader measured."""

    slot_name: str
    plugin: str | None
    database: str | None
    temporary: bool
    active: bool
    active_pid: int | None
    current_lsn: int  # the server's WAL position (pg_current_wal_lsn)
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    lag_bytes: int | None  # current − confirmed_flush_lsn: not yet acknowledged
    retained_wal_bytes: int | None  # current − restart_lsn: kept on disk for this slot
    wal_status: str | None  # reserved / extended / unreserved / lost
    safe_wal_size: int | None  # bytes writable before the slot risks invalidation
    max_slot_wal_keep_size: int | None  # bytes; None means unbounded (-1)
    server_time: datetime
    inactive_since: datetime | None = None  # PostgreSQL 17+
    invalidation_reason: str | None = None  # PostgreSQL 17+
    conflicting: bool | None = None  # PostgreSQL 16+
    walsender_flush_lag: timedelta | None = None  # pg_stat_replication.flush_lag (active slot)
    # the kit's: recorded on a kit publication of its database (records.py), whatever its name
    kit_managed: bool = False
    # filled by the reader
    oldest_unacked_commit_ts: datetime | None = None
    lag_seconds: float | None = None
    events_per_second: float | None = None
    bytes_per_second: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    held_back_by_table: dict[str, int] = field(default_factory=dict)  # table -> WAL bytes
    spilled_by_table: dict[str, int] = field(default_factory=dict)  # table -> bytes on local disk
    tables: dict[str, int] = field(default_factory=dict)  # the stream's tables: name now -> OID
    watcher_error: str | None = None  # the catalog watcher's current problem, with its fix
    watcher_failures: int = 0  # looks at the catalog that failed (connection down) so far
    advice: tuple[str, ...] = ()

    @property
    def mb_per_second(self) -> float | None:
        """MiB per second (2**20 bytes: the name predates the kit's IEC units)."""
        return None if self.bytes_per_second is None else self.bytes_per_second / _MB

    @property
    def unbounded_retention(self) -> bool:
        return self.max_slot_wal_keep_size is None

    @property
    def invalidated(self) -> bool:
        return self.wal_status == "lost" or self.invalidation_reason is not None

    def with_reader(self, **fields: Any) -> SlotStatus:
        """A copy with the reader's figures (``events_per_second=``, ``latency_p99_ms=``,
        ``held_back_by_table=``, ``oldest_unacked_commit_ts=`` ...); lag in time follows."""
        updated = dataclasses.replace(self, **fields)
        return dataclasses.replace(updated, lag_seconds=_lag_seconds(updated))

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mb_per_second"] = self.mb_per_second
        return out

    @property
    def kind(self) -> str:
        """``"temporary"`` (goes with the connection that uses it) or ``"permanent"`` (stays,
        retaining WAL, until dropped)."""
        return "temporary" if self.temporary else "permanent"

    def summary(self) -> str:
        state = f"active (pid {self.active_pid})" if self.active else "inactive"
        parts = [f"slot {self.slot_name} ({self.kind}): {state}",
                 f"lag {_fmt_bytes(self.lag_bytes)}",
                 f"retained WAL {_fmt_bytes(self.retained_wal_bytes)}",
                 f"wal_status {self.wal_status or 'n/a'}"]
        if self.lag_seconds is not None:
            parts.append(f"lag {self.lag_seconds:.3f} s")
        if self.events_per_second is not None:
            parts.append(f"{self.events_per_second:,.0f} events/s")
        if self.mb_per_second is not None:
            parts.append(f"{self.mb_per_second:.1f} MiB/s")
        if self.latency_p50_ms is not None:
            parts.append(f"latency p50 {self.latency_p50_ms:.2f} ms"
                         + (f" / p99 {self.latency_p99_ms:.2f} ms"
                            if self.latency_p99_ms is not None else ""))
        if self.watcher_error:
            parts.append(f"catalog watcher: {self.watcher_error}")
        if self.spilled_by_table:
            parts.append(f"{_fmt_bytes(sum(self.spilled_by_table.values()))} spilled to disk by "
                         f"unread readers ({', '.join(sorted(self.spilled_by_table))})")
        return ", ".join(parts)


def _lag_seconds(s: SlotStatus) -> float | None:
    if s.oldest_unacked_commit_ts is not None:
        return max(0.0, (s.server_time - s.oldest_unacked_commit_ts).total_seconds())
    if s.lag_bytes == 0:
        return 0.0
    return None


def _advice(s: SlotStatus) -> tuple[str, ...]:
    out = []
    if s.invalidated:
        out.append(
            f"The slot was invalidated ({s.invalidation_reason or 'wal_status = lost'}): the "
            "server removed WAL it had not yet decoded, so changes are missing. Drop the slot, "
            "create a new one and take a fresh snapshot.")
    elif s.wal_status == "unreserved":
        out.append(
            "The slot is about to be invalidated: it holds more WAL than "
            "max_slot_wal_keep_size allows. Read or acknowledge its changes now, or drop it.")
    if s.unbounded_retention:
        out.append(
            "WAL kept for slots is unbounded (max_slot_wal_keep_size = -1): a slot nobody reads "
            "keeps WAL until the disk fills. Bound it in postgresql.conf, e.g. "
            "max_slot_wal_keep_size = '10GB', then SELECT pg_reload_conf();")
    if (not s.active and not s.temporary and not s.invalidated
            and (s.retained_wal_bytes or 0) >= IDLE_RETENTION_ADVICE):
        since = f" since {s.inactive_since:%Y-%m-%d %H:%M:%S %Z}" if s.inactive_since else ""
        out.append(
            f"No process reads this slot{since}; it retains {_fmt_bytes(s.retained_wal_bytes)} "
            "of WAL. Resume the reader, or drop the slot if it is abandoned (teardown()).")
    return tuple(out)


def _slot_query(server_version: int, where: str) -> str:
    extra = []
    extra.append("s.conflicting" if server_version >= 160000 else "NULL::bool")
    if server_version >= 170000:
        extra += ["s.inactive_since", "s.invalidation_reason::text"]
    else:
        extra += ["NULL::timestamptz", "NULL::text"]
    return f"""
SELECT s.slot_name::text, s.plugin::text, s.database::text, s.temporary, s.active,
       s.active_pid, cur.lsn::text, s.confirmed_flush_lsn::text, s.restart_lsn::text,
       pg_wal_lsn_diff(cur.lsn, s.confirmed_flush_lsn)::int8,
       pg_wal_lsn_diff(cur.lsn, s.restart_lsn)::int8,
       s.wal_status, s.safe_wal_size,
       (SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
       now(), {", ".join(extra)}, r.flush_lag,
       s.database = current_database(),
       ARRAY(SELECT obj_description(p.oid, 'pg_publication') FROM pg_publication p
              WHERE obj_description(p.oid, 'pg_publication') LIKE '{MARKER_PREFIX}%%')
  FROM (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                    ELSE pg_current_wal_lsn() END AS lsn) cur
  JOIN pg_replication_slots s ON {where}
  LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
 ORDER BY s.slot_name"""


def _row_to_status(row: Any, kit_slots: set[str] | None) -> SlotStatus:
    (name, plugin, database, temporary, active, active_pid, cur, confirmed, restart, lag,
     retained, wal_status, safe, keep_mb, now, conflicting, inactive_since, reason,
     flush_lag, here, comments) = row
    recorded = set(kit_slots or ())
    if here:  # the kit's publications of this database record the kit's slots
        for comment in comments or ():
            marker = parse_marker(comment)
            recorded.update(marker.get("slots", []) if marker else [])
    status = SlotStatus(
        slot_name=name, plugin=plugin, database=database, temporary=bool(temporary),
        active=bool(active), active_pid=active_pid, current_lsn=parse_lsn_or_none(cur) or 0,
        confirmed_flush_lsn=parse_lsn_or_none(confirmed), restart_lsn=parse_lsn_or_none(restart),
        lag_bytes=None if lag is None else int(lag),
        retained_wal_bytes=None if retained is None else int(retained),
        wal_status=wal_status, safe_wal_size=None if safe is None else int(safe),
        max_slot_wal_keep_size=None if keep_mb is None or keep_mb < 0 else int(keep_mb) * _MB,
        server_time=now, inactive_since=inactive_since, invalidation_reason=reason,
        conflicting=conflicting, walsender_flush_lag=flush_lag,
        kit_managed=name in recorded,
    )
    return dataclasses.replace(status, lag_seconds=_lag_seconds(status), advice=_advice(status))


def fetch_slot_status(conn: Any, slot_name: str, *,
                      oldest_unacked_commit_ts: datetime | None = None) -> SlotStatus:
    """The server's view of one slot, in one query. Raises :class:`SlotNotFound`."""
    query = _slot_query(conn.info.server_version, "s.slot_name = %s")
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    row = conn.execute(query, [slot_name]).fetchone()
    if idle and not conn.autocommit:
        conn.rollback()  # leave no transaction behind that we opened
    if row is None:
        raise SlotNotFound(
            f"replication slot {slot_name!r} does not exist",
            hint="list the slots with list_slots(conn) (it may have been dropped, or was "
            "temporary and vanished with its connection)", sqlstate="42704")
    status = _row_to_status(row, None)
    if oldest_unacked_commit_ts is not None:
        status = status.with_reader(oldest_unacked_commit_ts=oldest_unacked_commit_ts)
    return status


def fetch_slot_statuses(conn: Any, *, kit_slots: set[str] | None = None,
                        all_databases: bool = False) -> list[SlotStatus]:
    """Every logical slot of the current database (or all databases), in one query.
    ``kit_managed`` says which are the kit's (recorded on a kit publication of this database;
    ``kit_slots`` adds names known otherwise)."""
    where = "s.slot_type = 'logical'"
    if not all_databases:
        where += " AND s.database = current_database()"
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    rows = conn.execute(_slot_query(conn.info.server_version, where)).fetchall()
    if idle and not conn.autocommit:
        conn.rollback()
    return [_row_to_status(r, kit_slots) for r in rows]
