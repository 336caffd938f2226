"""The tutorial notebooks run top to bottom in a real kernel (nbclient), each against its own
embedded server; each ends with cells that compare its frames against SQL.

And the kernel-friendly reader in a real kernel (jupyter_client): an interrupted cell does not
stop the reader, and a kernel shut down or killed leaves no slot of its own and no server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_client
import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = REPO / "tests" / "artifacts"


def test_every_tutorial_is_here() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_quickstart", "02_patterns_and_partitioning",
                     "03_setup_teardown_and_slot_lag", "04_snapshot_and_mirror_consistency",
                     "05_pgoutput_without_the_plugin"]


def test_a_changelog_shown_in_a_tutorial_shows_what_a_delete_deleted() -> None:
    """Issue 15: the changelog opened on rows of nulls. The workload deletes in every
    transaction, so the newest changes are often deletes, whose after-image is null: a
    tutorial that shows chosen changelog columns shows the before-image (the deleted key)."""
    shown = 0
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and ".changelog(" in source and ".select(" in source:
                shown += 1
                assert "_cdc_before" in source, (path.name, source)
    assert shown >= 3


# Run first in each tutorial's kernel: every server.stop() records, just before, the slots and
# publications still on the server (every database). A tutorial leaves none: a temporary
# slot and its kit publication go with the reader, a permanent one is torn down on purpose.
LEFTOVERS_WATCH = """
from cdc_notebook.server.postgres import PostgresServer as _Server

_cdc_leftovers = []
_cdc_stop = _Server.stop


def _cdc_recording_stop(self):
    if self.port is not None:
        with self.connect() as conn:
            found = {"slots": [r[0] for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots").fetchall()], "publications": []}
            names = [r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn").fetchall()]
        for name in names:
            with self.connect(dbname=name) as conn:
                found["publications"] += [f"{name}.{r[0]}" for r in conn.execute(
                    "SELECT pubname FROM pg_publication").fetchall()]
        _cdc_leftovers.append(found)
    return _cdc_stop(self)


_Server.stop = _cdc_recording_stop
"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), \
        "notebooks are committed without outputs"
    tutorial = list(book.cells)
    book.cells = [nbformat.v4.new_code_cell(LEFTOVERS_WATCH), *tutorial,
                  nbformat.v4.new_code_cell("import json\nprint(json.dumps(_cdc_leftovers))")]
    client = nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(book, ARTIFACTS / path.name)  # executed copy, for a look afterwards
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"
              or (o.get("name") == "stderr" and "Traceback" in o.get("text", ""))]
    assert not errors, errors
    # The last code cells are the checks; they ran (nbclient raises on a failing cell).
    assert any("assert" in c.source for c in tutorial[-4:] if c.cell_type == "code")
    # Nothing left on the server when the tutorial stopped it: no slot, no publication.
    leftovers = json.loads(book.cells[-1].outputs[0]["text"])
    assert leftovers, "the tutorial never stopped its server"
    assert all(found == {"slots": [], "publications": []} for found in leftovers), leftovers


# --------------------------------------------------------------------------- a real kernel


class Kernel:
    """A kernel of its own process (what Jupyter starts), driven like a notebook would."""

    def __init__(self) -> None:
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(REPO))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell; returns its stdout; fails the test on an error."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        assert reply["content"]["status"] == "ok" and not errors, "".join(errors)
        return "".join(out)

    def value(self, expression: str) -> Any:
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expression}))"))

    def close(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    k.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from cdc_notebook.server.postgres import PostgresServer

    with PostgresServer() as pg:  # PostgreSQL 18 (notebooks run once, not per version)
        yield pg


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


SETUP = """
from cdc_notebook.live.tables import LiveReader
from cdc_notebook.stream.cdc_stream import CDCStream
conninfo = {conninfo!r}
stream = CDCStream(conninfo, {pattern!r}, slot_name={slot!r}, temporary={temporary})
reader = LiveReader(stream).start()
"""


def test_an_interrupted_cell_leaves_the_reader_streaming_and_shutdown_drops_the_slot(
        server: Any, kernel: Kernel) -> None:
    with server.connect() as conn:
        conn.execute("CREATE SCHEMA ki; CREATE TABLE ki.t (id bigint PRIMARY KEY, v int); "
                     "CREATE SCHEMA kp; CREATE TABLE kp.t (id bigint PRIMARY KEY, v int)")
    conninfo = server.conninfo()
    kernel.run(SETUP.format(conninfo=conninfo, pattern="ki.*", slot="cdcnb_kernel_temp",
                            temporary=True))
    # A permanent slot the user chose explicitly, in the same kernel.
    kernel.run(SETUP.format(conninfo=conninfo, pattern="kp.*", slot="cdcnb_kernel_keep",
                            temporary=False).replace("stream =", "kept =")
               .replace("LiveReader(stream)", "LiveReader(kept)").replace("reader =", "kept_r ="))
    # A long cell writing rows one transaction at a time, interrupted as a user would.
    kernel.client.execute(
        "import psycopg\n"
        "w = psycopg.connect(**conninfo, autocommit=True)\n"
        "i = 0\n"
        "while True:\n"
        "    w.execute('INSERT INTO ki.t VALUES (%s, 1)', [i]); i += 1\n")
    deadline = time.monotonic() + 60
    with server.connect() as conn:
        while conn.execute("SELECT count(*) FROM ki.t").fetchone()[0] < 200:
            assert time.monotonic() < deadline, "the writing cell did not start"
            time.sleep(0.1)
    kernel.manager.interrupt_kernel()
    reply = kernel.client.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    state = kernel.value("[reader.state, all(t.is_alive() for t in reader._threads)]")
    assert state == ["running", True]
    before = kernel.value("reader.catch_up(60) and reader['ki.t'].mirror().height")
    with server.connect() as conn:
        conn.execute("INSERT INTO ki.t SELECT g, 2 FROM generate_series(1000000, 1004999) g")
        expected = conn.execute("SELECT count(*) FROM ki.t").fetchone()[0]
    after = kernel.value("reader.catch_up(60) and reader['ki.t'].mirror().height")
    assert after == expected == before + 5000  # the frame still grows after the interrupt
    with server.connect() as conn:
        slots = dict(conn.execute("SELECT slot_name, active FROM pg_replication_slots "
                                  "WHERE slot_name LIKE 'cdcnb_kernel_%'").fetchall())
        assert slots == {"cdcnb_kernel_temp": True, "cdcnb_kernel_keep": True}
    pid = kernel.manager.provisioner.pid if kernel.manager.provisioner else None
    kernel.client.stop_channels()
    kernel.manager.shutdown_kernel(now=False)  # what "Shut Down Kernel" does
    assert pid is None or _gone(pid)
    with server.connect() as conn:
        deadline = time.monotonic() + 30
        while True:
            slots = dict(conn.execute("SELECT slot_name, active FROM pg_replication_slots "
                                      "WHERE slot_name LIKE 'cdcnb_kernel_%'").fetchall())
            if slots == {"cdcnb_kernel_keep": False} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # The temporary slot went with the kernel; the permanent one stays, unused.
        assert slots == {"cdcnb_kernel_keep": False}
        conn.execute("SELECT pg_drop_replication_slot('cdcnb_kernel_keep')")


@pytest.mark.parametrize("how", ["shutdown", "restart"])
def test_a_kernel_shut_down_or_restarted_leaves_no_server(kernel: Kernel, how: str) -> None:
    info = kernel.value(
        "(lambda s: [s.pid, str(s.instance_dir)])(__import__('cdc_notebook.server.postgres', "
        "fromlist=['x']).PostgresServer().start())")
    pid, directory = int(info[0]), Path(info[1])
    assert Path(directory).is_dir()
    # A reader streaming from it, as in the quickstart.
    kernel.run("import gc\nfrom cdc_notebook.server.postgres import PostgresServer\n"
               "server = [o for o in gc.get_objects() if isinstance(o, PostgresServer)][0]\n"
               "c = server.connect(); c.execute('CREATE TABLE t (id int PRIMARY KEY)')\n"
               "from cdc_notebook.stream.cdc_stream import CDCStream\n"
               "from cdc_notebook.live.tables import LiveReader\n"
               "reader = LiveReader(CDCStream(server.conninfo(), 'public.t', temporary=True))"
               ".start()\n"
               "c.execute('INSERT INTO t SELECT generate_series(1, 1000)')\n"
               "reader.catch_up(60)\n"
               "assert reader['public.t'].mirror().height == 1000\n")
    if how == "shutdown":
        kernel.manager.shutdown_kernel(now=False)
    else:
        kernel.manager.restart_kernel(now=True)  # SIGKILL: atexit never runs
        kernel.client.wait_for_ready(timeout=120)
    assert _gone(pid), f"postgres {pid} outlived the kernel ({how})"
    deadline = time.monotonic() + 30
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not directory.exists()
    if how == "restart":
        assert kernel.value("1 + 1") == 2  # the new kernel works
