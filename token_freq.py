"""How often does each GPT-2 token occur in ordinary text? The frequency table that picks "the N most
frequent tokens" for clustering.py and cosine_attention_analysis.py.

Method: every line of the corpus (with its newline) is encoded with the GPT-2 tokenizer (the
vendored copy, common.gpt2_tokenizer.load_tokenizer; the same for every --model, because all supported
models share GPT-2's vocabulary), exactly as the original repository's line-by-line loop did,
so "\\n\\n" counts as two "\\n" tokens. Lines are sent in batches to the Rust fast tokenizer
(encode_batch_fast) on --workers processes, with at most 2 x workers batches in flight, so memory
stays bounded for any corpus size; the counts do not depend on batching or worker count.

Corpus (first that applies):
  * --text PATH: a text file, or every file matching --glob under a folder (UTF-8, undecodable
    bytes replaced);
  * --model planted: the repo's generated demo corpus (common.demo_corpus, ~110 KB of seeded
    English sentences in which the planted category words are frequent);
  * otherwise WikiText-103 (train) through Hugging Face `datasets` (--dataset, --dataset-config,
    --split; --streaming avoids the full download), as in the original repository. Offline
    without a cached copy this stops with an error that suggests --text.

Outputs in --out (default figures/token_freq/, figures/demo/token_freq/ for planted):
  token_freq.csv  columns token,id,count; every token that occurs, by count desc, ties by id asc
                  (read it with common.freq.load_freq_table / top_tokens);
  token_freq.png  rank-frequency (Zipf) plot, category words marked; drawn (``render``) from
                  token_freq.csv and summary.json only;
  summary.json    corpus, totals, elapsed seconds, tokens/second, the category word ids;
  meta.json       arguments, versions, and the same corpus totals.
Speed against the original's per-line `tokenizer.encode` loop: bench/bench_token_freq.py.

Run: python token_freq.py --model planted        (offline demo corpus)
     python token_freq.py --text FILE_OR_FOLDER  (a local corpus)
     python token_freq.py                        (WikiText-103 train through `datasets`)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from common import freq
from common.cli import add_text_flag, base_parser, script_name, keeps_state
from common.errors import error_summary
from common.genuine_weights import weights_verdict
from common.outputs import claim_out_dir, prepare_out_dir
from common.planted_names import is_planted
from common.prompts import token_category_map
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text

SCRIPT = script_name(__file__)
TABLE = freq.TABLE_NAME.removesuffix(".csv")
DEFAULT_DATASET = ("Salesforce/wikitext", "wikitext-103-raw-v1", "train")


def parse_args(argv):
    p = base_parser(__doc__, head=False)
    add_text_flag(p, "count", "WikiText-103 train via datasets; the demo corpus for --model planted", demo=False)
    p.add_argument("--glob", default="*.txt", help="file pattern when --text is a folder (searched recursively)")
    p.add_argument("--dataset", default=DEFAULT_DATASET[0], help="Hugging Face dataset name")
    p.add_argument("--dataset-config", default=DEFAULT_DATASET[1], help="dataset configuration")
    p.add_argument("--split", default=DEFAULT_DATASET[2], help="dataset split")
    p.add_argument("--text-column", default="text", help="dataset column holding the text")
    p.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it whole")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all usable cores)")
    p.add_argument("--batch-bytes", type=int, default=1 << 20, help="text per batch sent to a worker")
    p.add_argument("--no-plot", action="store_true", help="skip the Zipf figure")
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.batch_bytes < 1:
        p.error("--batch-bytes must be >= 1")
    return args


def corpus_batches(args):
    """(batches iterator, progress total, progress unit, description) for the chosen corpus."""
    if args.text:
        files = freq.text_files(args.text, args.glob)
        total = sum(f.stat().st_size for f in files)
        desc = f"{len(files)} file(s) under {args.text}" if len(files) > 1 else str(files[0])
        return freq.file_batches(files, args.batch_bytes), total, "B", desc
    if is_planted(args.model):
        from common.demo_corpus import demo_text

        blob = demo_text().encode()
        chunks = []
        start = 0
        while start < len(blob):  # the same line-aligned blobs a file of this text would give
            end = blob.find(b"\n", start + args.batch_bytes - 1)
            end = len(blob) if end < 0 else end + 1
            chunks.append(blob[start:end])
            start = end
        return iter(chunks), len(blob), "B", "generated demo corpus (common.demo_corpus, seed 0)"
    return dataset_batches(args)


def dataset_batches(args):
    name = f"{args.dataset} ({args.dataset_config}, {args.split})"
    try:
        from datasets import load_dataset

        ds = load_dataset(args.dataset, args.dataset_config, split=args.split, streaming=args.streaming)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise SystemExit(
            f"error: could not load the corpus {name} with `datasets` ({error_summary(exc)}).\n"
            "Offline? Count a local corpus instead: --text FILE_OR_FOLDER (e.g. the WikiText-103 "
            "train text), or run the offline demo with --model planted."
        ) from None
    if ds.column_names is not None and args.text_column not in ds.column_names:
        raise SystemExit(f"error: {name} has no column {args.text_column!r} (columns: {ds.column_names})")
    rows = 4096
    total = None if args.streaming else len(ds)
    return _column(ds.iter(batch_size=rows), args.text_column, name), total, "rows", name


def _column(batches, column, name):
    for b in batches:
        if column not in b:
            raise SystemExit(f"error: {name} has no column {column!r} (columns: {sorted(b)})")
        yield b[column]


def compute(args) -> Results:
    """Count every GPT-2 token of the corpus (``common.freq.count_tokens``): the table and its totals."""
    batches, total, unit, desc = corpus_batches(args)  # a missing corpus fails here, before the tokenizer loads
    from common.gpt2_tokenizer import load_tokenizer  # imports transformers: not for --help

    tokenizer = load_tokenizer()
    print(f"counting GPT-2 tokens in {desc} with {args.workers} worker(s)", file=sys.stderr)
    bar = tqdm(total=total, unit=unit, unit_scale=True, desc="tokenising", file=sys.stderr,
               disable=None, mininterval=1.0)
    step = (lambda size: bar.update(size)) if unit == "B" else (lambda size: None)
    if unit == "rows":  # dataset rows are counted as they are read, bytes as they are counted
        batches = _count_rows(batches, bar)
    t0 = time.perf_counter()
    # tokenizer=None: the vendored GPT-2 tokenizer, which tiktoken counts (no need to compare the
    # one just loaded with it, which costs a second load and both vocabularies compared)
    counts = freq.count_tokens(batches, args.workers, tokenizer.vocab_size, on_batch=step)
    seconds = time.perf_counter() - t0
    bar.close()

    n_tokens = int(counts.sum())
    if n_tokens == 0:
        raise SystemExit(f"error: the corpus ({desc}) contains no tokens")
    table = freq.counts_to_table(counts, tokenizer)
    rate = n_tokens / seconds if seconds > 0 else float("nan")
    summary = {
        "corpus": desc, "n_tokens": n_tokens, "n_distinct": int((counts > 0).sum()),
        "seconds": round(seconds, 3), "tokens_per_second": round(rate), "workers": args.workers,
        "top10": table.head(10)[["token", "count"]].values.tolist(),
        "category_ids": sorted(token_category_map(tokenizer)),  # marked in the figure
    }
    return Results(tables={TABLE: table}, summary=summary)


def _count_rows(batches, bar):
    for b in batches:
        yield b
        bar.update(len(b))


def render(out_dir) -> list[Path]:
    """token_freq.png, the rank-frequency (Zipf) plot, from token_freq.csv and summary.json only."""
    import matplotlib.pyplot as plt
    import numpy as np

    from common.plotting import save_figure

    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    table, summary = load_table(out_dir, TABLE), load_summary(out_dir)
    category_ids = summary["category_ids"]
    rank = np.arange(1, len(table) + 1)
    is_cat = table["id"].isin(category_ids).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(rank, table["count"], lw=1, color="0.3", label="all tokens")
    ax.scatter(rank[is_cat], table["count"][is_cat], s=8, color="C3", zorder=3,
               label=f"category words ({int(is_cat.sum())} of {len(category_ids)} occur)")
    ax.set_xlabel("rank")
    ax.set_ylabel("count")
    ax.set_title(f"GPT-2 token frequencies\n{summary['corpus']}", fontsize=9)
    ax.legend(fontsize=8)
    return [save_figure(fig, out_dir / "token_freq.png", weights)]


def report(results: Results, out_dir: Path) -> None:
    s = results.summary
    print(f"{s['n_tokens']:,} tokens ({s['n_distinct']:,} distinct) in {s['seconds']:.1f} s "
          f"= {s['tokens_per_second']:,.0f} tokens/s -> {out_dir / freq.TABLE_NAME}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = prepare_out_dir(args.out, SCRIPT, args.model)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = compute(args)
    claim_out_dir(out_dir, args)  # created only now that the text has been read and counted
    meta = {k: v for k, v in results.summary.items() if k != "category_ids"}
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model), meta=meta)
    if not args.no_plot:
        render(out_dir)
    report(results, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
