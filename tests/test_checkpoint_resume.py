"""Acknowledge what the sink committed: a LiveReader with a checkpoint never lets the slot pass
what the checkpoint holds, and a process killed after several checkpoints resumes from them with
a mirror equal to the table (docs/delivery.md)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cdc_notebook import CDCStream, LiveReader
from cdc_notebook.connection.lsn import parse_lsn
from cdc_notebook.demo import assert_mirror_matches
from cdc_notebook.live.tables import CHECKPOINT_KEY

from .pgutil import drop_slot

HERE = Path(__file__).resolve().parent


def _checkpoint_lsns(directory: Path) -> dict[str, int]:
    out = {}
    for path in directory.glob("*.parquet"):
        info = json.loads(pq.read_schema(path).metadata[CHECKPOINT_KEY])
        out[info["table"]] = int(info["lsn"])
    return out


def _confirmed(conn, slot: str) -> int:
    text = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = %s", (slot,)).fetchone()[0]
    return parse_lsn(text)


def _write(pg, schema: str, stop: threading.Event, seed: int) -> None:
    """Inserts, updates (key changes included) and deletes on two tables until stopped."""
    rng = random.Random(seed)
    next_id = 1
    with pg.connect() as conn:
        while not stop.is_set():
            with conn.transaction():
                for _ in range(rng.randint(1, 50)):
                    table = rng.choice(("a", "b"))
                    roll = rng.random()
                    if roll < 0.6 or next_id < 20:
                        conn.execute(f"INSERT INTO {schema}.{table} VALUES (%s, %s)",
                                     (next_id, f"v{next_id}"))
                        next_id += 1
                    elif roll < 0.8:
                        conn.execute(f"UPDATE {schema}.{table} SET v = v || '+' WHERE id = %s",
                                     (rng.randrange(1, next_id),))
                    elif roll < 0.9:
                        conn.execute(f"UPDATE {schema}.{table} SET id = %s WHERE id = %s",
                                     (next_id, rng.randrange(1, next_id)))
                        next_id += 1
                    else:
                        conn.execute(f"DELETE FROM {schema}.{table} WHERE id = %s",
                                     (rng.randrange(1, next_id),))
            time.sleep(0.002)


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_sigkill_after_checkpoints_then_resume_equals_select(pg, unique_name, tmp_path, plugin):
    schema = unique_name("ckpt")
    slot = f"cdcnb_{schema}"[:63]
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {schema}.{table} (id bigint PRIMARY KEY, v text)")
    directory = tmp_path / "checkpoint"
    args = [pg.conninfo(), f"{schema}.*", slot, plugin, str(directory)]
    stop = threading.Event()
    writer = threading.Thread(target=_write, args=(pg, schema, stop, 7), daemon=True)
    proc = subprocess.Popen([sys.executable, str(HERE / "_checkpoint_script.py"), json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=HERE.parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("STARTED"), proc.stderr.read() if proc.stderr else line
        writer.start()
        checkpoints = 0
        deadline = time.monotonic() + 120
        while checkpoints < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert not line.startswith("FAILED"), line
            if line.startswith("CHECKPOINT"):
                checkpoints = int(line.split()[1])
        assert checkpoints >= 4
        # The slot never passes what the checkpoint holds, while the writes go on.
        with pg.connect() as conn:
            for _ in range(5):
                lsns = _checkpoint_lsns(directory)
                confirmed = _confirmed(conn, slot)
                assert confirmed <= min(lsns.values()), (confirmed, lsns)
                time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    time.sleep(0.5)  # writes go on while nobody reads
    stop.set()
    writer.join(60)
    assert set(_checkpoint_lsns(directory)) == {f"{schema}.a", f"{schema}.b"}
    stream = CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot, plugin=plugin)
    reader = LiveReader(stream, checkpoint=directory, checkpoint_interval=3600)
    assert reader.frames.tables, "the checkpoint was not loaded"
    try:
        reader.start()
        reader.catch_up(timeout=120)
        with pg.connect() as conn:
            rows = sum(assert_mirror_matches(reader, conn, f"{schema}.{t}") for t in ("a", "b"))
        assert rows > 0
    finally:
        reader.stop()
        drop_slot(pg, slot)
