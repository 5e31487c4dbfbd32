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

End to end (``--end-to-end FILE``): what a user waits for, process start to CSV, each in a fresh
process: ``python token_freq.py --text FILE`` (tokenizer and tiktoken set-up, imports, meta.json and
the Zipf figure included) against the per-line loop as a whole program (:data:`PER_LINE_PROGRAM`:
load the tokenizer, ``Counter.update(tokenizer.encode(line))`` for every line of the file read as
token_freq.py reads it, write id,count). Reports wall, CPU (user + system) and peak RSS of each
process, and checks that both give the same count for every token id.

Usage: python bench/bench_token_freq.py [--text PATH] [--workers N] [--max-mb 20]
       python bench/bench_token_freq.py --end-to-end FILE [--workers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
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


ROOT = Path(__file__).resolve().parent.parent

# The original's loop as a program of its own (lines as token_freq.py reads a file: only "\n" ends a
# line, "\r\n" is read as "\n", undecodable bytes replaced).
PER_LINE_PROGRAM = r"""
import sys
from collections import Counter
from common.gpt2_tokenizer import load_tokenizer
tok = load_tokenizer()
counter = Counter()
with open(sys.argv[1], "rb") as fh:
    for raw in fh:
        counter.update(tok.encode(raw.decode("utf-8", errors="replace").replace("\r\n", "\n")))
with open(sys.argv[2], "w") as out:
    out.write("id,count\n")
    for i, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        out.write(f"{i},{n}\n")
"""


def timed_process(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (GB) of one child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 1e6}


def end_to_end(text: Path, workers: int) -> int:
    import tempfile

    import pandas as pd

    size = text.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"text: {text} ({size:.1f} MB); cores usable: {len(os.sched_getaffinity(0))}, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = {"token_freq.py": timed_process([sys.executable, str(ROOT / "token_freq.py"), "--text", str(text),
                                                "--out", str(tmp / "tf"), "--workers", str(workers)])}
        print(f"  token_freq.py done, load average {os.getloadavg()[0]:.1f}", flush=True)
        rows["per-line loop (original)"] = timed_process([sys.executable, "-c", PER_LINE_PROGRAM, str(text),
                                                         str(tmp / "per_line.csv")])
        print(f"  per-line loop done, load average {os.getloadavg()[0]:.1f}", flush=True)
        ours = pd.read_csv(tmp / "tf" / "token_freq.csv", keep_default_na=False)
        theirs = pd.read_csv(tmp / "per_line.csv")
        same = dict(zip(ours["id"], ours["count"])) == dict(zip(theirs["id"], theirs["count"]))
    ref = rows["per-line loop (original)"]
    print(f"{'process start to CSV':28s} {'wall s':>8s} {'CPU s':>8s} {'peak GB':>8s} {'wall speed-up':>14s} {'CPU speed-up':>13s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['seconds']:8.2f} {r['cpu_seconds']:8.2f} {r['peak_rss_gb']:8.2f} "
              f"{ref['seconds'] / r['seconds']:13.1f}x {ref['cpu_seconds'] / r['cpu_seconds']:12.1f}x")
    print(f"same count for every token id: {'yes' if same else 'NO'} ({int(theirs['count'].sum()):,} tokens)")
    return 0 if same else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--text", default=None)
    p.add_argument("--glob", default="*.txt")
    p.add_argument("--seeds", type=int, default=20, help="demo corpus copies (different seeds) without --text")
    p.add_argument("--max-mb", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch-bytes", type=int, default=1 << 20)
    p.add_argument("--end-to-end", metavar="FILE", default=None,
                   help="time token_freq.py and the per-line loop as whole processes on FILE (see above)")
    args = p.parse_args(argv)
    if args.end_to_end:
        return end_to_end(Path(args.end_to_end), args.workers)
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
