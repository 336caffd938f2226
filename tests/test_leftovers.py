"""What the kit leaves on the user's database (issue 14, "Leftovers"): nothing, unless asked.

* a temporary stream's kit publication goes with ``close()`` (unless another kit slot still
  uses it), and the replica identity its set-up changed is restored;
* a permanent stream says so (``repr``, ``status().summary()``, with the WAL it retains) and
  ``stream.teardown()`` / ``teardown(stream)`` take its slot and publication down;
* a process killed mid-stream (SIGKILL: no ``close()``, no ``atexit``) leaves its publication,
  whose slot went with the connection: the next kit start drops it, and so does
  ``teardown(conn)`` with nothing named; never while a set-up holds the kit's lock;
* the kit recognises its objects by the marker, so another tool's ``cdcnb_*`` slot and
  publication survive ``teardown(all_kit_objects=True)``.

Real servers, PostgreSQL 15 and 18; each test in a database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_notebook.errors import NotKitManaged
from cdc_notebook.provision.records import KIT_LOCK_KEY, parse_marker
from cdc_notebook.provision.teardown import (
    list_slots,
    plan_teardown,
    sweep_orphaned_publications,
    teardown,
)
from cdc_notebook.stream.cdc_stream import CDCStream

from .test_provision import private_database

REPO = Path(__file__).resolve().parent.parent

TABLES = """
CREATE SCHEMA a; CREATE TABLE a.t (id int PRIMARY KEY, v text);
CREATE SCHEMA b; CREATE TABLE b.t (id int PRIMARY KEY, v text);
CREATE SCHEMA k; CREATE TABLE k.t (id int, v text);
"""


@pytest.fixture
def db(pg: Any, unique_name: Callable[[str], str]) -> Iterator[dict[str, Any]]:
    with private_database(pg, unique_name("left"), TABLES) as info:
        yield info


@pytest.fixture
def conn(db: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**db, autocommit=True) as c:
        yield c


def slots(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots "
                                       "WHERE database = current_database()").fetchall()}


def publications(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any] | None]:
    return {name: parse_marker(comment) for name, comment in conn.execute(
        "SELECT pubname, obj_description(oid, 'pg_publication') FROM pg_publication").fetchall()}


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --------------------------------------------------------------------------- temporary streams


def test_a_temporary_stream_leaves_nothing_once_closed(conn: psycopg.Connection[Any],
                                                       db: dict[str, Any]) -> None:
    stream = CDCStream(db, "a.*", temporary=True)
    assert stream.slot.temporary and stream.publication in publications(conn)
    marker = publications(conn)[stream.publication]
    assert marker is not None and marker["temporary"] == [stream.slot.slot_name]
    assert "temporary slot" in repr(stream) and "goes when the stream closes" in repr(stream)
    assert "(temporary)" in stream.status().summary()
    conn.execute("INSERT INTO a.t VALUES (1, 'x')")
    assert sum(b.num_rows for b in stream["a.t"].batches()) == 1
    stream.close()
    assert stream.closed and "closed" in repr(stream)
    assert wait_for(lambda: not slots(conn))
    assert publications(conn) == {}  # the kit publication made for it went with it


def test_a_temporary_stream_keeps_a_publication_another_kit_slot_uses(
        conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    kept = CDCStream(db, "a.*", slot_name="kept_slot", publication="shared_pub")
    temp = CDCStream(db, "a.*", slot_name="temp_slot", publication="shared_pub",
                     temporary=True)
    marker = publications(conn)["shared_pub"]
    assert marker is not None and marker["slots"] == ["kept_slot", "temp_slot"]
    assert marker["temporary"] == ["temp_slot"]
    temp.close()
    kept.close()
    marker = publications(conn)["shared_pub"]  # kept_slot still uses it
    assert marker is not None and marker["slots"] == ["kept_slot"] and "temporary" not in marker
    assert slots(conn) == {"kept_slot"}
    report = kept.teardown()
    assert report.actions == ["drop slot kept_slot",
                              "drop publication shared_pub (made for the slots that go)"]
    assert slots(conn) == set() and publications(conn) == {}


def test_the_replica_identity_a_temporary_stream_set_is_restored_on_close(
        conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    stream = CDCStream(db, "k.*", temporary=True, keyless="full", plugin="pgoutput")
    assert conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'k.t'::regclass"
                        ).fetchone()[0] == "f"
    stream.close()
    assert publications(conn) == {}
    assert conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'k.t'::regclass"
                        ).fetchone()[0] == "d"


EXITS = """
import json, sys
from cdc_notebook.stream.cdc_stream import CDCStream
stream = CDCStream(json.loads(sys.argv[1]), sys.argv[2], temporary=True)
print(json.dumps([stream.slot.slot_name, stream.publication]), flush=True)
"""  # and exits without close(): the stream's finalizer runs at interpreter exit


def test_a_temporary_stream_not_closed_leaves_nothing_at_interpreter_exit(
        conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-c", EXITS, json.dumps(db), "a.*"], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    slot, publication = json.loads(out.stdout)
    assert slot.startswith("cdcnb_") and publication
    assert wait_for(lambda: not slots(conn)) and publications(conn) == {}


# --------------------------------------------------------------------------- permanent streams


@pytest.mark.parametrize("how", ["method", "function"])
def test_a_permanent_stream_says_so_and_teardown_takes_it_down(
        conn: psycopg.Connection[Any], db: dict[str, Any], how: str) -> None:
    stream = CDCStream(db, "a.*")
    conn.execute("INSERT INTO a.t SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
    status = stream.status()
    assert "(permanent)" in status.summary()
    text = repr(stream)
    assert "permanent slot" in text and "retains WAL" in text and " of WAL" in text
    assert "stream.teardown()" in text
    assert stream.slot_description(status).endswith(
        "stream.teardown() drops it and its publication")
    stream.close()
    # a permanent slot and its publication stay after close() (a reader resumes from them)
    assert slots(conn) == {stream.slot.slot_name}
    assert stream.publication in publications(conn)
    assert "permanent slot" in repr(stream)  # asked of the server on a connection of its own
    report = stream.teardown() if how == "method" else teardown(stream)
    assert f"drop slot {stream.slot.slot_name}" in report.actions
    assert slots(conn) == set() and publications(conn) == {}


def test_teardown_of_an_open_stream_closes_it_first(conn: psycopg.Connection[Any],
                                                    db: dict[str, Any]) -> None:
    stream = CDCStream(db, "a.*").start()
    assert wait_for(lambda: bool(conn.execute(
        "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
        [stream.slot.slot_name]).fetchone()[0]))
    plan = plan_teardown(conn, stream=stream)  # the stream's own walsender: not "in use"
    assert plan.sql[0] == "-- stream.close()"
    assert any("pg_drop_replication_slot" in s for s in plan.sql)
    report = plan.apply()
    assert stream.closed and report.actions[0].startswith("close the stream")
    assert slots(conn) == set() and publications(conn) == {}


# --------------------------------------------------------------------------- killed mid-stream


KILLED = """
import json, sys, time
from cdc_notebook.live.tables import LiveReader
from cdc_notebook.stream.cdc_stream import CDCStream
stream = CDCStream(json.loads(sys.argv[1]), sys.argv[2], temporary=True)
reader = LiveReader(stream).start()
print(json.dumps([stream.slot.slot_name, stream.publication]), flush=True)
while True:
    time.sleep(1)
"""


def kill_mid_stream(db: dict[str, Any], pattern: str,
                    conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """A notebook-like process streaming on a temporary slot, SIGKILLed (a kernel restart):
    its slot goes with its connection, its publication stays."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED, json.dumps(db), pattern],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        slot, publication = json.loads(proc.stdout.readline())
        conn.execute("INSERT INTO a.t SELECT g, 'x' FROM generate_series(1, 100) g "
                     "ON CONFLICT (id) DO UPDATE SET v = 'y'")
        assert slot in slots(conn)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert wait_for(lambda: slot not in slots(conn))
    assert publication in publications(conn)  # what the clean-up paths are for
    return slot, publication


@pytest.mark.parametrize("clean_up", ["the next stream's start", "teardown(conn)"])
def test_a_stream_killed_mid_stream_leaves_nothing_after_the_clean_up(
        conn: psycopg.Connection[Any], db: dict[str, Any], clean_up: str) -> None:
    # a permanent slot of the user's, with its publication: not touched by either path
    kept = CDCStream(db, "b.*")
    kept.close()
    kept_pub = kept.publication
    _slot, publication = kill_mid_stream(db, "a.*", conn)
    if clean_up == "teardown(conn)":
        plan = plan_teardown(conn)
        assert plan.publications == [publication] and plan.slots == []
        report = plan.apply()
        assert report.actions == [f"drop publication {publication} (every slot it recorded "
                                  "is gone)"]
    else:
        with CDCStream(db, "b.t", temporary=True):  # any kit start on the database
            assert publication not in publications(conn)
    assert slots(conn) == {kept.slot.slot_name}
    assert set(publications(conn)) == {kept_pub}
    kept.teardown()
    assert slots(conn) == set() and publications(conn) == {}


def test_clean_up_never_takes_a_publication_whose_slot_is_being_created(
        conn: psycopg.Connection[Any], db: dict[str, Any]) -> None:
    _slot, publication = kill_mid_stream(db, "a.*", conn)
    with psycopg.connect(**db, autocommit=True) as setup:
        # a set-up of the kit holds the lock (shared) while it creates the slot its
        # publication records
        setup.execute("SELECT pg_advisory_lock_shared(%s::int8)", [KIT_LOCK_KEY])
        assert sweep_orphaned_publications(conn) == []
        report = plan_teardown(conn).apply(wait=0.2)
        assert report.actions == [] and "a set-up of the kit is running" in report.skipped[0]
        assert publication in publications(conn)
        # the slot exists: the set-up lets go (its backend's exit would, a moment after)
        setup.execute("SELECT pg_advisory_unlock_shared(%s::int8)", [KIT_LOCK_KEY])
    assert sweep_orphaned_publications(conn) == [
        f"dropped publication {publication} (its temporary slots are gone)"]
    assert publications(conn) == {}


# --------------------------------------------------------------------------- recognition


def test_another_tools_cdcnb_slot_and_publication_survive(conn: psycopg.Connection[Any],
                                                          db: dict[str, Any]) -> None:
    conn.execute("SELECT pg_create_logical_replication_slot('cdcnb_x', 'test_decoding')")
    conn.execute("CREATE PUBLICATION cdcnb_x FOR TABLE a.t")
    ours = CDCStream(db, "b.*", plugin="pgoutput")
    ours.close()
    assert {s.slot_name for s in list_slots(conn)} == {ours.slot.slot_name}
    assert not next(s for s in list_slots(conn, kit_only=False)
                    if s.slot_name == "cdcnb_x").kit_managed
    with pytest.raises(NotKitManaged, match="proves nothing"):
        teardown(conn, slot_name="cdcnb_x")
    with pytest.raises(NotKitManaged):
        teardown(conn, publication="cdcnb_x")
    for options in ({"stale": True}, {}, {"all_kit_objects": True}):
        teardown(conn, **options)
        assert "cdcnb_x" in slots(conn) and "cdcnb_x" in publications(conn)
    assert slots(conn) == {"cdcnb_x"} and set(publications(conn)) == {"cdcnb_x"}
    conn.execute("SELECT pg_drop_replication_slot('cdcnb_x')")
