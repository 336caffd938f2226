"""Issue 4's performance goals for the wal2arrow plugin, measured side by side in one run.

    python -m bench.plugin_perf                      # PG 18, 1,000,000-insert standard workload,
                                                     # 3 rounds, memory after 1M and 10M rows
    python -m bench.plugin_perf --versions 15,18 --rounds 5 --memory-rows 0   # no memory phase

One throwaway server per version with the harness's settings (``bench.run.BENCH_SETTINGS``).
A template slot is created before the standard workload (``bench/workload.py``, the
document's SQL: N inserts, N/2 updates, N/10 deletes, 1,000 rows per transaction); every
measurement decodes a fresh copy of it (``pg_copy_logical_replication_slot``), so every
consumer decodes the same WAL up to the same end position. In each round the consumers run one
after the other, in an order rotated from round to round:

* ``sql_decode_pgoutput``: pgoutput decoded by ``pg_logical_slot_get_binary_changes`` (rows
  counted in SQL, nothing streamed): **pgoutput's decode-only cost**, the CPU goal's yardstick;
* ``sql_decode_wal2arrow``: the same for wal2arrow (for reference);
* ``recvlogical_pgoutput_{unix,tcp}``: ``pg_recvlogical`` + pgoutput (``proto_version 1``)
  writing to /dev/null: pgoutput streamed to a thin client;
* ``thin_wal2arrow_{unix,tcp}``: the kit's ``bench.clients.Wal2ArrowStream`` reading raw
  frames (``read_frames``: rows counted from each batch frame's header, every commit's end
  LSN acknowledged), in its own process: wal2arrow streamed to a thin client;
* ``decoded_wal2arrow_{unix,tcp}``: the same client decoding every frame into pyarrow
  batches (``read``), for reference;
* ``recvlogical_wal2arrow_{unix,tcp}``: ``pg_recvlogical`` + wal2arrow to /dev/null, for
  reference (the same C client as pgoutput's).

Measured: rows/s (row changes ÷ the consumer's interval: ``pg_recvlogical``'s process wall
time; the Python client's own interval from connecting to the end position, interpreter start
excluded), and the CPU of the server process holding the slot (walsender, or the backend
running the SQL function) per row, from ``/proc/<pid>/stat``. Medians over the rounds.

Small-transaction phase (``--small-txns 20000``): as many single-row transactions (the
workload's insert), decoded by pgoutput (SQL), pgoutput to ``pg_recvlogical`` and wal2arrow to
the thin client over the Unix socket: what a transaction's fixed costs add per row.

Memory phase (``--memory-rows 1000000,10000000``): a second template slot, then the
workload's inserts (1,000 per transaction) up to the largest count, noting the WAL position
after each count; a fresh walsender then streams wal2arrow to the thin client up to each
position, and its peak memory is read from ``/proc/<pid>/status`` (``VmHWM``, and the sampled
peak of ``RssAnon``, its private memory). Goal: peak after 10M ≤ 1.2 × peak after 1M.

Run as root (the server's processes belong to another OS user). Results: a JSON file under
``bench/results/`` and a Markdown summary on standard output. Timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PUBLICATION = "bench_pub"
GOALS = {"cpu_vs_decode_only": 1.0, "tcp_speedup": 2.5, "unix_speedup": 1.3, "memory_growth": 1.2}


def log(msg: str) -> None:
    print(f"[plugin_perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


# --------------------------------------------------------------------------- the thin client


def thin_client(spec: dict[str, Any]) -> dict[str, Any]:
    """Stream a wal2arrow slot to ``spec['end_lsn']`` with the kit's minimal client.

    Runs in its own process (``python -m bench.plugin_perf --client SPEC``). Raw mode counts
    rows from batch frame headers; decoded mode turns every frame into events (pyarrow).
    Acknowledges the end LSN of the last commit received after every read.
    """
    from bench.clients import Wal2ArrowStream
    from cdc_notebook.decode.events import ChangeBatch, Commit
    from cdc_notebook.decode.wal2arrow import frame_header

    end_lsn = spec["end_lsn"]
    rows = frames = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with Wal2ArrowStream(spec["conninfo"]) as stream:
        stream.start(spec["slot"], 0, spec["options"])
        done = False
        while not done:
            ack = 0
            if spec["decoded"]:
                for wal_end, event in stream.read(timeout=1.0):
                    if isinstance(event, ChangeBatch):
                        rows += event.batch.num_rows
                    elif isinstance(event, Commit):
                        ack = event.end_lsn
                    frames += event is not None
                    done = done or wal_end >= end_lsn
            else:
                for wal_end, frame in stream.read_frames(timeout=1.0):
                    if frame is not None:
                        frames += 1
                        kind, fields = frame_header(frame)
                        if kind == "batch":
                            rows += fields[4]
                        elif kind == "commit":
                            ack = fields[2]
                    done = done or wal_end >= end_lsn
            if ack:
                stream.send_feedback(ack)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        # stay connected a moment, so the sampler's last reading of the walsender is final
        time.sleep(spec.get("linger", 0.3))
    return {"rows": rows, "frames": frames, "seconds": seconds, "client_cpu_s": cpu}


# --------------------------------------------------------------------------- measurements


class Bench:
    def __init__(self, server, bindir: Path, work: Path):
        import psycopg

        self.server = server
        self.bindir = bindir
        self.work = work
        self.conn = psycopg.connect(**server.conninfo("unix"), autocommit=True)
        self._names = itertools.count()

    def close(self) -> None:
        self.conn.close()

    def copy_slot(self, template: str, plugin: str) -> str:
        slot = f"pp_{os.getpid()}_{next(self._names)}"
        self.conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, false, %s)",
                          (template, slot, plugin))
        return slot

    def drop_slot(self, slot: str) -> None:
        for _ in range(100):  # the walsender may take a moment to release it
            try:
                self.conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"could not drop slot {slot}")

    def _slot_pid(self, slot: str):
        def find() -> list[int]:
            row = self.conn.execute("SELECT active_pid FROM pg_replication_slots "
                                    "WHERE slot_name = %s", (slot,)).fetchone()
            return [row[0]] if row and row[0] else []
        return find

    def sql_decode(self, template: str, plugin: str, end: int, events: int) -> dict[str, Any]:
        import psycopg

        from bench.procstat import read_proc

        slot = self.copy_slot(template, plugin)
        if plugin == "pgoutput":
            opts = ["proto_version", "1", "publication_names", PUBLICATION]
            count = "count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68))"  # I, U, D
        else:
            opts = ["publication_names", PUBLICATION]
            # a batch frame ('D' = 68) holds its row count at bytes 20..23, little-endian
            count = ("coalesce(sum(get_byte(data, 20) + get_byte(data, 21) * 256 + "
                     "get_byte(data, 22) * 65536 + get_byte(data, 23)::bigint * 16777216) "
                     "FILTER (WHERE get_byte(data, 0) = 68), 0)")
        try:
            with psycopg.connect(**self.server.conninfo("unix"), autocommit=True) as conn:
                pid = conn.info.backend_pid
                cpu0 = read_proc(pid).cpu_s
                t0 = time.perf_counter()
                rows, nbytes = conn.execute(
                    f"SELECT {count}, coalesce(sum(octet_length(data)), 0) FROM "
                    "pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, NULL, "
                    "VARIADIC %s::text[])", (slot, lsn_text(end), opts)).fetchone()
                seconds = time.perf_counter() - t0
                cpu = read_proc(pid).cpu_s - cpu0
        finally:
            self.drop_slot(slot)
        return self._record(int(rows), events, seconds, cpu, bytes=int(nbytes))

    def recvlogical(self, template: str, plugin: str, transport: str, end: int,
                    events: int) -> dict[str, Any]:
        from psycopg.conninfo import make_conninfo

        from bench.procstat import ProcessSampler

        slot = self.copy_slot(template, plugin)
        opts = ({"proto_version": "1", "publication_names": PUBLICATION}
                if plugin == "pgoutput" else {"publication_names": PUBLICATION})
        argv = [str(self.bindir / "pg_recvlogical"), "-d",
                make_conninfo(**self.server.conninfo(transport)), "-S", slot, "--start",
                "--no-loop", "-F", "0", "-f", "-", "-E", lsn_text(end)]
        for key, value in opts.items():
            argv += ["-o", f"{key}={value}"]
        try:
            with ProcessSampler(self._slot_pid(slot)) as sampler:
                t0 = time.perf_counter()
                proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                seconds = time.perf_counter() - t0
                time.sleep(0.1)  # the walsender's last CPU reading
            if proc.returncode != 0:
                raise RuntimeError(f"pg_recvlogical failed: {proc.stderr.decode()[-300:]}")
        finally:
            self.drop_slot(slot)
        # pg_recvlogical does not count rows: the run reached the end position
        return self._record(events, events, seconds, sampler.cpu_s,
                            walsender_hwm_kb=sampler.hwm_kb,
                            walsender_anon_peak_kb=sampler.anon_peak_kb)

    def thin(self, template: str, transport: str, end: int, events: int | None,
             decoded: bool = False) -> dict[str, Any]:
        from bench.procstat import ProcessSampler

        slot = self.copy_slot(template, "wal2arrow")
        spec = {"conninfo": self.server.conninfo(transport), "slot": slot, "end_lsn": end,
                "options": {"publication_names": PUBLICATION}, "decoded": decoded}
        spec_path = self.work / f"{slot}.json"
        spec_path.write_text(json.dumps(spec))
        try:
            with ProcessSampler(self._slot_pid(slot)) as sampler:
                proc = subprocess.run([sys.executable, "-m", "bench.plugin_perf", "--client",
                                       str(spec_path)], capture_output=True, text=True,
                                      cwd=Path(__file__).resolve().parent.parent)
                time.sleep(0.1)
            if proc.returncode != 0:
                raise RuntimeError(f"thin client failed: {proc.stderr[-500:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            spec_path.unlink(missing_ok=True)
            self.drop_slot(slot)
        return self._record(out["rows"], events if events is not None else out["rows"],
                            out["seconds"], sampler.cpu_s, frames=out["frames"],
                            client_cpu_s=out["client_cpu_s"],
                            walsender_hwm_kb=sampler.hwm_kb,
                            walsender_anon_peak_kb=sampler.anon_peak_kb)

    @staticmethod
    def _record(rows: int, events: int, seconds: float, cpu_s: float, **extra: Any
                ) -> dict[str, Any]:
        if int(rows) != events:
            raise RuntimeError(f"delivered {rows} row changes, the workload made {events}")
        return {"rows": int(rows), "seconds": seconds, "rows_per_s": rows / seconds,
                "server_cpu_s": cpu_s, "server_cpu_us_per_row": cpu_s / rows * 1e6, **extra}


CONSUMERS = [
    ("sql_decode_pgoutput", lambda b, t, e, n: b.sql_decode(t, "pgoutput", e, n)),
    ("sql_decode_wal2arrow", lambda b, t, e, n: b.sql_decode(t, "wal2arrow", e, n)),
    ("recvlogical_pgoutput_unix", lambda b, t, e, n: b.recvlogical(t, "pgoutput", "unix", e, n)),
    ("recvlogical_pgoutput_tcp", lambda b, t, e, n: b.recvlogical(t, "pgoutput", "tcp", e, n)),
    ("thin_wal2arrow_unix", lambda b, t, e, n: b.thin(t, "unix", e, n)),
    ("thin_wal2arrow_tcp", lambda b, t, e, n: b.thin(t, "tcp", e, n)),
    ("decoded_wal2arrow_unix", lambda b, t, e, n: b.thin(t, "unix", e, n, decoded=True)),
    ("decoded_wal2arrow_tcp", lambda b, t, e, n: b.thin(t, "tcp", e, n, decoded=True)),
    ("recvlogical_wal2arrow_unix",
     lambda b, t, e, n: b.recvlogical(t, "wal2arrow", "unix", e, n)),
    ("recvlogical_wal2arrow_tcp",
     lambda b, t, e, n: b.recvlogical(t, "wal2arrow", "tcp", e, n)),
]


def memory_phase(bench: Bench, counts: list[int]) -> dict[str, Any]:
    """Walsender peak memory streaming wal2arrow up to each of ``counts`` inserted rows."""
    from bench import workload

    conn = bench.conn
    conn.execute("TRUNCATE bench.orders")
    conn.execute("SELECT pg_create_logical_replication_slot('pp_memory', 'pgoutput')")
    insert = workload._INSERT_SQL
    marks: dict[int, int] = {}
    done = 0
    log(f"memory phase: inserting {max(counts):,} rows")
    for target in sorted(counts):
        while done < target:
            hi = min(done + workload.BATCH, target)
            conn.execute(insert, {"lo": done + 1, "hi": hi})
            done = hi
        marks[target] = workload.flush_and_end_lsn(conn)
    out: dict[str, Any] = {}
    try:
        for target in sorted(counts):
            log(f"memory phase: streaming {target:,} rows")
            rec = bench.thin("pp_memory", "unix", marks[target], target)
            out[str(target)] = rec
            log(f"  {rec['rows_per_s']:,.0f} rows/s, walsender VmHWM "
                f"{rec['walsender_hwm_kb'] / 1024:.1f} MB, RssAnon peak "
                f"{rec['walsender_anon_peak_kb'] / 1024:.1f} MB")
    finally:
        bench.drop_slot("pp_memory")
    return out


def small_transactions_phase(bench: Bench, count: int, rounds: int) -> dict[str, Any]:
    """Per-row server cost when every transaction holds one row (fixed per-batch costs)."""
    from bench import workload

    conn = bench.conn
    conn.execute("SELECT pg_create_logical_replication_slot('pp_small', 'pgoutput')")
    base = 10**11  # ids above the standard workload's
    log(f"small transactions: {count:,} single-row inserts")
    for i in range(count):
        conn.execute(workload._INSERT_SQL, {"lo": base + i, "hi": base + i})
    end = workload.flush_and_end_lsn(conn)
    out: dict[str, list[dict[str, Any]]] = {}
    runs = {
        "sql_decode_pgoutput": lambda: bench.sql_decode("pp_small", "pgoutput", end, count),
        "recvlogical_pgoutput_unix":
            lambda: bench.recvlogical("pp_small", "pgoutput", "unix", end, count),
        "thin_wal2arrow_unix": lambda: bench.thin("pp_small", "unix", end, count),
    }
    try:
        for r in range(rounds):
            for name, run in runs.items():
                rec = run()
                out.setdefault(name, []).append(rec)
                log(f"small transactions round {r + 1} {name}: {rec['rows_per_s']:,.0f} "
                    f"rows/s, server {rec['server_cpu_us_per_row']:.2f} µs/row")
    finally:
        bench.drop_slot("pp_small")
    return {name: {"rows_per_s": statistics.median(x["rows_per_s"] for x in recs),
                   "server_cpu_us_per_row":
                       statistics.median(x["server_cpu_us_per_row"] for x in recs)}
            for name, recs in out.items()}


def run_version(version: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench import workload
    from bench.run import BENCH_SETTINGS
    from cdc_notebook.server.postgres import PostgresServer

    result: dict[str, Any] = {"version": version, "rounds": [], "memory": None}
    with PostgresServer(version=version, settings=BENCH_SETTINGS) as server:
        result["server_version"] = server.version
        bench = Bench(server, server.installation.bindir, work)
        try:
            workload.create_schema(bench.conn)
            bench.conn.execute("SELECT pg_create_logical_replication_slot('pp_template', "
                               "'pgoutput')")
            bench.conn.execute("CHECKPOINT")
            log(f"PostgreSQL {server.version}: standard workload, N = {args.events:,}")
            wl = workload.run_standard(bench.conn, args.events)
            result["workload"] = {"events": wl.events, "wal_bytes": wl.wal_bytes,
                                  "seconds": wl.seconds}
            names = [name for name, _ in CONSUMERS if not args.only or name in args.only]
            run = dict(CONSUMERS)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                rnd: dict[str, Any] = {}
                for name in order:
                    try:
                        rnd[name] = run[name](bench, "pp_template", wl.end_lsn, wl.events)
                        log(f"round {r + 1} {name}: {rnd[name]['rows_per_s']:,.0f} rows/s, "
                            f"server {rnd[name]['server_cpu_us_per_row']:.2f} µs/row")
                    except Exception as exc:
                        rnd[name] = {"error": f"{type(exc).__name__}: {exc}"}
                        log(f"round {r + 1} {name}: FAILED {exc}")
                result["rounds"].append(rnd)
            bench.drop_slot("pp_template")
            if args.small_txns:
                result["small_transactions"] = small_transactions_phase(
                    bench, args.small_txns, args.rounds)
            if args.memory_rows:
                result["memory"] = memory_phase(bench, args.memory_rows)
        finally:
            bench.close()
    result["summary"] = summarize(result)
    return result


def _median(rounds: list[dict[str, Any]], name: str, key: str) -> float | None:
    values = [r[name][key] for r in rounds if name in r and key in r[name]]
    return statistics.median(values) if values else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    rounds = result["rounds"]
    names = sorted({n for r in rounds for n in r})
    table = {n: {"rows_per_s": _median(rounds, n, "rows_per_s"),
                 "server_cpu_us_per_row": _median(rounds, n, "server_cpu_us_per_row")}
             for n in names}
    goals: dict[str, Any] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    decode_only = table.get("sql_decode_pgoutput", {}).get("server_cpu_us_per_row")
    for transport in ("tcp", "unix"):
        thin = table.get(f"thin_wal2arrow_{transport}", {})
        pgo = table.get(f"recvlogical_pgoutput_{transport}", {})
        goals[f"walsender_cpu_{transport}_vs_pgoutput_decode_only"] = {
            "value": ratio(thin.get("server_cpu_us_per_row"), decode_only),
            "goal": f"<= {GOALS['cpu_vs_decode_only']}"}
        key = f"{transport}_speedup"
        goals[f"rows_per_s_{transport}_vs_pgoutput"] = {
            "value": ratio(thin.get("rows_per_s"), pgo.get("rows_per_s")),
            "goal": f">= {GOALS[key]}"}
        # the same ratio round by round (each round's pair ran minutes apart at most)
        goals[f"rows_per_s_{transport}_vs_pgoutput"]["per_round"] = [
            r[f"thin_wal2arrow_{transport}"]["rows_per_s"]
            / r[f"recvlogical_pgoutput_{transport}"]["rows_per_s"]
            for r in rounds
            if "rows_per_s" in r.get(f"thin_wal2arrow_{transport}", {})
            and "rows_per_s" in r.get(f"recvlogical_pgoutput_{transport}", {})]
    mem = result.get("memory")
    if mem and len(mem) >= 2:
        small, large = sorted(mem, key=int)[0], sorted(mem, key=int)[-1]
        for key in ("walsender_hwm_kb", "walsender_anon_peak_kb"):
            goals[f"memory_{key}_{large}_vs_{small}"] = {
                "value": ratio(mem[large][key], mem[small][key]),
                "goal": f"<= {GOALS['memory_growth']}",
                small: mem[small][key], large: mem[large][key]}
    return {"medians": table, "goals": goals}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        s = res["summary"]
        lines += [f"## PostgreSQL {res['server_version']}: {res['workload']['events']:,} row "
                  f"changes, {len(res['rounds'])} rounds (medians)", "",
                  "| consumer | rows/s | server CPU µs/row |", "|---|---:|---:|"]
        for name, m in s["medians"].items():
            rps = f"{m['rows_per_s']:,.0f}" if m["rows_per_s"] else "failed"
            cpu = f"{m['server_cpu_us_per_row']:.2f}" if m["server_cpu_us_per_row"] else "-"
            lines.append(f"| {name} | {rps} | {cpu} |")
        lines += ["", "| goal | measured | target |", "|---|---:|---|"]
        for name, g in s["goals"].items():
            value = f"{g['value']:.2f}" if g["value"] is not None else "n/a"
            extra = ""
            if g.get("per_round"):
                extra = " (rounds: " + ", ".join(f"{v:.2f}" for v in g["per_round"]) + ")"
            lines.append(f"| {name} | {value}{extra} | {g['goal']} |")
        if res.get("small_transactions"):
            lines += ["", "| single-row transactions | rows/s | server CPU µs/row |",
                      "|---|---:|---:|"]
            for name, m in res["small_transactions"].items():
                lines.append(f"| {name} | {m['rows_per_s']:,.0f} | "
                             f"{m['server_cpu_us_per_row']:.2f} |")
        if res.get("memory"):
            lines += ["", "| memory run | rows/s | walsender VmHWM MB | walsender RssAnon peak MB |",
                      "|---|---:|---:|---:|"]
            for count, rec in sorted(res["memory"].items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {int(count):,} rows | {rec['rows_per_s']:,.0f} | "
                             f"{rec['walsender_hwm_kb'] / 1024:.1f} | "
                             f"{rec['walsender_anon_peak_kb'] / 1024:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plugin_perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="18", help="PostgreSQL majors (default 18)")
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="N of the standard workload (default 1,000,000: 1.6M changes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-rows", default="1000000,10000000",
                        help="row counts of the memory phase, comma-separated; 0 skips it")
    parser.add_argument("--small-txns", type=int, default=20_000,
                        help="single-row transactions of the small-transaction phase (0: skip)")
    parser.add_argument("--only", default="", help="consumers to run, comma-separated")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(thin_client(json.loads(Path(args.client).read_text()))), flush=True)
        return 0
    args.memory_rows = [int(x) for x in args.memory_rows.split(",") if int(x) > 0]
    args.only = [x for x in args.only.split(",") if x]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the clients' specs hold the TCP password: a private directory, removed at the end
    with tempfile.TemporaryDirectory(prefix="plugin_perf-") as work:
        results = [run_version(int(v), args, Path(work)) for v in args.versions.split(",")]
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = out_dir / f"plugin_perf-{stamp}.json"
    path.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "client"},
                                "results": results}, indent=1))
    print(markdown(results))
    log(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
