"""Errors of the kit shown briefly in IPython and Jupyter.

A :class:`~cdc_notebook.errors.CDCError` says what went wrong and how to fix it; the twenty
lines of the kit's own frames above it do not help the person who typed the cell. In an
IPython shell or a Jupyter kernel, importing :mod:`cdc_notebook` installs a handler that shows
such an error as its class, message and fix, plus the line of the cell that raised it; ``%tb``
prints the whole traceback (the last exception is kept as usual), and :func:`uninstall` (or
``%xmode Verbose`` then ``%tb``) brings the full display back. Other exceptions are untouched.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import Any

_INSTALLED: list[Any] = []


def describe_error(exc: BaseException) -> str:
    """One readable message (with the fix when the kit knows it), never a traceback."""
    from cdc_notebook.errors import CDCError

    if isinstance(exc, CDCError):
        text = exc.message
        if exc.sqlstate:
            text += f" (SQLSTATE {exc.sqlstate})"
        if exc.hint:
            text += f". Fix: {exc.hint}"
        return text
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        sqlstate = getattr(exc, "sqlstate", None)
        hint = getattr(diag, "message_hint", None)
        return str(primary) + (f" (SQLSTATE {sqlstate})" if sqlstate else "") + \
            (f". Hint: {hint}" if hint else "")
    return f"{type(exc).__name__}: {exc}"


def brief_lines(exc: BaseException, tb: TracebackType | None = None) -> list[str]:
    """The short display of a kit error: ``Class: message``, ``Fix: hint``, where in the
    user's code it came from (the outermost frame outside the package), and how to see more."""
    from cdc_notebook.errors import CDCError

    name = type(exc).__name__
    if isinstance(exc, CDCError):
        lines = [f"{name}: {exc.message}" + (f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate
                                               else "")]
        if exc.hint:
            lines.append(f"  Fix: {exc.hint}")
    else:
        lines = [f"{name}: {exc}"]
    where = _user_frame(tb)
    if where is not None:
        lines.append(f"  (raised by {where}; %tb shows the whole traceback)")
    else:
        lines.append("  (%tb shows the whole traceback)")
    return lines


def _user_frame(tb: TracebackType | None) -> str | None:
    """The last frame of the traceback that is not the kit's own (the user's call)."""
    import cdc_notebook

    package = str(cdc_notebook.__file__).rsplit("/", 1)[0]
    libraries = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    found = None
    for frame in traceback.extract_tb(tb):
        if not frame.filename.startswith((package, *libraries)):
            found = frame
    if found is None:
        return None
    line = (found.line or "").strip()
    cell = found.filename.startswith("<") or "/ipykernel_" in found.filename
    where = f"line {found.lineno} of the cell" if cell else f"{found.filename}:{found.lineno}"
    return f"{where}: {line}" if line else where


def install(shell: Any = None) -> bool:
    """Show kit errors briefly in ``shell`` (default: the running IPython); False outside
    IPython. Other custom handlers already installed are kept for their exceptions."""
    from cdc_notebook.errors import CDCError

    if shell is None:
        ipython = sys.modules.get("IPython")
        get = getattr(ipython, "get_ipython", None) if ipython is not None else None
        shell = get() if get is not None else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    if shell in _INSTALLED:
        return True
    if getattr(shell, "custom_exceptions", ()):
        return False  # someone else's handler: theirs stays

    def handler(shell: Any, etype: type[BaseException], value: BaseException,
                tb: TracebackType | None, tb_offset: Any = None) -> list[str]:
        # %tb (and debuggers) find the whole exception where they always do
        sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
        if sys.version_info >= (3, 12):
            sys.last_exc = value  # pragma: no cover - Python 3.12+
        red, reset = "\x1b[0;31m", "\x1b[0m"
        lines = brief_lines(value, tb)
        head, _, rest = lines[0].partition(":")
        stb = [f"{red}{head}{reset}:{rest}\n" + "\n".join(lines[1:])]
        shell._showtraceback(etype, value, stb)  # a kernel sends it as the cell's error
        return stb

    shell.set_custom_exc((CDCError,), handler)
    _INSTALLED.append(shell)
    return True


def uninstall(shell: Any = None) -> None:
    """The full tracebacks again."""
    for installed in list(_INSTALLED):
        if shell is None or installed is shell:
            installed.set_custom_exc((), None)
            _INSTALLED.remove(installed)
