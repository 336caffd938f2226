"""Every widget driven through its model and its buttons against a real server.

Effects are checked in PostgreSQL (publication and slot there or gone) and in the widgets'
state; comm messages are counted with a recording comm (as ipywidgets' own tests do), and the
pump runs on an injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import comm
import numpy as np
import pyarrow as pa
import pytest
from comm.base_comm import BaseComm
from ipywidgets.widgets.widget import _instances

from cdc_notebook.live.tables import LiveFrames
from cdc_notebook.server.postgres import free_port
from cdc_notebook.widgets import (
    ConnectionModel,
    ConnectionWidget,
    PatternsModel,
    PatternsWidget,
    SetupModel,
    SetupWidget,
    StatusModel,
    StatusWidget,
    TableViewModel,
    TableViewWidget,
)
from cdc_notebook.widgets.pump import UIPump
from cdc_notebook.widgets.setup import is_stale
from cdc_notebook.widgets.status import frames_counters

from .test_live import SCHEMA, Transactions


class RecordingComm(BaseComm):
    """What the kernel would publish on iopub, recorded instead."""

    sent: ClassVar[list[tuple[str, Any, str]]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append((msg_type, data, self.comm_id))


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any, str]]]:
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    yield RecordingComm.sent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connected(pg: Any) -> ConnectionModel:
    model = ConnectionModel(server_factory=lambda: pg, embedded=True)
    model.connect().result(60)
    assert model.connected, model.error
    return model


# --------------------------------------------------------------------------- connection


def test_connection_embedded_then_a_wrong_password_and_a_dead_port(pg: Any, comms: Any) -> None:
    model = ConnectionModel(server_factory=lambda: pg, embedded=True)
    view = ConnectionWidget(model)
    view.connect_button.click()
    model.wait()
    view.refresh(0)
    assert model.connected
    assert "connected to" in view.status.value and "PostgreSQL" in view.status.value
    assert model.server is pg

    secret = "s3cret-Passw0rd-never-shown"
    view.embedded.value = False
    view.host.value = "127.0.0.1"
    view.port.value = pg.port
    view.user.value = "postgres"
    view.password.value = secret
    view.connect_button.click()
    model.wait()
    view.refresh(0)
    assert not model.connected
    assert "Error" in view.status.value and "password" in view.status.value
    assert view.form.layout.display == ""

    view.password.value = secret
    view.port.value = free_port()
    view.connect_button.click()
    model.wait()
    view.refresh(0)
    assert "cannot reach" in view.status.value
    # The password is in no widget message (the Password field itself excepted), no repr.
    field_id = view.password.model_id
    others = [data for _, data, comm_id in comms if comm_id != field_id]
    assert secret not in json.dumps(others, default=repr)
    assert secret not in repr(model) and secret not in (model.error or "")
    model.close()
    view.close()


def test_a_successful_tcp_login_empties_the_password_field(pg: Any, comms: Any) -> None:
    model = ConnectionModel(embedded=False)
    view = ConnectionWidget(model)
    view.host.value, view.port.value, view.user.value = "127.0.0.1", pg.port, "postgres"
    view.password.value = pg.password
    view.connect_button.click()
    model.wait()
    view.refresh(0)
    assert model.connected, model.error
    assert view.password.value == "" and model.password == ""
    assert model.conninfo()["password"] == pg.password  # kept in memory for more connections
    other = model.open()
    assert other.execute("SELECT 1").fetchone() == (1,)
    other.close()
    view.disconnect_button.click()
    model.wait()
    assert not model.connected
    model.close()
    view.close()


# --------------------------------------------------------------------------- patterns


@pytest.fixture
def tables(pg: Any, unique_name: Any) -> Iterator[str]:
    schema = unique_name("wp")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for name in ("orders", "order_items", "audit_log", "users"):
            conn.execute(f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, v text)")
        conn.execute(f"CREATE TABLE {schema}.nokey (v text)")
        yield schema
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_patterns_preview_is_debounced_and_checkboxes_select(pg: Any, tables: str,
                                                             comms: Any) -> None:
    clock = Clock()
    connection = connected(pg)
    model = PatternsModel(connection, include="", debounce=0.3, clock=clock)
    view = PatternsWidget(model)
    pump = UIPump(clock=clock)
    pump.add_hook(model.poll)
    pump.add(view)
    # Typing: every keystroke within the debounce delays the preview.
    for text in [f"{tables}.o", f"{tables}.or", f"{tables}.order*"]:
        clock.now += 0.1
        view.include.value = text
        pump.tick()
    assert model.previews_run == 0
    clock.now += 0.31
    pump.tick()
    model.wait()
    clock.now += 0.3
    pump.tick()
    assert model.previews_run == 1
    assert sorted(model.preview.names) == [f"{tables}.order_items", f"{tables}.orders"]
    assert "2 table(s) match" in view.summary.value
    assert [b.description for b in view.list.children] == [
        f"{tables}.order_items", f"{tables}.orders"]

    view.include.value = f"{tables}.*"
    view.exclude.value = f"{tables}.audit_*"
    clock.now += 0.5
    pump.tick()
    model.wait()
    clock.now += 0.3
    pump.tick()
    assert sorted(model.preview.names) == sorted(
        f"{tables}.{n}" for n in ("orders", "order_items", "users", "nokey"))
    assert "without a primary key" in view.summary.value and "nokey" in view.summary.value
    # Untick users: the selection excludes it exactly.
    users = next(b for b in view.list.children if b.description == f"{tables}.users")
    users.value = False
    selected = [t.qualified_name for t in model.selected_tables()]
    assert f"{tables}.users" not in selected and f"{tables}.orders" in selected
    assert f'!"{tables}"."users"' in model.selection()

    view.include.value = f"{tables}.[unclosed"
    clock.now += 0.5
    pump.tick()
    model.wait()
    clock.now += 0.3
    pump.tick()
    assert "Error" in view.summary.value
    view.close()
    connection.close()


# --------------------------------------------------------------------------- set-up and teardown


def server_objects(pg: Any, slot: str, publication: str) -> tuple[bool, bool]:
    with pg.connect() as conn:
        has_slot = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                [slot]).fetchone() is not None
        has_pub = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                               [publication]).fetchone() is not None
    return has_slot, has_pub


def test_setup_shows_sql_first_then_creates_and_teardown_drops(pg: Any, tables: str,
                                                                unique_name: Any,
                                                                comms: Any) -> None:
    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.orders, {tables}.users")
    patterns.refresh_preview().result(30)
    model = SetupModel(connection, patterns, plugin="pgoutput")
    view = SetupWidget(model)
    slot, publication = unique_name("cdcnb_w"), unique_name("cdcnb_wp")
    view.slot_name.value, view.publication.value = slot, publication
    view.plan_button.click()
    model.wait()
    view.refresh(0)
    assert "CREATE PUBLICATION" in view.sql.value and publication in view.sql.value
    assert view.confirm_row.layout.display == ""
    assert server_objects(pg, slot, publication) == (False, False)  # nothing ran yet
    view.confirm_button.click()
    model.wait()
    view.refresh(0)
    assert server_objects(pg, slot, publication) == (True, True)
    assert slot in view.slots.value and "inactive" in view.slots.value
    assert view.confirm_row.layout.display == "none"

    view.teardown_button.click()
    model.wait()
    view.refresh(0)
    assert "pg_drop_replication_slot" in view.sql.value
    assert server_objects(pg, slot, publication) == (True, True)
    view.cancel_button.click()
    view.refresh(0)
    assert "cancelled" in view.message.value
    view.teardown_button.click()
    model.wait()
    view.confirm_button.click()
    model.wait()
    view.refresh(0)
    assert server_objects(pg, slot, publication) == (False, False)
    assert "drop slot" in view.message.value
    view.close()
    connection.close()


def wait_inactive(pg: Any, slot: str) -> None:
    """The walsender exits shortly after its client goes (PostgreSQL 15 takes a moment)."""
    with pg.connect() as conn:
        for _ in range(200):
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                               [slot]).fetchone()
            if row is None or not row[0]:
                return
            conn.execute("SELECT pg_sleep(0.05)")
    raise AssertionError(f"slot {slot} stayed active")


def test_teardown_while_streaming_is_refused_in_the_widget(pg: Any, tables: str,
                                                          unique_name: Any, comms: Any) -> None:
    from cdc_notebook.stream.replication import ReplicationConnection

    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.orders")
    patterns.refresh_preview().result(30)
    model = SetupModel(connection, patterns, plugin="pgoutput")
    view = SetupWidget(model)
    model.slot_name, model.publication = unique_name("cdcnb_s"), unique_name("cdcnb_sp")
    model.plan_setup().result(30)
    model.confirm().result(60)
    stream = ReplicationConnection(pg.conninfo())
    stream.start(model.slot_name, 0, {"proto_version": "1",
                                      "publication_names": model.publication})
    try:
        view.teardown_button.click()
        model.wait()
        view.refresh(0)
        assert "active in another process" in view.message.value
        assert server_objects(pg, model.slot_name, model.publication) == (True, True)
    finally:
        stream.close()
    wait_inactive(pg, model.slot_name)
    model.plan_teardown().result(30)
    model.confirm().result(30)
    assert server_objects(pg, model.slot_name, model.publication) == (False, False)
    view.close()
    connection.close()


def test_stale_slots_are_listed_and_dropped_after_confirmation(pg: Any, tables: str,
                                                              unique_name: Any,
                                                              comms: Any) -> None:
    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.users")
    patterns.refresh_preview().result(30)
    model = SetupModel(connection, patterns, plugin="pgoutput", stale_after=0.0)
    view = SetupWidget(model)
    model.slot_name, model.publication = unique_name("cdcnb_st"), unique_name("cdcnb_stp")
    model.plan_setup().result(30)
    model.confirm().result(60)
    assert any(s.slot_name == model.slot_name and is_stale(s, older_than=0)
               for s in model.slots)
    view.refresh(0)
    assert "stale" in view.slots.value
    view.stale_button.click()
    model.wait()
    view.refresh(0)
    assert model.slot_name in view.sql.value
    view.confirm_button.click()
    model.wait()
    assert server_objects(pg, model.slot_name, model.publication)[0] is False
    model.plan_teardown(publication=model.publication).result(30)
    model.confirm().result(30)
    view.close()
    connection.close()


# --------------------------------------------------------------------------- status


def test_status_numbers_chart_and_errors(pg: Any, tables: str, unique_name: Any,
                                         comms: Any) -> None:
    clock = Clock()
    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.orders")
    patterns.refresh_preview().result(30)
    setup = SetupModel(connection, patterns, plugin="pgoutput")
    setup.slot_name, setup.publication = unique_name("cdcnb_x"), unique_name("cdcnb_xp")
    setup.plan_setup().result(30)
    setup.confirm().result(60)
    frames = LiveFrames()
    model = StatusModel(connection, slot_name=setup.slot_name,
                        counters=frames_counters(frames), clock=clock)
    view = StatusWidget(model)
    pump = UIPump(clock=clock)
    pump.add_hook(model.poll)
    pump.add(view)
    pump.add(view.chart)
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    for step in range(3):
        live.apply(tx.batch([{"op": "c", "id": step * 100 + i, "v": i, "doc": "x", "u": None}
                             for i in range(100)]))
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {tables}.orders SELECT g + {step * 100}, 'x' "
                         "FROM generate_series(1, 100) g")
        clock.now += 1.0
        pump.tick()
        model.wait()
    view.refresh(clock.now)
    view.chart.refresh(clock.now)
    assert model.polls == 3
    assert model.events_per_second == pytest.approx(100.0)
    assert "wal_status" in view.numbers.value and setup.slot_name in view.numbers.value
    assert "events/s" in view.numbers.value and ">100<" in view.numbers.value
    assert model.status.lag_bytes > 0  # nobody reads the slot
    png = view.chart.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and view.chart.renders >= 1
    assert view.chart.rate_line.get_xdata()[-1] == pytest.approx(2.0)

    model.slot_name = "cdcnb_no_such_slot"
    clock.now += 1.0
    pump.tick()
    model.wait()
    clock.now += 1.0
    pump.tick()
    assert "Error" in view.message.value and "does not exist" in view.message.value
    view.close()
    model.close()
    setup.slot_name = setup.slot_name
    setup.plan_teardown().result(30)
    setup.confirm().result(30)
    connection.close()


def test_status_advice_when_wal_retention_is_unbounded(pg_factory: Any, comms: Any) -> None:
    server = pg_factory(settings={"max_slot_wal_keep_size": "-1"})
    connection = connected(server)
    with server.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('cdcnb_unbounded', "
                     "'pgoutput')")
    model = StatusModel(connection, slot_name="cdcnb_unbounded")
    view = StatusWidget(model)
    model.refresh_status().result(30)
    view.refresh(0)
    assert "unbounded" in view.numbers.value
    assert "max_slot_wal_keep_size" in view.numbers.value and "Advice" in view.numbers.value
    view.close()
    model.close()
    connection.close()


# --------------------------------------------------------------------------- live table view


def data_rows(html: str) -> int:
    return html.split("<tbody>", 1)[1].count("<tr>") if "<tbody>" in html else 0


def test_table_view_head_tail_filter_and_bad_filter(comms: Any) -> None:
    frames = LiveFrames()
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": i, "v": i * 10, "doc": f"d{i}", "u": None}
                         for i in range(500)]))
    model = TableViewModel(frames, rows=5, mode="head")
    view = TableViewWidget(model)
    assert view.table.options == ("public.t",)
    assert "500 rows" in view.info.value and "consistent at LSN" in view.info.value
    assert data_rows(view.html.value) == 5
    view.mode.value = "filter"
    view.where.value = "v >= 4950"
    view.refresh(0)
    assert data_rows(view.html.value) == 5  # 495..499
    assert ">4990<" in view.html.value
    view.where.value = "no_such_column > 1"
    view.refresh(0)
    assert "Error" in view.info.value
    view.rows.value = 10_000  # bounded by the widget
    view.mode.value = "tail"
    view.refresh(0)
    assert model.rows == 200 and data_rows(view.html.value) == 200
    view.source.value = "changelog"
    view.refresh(0)
    assert "changelog" in view.info.value and "_cdc_op" in view.html.value
    view.close()


def test_table_view_says_what_a_schema_change_did(comms: Any) -> None:
    import pyarrow as pa

    from .test_live import TABLE_FIELDS, contract_schema

    frames = LiveFrames()
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": 1, "v": 1, "doc": "x", "u": None}]))
    live.change_schema(contract_schema([*TABLE_FIELDS, pa.field("added", pa.int32())]))
    view = TableViewWidget(TableViewModel(frames))
    assert "added added (null for older rows)" in view.info.value
    view.close()


# --------------------------------------------------------------------------- the message budget


def insert_batch(first_id: int, rows: int, end_lsn: int) -> pa.RecordBatch:
    """A batch of inserts built column-wise (fast enough to ingest at full speed)."""
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    n = len(ids)
    columns = {
        "id": pa.array(ids), "v": pa.array(ids % 1000), "doc": pa.array(["x"] * n),
        "u": pa.nulls(n, pa.uuid()),
        "_cdc_op": pa.array(["c"] * n), "_cdc_lsn": pa.array(np.full(n, end_lsn - 16, np.uint64)),
        "_cdc_commit_lsn": pa.array(np.full(n, end_lsn - 8, np.uint64)),
        "_cdc_end_lsn": pa.array(np.full(n, end_lsn, np.uint64)),
        "_cdc_commit_ts": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        "_cdc_xid": pa.array(np.full(n, 7, np.uint32)),
        "_cdc_ordinal": pa.array(np.arange(1, n + 1, dtype=np.uint64)),
        "_cdc_before": pa.nulls(n, SCHEMA.field("_cdc_before").type),
        "_cdc_unchanged_toast": pa.array([[]] * n, pa.list_(pa.string())),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=SCHEMA)


def test_widget_messages_stay_bounded_while_ingesting_at_full_speed(comms: Any) -> None:
    """Thirty simulated seconds of ingest as fast as the process can apply batches, the pump ticking
    every 50 ms of the injected clock: the widgets send a bounded number of messages, whatever
    the ingest rate."""
    clock = Clock()
    frames = LiveFrames(clock=clock)
    live = frames.table("public.t", SCHEMA, ["id"])
    table_view = TableViewWidget(TableViewModel(frames, rows=20))
    pump = UIPump(interval=0.25, clock=clock)
    pump.add(table_view)
    comms.clear()
    ticks, per_tick, rows = 600, 10, 100
    for tick in range(ticks):
        for i in range(per_tick):
            n = tick * per_tick + i
            live.apply(insert_batch(n * rows, rows, 0x1000 + n * 64))
        clock.now += 0.05
        pump.tick()
    seconds = ticks * 0.05
    updates = [m for m in comms if m[0] == "comm_msg"]
    per_second = len(updates) / seconds
    assert live.mirror().height == ticks * per_tick * rows  # 600,000 rows applied
    assert per_second <= 3 * 4  # at most 3 widgets written per refresh, 4 refreshes/s
    assert per_second < 100
    assert pump.refreshes <= seconds / 0.25 + 1
    before = len(_instances)
    table_view.close()
    assert len(_instances) < before
    assert not [x for x in table_view._widgets if x.comm is not None]


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_reader_buttons_start_pause_resume_stop_a_temporary_slot(
        pg: Any, tables: str, comms: Any) -> None:
    from cdc_notebook.widgets import Dashboard

    clock = Clock()
    dash = Dashboard(server=pg, tables=f"{tables}.orders", clock=clock, start_pump=False)
    reader_view = dash.views[3]
    try:
        dash.connection.connect().result(60)
        reader_view.start_button.click()  # no slot named in set-up: a temporary one
        dash.reader.wait()
        assert dash.reader.error is None, dash.reader.error
        live = dash.reader.reader
        assert live is not None and live.state == "running"
        slot = live.stream.slot.slot_name
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {tables}.orders (id, v) "
                         "SELECT g, 'v' || g FROM generate_series(1, 500) g")
            assert conn.execute("SELECT temporary, active FROM pg_replication_slots WHERE "
                                "slot_name = %s", [slot]).fetchone() == (True, True)
        live.catch_up(60)
        assert dash.frames[f"{tables}.orders"].mirror().height == 500
        clock.now += 1
        dash.pump.tick()
        dash.wait()
        clock.now += 1
        dash.pump.tick()
        assert "running" in reader_view.state.value
        summary = dash.summary.summary
        assert summary is not None and summary.rows_received == 500
        assert f"{tables}.orders" in dash._summary_view.html.value
        reader_view.pause_button.click()
        assert live.state == "paused"
        frozen = dash.frames[f"{tables}.orders"].state().lsn
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {tables}.orders (id, v) VALUES (1001, 'late')")
        clock.now += 1
        dash.pump.tick()
        assert "paused" in reader_view.state.value
        assert dash.frames[f"{tables}.orders"].state().lsn == frozen
        reader_view.resume_button.click()
        live.catch_up(60)
        assert dash.frames[f"{tables}.orders"].mirror().height == 501
        reader_view.stop_button.click()
        dash.reader.wait()
        assert live.state == "stopped"
        wait_inactive(pg, slot)  # the temporary slot goes with the reader's connection
        with pg.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE "
                                "slot_name = %s", [slot]).fetchone()[0] == 0
    finally:
        dash.stop()
