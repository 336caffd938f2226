"""Connecting: one ``connect`` for every ordinary and replication connection the kit opens,
errors mapped to :class:`~cdc_notebook.errors.ConnectionFailed` subclasses that name the fix, the
kit's session settings, and the redaction of conninfo for anything shown to a person."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import psycopg

from cdc_notebook.errors import (
    AuthenticationFailed,
    CDCError,
    ConnectionFailed,
    ConnectionRejected,
    NoFreeWalSenders,
    ReplicationNotPermitted,
    ServerUnreachable,
)

# Session settings under which the server's text output is what the decoders and the spec
# expect (the text of unrepresentable values, of types mapped as text).
SESSION_SETTINGS = {"DateStyle": "ISO,YMD", "IntervalStyle": "postgres", "TimeZone": "UTC",
                    "extra_float_digits": "1", "bytea_output": "hex"}
SESSION_OPTIONS = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())


def apply_session_settings(conn: psycopg.Connection[Any]) -> None:
    """SET the kit's session settings on an open connection (one opened without them; on a
    replication connection, only once it holds no exported snapshot any more)."""
    from cdc_notebook.connection.quoting import quote_ident, quote_literal

    for name, value in SESSION_SETTINGS.items():
        conn.execute(f"SET {quote_ident(name)} = {quote_literal(value)}".encode(), prepare=False)




def conninfo_of(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The parameters ``conn`` was opened with, password included (kept in memory only)."""
    params: dict[str, Any] = dict(conn.info.get_parameters())
    for opt in conn.pgconn.info:
        if opt.keyword == b"password" and opt.val:
            params["password"] = opt.val.decode()
    return params


def describe_target(params: dict[str, Any]) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return (f"{params.get('user') or os.environ.get('PGUSER', '?')}@{host}:"
            f"{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or '?'}")


def _connection_error(exc: psycopg.OperationalError, params: dict[str, Any],
                      replication: bool) -> CDCError:
    # libpq never echoes the password, but be certain (and of any password= or URL in it)
    text = redact_text(str(exc), params.get("password"))
    target = describe_target(params)
    low = text.lower()
    user = params.get("user") or "the user"
    if "password authentication failed" in low or "no password supplied" in low or \
            "authentication failed" in low:
        return AuthenticationFailed(
            f"{target}: the server rejected the password for {user}",
            hint="check the user name and password (PGPASSWORD or ~/.pgpass work too)",
            sqlstate="28P01")
    if "permission denied to start wal sender" in low or "must be superuser or replication" in low:
        return ReplicationNotPermitted(
            f"{target}: role {user} may not open a replication connection",
            hint=f"ALTER ROLE {user} REPLICATION; (as a superuser) — on Amazon RDS/Aurora: "
            f"GRANT rds_replication TO {user};", sqlstate="42501")
    if "exceeds max_wal_senders" in low or "number of requested standby connections" in low:
        return NoFreeWalSenders(
            f"{target}: every WAL sender is in use (max_wal_senders)",
            hint="raise max_wal_senders in postgresql.conf and restart the server, or stop an "
            "idle replication client", sqlstate="53300")
    if "no pg_hba.conf entry" in low or "pg_hba.conf rejects" in low:
        kind = "replication" if replication else params.get("dbname", "all")
        return ConnectionRejected(
            f"{target}: pg_hba.conf has no entry allowing this "
            f"{'replication ' if replication else ''}connection",
            hint=f"add a line to pg_hba.conf such as 'host {kind} {user} <client-address>/32 "
            "scram-sha-256' and reload the server (SELECT pg_reload_conf())", sqlstate="28000")
    if "database" in low and "does not exist" in low:
        return ConnectionRejected(f"{target}: {text.splitlines()[-1].strip()}",
                                  hint="check the database name", sqlstate="3D000")
    if "too many clients" in low or "remaining connection slots" in low:
        return ConnectionRejected(f"{target}: the server has no free connection slot",
                                  hint="raise max_connections or close idle sessions",
                                  sqlstate="53300")
    if any(s in low for s in ("connection refused", "could not translate host",
                              "failed to resolve host", "timeout expired", "no route to host",
                              "no such file or directory", "network is unreachable",
                              "could not connect", "name or service not known")):
        return ServerUnreachable(
            f"cannot reach PostgreSQL at {target}: {text.splitlines()[-1].strip()}",
            hint="check host and port, that the server runs, and listen_addresses in "
            "postgresql.conf (and any firewall between)")
    if any(s in low for s in ("the database system is starting up",
                              "the database system is shutting down",
                              "the database system is in recovery mode",
                              "the database system is not yet accepting connections",
                              "the database system is not accepting connections",
                              "server closed the connection unexpectedly",
                              "terminating connection", "connection reset by peer",
                              "connection timed out", "ssl syscall error")):
        # The server answered but is (re)starting, stopping or recovering, or the connection
        # broke half-way: like an unreachable server, this passes (ServerUnreachable is
        # transient: the stream reconnects).
        return ServerUnreachable(
            f"PostgreSQL at {target} is not accepting connections right now: "
            f"{' '.join(text.split())}",
            hint="wait for the server to finish starting (or restarting), or start it")
    return ConnectionFailed(f"cannot connect to {target}: {text}")


def connect(conninfo: str | Mapping[str, Any] | None = None, *, replication: bool = False,
            connect_timeout: int = 10, autocommit: bool = True,
            **params: Any) -> psycopg.Connection[Any]:
    """Open a connection; failures become :class:`ConnectionFailed` subclasses naming the fix.

    ``replication=True`` opens a ``replication=database`` connection (simple query protocol
    only). Every libpq parameter passes through (``sslmode=``, ``sslrootcert=`` ...).
    """
    merged = parse_conninfo(conninfo)
    merged.update({k: v for k, v in params.items() if v is not None})
    merged.setdefault("connect_timeout", connect_timeout)
    if replication:
        merged["replication"] = "database"
    try:
        return psycopg.connect(**merged, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise _connection_error(exc, merged, replication) from None


def session_conninfo(conninfo: Mapping[str, Any] | str) -> dict[str, Any]:
    """``conninfo`` as a dict with the kit's session settings added to ``options``."""
    params = parse_conninfo(conninfo)
    params["options"] = (str(params.get("options") or "") + " " + SESSION_OPTIONS).strip()
    return params


def connect_session(conninfo: Mapping[str, Any] | str, **kw: Any) -> psycopg.Connection[Any]:
    """:func:`connect` with the kit's session settings (text output as the spec needs);
    not autocommit unless asked."""
    kw.setdefault("autocommit", False)
    return connect(session_conninfo(conninfo), **kw)


def one_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The row of a statement that returns exactly one (a function call, an aggregate)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("internal error: a single-row query returned no row")
    return row


# password=value: a quoted value, or an unquoted one and the words after it up to the next
# key=value (a password with an unquoted space is a mistake whose second half must not show)
_PASSWORD_IN_DSN = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+(?:[ \t]+(?![\w.-]+\s*=)[^\s=]+)*)",
    re.IGNORECASE)
# user:password@ in a URL; the password runs to the last @ before the host's /, ? or # (an
# unescaped @ or space in it is a mistake whose every part must stay hidden)
_PASSWORD_IN_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^/?#\n]*)(@)", re.IGNORECASE)
# SQL: CREATE/ALTER ROLE ... PASSWORD '...' (in a server log or a statement's text)
_PASSWORD_IN_SQL = re.compile(r"(\bPASSWORD\s+)([EU]&)?'(?:[^']|'')*'", re.IGNORECASE)
# libpq's parse errors quote the part of the string they stopped at: it may be the password
# (missing "=" after "<second half of a password with a space>", invalid percent-encoded
# token: "<password>", unexpected spaces found in "<password>")
_QUOTED_FRAGMENT = re.compile(r'"([^"]*)"')
_HARMLESS_FRAGMENTS = {"=", "]", "[", ":", "/", "@", "?"}


def redact_text(text: str, password: str | None = None) -> str:
    """``text`` with every password it may hold masked: a ``password=`` pair, a URL's
    ``user:password@``, a SQL ``PASSWORD '...'`` literal, and the literal ``password`` if
    given."""
    if password:
        text = text.replace(str(password), "********")
    text = _PASSWORD_IN_DSN.sub(lambda m: m.group(1) + "********", text)
    text = _PASSWORD_IN_SQL.sub(lambda m: m.group(1) + "'********'", text)
    return _PASSWORD_IN_URL.sub(lambda m: m.group(1) + "********" + m.group(3), text)


def _may_hold_password(conninfo: str) -> bool:
    return "password" in conninfo.lower() or bool(
        re.match(r"\s*postgres(?:ql)?://[^/?#@]*:[^/?#]*@", conninfo, re.IGNORECASE))


def _parse_error_text(message: str, conninfo: str) -> str:
    """libpq's parse error; when the string may hold a password, with every quoted fragment of
    it withheld."""
    if not _may_hold_password(conninfo):
        return redact_text(message).strip()

    def withhold(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1) in _HARMLESS_FRAGMENTS else '"…"'
    return _QUOTED_FRAGMENT.sub(withhold, redact_text(message)).strip() + \
        " (the quoted part is not shown: it may be part of a password)"


_URL_WITH_TWO_ATS = re.compile(r"^\s*postgres(?:ql)?://[^/?#]*@[^/?#]*@", re.IGNORECASE)


def parse_conninfo(conninfo: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A DSN string (``key=value`` or URL) or a mapping, as a dict of libpq parameters.

    A malformed string raises :class:`ConnectionFailed` whose message never holds the password
    nor any part of it (libpq quotes the offending part of the string, which may be it: those
    fragments are withheld). A URL with an unescaped ``@`` in its password (libpq would read the
    rest as the host name, and quote it in its next error) is refused the same way."""
    if conninfo is None:
        return {}
    if not isinstance(conninfo, str):
        return dict(conninfo)
    if _URL_WITH_TWO_ATS.match(conninfo):
        raise ConnectionFailed(
            "the connection URL has more than one '@' before its host: a password (or user "
            "name) that holds '@' must be percent-encoded",
            hint="write @ as %40 inside the user name or password "
            "(postgresql://user:p%40ss@host/db), or use key=value form (password='p@ss')")
    try:
        return dict(psycopg.conninfo.conninfo_to_dict(conninfo))
    except psycopg.ProgrammingError as exc:
        problem = _parse_error_text(str(exc), conninfo)
    # Raised outside the except block: libpq's own error (which quotes the string) is not kept
    # as this one's __context__ either.
    raise ConnectionFailed(
        f"the connection string cannot be parsed: {problem}",
        hint="write key=value pairs separated by spaces, quoting values that hold spaces "
        "or quotes (password='my secret'), or a URL postgresql://user@host:port/dbname "
        "with special characters percent-encoded")


def redact_conninfo(conninfo: Mapping[str, Any] | str | None) -> str:
    """The conninfo as ``key=value`` text for display, the password masked."""
    try:
        params = parse_conninfo(conninfo)
    except ConnectionFailed:
        return "<unparsable connection string>"
    return " ".join(f"{k}={'********' if k == 'password' else v}" for k, v in params.items()
                    if v is not None)
