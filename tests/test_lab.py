"""``python -m cdc_notebook lab`` as root and as an ordinary user (issue 14): JupyterLab's
options pass through, ``--allow-root`` is added as root, and it serves working copies of the
tutorial notebooks so the repository's stay clean."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cdc_notebook.__main__ import main
from cdc_notebook.demo import lab_command, working_copies
from cdc_notebook.server.postgres import free_port

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.glob("*.ipynb"))}


def test_options_pass_through_and_root_gets_allow_root(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDC_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    assert main(["lab", "--dry-run", "--ip", "0.0.0.0", "--port", "9123", "--no-browser",
                 "--ServerApp.token=abc", "--", "--debug", "--port-retries=0"]) == 0
    out = capsys.readouterr().out
    command = out.split("starting JupyterLab: ", 1)[1].split()
    assert "--ip=0.0.0.0" in command and "--port=9123" in command and "--no-browser" in command
    assert command[-3:] == ["--ServerApp.token=abc", "--debug", "--port-retries=0"]
    assert f"--ServerApp.root_dir={tmp_path / 'work'}" in command
    assert ("--allow-root" in command) == (os.geteuid() == 0)
    # an ordinary user's command has no --allow-root unless asked
    ordinary = lab_command(tmp_path, extra=[])
    assert ("--allow-root" in ordinary) == (os.geteuid() == 0)
    assert "--allow-root" in lab_command(tmp_path, allow_root=True)
    # an option of ours the user does not use is not swallowed by abbreviation
    assert main(["lab", "--dry-run", "--no", "--f"]) == 0
    command = capsys.readouterr().out.split("starting JupyterLab: ", 1)[1].split()
    assert command[-2:] == ["--no", "--f"]


def test_working_copies_keep_the_repository_clean_and_the_users_edits(tmp_path: Path) -> None:
    before = _digests(NOTEBOOKS)
    work = tmp_path / "work"
    outcome = working_copies(NOTEBOOKS, work)
    assert set(outcome.values()) == {"copied"} and _digests(work) == before
    assert (work.stat().st_mode & 0o777) == 0o700
    # the user edits one, a newer tutorial arrives for another
    edited, changed = sorted(before)[0], sorted(before)[1]
    mine = json.loads((work / edited).read_text())
    mine["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["my notes"]})
    (work / edited).write_text(json.dumps(mine))
    source = tmp_path / "source"
    source.mkdir()
    for name in before:
        (source / name).write_bytes((NOTEBOOKS / name).read_bytes())
    book = json.loads((source / changed).read_text())
    book["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["new"]})
    (source / changed).write_text(json.dumps(book))
    (source / edited).write_text((source / edited).read_text() + " ")
    outcome = working_copies(source, work)
    assert outcome[edited] == "kept (you changed it)"
    assert outcome[changed] == "updated" and (work / changed).read_bytes() == \
        (source / changed).read_bytes()
    assert working_copies(source, work, fresh=True)[edited] == "updated"
    assert _digests(NOTEBOOKS) == before


def test_lab_starts_as_this_user_and_serves_the_working_copies(tmp_path: Path) -> None:
    """The real thing, as root in CI (JupyterLab used to refuse root and the kit had no way to
    pass --allow-root): start it, fetch the quickstart's working copy over HTTP, stop it."""
    port = free_port()
    env = {**os.environ, "CDC_NOTEBOOK_WORKDIR": str(tmp_path / "work"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    before = _digests(NOTEBOOKS)
    with open(tmp_path / "lab.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_notebook", "lab", "--no-browser", "--port", str(port),
             "--", "--ServerApp.token=t0ken", "--LabApp.check_for_updates_class="
             "jupyterlab.NeverCheckForUpdate"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
            start_new_session=True)
    try:
        url = (f"http://127.0.0.1:{port}/api/contents/01_quickstart.ipynb?token=t0ken"
               "&content=0")
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    info = json.loads(resp.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "lab.log").read_text()) from None
                time.sleep(0.5)
        assert info["name"] == "01_quickstart.ipynb" and info["type"] == "notebook"
        assert (tmp_path / "work" / "01_quickstart.ipynb").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _digests(NOTEBOOKS) == before
