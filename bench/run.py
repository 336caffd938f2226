"""``python -m bench``: start throwaway servers, run the workloads, measure every consumer.

One round, per PostgreSQL version (``bench-workload.md``):

1. standard workload: schema and publication; a slot for every streaming consumer; N inserts,
   N/2 updates, N/10 deletes in 1,000-row transactions; flush; end LSN. Then each consumer, one
   after the other, in its own subprocess, reads its slot up to the end LSN;
2. snapshot: the snapshot consumers read ``bench.orders`` (what the workload left);
3. wide rows: the TOAST variant (``workload.run_wide``), slots created before it, as in 1;
4. latency: for each streaming consumer, a fresh slot; the consumer streams while a separate
   writer commits single-row inserts at 1,000/s for 10 s (``synchronous_commit = on``).

Results: ``report.write_reports`` (Markdown, JSON, PNG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report
from .consumers import Consumer, Env, Job, load_all, plugin_options
from .procstat import ProcessSampler
from .workload import (
    LATENCY_ID_BASE,
    create_schema,
    create_wide_schema,
    run_standard,
    run_wide,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# bench-workload.md's settings, plus room for every slot's WAL (never invalidate a slot mid-run)
BENCH_SETTINGS = {
    "wal_level": "logical",
    "fsync": "off",
    "synchronous_commit": "off",
    "shared_buffers": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "timezone": "UTC",
    "max_slot_wal_keep_size": "-1",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
}

WORKLOADS = ("standard", "snapshot", "wide", "latency")
STANDARD_TABLES = ["bench.orders", "bench.customers"]  # bench_pub's tables


@dataclass
class Config:
    events: int = 1_000_000
    wide_rows: int = 100_000
    rounds: int = 3
    versions: list[int] = field(default_factory=lambda: [15, 18])
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    only: list[str] | None = None
    latency_rate: float = 1000.0
    latency_seconds: float = 10.0
    out: Path = RESULTS_DIR
    tag: str = ""
    keep_work: bool = False
    quick: bool = False


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def _work_root() -> Path:
    """Scratch space for output files: tmpfs when there is room (the disk is not measured)."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 << 30:
            return Path(tempfile.mkdtemp(prefix="cdc-bench-", dir=shm))
    except OSError:
        pass
    base = Path(__file__).resolve().parent / "work"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=base))


def _has_library(installation, name: str) -> bool:
    try:
        pkglibdir = subprocess.run([str(installation.pg_config), "--pkglibdir"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(pkglibdir) / f"{name}.so").is_file()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    info["kernel"] = os.uname().release
    return info


# --------------------------------------------------------------------------- measuring a run


class Round:
    """One round on one server: runs consumers and appends records."""

    def __init__(self, server, cfg: Config, env: Env, work: Path, number: int,
                 records: list[dict[str, Any]]):
        self.server = server
        self.cfg = cfg
        self.env = env
        self.work = work
        self.number = number
        self.records = records
        self.admin = server.connect("unix")

    def close(self) -> None:
        self.admin.close()

    # ---- slots

    def slot_name(self, consumer: Consumer, workload: str) -> str:
        return f"b_{workload[:4]}_{consumer.name}"[:63]

    def create_slot(self, name: str, plugin: str) -> None:
        self.admin.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))

    def drop_slot(self, name: str) -> None:
        for _ in range(100):
            row = self.admin.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                (name,)).fetchone()
            if row is None:
                return
            if row[0] is None:
                self.admin.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                return
            self.admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.1)
        raise RuntimeError(f"slot {name} stayed active")

    # ---- jobs

    def job(self, consumer: Consumer, mode: str, workload: str, **kw: Any) -> Job:
        app = f"bench_{self.env.major}_{self.number}_{workload}_{consumer.name}"[:63]
        transport = "unix" if consumer.transport == "server" else consumer.transport
        conninfo = self.server.conninfo(transport)
        conninfo.pop("password", None)
        timeout = 120.0 + kw.get("expected_events", 0) / 5000.0
        return Job(consumer=consumer.name, mode=mode, workload=workload, conninfo=conninfo,
                   transport=consumer.transport, major=self.env.major,
                   bindir=str(self.env.bindir), work_dir=str(self.work),
                   result_path=str(self.work / f"{app}.result.json"), application_name=app,
                   plugin=consumer.plugin, event_cap=consumer.event_cap, timeout_s=timeout,
                   **kw)

    def _spawn(self, consumer: Consumer, job: Job) -> tuple[subprocess.Popen, Path]:
        job_path = self.work / f"{job.application_name}.job.json"
        job_path.write_text(job.to_json())
        Path(job.result_path).unlink(missing_ok=True)
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if job.transport == "tcp":
            env["PGPASSWORD"] = self.server.password
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        logfile = self.work / f"{job.application_name}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(consumer.command(job, job_path), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=str(REPO))
        return proc, logfile

    @staticmethod
    def _wait(proc: subprocess.Popen, timeout: float):
        """wait4 the child (its own rusage: peak RSS, CPU), killing it after ``timeout``."""
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage, killed.is_set()

    def _pid_finder(self, consumer: Consumer, job: Job):
        import psycopg

        conn = psycopg.connect(**self.server.conninfo("unix"), autocommit=True)
        if consumer.kind == "stream":
            query, param = ("SELECT active_pid FROM pg_replication_slots "
                            "WHERE slot_name = %s AND active_pid IS NOT NULL"), job.slot
        else:
            query, param = ("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                            "AND backend_type = 'client backend'"), job.application_name

        def find() -> list[int]:
            return [r[0] for r in conn.execute(query, (param,)).fetchall()]

        return conn, find

    def base_record(self, consumer: Consumer, workload: str) -> dict[str, Any]:
        return {"version": self.env.major, "round": self.number, "workload": workload,
                "consumer": consumer.name, "title": consumer.title, "role": consumer.role,
                "group": consumer.group, "transport": consumer.transport}

    def fail(self, rec: dict[str, Any], reason: str) -> dict[str, Any]:
        rec.update(status="failed", reason=reason)
        self.records.append(rec)
        log(f"  {rec['consumer']}: FAILED: {reason}")
        return rec

    @staticmethod
    def _log_tail(logfile: Path, lines: int = 6) -> str:
        try:
            text = logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def measure(self, consumer: Consumer, job: Job) -> dict[str, Any]:
        """Run one throughput (or snapshot) job and record what it cost."""
        rec = self.base_record(consumer, job.workload)
        want = job.expected_events
        if consumer.event_cap and job.mode != "snapshot":
            want = min(want, consumer.event_cap)
        conn, find = self._pid_finder(consumer, job)
        try:
            t0 = time.perf_counter()
            proc, logfile = self._spawn(consumer, job)
            program = Path(proc.args[0]).name[:15]
            with ProcessSampler(find) as sampler, \
                    ProcessSampler(lambda: [proc.pid]) as client:
                code, usage, killed = self._wait(proc, job.timeout_s)
            wall = time.perf_counter() - t0
        finally:
            conn.close()
        result = consumer.collect(job, code, wall)
        if killed:
            return self.fail(rec, f"killed after {job.timeout_s:.0f} s without finishing")
        if "error" in result or code != 0:
            why = result.get("error") or f"exit code {code}"
            return self.fail(rec, f"{why} {self._log_tail(logfile)}".strip())
        events = int(result.get("events", 0))
        seconds = float(result["seconds"])
        if events != want:
            return self.fail(rec, f"delivered {events} events, expected {want}")
        cpu_total = usage.ru_utime + usage.ru_stime
        cpu = float(result.get("cpu_window_s", cpu_total))
        # peak RSS: the worker's own VmHWM, or the last reading of the program's (a reading
        # taken before exec would show the harness's memory: those are not used)
        rss_kb = result.get("peak_rss_kb")
        last = client.last(proc.pid)
        if rss_kb is None and last is not None and last.comm == program:
            rss_kb = last.hwm_kb
        rec.update(
            status="ok", events=events, seconds=seconds, events_per_s=events / seconds,
            capped=events < job.expected_events, wall_s=wall,
            rss_peak_mb=rss_kb / 1024 if rss_kb else None, cpu_s=cpu, cpu_total_s=cpu_total,
            cpu_s_per_m=cpu / events * 1e6,
            server_cpu_s=sampler.cpu_s, server_cpu_s_per_m=sampler.cpu_s / events * 1e6,
            server_anon_peak_mb=sampler.anon_peak_kb / 1024, server_hwm_mb=sampler.hwm_kb / 1024,
            server_pids=len(sampler.pids), bytes=int(result.get("bytes", 0)),
            verified=result.get("verified", "events counted by the consumer"),
            extra={k: v for k, v in result.items()
                   if k not in ("events", "seconds", "cpu_window_s", "bytes", "verified",
                                "peak_rss_kb")})
        if sampler.error:
            rec["server_sampler_error"] = sampler.error
        if not sampler.pids:
            rec["server_cpu_s"] = rec["server_cpu_s_per_m"] = None
        if rec["bytes"]:
            rec["mb_per_s"] = rec["bytes"] / seconds / 1e6
        self.records.append(rec)
        log(f"  {consumer.name}: {events:,} events in {seconds:.2f} s = "
            f"{rec['events_per_s']:,.0f}/s; RSS {(rss_kb and rss_kb / 1024) or 0:.0f} MB; "
            f"server CPU {sampler.cpu_s:.2f} s")
        return rec

    def measure_latency(self, consumer: Consumer, index: int) -> dict[str, Any]:
        rec = self.base_record(consumer, "latency")
        slot = self.slot_name(consumer, "latency")
        self.create_slot(slot, consumer.plugin)
        job = self.job(consumer, "latency", "latency", slot=slot, publication="bench_pub",
                       tables=STANDARD_TABLES,
                       expected_events=int(self.cfg.latency_rate * self.cfg.latency_seconds))
        try:
            proc, logfile = self._spawn(consumer, job)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                row = self.admin.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,)).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.02)
            if proc.poll() is not None:
                proc.wait()
                result = consumer.collect(job, proc.returncode, 0.0)
                return self.fail(rec, f"exited before streaming: {result.get('error', '')} "
                                      f"{self._log_tail(logfile)}".strip())
            time.sleep(0.5)  # the stream is up: let the first keepalives pass
            driver_job = self.work / f"{job.application_name}.driver.json"
            driver_job.write_text(report.json_dumps({
                "conninfo": self.server.conninfo("unix"), "rate": self.cfg.latency_rate,
                "seconds": self.cfg.latency_seconds,
                "id_base": LATENCY_ID_BASE + index * 10_000_000}))
            drv = subprocess.run([sys.executable, "-m", "bench.latency_driver", str(driver_job)],
                                 capture_output=True, text=True, cwd=str(REPO),
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if drv.returncode != 0:
                proc.kill()
                proc.wait()
                return self.fail(rec, f"latency writer failed: {drv.stderr.strip()[-300:]}")
            driver = report.json_loads(drv.stdout.strip().splitlines()[-1])
            code, _usage, killed = self._wait(proc, 120)
            result = consumer.collect(job, code, 0.0)
            if killed:
                return self.fail(rec, "did not see the stop row within 120 s")
            if "error" in result or code != 0:
                return self.fail(rec, f"{result.get('error') or f'exit code {code}'} "
                                      f"{self._log_tail(logfile)}".strip())
            lat = sorted(result.get("latencies_us", []))
            if len(lat) != driver["rows"]:
                return self.fail(rec, f"received {len(lat)} of {driver['rows']} rows")
            rec.update(status="ok", events=len(lat), latency_p50_ms=_pct(lat, 50) / 1000,
                       latency_p99_ms=_pct(lat, 99) / 1000, latency_max_ms=lat[-1] / 1000,
                       writer_rate=driver["rate"], writer_late_rows=driver["late_rows"])
            self.records.append(rec)
            log(f"  {consumer.name}: latency p50 {rec['latency_p50_ms']:.2f} ms, "
                f"p99 {rec['latency_p99_ms']:.2f} ms ({len(lat)} rows, writer "
                f"{driver['rate']:.0f}/s)")
            return rec
        finally:
            self.drop_slot(slot)

    # ---- the phases

    def streaming_phase(self, workload: str, consumers: list[Consumer]) -> None:
        slots = {c.name: self.slot_name(c, workload) for c in consumers}
        for c in consumers:
            self.create_slot(slots[c.name], c.plugin)
        self.admin.execute("CHECKPOINT")
        if workload == "standard":
            log(f"PG{self.env.major} round {self.number}: standard workload, N={self.cfg.events:,}")
            wl = run_standard(self.admin, self.cfg.events)
            publication, tables = "bench_pub", STANDARD_TABLES
        else:
            log(f"PG{self.env.major} round {self.number}: wide-row workload, "
                f"{self.cfg.wide_rows:,} rows")
            wl = run_wide(self.admin, self.cfg.wide_rows)
            publication, tables = "bench_wide_pub", ["bench.documents"]
        self.records.append({"version": self.env.major, "round": self.number,
                             "workload": workload, "consumer": "_workload", "status": "ok",
                             "events": wl.events, "inserts": wl.inserts, "updates": wl.updates,
                             "deletes": wl.deletes, "seconds": wl.seconds,
                             "wal_bytes": wl.wal_bytes, "end_lsn": wl.end_lsn})
        log(f"  workload: {wl.events:,} row changes, {wl.wal_bytes / 1e6:,.0f} MB of WAL "
            f"in {wl.seconds:.1f} s")
        reference: dict[str, Any] = {}
        for c in rotated(consumers, self.number):
            job = self.job(c, "stream", workload, slot=slots[c.name], publication=publication,
                           tables=tables, end_lsn=wl.end_lsn, expected_events=wl.events,
                           reference=dict(reference))
            try:
                rec = self.measure(c, job)
            finally:
                self.drop_slot(slots[c.name])
            if c.name == "sql_decode_pgoutput" and rec["status"] == "ok":
                reference["recvlogical_file_bytes"] = rec["extra"]["recvlogical_file_bytes"]

    def snapshot_phase(self, consumers: list[Consumer]) -> None:
        table = "bench.orders"
        rows = self.admin.execute("SELECT count(*) FROM bench.orders").fetchone()[0]
        nbytes = 0
        with self.admin.cursor().copy("COPY bench.orders TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                nbytes += len(chunk)
        log(f"PG{self.env.major} round {self.number}: snapshot of {table}, {rows:,} rows, "
            f"{nbytes / 1e6:,.0f} MB as binary COPY")
        for c in consumers:
            job = self.job(c, "snapshot", "snapshot", table=table, expected_events=rows,
                           publication="bench_pub",
                           reference={"copy_binary_bytes": nbytes})
            self.measure(c, job)

    def latency_phase(self, consumers: list[Consumer]) -> None:
        log(f"PG{self.env.major} round {self.number}: latency, "
            f"{self.cfg.latency_rate:,.0f} commits/s for {self.cfg.latency_seconds:g} s")
        for i, c in enumerate(consumers):
            self.measure_latency(c, i)


def rotated(consumers: list[Consumer], number: int) -> list[Consumer]:
    """The streaming consumers in a different order each round (pgoutput's in-server decode
    stays first: its byte count checks the pg_recvlogical outputs of the round). The first
    consumer after the workload meets a server still busy with it: with a fixed order, the
    seed API's consumer, always first, measured 0.66× the drain while spending only 12 % more
    CPU per event. Rotating spreads that over every consumer."""
    first = [c for c in consumers if c.name == "sql_decode_pgoutput"]
    rest = [c for c in consumers if c.name != "sql_decode_pgoutput"]
    if not rest:
        return first
    k = (number - 1) % len(rest)
    return first + rest[k:] + rest[:k]


def _pct(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --------------------------------------------------------------------------- one version


def probe_plugin(server, plugin: str) -> str | None:
    """Why ``plugin`` cannot stand in a benchmark on this server (or None): it must decode a
    committed insert into some output (a skeleton that emits nothing would give fake rates)."""
    import psycopg

    options = plugin_options(plugin, "bench_probe_pub")
    flat = [x for kv in options.items() for x in kv]
    with server.connect("unix") as conn:
        # the SQL interface decodes up to the flushed WAL only: commit the probe synchronously
        conn.execute("SET synchronous_commit = on")
        conn.execute("DROP TABLE IF EXISTS public.bench_probe")
        conn.execute("CREATE TABLE public.bench_probe (id int PRIMARY KEY, note text)")
        conn.execute("DROP PUBLICATION IF EXISTS bench_probe_pub")
        conn.execute("CREATE PUBLICATION bench_probe_pub FOR TABLE public.bench_probe")
        try:
            conn.execute("SELECT pg_create_logical_replication_slot('bench_probe', %s, true)",
                         (plugin,))
            conn.execute("INSERT INTO public.bench_probe VALUES (1, 'probe')")
            _, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(octet_length(data)), 0) FROM "
                "pg_logical_slot_get_binary_changes('bench_probe', NULL, NULL, VARIADIC %s)",
                (flat,)).fetchone()
        except psycopg.Error as exc:
            return f"{plugin} failed to decode a probe insert: {str(exc).strip()[:200]}"
        finally:
            conn.execute("SELECT pg_drop_replication_slot('bench_probe') FROM pg_replication_slots"
                         " WHERE slot_name = 'bench_probe'")
            conn.execute("DROP PUBLICATION IF EXISTS bench_probe_pub")
            conn.execute("DROP TABLE IF EXISTS public.bench_probe")
    if nbytes == 0:
        return (f"not available yet: {plugin} emits nothing for a committed insert (the plugin "
                "does not encode changes yet)")
    return None


def run_version(version: int, cfg: Config, consumers: list[Consumer],
                records: list[dict[str, Any]], versions_info: dict[str, Any]) -> None:
    from cdc_notebook.errors import BinariesNotFound
    from cdc_notebook.server.postgres import PostgresServer, find_installation

    try:
        installation = find_installation(version)
    except BinariesNotFound as exc:  # no binaries for this version: every consumer says so
        for c in consumers:
            records.append({"version": version, "round": 0, "workload": "*",
                            "consumer": c.name, "title": c.title, "role": c.role,
                            "group": c.group, "transport": c.transport,
                            "status": "unavailable", "reason": f"PostgreSQL {version}: {exc}"})
        return
    extra = ["wal2json"] if _has_library(installation, "wal2json") else []
    log(f"starting PostgreSQL {version} ({installation.source})")
    with PostgresServer(version=version, settings=BENCH_SETTINGS,
                        extra_output_plugins=extra) as server:
        plugins, problems = ["pgoutput", *extra], {}
        if server.plugin_dir is not None and any(server.plugin_dir.glob("wal2arrow.*")):
            problem = probe_plugin(server, "wal2arrow")
            if problem:
                problems["wal2arrow"] = problem
            else:
                plugins.append("wal2arrow")
        else:
            problems["wal2arrow"] = "the wal2arrow plugin was not built for this server"
        env = Env(server.major, Path(server.installation.bindir), tuple(plugins), problems)
        versions_info[str(version)] = {"server": server.version,
                                       "source": server.installation.source,
                                       "plugins": plugins}
        runnable: list[Consumer] = []
        for c in consumers:
            reason = c.unavailable(env)
            if reason:
                log(f"  {c.name}: cannot run: {reason}")
                records.append({"version": version, "round": 0, "workload": "*",
                                "consumer": c.name, "title": c.title, "role": c.role,
                                "group": c.group, "transport": c.transport,
                                "status": "unavailable", "reason": reason})
            else:
                runnable.append(c)

        def taking_part(mode: str) -> list[Consumer]:
            return [c for c in runnable if c.supports(mode) is None]

        work = _work_root()
        try:
            for number in range(1, cfg.rounds + 1):
                rnd = Round(server, cfg, env, work, number, records)
                try:
                    create_schema(rnd.admin)
                    if "standard" in cfg.workloads and taking_part("stream"):
                        rnd.streaming_phase("standard", taking_part("stream"))
                    elif "snapshot" in cfg.workloads and taking_part("snapshot"):
                        run_standard(rnd.admin, cfg.events)  # the snapshot needs the table
                    if "snapshot" in cfg.workloads and taking_part("snapshot"):
                        rnd.snapshot_phase(taking_part("snapshot"))
                    if "wide" in cfg.workloads and taking_part("stream"):
                        create_wide_schema(rnd.admin)
                        rnd.streaming_phase("wide", taking_part("stream"))
                    if "latency" in cfg.workloads and taking_part("latency"):
                        rnd.latency_phase(taking_part("latency"))
                finally:
                    rnd.close()
        finally:
            if not cfg.keep_work:
                shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one round, PostgreSQL 15 only (the CI smoke run)")
    p.add_argument("--events", type=int, help="N of the standard workload (default 1,000,000)")
    p.add_argument("--wide-rows", type=int, help="rows of the wide-row variant (default 100,000)")
    p.add_argument("--rounds", type=int, help="rounds per version (default 3)")
    p.add_argument("--versions", help="PostgreSQL major versions, comma-separated (default 15,18)")
    p.add_argument("--only", help="consumers to run, comma-separated (see --list)")
    p.add_argument("--workloads", help=f"phases to run, comma-separated (default "
                                       f"{','.join(WORKLOADS)})")
    p.add_argument("--latency-rate", type=float, help="commits/s of the latency run (1000)")
    p.add_argument("--latency-seconds", type=float, help="length of the latency run (10)")
    p.add_argument("--out", type=Path, help=f"result directory (default {RESULTS_DIR})")
    p.add_argument("--tag", default=None, help="suffix of the result file names")
    p.add_argument("--keep-work", action="store_true", help="keep job files and logs")
    p.add_argument("--list", action="store_true", help="list the consumers and exit")
    a = p.parse_args(argv)
    cfg = Config()
    if a.quick:
        cfg.quick = True
        cfg.events, cfg.wide_rows, cfg.rounds, cfg.versions = 20_000, 2_000, 1, [15]
        cfg.latency_seconds = 2.0
        cfg.tag = "quick"
    if a.events is not None:
        cfg.events = a.events
    if a.wide_rows is not None:
        cfg.wide_rows = a.wide_rows
    if a.rounds is not None:
        cfg.rounds = a.rounds
    if a.versions:
        cfg.versions = [int(v) for v in a.versions.split(",") if v.strip()]
    if a.only:
        cfg.only = [c.strip() for c in a.only.split(",") if c.strip()]
    if a.workloads:
        cfg.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
        unknown = set(cfg.workloads) - set(WORKLOADS)
        if unknown:
            p.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    if a.latency_rate is not None:
        cfg.latency_rate = a.latency_rate
    if a.latency_seconds is not None:
        cfg.latency_seconds = a.latency_seconds
    if a.out is not None:
        cfg.out = a.out
    if a.tag is not None:
        cfg.tag = a.tag
    cfg.keep_work = a.keep_work
    if a.list:
        cfg.only = ["__list__"]
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    registry = load_all()
    if cfg.only == ["__list__"]:
        for c in sorted(registry.values(), key=lambda c: (c.group, c.name)):
            print(f"{c.name:32} ({c.group}) {c.role:9} {c.kind:8} {c.transport:6} {c.title}")
        return 0
    if cfg.only:
        unknown = [n for n in cfg.only if n not in registry]
        if unknown:
            print(f"unknown consumers: {unknown}; see --list", file=sys.stderr)
            return 2
        consumers = [registry[n] for n in cfg.only]
    else:
        consumers = list(registry.values())
    # pgoutput's in-server decode first: its byte count checks the round's pg_recvlogical outputs
    consumers.sort(key=lambda c: (c.name != "sql_decode_pgoutput", c.group, c.name))
    started = dt.datetime.now(dt.timezone.utc)
    records: list[dict[str, Any]] = []
    versions_info: dict[str, Any] = {}
    t0 = time.perf_counter()
    for version in cfg.versions:
        run_version(version, cfg, consumers, records, versions_info)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "config": {"events": cfg.events, "wide_rows": cfg.wide_rows, "rounds": cfg.rounds,
                   "versions": cfg.versions, "workloads": cfg.workloads,
                   "latency_rate": cfg.latency_rate, "latency_seconds": cfg.latency_seconds,
                   "quick": cfg.quick, "only": cfg.only},
        "settings": BENCH_SETTINGS,
        "machine": machine_info(),
        "servers": versions_info,
        "consumers": {c.name: {"title": c.title, "label": c.label, "group": c.group,
                               "role": c.role, "kind": c.kind, "transport": c.transport,
                               "plugin": c.plugin}
                      for c in consumers},
    }
    paths = report.write_reports(meta, records, cfg.out, cfg.tag,
                                 latest=not cfg.quick and cfg.only is None and not cfg.tag)
    for path in paths:
        log(f"wrote {path}")
    return 0
