"""Acknowledgement bookkeeping: only what consumers finished with is reported as flushed."""

from __future__ import annotations

from cdc_notebook.stream.acks import AckTracker


def test_flush_waits_for_every_batch_of_a_transaction() -> None:
    acks = AckTracker(start_lsn=100)
    t1 = acks.begin(xid=1, end_lsn=200, commit_ts=0)
    acks.add(t1)
    acks.add(t1)
    acks.commit(t1, 200)
    assert acks.flushed == 100
    acks.consumed(t1)
    assert acks.flushed == 100
    acks.consumed(t1)
    assert acks.flushed == 200


def test_flush_never_passes_an_older_unconsumed_transaction() -> None:
    acks = AckTracker()
    t1 = acks.begin(1, 200, 0)
    acks.add(t1)
    acks.commit(t1, 200)
    t2 = acks.begin(2, 300, 0)
    acks.add(t2)
    acks.commit(t2, 300)
    acks.consumed(t2)  # a faster reader finished the newer one first
    assert acks.flushed == 0
    acks.consumed(t1)
    assert acks.flushed == 300


def test_keepalives_advance_only_when_idle() -> None:
    acks = AckTracker()
    acks.idle(500)
    assert acks.flushed == 500
    t = acks.begin(1, 900, 0)
    acks.idle(800)  # mid-transaction: must not move
    assert acks.flushed == 500
    acks.add(t)
    acks.commit(t, 900)
    acks.idle(1000)  # a batch still unconsumed: must not move
    assert acks.flushed == 500
    acks.consumed(t)
    assert acks.flushed == 900
    acks.idle(1000)
    assert acks.flushed == 1000


def test_a_lost_connection_abandons_the_open_transaction() -> None:
    acks = AckTracker()
    t1 = acks.begin(1, 200, 0)
    acks.commit(t1, 200)
    t2 = acks.begin(2, 300, 0)
    acks.add(t2)
    acks.abandon_open()
    assert acks.flushed == 200
    assert acks.in_flight == 0 and not acks.in_transaction


def test_durable_only_waits_for_what_the_consumer_committed():
    acks = AckTracker(durable_only=True)
    t1 = acks.begin(1, 0, 0)
    acks.add(t1)
    acks.commit(t1, 100)
    acks.consumed(t1)
    assert acks.consumed_lsn == 100 and acks.flushed == 0  # in memory only
    acks.idle(150)  # nothing in flight, but what was consumed is not durable yet
    assert acks.flushed == 0
    acks.durable(100)  # the checkpoint holds everything consumed
    assert acks.flushed == 150  # and the idle position follows again
    t2 = acks.begin(2, 0, 0)
    acks.add(t2)
    acks.commit(t2, 300)
    acks.consumed(t2)
    assert acks.flushed == 100  # the durable position, not the consumed one
    acks.durable(300)
    assert acks.flushed == 300


def test_transactions_far_behind_a_reader_are_tracked_in_bounded_memory():
    acks = AckTracker()
    acks.max_tracked = 8
    first = acks.begin(1, 0, 0)
    acks.add(first)  # an unread reader holds this one
    acks.commit(first, 10)
    for i in range(2, 1002):  # then a thousand transactions another reader consumes at once
        txn = acks.begin(i, 0, 0)
        acks.add(txn)
        acks.commit(txn, 10 * i)
        acks.consumed(txn)
    assert acks.in_flight == 8 and acks.flushed == 0
    acks.consumed(first)
    assert acks.flushed == 10_010 and acks.in_flight == 0


def test_a_joined_transaction_waits_for_every_part():
    acks = AckTracker()
    acks.max_tracked = 2
    head = acks.begin(1, 0, 0)
    acks.add(head)
    acks.commit(head, 10)
    second = acks.begin(2, 0, 0)
    acks.commit(second, 20)
    third = acks.begin(3, 0, 0)  # joins the second
    assert third is second
    acks.add(third)
    acks.commit(third, 30)
    acks.consumed(head)
    assert acks.flushed == 10  # the joined pair waits for the third's batch
    acks.consumed(third)
    assert acks.flushed == 30


def test_a_lost_connection_keeps_what_a_reopened_transaction_held():
    acks = AckTracker()
    acks.max_tracked = 1
    held = acks.begin(1, 0, 0)
    acks.add(held)  # not consumed yet
    acks.commit(held, 10)
    joined = acks.begin(2, 0, 0)  # joins it; then the connection breaks mid-transaction
    acks.abandon_open()
    assert acks.in_flight == 1 and acks.flushed == 0
    acks.idle(50)
    assert acks.flushed == 0  # the held batch still pins its position
    acks.consumed(joined)
    assert acks.flushed == 10
