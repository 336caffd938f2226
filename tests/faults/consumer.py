"""The consumer process: follows one table through ``CDCStream`` on a permanent slot and logs
every delivered change durably (``tests/faults/records.py``) before asking for the next batch.

    python -m tests.faults.consumer '<json config>'

Config: ``conninfo``, ``table``, ``slot``, ``plugin``, ``out`` (the record log), ``status``
(a JSON file it rewrites ten times a second), ``control`` (a JSON file the harness writes),
``memory_limit``, ``fsync``, ``batch_delay`` (for ``slow``). A new process given the same
``out`` restores the high-water mark of the last whole record (``reader.resume_after``) and
appends after it: the SIGKILL fault.

The harness steers it through ``control``'s ``mode``:

* ``run``: iterate ``reader.batches(follow=True)``;
* ``slow``: the same, sleeping ``batch_delay`` seconds after each batch (before a fault, so the
  fault finds batches received but not yet consumed, and acknowledgements behind);
* ``stall``: hold the current batch and ask for no more (the reader stays active: the router
  waits on its full queue and backpressure reaches the server; the slot's WAL piles up);
* ``idle``: leave the iteration (the reader is inactive: the router spills its batches);
* ``drain``: iterate ``reader.batches()`` (up to the server's WAL position now), then exit 0;
* ``exit``: exit 0.

Any exception out of the reader ends the process with code 3, its type and text in the status.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from tests.faults.records import encode, restore


class Consumer:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.state = "starting"
        self.rows = 0
        self.batches_seen = 0
        self.error: BaseException | None = None
        self.stream: Any = None
        self.reader: Any = None
        self._control_version: tuple[int, int] = (0, 0)
        self._mode = "run"
        self._control_checked = 0.0
        self._status_written = 0.0
        self.started = time.time()
        self.first_batch_at: float | None = None

    # ---- control and status files

    def mode(self) -> str:
        now = time.monotonic()
        if now - self._control_checked < 0.02:
            return self._mode
        self._control_checked = now
        try:
            st = os.stat(self.cfg["control"])
        except FileNotFoundError:
            return self._mode
        version = (st.st_ino, st.st_mtime_ns)  # the harness replaces the file: a new inode
        if version != self._control_version:
            try:
                with open(self.cfg["control"]) as fh:
                    self._mode = json.load(fh)["mode"]
                self._control_version = version
            except (OSError, ValueError, KeyError):
                pass  # caught mid-rename: next time
        return self._mode

    def write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_written < 0.1:
            return
        self._status_written = now
        router = self.stream.router if self.stream is not None else None
        failed = router.failed if router is not None else None
        error = self.error or failed
        status = {
            "pid": os.getpid(), "state": self.state, "rows": self.rows,
            "batches": self.batches_seen, "time": time.time(),
            "high_water": list(self.reader.high_water) if self.reader is not None else None,
            "reconnects": router.reconnects if router is not None else 0,
            "restarts": router.restarts if router is not None else 0,
            "router_failed": None if failed is None else f"{type(failed).__name__}: {failed}",
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "error_type": None if error is None else type(error).__name__,
            "spilled_bytes": self.reader.spilled_bytes if self.reader is not None else 0,
            "received_lsn": router.acks.received if router is not None else 0,
            "flushed_lsn": router.acks.flushed if router is not None else 0,
            "decoding_mode": getattr(self.stream, "decoding_mode", None),
        }
        tmp = self.cfg["status"] + f".tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(status, fh)
        os.replace(tmp, self.cfg["status"])

    # ---- the loop

    def record(self, fd: int, batch: Any) -> None:
        os.write(fd, encode(batch, self.reader.high_water, time.time()))
        if self.cfg.get("fsync", True):
            os.fdatasync(fd)
        self.rows += batch.num_rows
        self.batches_seen += 1
        if self.first_batch_at is None:
            self.first_batch_at = time.time()

    def run(self) -> int:
        fd = -1
        try:
            from cdc_notebook import CDCStream

            high_water = restore(self.cfg["out"])
            self.write_status(force=True)
            self.stream = CDCStream(self.cfg["conninfo"], [self.cfg["table"]],
                                    plugin=self.cfg["plugin"], slot_name=self.cfg["slot"],
                                    temporary=False,
                                    memory_limit=int(self.cfg.get("memory_limit", 256 << 20)))
            self.reader = self.stream[self.cfg["table"]]
            self.reader.resume_after(*high_water)
            self.state = "ready"  # the slot exists: changes from now on are captured
            self.write_status(force=True)
            fd = os.open(self.cfg["out"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            return self._loop(fd)
        except BaseException as exc:  # noqa: BLE001 - the harness reads it from the status
            self.error = exc
            self.state = "failed"
            self.write_status(force=True)
            traceback.print_exc()
            return 3
        finally:
            if fd >= 0:
                os.close(fd)

    def _loop(self, fd: int) -> int:
        delay = float(self.cfg.get("batch_delay", 0.0))
        while True:
            mode = self.mode()
            self.state = mode
            if mode == "exit":
                break
            if mode == "idle":
                self.write_status()
                time.sleep(0.05)
                continue
            if mode == "drain":
                for batch in self.reader.batches():
                    self.record(fd, batch)
                    self.write_status()
                self.state = "drained"
                break
            it = self.reader.batches(follow=True, timeout=0.5)
            try:
                for batch in it:
                    self.record(fd, batch)
                    self.write_status()
                    if delay and self.mode() == "slow":
                        time.sleep(delay)  # slower than the writer: a backlog at the fault
                    while self.mode() == "stall":  # holding this batch: nothing more is acked
                        self.state = "stall"
                        self.write_status()
                        time.sleep(0.05)
                    if self.mode() not in ("run", "slow"):
                        break
            except TimeoutError:
                pass
            finally:
                it.close()
            self.write_status()
        self.write_status(force=True)
        self.stream.close()
        self.state = "closed"
        self.write_status(force=True)
        return 0


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sys.exit(Consumer(cfg).run())


if __name__ == "__main__":
    main()
