"""Another local user attacks the throwaway server's files (issue 14), and every attack fails
with a clear error or is ignored safely.

The attacker is a second OS account, ``cdcevil`` (created like the server's ``cdcpg`` when
missing); its moves run as that account (``runuser``) while this process (root in CI, as README's
main path on a shared machine) starts servers:

1. a **planted cache**: a directory at the cache path we are told to use, owned by the attacker,
   holding a library at the predictable ``plugins/pg<major>-<key>-<hash>/wal2arrow.so``; the same
   through a symbolic link, and in a directory anyone may write; and at the old predictable
   ``/var/tmp/cdc_notebook-cache`` → refused (``UnsafePath`` naming the owner, the link or the
   mode), or not looked at; the planted code never runs;
2. a **symbolic link for the password file**: a server directory the attacker owns with
   ``pwfile`` pointing at a file of ours → refused before anything is written; a secret file
   or a log opened on a planted link → refused, the target untouched;
3. **racing readers**: while servers start and stop, the attacker keeps listing the temporary
   directory and trying to open every server's ``pwfile`` and ``server.log`` (and to plant a
   ``pwfile`` link in them) → not one read or write succeeds.

These need root (to create the second account). CI runs as root; an ordinary developer's run
skips them.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_notebook.errors import UnsafePath
from cdc_notebook.server.build import build_plugin, cache_dir, plugin_path
from cdc_notebook.server.postgres import SERVER_OS_USER, PostgresServer, find_installation
from cdc_notebook.server.private import open_private_log, write_secret_file

ATTACKER = "cdcevil"
OLD_CACHE = Path("/var/tmp/cdc_notebook-cache")
OLD_SERVERS = Path("/var/tmp/cdc_notebook-servers")

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to create the attacking OS account")

EVIL_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void pwned(void)
{
    const char *dir = MARKER_DIR;
    char path[4096];
    int fd;
    snprintf(path, sizeof path, "%s/pwned-%d", dir, (int) getpid());
    fd = open(path, O_WRONLY | O_CREAT, 0666);
    if (fd >= 0) close(fd);
}
void _PG_init(void) {}
void _PG_output_plugin_init(void *cb) { (void) cb; }
"""


def _as_attacker(code: str, *args: str, check: bool = True,
                 background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    cmd = ["runuser", "-u", ATTACKER, "--", "/usr/bin/python3", "-c", code, *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd="/")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def attacker() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", ATTACKER], check=True,
                       capture_output=True)
        return pwd.getpwnam(ATTACKER)


@pytest.fixture
def arena(attacker: pwd.struct_passwd) -> Iterator[Path]:
    """A world-writable, sticky directory like /tmp, where both of us can create things, and a
    marker directory the planted library would write to if it ever ran."""
    root = Path(tempfile.mkdtemp(prefix="cdc-attack-"))
    os.chmod(root, 0o1777)
    (root / "markers").mkdir()
    os.chmod(root / "markers", 0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def evil_library(arena: Path) -> Path:
    source = arena / "evil.c"
    source.write_text(EVIL_C.replace("MARKER_DIR", json.dumps(str(arena / "markers"))))
    out = arena / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(source)], check=True,
                   capture_output=True)
    os.chmod(out, 0o755)
    return out


@pytest.fixture
def victim(arena: Path) -> Iterator[Path]:
    """A file of ours an attacker would love to overwrite (or read)."""
    path = Path(tempfile.mkdtemp(prefix="cdc-victim-")) / "precious"
    path.write_text("root's precious file\n")
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


PLANT = """
import os, shutil, sys
lib, target = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(target), exist_ok=True)
shutil.copyfile(lib, target)
os.chmod(target, 0o755)
"""


def _markers(arena: Path) -> list[str]:
    return sorted(p.name for p in (arena / "markers").iterdir())


# --------------------------------------------------------------------------- 1. planted cache


def test_a_planted_cache_is_refused_and_its_library_never_runs(
        arena: Path, evil_library: Path, pg_version: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    inst = find_installation(int(pg_version))
    # (a) the attacker owns the cache directory we were pointed at, with a library at the
    # predictable path
    shared = arena / "shared-cache"
    monkeypatch.setenv("CDC_NOTEBOOK_CACHE", str(shared))
    _as_attacker(PLANT, str(evil_library), str(plugin_path(inst.pg_config)))
    for start in (lambda: build_plugin(inst.pg_config, progress=None),
                  lambda: PostgresServer(version=int(pg_version), progress=None).start()):
        with pytest.raises(UnsafePath, match=f"belongs to {ATTACKER}.*planted wal2arrow.so"):
            start()
    # (b) a symbolic link at that path to the attacker's directory
    link = arena / "linked-cache"
    _as_attacker(f"import os; os.symlink({str(shared)!r}, {str(link)!r})")
    monkeypatch.setenv("CDC_NOTEBOOK_CACHE", str(link))
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        PostgresServer(version=int(pg_version), progress=None).start()
    # (c) a directory of ours that anyone may write, where the attacker planted the library
    loose = arena / "loose-cache"
    loose.mkdir()
    os.chmod(loose, 0o777)
    monkeypatch.setenv("CDC_NOTEBOOK_CACHE", str(loose))
    _as_attacker(PLANT, str(evil_library), str(plugin_path(inst.pg_config)))
    with pytest.raises(UnsafePath, match="writable by other users"):
        PostgresServer(version=int(pg_version), progress=None).start()
    # (d) inside a directory the attacker owns (they could swap ours for theirs)
    evil_home = arena / "evil-home"
    _as_attacker(f"import os; os.mkdir({str(evil_home)!r}, 0o755)")
    monkeypatch.setenv("CDC_NOTEBOOK_CACHE", str(evil_home / "cache"))
    with pytest.raises(UnsafePath, match=f"belongs to {ATTACKER}"):
        PostgresServer(version=int(pg_version), progress=None).start()
    assert _markers(arena) == []


def test_the_old_predictable_paths_are_not_looked_at(
        arena: Path, evil_library: Path, pg_version: str) -> None:
    """The attacker plants a library where the kit used to cache plugins as root
    (/var/tmp/cdc_notebook-cache) and a password-file trap where it used to put servers: the kit
    uses root's private cache and a fresh mkdtemp directory instead."""
    inst = find_installation(int(pg_version))
    relative = plugin_path(inst.pg_config).relative_to(cache_dir())
    created = []
    for old in (OLD_CACHE, OLD_SERVERS):
        if not old.exists():
            _as_attacker(f"import os; os.mkdir({str(old)!r}, 0o777)")
            created.append(old)
    try:
        if OLD_CACHE in created:
            _as_attacker(PLANT, str(evil_library), str(OLD_CACHE / relative))
        server = PostgresServer(version=int(pg_version), progress=None).start()
        try:
            assert server.instance_dir is not None and server.plugin_dir is not None
            assert OLD_SERVERS not in server.instance_dir.parents
            assert server.plugin_dir == server.instance_dir / "lib"  # a copy of root's build
            with server.connect() as conn:
                conn.execute("SELECT * FROM pg_create_logical_replication_slot("
                             "'attack_check', 'wal2arrow', true)")
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                maps = Path(f"/proc/{backend}/maps").read_text()
            loaded = {line.split()[-1] for line in maps.splitlines() if "wal2arrow" in line}
            assert loaded == {str(server.plugin_dir / "wal2arrow.so")}, loaded
        finally:
            server.stop()
    finally:
        for old in created:
            shutil.rmtree(old, ignore_errors=True)
    assert _markers(arena) == []


def test_roots_cache_is_private_and_the_server_user_gets_copies(pg_version: str) -> None:
    server = PostgresServer(version=int(pg_version), progress=None).start()
    try:
        cache = cache_dir()
        st = os.lstat(cache)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
        # the server's user cannot even look into it ...
        probe = subprocess.run(["runuser", "-u", SERVER_OS_USER, "--", "ls", str(cache)],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr
        # ... and runs from its own private instance directory
        assert server.instance_dir is not None
        user = pwd.getpwnam(SERVER_OS_USER)
        for path, mode in ((server.instance_dir, 0o700), (server.data_dir, 0o700),
                           (server.socket_dir, 0o700), (server.log_path, 0o600)):
            st = os.lstat(path)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, mode), path
        so = os.lstat(server.instance_dir / "lib" / "wal2arrow.so")
        assert so.st_uid == 0 and not so.st_mode & 0o022  # root's copy, read-only to cdcpg
        assert not (server.instance_dir / "pwfile").exists()  # gone once initdb hashed it
    finally:
        server.stop()


# --------------------------------------------------------------------------- 2. symbolic links


def test_a_server_directory_with_a_planted_password_link_is_refused(
        arena: Path, victim: Path, pg_version: str) -> None:
    before = victim.read_bytes()
    base = arena / "servers"  # what /var/tmp/cdc_notebook-servers used to be: the attacker's
    _as_attacker(f"import os; os.mkdir({str(base)!r}, 0o777); "
                 f"os.symlink({str(victim)!r}, {str(base / 'pwfile')!r})")
    with pytest.raises(UnsafePath, match=f"belongs to {ATTACKER}"):
        PostgresServer(version=int(pg_version), base_dir=base, progress=None).start()
    assert victim.read_bytes() == before
    assert os.lstat(victim).st_uid == 0  # never handed to the server's user


def test_secret_files_and_logs_are_never_written_through_a_link(arena: Path,
                                                                victim: Path) -> None:
    before = victim.read_bytes()
    trap, log_trap = arena / "pwfile", arena / "server.log"
    _as_attacker(f"import os; os.symlink({str(victim)!r}, {str(trap)!r}); "
                 f"os.symlink({str(victim)!r}, {str(log_trap)!r})")
    with pytest.raises(UnsafePath, match="already there"):
        write_secret_file(trap, b"the password\n")
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_private_log(log_trap)
    # a plain file planted there is refused the same way (never reused with its mode)
    planted = arena / "planted-pwfile"
    _as_attacker(f"open({str(planted)!r}, 'w').close(); import os; os.chmod({str(planted)!r}, 0o666)")
    with pytest.raises(UnsafePath, match="already there"):
        write_secret_file(planted, b"the password\n")
    assert planted.read_bytes() == b""
    assert victim.read_bytes() == before
    # created by us: 0600 from the start
    fresh = Path(tempfile.mkdtemp()) / "pwfile"
    write_secret_file(fresh, b"x")
    assert stat.S_IMODE(os.lstat(fresh).st_mode) == 0o600
    shutil.rmtree(fresh.parent)


# --------------------------------------------------------------------------- 3. racing readers

RACER = r"""
import glob, json, os, sys, time
pattern, victim, stop_file, deadline = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + 300
seen, attempts, breaches = set(), 0, []
while not os.path.exists(stop_file) and time.time() < deadline:
    for d in glob.glob(pattern):
        seen.add(d)
        for name in ("pwfile", "server.log", "data/PG_VERSION"):
            attempts += 1
            try:
                with open(os.path.join(d, name), "rb") as fh:
                    breaches.append(f"read {name}: {fh.read(80)!r}")
            except OSError:
                pass
        try:
            os.listdir(d)
            breaches.append(f"listed {d}")
        except OSError:
            pass
        try:
            os.symlink(victim, os.path.join(d, "pwfile"))
            breaches.append(f"planted a link in {d}")
        except OSError:
            pass
    time.sleep(0.002)
print(json.dumps({"seen": len(seen), "attempts": attempts, "breaches": breaches}))
"""


def test_racing_readers_get_neither_the_password_nor_the_log(
        arena: Path, victim: Path, pg_version: str) -> None:
    base = Path(tempfile.gettempdir())
    stop_file = arena / "stop"
    racer = _as_attacker(RACER, str(base / "cdc_notebook-pg-*"), str(victim), str(stop_file),
                         background=True)
    assert isinstance(racer, subprocess.Popen)
    before = victim.read_bytes()
    try:
        time.sleep(0.5)  # the racer is looping
        for _ in range(4):
            with PostgresServer(version=int(pg_version), progress=None) as server:
                with server.connect() as conn:  # a failed statement: its text goes to the log
                    try:
                        conn.execute("SELECT 'some private row data' / 0")
                    except Exception:  # noqa: BLE001 - the point is the log line
                        pass
                with server.connect("tcp") as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                assert "private row data" in server.log_tail(50)
    finally:
        stop_file.touch()
        out, err = racer.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert result, err
    print(f"racer: {result['seen']} server directories seen, {result['attempts']} reads tried")
    assert result["seen"] >= 1 and result["attempts"] > 0, result
    assert result["breaches"] == [], result["breaches"]
    assert victim.read_bytes() == before


def test_as_root_an_installation_out_of_reach_is_linked_into_the_instance(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtual environment under /root cannot be entered by cdcpg: the server then runs a
    private copy of the installation (hard links to root's files, in root-owned directories)
    inside its own instance directory — never a shared cache another user could plant in."""
    from cdc_notebook.server import postgres

    inst = find_installation("embedded")
    root = inst.bindir.parent
    real = postgres._readable_by_others
    monkeypatch.setattr(postgres, "_readable_by_others",
                        lambda path: False if Path(path).is_relative_to(root) else real(path))
    events = []
    server = PostgresServer(version="embedded", progress=events.append).start()
    try:
        assert server.instance_dir is not None
        copy = server._runtime.bindir.parent
        assert copy.is_relative_to(server.instance_dir / "pg")
        assert server.pg_config == inst.pg_config  # builds use root's own installation
        postgres_bin = copy / "bin" / "postgres"
        assert os.path.samefile(postgres_bin, inst.bindir / "postgres") or \
            os.lstat(postgres_bin).st_uid == 0
        assert os.lstat(copy / "bin").st_uid == 0
        assert not os.lstat(copy / "bin").st_mode & 0o022
        assert any(e.step == "copy" and e.state == "done" for e in events)
        with open(f"/proc/{server.pid}/cmdline", "rb") as fh:
            assert fh.read().split(b"\0")[0] == str(postgres_bin).encode()
        with server.connect() as conn:
            conn.execute("SELECT * FROM pg_create_logical_replication_slot("
                         "'linked_check', 'wal2arrow', true)")
    finally:
        server.stop()
    assert not copy.exists()
    assert not any(e.state == "failed" for e in events)
