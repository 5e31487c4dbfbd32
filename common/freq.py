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

The path ``none`` asks for the fallback without looking for any table (run_all.py passes
``--freq-table none`` when token_freq.py failed, so a stale table from an earlier run is never used).

Fallback without any table (documented, deterministic, never silent: :func:`resolve_top_tokens`
says which source was used): every category word of :data:`common.prompts.CATEGORIES` first (in
list order), then the remaining ids in increasing order. Lower GPT-2 ids are earlier BPE merges,
which roughly tracks frequency in GPT-2's training data, so this is a crude but stable stand-in
for a frequency ranking. BOS/``<|endoftext|>`` (50256) is never included, from the table or the
fallback: it is a control token, not text.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import numpy as np
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


NO_TABLE = "none"  # as a table path: use the fallback order, look for no table (run_all after a failed token_freq)


def _find_table(model_name: str, path: str | Path | None) -> Path | None:
    if path is not None and str(path).strip().lower() == NO_TABLE:
        return None
    if path is not None:
        return Path(path)
    for candidate in (default_table_path(model_name), default_table_path("gpt2-small")):
        if candidate.exists():
            return candidate
    return None


def fallback_order(vocab_size: int = 50257) -> list[int]:
    """Category words first, then every other id ascending; BOS excluded. See the module docstring."""
    from common.gpt2_tokenizer import load_tokenizer
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
    if path is not None and str(path).strip().lower() == NO_TABLE:
        source = "fallback (table 'none' requested: category words, then ids ascending)"
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


# ---------------------------------------------------------------------------------------------
# Counting (token_freq.py). The unit of tokenisation is one line *with* its trailing newline, as
# in the original's line-by-line loop (``Counter.update(tokenizer.encode(line))``), so results do
# not depend on batching or worker count ("\n\n" therefore counts as two "\n" tokens, never as
# the merged token 628).
#
# Encoder: tiktoken built from the vendored GPT-2 BPE files (common/tokenizer/vocab.json and
# merges.txt, checked against the sha256 pins tiktoken uses for GPT-2), one ``encode_to_numpy``
# call per line with "<|endoftext|>" allowed (the Hugging Face tokenizer also turns that literal
# text into the one special token 50256). It gives exactly the Hugging Face tokenizer's ids
# (tests/test_freq_counting.py checks every Unicode code point in several contexts) several times
# faster per core (bench/RESULTS.md): no per-token offsets, no Encoding objects, no Python ints.
# Batches are counted on ``workers`` threads (tiktoken releases the GIL while encoding). Without
# tiktoken installed, or for a tokenizer that is not GPT-2's, the Hugging Face fast tokenizer's
# ``encode_batch_fast`` is used on worker processes (same counts, slower).
#
# One call per batch, not per line: a call costs about 9 us beyond its text, two thirds of the
# time on text of short lines. Encoding a batch's lines joined together gives the per-line ids
# with GPT-2's pre-tokenizer pattern extended by one alternative tried first, [^\S\n]*\n
# (LINE_PAT_STR): a run of whitespace up to and including a newline is one piece. Why that is
# the per-line rule: the pattern's pieces are found left to right, each depending only on the text
# from its start on, and only whitespace pieces can contain "\n". On a line of its own, a piece
# starting where only whitespace is left before the line's "\n" is that whole run (\s+(?!\S) at
# the end of the string; the earlier alternatives all need a non-space character); joined to the
# next line, the unextended pattern would instead stop before "\n" when a non-space character
# follows, or run on into the next line's leading whitespace ("\n\n" would become token 628).
# The new alternative matches exactly at those starts and only there (elsewhere a non-space
# character comes before the next "\n"), so every piece, and the text the next piece starts at,
# is the per-line one. Special tokens split the text first, at the same places either way.
# Checked against per-line encoding on seeded random text of spaces, tabs, newlines, no-break and
# line-separator spaces, letters, digits and contractions (tests/test_freq_counting.py).

Batch = Union[bytes, list]  # a blob of whole UTF-8 lines from a file, or a list of str lines
_TOKENIZER = None  # Hugging Face backend tokenizer (fallback route)
_TIKTOKEN = None  # tiktoken Encoding of the vendored GPT-2 BPE (fast route)
_TIKTOKEN_LINES = None  # the same with LINE_PAT_STR first: whole batches of lines at once
LINE_PAT_STR = r"[^\S\n]*\n|"  # whitespace up to and including a line's newline is one piece
EOT_TEXT = "<|endoftext|>"
# sha256 of the vendored files, the pins tiktoken itself uses for GPT-2 (common/tokenizer/PROVENANCE.md)
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def text_files(path: str | Path, pattern: str = "*.txt") -> list[Path]:
    """``path`` itself if it is a file, else every file under it matching ``pattern`` (sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob(pattern) if p.is_file())
        if not files:
            raise SystemExit(f"error: no files matching {pattern!r} under {path} (change --glob?)")
        return files
    raise SystemExit(f"error: --text {path}: no such file or folder")


def file_batches(files: Iterable[Path], batch_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Blobs of about ``batch_bytes`` bytes, always ending at a line end (never mid-line)."""
    for f in files:
        with open(f, "rb") as fh:
            while True:
                blob = fh.read(batch_bytes)
                if not blob:
                    break
                if not blob.endswith(b"\n"):
                    blob += fh.readline()
                yield blob


def string_batches(lines: Iterable[str], batch_chars: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of lines with about ``batch_chars`` characters each."""
    batch, size = [], 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def split_lines(text: str) -> list[str]:
    """Lines ending in "\n" (kept; the last may lack it); "\r\n" is read as "\n".

    Only "\n" splits (not str.splitlines' many separators), as a text-mode file read does.
    """
    parts = text.replace("\r\n", "\n").split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def batch_size_of(batch: Batch) -> int:
    return len(batch) if isinstance(batch, bytes) else sum(len(s) for s in batch)


def _lines(batch: Batch) -> list[str]:
    return split_lines(batch.decode("utf-8", errors="replace")) if isinstance(batch, bytes) else list(batch)


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from common.gpt2_tokenizer import load_tokenizer

        _TOKENIZER = load_tokenizer().backend_tokenizer
    return _TOKENIZER


def tiktoken_encoding():
    """tiktoken's Encoding of the vendored GPT-2 BPE files, or None when tiktoken is not installed."""
    global _TIKTOKEN
    if _TIKTOKEN is None:
        try:
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
            from tiktoken_ext.openai_public import r50k_pat_str
        except ImportError:
            return None
        global _TIKTOKEN_LINES
        from common.gpt2_tokenizer import TOKENIZER_DIR

        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""  # local files: no copy in tiktoken's download cache
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(
                str(TOKENIZER_DIR / "merges.txt"), str(TOKENIZER_DIR / "vocab.json"),
                vocab_bpe_hash=MERGES_SHA256, encoder_json_hash=VOCAB_SHA256)
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
        _TIKTOKEN = tiktoken.Encoding("gpt2-vendored", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                      special_tokens={EOT_TEXT: EOT_ID}, explicit_n_vocab=EOT_ID + 1)
        _TIKTOKEN_LINES = tiktoken.Encoding("gpt2-vendored-lines", pat_str=LINE_PAT_STR + r50k_pat_str,
                                            mergeable_ranks=ranks, special_tokens={EOT_TEXT: EOT_ID},
                                            explicit_n_vocab=EOT_ID + 1)
    return _TIKTOKEN


def tiktoken_line_encoding():
    """The same Encoding with :data:`LINE_PAT_STR` first in its pattern: joined lines, each ending
    in its one "\n", encode to the ids of the lines encoded one by one (see the comment above)."""
    return _TIKTOKEN_LINES if tiktoken_encoding() is not None else None


def _essence(tokenizer) -> tuple:
    """What decides a Hugging Face fast tokenizer's ids: BPE vocabulary, merges and options,
    normaliser, pre-tokenizer, added tokens."""
    import tempfile

    b = tokenizer.backend_tokenizer
    with tempfile.TemporaryDirectory() as d:
        files = b.model.save(d)
        merges = [line for line in Path(files[-1]).read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
    options = tuple(getattr(b.model, a, None) for a in
                    ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"))
    state = lambda x: None if x is None else x.__getstate__()  # noqa: E731
    added = sorted((i, t.content, t.single_word, t.lstrip, t.rstrip, t.normalized)
                   for i, t in b.get_added_tokens_decoder().items())
    return (type(b.model).__name__, b.get_vocab(with_added_tokens=False), merges, options,
            state(b.normalizer), state(b.pre_tokenizer), added)


def is_gpt2_tokenizer(tokenizer) -> bool:
    """True if a transformers tokenizer tokenises exactly as the vendored GPT-2 one (the one
    tiktoken is built from): same BPE vocabulary, merges and options, same normaliser and
    pre-tokenizer, same added tokens."""
    global _GPT2_ESSENCE
    if _GPT2_ESSENCE is None:
        from common.gpt2_tokenizer import load_tokenizer

        _GPT2_ESSENCE = _essence(load_tokenizer())
    try:
        return _essence(tokenizer) == _GPT2_ESSENCE
    except Exception:  # not a fast tokenizer with a BPE model: cannot be shown equal
        return False


_GPT2_ESSENCE = None


def count_batch(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of one batch with the Hugging Face tokenizer (fallback route), sparse so that
    results are cheap to send between processes."""
    lines = _lines(batch)
    if not lines:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    enc = _tokenizer().encode_batch_fast(lines, add_special_tokens=False)
    ids = np.fromiter((i for e in enc for i in e.ids), dtype=np.int64)
    return np.unique(ids, return_counts=True)


def batch_ids_tiktoken(batch: Batch) -> np.ndarray:
    """Token ids of a batch, line by line (each line with its newline encoded on its own), from as
    few tiktoken calls as that allows: a file blob is whole lines (split_lines' rule: only "\n"
    ends a line, "\r\n" is read as "\n"), so it is one call with :func:`tiktoken_line_encoding`;
    in a list of strings, the runs of one-line strings ending in "\n" are one call each, and any
    other string (no final "\n", or several lines in one string) is encoded on its own."""
    lines_enc = tiktoken_line_encoding()
    if isinstance(batch, bytes):
        text = batch.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return lines_enc.encode_to_numpy(text, allowed_special="all") if text else np.zeros(0, np.uint32)
    parts, run = [], []
    for line in batch:
        if line.endswith("\n") and line.count("\n") == 1:
            run.append(line)
            continue
        if run:
            parts.append(lines_enc.encode_to_numpy("".join(run), allowed_special="all"))
            run = []
        parts.append(tiktoken_encoding().encode_to_numpy(line, allowed_special="all"))
    if run:
        parts.append(lines_enc.encode_to_numpy("".join(run), allowed_special="all"))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def count_batch_tiktoken(batch: Batch, vocab_size: int = EOT_ID + 1) -> np.ndarray:
    """Dense counts [vocab_size] of one batch with the tiktoken encodings (fast route)."""
    ids = batch_ids_tiktoken(batch)
    if len(ids) and ids.max() >= vocab_size:
        raise ValueError(f"token id {int(ids.max())} >= vocabulary size {vocab_size}")
    return np.bincount(ids, minlength=vocab_size)


def _init_worker() -> None:
    # One single-threaded tokenizer per process: parallelism comes from the processes, and
    # Rust threads inside each would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tokenizer()


def counting_backend(tokenizer=None) -> str:
    """"tiktoken" (fast route) or "huggingface" (fallback), as :func:`count_tokens` would choose."""
    if tiktoken_encoding() is None:
        return "huggingface"
    return "tiktoken" if tokenizer is None or is_gpt2_tokenizer(tokenizer) else "huggingface"


def count_tokens(
    batches: Iterable[Batch],
    workers: int = 1,
    vocab_size: int = 50257,
    on_batch: Callable[[int], None] | None = None,
    tokenizer=None,
    backend: str | None = None,
) -> np.ndarray:
    """Token counts [vocab_size] (int64) over all batches, on ``workers`` threads or processes.

    Memory stays bounded: at most ``2 * workers`` batches are in flight, whatever the corpus
    size. ``on_batch(size)`` is called after each batch (for a progress bar). The result is
    identical for any ``workers`` (counts are sums) and either backend. ``tokenizer`` (a
    transformers tokenizer; default the vendored GPT-2 one) is what is counted with: GPT-2's is
    counted by tiktoken, any other by itself. ``backend`` ("tiktoken" or "huggingface") forces
    a route; default :func:`counting_backend`.
    """
    global _TOKENIZER
    backend = backend or counting_backend(tokenizer)
    if backend == "tiktoken" and tiktoken_encoding() is None:
        raise RuntimeError("backend 'tiktoken' requested but tiktoken is not installed (pip install tiktoken)")
    if tokenizer is not None:
        _TOKENIZER = tokenizer.backend_tokenizer
    counts = np.zeros(vocab_size, dtype=np.int64)

    def add(result, size):
        if backend == "tiktoken":
            counts[:] += result
        else:
            ids, c = result
            if len(ids) and ids.max() >= vocab_size:
                raise ValueError(f"token id {int(ids.max())} >= vocabulary size {vocab_size}")
            np.add.at(counts, ids, c)
        if on_batch:
            on_batch(size)

    if backend == "tiktoken":
        from concurrent.futures import ThreadPoolExecutor

        task = lambda b: count_batch_tiktoken(b, vocab_size)  # noqa: E731
        if workers <= 1:
            for b in batches:
                add(task(b), batch_size_of(b))
            return counts
        pool = ThreadPoolExecutor(max_workers=workers)
    else:
        task = count_batch
        if workers <= 1:
            _init_worker()
            for b in batches:
                add(count_batch(b), batch_size_of(b))
            return counts
        _tokenizer()  # loaded before the fork, so forked workers inherit it instead of re-reading files
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
    with pool:
        pending: dict = {}
        for b in batches:
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    add(fut.result(), pending.pop(fut))
            pending[pool.submit(task, b)] = batch_size_of(b)
        for fut in list(pending):
            add(fut.result(), pending.pop(fut))
    return counts


def counts_to_table(counts: np.ndarray, tokenizer=None) -> pd.DataFrame:
    """token,id,count for every id with count > 0, sorted by count desc then id asc."""
    if tokenizer is None:
        from common.gpt2_tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    ids = np.flatnonzero(counts)
    order = np.lexsort((ids, -counts[ids]))
    ids = ids[order]
    tokens = tokenizer.backend_tokenizer.decode_batch([[int(i)] for i in ids], skip_special_tokens=False)
    return pd.DataFrame({"token": tokens, "id": ids.astype(np.int64), "count": counts[ids].astype(np.int64)})
