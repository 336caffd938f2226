"""Acknowledgement: the flush position is the newest end LSN all of whose batches were consumed.

A transaction's batches are counted as they are routed and uncounted as their readers consume
them; the flush position advances over a prefix of committed transactions with nothing
pending. With nothing in flight it follows the server's keepalives, so an idle slot pins no WAL.
"""

from __future__ import annotations

import collections
import threading


class Transaction:
    """Tracks one transaction's delivered-but-unconsumed batches."""

    __slots__ = ("xid", "end_lsn", "pending", "committed", "commit_ts", "joined_end")

    def __init__(self, xid: int, end_lsn: int, commit_ts: int = 0):
        self.xid = xid
        self.end_lsn = end_lsn
        self.commit_ts = commit_ts
        self.pending = 0
        self.committed = False
        self.joined_end = 0  # when reopened for a later transaction: the end LSN it had


class AckTracker:
    """Computes the flush position: the newest end LSN all of whose batches are consumed.

    With ``durable_only`` (a consumer that persists: a checkpoint, a sink), consumption is not
    enough: the position also waits for :meth:`durable`, the end LSN up to which the consumer
    says everything it consumed is committed. It reaches the consumed position (and follows
    idle keepalives) only once everything consumed is durable.
    """

    def __init__(self, start_lsn: int = 0, *, durable_only: bool = False):
        self._lock = threading.Lock()
        self._open: collections.deque[Transaction] = collections.deque()
        self._consumed = start_lsn  # newest end LSN all of whose batches are consumed (or idle)
        self._consumed_commit = start_lsn  # end LSN of the newest consumed transaction
        self._durable = start_lsn
        self.durable_only = durable_only
        self.in_transaction = False
        self.received = start_lsn  # newest commit end LSN (or idle keepalive WAL end) seen

    @property
    def flushed(self) -> int:
        """What may be reported to the server as flushed."""
        with self._lock:
            if not self.durable_only or self._durable >= self._consumed_commit:
                return self._consumed
            return min(self._consumed, self._durable)

    @property
    def consumed_lsn(self) -> int:
        """The newest end LSN all of whose batches were consumed (durable or not)."""
        return self._consumed

    def durable(self, lsn: int) -> None:
        """The consumer has durably committed everything it consumed up to end LSN ``lsn``."""
        with self._lock:
            self._durable = max(self._durable, lsn)

    #: Transactions tracked one by one; past this many in flight (a reader far behind holds
    #: the oldest), a new transaction joins the newest committed one, so the bookkeeping stays
    #: bounded (a few hundred bytes each) however long the reader stays behind. Acknowledgement
    #: then moves over the joined ones together, which is all it could do anyway.
    max_tracked = 1024

    def begin(self, xid: int, end_lsn: int, commit_ts: int) -> Transaction:
        with self._lock:
            tail = self._open[-1] if self._open else None
            if tail is not None and tail.committed and len(self._open) >= self.max_tracked:
                tail.committed = False  # reopened: it ends with this transaction's commit
                tail.joined_end = tail.end_lsn
                self.in_transaction = True
                return tail
            txn = Transaction(xid, end_lsn, commit_ts)
            self._open.append(txn)
            self.in_transaction = True
        return txn

    def add(self, txn: Transaction) -> None:
        with self._lock:
            txn.pending += 1

    def consumed(self, txn: Transaction) -> None:
        """One batch of ``txn`` was consumed."""
        with self._lock:
            txn.pending -= 1
            self._advance()

    def commit(self, txn: Transaction, end_lsn: int) -> None:
        with self._lock:
            txn.end_lsn = end_lsn
            txn.committed = True
            txn.joined_end = 0
            self.in_transaction = False
            self.received = max(self.received, end_lsn)
            self._advance()

    def abandon_open(self) -> None:
        """A connection was lost mid-transaction: it will be resent from the slot."""
        with self._lock:
            while self._open and not self._open[-1].committed:
                tail = self._open[-1]
                if tail.joined_end:  # what it held before it was reopened stays tracked
                    tail.end_lsn, tail.committed, tail.joined_end = tail.joined_end, True, 0
                    break
                self._open.pop()
            self.in_transaction = False
            self._advance()

    def idle(self, wal_end: int) -> None:
        """A keepalive (or message header) says the server has sent up to ``wal_end``."""
        with self._lock:
            if not self._open and not self.in_transaction and wal_end > self._consumed:
                self._consumed = wal_end
            if not self.in_transaction:
                self.received = max(self.received, wal_end)

    def _advance(self) -> None:
        while self._open and self._open[0].committed and self._open[0].pending <= 0:
            end = self._open.popleft().end_lsn
            self._consumed = max(self._consumed, end)
            self._consumed_commit = max(self._consumed_commit, end)

    @property
    def oldest_unacknowledged_commit_ts(self) -> int | None:
        with self._lock:
            return self._open[0].commit_ts if self._open else None

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._open)
