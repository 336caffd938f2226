"""The UI pump on an injected clock: bounded rate, no tick without a change, errors contained."""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w
import pytest

from cdc_notebook.widgets.pump import UIPump, held, set_changed


class CountingView:
    def __init__(self, min_interval: float = 0.25) -> None:
        self.min_interval = min_interval
        self.source = 0
        self.refreshed: list[float] = []

    def version(self) -> int:
        return self.source

    def refresh(self, now: float) -> None:
        self.refreshed.append(now)


def test_no_refresh_when_the_version_did_not_move() -> None:
    pump = UIPump(clock=lambda: 0.0)
    view = pump.add(CountingView())
    assert pump.tick(0.0) == 1  # first sight
    assert pump.tick(1.0) == 0 and pump.tick(2.0) == 0
    view.source += 1
    assert pump.tick(3.0) == 1
    assert view.refreshed == [0.0, 3.0]


def test_refresh_rate_is_bounded_per_view_whatever_the_change_rate() -> None:
    pump = UIPump()
    numbers = pump.add(CountingView(0.25))
    chart = pump.add(CountingView(1.0))
    now = 0.0
    for _ in range(1000):  # 50 s, a change every 50 ms
        numbers.source += 1
        chart.source += 1
        now += 0.05
        pump.tick(now)
    assert len(numbers.refreshed) == pytest.approx(50 / 0.25, abs=2)
    assert len(chart.refreshed) == pytest.approx(50 / 1.0, abs=2)


def test_a_failing_view_or_hook_does_not_stop_the_pump() -> None:
    errors: list[Any] = []
    pump = UIPump(on_error=lambda who, exc: errors.append(exc))

    class Broken(CountingView):
        def refresh(self, now: float) -> None:
            raise ValueError("boom")

    broken = pump.add(Broken())
    good = pump.add(CountingView())
    pump.add_hook(lambda now: 1 / 0)
    pump.tick(0.0)
    assert len(good.refreshed) == 1 and len(errors) == 2
    assert "boom" in pump.errors[-1]
    # The broken view is retried at its next interval, not at every tick.
    pump.tick(0.1)
    assert len(errors) == 3  # only the hook again
    del broken


def test_thread_ticks_and_stops() -> None:
    pump = UIPump(interval=0.01)
    ticked = threading.Event()
    view = pump.add(CountingView(0.0))
    pump.add_hook(lambda now: (setattr(view, "source", view.source + 1), ticked.set()))
    pump.start()
    assert ticked.wait(10)
    pump.stop()
    assert not pump.running
    count = pump.ticks
    assert pump.ticks == count and count >= 1


def test_set_changed_inside_held_sends_one_message_per_widget(monkeypatch: Any) -> None:
    import comm
    from comm.base_comm import BaseComm

    sent: list[str] = []

    class Recording(BaseComm):
        def publish_msg(self, msg_type: str, *args: Any, **kwargs: Any) -> None:
            sent.append(msg_type)

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: Recording(*a, **k))
    label, button = w.HTML(), w.Button()
    sent.clear()
    with held(label, button):
        assert set_changed(label, value="a", placeholder="b") == 2
        assert set_changed(button, description="go", disabled=True) == 2
    assert sent == ["comm_msg", "comm_msg"]
    sent.clear()
    with held(label, button):
        assert set_changed(label, value="a") == 0
    assert sent == []
    pump = UIPump()
    closable = pump.add(type("V", (), {"min_interval": 0, "version": lambda s: 0,
                                       "refresh": lambda s, n: None,
                                       "close": lambda s: label.close()})())
    pump.close()
    assert label.comm is None and pump.views == []
    del closable
    button.close()
