"""One-line error messages for the shell: what went wrong, never a library's traceback."""

from __future__ import annotations


def error_summary(exc: BaseException) -> str:
    """"Type: first line" of an exception, for one-line messages in place of a library's traceback."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def require_absolute_positions(model, what: str) -> None:
    """SystemExit (one line) unless ``model`` adds a learned absolute positional embedding (W_pos)
    to the residual stream, as GPT-2 does: ``what`` (a method that averages, ablates or shifts W_pos)
    has no meaning for rotary, ALiBi or shortformer position schemes. Here (not in common.cli) so
    that computation modules can call it without importing the start-up code."""
    kind = getattr(model.cfg, "positional_embedding_type", "standard")
    if kind != "standard":
        raise SystemExit(f"error: {what} needs absolute positional embeddings (W_pos added to the residual "
                         f"stream, as in GPT-2); this model's positional embedding type is {kind!r}")
