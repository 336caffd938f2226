"""binder/ replayed as Binder would run it, since Binder itself cannot be reached from here.

Binder (repo2docker) builds as an unprivileged user: ``pip install -r binder/requirements.txt``
into a fresh environment, then ``binder/postBuild``, then every command goes through
``binder/start``. As root, this test creates an ordinary account and replays those steps as
that account in a fresh virtual environment (packages from a wheelhouse fetched once, as in
``test_ordinary_user.py``), then runs the quickstart notebook through ``binder/start``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_ordinary_user import _copy_repo, _download_nanoarrow_sdist

REPO = Path(__file__).resolve().parent.parent
BINDER_USER = "cdcbinder"

pytestmark = pytest.mark.slow

RUN_QUICKSTART = """
import nbclient, nbformat
book = nbformat.read("notebooks/01_quickstart.ipynb", as_version=4)
nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                        resources={"metadata": {"path": "notebooks"}}).execute()
outputs = [o.get("text", "") for c in book.cells if c.cell_type == "code"
           for o in c.get("outputs", [])]
assert any("the live frames equal the tables" in t for t in outputs), outputs
print("quickstart ran on binder's environment")
"""


def test_start_execs_its_arguments() -> None:
    start = (REPO / "binder" / "start").read_text()
    assert start.startswith("#!/bin/bash")
    assert start.rstrip().splitlines()[-1] == 'exec "$@"'
    out = subprocess.run([str(REPO / "binder" / "start"), "sh", "-c",
                          "echo $MALLOC_ARENA_MAX $POLARS_MAX_THREADS"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "2"]


def test_binder_steps_as_an_unprivileged_user_then_the_quickstart(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() == 0:
        subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{BINDER_USER}",
                        "--shell", "/bin/sh", BINDER_USER], capture_output=True, text=True)
        home = Path(f"/home/{BINDER_USER}")
        run_as = ["runuser", "-u", BINDER_USER, "--"]
        python = "/usr/bin/python3"
    else:
        home = tmp_path_factory.mktemp("home")
        run_as = []
        python = sys.executable
    work = home / "binder-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # What pip would fetch from PyPI, fetched once by us (our pip cache), resolved by the
    # user's own Python (its version decides which releases fit).
    house = work / "wheelhouse"
    fetcher = tmp_path_factory.mktemp("fetcher") / "venv"
    subprocess.run([python, "-m", "venv", str(fetcher)], check=True)
    subprocess.run([str(fetcher / "bin" / "pip"), "download", "-q", "-d", str(house), "-r",
                    str(REPO / "binder" / "requirements.txt"), "setuptools>=68", "wheel"],
                   check=True, capture_output=True, text=True)
    _download_nanoarrow_sdist(house)
    repo = work / "repo"
    _copy_repo(repo)
    (work / "tmp").mkdir()
    if run_as:
        subprocess.run(["chown", "-R", f"{BINDER_USER}:{BINDER_USER}", str(work)], check=True)
    venv = work / "venv"
    env = {"HOME": str(home), "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": str(work / "tmp"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(house), "XDG_CACHE_HOME": str(work / "cache"),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    steps = [
        [python, "-m", "venv", str(venv)],
        [f"{venv}/bin/pip", "install", "-q", "-r", "binder/requirements.txt"],
        ["bash", "binder/postBuild"],
        ["binder/start", "python", "-c", RUN_QUICKSTART],
    ]
    for step in steps:
        proc = subprocess.run([*run_as, "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                               *step], cwd=repo, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, f"{step}: {proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "quickstart ran on binder's environment" in proc.stdout
    # The plugin was built in the user's own cache, against the wheel's PostgreSQL 18.
    assert list((work / "cache" / "cdc_notebook" / "plugins").glob("pg18-*/wal2arrow.so"))
    # Nothing left behind: no server of that user, no server directory.
    if run_as:
        ps = subprocess.run(["pgrep", "-u", BINDER_USER, "postgres"], capture_output=True,
                            text=True)
        assert ps.stdout.strip() == ""
    assert not [p for p in (work / "tmp").iterdir() if p.name.startswith("pg-")]
