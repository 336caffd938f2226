"""What the harness reads from /proc: CPU seconds and memory of server processes.

The walsender (or backend) serving a consumer is a child of the postmaster running as another
OS user; as root the harness reads its ``/proc/<pid>/stat`` and ``/proc/<pid>/status``.
A process's CPU time is gone from /proc once it exits, so a sampler thread reads it every
``interval`` seconds and keeps the last reading: the walsender is idle by the time its client
has received the end position, so the last reading is its total to within a clock tick.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    comm: str  # the program's name (15 characters at most)
    cpu_s: float  # user + system seconds since the process started
    rss_kb: int
    rss_anon_kb: int
    hwm_kb: int  # peak resident set (VmHWM), shared memory pages it touched included


def read_proc(pid: int) -> ProcSample | None:
    """One reading of a process, or None when it is gone (or not readable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status", "rb") as fh:
            status = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    mem = {}
    for line in status.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"VmRSS", b"RssAnon", b"VmHWM"):
            mem[key] = int(value.split()[0])
    return ProcSample(comm, (utime + stime) / CLK_TCK, mem.get(b"VmRSS", 0), mem.get(b"RssAnon", 0),
                      mem.get(b"VmHWM", 0))


class ProcessSampler:
    """Follow the server processes serving one consumer while it runs.

    ``find_pids`` is called until it returns pids (the walsender appears once the client has
    connected); new pids it returns later are followed too (a client may reconnect or open
    several connections). Totals are summed over the processes followed.
    """

    def __init__(self, find_pids: Callable[[], list[int]], interval: float = 0.02):
        self._find = find_pids
        self._interval = interval
        self._last: dict[int, ProcSample] = {}
        self._anon_peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="server-sampler", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        next_lookup = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_lookup:
                try:
                    for pid in self._find():
                        self._last.setdefault(pid, ProcSample("", 0.0, 0, 0, 0))
                except Exception as exc:  # the lookup connection failed: say so in the result
                    self.error = f"{type(exc).__name__}: {exc}"
                # look up often until something was found, then less (more connections, reconnects)
                next_lookup = now + (0.01 if not self._last else 0.1)
            for pid in list(self._last):
                sample = read_proc(pid)
                if sample is None:
                    continue
                prev = self._last[pid]
                if sample.hwm_kb == 0 and prev.hwm_kb:
                    # an exited, not yet reaped process (zombie) has no memory left to show:
                    # keep its last memory reading, take its final CPU time
                    sample = ProcSample(prev.comm, sample.cpu_s, prev.rss_kb, prev.rss_anon_kb,
                                        prev.hwm_kb)
                self._last[pid] = sample
                self._anon_peak[pid] = max(self._anon_peak.get(pid, 0), sample.rss_anon_kb)
            self._stop.wait(self._interval if self._last else 0.005)

    @property
    def pids(self) -> list[int]:
        return sorted(self._last)

    @property
    def cpu_s(self) -> float:
        return sum(s.cpu_s for s in self._last.values())

    @property
    def anon_peak_kb(self) -> int:
        return max(self._anon_peak.values(), default=0)

    def last(self, pid: int) -> ProcSample | None:
        return self._last.get(pid)

    @property
    def hwm_kb(self) -> int:
        return max((s.hwm_kb for s in self._last.values()), default=0)
