"""Log sequence numbers: ints inside the kit, ``X/Y`` text (hex halves) at the edges."""

from __future__ import annotations


def format_lsn(lsn: int) -> str:
    """``0/16B3748`` for 23803720: PostgreSQL's own spelling of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The int of an LSN's text (``pg_lsn::text``); ``ValueError`` when it is not one."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r} (expected two hexadecimal halves, like 0/16B3748)")
    return (int(hi, 16) << 32) | int(lo, 16)


def parse_lsn_or_none(text: str | None) -> int | None:
    """:func:`parse_lsn` for a column that may be NULL."""
    return None if text is None else parse_lsn(text)
