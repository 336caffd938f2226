"""Partitions on Ray: one actor per key-hash partition writes its rows of every table.

::

    sink = DeltaSink(stream, "/shared/lake", partitions=4, ray="local")    # or ray="10.0.0.5:6379"

The sink's process reads the stream, cuts micro-batches and splits each table's rows by the
hash of their key (:func:`cdc_notebook.sinks.changes.split_partitions`: deletes and the old key
of a moved row by their before-image, so a key that moves to another partition is a delete in
the old one and an insert in the new one). Each partition's rows go into Ray's object store
(``ray.put`` of the Arrow tables: the actor reads them in place, without a copy, when it is on
the same node) and to that partition's actor, which runs the user's ``on_changes`` on them
and writes them through :class:`~cdc_notebook.sinks.writer.PartitionWriter`: its own
partition (``_cdc_partition = i``) of each table's mirror and changelog, with its own markers
``<slot>:<table>:p<i>/<n>``. Partitions of one Delta table are written by several actors at
once; their commits touch disjoint partitions, so Delta's optimistic concurrency lets them
through (a rare conflict is retried).

A micro-batch is durable when every actor has committed its part; the slot is acknowledged
only past micro-batches every actor finished. An actor that dies (its process killed, its node
lost) is restarted by Ray; the sink then hands the restarted actor every micro-batch it had not
finished, in order, and the actor's markers skip what it had committed before it died.
Actors are spread over the cluster's nodes (``SPREAD``); the target must be storage every node
reaches (a shared file system, or an object store URI with ``storage_options``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cdc_notebook.sinks.writer import (
    ChangeHook,
    DeltaLocation,
    PartitionWriter,
    TableSpec,
    WriteStats,
)

log = logging.getLogger(__name__)


class PartitionActor:
    """The actor's class (wrapped with ``ray.remote`` at run time: importing this module does
    not need Ray)."""

    def __init__(self, root: str, storage_options: dict[str, str] | None, slot: str,
                 partition: int, partitions: int, changelog: bool,
                 on_changes: ChangeHook | None):
        self.writer = PartitionWriter(DeltaLocation(root, storage_options), slot,
                                      partition=partition, partitions=partitions,
                                      changelog=changelog, on_changes=on_changes)

    def apply(self, specs: list[tuple[TableSpec, bool]], *tables: pa.Table) -> WriteStats:
        items = []
        it = iter(tables)
        for spec, has_log in specs:
            mirror = next(it)
            items.append((spec, mirror, next(it) if has_log else None))
        return self.writer.apply_all(items)

    def where(self) -> dict[str, Any]:
        import os
        import socket

        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "host": socket.gethostname()}


@dataclass
class _Part:
    partition: int
    specs: list[tuple[TableSpec, bool]]
    refs: list[Any]  # ObjectRefs of the tables (kept until the part is done)
    task: Any = None
    result: WriteStats | None = None
    attempts: int = 0


@dataclass
class _Pending:
    flush: Any
    parts: list[_Part] = field(default_factory=list)


class RayCommitter:
    """The :class:`~cdc_notebook.sinks.delta.Committer` that writes partitions on Ray actors.

    ``address``: ``"local"`` starts a Ray instance for this process (``ray.init()``), anything
    else connects to a running cluster (``"auto"``, ``"host:port"``, ``"ray://..."``). An
    already initialized Ray is used as it is. Each actor asks for ``num_cpus`` (a hundredth of
    a CPU by default: the writing is mostly in delta-rs's own threads, and Ray's ``SPREAD``
    places zero-CPU actors all on one node).
    """

    def __init__(self, location: DeltaLocation, slot: str, *, partitions: int = 2,
                 changelog: bool = False, on_changes: ChangeHook | None = None,
                 address: str = "local", num_cpus: float = 0.01, max_restarts: int = 20,
                 init_options: dict[str, Any] | None = None):
        import ray

        self.partitions = partitions
        self.max_restarts = max_restarts
        self._started_ray = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False,
                       **(init_options or {})}
            for attempt in (1, 2):
                try:
                    if address == "local":
                        ray.init(**options)
                    else:
                        ray.init(address=address, **options)
                    break
                except Exception as exc:  # Ray raises a bare Exception for this
                    # A loaded machine can make a new local node miss Ray's start-up
                    # deadlines (its agents start slowly): once more, then give up.
                    ray.shutdown()
                    if attempt == 2 or "timed out during startup" not in str(exc):
                        raise
                    log.warning("Ray did not start in time (%s); trying again", exc)
            self._started_ray = True
        actor_class: Any = ray.remote(PartitionActor)
        self.actors: list[Any] = [
            actor_class.options(num_cpus=num_cpus, max_restarts=max_restarts,
                                max_task_retries=0, scheduling_strategy="SPREAD").remote(
                location.root, location.storage_options, slot, i, partitions, changelog,
                on_changes)
            for i in range(partitions)]
        self._pending: list[_Pending] = []
        self.restarts = 0

    def placement(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Where each partition's actor runs (node id, pid, host)."""
        import ray

        return list(ray.get([a.where.remote() for a in self.actors], timeout=timeout))

    def _send(self, part: _Part) -> None:
        part.task = self.actors[part.partition].apply.remote(part.specs, *part.refs)
        part.attempts += 1

    def submit(self, flush: Any) -> None:
        import ray

        from cdc_notebook.sinks.delta import split_items

        pending = _Pending(flush)
        for i, items in enumerate(split_items(flush.items, self.partitions,
                                                         flush.mirror_items)):
            if not items:
                continue
            specs: list[tuple[TableSpec, bool]] = []
            refs: list[Any] = []
            for spec, mirror, changelog in items:
                specs.append((spec, changelog is not None))
                # One chunk per column: Ray serializes an Arrow table chunk by chunk in Python
                # (a micro-batch of 1,000-row stream batches is hundreds of chunks per column)
                refs.append(ray.put(mirror.combine_chunks()))
                if changelog is not None:
                    refs.append(ray.put(changelog.combine_chunks()))
            part = _Part(i, specs, refs)
            self._send(part)
            pending.parts.append(part)
        self._pending.append(pending)

    def _resend_from(self, partition: int) -> None:
        """The actor of ``partition`` died: hand it again, in order, every part it has not
        finished (its markers skip what it committed)."""
        self.restarts += 1
        if self.restarts > self.max_restarts * self.partitions:
            raise RuntimeError(f"the actor of partition {partition} keeps dying")
        time.sleep(0.2)
        for pending in self._pending:
            for part in pending.parts:
                if part.partition == partition and part.result is None:
                    self._send(part)

    def completed(self) -> list[tuple[Any, WriteStats]]:
        import ray
        from ray.exceptions import RayActorError

        tasks = [p.task for pending in self._pending for p in pending.parts if p.result is None]
        if tasks:
            ready, _ = ray.wait(tasks, num_returns=len(tasks), timeout=0)
            ready_set = set(ready)
            for pending in self._pending:
                for part in pending.parts:
                    if part.result is not None or part.task not in ready_set:
                        continue
                    task = part.task
                    try:
                        part.result = ray.get(task)
                    except RayActorError as exc:
                        log.warning("partition %d's actor died (%s): handing it its "
                                    "unfinished micro-batches again", part.partition,
                                    type(exc).__name__)
                        if part.task is task:  # not yet resent by an earlier failure
                            self._resend_from(part.partition)
        done, left = [], []
        for pending in self._pending:
            if all(p.result is not None for p in pending.parts):
                total = WriteStats()
                for p in pending.parts:
                    if p.result is not None:
                        total.add(p.result)
                        total.host = total.host or p.result.host
                done.append((pending.flush, total))
            else:
                left.append(pending)
        self._pending = left
        return done

    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        import ray

        deadline = time.monotonic() + 60
        while self._pending and time.monotonic() < deadline:
            self.completed()
            time.sleep(0.05)
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._started_ray:
            ray.shutdown()
