"""One-line error messages for the shell: what went wrong, never a library's traceback."""

from __future__ import annotations


def error_summary(exc: BaseException) -> str:
    """"Type: first line" of an exception, for one-line messages in place of a library's traceback."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"
