"""One slot streamed over one replication connection and decoded: what the router reads.

The product's only stream stack: ``CDCStream``'s router reads a :class:`ReplicationSource`,
and the minimal clients of the tests and benchmarks (``bench/clients.py``) drive the same class.
It owns the replication connection and the decoder, answers nothing by itself (acknowledgement
is the router's), and says when a restart in text mode fixes a failure: a binary-mode pgoutput stream that meets a
relation the kit reads only as text (:meth:`ReplicationSource.needs_text_restart`). The restart
needs a new connection (PostgreSQL's walsender does not restart a logical COPY on the same one),
so a temporary slot, which ends with its connection, streams pgoutput in text from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from cdc_notebook.decode.decoder import Decoder, make_decoder
from cdc_notebook.decode.events import Event, Keepalive
from cdc_notebook.errors import BinaryModeUnsupported
from cdc_notebook.stream.replication import ReplicationConnection

DecoderFactory = Callable[[bool | None], tuple[Decoder, dict[str, str]]]
"""``binary`` (None: the decoder chooses; False: text) → a decoder and its START_REPLICATION
options."""


def plugin_decoders(plugin: str, publication: str | None,
                    conninfo: Mapping[str, Any] | str | None,
                    extra_options: Mapping[str, str] | None = None) -> DecoderFactory:
    """The decoder factory of ``plugin`` (:func:`~cdc_notebook.decode.decoder.make_decoder`),
    with ``extra_options`` added to the plugin's START_REPLICATION options."""
    def factory(binary: bool | None) -> tuple[Decoder, dict[str, str]]:
        decoder, options = make_decoder(plugin, publication, conninfo, binary=binary)
        return decoder, {**options, **dict(extra_options or {})}
    return factory


class ReplicationSource:
    """Decoded events of one slot; ``read()`` never blocks longer than its timeout."""

    def __init__(self, rc: ReplicationConnection, slot: str, decoders: DecoderFactory, *,
                 start_lsn: int = 0, binary: bool | None = None):
        self.rc = rc
        self.slot = slot
        self._decoders = decoders
        self.restarts = 0
        self.decoder: Decoder | None = None
        try:
            self.decoder, options = decoders(binary)
            self.rc.start(slot, start_lsn, options)
        except BaseException:
            self.close()
            raise

    @property
    def binary(self) -> bool:
        return self.decoder is not None and self.decoder.binary

    @property
    def mode_reason(self) -> str:
        """pgoutput: binary or text, and why; wal2arrow: Arrow frames."""
        return str(getattr(self.decoder, "mode_reason", "Arrow IPC frames"))

    def read(self, timeout: float) -> Iterator[Event | Keepalive]:
        """What arrives within ``timeout`` (waiting at most that long for the first message)."""
        messages = self.rc.read_raw(timeout=timeout)
        if messages and self.decoder is not None:
            yield from self.decoder.feed(messages)

    def needs_text_restart(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a binary pgoutput stream meeting a relation the kit reads only
        as text: the stream must start again in text mode from what was acknowledged (a new
        connection; nothing of the interrupted transaction was emitted, since pgoutput's
        decoder emits a transaction's rows at its commit)."""
        return isinstance(exc, BinaryModeUnsupported) and self.binary

    def send_feedback(self, lsn: int, reply: bool = False) -> None:
        self.rc.send_feedback(lsn, reply=reply)

    def close(self) -> None:
        self.rc.close()
        if self.decoder is not None:
            self.decoder.close()
