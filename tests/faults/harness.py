"""One fault, end to end: writer, consumer process, the fault, recovery, drain, comparison.

    result = run_fault(server, "wal2arrow", "crash_immediate", changes=20_000, workdir=tmp)
    assert result.ok, result.explain()

1. ``faults.data`` is created; a fault proxy (``tests/faults/proxy.py``) listens in front of the
   server and the consumer process (``tests/faults/consumer.py``) connects through it over TCP
   (``CDCStream`` on a permanent slot, the plugin asked for), logging every delivered change.
2. The writer (``tests/faults/workload.py``, a thread on its own Unix-socket connection) writes
   ``changes`` changes at ``rate`` per second. The consumer sleeps ``batch_delay`` per batch and
   has a small ``memory_limit`` (a 1 MB queue), so it falls behind and the stream is in
   backpressure when, 40 % of the changes committed, the fault is injected; it stays slow
   ``slow_after_fault`` seconds more, then runs at full speed.
3. The stream recovers by itself (the consumer is not restarted; except after SIGKILL, where a
   new consumer process resumes on the slot from its own log's high-water mark).
4. When the writer is done, the consumer drains to the server's WAL position then
   (``reader.batches()`` without ``follow``) and exits. A consumer that died of an error is
   noted and then (except for the slot-invalidation fault) restarted once to drain, so the report
   tells "the stream died" apart from "changes are gone from the slot".
5. The delivered log is compared with the writer's log (``tests/faults/check.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.check import Comparison, compare
from tests.faults.proxy import FaultProxy
from tests.faults.records import read_records
from tests.faults.workload import SCHEMA, SETUP_SQL, TABLE, Writer, fill_wal

REPO = Path(__file__).resolve().parents[2]
PLUGINS = ("wal2arrow", "pgoutput")


class HarnessError(RuntimeError):
    """The harness could not run the fault as designed (not a verdict on the product)."""


class EnvironmentUnavailable(HarnessError):
    """This machine cannot set the fault up (e.g. no right to mount a small filesystem)."""


@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    #: "clean": 0 lost, 0 duplicated, in order, the stream recovers by itself;
    #: "invalidated": the documented clear error, nothing duplicated, no hole before it.
    expect: str = "clean"
    server_settings: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, str]:
        """The server's settings for this fault (what the server log says is kept at LOG
        level: a backend that crashes, a walsender that times out)."""
        return {"log_min_messages": "log", **self.server_settings}


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("restart_fast", "server fast restart (pg_ctl restart -m fast)"),
    Fault("crash_immediate", "immediate crash (pg_ctl restart -m immediate)"),
    Fault("walsender_killed", "walsender terminated (pg_terminate_backend of active_pid)"),
    Fault("network_cut", "network cut: every connection reset, new ones refused for 2 s"),
    Fault("network_stall", "network stall: nothing forwarded for 8 s (wal_sender_timeout 5 s)",
          server_settings={"wal_sender_timeout": "5s"}),
    Fault("consumer_sigkill", "consumer SIGKILL, a new process resumes on the slot"),
    Fault("slot_invalidated", "slot invalidated (max_slot_wal_keep_size 16MB, consumer stalled)",
          expect="invalidated"),
    Fault("spill_full", "spill directory full (256 kB tmpfs, reader not iterated)"),
]}

# What a clear error for an invalidated slot must name (issue 13, "Errors with the fix").
INVALIDATION_WORDS = ("wal_status", "lost", "max_slot_wal_keep_size")


@dataclass
class Result:
    fault: str
    plugin: str
    pg: str
    changes_target: int
    comparison: Comparison | None = None
    reconnects: int = 0
    #: fault → the stream (re)connected and received WAL past the server's position at the fault
    recovery_s: float | None = None
    consumer_error: str | None = None     # the first consumer's error, if it died of one
    consumer_restarted: bool = False      # restarted once to drain after an error
    drain_timed_out: bool = False
    elapsed_s: float = 0.0
    writer_reconnects: int = 0
    writer_ambiguous: int = 0
    writer_aborted: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def explain(self) -> str:
        c = self.comparison
        lines = [f"{self.fault} / {self.plugin} / PostgreSQL {self.pg}: "
                 + ("OK" if self.ok else "FAILED")]
        lines += [f"  problem: {p}" for p in self.problems]
        if c is not None:
            lines.append(f"  written {c.written}, delivered {c.delivered} ({c.distinct} distinct), "
                         f"lost {c.lost} (before the end: {c.lost_before_end}), duplicated "
                         f"{c.duplicated}, out of order {c.out_of_order} "
                         f"({c.keys_out_of_order} rows), phantom {c.phantom}, mismatched "
                         f"{c.mismatched}; first lost seqs {c.first_lost_seqs}, first duplicated "
                         f"{c.first_duplicated_seqs}")
        rec = None if self.recovery_s is None else round(self.recovery_s, 2)
        lines.append(f"  recovery {rec} s, reconnects {self.reconnects}, consumer error "
                     f"{self.consumer_error!r}, restarted {self.consumer_restarted}, elapsed {self.elapsed_s:.1f} s")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """A result as ``as_dict()`` wrote it (``--json``)."""
        d = {k: v for k, v in d.items() if k != "ok"}
        if d.get("comparison") is not None:
            d["comparison"] = Comparison(**d["comparison"])
        return cls(**d)


class _ConsumerProc:
    def __init__(self, run: FaultRun, index: int):
        self.index = index
        self.status_path = run.workdir / f"status-{index}.json"
        self.log_path = run.workdir / f"consumer-{index}.log"
        cfg = {**run.consumer_cfg, "status": str(self.status_path)}
        env = {**os.environ, "PYTHONPATH": str(REPO), **run.consumer_env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.consumer", json.dumps(cfg)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)

    def status(self) -> dict[str, Any]:
        try:
            with open(self.status_path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


class FaultRun:
    """The state of one fault run; ``run()`` does it all (see the module's docstring)."""

    def __init__(self, server: Any, plugin: str, fault: Fault, *, changes: int,
                 workdir: str | Path, rate: float | None, seed: int = 1,
                 fault_at: float = 0.4, batch_delay: float = 0.1,
                 memory_limit: int = 4 << 20, slow_after_fault: float = 1.5,
                 say: Callable[[str], None] | None = None):
        self.server = server
        self.plugin = plugin
        self.fault = fault
        self.changes = changes
        self.workdir = Path(workdir)
        self.rate = rate
        self.seed = seed
        self.fault_at = fault_at
        self.batch_delay = batch_delay
        self.memory_limit = memory_limit
        self.slow_after_fault = slow_after_fault
        self._mode = "run"
        self.say = say or (lambda _msg: None)
        self.result = Result(fault.name, plugin, server.version, changes)
        self.slot = f"faults_{plugin}_{fault.name}"[:63]
        self.proxy: FaultProxy | None = None
        self.consumers: list[_ConsumerProc] = []
        self.writer: Writer | None = None
        self.consumer_cfg: dict[str, Any] = {}
        self.consumer_env: dict[str, str] = {}
        self._mounted: list[Path] = []
        self.t_fault: float | None = None
        self.seq_at_fault: int | None = None
        self._recovery_watch: threading.Thread | None = None
        self._stop_watch = threading.Event()
        # a stuck stage fails the run instead of hanging it
        self.stage_timeout = 120.0 + changes / 2_000

    # ---- helpers

    def control(self, mode: str) -> None:
        self._mode = mode
        path = Path(self.consumer_cfg["control"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode, "time": time.time()}))
        os.replace(tmp, path)

    @property
    def consumer(self) -> _ConsumerProc:
        return self.consumers[-1]

    def start_consumer(self) -> _ConsumerProc:
        proc = _ConsumerProc(self, len(self.consumers))
        self.consumers.append(proc)
        self.wait(lambda: proc.status().get("state") not in (None, "starting") or not proc.alive(),
                  "the consumer to set up its stream", timeout=60)
        return proc

    def wait(self, cond: Callable[[], Any], what: str, timeout: float | None = None, *,
             consumer_must_live: bool = False) -> Any:
        deadline = time.monotonic() + (timeout or self.stage_timeout)
        while True:
            value = cond()
            if value:
                return value
            if consumer_must_live and not self.consumer.alive():
                raise HarnessError(f"the consumer died while waiting for {what}: "
                                   f"{self.consumer.status().get('error')}\n"
                                   + self.consumer.log_tail())
            if self.writer is not None and self.writer.error is not None:
                raise HarnessError(f"the writer failed: {self.writer.error!r}")
            if time.monotonic() > deadline:
                raise HarnessError(f"timed out waiting for {what}; consumer log:\n"
                                   + (self.consumer.log_tail() if self.consumers else ""))
            time.sleep(0.05)

    def direct(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.server.conninfo("unix"), autocommit=True, **kw)

    def _query_retry(self, sql: str, args: tuple = (), timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.direct(connect_timeout=5) as conn:
                    return conn.execute(sql, args).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def slot_row(self) -> dict[str, Any] | None:
        rows = self._query_retry(
            "SELECT active_pid, wal_status, confirmed_flush_lsn::text, restart_lsn::text "
            "FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        if not rows:
            return None
        pid, wal_status, flush, restart = rows[0]
        return {"active_pid": pid, "wal_status": wal_status, "confirmed_flush_lsn": flush,
                "restart_lsn": restart}

    # ---- the run

    def run(self) -> Result:
        started = time.monotonic()
        try:
            self._run()
        except HarnessError as exc:
            self.result.problems.append(f"harness: {exc}")
            if isinstance(exc, EnvironmentUnavailable):
                raise
        finally:
            self._cleanup()
            self.result.elapsed_s = time.monotonic() - started
        return self.result

    def _run(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.direct() as conn:
            conn.execute(SETUP_SQL)
        self.proxy = FaultProxy(("127.0.0.1", self.server.port)).start()
        self.consumer_cfg = {
            "conninfo": self.server.conninfo("tcp", port=self.proxy.port),
            "table": TABLE, "slot": self.slot, "plugin": self.plugin,
            "out": str(self.workdir / "delivered.bin"), "control": str(self.workdir / "control.json"),
            "memory_limit": self.memory_limit, "fsync": True, "batch_delay": self.batch_delay,
        }
        prepare = getattr(self, f"prepare_{self.fault.name}", None)
        if prepare is not None:
            prepare()
        self.control("slow" if self.batch_delay else "run")
        self.say(f"{self.fault.name}/{self.plugin}: consumer starting")
        consumer = self.start_consumer()
        if consumer.status().get("state") == "failed" or not consumer.alive():
            raise HarnessError(f"the consumer could not start: {consumer.status().get('error')}"
                               f"\n{consumer.log_tail()}\nproxy errors: {self.proxy.errors}"
                               f"\nserver log:\n{self.server.log_tail(10)}")
        self.writer = Writer(self.server.conninfo("unix"), self.changes, rate=self.rate,
                             seed=self.seed)
        self.writer.start()
        self.wait(lambda: (self.writer.committed >= self.fault_at * self.changes
                           and self.consumer.status().get("rows", 0) > 0),
                  "the writer to reach the fault point and the consumer to deliver",
                  consumer_must_live=True)
        self.say(f"{self.fault.name}/{self.plugin}: injecting at {self.writer.committed} committed")
        getattr(self, f"inject_{self.fault.name}")()
        if self.t_fault is None:
            raise HarnessError(f"inject_{self.fault.name} did not mark the fault")
        # The consumer stays slow a moment longer (the stream in backpressure, status updates
        # going out on a connection that may be dead), then runs at full speed.
        if self.batch_delay and self._mode == "slow":
            time.sleep(self.slow_after_fault)
        self.control("run")
        self.wait(lambda: not self.writer.is_alive(), "the writer to finish")
        if self.writer.error is not None:
            raise HarnessError(f"the writer failed: {self.writer.error!r}")
        self.say(f"{self.fault.name}/{self.plugin}: writer done, draining")
        self._drain()
        self._compare()

    def mark_fault(self, lsn: int | None = None, *, watch: bool = True) -> None:
        """The fault happens now: remember when, the writer's newest committed change, and the
        server's WAL position (``lsn``, if the caller measured it just before a fault that
        takes the server down), then watch the consumer for the stream's recovery."""
        if lsn is None:
            lsn = self.current_lsn()
        self.t_fault = time.time()
        self.seq_at_fault = self.writer.max_seq if self.writer is not None else 0
        before = self.consumer.status()
        pid, reconnects = before.get("pid"), int(before.get("reconnects") or 0)
        if not watch:
            return

        def watch() -> None:
            while not self._stop_watch.wait(0.02):
                st = self.consumer.status()
                if not st:
                    continue
                moved = st.get("pid") != pid or int(st.get("reconnects") or 0) > reconnects
                if moved and int(st.get("received_lsn") or 0) > lsn:
                    self.result.recovery_s = time.time() - self.t_fault  # type: ignore[operator]
                    return

        self._recovery_watch = threading.Thread(target=watch, daemon=True, name="recovery-watch")
        self._recovery_watch.start()

    def current_lsn(self) -> int:
        text = self._query_retry("SELECT pg_current_wal_lsn()::text")[0][0]
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) | int(lo, 16)

    def _drain(self) -> None:
        consumer = self.consumer
        if consumer.alive():
            self.control("drain")
            deadline = time.monotonic() + self.stage_timeout
            while consumer.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if consumer.alive():
                self.result.drain_timed_out = True
                st = consumer.status()
                self.result.problems.append(
                    f"the consumer did not drain within {self.stage_timeout:.0f} s (state "
                    f"{st.get('state')}, reconnects {st.get('reconnects')}, router failed "
                    f"{st.get('router_failed')})")
                consumer.kill()
        rc = consumer.proc.wait()
        status = consumer.status()
        if rc != 0:
            self.result.consumer_error = status.get("error") or f"exit code {rc}: " + (
                consumer.log_tail(5))
            if self.fault.expect == "clean":
                # Restart once to drain: does the slot still hold what the dead stream had not
                # delivered? (The verdict stays failed: the stream did not recover by itself,
                # and this restart is no recovery: stop watching for one.)
                self._stop_watch.set()
                self.result.consumer_restarted = True
                self.control("drain")
                again = _ConsumerProc(self, len(self.consumers))
                self.consumers.append(again)
                try:
                    again.proc.wait(timeout=self.stage_timeout)
                except subprocess.TimeoutExpired:
                    again.kill()
                    self.result.notes.append("the restarted consumer did not drain in time")
                st = again.status()
                if again.proc.returncode != 0:
                    self.result.notes.append(f"the restarted consumer failed too: {st.get('error')}")

    def _compare(self) -> None:
        assert self.writer is not None
        log = self.writer.log
        res = self.result
        res.writer_reconnects = log.reconnects
        res.writer_ambiguous = log.ambiguous_commits
        res.writer_aborted = log.aborted_txns
        with self.direct() as conn:
            truth_problems = self.writer.check_table(conn)
        for p in truth_problems:
            res.problems.append(f"harness: {p}")
        statuses = [c.status() for c in self.consumers]
        res.reconnects = sum(int(s.get("reconnects") or 0) + int(s.get("restarts") or 0)
                             for s in statuses)
        recs = read_records(self.consumer_cfg["out"])
        comp = compare(log, recs, t_fault=self.t_fault, seq_at_fault=self.seq_at_fault)
        res.comparison = comp
        if self.fault.expect == "clean":
            if res.consumer_error:
                res.problems.append(f"the stream did not recover by itself: the consumer died "
                                    f"with {res.consumer_error}")
            if comp.lost:
                res.problems.append(f"{comp.lost} changes lost (of {comp.written})")
            if comp.written != self.changes:
                res.problems.append(f"harness: the writer committed {comp.written}, "
                                    f"not {self.changes}")
        else:  # invalidated: the documented clear error, nothing lost before it
            err = res.consumer_error or ""
            missing = [w for w in INVALIDATION_WORDS if w not in err]
            if not res.consumer_error:
                res.problems.append("the consumer saw no error although its slot was invalidated")
            elif missing or "Fix:" not in err:
                res.problems.append(
                    "the error for an invalidated slot does not name "
                    + ", ".join(repr(w) for w in missing + ([] if "Fix:" in err else ["Fix:"]))
                    + f": {err.strip()}")
            if comp.lost_before_end:
                res.problems.append(f"{comp.lost_before_end} changes lost before the newest "
                                    "delivered one")
        if comp.duplicated:
            res.problems.append(f"{comp.duplicated} changes delivered twice past the high-water mark")
        if comp.out_of_order:
            res.problems.append(f"{comp.out_of_order} changes out of order "
                                f"({comp.keys_out_of_order} rows)")
        if comp.phantom:
            res.problems.append(f"{comp.phantom} delivered rows match no committed change")
        if comp.mismatched:
            res.problems.append(f"{comp.mismatched} delivered rows differ from the change written")

    def _cleanup(self) -> None:
        self._stop_watch.set()
        for c in self.consumers:
            c.kill()
        if self.writer is not None:
            self.writer.stop_event.set()
            self.writer.join(timeout=30)
        if self.proxy is not None:
            self.proxy.stop()
        try:
            self._query_retry(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active", (self.slot,), timeout=5)
        except psycopg.Error:
            pass
        for mount in self._mounted:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
            shutil.rmtree(mount, ignore_errors=True)
        self._mounted.clear()

    # ---- the faults: inject_<name> (and prepare_<name>, before the consumer starts)

    def inject_restart_fast(self) -> None:
        self.mark_fault(self.current_lsn())
        self.server.restart("fast")

    def inject_crash_immediate(self) -> None:
        self.mark_fault(self.current_lsn())
        self.server.restart("immediate")

    def inject_walsender_killed(self) -> None:
        pid = self.wait(lambda: (self.slot_row() or {}).get("active_pid"),
                        "the slot to be active", timeout=30)
        self.mark_fault()
        ok = self._query_retry("SELECT pg_terminate_backend(%s)", (pid,))[0][0]
        if not ok:
            raise HarnessError(f"pg_terminate_backend({pid}) returned false")
        self.result.notes.append(f"terminated walsender pid {pid}")

    def inject_network_cut(self) -> None:
        lsn = self.current_lsn()
        n = self.proxy.cut(refuse_for=2.0)
        self.mark_fault(lsn)
        self.result.notes.append(f"cut {n} connections")

    def inject_network_stall(self) -> None:
        self.proxy.stall(8.0)
        self.mark_fault()
        time.sleep(8.0)

    def inject_consumer_sigkill(self) -> None:
        victim = self.consumer
        lsn = self.current_lsn()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        self.mark_fault(lsn)
        before = victim.status().get("rows", 0)
        self.result.notes.append(f"killed the consumer after about {before} delivered rows")
        self.control("run")
        self.start_consumer()

    def inject_slot_invalidated(self) -> None:
        self.mark_fault(watch=False)  # the stream cannot recover: no recovery time
        self.control("stall")
        self.wait(lambda: self.consumer.status().get("state") == "stall" or not self.consumer.alive(),
                  "the consumer to stall")
        with self.direct() as conn:
            conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 120
            while True:
                fill_wal(conn, 24)
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
                row = self.slot_row()
                if row is None or row["wal_status"] == "lost":
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"the slot was not invalidated: {row}")
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
        self.result.notes.append(f"slot after the fill: {row}")
        self.control("run")
        # the stream should now fail with the clear error; the consumer exits with it
        deadline = time.monotonic() + 60
        while self.consumer.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.consumer.alive():
            self.result.notes.append("the consumer was still streaming 60 s after its slot "
                                     "was invalidated")

    def prepare_spill_full(self) -> None:
        spill = Path(tempfile.mkdtemp(prefix="faults-spill-"))
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                               str(spill)], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(spill, ignore_errors=True)
            raise EnvironmentUnavailable(
                f"cannot mount a 256 kB tmpfs for the spill directory: {proc.stderr.strip()} "
                "(the spill_full fault needs root)")
        self._mounted.append(spill)
        self.spill_dir = spill
        self.consumer_env = {"TMPDIR": str(spill)}  # tempfile's directory: the reader's spill
        self.consumer_cfg["memory_limit"] = 4 << 20  # a 1 MB bound per reader

    def inject_spill_full(self) -> None:
        self.mark_fault(watch=False)  # no connection breaks: no recovery time
        self.control("idle")

        def full_or_failed() -> bool:
            st = self.consumer.status()
            fs = os.statvfs(self.spill_dir)
            return bool(st.get("router_failed")) or fs.f_bfree * fs.f_frsize < 8192

        self.wait(full_or_failed, "the spill directory to fill up", timeout=60)
        time.sleep(2.0)  # more changes arrive while it is full
        st = self.consumer.status()
        self.result.notes.append(f"spill dir full; status then: spilled {st.get('spilled_bytes')} "
                                 f"bytes, router failed: {st.get('router_failed')}")
        self.control("run")


def run_fault(server: Any, plugin: str, fault: str | Fault, *, changes: int,
              workdir: str | Path, rate: float | None = None, seed: int = 1,
              batch_delay: float = 0.1, say: Callable[[str], None] | None = None) -> Result:
    """Run one fault against ``server`` (a started :class:`PostgresServer` with the fault's
    ``settings``; restarted or crashed by some faults)."""
    f = FAULTS[fault] if isinstance(fault, str) else fault
    return FaultRun(server, plugin, f, changes=changes, workdir=workdir, rate=rate, seed=seed,
                    batch_delay=batch_delay, say=say).run()


__all__ = ["FAULTS", "PLUGINS", "EnvironmentUnavailable", "Fault", "HarnessError", "Result",
           "SCHEMA", "run_fault"]
