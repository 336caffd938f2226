"""Building the wal2arrow plugin for a given server (PGXS), cached by server and source.

The build runs ``make`` in a private copy of ``wal2arrow/`` under the cache directory, so the
source tree stays clean and builds for PostgreSQL 15 and 18 live side by side. nanoarrow is
fetched once per machine by the plugin's Makefile (pinned by version and hash) into a shared
cache next to the builds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cdc_notebook.errors import PluginBuildError

PLUGIN_NAME = "wal2arrow"
_SOURCE_SUFFIXES = {".c", ".h", ".sh", ".lock", ".py", ".json", ".toml"}


def plugin_source_dir() -> Path:
    """The ``wal2arrow/`` source tree (a checkout, or ``CDC_WAL2ARROW_SRC``)."""
    env = os.environ.get("CDC_WAL2ARROW_SRC")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "wal2arrow")
    for cand in candidates:
        if (cand / "Makefile").is_file():
            return cand
    raise PluginBuildError(
        "the wal2arrow sources were not found next to the cdc_notebook package",
        hint="install the kit from a checkout (pip install -e .) or set CDC_WAL2ARROW_SRC "
        "to the wal2arrow/ directory",
    )


def shared_cache_dir() -> Path:
    """Where builds are cached: readable by the server's OS user when we run as root."""
    env = os.environ.get("CDC_NOTEBOOK_CACHE")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        # /root is not readable by the unprivileged user that runs the server.
        path = Path("/var/tmp/cdc_notebook-cache")
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdc_notebook"
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        path.chmod(0o755)
    return path


def source_files(src: Path) -> list[Path]:
    """The files whose content determines the built plugin."""
    files = [src / "Makefile"]
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.suffix in _SOURCE_SUFFIXES and not _is_build_output(src, path):
            files.append(path)
    return files


def _is_build_output(src: Path, path: Path) -> bool:
    parts = path.relative_to(src).parts
    return parts[0] in {".deps", "vendor", "results", "tmp_check"} or path.suffix in {".o", ".so"}


def source_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(src):
        digest.update(str(path.relative_to(src)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pg_config_value(pg_config: Path, flag: str) -> str:
    out = subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def build_plugin(pg_config: str | Path, *, force: bool = False, quiet: bool = True) -> Path:
    """Build wal2arrow for the server of ``pg_config``; return the directory of the .so.

    Cached by the server's version string, the pg_config path and the sources' hash: a second
    call with nothing changed returns at once.
    """
    pg_config = Path(pg_config)
    if not pg_config.is_file():
        raise PluginBuildError(f"pg_config not found at {pg_config}",
                               hint="pass the pg_config of the server the plugin is for")
    src = plugin_source_dir()
    version = _pg_config_value(pg_config, "--version")
    key = hashlib.sha256(f"{version}\0{pg_config.resolve()}".encode()).hexdigest()[:8]
    major = version.split()[1].split(".")[0]
    cache = shared_cache_dir()
    out_dir = cache / "plugins" / f"pg{major}-{key}-{source_hash(src)}"
    so = out_dir / f"{PLUGIN_NAME}.so"
    if so.is_file() and not force:
        return out_dir

    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        raise PluginBuildError(
            "building wal2arrow needs make and a C compiler, and one of them is missing",
            hint="install them (Debian: apt-get install build-essential)",
        )
    (cache / "plugins").mkdir(exist_ok=True)
    with _locked(cache / "build.lock"):
        if so.is_file() and not force:
            return out_dir
        work = cache / "plugins" / f".build-{out_dir.name}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(
            ".deps", "vendor", "*.o", "*.so", "*.bc", "results", "tmp_check"))
        cmd = [
            "make", "-C", str(work), f"PG_CONFIG={pg_config}", f"PYTHON={sys.executable}",
            f"NANOARROW_CACHE={cache / 'nanoarrow'}", f"-j{os.cpu_count() or 2}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (work / f"{PLUGIN_NAME}.so").is_file():
            output = (proc.stdout + proc.stderr).strip()
            tail = "\n".join(output.splitlines()[-60:])
            raise PluginBuildError(
                f"wal2arrow failed to build against {version} ({pg_config}):\n{tail}",
                hint="read the compiler's output above; for a missing postgres.h install the "
                "server headers (Debian: apt-get install postgresql-server-dev-<major>)",
            )
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        shutil.copy2(work / f"{PLUGIN_NAME}.so", so)
        so.chmod(0o755)
        out_dir.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"built {so}", file=sys.stderr)
    return out_dir
