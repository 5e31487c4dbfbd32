"""Natural text for measuring a head's effect: WikiText-103, local files, or a generated demo text.

Three sources, one result (a list of GPT-2 token ids for the whole text):

* WikiText-103 (raw, test split) through ``datasets``; offline without a cached copy this fails
  with :class:`TextUnavailable`, whose message says what to do instead;
* ``--text PATH``: a text file, or a folder whose ``*.txt`` files (recursively, sorted) are read;
* ``demo``: the repo's deterministic demo corpus (:mod:`common.demo_corpus`, also token_freq.py's
  planted input): English sentences in which words of :data:`common.prompts.CATEGORIES` recur,
  so L1H5's rules are exercised in every window.

:func:`sample_windows` cuts the token stream into non-overlapping windows, draws a seeded sample
of them and prepends BOS to each.

Words in running text: a word may be one token with or without a leading space (" Monday",
"Monday" at a line start) or several tokens ("Redistribution" is "Red" + "ist" + ...).
:class:`WordBoundaries` says, for every position of a token window, whether its token is a whole
word there: it starts a word (it begins with a space or punctuation, or the token before it
ends in one) and the word ends with it (the next token begins with a space or punctuation, or the
window ends). A category token that is only a piece of a longer word is not that category's word.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import error_summary

WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1", "test")
DEMO = "demo"


class TextUnavailable(RuntimeError):
    """The requested text cannot be read; the message names the fix."""


def wikitext_test() -> str:
    """The WikiText-103 test split as one string (``datasets``; Hugging Face cache or hub)."""
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        repo, config, split = WIKITEXT
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, missing cache, hub errors: all mean "no corpus"
        raise TextUnavailable(
            f"could not load WikiText-103 ({error_summary(exc)}).\n"
            "Options:\n"
            "  * online: run once with network access so `datasets` caches it;\n"
            "  * offline: --text PATH (a .txt file or a folder of .txt files);\n"
            "  * the generated demo text: --text demo"
        ) from None
    return "".join(ds["text"])


def read_text_path(path: str | Path) -> str:
    """A file's text, or the concatenated ``*.txt`` files under a folder (sorted, recursive)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise TextUnavailable(f"--text {path}: folder contains no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise TextUnavailable(f"--text {path}: no such file or folder")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise TextUnavailable(f"--text {f}: cannot read ({exc.strerror or exc})") from None
    text = "\n".join(parts)
    if not text.strip():
        raise TextUnavailable(f"--text {path}: the text is empty")
    return text


def load_text(source: str | None) -> tuple[str, str]:
    """(text, description) for ``source``: None (WikiText-103 test), ``"demo"`` or a path."""
    if source is None:
        return wikitext_test(), "WikiText-103 (raw) test split via datasets"
    if source == DEMO:
        from common.demo_corpus import demo_text

        return demo_text(), "generated demo corpus (common.demo_corpus)"
    return read_text_path(source), f"local text {source}"


def script_text_ids(text: str | None, model: str, tokenizer) -> tuple[list[int], str]:
    """(token ids, description) of a script's natural text: ``--text PATH`` if given, the demo text
    for the planted model, else WikiText-103's test split; a one-line SystemExit when unavailable."""
    source = text if text is not None else (DEMO if model == "planted" else None)
    try:
        raw, description = load_text(source)
    except TextUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    return tokenize(tokenizer, raw), description


def tokenize(tokenizer, text: str, chunk_chars: int = 100_000, group: int = 8) -> list[int]:
    """GPT-2 token ids of ``text``, encoded in line-aligned chunks, ``group`` chunks per tokenizer
    call: the tokenizer's per-call objects (encodings, offsets, masks) never exist for the whole
    text at once, only the ids do."""
    lines = text.splitlines(keepends=True)
    chunks, cur, size = [], [], 0
    for line in lines:
        cur.append(line)
        size += len(line)
        if size >= chunk_chars:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))
    ids: list[int] = []
    for g in range(0, len(chunks), group):
        for enc in tokenizer(chunks[g : g + group], add_special_tokens=False, return_attention_mask=False)["input_ids"]:
            ids.extend(enc)
    return ids


def sample_windows(ids: list[int], window_len: int, n_windows: int, bos_id: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """A seeded sample of non-overlapping windows, each BOS + ``window_len - 1`` tokens.

    Returns (tokens [n, window_len], start offset of each window in ``ids``). Raises ValueError
    when the text is shorter than one window; returns fewer than ``n_windows`` windows when the
    text has fewer (the caller reports it).
    """
    if window_len < 2:
        raise ValueError(f"window length {window_len} must be at least 2 (BOS plus one token)")
    body = window_len - 1
    n_avail = len(ids) // body
    if n_avail < 1:
        raise ValueError(
            f"the text has {len(ids)} tokens, shorter than one window of {body} tokens "
            f"(--window-len {window_len} includes BOS); give more text or a shorter --window-len"
        )
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_avail, size=min(n_windows, n_avail), replace=False))
    starts = [int(i) * body for i in picks]
    rows = [[bos_id] + ids[s : s + body] for s in starts]
    return torch.tensor(rows, dtype=torch.long), starts


@dataclass(frozen=True)
class WordBoundaries:
    """Per vocabulary token: does its text begin with a letter or digit (``joins_left``: it
    continues a word the previous token left unfinished), does it end in one (``ends_alnum``)."""

    joins_left: torch.Tensor  # [d_vocab] bool
    ends_alnum: torch.Tensor  # [d_vocab] bool

    def whole_words(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, pos] bool: the token at each position is a whole word there (module docstring).
        Position 0 and the last position count their outer side as a boundary."""
        joins = self.joins_left.to(tokens.device)[tokens]
        ends = self.ends_alnum.to(tokens.device)[tokens]
        glued = joins[:, 1:] & ends[:, :-1]  # [batch, pos - 1]: token p + 1 continues token p's word
        whole = torch.ones_like(joins)
        whole[:, 1:] &= ~glued  # starts a word
        whole[:, :-1] &= ~glued  # the word ends here
        return whole


_BOUNDARIES: dict[tuple, WordBoundaries] = {}


def word_boundaries(tokenizer, d_vocab: int) -> WordBoundaries:
    """:class:`WordBoundaries` of ``tokenizer``'s vocabulary, padded to ``d_vocab`` (ids the
    tokenizer does not have join nothing); computed once per process and vocabulary."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), d_vocab)
    if key not in _BOUNDARIES:
        texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), d_vocab))])
        joins = torch.zeros(d_vocab, dtype=torch.bool)
        ends = torch.zeros(d_vocab, dtype=torch.bool)
        joins[: len(texts)] = torch.tensor([t[:1].isalnum() for t in texts])
        ends[: len(texts)] = torch.tensor([t[-1:].isalnum() for t in texts])
        _BOUNDARIES[key] = WordBoundaries(joins, ends)
    return _BOUNDARIES[key]
