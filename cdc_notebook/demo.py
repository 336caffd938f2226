"""The main job: a throwaway PostgreSQL, wal2arrow loaded, a workload captured, all removed."""

from __future__ import annotations

import sys
import time

from .server import PostgresServer


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(version: int | str | None = None, *, hold: bool = False, rows: int = 10_000) -> int:
    t0 = time.monotonic()
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    server = PostgresServer(version=version)
    _say(f"starting PostgreSQL {server.version} ({server.installation.source}) "
         "with wal_level=logical and wal2arrow ...")
    with server:
        _say(f"  ready in {time.monotonic() - t0:.1f} s: {server!r}")
        if hold:
            _say(f"READY {server.instance_dir} {server.pid}")
            while True:
                time.sleep(0.2)
        with server.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS demo_orders")
            conn.execute("CREATE TABLE demo_orders (id bigint PRIMARY KEY, amount numeric(12,2), "
                          "note text)")
            slot = "cdcnb_demo"
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')", (slot,))
            _say(f"  created slot {slot} with the wal2arrow plugin")
            conn.execute("INSERT INTO demo_orders SELECT g, g / 100.0, 'note ' || g "
                         "FROM generate_series(1, %s) g", (rows,))
            conn.execute("UPDATE demo_orders SET amount = amount + 1 WHERE id % 10 = 0")
            conn.execute("DELETE FROM demo_orders WHERE id % 100 = 0")
            t1 = time.monotonic()
            n_msgs, n_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) "
                "FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL)", (slot,)).fetchone()
            _say(f"  decoded the workload through wal2arrow: {n_msgs} messages, {n_bytes} bytes "
                 f"in {time.monotonic() - t1:.2f} s")
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            _say(f"  dropped slot {slot}")
    _say(f"stopped; server directory removed. total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
