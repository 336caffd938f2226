"""Quoting for the few places SQL text cannot go through ``psycopg.sql`` (replication commands
speak only the simple query protocol; postgresql.conf values; pattern display)."""

from __future__ import annotations

import re

_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


def quote_ident(name: str) -> str:
    """``"name"``, doubled inner quotes: always quoted, so case and dots survive."""
    return '"' + str(name).replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``'value'``, doubled inner quotes (standard_conforming_strings is on since 9.1)."""
    return "'" + str(value).replace("'", "''") + "'"


def quote_qualified(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_ident_if_needed(name: str) -> str:
    """The name as SQL (or a table pattern) would spell it: bare when it is a plain lower-case
    identifier, quoted otherwise."""
    return name if _PLAIN_IDENT.fullmatch(name) else quote_ident(name)
