"""README's main job as an ordinary user, from a fresh virtual environment.

An ordinary user needs no apt package: the embedded PostgreSQL 18 wheel provides the server,
its headers and pg_config; wal2arrow is built against it in the user's own cache. As root, the
test creates an unprivileged account and replays the README's commands as that account (with
the Debian system Python, since pyenv's lives under /root); as a normal user it runs them as is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_USER = "cdcdemo"

pytestmark = pytest.mark.slow


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def _copy_repo(dest: Path) -> None:
    for rel in _tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


def _wheelhouse(tmp: Path) -> Path:
    """What the user's pip would fetch from PyPI, fetched once by us (uses our pip cache)."""
    house = tmp / "wheelhouse"
    house.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(house),
                    f"{REPO}[embedded,build]", "setuptools>=68", "wheel"],
                   check=True, capture_output=True, text=True)
    _download_nanoarrow_sdist(house)
    return house


def _download_nanoarrow_sdist(house: Path) -> None:
    """wal2arrow's build fetches nanoarrow's source distribution through pip as well: the one
    wal2arrow/nanoarrow.lock pins (version and hash), as wal2arrow/fetch_nanoarrow.sh does."""
    bindir = str(Path(sys.executable).parent)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    "nanoarrow", "--no-build-isolation", "--require-hashes", "-r",
                    str(REPO / "wal2arrow" / "nanoarrow.lock"), "-d", str(house)],
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"]})


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A home directory with a copy of the repository and a fresh venv, owned by the user."""
    if os.geteuid() != 0:
        home = tmp_path_factory.mktemp("home")
        return {"home": home, "run_as": [], "python": sys.executable, "wheelhouse": None}
    subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{DEMO_USER}",
                    "--shell", "/bin/sh", DEMO_USER], capture_output=True, text=True)
    home = Path(f"/home/{DEMO_USER}")
    work = home / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    house = _wheelhouse(tmp_path_factory.mktemp("wh"))
    shutil.copytree(house, work / "wheelhouse")
    return {"home": home, "work": work, "run_as": ["runuser", "-u", DEMO_USER, "--"],
            "python": "/usr/bin/python3", "wheelhouse": work / "wheelhouse"}


def test_readme_demo_as_an_ordinary_user(user_env: dict[str, object]) -> None:
    run_as: list[str] = user_env["run_as"]  # type: ignore[assignment]
    home: Path = user_env["home"]  # type: ignore[assignment]
    if not run_as:
        # Already an ordinary user: the demo runs from this environment.
        env = {**os.environ, "CDC_NOTEBOOK_CACHE": str(home / "cache")}
        proc = subprocess.run([sys.executable, "-m", "cdc_notebook", "demo"], cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "stopped; server directory removed" in proc.stdout
        return
    work: Path = user_env["work"]  # type: ignore[assignment]
    repo = work / "cdc_notebook"
    _copy_repo(repo)
    (work / "tmp").mkdir()
    subprocess.run(["chown", "-R", f"{DEMO_USER}:{DEMO_USER}", str(work)], check=True)
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "TMPDIR": str(work / "tmp"),
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(user_env["wheelhouse"])}
    # README, "as an ordinary user": a venv, the package with the embedded server, the demo.
    steps = [
        ["/usr/bin/python3", "-m", "venv", ".venv"],
        [".venv/bin/pip", "install", "-q", "-e", ".[embedded,build]"],
        [".venv/bin/python", "-m", "cdc_notebook", "demo"],
    ]
    for step in steps:
        proc = subprocess.run([*run_as, "env", *[f"{k}={v}" for k, v in env.items()], *step],
                              cwd=repo, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
    assert "PostgreSQL 18" in proc.stdout
    assert "stopped; server directory removed" in proc.stdout
    # Nothing left: no server process of that user, no instance directory.
    ps = subprocess.run(["pgrep", "-u", DEMO_USER, "postgres"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
    assert list((work / "tmp").iterdir()) == []  # the server's directory was removed
