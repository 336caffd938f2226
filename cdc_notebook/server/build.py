"""Building the wal2arrow plugin for a given server (PGXS), once per server and source.

Everything happens in the user's private cache (:func:`cache_dir`: ``$CDC_NOTEBOOK_CACHE``,
``$XDG_CACHE_HOME/cdc_notebook`` or ``~/.cache/cdc_notebook``, 0700, ownership checked — root's
too, so a build never runs in a directory another user can write):

1. nanoarrow's pinned source distribution is fetched once by ``wal2arrow/fetch_nanoarrow.py``
   (a direct download checked against ``nanoarrow.lock``'s SHA-256; no pip, no build backend)
   into ``nanoarrow/nanoarrow-<version>/``;
2. ``make -j<cores>`` runs in a fresh private copy of ``wal2arrow/`` (the source tree stays
   clean; builds for PostgreSQL 15 and 18 live side by side);
3. the ``.so`` is published atomically as ``plugins/pg<major>-<key>-<source hash>/wal2arrow.so``,
   the key a SHA-256 of the server's version and ``pg_config`` path (stable across processes).

A second call with nothing changed returns at once. Concurrent builds (two kernels, pytest-xdist)
serialise on a lock file in the cache. Progress goes to ``progress`` (see
:mod:`cdc_notebook.server.progress`).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from cdc_notebook.errors import PluginBuildError
from cdc_notebook.server.private import (
    cache_root,
    check_private_dir,
    ensure_private_dir,
    private_subdir,
)
from cdc_notebook.server.progress import ProgressArg, Reporter, resolve

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


def cache_dir() -> Path:
    """The user's private cache (created 0700; refused if someone else owns or can write it)."""
    return ensure_private_dir(cache_root())


def shared_cache_dir() -> Path:
    """Former name of :func:`cache_dir` (the cache is no longer shared between users)."""
    return cache_dir()


def source_files(src: Path) -> list[Path]:
    """The files whose content determines the built plugin."""
    files = [src / "Makefile"]
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.suffix in _SOURCE_SUFFIXES and not _is_build_output(src, path):
            files.append(path)
    return files


def _is_build_output(src: Path, path: Path) -> bool:
    parts = path.relative_to(src).parts
    return parts[0] in {".deps", "vendor", "results", "tmp_check", "__pycache__"} or \
        path.suffix in {".o", ".so"}


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pg_config_value(pg_config: Path, flag: str) -> str:
    out = subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _load_fetcher(work: Path) -> ModuleType:
    """``fetch_nanoarrow.py`` from the private build copy (one implementation for the Makefile
    and for us)."""
    spec = importlib.util.spec_from_file_location("_wal2arrow_fetch_nanoarrow",
                                                  work / "fetch_nanoarrow.py")
    if spec is None or spec.loader is None:
        raise PluginBuildError(f"cannot load {work / 'fetch_nanoarrow.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile_count(work: Path) -> int:
    """How many C files ``make`` compiles: src/*.c plus the Makefile's VENDORED list."""
    match = re.search(r"^VENDORED\s*:?=((?:.*\\\n)*.*)$", (work / "Makefile").read_text(),
                      re.MULTILINE)
    vendored = len(match.group(1).replace("\\\n", " ").split()) if match else 0
    return len(list((work / "src").glob("*.c"))) + vendored


def plugin_path(pg_config: str | Path, version: str | None = None) -> Path:
    """Where the plugin for ``pg_config`` is (or would be) cached."""
    pg_config = Path(pg_config)
    version = version or _pg_config_value(pg_config, "--version")
    key = hashlib.sha256(f"{version}\0{pg_config.resolve()}".encode()).hexdigest()[:8]
    major = version.split()[1].split(".")[0]
    return (cache_root() / "plugins" / f"pg{major}-{key}-{source_hash(plugin_source_dir())}"
            / f"{PLUGIN_NAME}.so")


def _cached(so: Path) -> bool:
    """A plugin already published: a regular file of ours in a private directory."""
    try:
        check_private_dir(so.parent)
        st = os.lstat(so)
    except FileNotFoundError:
        return False
    return st.st_uid == os.geteuid() and so.is_file() and not so.is_symlink()


def build_plugin(pg_config: str | Path, *, force: bool = False, quiet: bool = True,
                 progress: ProgressArg = "auto") -> Path:
    """Build wal2arrow for the server of ``pg_config``; return the directory of the .so.

    Cached by the server's version string, the pg_config path and the sources' hash: a second
    call with nothing changed returns at once. ``progress``: a callback receiving
    :class:`~cdc_notebook.server.progress.ProgressEvent` values, ``"auto"`` (the terminal) or
    None.
    """
    pg_config = Path(pg_config)
    if not pg_config.is_file():
        raise PluginBuildError(f"pg_config not found at {pg_config}",
                               hint="pass the pg_config of the server the plugin is for")
    src = plugin_source_dir()
    version = _pg_config_value(pg_config, "--version")
    cache = cache_dir()
    so = plugin_path(pg_config, version)
    out_dir = so.parent
    if not force and _cached(so):
        return out_dir

    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        raise PluginBuildError(
            "building wal2arrow needs make and a C compiler, and one of them is missing",
            hint="install them (Debian: apt-get install build-essential)",
        )
    report = Reporter(resolve(progress))
    plugins = private_subdir(cache, "plugins")
    with _locked(cache / "build.lock"):
        if not force and _cached(so):
            return out_dir
        work = plugins / f".build-{out_dir.name}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(
            ".deps", "vendor", "*.o", "*.so", "*.bc", "results", "tmp_check", "__pycache__",
            ".symbols-ok"))
        try:
            nanoarrow = _fetch_nanoarrow(work, private_subdir(cache, "nanoarrow"), report)
            _make(work, pg_config, version, nanoarrow.parent, report)
            _publish(work / f"{PLUGIN_NAME}.so", out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"built {so}", file=sys.stderr)
    return out_dir


def _fetch_nanoarrow(work: Path, cache: Path, report: Reporter) -> Path:
    fetcher = _load_fetcher(work)
    version, sha256 = fetcher.read_lock(work / "nanoarrow.lock")
    dest = cache / f"nanoarrow-{version}"
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text().strip() == sha256:
        return dest
    with report.step("download", f"fetching nanoarrow {version} (pinned by nanoarrow.lock)",
                     unit="B") as download:

        def progress(phase: str, done: int, total: int | None) -> None:
            if phase == "download":
                download(done, total)

        try:
            result = Path(fetcher.fetch(dest, work / "nanoarrow.lock", progress=progress))
        except fetcher.FetchError as exc:
            raise PluginBuildError(f"wal2arrow's nanoarrow source could not be fetched: {exc}",
                                   hint="see the message above") from None
    return result


def _make(work: Path, pg_config: Path, version: str, nanoarrow_cache: Path,
          report: Reporter) -> None:
    jobs = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
    cmd = ["make", "-C", str(work), f"-j{jobs}", f"PG_CONFIG={pg_config}",
           f"PYTHON={sys.executable}", f"NANOARROW_CACHE={nanoarrow_cache}"]
    total = _compile_count(work)
    lines: list[str] = []
    env = {**os.environ, "LC_ALL": "C"}
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    with report.step("compile", f"compiling wal2arrow for {version} (make -j{jobs})",
                     total=total, unit="files") as update:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=str(work), start_new_session=True) as proc:
            assert proc.stdout is not None
            compiled = 0
            try:
                for line in proc.stdout:
                    lines.append(line)
                    if " -c " in line and " -o " in line:
                        compiled += 1
                        update(min(compiled, total))
                code = proc.wait()
            except BaseException:
                proc.kill()
                raise
        if code != 0 or not (work / f"{PLUGIN_NAME}.so").is_file():
            tail = "\n".join("".join(lines).strip().splitlines()[-60:])
            raise PluginBuildError(
                f"wal2arrow failed to build against {version} ({pg_config}):\n{tail}",
                hint="read the compiler's output above; for a missing postgres.h install the "
                "server headers (Debian: apt-get install postgresql-server-dev-<major>)",
            )


def _publish(built: Path, out_dir: Path) -> None:
    """Move the .so into ``out_dir`` so that a reader sees it whole or not at all."""
    out_dir.mkdir(mode=0o700, exist_ok=True)
    check_private_dir(out_dir)
    tmp = out_dir / f".{PLUGIN_NAME}.so.{os.getpid()}"
    shutil.copyfile(built, tmp)
    os.chmod(tmp, 0o755)  # not a secret: a library the server maps (never group/other-writable)
    os.replace(tmp, out_dir / f"{PLUGIN_NAME}.so")
