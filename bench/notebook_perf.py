"""The notebook side under load (a benchmark, not a test).

While a kernel's :class:`~cdc_notebook.live.tables.LiveReader` ingests the standard workload
(``bench-workload.md``, written as fast as the server takes it) with the dashboard displayed:

* **cell round trip**: a trivial cell (``1``) sent every 100 ms by a Jupyter client; the time
  from ``execute_request`` to the kernel's ``execute_reply`` (goal: p95 < 200 ms);
* **mirror lag behind the stream**: inside the kernel, every 50 ms the newest commit position
  the stream has received is noted, and the time until ``state(fresh=False)`` of every table
  (what the dashboard reads: no fold forced) is consistent at or past it is measured
  (goal: p95 < 1 s);
* **dashboard messages**: iopub ``comm_msg`` messages per second received by the client
  (goal: < 100/s; Jupyter drops iopub messages above 1,000/s).

    python -m bench.notebook_perf [--rows 1000000]

Prints the figures and writes them to ``bench/results/notebook-perf.json``.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.workload import create_schema, run_standard
from cdc_notebook.server.postgres import PostgresServer

SETTINGS = {"synchronous_commit": "off", "shared_buffers": "512MB", "max_wal_size": "8GB",
            "checkpoint_timeout": "30min", "autovacuum": "off"}

KERNEL_SETUP = """
import threading, time
from cdc_notebook.live.tables import LiveReader
from cdc_notebook.stream.cdc_stream import CDCStream
from cdc_notebook.widgets import explore

stream = CDCStream({conninfo!r}, "bench.*", temporary=True)
reader = LiveReader(stream).start()
dash = explore(reader=reader)
dash.table.set(table="bench.orders", mode="tail", rows=10)
display(dash)

lags = []
_stop_lag = threading.Event()

def _measure_lag():
    pending = []  # (noted at, stream position)
    while not _stop_lag.is_set():
        now = time.monotonic()
        position = reader.stream_position()
        if position and (not pending or position > pending[-1][1]):
            pending.append((now, position))
        tables = list(reader.frames.tables.values())
        if tables:
            consistent = min(t.state(fresh=False).lsn for t in tables)
            done = time.monotonic()
            while pending and pending[0][1] <= consistent:
                lags.append(done - pending.pop(0)[0])
        time.sleep(0.05)

threading.Thread(target=_measure_lag, daemon=True).start()
"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="N of the standard workload (N inserts, N/2 updates, N/10 deletes)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "notebook-perf.json"))
    args = parser.parse_args()

    import jupyter_client

    with PostgresServer(settings=SETTINGS) as server:
        with server.connect() as conn:
            create_schema(conn)
        km = jupyter_client.KernelManager(kernel_name="python3")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        try:
            return _measure(server, kc, args)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)


def _run(kc: Any, code: str, timeout: float = 300) -> str:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(reply["content"])
    return "".join(out)


def _measure(server: PostgresServer, kc: Any, args: argparse.Namespace) -> int:
    _run(kc, KERNEL_SETUP.format(conninfo=server.conninfo()))
    # The client's side: iopub messages counted by type, round trips of a trivial cell.
    comm_times: list[float] = []
    iopub_stop = threading.Event()

    def drain_iopub() -> None:
        while not iopub_stop.is_set():
            try:
                msg = kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["msg_type"] == "comm_msg":
                comm_times.append(time.monotonic())

    drainer = threading.Thread(target=drain_iopub, daemon=True)
    drainer.start()
    workload: dict[str, Any] = {}

    def write() -> None:
        with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
            workload["result"] = run_standard(conn, args.rows)

    writer = threading.Thread(target=write)
    started = time.monotonic()
    writer.start()
    round_trips: list[float] = []
    while writer.is_alive():
        t0 = time.monotonic()
        msg_id = kc.execute("1", silent=False, store_history=False)
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        round_trips.append(time.monotonic() - t0)
        time.sleep(0.1)
    writer.join()
    result = workload["result"]
    workload_end = time.monotonic()
    # One thread per socket: the drainer stops before the next cell reads iopub itself.
    iopub_stop.set()
    drainer.join()
    # Let the reader finish what the workload wrote.
    catch_up_started = time.monotonic()
    _run(kc, "reader.catch_up(timeout=600)", 900)
    ingest_end = time.monotonic()
    figures = json.loads(_run(kc, "import json; _stop_lag.set(); time.sleep(0.1); print(json.dumps("
                              "{'lags': lags, 'rows': {n: t.state().frame.height for n, t in "
                              "reader.frames.tables.items()}, 'received': sum(t.stats."
                              "rows_received for t in reader.frames.tables.values())}))"))
    _run(kc, "dash.stop()")
    seconds = ingest_end - started
    window = [t for t in comm_times if started <= t <= workload_end]
    report = {
        "workload_events": result.events,
        "workload_seconds": round(result.seconds, 2),
        "rows_received_by_frames": figures["received"],
        "ingest_seconds": round(seconds, 2),
        "catch_up_after_workload_seconds": round(ingest_end - catch_up_started, 2),
        "events_per_second": round(figures["received"] / seconds),
        "cell_round_trip_ms": {"n": len(round_trips),
                               "p50": round(percentile(round_trips, 50) * 1000, 1),
                               "p95": round(percentile(round_trips, 95) * 1000, 1),
                               "max": round(max(round_trips) * 1000, 1)},
        "mirror_lag_s": {"n": len(figures["lags"]),
                         "p50": round(percentile(figures["lags"], 50), 3),
                         "p95": round(percentile(figures["lags"], 95), 3),
                         "max": round(max(figures["lags"], default=float("nan")), 3)},
        "dashboard_comm_messages_per_second": round(len(window) / (workload_end - started), 1),
        "dashboard_comm_messages": len(window),
        "goals": {"cell_round_trip_p95_ms": 200, "mirror_lag_p95_s": 1.0,
                  "dashboard_messages_per_second": 100},
    }
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
