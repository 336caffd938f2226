"""The throwaway PostgreSQL: versions, settings, plugin loading, clean-up, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from cdc_notebook.errors import (
    BinariesNotFound,
    DataDirNotWritable,
    PluginBuildError,
    PortInUse,
)
from cdc_notebook.server.build import build_plugin
from cdc_notebook.server.postgres import PostgresServer, find_installation

REPO = Path(__file__).resolve().parent.parent


def _postmaster_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, path: Path, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _postmaster_alive(pid) and not path.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"postmaster {pid} alive={_postmaster_alive(pid)} "
                         f"dir exists={path.exists()} after {timeout} s")


def test_server_is_configured_for_logical_decoding(pg: PostgresServer, pg_version: str) -> None:
    with pg.connect() as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        assert version.startswith(pg_version)
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', "
            "'max_replication_slots', 'max_wal_senders', 'max_slot_wal_keep_size', "
            "'listen_addresses')").fetchall())
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 10
    assert int(settings["max_wal_senders"]) >= 10
    assert int(settings["max_slot_wal_keep_size"]) > 0  # bounded (MB)
    assert settings["listen_addresses"] == "127.0.0.1"


def test_wal2arrow_loads_and_creates_a_slot(pg: PostgresServer, unique_name) -> None:
    slot = unique_name("slot")
    with pg.connect() as conn:
        if pg.supports_output_plugin_libraries:
            allowed = conn.execute("SHOW output_plugin_libraries").fetchone()[0]
            assert "wal2arrow" in [p.strip() for p in allowed.split(",")]
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2arrow')", (slot,))
        try:
            plugin = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s",
                                  (slot,)).fetchone()[0]
            assert plugin == "wal2arrow"
            conn.execute("SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL)",
                         (slot,))
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_plugin_is_loaded_from_outside_the_server_lib_dir(pg: PostgresServer) -> None:
    assert pg.plugin_dir is not None and (pg.plugin_dir / "wal2arrow.so").is_file()
    libdir = subprocess.run([str(pg.pg_config), "--pkglibdir"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert not (Path(libdir) / "wal2arrow.so").exists()
    with pg.connect() as conn:
        path = conn.execute("SHOW dynamic_library_path").fetchone()[0]
    assert str(pg.plugin_dir) in path


def test_tcp_needs_the_generated_password(pg: PostgresServer) -> None:
    with pg.connect("tcp") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    params = pg.conninfo("tcp")
    params["password"] = "wrong"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**params)
    assert pg.password not in repr(pg)


def test_runs_as_an_unprivileged_user(pg: PostgresServer) -> None:
    uid = os.stat(f"/proc/{pg.pid}").st_uid
    assert uid != 0
    if os.geteuid() != 0:
        assert uid == os.geteuid()


def test_stop_removes_everything(pg_version: str) -> None:
    server = PostgresServer(version=int(pg_version)).start()
    pid, path = server.pid, server.instance_dir
    assert _postmaster_alive(pid) and path.is_dir()
    server.stop()
    server.stop()  # twice is fine
    assert not _postmaster_alive(pid)
    assert not path.exists()


def test_restart_and_crash_recovery_keep_data(pg_factory) -> None:
    server = pg_factory()
    with server.connect() as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1), (2)")
    server.restart()
    server.kill()
    server.start_again()
    with server.connect() as conn:
        assert conn.execute("SELECT sum(x) FROM kept").fetchone() == (3,)


def test_custom_settings_win(pg_factory) -> None:
    server = pg_factory(settings={"wal_level": "replica", "max_slot_wal_keep_size": "64MB"})
    with server.connect() as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
        assert conn.execute("SHOW max_slot_wal_keep_size").fetchone() == ("64MB",)


# ---------------------------------------------------------------- bad input, named fixes


def test_version_not_available_names_the_fix() -> None:
    with pytest.raises(BinariesNotFound, match=r"PostgreSQL 9 is not installed.*\n  Fix: install"):
        find_installation(9)


def test_binaries_not_found_at_a_path(tmp_path: Path) -> None:
    with pytest.raises(BinariesNotFound, match="no pg_config at"):
        find_installation(str(tmp_path / "nowhere" / "bin"))


def test_port_in_use(pg: PostgresServer, pg_version: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port}.*already in use.*\n  Fix: "):
            PostgresServer(version=int(pg_version), port=port).start()


def test_data_dir_not_writable(tmp_path: Path, pg_version: str) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    with pytest.raises(DataDirNotWritable, match="cannot create the server's data directory"):
        PostgresServer(version=int(pg_version), base_dir=target / "sub").start()


def test_plugin_compile_error_quotes_the_compiler(tmp_path: Path, monkeypatch, pg: PostgresServer
                                                  ) -> None:
    broken = tmp_path / "wal2arrow"
    subprocess.run(["cp", "-r", str(REPO / "wal2arrow"), str(broken)], check=True)
    for junk in ("vendor", ".deps"):
        subprocess.run(["rm", "-rf", str(broken / junk)], check=True)
    (broken / "src" / "zz_broken.c").write_text("int broken(void) { return undeclared_thing; }\n")
    monkeypatch.setenv("CDC_WAL2ARROW_SRC", str(broken))
    events: list = []
    with pytest.raises(PluginBuildError, match=r"(?s)failed to build.*undeclared_thing"):
        build_plugin(pg.pg_config, progress=events.append)
    # the build reports its progress (issue 15: a notebook shows it as a bar), here to its end
    compile_events = [e for e in events if e.step == "compile"]
    assert compile_events[0].state == "start" and compile_events[0].total
    assert compile_events[0].unit == "files" and compile_events[-1].state == "failed"


# ---------------------------------------------------------------- the demo, interrupted or killed


def _start_demo_holding(version: str) -> tuple[subprocess.Popen[str], Path, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc_notebook", "demo", "--pg", version, "--hold"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True)  # its own process group, like a terminal's foreground job
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("READY "):
            _, path, pid = line.split()
            return proc, Path(path), int(pid)
        if time.monotonic() > deadline:
            break
    proc.kill()
    _out, err = proc.communicate()
    raise AssertionError(f"demo did not become ready: {err}")


def test_ctrl_c_leaves_nothing_behind(pg_version: str) -> None:
    proc, path, pid = _start_demo_holding(pg_version)
    assert _postmaster_alive(pid) and path.is_dir()
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "server was stopped" in err
    _wait_gone(pid, path, timeout=5)


def test_sigkill_leaves_nothing_behind(pg_version: str) -> None:
    proc, path, pid = _start_demo_holding(pg_version)
    os.kill(proc.pid, signal.SIGKILL)  # atexit never runs: the watchdog must clean up
    proc.communicate(timeout=10)
    _wait_gone(pid, path)
