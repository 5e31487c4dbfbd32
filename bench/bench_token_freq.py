"""How much faster is token_freq.py's counting than the original's line-by-line loop? (quick, one process)

Method: the same lines are counted four ways and the counts are checked to be identical:
  1. naive: ``for line in lines: counter.update(tokenizer.encode(line))`` (the original's loop:
     one transformers ``encode`` call per line, a Python Counter);
  2. the previous common.freq route: Hugging Face ``encode_batch_fast`` on ~1 MB batches, numpy counts;
  3. common.freq.count_tokens today: tiktoken built from the vendored GPT-2 BPE files, 1 thread;
  4. the same on --workers threads (default: all usable cores).
Each is timed once after a warm-up. Prints wall-clock tokens/second, the speed-up, and CPU seconds
(this process and its finished children): on a machine shared with other jobs the wall-clock gain
of extra workers shrinks to nothing (no free core), while tokens per CPU-second still shows the
per-core efficiency. Not a test. bench/run_bench.py --cases tokenise measures the same in separate,
repeated processes for bench/RESULTS.md.

Text: --text FILE_OR_FOLDER (e.g. the WikiText-103 train file, or /usr/share/vim/vim90/doc for
real English prose that is present on most Linux machines), else the demo corpus generated with
--seeds different seeds (~110 KB each; its small vocabulary makes BPE caching unusually effective,
so real text is the fairer benchmark). --max-mb caps the text read.

Usage: python bench/bench_token_freq.py [--text PATH] [--workers N] [--max-mb 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def read_lines(args) -> list[str]:
    from common import freq

    if args.text:
        lines, size = [], 0
        for f in freq.text_files(args.text, args.glob):
            with open(f, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    lines.append(line)
                    size += len(line)
                    if size >= args.max_mb * 1e6:
                        return lines
        return lines
    from common.demo_corpus import demo_lines

    return [line for s in range(args.seeds) for line in demo_lines(seed=s)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--text", default=None)
    p.add_argument("--glob", default="*.txt")
    p.add_argument("--seeds", type=int, default=20, help="demo corpus copies (different seeds) without --text")
    p.add_argument("--max-mb", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch-bytes", type=int, default=1 << 20)
    args = p.parse_args(argv)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    import numpy as np

    from common import freq
    from common.gpt2_tokenizer import load_tokenizer

    tok = load_tokenizer()
    lines = read_lines(args)
    n_chars = sum(map(len, lines))
    print(f"text: {args.text or f'demo corpus x {args.seeds} seeds'}: {len(lines):,} lines, {n_chars / 1e6:.2f} M chars; "
          f"cores usable: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}")
    for line in lines[:2000]:  # warm-up of the parent's tokenizer
        tok.encode(line)

    def cpu():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    c0, t0 = cpu(), time.perf_counter()
    c = Counter()
    for line in lines:
        c.update(tok.encode(line))
    t_naive = time.perf_counter() - t0
    cpu_naive = cpu() - c0
    naive = np.zeros(tok.vocab_size, np.int64)
    for i, n in c.items():
        naive[i] = n
    n_tok = int(naive.sum())

    results = [("naive per-line encode (original)", t_naive, cpu_naive)]
    freq.tiktoken_encoding()  # built (and the tokenizer checked) outside the timed region
    freq.counting_backend(tok)
    for backend, w in [("huggingface", 1)] + [("tiktoken", w) for w in sorted({1, args.workers})]:
        c0, t0 = cpu(), time.perf_counter()
        counts = freq.count_tokens(freq.string_batches(lines, args.batch_bytes), workers=w, tokenizer=tok, backend=backend)
        dt, dc = time.perf_counter() - t0, cpu() - c0
        if not np.array_equal(counts, naive):
            raise SystemExit(f"error: {backend} counts with {w} worker(s) differ from the naive loop")
        results.append((f"{backend}, {w} worker(s)", dt, dc))

    print(f"{n_tok:,} tokens; counts identical across methods")
    print(f"{'method':34s} {'seconds':>8s} {'tokens/s':>10s} {'speed-up':>9s} {'CPU s':>7s} {'tokens/CPU-s':>13s}")
    for name, dt, dc in results:
        print(f"{name:34s} {dt:8.2f} {n_tok / dt:10,.0f} {t_naive / dt:8.1f}x {dc:7.2f} {n_tok / max(dc, 1e-9):13,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
