"""Token-frequency tables written by token_freq.py, and the "N most frequent tokens" every
vocabulary-subset analysis (clustering.py, cosine_attention_analysis.py) starts from.

Table format (``token_freq.csv``): columns ``token`` (the decoded GPT-2 token, leading space
kept), ``id`` (GPT-2 token id) and ``count`` (occurrences in the corpus), sorted by count
descending, ties by id ascending. Tokens that never occur are not listed.

Where a table is looked for: an explicit ``path``, else token_freq.py's default output for the
model, ``default_out_dir("token_freq", model)/token_freq.csv`` (figures/token_freq/ for gpt2-small,
figures/demo/token_freq/ for the planted model). The tokenizer is GPT-2's in every case, so a
table made for one model is valid for any other; when the model's own table is missing, the
gpt2-small table is used if it exists.

Fallback without any table (documented, deterministic, never silent: :func:`resolve_top_tokens`
says which source was used): every category word of :data:`common.prompts.CATEGORIES` first (in
list order), then the remaining ids in increasing order. Lower GPT-2 ids are earlier BPE merges,
which roughly tracks frequency in GPT-2's training data, so this is a crude but stable stand-in
for a frequency ranking. BOS/``<|endoftext|>`` (50256) is never included, from the table or the
fallback: it is a control token, not text.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.outputs import default_out_dir

TABLE_NAME = "token_freq.csv"
COLUMNS = ("token", "id", "count")
EOT_ID = 50256  # GPT-2's <|endoftext|>, used as BOS


def default_table_path(model_name: str = "gpt2-small") -> Path:
    """Where token_freq.py writes its table for ``model_name`` by default."""
    return default_out_dir("token_freq", model_name) / TABLE_NAME


def load_freq_table(path: str | Path) -> pd.DataFrame:
    """Read and validate a token_freq.csv (or the folder holding one); sorted by count desc, id asc.

    Raises SystemExit with a clear message for a missing or malformed file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_NAME
    if not path.exists():
        raise SystemExit(f"error: frequency table {path} not found (run token_freq.py first, or omit the option)")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"token": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: cannot read frequency table {path}: {exc}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SystemExit(f"error: {path} lacks column(s) {missing}; expected {list(COLUMNS)}")
    try:
        df["id"] = df["id"].astype("int64")
        df["count"] = df["count"].astype("int64")
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {path}: id/count must be integers ({exc})") from None
    df = df.sort_values(["count", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return df[list(COLUMNS)]


def _find_table(model_name: str, path: str | Path | None) -> Path | None:
    if path is not None:
        return Path(path)
    for candidate in (default_table_path(model_name), default_table_path("gpt2-small")):
        if candidate.exists():
            return candidate
    return None


def fallback_order(vocab_size: int = 50257) -> list[int]:
    """Category words first, then every other id ascending; BOS excluded. See the module docstring."""
    from common.model import load_tokenizer
    from common.prompts import category_token_ids

    tok = load_tokenizer()
    first = [t for ids in category_token_ids(tok).values() for t in ids if t < vocab_size]
    seen = set(first) | {EOT_ID}
    return first + [t for t in range(vocab_size) if t not in seen]


def resolve_top_tokens(
    model_name: str, n: int, path: str | Path | None = None, vocab_size: int = 50257
) -> tuple[list[int], str]:
    """(ids, source): the ``n`` most frequent token ids and a one-line description of their source.

    With a table holding fewer than ``n`` usable ids, the rest is filled from :func:`fallback_order`
    (and the source says so). ``n`` larger than the vocabulary returns the whole vocabulary minus BOS.
    """
    if n < 1:
        raise ValueError("n must be positive")
    table = _find_table(model_name, path)
    ids: list[int] = []
    source = "fallback (no frequency table: category words, then ids ascending)"
    if table is not None:
        df = load_freq_table(table)
        keep = df["id"][(df["id"] != EOT_ID) & (df["id"] >= 0) & (df["id"] < vocab_size)]
        ids = keep.iloc[:n].tolist()
        source = f"frequency table {table}"
        if len(ids) < n:
            source += f" ({len(ids)} ids) + fallback order for the remaining {n - len(ids)}"
    if len(ids) < n:
        have = set(ids)
        ids += [t for t in fallback_order(vocab_size) if t not in have][: n - len(ids)]
    return ids, source


def top_tokens(model_name: str, n: int, path: str | Path | None = None, vocab_size: int = 50257) -> list[int]:
    """The ``n`` most frequent token ids (most frequent first); see :func:`resolve_top_tokens`."""
    return resolve_top_tokens(model_name, n, path, vocab_size)[0]
