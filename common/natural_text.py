"""Natural text for measuring a head's effect: WikiText-103, local files, or a generated demo text.

Three sources, one result (a list of GPT-2 token ids for the whole text):

* WikiText-103 (raw, test split) through ``datasets``; offline without a cached copy this fails
  with :class:`TextUnavailable`, whose message says what to do instead;
* ``--text PATH``: a text file, or a folder whose ``*.txt`` files (recursively, sorted) are read;
* ``demo``: a deterministic text generated here for the planted model -- sentences of ordinary
  words in which words from :data:`common.prompts.CATEGORIES` recur, including exact repeats, so
  every one of L1H5's three rules is exercised in each window.

:func:`sample_windows` cuts the token stream into non-overlapping windows, draws a seeded sample
of them and prepends BOS to each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.prompts import CATEGORIES

WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1", "test")
DEMO = "demo"

# Ordinary words for the demo text; none of them is a category word.
_FILLER = (
    "the a of to in was with for on at from by as that this there some many people house city "
    "road market garden river school small large old new long early late morning evening "
    "near after before during about found saw made took gave kept left brought bought asked "
    "told called said into over under around again also very much more most each every "
    "family friend teacher doctor letter story picture window table door street village"
).split()


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
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise TextUnavailable(
            f"could not load WikiText-103 ({type(exc).__name__}: {first}).\n"
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


def demo_text(n_sentences: int = 1500, seed: int = 0) -> str:
    """Deterministic sentences of ordinary words with recurring category words.

    Each sentence has one or two topic categories; about a third of its words come from them, and
    a topic word is sometimes repeated exactly, so a window holds same-category pairs (rule 1),
    copies (rule 2) and words with no category (rule 3).
    """
    rng = np.random.default_rng(seed)
    cats = list(CATEGORIES.values())
    sentences = []
    for _ in range(n_sentences):
        topics = [cats[i] for i in rng.choice(len(cats), size=rng.integers(1, 3), replace=False)]
        words: list[str] = []
        for _ in range(rng.integers(8, 17)):
            r = rng.random()
            if r < 0.28:
                pool = topics[rng.integers(len(topics))]
                words.append(pool[rng.integers(len(pool))])
            elif r < 0.33 and words:
                words.append(words[rng.integers(len(words))])
            else:
                words.append(_FILLER[rng.integers(len(_FILLER))])
        sentences.append(" ".join(words) + ".")
    return " " + " ".join(sentences)


def load_text(source: str | None) -> tuple[str, str]:
    """(text, description) for ``source``: None (WikiText-103 test), ``"demo"`` or a path."""
    if source is None:
        return wikitext_test(), "WikiText-103 (raw) test split via datasets"
    if source == DEMO:
        try:  # the repo's shared demo corpus (token_freq.py uses it too), when present
            from common.demo_corpus import demo_text as shared_demo
        except ImportError:
            return demo_text(), "generated demo text (common.natural_text.demo_text)"
        return shared_demo(), "generated demo corpus (common.demo_corpus)"
    return read_text_path(source), f"local text {source}"


def tokenize(tokenizer, text: str, chunk_chars: int = 100_000) -> list[int]:
    """GPT-2 token ids of ``text``, encoded in line-aligned chunks (bounded memory, no length warning)."""
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
    for enc in tokenizer(chunks, add_special_tokens=False)["input_ids"] if chunks else []:
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
