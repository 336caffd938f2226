"""The consumer registry: one small module per way of reading the workload's changes.

A consumer says what it is (name, role, slot plugin, transport), whether it can run here
(:meth:`Consumer.unavailable` returns the reason when it cannot: checked by import or feature at
run time, never hard-coded, so a consumer starts working the moment what it needs lands), and
how to run it: either a command of its own (``pg_recvlogical``, ``psql``) or :meth:`Consumer.run`
executed by ``python -m bench.worker`` in a subprocess. The harness measures every run from the
outside (peak RSS and CPU of the subprocess, CPU and memory of the server process serving it).

Adding a consumer: a module in this package that calls :func:`register` at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# kit: measures cdc_notebook (or its plugin) itself; reference: PostgreSQL's own path that the
# kit is compared with (pgoutput decoded in the server, pg_recvlogical + pgoutput, binary COPY
# drained by psql); baseline: a third-party way of doing the same (wal2json, PyPI decoders, ...)
ROLES = ("reference", "baseline", "kit")
KINDS = ("stream", "snapshot")
MODES = ("stream", "latency", "snapshot")


@dataclass
class Job:
    """Everything one consumer run needs; written to JSON for the subprocess."""

    consumer: str
    mode: str  # "stream" (throughput to end_lsn), "latency" (until lat:stop), "snapshot"
    workload: str  # "standard", "wide", "latency", "snapshot"
    conninfo: dict[str, Any]  # libpq parameters for the consumer's transport, no password
    transport: str  # "unix", "tcp" or "server" (work done inside the server, SQL interface)
    major: int
    bindir: str
    work_dir: str
    result_path: str
    application_name: str
    slot: str | None = None
    plugin: str | None = None
    publication: str | None = None
    end_lsn: int = 0
    expected_events: int = 0
    event_cap: int | None = None
    table: str | None = None  # the snapshot's table
    tables: list[str] = field(default_factory=list)  # the tables the stream's publication has
    timeout_s: float = 600.0
    reference: dict[str, Any] = field(default_factory=dict)  # e.g. pgoutput's in-server bytes

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))

    @property
    def end_lsn_text(self) -> str:
        return f"{self.end_lsn >> 32:X}/{self.end_lsn & 0xFFFFFFFF:X}"

    def dsn(self, **extra: Any) -> str:
        """A libpq connection string (no password: it travels in PGPASSWORD)."""
        params = {**self.conninfo, "application_name": self.application_name, **extra}
        return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items())


def _quote(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_./:-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Env:
    """What a consumer may look at to decide whether it can run."""

    major: int
    bindir: Path
    plugins: tuple[str, ...]  # output plugins that decode on this server
    plugin_problems: dict[str, str] = field(default_factory=dict)  # why others do not


class Consumer:
    name: str = ""
    title: str = ""
    label: str = ""  # what a reference row measures, shown beside its name in the tables
    group: int = 0  # the consumer's number in issue 3's list
    role: str = "baseline"
    kind: str = "stream"
    plugin: str | None = None
    transport: str = "unix"
    versions: tuple[int, ...] | None = None  # None: every version
    version_reason: str = ""
    latency: bool = True  # takes part in the latency run
    event_cap: int | None = None
    uses_worker: bool = True  # run() in ``python -m bench.worker``

    def unavailable(self, env: Env) -> str | None:
        """Why this consumer cannot run here, or None."""
        if self.versions is not None and env.major not in self.versions:
            return self.version_reason or (
                f"runs on PostgreSQL {', '.join(map(str, self.versions))} only")
        if self.plugin is not None and self.plugin not in env.plugins:
            return env.plugin_problems.get(
                self.plugin, f"output plugin {self.plugin} is not installed for PostgreSQL "
                             f"{env.major}")
        return None

    def supports(self, mode: str) -> str | None:
        """Why this consumer does not take part in ``mode``, or None."""
        if (mode == "snapshot") != (self.kind == "snapshot"):
            return f"a {self.kind} consumer does not take part in {mode} runs"
        if mode == "latency" and not self.latency:
            return "reads on demand (no stream): no commit-to-arrival latency"
        return None

    def command(self, job: Job, job_path: Path) -> list[str]:
        return [sys.executable, "-m", "bench.worker", str(job_path)]

    def run(self, job: Job) -> dict[str, Any]:
        """Measure in the worker process; consumers that run a program of their own (e.g.
        pg_recvlogical) override :meth:`command` instead, and never get here."""
        raise TypeError(f"{self.name} runs a command of its own, not a worker")

    def collect(self, job: Job, returncode: int, wall_s: float) -> dict[str, Any]:
        """Turn a finished run into a result (for workers: the JSON the worker wrote)."""
        try:
            with open(job.result_path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {"error": f"exited with code {returncode} without a result"}


REGISTRY: dict[str, Consumer] = {}


def register(consumer: Consumer) -> Consumer:
    if consumer.name in REGISTRY:
        raise ValueError(f"consumer {consumer.name!r} registered twice")
    assert consumer.role in ROLES and consumer.kind in KINDS, consumer
    REGISTRY[consumer.name] = consumer
    return consumer


def load_all() -> dict[str, Consumer]:
    """Import every consumer module of this package (names starting with _ are helpers)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


# --------------------------------------------------------------------------- helpers for run()


class Window:
    """The measured interval inside a worker: wall clock and this process's CPU seconds."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0

    @staticmethod
    def _cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime + ch.ru_utime + ch.ru_stime

    def start(self) -> Window:
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> Window:
        self.t1 = time.perf_counter()
        self.cpu1 = self._cpu()
        return self

    def result(self, events: int, **extra: Any) -> dict[str, Any]:
        return {"events": events, "seconds": self.t1 - self.t0,
                "cpu_window_s": self.cpu1 - self.cpu0, **extra}


LAT_PREFIX = "lat:"
STOP_NOTE = "lat:stop"


def now_us() -> int:
    return time.time_ns() // 1000


class Latencies:
    """Collects commit-to-arrival latencies from the ``lat:<epoch µs>`` notes."""

    def __init__(self) -> None:
        self.values_us: list[int] = []
        self.stopped = False

    def note(self, note: str | None, arrival_us: int) -> bool:
        """Record one row's note; True once the stop row arrived."""
        if note is None or not note.startswith(LAT_PREFIX):
            return self.stopped
        if note == STOP_NOTE:
            self.stopped = True
        else:
            self.values_us.append(arrival_us - int(note[len(LAT_PREFIX):]))
        return self.stopped

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"events": len(self.values_us), "latencies_us": self.values_us,
                "stopped": self.stopped, **extra}


def password_env() -> str | None:
    return os.environ.get("PGPASSWORD")


def plugin_options(plugin: str, publication: str | None) -> dict[str, str]:
    """START_REPLICATION options for a plugin, as the kit sends them (when it knows the plugin)."""
    if plugin == "pgoutput":
        return {"proto_version": "1", "publication_names": publication or ""}
    if plugin == "wal2arrow":
        # the kit's own options, so pg_recvlogical and the probe see what the kit sends; a
        # broken kit is an error here, never a silent fallback to the plugin's defaults
        from cdc_notebook.decode.decoder import make_decoder

        return dict(make_decoder(plugin, publication)[1])
    return {}
