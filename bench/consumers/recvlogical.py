"""References (3b) and baseline (4): ``pg_recvlogical`` writing what the walsender sends to a file.

* pgoutput (``proto_version 1``, the workload's publication) over TCP and over the Unix socket:
  pgoutput's streaming rate to a thin client (a C client that does nothing with the bytes);
* wal2json (format 1, its default) over TCP: the JSON CDC baseline (PostgreSQL 15 here);
* wal2arrow (the kit's plugin, with the options the kit sends) over TCP and the Unix socket:
  the plugin streamed to a thin client, to compare with pgoutput's (issue 4's goals). Its rows
  are not counted in the output (Arrow frames): the run must reach the end position.

Throughput runs execute ``pg_recvlogical`` itself (``--endpos`` = the workload's end position,
``--no-loop``, ``-F 0``: the bytes land in the page cache, no fsync), so the measured process is
the C client alone. Latency runs wrap it: a worker reads its standard output through a pipe and
time-stamps the ``lat:`` notes as they arrive.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from . import Consumer, Job, Latencies, now_us, plugin_options, register

LAT_RE = re.compile(rb"lat:(\d+|stop)(?=\D)")


class RecvLogical(Consumer):
    group = 3
    role = "reference"

    def __init__(self, plugin: str, transport: str, *, group: int, role: str, title: str,
                 label: str = "", versions: tuple[int, ...] | None = None):
        self.label = label
        self.plugin = plugin
        self.transport = transport
        self.group = group
        self.role = role
        self.title = title
        self.versions = versions
        self.name = f"recvlogical_{plugin}_{transport}"

    def unavailable(self, env) -> str | None:
        reason = super().unavailable(env)
        if reason:
            return reason
        if not (env.bindir / "pg_recvlogical").is_file():
            return f"pg_recvlogical is not in {env.bindir}"
        return None

    def _argv(self, job: Job, *, out: str, endpos: bool) -> list[str]:
        argv = [str(Path(job.bindir) / "pg_recvlogical"), "-d", job.dsn(), "-S", job.slot,
                "--start", "--no-loop", "-F", "0", "-f", out]
        if endpos:
            argv += ["-E", job.end_lsn_text]
        for key, value in plugin_options(self.plugin, job.publication).items():
            argv += ["-o", f"{key}={value}"]
        return argv

    def output_path(self, job: Job) -> Path:
        return Path(job.work_dir) / f"{job.application_name}.out"

    def command(self, job: Job, job_path: Path) -> list[str]:
        if job.mode == "latency":
            return super().command(job, job_path)
        return self._argv(job, out=str(self.output_path(job)), endpos=True)

    def collect(self, job: Job, returncode: int, wall_s: float) -> dict[str, Any]:
        if job.mode == "latency":
            return super().collect(job, returncode, wall_s)
        out = self.output_path(job)
        try:
            if returncode != 0:
                return {"error": f"pg_recvlogical exited with code {returncode}"}
            if not out.is_file():
                return {"error": "pg_recvlogical wrote no output file"}
            size = out.stat().st_size
            result: dict[str, Any] = {"seconds": wall_s, "bytes": size,
                                      "events": job.expected_events}
            if self.plugin == "wal2json":
                rows = _count_in_file(out, (b'"kind":"insert"', b'"kind":"update"',
                                            b'"kind":"delete"'))
                result["events"] = rows
                result["verified"] = "rows counted in the output"
            elif self.plugin == "pgoutput" and "recvlogical_file_bytes" in job.reference:
                want = job.reference["recvlogical_file_bytes"]
                if size != want:
                    return {"error": f"output has {size} bytes; pgoutput's in-server decode "
                                     f"produced {want} for the same WAL"}
                result["verified"] = "output size equals pgoutput's in-server decode bytes"
            else:
                result["verified"] = "exit status at the end position only"
            return result
        finally:
            out.unlink(missing_ok=True)

    def run(self, job: Job) -> dict[str, Any]:
        """Latency mode: stream to a pipe, time-stamp the notes, stop at ``lat:stop``."""
        argv = self._argv(job, out="-", endpos=False)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lat = Latencies()
        carry = b""
        fd = proc.stdout.fileno()
        try:
            while not lat.stopped:
                chunk = os.read(fd, 1 << 16)
                arrival = now_us()
                if not chunk:
                    break
                buf = carry + chunk
                last_end = 0
                for m in LAT_RE.finditer(buf):
                    lat.note("lat:" + m.group(1).decode(), arrival)
                    last_end = m.end()
                carry = buf[max(last_end, len(buf) - 40):]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        if not lat.stopped:
            raise RuntimeError("pg_recvlogical ended before the stop row: "
                               + err.decode(errors="replace").strip()[-500:])
        return lat.result()


def _count_in_file(path: Path, needles: tuple[bytes, ...]) -> int:
    """Occurrences of the needles (none a part of another) in a file, read in chunks."""
    count = 0
    keep = max(map(len, needles)) - 1
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            buf = tail + chunk
            count += sum(buf.count(n) for n in needles)
            # a tail shorter than any needle: a match split by the chunk edge is counted once
            # (in the next buffer), and no match is counted twice
            tail = buf[-keep:]
    return count


register(RecvLogical("pgoutput", "tcp", group=3, role="reference",
                     label="pg_recvlogical + pgoutput streaming rate",
                     title="pg_recvlogical + pgoutput streaming rate: to a file over TCP"))
register(RecvLogical("pgoutput", "unix", group=3, role="reference",
                     label="pg_recvlogical + pgoutput streaming rate",
                     title="pg_recvlogical + pgoutput streaming rate: to a file over the Unix "
                           "socket"))
register(RecvLogical("wal2arrow", "tcp", group=1, role="kit",
                     title="pg_recvlogical + wal2arrow to a file over TCP (the plugin to a thin "
                           "client)"))
register(RecvLogical("wal2arrow", "unix", group=1, role="kit",
                     title="pg_recvlogical + wal2arrow to a file over the Unix socket (the plugin "
                           "to a thin client)"))
register(RecvLogical("wal2json", "tcp", group=4, role="baseline",
                     title="pg_recvlogical + wal2json format 1 over TCP"))
