"""An in-process TCP proxy between the kit and the server that can cut or stall the network.

    proxy = FaultProxy(("127.0.0.1", server.port)).start()
    conninfo = server.conninfo("tcp", port=proxy.port)     # the kit connects through it
    proxy.cut(refuse_for=2.0)   # reset every connection; refuse new ones for 2 s
    proxy.stall(8.0)            # forward nothing, either way, for 8 s (connections stay open)
    proxy.stop()

Threads, one pair per connection (client → server, server → client), each a blocking
``recv``/``sendall`` loop gated by one event: while the gate is closed no byte moves, so the
kernel buffers fill and both peers see a silent network (what a stalled switch or a frozen VM
looks like), not a closed connection. ``cut`` ends both sockets of every connection and
closes them with ``SO_LINGER`` 0: each peer sees its connection end, then a reset (what a
rebooted middlebox looks like).
"""

from __future__ import annotations

import socket
import struct
import threading
import time


class _Pipe:
    """One proxied connection: the client's socket and ours to the server.

    Sockets are only shut down while both forwarding threads may still use them, and closed by
    the last thread to finish: closing a socket another thread is about to use would free its
    descriptor number for a new connection, which that thread would then read, write or shut
    down by mistake.
    """

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        for src, dst, name in ((self.client, self.upstream, "c2s"),
                               (self.upstream, self.client, "s2c")):
            threading.Thread(target=self._forward, args=(src, dst), daemon=True,
                             name=f"proxy-{name}").start()

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        gate = self.proxy._gate
        try:
            while not self.closed.is_set():
                gate.wait()
                data = src.recv(1 << 16)
                if not data:
                    break
                # A stall that begins while a chunk is in hand holds that chunk too.
                while not gate.wait(0.05):
                    if self.closed.is_set():
                        return
                dst.sendall(data)
                self.proxy.bytes_forwarded += len(data)
        except OSError:
            pass
        finally:
            self.close(reset=False)  # wakes the other direction
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                for sock in (self.client, self.upstream):
                    try:
                        sock.close()
                    except OSError:
                        pass
                self.proxy._forget(self)

    def close(self, reset: bool) -> None:
        """End the connection: both peers see it end (with ``reset``, the sockets are then
        closed with ``SO_LINGER`` 0, so a reset follows the end of file)."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._refuse_until = 0.0
        self._stopped = threading.Event()
        self.connections = 0  # accepted and forwarded, in total
        self.cuts = 0
        self.bytes_forwarded = 0
        self.errors: list[str] = []  # upstream connections that failed
        self._accept_thread: threading.Thread | None = None

    def start(self) -> FaultProxy:
        self._accept_thread = threading.Thread(target=self._accept, daemon=True,
                                               name="proxy-accept")
        self._accept_thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until or self._stopped.is_set():
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset: what a client sees of a host that is cut off
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError as exc:
                self.errors.append(f"connecting to {self.upstream}: {exc!r}")
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, client, upstream)
            with self._lock:
                self._pipes.add(pipe)
                self.connections += 1
            pipe.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pipes)

    def cut(self, refuse_for: float = 0.0) -> int:
        """Reset every open connection (both ends); refuse new ones for ``refuse_for`` s.
        Returns how many connections were cut."""
        self._refuse_until = time.monotonic() + refuse_for
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close(reset=True)
        self.cuts += 1
        return len(pipes)

    def stall(self, seconds: float, *, wait: bool = False) -> None:
        """Forward nothing, in either direction, for ``seconds`` (connections stay open; new
        ones are accepted but their bytes wait too). ``wait=True`` returns when it ends."""
        self._gate.clear()
        timer = threading.Timer(seconds, self._gate.set)
        timer.daemon = True
        timer.start()
        if wait:
            timer.join()

    def stop(self) -> None:
        self._stopped.set()
        self._gate.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close(reset=False)
