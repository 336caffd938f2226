"""Exceptions of the kit. Each one says what went wrong and names the fix."""

from __future__ import annotations


class CDCError(Exception):
    """Base class of every error the kit raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None, sqlstate: str | None = None):
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate
        text = message
        if sqlstate:
            text = f"{text} (SQLSTATE {sqlstate})"
        if hint:
            text = f"{text}\n  Fix: {hint}"
        super().__init__(text)


class ServerError(CDCError):
    """The throwaway PostgreSQL could not be found, initialised, started or stopped."""


class BinariesNotFound(ServerError):
    """No PostgreSQL installation matches what was asked for."""


class PortInUse(ServerError):
    """The port asked for is already taken."""


class DataDirNotWritable(ServerError):
    """The directory chosen for the server's data cannot be written."""


class PluginBuildError(CDCError):
    """wal2arrow failed to compile or link against the server's headers."""
