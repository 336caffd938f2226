"""Baseline (6): the ``pgoutput-decoder`` package from PyPI (Rust-backed, Debezium-style
messages as Python objects). It needs Python >= 3.12, so it runs from its own virtual
environment, ``bench/.venv312``, which the harness creates on first use (from
``BENCH_PYTHON312``, ``python3.12`` on PATH, or a pyenv 3.12 installation). It is slow: runs
are capped at 200,000 events and its rate is reported over what it read. It connects over TCP
(the way its documentation shows: host, port, password).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from . import Consumer, Job, register

PACKAGE = "pgoutput-decoder==0.1.0"
VENV = Path(__file__).resolve().parent.parent / ".venv312"
CLIENT = Path(__file__).resolve().parent / "_pgoutput_decoder_client.py"

_venv_state: tuple[Path | None, str | None] | None = None


def _python312() -> str | None:
    candidates = [os.environ.get("BENCH_PYTHON312"), shutil.which("python3.12"),
                  shutil.which("python3.13")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"))
    for cand in candidates:
        if not cand or not os.access(cand, os.X_OK):
            continue
        # a pyenv shim exists on PATH even when that version is not selected: ask it
        probe = subprocess.run([cand, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                               capture_output=True)
        if probe.returncode == 0:
            return cand
    return None


def ensure_venv() -> tuple[Path | None, str | None]:
    """The venv's python, or the reason it cannot be had (computed once per process)."""
    global _venv_state
    if _venv_state is not None:
        return _venv_state
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import pgoutput_decoder"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        _venv_state = (python, None)
        return _venv_state
    base = _python312()
    if base is None:
        _venv_state = (None, "no Python >= 3.12 found (set BENCH_PYTHON312 to one)")
        return _venv_state
    steps = [[base, "-m", "venv", str(VENV)],
             [str(python), "-m", "pip", "install", "--quiet", PACKAGE]]
    for step in steps:
        res = subprocess.run(step, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["(no output)"]
            _venv_state = (None, f"could not set up {VENV.name} ({' '.join(step[1:4])}): "
                                 f"{tail[0]}")
            return _venv_state
    _venv_state = (python, None)
    return _venv_state


class PgoutputDecoderPyPI(Consumer):
    name = "pgoutput_decoder_pypi_tcp"
    title = "PyPI pgoutput-decoder 0.1.0 (Python 3.12, capped at 200,000 events)"
    group = 6
    role = "baseline"
    plugin = "pgoutput"
    transport = "tcp"
    versions = (15,)
    version_reason = "a baseline: measured on PostgreSQL 15 (issue 3 compares 18 on the kit " \
                     "and PostgreSQL's own paths)"
    event_cap = 200_000

    def unavailable(self, env) -> str | None:
        reason = super().unavailable(env)
        if reason:
            return reason
        return ensure_venv()[1]

    def command(self, job: Job, job_path: Path) -> list[str]:
        python, reason = ensure_venv()
        if python is None:
            raise RuntimeError(reason)
        return [str(python), str(CLIENT), str(job_path)]


register(PgoutputDecoderPyPI())
