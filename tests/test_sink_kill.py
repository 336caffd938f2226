"""``python -m cdc_notebook sink`` killed with SIGKILL mid-stream, twice, while the tables are
written to, then run again to the end (``--once``): the mirror equals SELECT and the changelog
holds every change of the stream exactly once (0 lost, 0 duplicated), on both plugins. The
command's output never shows the password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdc_notebook import CDCStream

from ._sink_helpers import (
    ContinuousWriter,
    Reference,
    assert_changelog_exact,
    assert_mirror_equals_select,
    create_simple_tables,
)
from .pgutil import drop_slot

pytest.importorskip("deltalake")

REPO = Path(__file__).resolve().parent.parent
COMMITS = re.compile(r"\| (\d+) commits \|")


def _command(pg, schema, slot, plugin, directory, *extra):
    return [sys.executable, "-m", "cdc_notebook", "sink", "--dsn", pg.dsn("tcp"),
            "--tables", f"{schema}.*", "--slot", slot, "--to", f"delta:{directory}",
            "--changelog", "--plugin", plugin, "--interval", "0.2", "--max-rows", "400", *extra]


def _run_until_commits(command, commits, output):
    """Start the command, wait until it reports ``commits`` commits, SIGKILL it."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        seen = 0
        while seen < commits:
            line = proc.stdout.readline()
            output.append(line)
            assert line or proc.poll() is None, "".join(output[-20:])
            if match := COMMITS.search(line):
                seen = int(match.group(1))
            assert time.monotonic() < deadline, "".join(output[-20:])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            output.append(proc.stdout.read())
            proc.stdout.close()
    return proc.returncode


@pytest.mark.parametrize("plugin", ["wal2arrow", "pgoutput"])
def test_sigkill_mid_stream_then_restart_is_exactly_once(pg, unique_name, tmp_path, plugin):
    schema = unique_name("sinkkill")
    slot = f"cdcnb_{schema}"[:63]
    create_simple_tables(pg, schema)
    directory = tmp_path / "lake"
    reference = Reference(pg, f"{schema}.*", plugin)
    # the sink's permanent slot exists before the first write (the command would create it)
    CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot, plugin=plugin).close()
    writer = ContinuousWriter(pg, schema, seed=11, truncate_every=1.5).start()
    output: list[str] = []
    try:
        command = _command(pg, schema, slot, plugin, directory)
        assert _run_until_commits(command, 6, output) == -signal.SIGKILL
        time.sleep(0.3)  # the writes go on while nobody reads
        assert _run_until_commits(command, 4, output) == -signal.SIGKILL
        time.sleep(0.3)
        writer.finish()
        done = subprocess.run([*command, "--once"], capture_output=True, text=True, cwd=REPO,
                              timeout=180)
        output.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "caught up" in done.stdout
        assert "resumed after" in done.stdout
        text = "".join(output)
        assert pg.password not in text and "********" in text
        for table in ("a", "b"):
            assert_mirror_equals_select(pg, directory, f"{schema}.{table}")
        truth = reference.changes({"a": "id", "b": "id"})
        total = sum(assert_changelog_exact(directory, f"{schema}.{t}", "id",
                                           truth[f"{schema}.{t}"]) for t in ("a", "b"))
        assert total > 500
        assert any(k[2] == "t" for k in truth[f"{schema}.b"])  # a TRUNCATE was among them
    finally:
        writer.stop.set()
        drop_slot(pg, slot)


def test_sigterm_stops_after_the_commit_in_progress(pg, unique_name, tmp_path):
    schema = unique_name("sinkterm")
    slot = f"cdcnb_{schema}"[:63]
    create_simple_tables(pg, schema)
    directory = tmp_path / "lake"
    CDCStream(pg.conninfo(), f"{schema}.*", slot_name=slot).close()
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {schema}.a SELECT g, 'v' FROM generate_series(1, 5000) g")
    proc = subprocess.Popen(_command(pg, schema, slot, "wal2arrow", directory),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    output = []
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            output.append(line)
            assert line, "".join(output)
            if (match := COMMITS.search(line)) and int(match.group(1)) > 0:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        drop_slot(pg, slot)
    assert proc.returncode == 0, "".join(output)
    assert "stopped (SIGTERM)" in "".join(output)
    assert_mirror_equals_select(pg, directory, f"{schema}.a")
