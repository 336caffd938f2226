"""Partitions on Ray (cdc_notebook.sinks.ray): one actor per key-hash partition.

* a local Ray (``ray.init()``): an actor SIGKILLed mid-stream while the tables are written to is
  restarted, handed its unfinished micro-batches again, and the result is exact (mirror equals
  SELECT, changelog = every change once);
* a cluster of two nodes started with ``ray start`` on this machine (a head and a second node,
  separate processes, free ports, a private temporary directory; stopped afterwards by the ids
  of its processes): the two partitions' actors run on different nodes, and the Delta tables
  equal those a single process writes from the same changes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cdc_notebook import CDCStream

from ._sink_helpers import (
    ContinuousWriter,
    Reference,
    assert_changelog_exact,
    assert_mirror_equals_select,
    changelog,
    create_simple_tables,
    create_tables,
    mirror_rows,
    scripted_workload,
    wait_until,
)
from .pgutil import drop_slot

pytest.importorskip("deltalake")
ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _sink(pg, schema, slot, directory, **kw):
    from cdc_notebook.sinks.delta import DeltaSink

    stream = CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot, plugin="wal2arrow",
                       acknowledge="durable")
    return stream, DeltaSink(stream, directory, changelog=True, max_rows=400, interval=0.2, **kw)


def test_actor_killed_mid_stream_is_restarted_and_nothing_is_lost(pg, unique_name, tmp_path):
    schema = unique_name("sinkray")
    slot = f"cdcnb_{schema}"[:63]
    create_simple_tables(pg, schema)
    directory = tmp_path / "lake"
    reference = Reference(pg, f"{schema}.*", "wal2arrow")
    CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot).close()
    writer = ContinuousWriter(pg, schema, seed=5, truncate_every=2.0).start()
    stream, sink = _sink(pg, schema, slot, directory, partitions=2, ray="local",
                         ray_options={"init_options": {"num_cpus": 2}})
    try:
        placement = sink.committer.placement()
        sink.start()  # in a background thread, as a notebook runs it
        wait_until(lambda: sink.stats.mirror_commits >= 6 or sink.error, 90, "commits")
        os.kill(placement[0]["pid"], signal.SIGKILL)
        before = sink.stats.mirror_commits
        wait_until(lambda: sink.stats.mirror_commits >= before + 6 or sink.error, 120,
                   "commits after the actor was killed")
        writer.finish()
        target = stream.current_wal_lsn()
        wait_until(lambda: sink.acknowledged >= target or sink.error, 120, "the sink to catch up")
        assert sink.error is None, sink.error
        assert sink.committer.restarts >= 1
        moved = sink.committer.placement()
        assert moved[0]["pid"] != placement[0]["pid"]  # a new process for partition 0
    finally:
        writer.stop.set()
        sink.stop()
        try:
            sink.join(120)
        finally:
            stream.close()
            drop_slot(pg, slot)
    for table in ("a", "b"):
        assert_mirror_equals_select(pg, directory, f"{schema}.{table}")
    truth = reference.changes({"a": "id", "b": "id"})
    for table in ("a", "b"):
        assert_changelog_exact(directory, f"{schema}.{table}", "id", truth[f"{schema}.{table}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    """A head and a second node started with ``ray start`` in a private temporary directory;
    stopped by the ids of the processes that run from it."""

    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> _Cluster:
        common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={self.temp}"]
        for command in ([RAY, "start", "--head", f"--port={self.port}",
                         "--include-dashboard=false", *common],
                        [RAY, "start", f"--address={self.address}", *common]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        return self

    def pids(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if self.temp.encode() in cmd or f"127.0.0.1:{self.port}".encode() in cmd:
                found.append(int(entry))
        return [p for p in found if p != os.getpid()]

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.mark.skipif(RAY is None, reason="the ray command is not installed")
def test_two_node_cluster_spreads_partitions_and_matches_one_process(pg, unique_name, tmp_path,
                                                                   monkeypatch):
    # One authentication mode for the nodes and the driver: a local ray.init() leaves a token
    # in ~/.ray/auth_token, after which `ray start --head` turns token authentication on but
    # `ray start --address` does not (Ray 2.60), and the second node cannot join.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    schema = unique_name("sinkclu")
    create_tables(pg, schema)
    slots = {kind: f"cdcnb_{schema}_{kind}"[:63] for kind in ("ray", "one")}
    for slot in slots.values():
        CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot).close()
    for round_ in (0, 1):
        scripted_workload(pg, schema, round_)
    cluster = _Cluster()
    try:
        cluster.start()
        # The command, as a user runs it against a cluster (its own process: a driver that
        # already ran a local Ray may not reconnect cleanly in the same process)
        done = subprocess.run(
            [sys.executable, "-m", "cdc_notebook", "sink", "--dsn", pg.dsn(), "--tables",
             f"{schema}.*", "--slot", slots["ray"], "--to", f"delta:{tmp_path / 'ray'}",
             "--changelog", "--partitions", "2", "--ray", cluster.address, "--once",
             "--max-rows", "400", "--interval", "0.2"],
            capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        nodes = re.findall(r"ray: partition (\d) on node (\w+)", done.stdout)
        assert len(nodes) == 2 and nodes[0][1] != nodes[1][1], done.stdout  # one per node
        stream, sink = _sink(pg, schema, slots["one"], tmp_path / "one")
        try:
            sink.run(once=True, timeout=180)
        finally:
            stream.close()
        for table, key in (("a", "id"), ("b", "k1")):
            name = f"{schema}.{table}"
            assert mirror_rows(tmp_path / "ray", name) == mirror_rows(tmp_path / "one", name)
            assert_mirror_equals_select(pg, tmp_path / "ray", name)
            assert changelog(tmp_path / "ray", name, key) == changelog(tmp_path / "one", name, key)
    finally:
        cluster.stop()
        for slot in slots.values():
            drop_slot(pg, slot)
