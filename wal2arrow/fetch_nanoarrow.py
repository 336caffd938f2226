#!/usr/bin/env python3
"""Fetch the pinned nanoarrow source distribution and lay out the C sources wal2arrow needs.

    python3 fetch_nanoarrow.py DEST LOCKFILE

``LOCKFILE`` (``nanoarrow.lock``) pins ``nanoarrow==VERSION --hash=sha256:HEX``. The source
distribution is taken, in this order, from ``$NANOARROW_SDIST`` (a file obtained elsewhere), from
a local ``$PIP_FIND_LINKS`` directory that holds it, or downloaded from the package index
(``$PIP_INDEX_URL``, default PyPI's simple API) with urllib. Whatever its origin, its SHA-256 must
equal the lock's. Nothing is built: no pip, no metadata, no build backend. Only the files below are
extracted (regular files, read member by member; no path from the archive is trusted)::

    DEST/include/nanoarrow/...   headers, with a generated, namespaced nanoarrow_config.h
    DEST/include/flatcc/...      flatcc runtime headers
    DEST/c/*.c                   the C files the Makefile may compile into the plugin
    DEST/.complete               the lock's hash, written last

DEST appears whole or not at all (built in a sibling directory, then renamed). Standard library
only: cdc_notebook's plugin build imports this file from its private copy of wal2arrow/ and
passes a progress callback; the Makefile runs it as a script.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

Progress = Callable[[str, int, "int | None"], None]  # (phase, done, total)

DEFAULT_INDEX = "https://pypi.org/simple"
# archive path (below nanoarrow-VERSION/subprojects/) -> DEST/c/<name>
_NANOARROW_C = {
    "common/array.c": "na_array.c", "common/schema.c": "na_schema.c",
    "common/utils.c": "na_utils.c", "common/array_stream.c": "na_array_stream.c",
    "ipc/encoder.c": "na_ipc_encoder.c", "ipc/writer.c": "na_ipc_writer.c",
    "ipc/decoder.c": "na_ipc_decoder.c", "ipc/codecs.c": "na_ipc_codecs.c",
}
_FLATCC_C = {"builder.c": "flatcc_builder.c", "emitter.c": "flatcc_emitter.c",
             "refmap.c": "flatcc_refmap.c", "verifier.c": "flatcc_verifier.c"}


class FetchError(RuntimeError):
    """The pinned source could not be obtained or does not match the lock."""


def read_lock(lock: Path) -> tuple[str, str]:
    """(version, sha256) from nanoarrow.lock."""
    match = re.search(r"^nanoarrow==([0-9][0-9A-Za-z.]*)\s+--hash=sha256:([0-9a-f]{64})\s*$",
                      Path(lock).read_text(), re.MULTILINE)
    if not match:
        raise FetchError(f"{lock}: no line 'nanoarrow==VERSION --hash=sha256:HEX'")
    return match.group(1), match.group(2)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_copy(filename: str, sha256: str) -> Path | None:
    """``$NANOARROW_SDIST``, or ``filename`` in a local ``$PIP_FIND_LINKS`` directory."""
    given = os.environ.get("NANOARROW_SDIST")
    if given:
        have = _sha256(Path(given))
        if have != sha256:
            raise FetchError(f"NANOARROW_SDIST={given} has sha256 {have}; nanoarrow.lock pins "
                             f"{sha256}")
        return Path(given)
    for link in os.environ.get("PIP_FIND_LINKS", "").split():
        if link.startswith("file://"):
            link = urllib.parse.unquote(urllib.parse.urlparse(link).path)
        candidate = Path(link) / filename
        if "://" not in link and candidate.is_file() and _sha256(candidate) == sha256:
            return candidate
    return None


def _index_url(filename: str, index: str) -> str:
    """The download URL of ``filename`` from a PEP 691 (JSON) or PEP 503 (HTML) simple index."""
    page = index.rstrip("/") + "/nanoarrow/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        "User-Agent": "wal2arrow-fetch-nanoarrow"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        body = resp.read().decode("utf-8", "replace")
        content_type = resp.headers.get("Content-Type", "")
    if "json" in content_type:
        for entry in json.loads(body).get("files", []):
            if entry.get("filename") == filename:
                return urllib.parse.urljoin(page, str(entry["url"]))
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            if urllib.parse.urlparse(href).path.rsplit("/", 1)[-1] == filename:
                return urllib.parse.urljoin(page, href.replace("&amp;", "&"))
    raise FetchError(f"{page} does not list {filename}")


def _download(url: str, target: Path, sha256: str, progress: Progress | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "wal2arrow-fetch-nanoarrow"})
    digest = hashlib.sha256()
    done = 0
    with urllib.request.urlopen(request, timeout=60) as resp, open(target, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if progress:
            progress("download", 0, total)
        for chunk in iter(lambda: resp.read(1 << 16), b""):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress("download", done, total)
    if digest.hexdigest() != sha256:
        raise FetchError(f"{url} has sha256 {digest.hexdigest()}; nanoarrow.lock pins {sha256} "
                         "(a tampered or corrupted download: nothing was extracted)")


def _namespaced_config(template: str, version: str) -> str:
    major, minor, patch = (version.split(".") + ["0", "0"])[:3]
    return (template.replace("@NANOARROW_VERSION_MAJOR@", major)
            .replace("@NANOARROW_VERSION_MINOR@", minor)
            .replace("@NANOARROW_VERSION_PATCH@", patch)
            .replace("@NANOARROW_VERSION@", version)
            .replace("@NANOARROW_NAMESPACE_DEFINE@", "#define NANOARROW_NAMESPACE Wal2Arrow"))


def _extract(sdist: Path, version: str, out: Path, progress: Progress | None) -> None:
    """Only the headers and C files wal2arrow needs, each written to a path we choose."""
    root = f"nanoarrow-{version}/subprojects/"
    na_prefix = root + "arrow-nanoarrow/src/nanoarrow/"
    flatcc = re.compile(re.escape(root) + r"flatcc-[0-9A-Za-z._-]+/(include/flatcc/|src/runtime/)(.*)$")
    wanted: dict[str, Path] = {}
    config_in = ""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member in members:
            name = member.name
            if ".." in name.split("/"):
                continue
            if name.startswith(na_prefix):
                rel = name[len(na_prefix):]
                if rel.endswith(".h"):
                    wanted[name] = out / "include" / "nanoarrow" / rel
                elif rel in _NANOARROW_C:
                    wanted[name] = out / "c" / _NANOARROW_C[rel]
                elif rel == "nanoarrow_config.h.in":
                    config_in = name
            else:
                match = flatcc.match(name)
                if match and match.group(1) == "include/flatcc/" and name.endswith(".h"):
                    wanted[name] = out / "include" / "flatcc" / match.group(2)
                elif match and match.group(1) == "src/runtime/" and match.group(2) in _FLATCC_C:
                    wanted[name] = out / "c" / _FLATCC_C[match.group(2)]
        missing = {f"{na_prefix}{k}" for k in _NANOARROW_C} - set(wanted)
        if missing or not config_in or len([p for p in wanted.values()
                                            if p.parent.name == "c"]) != 12:
            raise FetchError(f"{sdist.name} does not have the expected layout "
                             f"(missing: {sorted(missing) or 'nanoarrow_config.h.in or flatcc'})")
        for count, (name, target) in enumerate(sorted(wanted.items()), 1):
            source = tar.extractfile(name)
            if source is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as fh:
                shutil.copyfileobj(source, fh)
            if progress:
                progress("extract", count, len(wanted))
        source = tar.extractfile(config_in)
        assert source is not None
        template = source.read().decode()
    (out / "include" / "nanoarrow" / "nanoarrow_config.h").write_text(
        _namespaced_config(template, version))


def download_sdist(lock: str | Path, directory: str | Path, *,
                   index: str | None = None) -> Path:
    """Put the pinned source distribution itself in ``directory`` (checked against the lock):
    for a wheelhouse that an offline build reads through ``PIP_FIND_LINKS``."""
    version, sha256 = read_lock(Path(lock))
    filename = f"nanoarrow-{version}.tar.gz"
    target = Path(directory) / filename
    if target.is_file() and _sha256(target) == sha256:
        return target
    local = _local_copy(filename, sha256)
    if local is not None:
        shutil.copyfile(local, target)
        return target
    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    _download(_index_url(filename, index), target, sha256, None)
    return target


def fetch(dest: str | Path, lock: str | Path, *, progress: Progress | None = None,
          index: str | None = None) -> Path:
    """Make ``dest`` hold the pinned nanoarrow's C sources; a no-op when it already does."""
    dest, lock = Path(dest), Path(lock)
    version, sha256 = read_lock(lock)
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text().strip() == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    filename = f"nanoarrow-{version}.tar.gz"
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        sdist = _local_copy(filename, sha256)
        if sdist is None:
            index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
            sdist = work / filename
            try:
                _download(_index_url(filename, index), sdist, sha256, progress)
            except OSError as exc:
                raise FetchError(
                    f"could not download nanoarrow {version} from {index}: {exc}. Fix: make the "
                    f"package index reachable, or download {filename} (sha256 {sha256}) "
                    "yourself and pass NANOARROW_SDIST=<its path>") from exc
        out = work / "out"
        _extract(sdist, version, out, progress)
        (out / ".complete").write_text(sha256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(out, dest)
        except OSError:
            if not (marker.is_file() and marker.read_text().strip() == sha256):
                raise  # someone else finished first: theirs is as good
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        fetch(argv[1], argv[2])
    except FetchError as exc:
        print(f"wal2arrow: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
