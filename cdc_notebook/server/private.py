"""Private files: the plugin cache and the servers' directories belong to one user and no one
else can write, plant or read anything in them.

* Directories are created 0700 and checked with ``os.lstat``: a real directory (never a symbolic
  link), owned by the expected user, writable by no one else. Their ancestors must be owned by
  root or that user and not writable by others, unless sticky (``/tmp``), so nobody can rename
  the directory away and put another in its place. Anything else is refused with
  :class:`~cdc_notebook.errors.UnsafePath`, which names the path and the fix.
* Secret files (the generated password) are created with their final mode:
  ``os.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)``, never chmod'ed afterwards;
  a file or symbolic link already at that path is an error, not something to write through.
* Logs are opened the same way (``O_NOFOLLOW``, 0600) and read back with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from cdc_notebook.errors import UnsafePath

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def cache_root() -> Path:
    """The user's cache for cdc_notebook: ``$CDC_NOTEBOOK_CACHE``, else
    ``$XDG_CACHE_HOME/cdc_notebook``, else ``~/.cache/cdc_notebook`` (not created here)."""
    env = os.environ.get("CDC_NOTEBOOK_CACHE")
    if env:
        return Path(os.path.abspath(env))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative path is to be ignored
        return Path(xdg) / "cdc_notebook"
    home = os.environ.get("HOME") or pwd.getpwuid(os.geteuid()).pw_dir
    return Path(home) / ".cache" / "cdc_notebook"


def _group_is_private(gid: int, uid: int) -> bool:
    """The user-private-group scheme: a group whose only member is ``uid``'s user."""
    name = user_name(uid)
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    members = set(group.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == gid}
    return members <= {name}


def _writable_by_others(st: os.stat_result, uid: int, *, sticky_ok: bool) -> bool:
    if sticky_ok and st.st_mode & stat.S_ISVTX:
        return False
    if st.st_mode & 0o002:
        return True
    return bool(st.st_mode & 0o020) and not _group_is_private(st.st_gid, uid)


def check_ancestors(path: Path, uid: int | None = None) -> None:
    """Every directory from ``/`` down to ``path`` (resolved) is owned by root or ``uid`` and
    not writable by others (sticky directories such as /tmp excepted)."""
    uid = os.geteuid() if uid is None else uid
    real = Path(os.path.realpath(path))
    for directory in [*reversed(real.parents), real]:
        st = os.stat(directory)
        if st.st_uid not in (0, uid):
            raise UnsafePath(
                f"refusing to use {path}: {directory} belongs to {user_name(st.st_uid)}, who "
                "could replace what is below it",
                hint="choose a directory inside your own home or cache directory")
        if _writable_by_others(st, uid, sticky_ok=True):
            raise UnsafePath(
                f"refusing to use {path}: {directory} is writable by other users "
                f"(mode {stat.filemode(st.st_mode)}), who could replace what is below it",
                hint=f"chmod go-w {directory}, or choose another directory")


def check_private_dir(path: Path, uid: int | None = None) -> os.stat_result:
    """``path`` is a real directory (lstat: no symbolic link), owned by ``uid`` (default: us),
    writable by no one else."""
    uid = os.geteuid() if uid is None else uid
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(
            f"refusing to use {path}: it is a symbolic link (to {os.readlink(path)}), which "
            "someone may have planted",
            hint=f"remove it (rm {path}); the kit creates its own private directory there")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"refusing to use {path}: it is not a directory",
                         hint="remove it, or choose another directory")
    if st.st_uid != uid:
        raise UnsafePath(
            f"refusing to use {path}: it belongs to {user_name(st.st_uid)}, not to "
            f"{user_name(uid)}; anything in it (a planted wal2arrow.so) could be theirs",
            hint="remove it (as its owner or root), or point the kit elsewhere "
            "(CDC_NOTEBOOK_CACHE=<a directory of yours>, or base_dir=)")
    if _writable_by_others(st, uid, sticky_ok=False):
        raise UnsafePath(
            f"refusing to use {path}: it is writable by other users "
            f"(mode {stat.filemode(st.st_mode)}), who could have planted files in it",
            hint=f"remove it and let the kit create it again (0700), or chmod 700 {path} "
            "if you are sure nothing in it was planted")
    return st


def ensure_private_dir(path: str | Path, uid: int | None = None) -> Path:
    """Create ``path`` 0700 (and missing parents, 0700), or check the existing one; refuse a
    directory that is not private. Returns the absolute path."""
    uid = os.geteuid() if uid is None else uid
    path = Path(os.path.abspath(path))
    missing = []
    for parent in [path, *path.parents]:
        if os.path.lexists(parent):
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing one
    check_ancestors(path.parent, uid)
    st = check_private_dir(path, uid)
    if st.st_mode & 0o077:
        # Ours, and nobody else could write: only narrow it (an older cache was 0755).
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def private_subdir(parent: Path, name: str, uid: int | None = None) -> Path:
    """``parent/name`` as a private directory (``parent`` already checked)."""
    path = parent / name
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_private_dir(path, uid)
    return path


def write_secret_file(path: Path, data: bytes, *, uid: int = -1, gid: int = -1) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuse if anything (a file, a symbolic
    link) is already there. ``uid``/``gid``: hand the new file to that user (``fchown`` on the
    open descriptor, before anything is written)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    except FileExistsError:
        what = "a symbolic link" if os.path.islink(path) else "a file"
        raise UnsafePath(
            f"refusing to write a secret to {path}: {what} is already there (planted?); "
            "nothing was written through it",
            hint="remove it; the kit creates this file itself, with mode 0600") from None
    try:
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def open_private_log(path: Path, *, uid: int = -1, gid: int = -1) -> int:
    """An append-only descriptor on ``path`` (created 0600, never through a symbolic link),
    handed to ``uid``/``gid`` when given. The caller closes it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    except OSError as exc:
        # ELOOP: O_NOFOLLOW met a link; EACCES: the kernel's protected_symlinks/_regular met
        # someone else's link or file in a sticky directory
        if os.path.islink(path) or exc.errno == errno.ELOOP:
            raise UnsafePath(f"refusing to log to {path}: it is a symbolic link (planted?)",
                             hint=f"remove {path}; the kit creates the log itself, 0600"
                             ) from None
        if exc.errno == errno.EACCES and os.path.lexists(path):
            raise UnsafePath(f"refusing to log to {path}: it belongs to "
                             f"{user_name(os.lstat(path).st_uid)} (planted?)",
                             hint=f"remove {path}; the kit creates the log itself, 0600"
                             ) from None
        raise
    try:
        st = os.fstat(fd)
        owners = {os.geteuid(), uid} - {-1}
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o077:
            raise UnsafePath(f"refusing to log to {path}: not a private regular file of ours "
                             f"(mode {stat.filemode(st.st_mode)}, owner "
                             f"{user_name(st.st_uid)})", hint=f"remove {path}")
        if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
            os.fchown(fd, uid, gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_text(path: Path, limit: int = 1 << 20) -> str:
    """The last ``limit`` bytes of a regular file, opened without following a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file", hint=f"remove {path}")
        if st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")
