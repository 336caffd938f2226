"""The fault-injection suite, quick form: each fault once per plugin, ~20,000 changes each.

For each fault × plugin, on a private server of the parametrized version: a writer commits
inserts, updates (key changes among them) and deletes in transactions of varying size while a
consumer process follows the table through ``CDCStream`` (over TCP, through a fault proxy) and
logs every delivered change durably; the fault is injected mid-stream; the stream must recover
by itself; then the consumer drains to the server's WAL position and what was delivered is
compared with the writer's log (``tests/faults/``; the full form, ``python -m tests.faults``,
writes ``docs/reliability.md``).

Asserted: 0 lost, 0 duplicated past the high-water mark, nothing out of order per row, no
consumer death — or, for the invalidated slot, the documented clear error (``wal_status =
lost``, ``max_slot_wal_keep_size`` and the fix), with nothing duplicated and no hole before it.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import FAULTS, PLUGINS, EnvironmentUnavailable, run_fault

QUICK_CHANGES = 20_000
QUICK_RATE = 4_000.0  # changes/s: the fault lands ~2 s into the writes


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(fault: str, plugin: str, pg_factory, tmp_path, capsys) -> None:
    server = pg_factory(settings=FAULTS[fault].settings)
    try:
        result = run_fault(server, plugin, fault, changes=QUICK_CHANGES, rate=QUICK_RATE,
                           workdir=tmp_path)
    except EnvironmentUnavailable as exc:
        pytest.skip(str(exc))  # the machine cannot set the fault up (not the product's fault)
    with capsys.disabled():
        print("\n" + result.explain())
    assert result.ok, result.explain()
