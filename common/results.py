"""Results: the interface between computing and drawing.

Every script is ``compute`` -> :func:`save_results` -> ``render``. ``compute(model, args)``
returns a :class:`Results`: named tables (saved as ``<name>.csv``) and a summary (saved as
``summary.json``); ``render(out_dir)`` draws every figure from those saved files (and
``meta.json``'s arguments) only, never from the model, so a figure can be restyled, and
``run_all.py --render-only`` redraws everything, without rerunning an analysis. Numbers in figure
titles come from the saved rows. Every file is written atomically (:mod:`common.outputs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from common.outputs import write_csv, write_json, write_meta


@dataclass
class Results:
    """What an analysis found: tables (name -> DataFrame, saved as ``<name>.csv``) and a summary
    (JSON-serialisable, saved as ``summary.json``)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def save_results(out_dir: Path, results: Results, args, script: str, *, weights, meta: dict | None = None) -> None:
    """Write every table, ``summary.json`` and ``meta.json`` (arguments, versions, ``meta``).

    ``weights``: the loaded checkpoint's genuine-weights verdict (a ``common.genuine_weights.Verdict``,
    from ``weights_verdict(args.model)``), saved as meta.json's ``"weights"``; None for a run over
    several models (each sub-folder has its own)."""
    out_dir = Path(out_dir)
    for name, table in results.tables.items():
        write_csv(out_dir / f"{name}.csv", table)
    write_json(out_dir / "summary.json", results.summary)
    meta = {**({"weights": weights.to_meta()} if weights is not None else {}), **(meta or {})}  # genuine or not
    write_meta(out_dir, args, meta, script=script)


def load_table(out_dir: Path, name: str) -> pd.DataFrame:
    """A saved table; a clear error naming the file when the analysis has not been run there.

    Read as written: only "\\n" ends a row (pandas writes a token such as "\\r" unquoted) and only
    an empty field is missing (tokens such as "null", "NaN" or "None" stay text)."""
    path = Path(out_dir) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the analysis first (render draws saved results only)")
    return read_table(path)


def read_table(path: str | Path) -> pd.DataFrame:
    """``pd.read_csv`` for the CSVs this repo writes (see :func:`load_table`)."""
    return pd.read_csv(path, lineterminator="\n", keep_default_na=False, na_values=[""])


def load_summary(out_dir: Path) -> dict:
    return _load_json(Path(out_dir) / "summary.json")


def load_meta(out_dir: Path) -> dict:
    """meta.json of a run (its ``args`` are what render needs: layer, head, model, ...)."""
    return _load_json(Path(out_dir) / "meta.json")


def verdict_text(meta: dict) -> str | None:
    """The one-line genuine-weights verdict stored in a run's meta.json (``meta["weights"]["verdict"]``),
    if any: what INDEX.md, report.html and every figure's footnote show."""
    w = meta.get("weights") if isinstance(meta, dict) else None
    return w.get("verdict") if isinstance(w, dict) else None


def _load_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the analysis first (render draws saved results only)")
    return json.loads(path.read_text())
