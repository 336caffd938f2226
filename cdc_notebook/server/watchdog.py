"""Stops a throwaway PostgreSQL when the process that owns it dies.

Started by :mod:`cdc_notebook.server.postgres` in its own session, with a pipe on stdin whose write end
only the owner holds. The owner writes ``pid N`` once the postmaster runs and ``stopped`` after
a clean stop. End of file without ``stopped`` (the owner was killed, even with SIGKILL, where
atexit handlers never run) makes the watchdog stop the postmaster's process group and remove
the instance directory.

Usage: python -m cdc_notebook.server.watchdog INSTANCE_DIR
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_postmaster(pid: int, timeout: float = 15.0) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL of the whole group."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(pid, sig)  # the postmaster leads its own session and group
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    instance_dir = argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C aimed at the owner is not for us
    pid: int | None = None
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "pid":
            pid = int(rest)
        elif word == "stopped":
            return 0
    # The owner went away without stopping the server.
    if pid is not None:
        stop_postmaster(pid)
    shutil.rmtree(instance_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
