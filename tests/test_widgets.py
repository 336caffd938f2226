"""Every widget driven through its model and its buttons against a real server.

Effects are checked in PostgreSQL (publication and slot there or gone) and in the widgets'
state; comm messages are counted with a recording comm (as ipywidgets' own tests do), and the
pump runs on an injected clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
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


def test_leftovers_are_listed_with_their_wal_and_each_drop_button_drops_one(
        pg: Any, tables: str, unique_name: Any, comms: Any) -> None:
    from cdc_notebook.provision.plan import provision

    slot, publication = unique_name("cdcnb_left"), unique_name("cdcnb_leftp")
    orphan_slot, orphan = unique_name("cdcnb_gone"), unique_name("cdcnb_gonep")
    foreign = unique_name("cdcnb_theirs")
    with pg.connect() as conn:
        provision(conn, f"{tables}.users", slot_name=slot, publication=publication,
                  plugin="pgoutput", slot_method="sql")  # permanent, then left unused
        conn.execute(f"INSERT INTO {tables}.users SELECT g, repeat('x', 100) "
                     "FROM generate_series(1, 3000) g")
        # a temporary slot's publication whose slot went with its connection (a kill)
        provision(conn, f"{tables}.orders", slot_name=orphan_slot, publication=orphan,
                  plugin="pgoutput", temporary=True).slot.close()
        wait_inactive(pg, orphan_slot)
        # another tool's slot with a name like the kit's: never listed, never dropped
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [foreign])
    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.users")
    model = SetupModel(connection, patterns, plugin="pgoutput")
    view = SetupWidget(model)
    try:
        model.refresh_slots().result(30)
        view.refresh(0)
        assert "Leftovers" in view._leftover_head.value
        button, label, _row = view._rows[("slot", slot)]
        assert "permanent" in label.value and "retains" in label.value
        assert "KiB of WAL" in label.value or "MiB of WAL" in label.value
        assert button.description == "Drop" and not button.disabled
        assert ("publication", orphan) in view._rows
        assert not [k for k in view._rows if k[1] == foreign]
        # blank "Plan teardown", no reader: the publications whose slots are gone
        model.plan_teardown().result(30)
        assert "no slot named" in (model.info or "")
        assert f'DROP PUBLICATION IF EXISTS "{orphan}"' in model.pending_sql
        assert slot not in model.pending_sql
        model.cancel()
        button.click()  # runs on the model's worker; the button follows it
        assert model.drops[("slot", slot)] in ("dropping", "dropped")
        model.wait()
        view.refresh(0)
        assert model.drops[("slot", slot)] == "dropped", model.error
        assert button.description == "Dropped" and button.disabled
        assert server_objects(pg, slot, publication) == (False, False)
        pub_button = view._rows[("publication", orphan)][0]
        pub_button.click()
        model.wait()
        view.refresh(0)
        assert pub_button.description == "Dropped"
        assert server_objects(pg, orphan_slot, orphan) == (False, False)
        model.refresh_slots().result(30)  # dropped rows leave the list
        view.refresh(0)
        assert ("slot", slot) not in view._rows and ("publication", orphan) not in view._rows
        assert server_objects(pg, foreign, foreign)[0]  # another tool's slot: untouched
    finally:
        view.close()
        connection.close()
        with pg.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [foreign])


def test_plan_teardown_with_no_name_takes_down_the_readers_stream(
        pg: Any, tables: str, unique_name: Any, comms: Any) -> None:
    from cdc_notebook.widgets import Dashboard

    dash = Dashboard(server=pg, tables=f"{tables}.orders", clock=Clock(), start_pump=False)
    setup_view, reader_view = dash.views[2], dash.views[3]
    try:
        dash.connection.connect().result(60)
        dash.setup.slot_name = unique_name("cdcnb_perm")  # named: a permanent slot
        reader_view.start_button.click()
        dash.reader.wait()
        live = dash.reader.reader
        assert live is not None and live.state == "running", dash.reader.error
        stream = live.stream
        assert "permanent slot" in dash.reader.log[-1] and "of WAL" in dash.reader.log[-1]
        dash.setup.slot_name = ""  # "Plan teardown" with the name left blank
        setup_view.teardown_button.click()
        dash.setup.wait()
        setup_view.refresh(0)
        assert "-- stream.close();" in setup_view.sql.value
        assert "pg_drop_replication_slot" in setup_view.sql.value
        assert server_objects(pg, stream.slot.slot_name, stream.publication) == (True, True)
        setup_view.confirm_button.click()
        dash.setup.wait()
        assert dash.setup.error is None, dash.setup.error
        assert live.state == "stopped" and stream.closed
        assert server_objects(pg, stream.slot.slot_name, stream.publication) == (False, False)
    finally:
        dash.stop()


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
    svg = view.chart.html.value
    assert "<svg" in svg and "events/s" in svg and view.chart.renders >= 1
    assert model.history[-1].t - model.history[0].t == pytest.approx(2.0)
    assert view.chart.png()[:8] == b"\x89PNG\r\n\x1a\n"

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
    assert "changelog" in view.info.value and "insert" in view.html.value
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
            # and so does the kit publication made for it
            assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s",
                                [live.stream.publication]).fetchone()[0] == 0
        assert "temporary slot" in " ".join(dash.reader.log)
    finally:
        dash.stop()


# --------------------------------------------------------------------------- forms that work (issue 15)


def test_the_dsn_fields_appear_with_the_tick_and_a_dsn_fills_them(pg: Any, comms: Any) -> None:
    model = ConnectionModel(embedded=True)
    view = ConnectionWidget(model)
    assert view.form.layout.display == "none"
    view.embedded.value = False  # no refresh, no failed Connect: the fields are there at once
    assert view.form.layout.display == ""
    assert not model.embedded
    view.embedded.value = True
    assert view.form.layout.display == "none"
    # code fills the form from a DSN; the view follows at its next refresh
    model.use_dsn(f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres "
                  f"password={pg.password} sslmode=disable application_name='my app'")
    view.refresh(0)
    assert not view.embedded.value and view.form.layout.display == ""
    assert (view.host.value, view.port.value, view.user.value) == ("127.0.0.1", pg.port,
                                                                   "postgres")
    assert "sslmode=disable" in view.options.value and "'my app'" in view.options.value
    assert view.password.value == ""  # never echoed into the form
    model.connect().result(60)
    assert model.connected, model.error
    model.close()
    view.close()


def test_explore_takes_a_dsn_and_connects(pg: Any, comms: Any) -> None:
    from cdc_notebook.widgets import explore

    dsn = f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/postgres"
    dash = explore(dsn=dsn, start_pump=False)
    try:
        dash.connection.wait(60)
        assert dash.connection.connected, dash.connection.error
        assert not dash.connection.embedded and dash.connection.server is None
        assert pg.password not in repr(dash.connection)
    finally:
        dash.stop()


def test_confirm_is_disabled_while_the_plan_has_an_error_and_keyless_is_a_choice(
        pg: Any, tables: str, comms: Any) -> None:
    connection = connected(pg)
    patterns = PatternsModel(connection, include=f"{tables}.orders, {tables}.nokey")
    patterns.refresh_preview().result(30)
    model = SetupModel(connection, patterns, plugin="pgoutput")
    view = SetupWidget(model)
    view.plan_button.click()
    model.wait()
    view.refresh(0)
    assert model.pending_errors and "nokey" in view.message.value
    assert view.confirm_button.disabled  # SQL shown, but it cannot run
    assert "cannot be confirmed" in view.sql.value
    model.confirm().result(30)  # a confirm from code is refused the same way
    assert "cannot be applied" in (model.error or "") and model.pending is not None
    view.keyless.value = "full"  # the fix the error names, as a control: planned again
    model.wait()
    view.refresh(0)
    assert not model.pending_errors and "REPLICA IDENTITY FULL" in view.sql.value
    assert not view.confirm_button.disabled
    view.keyless.value = "skip"
    model.wait()
    view.refresh(0)
    assert not model.pending_errors and "REPLICA IDENTITY FULL" not in view.sql.value
    view.cancel_button.click()
    view.refresh(0)
    assert view.confirm_button.disabled
    view.close()
    connection.close()


def test_sizes_are_in_iec_units_and_lsns_in_one_format() -> None:
    from cdc_notebook.provision.status import _fmt_bytes
    from cdc_notebook.units import format_byte_rate, format_bytes, format_seconds
    from cdc_notebook.widgets.summary import LiveSummary, TableSummary

    assert format_bytes(30_860_232) == "29.4 MiB" == _fmt_bytes(30_860_232)
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB" and format_bytes(None) == "n/a"
    assert format_byte_rate(2**20 * 16.09) == "16.09 MiB/s"
    assert format_seconds(0.25) == "250 ms" and format_seconds(12.34) == "12.3 s"
    assert format_seconds(245) == "4 min 05 s"
    summary = LiveSummary("running", (TableSummary("shop.orders", 10, 12, 0x91FF960),), 100.0,
                          16.09 * 2**20, 12, "s", 30_860_232, 1.5, 0)
    assert "16.09 MiB/s" in summary.text() and "slot lag 29.4 MiB (1.5 s)" in summary.text()
    assert "0/91FF960" in summary.html() and "MB" not in summary.text().replace("MiB", "")
    # the terminal's texts too: the plugin build's download, the snapshot's bar, the sink's line
    import io

    from cdc_notebook.server.progress import ProgressEvent, TerminalProgress
    from cdc_notebook.sinks.delta import SinkProgress
    from cdc_notebook.snapshot.tables import ProgressBar, SnapshotProgress

    event = ProgressEvent("download", "fetching nanoarrow", "update", 1_572_864, 30_860_232, "B")
    assert event.amount() == "1.5 MiB/29.4 MiB" and "MiB" in event.text()
    out = io.StringIO()
    terminal = TerminalProgress(out, tty=False)
    terminal(replace(event, state="start", done=0))
    terminal(replace(event, state="done", done=30_860_232))
    bar = io.StringIO()
    ProgressBar(stream=bar)(SnapshotProgress("t", 50_000, 30_860_232, 2.0, 25, 100, done=True))
    line = SinkProgress(1.0, 10, 10, 10.0, 10.0, 1, 1, 0x91FF960, 0, 0, 1, 1,
                        lag_bytes=30_860_232).line()
    for text in (out.getvalue(), bar.getvalue(), line):
        assert "29.4 MiB" in text and "MB" not in text.replace("MiB", ""), text
    assert "14.72 MiB/s" in bar.getvalue() and "0/91FF960" in line


def test_every_tab_shows_the_same_status_snapshot(pg: Any, tables: str, unique_name: Any,
                                                  comms: Any) -> None:
    from cdc_notebook.widgets import Dashboard

    clock = Clock()
    dash = Dashboard(server=pg, tables=f"{tables}.orders", clock=clock, start_pump=False)
    try:
        dash.connection.connect().result(60)
        dash.setup.slot_name = unique_name("cdcnb_one")
        dash.setup.publication = unique_name("cdcnb_onep")
        dash.setup.plugin = "pgoutput"
        dash.setup.plan_setup().result(30)
        dash.setup.confirm().result(60)
        with pg.connect() as conn:  # WAL the slot retains
            conn.execute(f"INSERT INTO {tables}.orders SELECT g, 'x' "
                         "FROM generate_series(1, 2000) g")
        for _ in range(3):
            clock.now += 1.1
            dash.pump.tick()
            dash.wait()
        status = dash.status.status
        assert status is not None and status.slot_name == dash.setup.slot_name
        listed = next(s for s in dash.setup.slots if s.slot_name == status.slot_name)
        assert listed == status or listed.retained_wal_bytes == status.retained_wal_bytes
        setup_view, status_view = dash.views[2], dash.views[4]
        clock.now += 1.1
        dash.pump.tick()
        from cdc_notebook.units import format_bytes

        retained = format_bytes(status.retained_wal_bytes)
        assert retained in setup_view.slots.value and retained in status_view.numbers.value
        dash.setup.plan_teardown().result(30)
        dash.setup.confirm().result(30)
    finally:
        dash.stop()


def test_table_controls_follow_code_and_a_filter_says_how_many_match(comms: Any) -> None:
    frames = LiveFrames()
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": i, "v": i * 10, "doc": f"d{i}", "u": None}
                         for i in range(500)]))
    model = TableViewModel(frames)
    view = TableViewWidget(model)
    model.set(rows=8, mode="head")
    view.refresh(0)
    assert view.rows.value == 8 and view.mode.value == "head"
    assert data_rows(view.html.value) == 8
    model.set(mode="filter", where="v >= 4900")
    view.refresh(0)
    assert view.mode.value == "filter" and view.where.value == "v >= 4900"
    assert "10 of 500 rows match" in view.info.value
    assert data_rows(view.html.value) == 8
    view.close()


def test_the_changelog_opens_on_meaningful_rows(comms: Any) -> None:
    frames = LiveFrames()
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": f"d{i}", "u": None}
                         for i in range(5)]))
    live.apply(tx.batch([{"op": "u", "id": 10, "v": 7, "doc": "moved", "u": None,
                          "before": {"id": 1}},
                         {"op": "d", "id": None, "v": None, "doc": None, "u": None,
                          "before": {"id": 2}},
                         {"op": "d", "id": None, "v": None, "doc": None, "u": None,
                          "before": {"id": 3}}]))
    view = TableViewWidget(TableViewModel(frames, source="changelog", rows=3))
    html = view.html.value
    assert data_rows(html) == 3
    # a delete shows its key (from its before-image) and says what it is; an update that
    # moved the key shows before and after; LSNs as PostgreSQL writes them
    from cdc_notebook.widgets.table import changelog_display, lsn_text

    shown = lsn_text(changelog_display(live.changelog(), live.key_columns)).tail(3)
    assert shown.columns[:5] == ["change", "lsn", "committed", "id", "before"]
    assert shown.get_column("change").to_list() == ["update", "delete", "delete"]
    assert shown.get_column("id").to_list() == [10, 2, 3]
    assert shown.get_column("before").to_list()[0] == "id=1"
    assert all("/" in lsn for lsn in shown.get_column("lsn").to_list())
    assert "_cdc_xid" not in shown.columns and "delete" in html and ">2<" in html
    view.close()


def test_a_stale_summary_says_disconnected_once_nothing_writes_it(comms: Any) -> None:
    from cdc_notebook.widgets.summary import HEARTBEAT, STALE_AFTER, SummaryModel, SummaryWidget

    clock = Clock()
    model = SummaryModel(LiveFrames(), clock=clock)
    view = SummaryWidget(model)
    pump = UIPump(clock=clock)
    pump.add_hook(view.hook)
    pump.add(view)
    comms.clear()
    values = []
    for _ in range(int(4 * HEARTBEAT / 0.25)):  # an idle reader: nothing moves but time
        clock.now += 0.25
        pump.tick()
        values.append(view.html.value)
    assert len(set(values)) >= 3  # rewritten every HEARTBEAT s: the animation starts again
    sent = [m for m in comms if m[0] == "comm_msg"]
    assert len(sent) <= 4 * HEARTBEAT / HEARTBEAT + 1  # about one message per HEARTBEAT
    html = values[-1]
    assert "cdc-disconnected" in html and "disconnected" in html
    assert f"{STALE_AFTER}s forwards" in html and "@keyframes" in html
    view.close()


def test_kit_errors_are_shown_briefly_in_ipython(capsys: Any) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from cdc_notebook import briefly

    shell = InteractiveShell.instance()
    try:
        assert briefly.install(shell)
        shell.run_cell("from cdc_notebook.errors import SlotNotFound\n"
                       "def deep():\n"
                       "    raise SlotNotFound('replication slot \\'x\\' does not exist', "
                       "hint='create it first', sqlstate='42704')\n"
                       "deep()")
        out = capsys.readouterr()
        text = out.out + out.err
        assert "SlotNotFound" in text and "Fix: create it first" in text and "%tb" in text
        assert text.count("\n") <= 6  # not a traceback
        shell.run_cell("1/0")  # other errors keep their traceback
        out = capsys.readouterr()
        assert "ZeroDivisionError" in out.out + out.err and "Traceback" in out.out + out.err
    finally:
        briefly.uninstall(shell)
        InteractiveShell.clear_instance()


def test_a_failing_view_prints_one_line_not_a_traceback(capsys: Any) -> None:
    class Broken:
        min_interval = 0.0

        def version(self) -> int:
            return 1

        def refresh(self, now: float) -> None:
            raise ValueError("no such column: x")

    pump = UIPump(clock=lambda: 0.0)
    pump.add(Broken())
    pump.tick(1.0)
    err = capsys.readouterr().err
    assert "could not refresh: ValueError: no such column: x" in err
    assert "Traceback" not in err and pump.last_traceback and "Traceback" in pump.last_traceback


def test_workload_takes_a_dsn_string_and_a_failure_says_why(pg: Any, unique_name: Any) -> None:
    from cdc_notebook.demo import Workload

    dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres password={pg.password}"
    schema = unique_name("wl")
    workload = Workload(dsn, schema=schema).create().run(2)
    assert workload.changes > 0 and workload.state == "idle"
    broken = Workload(dsn, schema=unique_name("nosuch"))  # its tables were never created
    broken.start(rounds=3)
    with pytest.raises(Exception, match="does not exist"):
        broken.wait(30)
    assert broken.state == "failed" and "does not exist" in repr(broken)
    with pg.connect() as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


# --------------------------------------------------------------------------- progress (issue 15)


def test_progress_bars_render_server_steps_snapshots_and_catch_up_within_the_budget(
        comms: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc_notebook.live.tables import CatchUpProgress
    from cdc_notebook.server import progress as server_progress
    from cdc_notebook.server.progress import ProgressEvent, Reporter
    from cdc_notebook.snapshot.tables import SnapshotProgress
    from cdc_notebook.widgets.progress import NotebookProgress

    clock = [0.0]
    monkeypatch.setattr("cdc_notebook.widgets.progress.time.monotonic", lambda: clock[0])
    bars = NotebookProgress(display=False)
    comms.clear()
    # the plugin build, as build_plugin reports it: 2,000 updates within 5 s
    bars(ProgressEvent("compile", "compiling wal2arrow", "start", 0, 18, "files"))
    for i in range(2000):
        clock[0] += 0.0025
        bars(ProgressEvent("compile", "compiling wal2arrow", "update", min(18, i // 100), 18,
                           "files", elapsed=clock[0]))
    bars(ProgressEvent("compile", "compiling wal2arrow", "done", 18, 18, "files",
                       elapsed=clock[0]))
    sent = [m for m in comms if m[0] == "comm_msg"]
    assert len(sent) <= 2 * (5 / 0.25 + 3)  # a bar and its label, four times a second
    progress, label = bars._bars["step:compile"]
    assert progress.value == 1.0 and progress.bar_style == "success"
    assert "compiling wal2arrow" in label.value and "18/18 files" in label.value
    # a snapshot, a bar per table with rows, bytes, rate and ETA
    bars(SnapshotProgress("shop.orders", 50_000, 30_860_232, 2.0, 25, 100))
    progress, label = bars._bars["snapshot:shop.orders"]
    assert progress.value == pytest.approx(0.25)
    assert "50,000 rows" in label.value and "29.4 MiB" in label.value
    assert "25,000 rows/s" in label.value and "ETA 6.0 s" in label.value
    clock[0] += 1
    bars(SnapshotProgress("shop.orders", 200_000, 2**27, 8.0, 100, 100, done=True))
    assert progress.value == 1.0 and progress.bar_style == "success"
    # catch-up: WAL left to apply
    clock[0] += 1
    bars(CatchUpProgress(0x1000000, 0x1000000 + 8 * 2**20, 0x1000000 + 2 * 2**20, 1.0,
                         ("shop.orders",)))
    progress, label = bars._bars["catch-up"]
    assert progress.value == pytest.approx(0.25) and "6.0 MiB of WAL to go" in label.value
    assert "shop.orders" in label.value and "ETA 3.0 s" in label.value
    bars.close()
    # "auto" is the bars inside a Jupyter kernel
    monkeypatch.setattr("cdc_notebook.widgets.progress.in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    chosen = server_progress.resolve("auto")
    assert isinstance(chosen, NotebookProgress)
    with Reporter(chosen).step("start", "starting PostgreSQL"):
        pass
    assert chosen._bars["step:start"][0].bar_style == "success"
    chosen.close()


def test_catch_up_reports_how_much_wal_is_left(pg: Any, unique_name: Any) -> None:
    from cdc_notebook.live.tables import CatchUpProgress, LiveReader
    from cdc_notebook.stream.cdc_stream import CDCStream

    schema = unique_name("cu")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
    stream = CDCStream(pg.conninfo(), f"{schema}.*", temporary=True)
    reader = LiveReader(stream)
    try:
        with pg.connect() as conn:  # a backlog before the reader starts
            for i in range(20):
                conn.execute(f"INSERT INTO {schema}.t SELECT g, repeat('x', 200) "
                             f"FROM generate_series({i * 5000}, {i * 5000 + 4999}) g")
        reports: list[CatchUpProgress] = []
        reader.start()
        target = reader.catch_up(120, progress=reports.append)
        assert reports and reports[-1].done and reports[-1].fraction == 1.0
        assert reports[-1].target == target and reports[-1].position == target
        fractions = [r.fraction for r in reports]
        assert fractions == sorted(fractions)  # the bar only moves forward
        assert reader[f"{schema}.t"].mirror().height == 100_000
        assert reader.catch_up(30, progress=None) >= target  # quiet when asked
    finally:
        reader.stop()
        with pg.connect() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# --------------------------------------------------------------------------- charts (issue 15)


def test_the_chart_draws_a_line_per_table_in_readable_units_with_values_on_hover(
        comms: Any) -> None:
    from cdc_notebook.widgets.chart import ChartPoint, StatusChart, png_chart, svg_chart

    points = [ChartPoint(1000.0 + i, {"shop.orders": 40_000.0 + i * 1000,
                                      "shop.customers": 400.0},
                         40_400.0, 12 * 2**20, (i + 1) * 3 * 2**20, 0.2 + i / 10)
              for i in range(30)]
    svg = svg_chart(points, ["shop.customers", "shop.orders"])
    assert svg.count("<polyline") == 4  # two tables, lag in bytes, lag in seconds
    assert "shop.orders" in svg and "shop.customers" in svg
    assert ">60K<" in svg or ">50K<" in svg  # events/s in K, not 60000
    assert "MiB<" in svg and " s<" in svg  # bytes in MiB, lag in seconds
    assert "<title>shop.orders: 69K (now)</title>" in svg  # the exact value on hover
    assert "data-lag-seconds='3.1'" in svg and "−29 s" in svg
    assert png_chart(points, ["shop.orders"])[:4] == b"\x89PNG"
    # a lag of a few milliseconds: every tick of the seconds axis has a label of its own
    from cdc_notebook.units import format_seconds
    from cdc_notebook.widgets.chart import seconds_ticks

    for high in (0.0, 0.0023, 0.04, 0.8, 3.1, 250.0):
        labels = [format_seconds(t) for t in seconds_ticks(high)]
        assert len(set(labels)) == len(labels) >= 2 and seconds_ticks(high)[-1] >= high, labels
    quick = [replace(p, lag_seconds=0.0023 * (i % 2)) for i, p in enumerate(points)]
    axis = re.findall(r"fill='#555'>([^<]*)</text>", svg_chart(quick, ["shop.orders"]))
    assert [a for a in axis if a.endswith(" ms")] == ["0 ms", "1 ms", "2 ms", "3 ms", "4 ms"]

    class Model:
        def __init__(self) -> None:
            self.lock = __import__("threading").RLock()
            self.history = points
            self.polls = 30

        def view_version(self) -> int:
            return 30

    chart = StatusChart(Model())
    chart.refresh(0)
    assert "<svg" in chart.html.value
    assert [b.description for b in chart.picks.children] == ["shop.customers",
                                                              "shop.orders"]
    chart._picked["shop.customers"].value = False  # untick a table: it is not drawn
    chart.refresh(1)
    assert chart.html.value.count("<polyline") == 3
    chart.window.value = "5 minutes"
    assert chart.version() != (30, 0)  # a new window redraws at the next tick
    bundle = chart._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/png"] and "text/plain" in bundle
    chart.close()


def test_an_exported_notebook_shows_the_charts_png(comms: Any) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    from cdc_notebook.widgets.chart import ChartPoint, StatusChart

    class Model:
        def __init__(self) -> None:
            self.lock = __import__("threading").RLock()
            self.history = [ChartPoint(float(i), {"t": 10.0 * i}, 10.0 * i, 0, 2**20, 0.5)
                            for i in range(10)]
            self.polls = 10

        def view_version(self) -> int:
            return 10

    chart = StatusChart(Model())
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("dash.chart")
    cell.outputs = [nbformat.v4.new_output("display_data", data=chart._repr_mimebundle_())]
    nb.cells.append(cell)
    body, _ = HTMLExporter().from_notebook_node(nb)  # no widget state saved
    assert "data:image/png;base64," in body
    chart.close()


def test_lag_in_seconds_is_a_number_while_streaming(pg: Any, tables: str, comms: Any) -> None:
    import threading
    import time

    from cdc_notebook.widgets import Dashboard

    clock = Clock()
    dash = Dashboard(server=pg, tables=f"{tables}.orders", clock=clock, start_pump=False)
    stop = threading.Event()

    def write() -> None:
        with pg.connect() as conn:
            i = 0
            while not stop.is_set():
                conn.execute(f"INSERT INTO {tables}.orders SELECT g, 'x' "
                             f"FROM generate_series({i}, {i + 499}) g")
                i += 500
                stop.wait(0.05)

    writer = threading.Thread(target=write, daemon=True)
    try:
        dash.connection.connect().result(60)
        dash.reader.start().result(60)
        writer.start()
        lags = []
        for _ in range(30):  # about 6 s of real time, each tick a poll
            clock.now += 1.1
            dash.pump.tick()
            dash.wait()
            if dash.status.status is not None:
                lags.append(dash.status.lag_seconds)
            if len(lags) >= 6 and any(p.tables.get(f"{tables}.orders", 0) > 0
                                      for p in dash.status.history):
                break
            time.sleep(0.2)
        assert len(lags) >= 4 and all(isinstance(v, float) for v in lags), lags
        history = list(dash.status.history)
        assert all(p.lag_seconds is not None for p in history[1:])
        assert any(p.tables.get(f"{tables}.orders", 0) > 0 for p in history)
        clock.now += 1.1
        dash.pump.tick()
        assert "lag (time)" in dash.chart.html.value and "data-lag-seconds=''" not in \
            dash.chart.html.value
    finally:
        stop.set()
        writer.join(10)
        dash.stop()


# --------------------------------------------------------------------------- the grid (issue 15)


def apply_deltas(copy: dict[int, dict[str, Any]], steps: list[tuple[str, Any]]) -> None:
    for kind, frame in steps:
        for row in frame.iter_rows(named=True):
            if kind == "remove":
                copy.pop(row["id"], None)
            else:
                copy[row["id"]] = row


def test_mirror_deltas_follow_every_fold_and_reset_when_they_must() -> None:
    import random

    from .test_live import Model, random_changes

    tx = Transactions()
    live = LiveTable_("public.t")
    deltas = live.subscribe(max_rows=10_000)
    reset, steps = deltas.take()
    assert reset and steps == []  # a new subscriber reads the mirror once
    rng = random.Random(7)
    model, keys, next_key = Model(), set(), [0]
    copy: dict[int, dict[str, Any]] = {}
    for _ in range(40):
        changes = random_changes(rng, keys, 50, next_key)
        model.apply(changes)
        live.apply(tx.batch(changes))
        live.refresh()
        reset, steps = deltas.take()
        assert not reset
        apply_deltas(copy, steps)
    mirror = live.mirror().sort("id")
    assert sorted(copy) == mirror.get_column("id").to_list()
    assert [copy[k]["v"] for k in sorted(copy)] == mirror.get_column("v").to_list()
    live.truncate(tx.lsn + 1)
    live.refresh()
    assert deltas.take()[0]  # a TRUNCATE: read it whole again
    live.apply(tx.batch([{"op": "c", "id": 10**6 + i, "v": i, "doc": "x", "u": None}
                         for i in range(20_000)]))
    live.refresh()
    assert deltas.take()[0]  # more than max_rows piled up: a reset, not 20,000 rows held
    deltas.close()
    assert not live._subscribers


def LiveTable_(name: str, **kwargs: Any) -> Any:
    from cdc_notebook.live.tables import LiveTable

    return LiveTable(name, SCHEMA, ["id"], fold_interval=3600, clock=lambda: 0.0, **kwargs)


@pytest.mark.skipif(not __import__("cdc_notebook.widgets.grid", fromlist=["x"]).grid_available(),
                    reason="the grid extra (perspective-python) is not installed")
def test_the_grid_holds_a_million_row_mirror_and_follows_it_by_deltas(comms: Any) -> None:
    from cdc_notebook.widgets.grid import LiveGrid

    live = LiveTable_("public.t", max_pending_rows=10**7)
    for i in range(10):
        live.apply(insert_batch(i * 100_000, 100_000, 0x1000 + i * 64))
    live.refresh()
    grid = LiveGrid(live)
    assert grid.table.size() == 1_000_000 and grid.index == "id"
    comms.clear()
    # updates, deletes, a key change: the grid gets only what changed
    tx = Transactions(start_lsn=0x100000)
    for step in range(5):
        live.apply(tx.batch(
            [{"op": "u", "id": step * 10 + j, "v": -1, "doc": "changed", "u": None}
             for j in range(5)]
            + [{"op": "d", "id": None, "v": None, "doc": None, "u": None,
                "before": {"id": 500_000 + step}},
               {"op": "u", "id": 2_000_000 + step, "v": 7, "doc": "moved", "u": None,
                "before": {"id": 600_000 + step}}]))
        live.refresh()
        sent = grid.rows_sent
        grid.refresh(step)
        assert grid.rows_sent - sent == 5 + 1 + 1 + 1  # rows updated, removed, moved away/in
    assert grid.table.size() == live.mirror().height == 1_000_000 - 5
    view = grid.table.view(filter=[["v", "==", -1]], columns=["id", "doc"])
    changed = view.to_columns()
    assert sorted(changed["id"]) == sorted(s * 10 + j for s in range(5) for j in range(5))
    assert set(changed["doc"]) == {"changed"}
    moved = grid.table.view(filter=[["id", ">=", 2_000_000]]).to_columns()
    assert sorted(moved["id"]) == [2_000_000 + s for s in range(5)]
    # no widget message per update (the browser asks for what it shows); none is large
    sent_msgs = [m for m in comms if m[2] == grid.widget.comm.comm_id]
    assert len(sent_msgs) <= 2
    assert all(len(json.dumps(m[1], default=str)) < 50_000 for m in comms)
    grid.close()
    assert not live._subscribers


@pytest.mark.skipif(not __import__("cdc_notebook.widgets.grid", fromlist=["x"]).grid_available(),
                    reason="the grid extra (perspective-python) is not installed")
def test_the_live_table_tab_shows_a_grid_and_its_changelog(comms: Any) -> None:
    frames = LiveFrames()
    tx = Transactions()
    live = frames.table("public.t", SCHEMA, ["id"])
    live.apply(tx.batch([{"op": "c", "id": i, "v": i, "doc": f"d{i}", "u": None}
                         for i in range(100)]))
    live.apply(tx.batch([{"op": "d", "id": None, "v": None, "doc": None, "u": None,
                          "before": {"id": 3}}]))
    view = TableViewWidget(TableViewModel(frames, view="grid"))
    assert view.grid is not None and view.holder.children == (view.grid.box,)
    assert view.slice_controls.layout.display == "none"
    assert view.grid.table.size() == 99 and "99 rows (mirror)" in view.info.value
    view.source.value = "changelog"
    view.refresh(10.0)
    grid = view.grid
    assert grid is not None and grid.source == "changelog"
    cols = grid.table.view().to_columns()
    assert cols["change"][-1] == "delete" and cols["id"][-1] == 3  # a delete shows its key
    assert "/" in cols["lsn"][-1]
    view.view.value = "table"
    view.refresh(20.0)
    assert view.grid is None and view.holder.children == (view.html,)
    view.close()


@pytest.mark.skipif(not __import__("cdc_notebook.widgets.grid", fromlist=["x"]).grid_available(),
                    reason="the grid extra (perspective-python) is not installed")
def test_the_message_budget_holds_with_the_grid(comms: Any) -> None:
    """The budget test above with the grid shown instead of the HTML slice: the grid takes
    every fold's delta, and the widgets still send a bounded number of small messages."""
    clock = Clock()
    frames = LiveFrames(clock=clock)
    live = frames.table("public.t", SCHEMA, ["id"])
    table_view = TableViewWidget(TableViewModel(frames, view="grid"))
    pump = UIPump(interval=0.25, clock=clock)
    pump.add(table_view)
    comms.clear()
    ticks, per_tick, rows = 300, 10, 100
    for tick in range(ticks):
        for i in range(per_tick):
            n = tick * per_tick + i
            live.apply(insert_batch(n * rows, rows, 0x1000 + n * 64))
        clock.now += 0.05
        pump.tick()
    live.refresh()  # the last changes folded (the reader does it at the fold cadence)
    clock.now += 1
    pump.tick()
    seconds = ticks * 0.05
    updates = [m for m in comms if m[0] == "comm_msg"]
    assert len(updates) / seconds <= 3 * 4
    assert all(len(json.dumps(m[1], default=str)) < 20_000 for m in updates)
    grid = table_view.grid
    assert grid is not None and grid.table.size() == live.mirror().height == 300_000
    assert grid.reloads == 0  # deltas all along, never the whole table again
    table_view.close()


# --------------------------------------------------------------------------- honest controls (issue 15)


def test_reader_controls_are_handled_off_the_main_shell_and_pause_does_not_block(
        comms: Any) -> None:
    import threading

    from cdc_notebook.widgets import ReaderModel, ReaderWidget
    from cdc_notebook.widgets._base import CONTROL_CSS, off_main_shell

    class KernelComm:  # ipykernel 7's comm routes a front-end message back to one shell
        def _reply_subshell_for(self, data: Any, default: Any) -> Any:
            return None  # the main shell: a click waits for the running cell

    class Control:  # what off_main_shell uses of a widget
        def __init__(self) -> None:
            self.comm = KernelComm()
            self.classes: list[str] = []

        def add_class(self, name: str) -> None:
            self.classes.append(name)

    control = Control()
    assert off_main_shell(control)
    assert control.comm._reply_subshell_for({}, "subshell-1") == "subshell-1"  # kept
    assert control.classes == ["cdc-control"]

    class Reader:
        def __init__(self) -> None:
            self.state = "running"
            self.error = None
            self.paused_with: list[float] = []

        def pause(self, timeout: float = 10.0) -> None:
            self.paused_with.append(timeout)
            self.state = "paused"

    model = ReaderModel(None, None, None, LiveFrames())  # type: ignore[arg-type]
    reader = Reader()
    model.reader = reader  # type: ignore[assignment]
    view = ReaderWidget(model)
    assert CONTROL_CSS in [c.value for c in view.box.children if hasattr(c, "value")]
    assert all("cdc-control" in b._dom_classes for b in (view.pause_button,
                                                          view.stop_button))
    done = threading.Event()
    threading.Thread(target=lambda: (view.pause_button.click(), done.set())).start()
    assert done.wait(1.0)  # a click returns at once
    assert reader.paused_with == [0.5] and model.state == "paused"
    view.refresh(0)
    assert "paused" in view.state.value and view.pause_button.disabled
    view.close()
