"""A consumer killed with SIGKILL mid-stream and restarted on its permanent slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .pgutil import drop_slot

HERE = Path(__file__).resolve().parent


def _start(args: list) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "_consumer_script.py"), json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=HERE.parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("STARTED"), proc.stderr.read() if proc.stderr else line
    return proc


def _ids(log: Path) -> list[int]:
    out: list[int] = []
    for line in log.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            out += [int(i) for i in line.split(" ", 2)[2].strip().split(",") if i]
    return out


def test_sigkill_and_restart_lose_nothing_and_see_each_change_once(pg, unique_name, tmp_path):
    schema = unique_name("crash")
    slot = f"cdcnb_{schema}"[:63]
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text)")
    log = tmp_path / "consumer.log"
    args = [pg.conninfo(), f"{schema}.t", slot, str(log)]
    proc = _start(args)
    total = 40_000
    writer_done = threading.Event()

    def write() -> None:
        with pg.connect() as conn:
            for lo in range(1, total + 1, 500):
                conn.execute(f"INSERT INTO {schema}.t SELECT g, 'v' FROM "
                             f"generate_series({lo}, {lo + 499}) g")
                time.sleep(0.01)
        writer_done.set()

    threading.Thread(target=write, daemon=True).start()
    deadline = time.monotonic() + 60
    while len(_ids(log)) < 5_000 if log.exists() else True:
        assert time.monotonic() < deadline, "the consumer made no progress"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream, no clean-up of any kind
    proc.communicate(timeout=10)
    killed_at = len(_ids(log))
    assert killed_at < total
    proc = _start(args)  # the same permanent slot, its high-water mark restored from the log
    assert writer_done.wait(120)
    deadline = time.monotonic() + 120
    while len(set(_ids(log))) < total:
        assert time.monotonic() < deadline, f"{len(set(_ids(log)))} of {total} ids"
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=10)
    ids = _ids(log)
    assert sorted(set(ids)) == list(range(1, total + 1))  # none lost
    assert len(ids) == total  # none twice once the high-water mark drops redeliveries
    drop_slot(pg, slot)
