"""Benchmark the whole regeneration at gpt2-small size, before and after a change, into bench/RESULTS.md.

Question: how long does regenerating every figure take on 2 CPU cores, how much memory does each
script need at real size (vocabulary 50257, 12 layers, d_model 768), where does the time go, and
what did a change (``--before REF``) buy?

Method:
* model: ``bench/model`` (``bench/build_model.py``: real gpt2-small attention, LN, wpe and bias
  tensors, seeded random wte and MLP weights), loaded with ``--model <bench/model>``;
* every script runs as its own process, one at a time, in run_all.py's dependency order, with its
  default settings (the work ``make figures`` does), ``--out`` in a temporary folder and a fresh
  (cold) ``L1H5_CACHE`` per code version, so shared intermediates (processed weights, effective
  embeddings, frequency table) are paid for once, by the step that first needs them. Where the
  code has the processed-weights cache, the model is first loaded once in its own process, as
  run_all.py does (its own row);
* ``--before REF``: the same run for the code at git REF (exported with ``git archive`` into the
  temporary folder), script by script alternating with the current code, so both see the same
  machine load; the table shows both and the ratios;
* per process: wall time, CPU time (user + system of it and its children, the measure of work
  that contention does not inflate) and peak RSS (``os.wait4`` rusage), and the machine's
  1-minute load average sampled while it ran;
* inputs that cannot be downloaded here are made locally and named in the report: a generated
  20 MB text (``--text``) instead of WikiText-103, a random 768-dim sae_lens SAE (``--sae-path``);
* side-by-side cases, each in its own process and repeated ``--repeats`` times, interleaved (the
  minimum is reported: the run least disturbed by other jobs):
  ``load``: load_model at gpt2-small size, uncached (the route before the processed-weights
  cache) vs the first (cache-building) and every later (memory-mapped) load, for the local-folder
  route and the default ``gpt2-small`` route (the model laid out as a Hugging Face cache with
  build_model.lay_out_hf_cache, HF_HUB_OFFLINE=1);
  ``tokenise``: the 20 MB text counted by the original approach (``tokenizer.encode`` per line
  into a Counter), by the previous common.freq route (Hugging Face ``encode_batch_fast``) and by
  today's (tiktoken, 1 and 2 threads); counts must be identical;
  ``selfrank``: dense ``E W_QK E^T`` vs streamed ``common.token_scores.self_rank``;
  ``guard``: every script on the planted model under bench/dense_guard.py (no dense vocab x vocab);
* ``wholerun``: the whole regeneration as ``make figures`` does it: ``run_all.py --force`` with the
  local text and SAE and a cold cache, once per ``--whole-jobs`` value (steps at a time); its wall
  and CPU time, and every step's seconds, CPU and peak RSS from its run_all.json. This is the
  number the 5-minute target is about (the per-script table sums one-at-a-time runs).

Outputs: ``bench/RESULTS.md`` and ``bench/results.json`` (every number in RESULTS.md).
Usage: ``python bench/run_bench.py --before REF`` (everything; ``--hotspots all`` adds a cProfile
pass per script: where the time goes; ``--memory all`` one under bench/peak_stack.py: where the
memory peaks); ``--cases load,tokenise
--no-scripts`` for the side-by-side cases only; ``--only a,b`` for some scripts; ``--reuse JSON``
to carry sections not measured in this run over from an earlier results.json (labelled with their
date); ``--render JSON`` to rewrite RESULTS.md from a results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

VOCAB = 50257
DENSE_BYTES = VOCAB * VOCAB * 4  # one float32 vocab x vocab matrix: 10.1 GB
TARGET_SECONDS, TARGET_RSS = 300, 1.5e9  # issue 12; GB here means 10^9 bytes throughout
WIKITEXT103_TRAIN_MB = 540  # raw train split, about 540 MB of text: what token_freq.py reads by default
CASE_GROUPS = ("wholerun", "load", "tokenise", "selfrank", "guard")
PREPARE = "(model load: fills the weights cache)"
PROMPT = "The cat sat on the mat with a dog and a red ball."

SCRIPTS = [  # the brief's list; the order is replaced by run_all.py's where it exists
    "token_freq.py", "characterize_head.py", "component_ablation.py", "skew_analysis.py",
    "svd_sym_skew_heatmap.py", "svd_group_scaling_heatmap.py", "svd_rank_ablation.py",
    "cosine_attention_analysis.py", "clustering.py", "gradient_steering.py", "semantic_head.py",
    "rule_preserving_ablation.py",
]


def script_order() -> list[str]:
    try:
        import run_all  # the dependency order (token_freq before its readers)

        order = [s.script for s in run_all.STEPS]
    except Exception:
        order = []
    return order + [s for s in SCRIPTS if s not in order]


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def make_text(path: Path, megabytes: float, seed: int = 0) -> dict:
    """A seeded English-like text: the demo corpus' sentences interleaved with sentences of whole
    words drawn from a Zipf law over GPT-2's word tokens (those with a leading space and letters
    only, in id order, which roughly follows frequency), so the tokenizer meets tens of thousands
    of distinct words as in real text. Lines of 1-12 sentences, like WikiText paragraphs."""
    import numpy as np

    from common.demo_corpus import demo_lines
    from common.gpt2_tokenizer import load_tokenizer

    tok = load_tokenizer()
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words = np.array([t[1:] for t, _ in vocab if t.startswith("\u0120") and t[1:].isalpha()])
    rng = np.random.default_rng(seed)
    demo = [l.strip() for l in demo_lines(4000, seed)]
    cdf = np.cumsum(1.0 / (np.arange(len(words)) + 10.0))
    cdf /= cdf[-1]
    punct = np.array([",", ",", ";", ""] + [""] * 12)
    target = int(megabytes * 1e6)
    size, n_lines = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            sentences = []
            for _ in range(int(rng.integers(1, 13))):
                if rng.random() < 0.3:
                    sentences.append(demo[int(rng.integers(len(demo)))])
                    continue
                n = int(rng.integers(6, 30))
                w = words[np.minimum(np.searchsorted(cdf, rng.random(n)), len(words) - 1)]
                body = " ".join(a + b for a, b in zip(w, punct[rng.integers(len(punct), size=n)]))
                sentences.append(body[:1].upper() + body[1:].rstrip(",;") + ".")
            line = " " + " ".join(sentences) + "\n"
            f.write(line)
            size += len(line.encode())
            n_lines += 1
    return {"path": str(path), "bytes": path.stat().st_size, "lines": n_lines}


def make_sae(folder: Path, d_in: int = 768, d_sae: int = 24576, seed: int = 0) -> dict:
    """A random sae_lens StandardSAE with gpt2-small's residual width and the d_sae of the public
    gpt2-small residual SAEs (24576), saved with ``save_model`` so ``SAE.load_from_disk`` reads it."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        w = torch.randn(d_sae, d_in) / d_in**0.5
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    try:  # as the hub SAE says: the residual stream entering layer 1, which L1H5 reads
        sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    except Exception:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(folder))
    return {"path": str(folder), "d_in": d_in, "d_sae": d_sae}


def _has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def extra_args(help_text: str, ctx: dict) -> list[str]:
    """Inputs a script needs that cannot be downloaded here, and the upstream results it reads
    (only from an upstream that succeeded, as run_all does), passed if the script has the flag."""
    args = []
    if _has_flag(help_text, "--text"):
        args += ["--text", ctx["text"]]
    table = ctx["out"] / "token_freq" / "token_freq.csv"
    if _has_flag(help_text, "--freq-table") and table.exists():
        args += ["--freq-table", str(table)]
    communities = ctx["out"] / "clustering" / "communities.csv"
    if _has_flag(help_text, "--communities") and communities.exists():
        args += ["--communities", str(communities)]
    if _has_flag(help_text, "--sae-path"):
        args += ["--sae-path", ctx["sae"]()]
        if _has_flag(help_text, "--hook"):
            args += ["--hook", "blocks.1.hook_resid_pre"]  # what L1H5 reads, as the default hub SAE
    return args


# ----------------------------------------------------------------------------------------------
# measuring one process
# ----------------------------------------------------------------------------------------------


class LoadSampler(threading.Thread):
    """1-minute load average and system CPU use, sampled while a child runs."""

    def __init__(self, every: float = 2.0):
        super().__init__(daemon=True)
        self.every, self.loads, self.cpu = every, [], []
        self._halt = threading.Event()

    def run(self):
        import psutil

        psutil.cpu_percent(None)
        while not self._halt.wait(self.every):
            self.loads.append(os.getloadavg()[0])
            self.cpu.append(psutil.cpu_percent(None))

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else round(os.getloadavg()[0], 2)  # noqa: E731
        return {"load1_mean": mean(self.loads), "load1_max": round(max(self.loads, default=os.getloadavg()[0]), 2),
                "system_cpu_pct_mean": mean(self.cpu)}


def measure(cmd: list[str], env: dict, log: Path, timeout: float | None = None, cwd: Path = ROOT) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS (bytes) of it and its descendants."""
    sampler = LoadSampler()
    sampler.start()
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else time.time() + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.time() > deadline:
                proc.kill()
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    load = sampler.stop()
    return {"rc": proc.returncode, "seconds": round(wall, 2), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss": ru.ru_maxrss * 1024, "load1_start": round(load_start, 2), **load}  # ru_maxrss is in KiB


# ----------------------------------------------------------------------------------------------
# side-by-side cases (each run as `run_bench.py --case NAME ...` in its own process)
# ----------------------------------------------------------------------------------------------


def _l1h5_inputs(model_dir: Path, n: int):
    """L1H5's QK factors and the first n rows of an LN-normalised token embedding of the bench model."""
    from safetensors import safe_open

    from common.factored import Factored

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        c_attn = f.get_tensor("h.1.attn.c_attn.weight")
        ln_w = f.get_tensor("h.1.ln_1.weight")
        E = f.get_slice("wte.weight")[:n]
    E = (E - E.mean(1, keepdim=True)) / E.std(1, keepdim=True)
    W_Q = ln_w[:, None] * c_attn[:, 5 * 64 : 6 * 64]
    W_K = ln_w[:, None] * c_attn[:, 768 + 5 * 64 : 768 + 6 * 64]
    return Factored(W_Q.contiguous(), W_K.contiguous()), E.contiguous()


def case_dense_selfrank(model_dir: Path, n: int) -> dict:
    """The original approach: the full [n, n] score matrix E W_QK E^T, then each row against its diagonal."""
    import torch

    f, E = _l1h5_inputs(model_dir, n)
    t0 = time.perf_counter()
    W_QK = f.left @ f.right.T
    scores = E @ W_QK @ E.T  # [n, n]: 10.1 GB at n = 50257
    diag = scores.diagonal().clone()
    scores.fill_diagonal_(-torch.inf)
    ranks = (scores > diag[:, None]).sum(1)
    return {"seconds": time.perf_counter() - t0, "checksum": int(ranks.sum())}


def case_streamed_selfrank(model_dir: Path, n: int, n_queries: int) -> dict:
    """common.token_scores.self_rank over n keys for the first n_queries query tokens."""
    import torch

    from common.token_scores import self_rank

    f, E = _l1h5_inputs(model_dir, n)
    t0 = time.perf_counter()
    ranks = self_rank(f, E, torch.arange(n_queries))
    return {"seconds": time.perf_counter() - t0, "checksum": int(ranks.sum())}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def case_tokenise(text: Path, mode: str) -> dict:
    """Token counts of ``text``: the original line-by-line loop, or common.freq with a backend.

    Timed: the counting only (the tokenizer is loaded and tiktoken's encoding built before, and
    reported as ``setup_seconds``)."""
    import collections

    import numpy as np

    from common import freq
    from common.gpt2_tokenizer import load_tokenizer

    lines = freq.split_lines(text.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    tok = load_tokenizer()
    backend, workers = None, 1
    if mode != "lines":
        backend, workers = mode.rsplit("-w", 1)
        workers = int(workers)
        if backend == "tiktoken":
            freq.tiktoken_encoding()
            assert freq.counting_backend(tok) == "tiktoken"
    setup = time.perf_counter() - t0
    c0, t0 = _cpu(), time.perf_counter()
    if mode == "lines":
        counter = collections.Counter()
        for line in lines:
            counter.update(tok.encode(line))
        counts = np.zeros(VOCAB, np.int64)
        for k, v in counter.items():
            counts[k] = v
    else:
        counts = freq.count_tokens(freq.string_batches(lines), workers=workers, tokenizer=tok, backend=backend)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"seconds": seconds, "count_cpu_seconds": cpu, "setup_seconds": setup, "tokens": int(counts.sum()),
            "checksum": int((counts * (np.arange(VOCAB) % 1_000_003 + 1)).sum() % (2**61 - 1)),
            "megabytes": text.stat().st_size / 1e6}


def case_load_model(name: str) -> dict:
    """load_model(name), then one forward pass (which touches every weight, so memory-mapped pages
    count in the peak RSS)."""
    import torch

    from common.model import load_model

    t0 = time.perf_counter()
    m = load_model(name)
    seconds = time.perf_counter() - t0
    logits = m(m.to_tokens(PROMPT))
    return {"seconds": seconds, "logit_sum": float(logits.double().sum()),
            "from_cache": bool(getattr(m, "_l1h5_processed_cache", None)), "torch_threads": torch.get_num_threads()}


def run_case(args) -> int:
    import torch

    torch.set_grad_enabled(False)
    if args.case == "dense-selfrank":
        res = case_dense_selfrank(Path(args.model), args.n)
    elif args.case == "streamed-selfrank":
        res = case_streamed_selfrank(Path(args.model), args.n, args.n_queries or args.n)
    elif args.case.startswith("tokenise-"):
        res = case_tokenise(Path(args.text), args.case.removeprefix("tokenise-"))
    elif args.case == "load-model":
        res = case_load_model(args.model)
    elif args.case == "imports":
        import transformer_lens  # noqa: F401  (so the peak RSS is the import floor of every script)

        res = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    else:
        raise SystemExit(f"error: unknown case {args.case}")
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def measure_case(name: str, extra: list[str], env: dict, logs: Path, model: str, tag: str = "") -> dict:
    log = logs / f"case-{name}-{tag}-{'-'.join(extra).replace('/', '_')[-50:]}-{time.time_ns()}.log"
    m = measure([sys.executable, str(Path(__file__)), "--case", name, "--model", str(model), *extra], env, log)
    lines = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")]
    if m["rc"] != 0 or not lines:
        return {**m, "error": log.read_text()[-1500:]}
    return {**m, **json.loads(lines[-1][7:])}


def best(runs: list[dict]) -> dict:
    """The least disturbed of repeated runs: minimum wall and CPU time; peak RSS of that run; loads kept."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {**runs[-1], "repeats": len(runs)}
    b = dict(min(ok, key=lambda r: r["seconds"]))
    for k in ("cpu_seconds", "count_cpu_seconds"):
        if k in b:
            b[k] = min(r[k] for r in ok)
    b["repeats"] = len(ok)
    b["seconds_all"] = [round(r["seconds"], 3) for r in ok]
    b["load1_all"] = [r["load1_mean"] for r in ok]
    return b


def load_cases(env: dict, logs: Path, model: Path, work: Path, repeats: int) -> dict:
    """load_model at gpt2-small size: uncached, first load (builds the cache entry), later loads."""
    from build_model import lay_out_hf_cache

    hf_home = work / "hf-home"
    lay_out_hf_cache(model, hf_home)
    routes = {"local folder": (str(model), {}), "gpt2-small (HF cache)": ("gpt2-small", {"HF_HOME": str(hf_home)})}
    out = {}
    for label, (name, extra_env) in routes.items():
        base = {k: v for k, v in env.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
        runs: dict[str, list] = {"uncached": [], "first": [], "cached": []}
        for i in range(repeats):
            cache = work / f"load-cache-{len(out)}-{i}"
            runs["uncached"].append(measure_case("load-model", [], {**base, **extra_env, "L1H5_WEIGHTS_CACHE": "0",
                                                                    "L1H5_CACHE": str(cache)}, logs, name, "uncached"))
            runs["first"].append(measure_case("load-model", [], {**base, **extra_env, "L1H5_CACHE": str(cache)},
                                              logs, name, "first"))
            runs["cached"].append(measure_case("load-model", [], {**base, **extra_env, "L1H5_CACHE": str(cache)},
                                               logs, name, "cached"))
            shutil.rmtree(cache, ignore_errors=True)
        out[label] = {k: best(v) for k, v in runs.items()}
        r = out[label]
        print(f"  load {label}: " + ", ".join(f"{k} {v.get('seconds', float('nan')):.2f}s {v['peak_rss'] / 1e9:.2f} GB"
                                             for k, v in r.items()), flush=True)
    return out


TOKENISE_MODES = ("lines", "huggingface-w1", "tiktoken-w1", "tiktoken-w2")


def tokenise_cases(env: dict, logs: Path, model: Path, text: Path, repeats: int) -> list[dict]:
    runs: dict[str, list] = {m: [] for m in TOKENISE_MODES}
    for _ in range(repeats):  # interleaved, so every method sees the same spread of machine load
        for mode in TOKENISE_MODES:
            runs[mode].append(measure_case(f"tokenise-{mode}", ["--text", str(text)], env, logs, str(model)))
    out = []
    for mode in TOKENISE_MODES:
        b = best(runs[mode])
        out.append({"mode": mode, **b})
        print(f"  tokenise {mode}: {b.get('seconds', float('nan')):.2f}s (cpu {b.get('count_cpu_seconds', float('nan')):.2f})",
              flush=True)
    return out


def selfrank_cases(env: dict, logs: Path, model: Path) -> dict:
    out: dict = {"selfrank": []}
    # Same work side by side: all n queries against n keys (n x n), dense vs streamed.
    for n in (4096, 8192, 16384):
        d = measure_case("dense-selfrank", ["--n", str(n)], env, logs, str(model))
        s = measure_case("streamed-selfrank", ["--n", str(n)], env, logs, str(model))
        out["selfrank"].append({"n": n, "dense": d, "streamed": s})
        print(f"  self-rank n={n}: dense {d.get('seconds', float('nan')):.2f}s {d['peak_rss'] / 1e9:.2f} GB, "
              f"streamed {s.get('seconds', float('nan')):.2f}s {s['peak_rss'] / 1e9:.2f} GB", flush=True)
    # Full vocabulary: streamed on a subset of queries (extrapolated linearly to all 50257).
    nq = 8192
    full = measure_case("streamed-selfrank", ["--n", str(VOCAB), "--n-queries", str(nq)], env, logs, str(model))
    out["selfrank_full"] = {"n_queries": nq, **full}
    return out


def guard_scripts(env: dict, work: Path, text: Path, only: set[str]) -> list[dict]:
    """Every script under bench/dense_guard.py on the planted model (real 50257-token vocabulary)."""
    out, logs = work / "guard-out", work / "logs"
    out.mkdir(exist_ok=True)
    sae_holder: dict = {}

    def sae() -> str:
        if "path" not in sae_holder:
            from common.planted import D_MODEL as planted_d_model

            sae_holder.update(make_sae(work / "sae-planted", d_in=planted_d_model))
        return sae_holder["path"]

    ctx = {"text": str(text), "out": out, "sae": sae}
    rows = []
    for script in script_order():
        if (only and script not in only) or not (ROOT / script).exists():
            continue
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                                   capture_output=True, text=True).stdout
        report = logs / f"guard-{script}.json"
        cmd = [sys.executable, str(BENCH / "dense_guard.py"), str(report), script, "--model", "planted",
               "--out", str(out / script.removesuffix(".py")), *extra_args(help_text, ctx)]
        m = measure(cmd, env, logs / f"guard-{script}.log")
        g = json.loads(report.read_text()) if report.exists() else {}
        rows.append({"script": script, "rc": m["rc"], "seconds": m["seconds"], **{k: g.get(k) for k in
                     ("numel", "shape", "dtype", "op", "n_ops", "limit")}})
        print(f"  guard {script}: rc {m['rc']}, largest {g.get('shape')} {g.get('dtype')} ({g.get('op')})", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# the scripts, before and after
# ----------------------------------------------------------------------------------------------


def export_tree(ref: str, dest: Path) -> dict:
    """The repository at git ``ref`` (committed files only) in ``dest``."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"error: --before {ref}: not a git revision here ({commit.stderr.strip()})")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", ref], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    archive.wait()
    subject = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%s", ref], capture_output=True, text=True)
    return {"ref": ref, "commit": commit.stdout.strip(), "subject": subject.stdout.strip()[:100]}


def has_weights_cache(tree: Path) -> bool:
    return (tree / "common" / "weights_cache.py").exists()


class Version:
    """One code version being measured: its tree, environment, output folder and rows."""

    def __init__(self, label: str, tree: Path, work: Path, base_env: dict, text: Path, sae):
        self.label, self.tree = label, tree
        self.out = work / f"out-{label}"
        self.logs = work / "logs"
        self.out.mkdir(parents=True)
        self.env = dict(base_env, PYTHONPATH=str(tree), L1H5_CACHE=str(work / f"cache-{label}"))
        self.ctx = {"text": str(text), "out": self.out, "sae": sae}
        self.rows: dict[str, dict] = {}
        self.prepared = False

    def prepare(self, model: Path, timeout: float) -> None:
        """As run_all.py: load the model once so the processed-weights cache is filled."""
        self.prepared = True
        if not has_weights_cache(self.tree):
            return
        code = "import sys, torch; from common.model import load_model; load_model(sys.argv[1])"
        m = measure([sys.executable, "-c", code, str(model)], self.env, self.logs / f"{self.label}-prepare.log",
                    timeout, cwd=self.tree)
        self.rows[PREPARE] = {"status": "ok" if m["rc"] == 0 else f"failed (exit {m['rc']})", "extra": [], **m}

    def run(self, script: str, model: Path, work: Path, timeout: float) -> dict:
        if not (self.tree / script).exists():
            self.rows[script] = {"status": "missing"}
            return self.rows[script]
        if script != "token_freq.py" and not self.prepared:
            self.prepare(model, timeout)
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=self.tree, env=self.env,
                                   capture_output=True, text=True).stdout
        extra = extra_args(help_text, self.ctx)
        cmd = [sys.executable, script, "--model", str(model), "--out", str(self.out / script.removesuffix(".py")), *extra]
        log = self.logs / f"{self.label}-{script}.log"
        m = measure(cmd, self.env, log, timeout, cwd=self.tree)
        r = {"status": "ok" if m["rc"] == 0 else f"failed (exit {m['rc']})",
             "extra": [a if not a.startswith(str(work)) else "<tmp>" + a[len(str(work)):] for a in extra], **m}
        if m["rc"] != 0:
            tail = log.read_text()[-2000:]
            last = [l for l in tail.splitlines() if l.strip()][-1:] or [""]
            r["note"] = f"exit {m['rc']}: `{last[0][:200]}`"
        self.rows[script] = r
        return r


def hotspots(version: "Version", scripts: list[str], model: Path, work: Path, timeout: float, top: int = 8) -> dict:
    """Where each script's time goes: a second run under cProfile (slower than the timed run, so
    only the shares are reported), the functions of this repository with the largest cumulative
    time, and the share of the run spent inside them."""
    import pstats

    out = {}
    for script in scripts:
        if not (version.tree / script).exists():
            continue
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=version.tree, env=version.env,
                                   capture_output=True, text=True).stdout
        prof = version.logs / f"{script}.prof"
        outdir = work / "hotspots" / script.removesuffix(".py")
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), script, "--model", str(model), "--out", str(outdir),
               *extra_args(help_text, version.ctx)]
        m = measure(cmd, version.env, version.logs / f"hotspots-{script}.log", timeout, cwd=version.tree)
        if m["rc"] != 0 or not prof.exists():
            out[script] = {"error": f"exit {m['rc']}"}
            continue
        stats = pstats.Stats(str(prof))
        total = max(stats.total_tt, 1e-9)
        tree = str(version.tree.resolve())
        rows = []
        imports = max((v[3] for (file, _, func), v in stats.stats.items()
                       if file.startswith("<frozen importlib") and func == "_find_and_load"), default=0.0)
        for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
            if file.startswith("<") or file == "~":
                continue
            path = Path(file) if Path(file).is_absolute() else version.tree / file  # the script itself is relative
            path = str(path.resolve())
            if not path.startswith(tree) or func.startswith("<"):
                continue
            rows.append({"function": f"{Path(path).relative_to(tree)}:{func}", "cum_s": round(ct, 2),
                         "share": round(ct / total, 3), "calls": nc})
        rows.sort(key=lambda r: -r["cum_s"])
        # drop main()/compute() wrappers that only contain the rest: keep the top entries below 95% share
        inner = [r for r in rows if r["share"] < 0.95][:top]
        out[script] = {"profiled_seconds": round(total, 1), "imports_share": round(imports / total, 3), "top": inner,
                       "load1_mean": m["load1_mean"]}
        print(f"  hotspots {script}: " + ", ".join(f"{r['function']} {r['share']:.0%}" for r in inner[:3]), flush=True)
    return out


def memory_peaks(version: "Version", scripts: list[str], model: Path, work: Path, timeout: float) -> dict:
    """Where each script's memory peaks: a second run under bench/peak_stack.py (RSS sampled with
    the main thread's stack), the repository frame at the peak."""
    out = {}
    for script in scripts:
        if not (version.tree / script).exists():
            continue
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=version.tree, env=version.env,
                                   capture_output=True, text=True).stdout
        report = version.logs / f"peak-{script}.json"
        cmd = [sys.executable, str(BENCH / "peak_stack.py"), str(report), script, "--model", str(model),
               "--out", str(work / "peaks" / script.removesuffix(".py")), *extra_args(help_text, version.ctx)]
        m = measure(cmd, version.env, version.logs / f"peak-{script}.log", timeout, cwd=version.tree)
        if m["rc"] != 0 or not report.exists():
            out[script] = {"error": f"exit {m['rc']}"}
            continue
        r = json.loads(report.read_text())
        out[script] = {"peak_rss": r["ru_maxrss"], "stack_at_peak": r["stack_at_peak"][-4:],
                       "highest_frames": r["highest_frames"][:5]}
        print(f"  memory {script}: {r['ru_maxrss'] / 1e9:.2f} GB at {' > '.join(r['stack_at_peak'][-2:])}", flush=True)
    return out


def whole_runs(env: dict, logs: Path, model: Path, work: Path, text: Path, sae: str, jobs_list: list[int],
               timeout: float) -> list[dict]:
    """``run_all.py --force`` of the current tree, cold cache, once per jobs value (see the docstring)."""
    runs = []
    for jobs in jobs_list:
        root, cache = work / f"whole-j{jobs}", work / f"cache-whole-j{jobs}"
        cmd = [sys.executable, str(ROOT / "run_all.py"), "--model", str(model), "--root", str(root), "--force",
               "--text", str(text), "--sae-path", sae, "--jobs", str(jobs)]
        print(f"whole run, --jobs {jobs} ...", flush=True)
        r = measure(cmd, dict(env, L1H5_CACHE=str(cache)), logs / f"whole-j{jobs}.log", timeout)
        record = json.loads((root / "run_all.json").read_text()) if (root / "run_all.json").exists() else {}
        r.update(jobs=jobs, threads_per_job=record.get("threads_per_job"), steps=record.get("steps", {}),
                 prepare=record.get("prepare"),
                 command="python run_all.py --model <bench/model> --force --text <text> --sae-path <sae> "
                         f"--jobs {jobs}")
        print(f"  --jobs {jobs}: exit {r['rc']}, {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s cpu, "
              f"load {r['load1_mean']}", flush=True)
        runs.append(r)
        shutil.rmtree(cache, ignore_errors=True)
    return runs


def run_scripts(versions: list[Version], model: Path, work: Path, only: set[str], timeout: float) -> dict:
    t_all = {v.label: 0.0 for v in versions}
    for script in script_order():
        if only and script not in only:
            continue
        for v in versions:  # alternating, script by script: both versions see the same load
            r = v.run(script, model, work, timeout)
            if r["status"] == "missing":
                print(f"{v.label:6s} {script}: missing, skipped", flush=True)
                continue
            print(f"{v.label:6s} {script}: {r['status']}, {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s cpu, "
                  f"{r['peak_rss'] / 1e9:.2f} GB peak RSS, load {r['load1_mean']}", flush=True)
    out = {}
    for v in versions:
        ran = [r for r in v.rows.values() if r["status"] != "missing"]
        t_all[v.label] = sum(r["seconds"] for r in ran)
        out[v.label] = {"rows": v.rows, "total_seconds": round(t_all[v.label], 2),
                        "cpu_seconds": round(sum(r["cpu_seconds"] for r in ran), 2),
                        "peak_rss": max((r["peak_rss"] for r in ran), default=0),
                        "load1_mean": round(sum(r["load1_mean"] * r["seconds"] for r in ran)
                                            / max(sum(r["seconds"] for r in ran), 1e-9), 2) if ran else None}
    return out


# ----------------------------------------------------------------------------------------------
# machine and report
# ----------------------------------------------------------------------------------------------


def machine(env: dict, logs: Path, model: Path) -> dict:
    import psutil
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    imports = measure_case("imports", [], env, logs, str(model))
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "torch_threads": imports.get("torch_threads"), "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "load1_at_start": round(os.getloadavg()[0], 2), "import_only_peak_rss": imports["peak_rss"],
    }


def _same(a: int, b: int) -> str:
    """Rank sums of two methods: equal, or their relative difference (float rounding at near-ties)."""
    return "yes" if a == b else f"rank sums differ by {abs(a - b) / max(abs(a), 1):.1e} (relative)"


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else ""


def _load_col(r: dict) -> str:
    return f"{r.get('load1_mean', 0):.1f}/{r.get('load1_max', 0):.1f}"


def _reused(section: dict | list | None, key: str, res: dict) -> list[str]:
    src = res.get("reused", {}).get(key)
    cpu = res.get("reused_machine")
    on = f" on {cpu}" if cpu and cpu != res["machine"]["cpu"] else ""
    return [f"(Carried over from the run of {src}{on}; not measured again in this run.)", ""] if src else []


def report_machine(res: dict) -> list[str]:
    m = res["machine"]
    return [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}; {m['usable_cpus']} usable cores ({m['logical_cpus']} logical); RAM {m['ram_gb']} GB",
        f"- torch {m['torch']} with {m['torch_threads']} intra-op threads; Python {m['python']}; {m['platform']}",
        f"- **Shared machine**: several agents use these 2 cores. 1-minute load average at the start {m['load1_at_start']};",
        "  every row below gives the load while it ran (mean/max). A load above 2 means the process got less",
        "  than the 2 cores; `cpu s` (user + system CPU time of the process and its children) is the measure",
        "  of work that contention does not inflate. On 2 idle cores a script's wall time would lie between",
        "  `cpu s / 2` (both torch threads busy throughout) and `cpu s` (single-threaded parts).",
        f"- Importing torch and transformer_lens alone peaks at {gb(m['import_only_peak_rss'])} GB RSS (the floor of every script).",
        "",
    ]


def report_scripts(res: dict) -> list[str]:
    sc = res.get("scripts")
    if not sc:
        return ["## Every script", "", "Not measured in this run (`--no-scripts`).", ""]
    labels = [l for l in ("before", "after") if l in sc]
    L = ["## Every script (default settings, cold cache per code version, one at a time)", ""]
    L += _reused(sc, "scripts", res)
    if len(labels) == 2:
        b = res["versions"]["before"]
        L += [f"Before: `{b['ref']}` ({b['commit']}: {b['subject']}). After: the current tree "
              f"({res['versions']['after']['commit']}). Each script ran for both, alternately, so both saw the same load.", ""]
    names = list(dict.fromkeys(n for l in labels for n in sc[l]["rows"]))
    names.sort(key=lambda n: -1 if n == PREPARE else (script_order().index(n) if n in script_order() else 99))
    if len(labels) == 2:
        L += ["| script | before wall s | before cpu s | before peak GB | after wall s | after cpu s | after peak GB | "
              "wall before/after | cpu before/after | peak before/after | load before (mean/max) | load after (mean/max) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for n in names:
            b, a = sc["before"]["rows"].get(n), sc["after"]["rows"].get(n)

            def cells(r):
                if not r or r["status"] == "missing":
                    return ["-", "-", "-"] if n == PREPARE else ["missing", "", ""]
                flag = "" if r["status"] == "ok" else f" ({r['status']})"
                return [f"{r['seconds']:.1f}{flag}", f"{r['cpu_seconds']:.1f}", gb(r["peak_rss"])]

            ok_b, ok_a = b and b.get("status") == "ok", a and a.get("status") == "ok"
            ratios = ([_ratio(b["seconds"], a["seconds"]), _ratio(b["cpu_seconds"], a["cpu_seconds"]),
                       _ratio(b["peak_rss"], a["peak_rss"])] if ok_b and ok_a else ["", "", ""])
            L.append(f"| {n} | " + " | ".join(cells(b) + cells(a) + ratios +
                                              [_load_col(b) if ok_b else "", _load_col(a) if ok_a else ""]) + " |")
        tb, ta = sc["before"], sc["after"]
        passed = [f"{n} `{' '.join(r['extra'])}`" for n, r in ta["rows"].items() if r.get("extra")]
        L.append(f"| **whole run** | **{tb['total_seconds']:.1f}** | {tb['cpu_seconds']:.1f} | **{gb(tb['peak_rss'])}** (max) | "
                 f"**{ta['total_seconds']:.1f}** | {ta['cpu_seconds']:.1f} | **{gb(ta['peak_rss'])}** (max) | "
                 f"{_ratio(tb['total_seconds'], ta['total_seconds'])} | {_ratio(tb['cpu_seconds'], ta['cpu_seconds'])} | "
                 f"{_ratio(tb['peak_rss'], ta['peak_rss'])} | {tb['load1_mean']} | {ta['load1_mean']} |")
        if passed:
            L += ["", "Inputs passed (current code; the earlier code got the same where it had the flag): " + "; ".join(passed) + "."]
    else:
        lab = labels[0]
        if res.get("reused", {}).get("scripts") and lab == "before":
            L += ["These are the numbers of the code before issue 12's changes (no processed-weights cache, the Hugging Face",
                  "token counter); `python bench/run_bench.py --before <ref>` measures both versions side by side.", ""]
        L += ["| script | status | wall s | cpu s | peak RSS GB | load (mean/max) | extra inputs |",
              "| --- | --- | ---: | ---: | ---: | --- | --- |"]
        for n in names:
            r = sc[lab]["rows"][n]
            if r["status"] == "missing":
                L.append(f"| {n} | not yet written (skipped) | | | | | |")
                continue
            L.append(f"| {n} | {r['status']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {gb(r['peak_rss'])} | "
                     f"{_load_col(r)} | {' '.join(r.get('extra') or []) or '-'} |")
        t = sc[lab]
        L.append(f"| **whole run** | | **{t['total_seconds']:.1f}** | {t['cpu_seconds']:.1f} | **{gb(t['peak_rss'])}** (max) | "
                 f"{t['load1_mean']} | |")
    cur = sc[labels[-1]]
    which = "current code" if labels[-1] == "after" else "the code measured above (before issue 12's changes)"
    rows = [(n, r) for n, r in cur["rows"].items() if r["status"] != "missing"]
    over = [n for n, r in rows if r["peak_rss"] >= TARGET_RSS and n != PREPARE]
    if res.get("cases", {}).get("wholerun"):
        whole = (f"the sum of these one-at-a-time runs is {cur['total_seconds'] / 60:.1f} min wall "
                 f"({cur['cpu_seconds'] / 60:.1f} min CPU), each paying its own imports; `make figures` runs the steps "
                 "as in the whole-run section above, which is what the 5-minute target is measured on")
    else:
        whole = (f"whole regeneration < {TARGET_SECONDS // 60} min on 2 cores: "
                 f"{'met' if cur['total_seconds'] < TARGET_SECONDS else 'NOT met'} as measured ({cur['total_seconds'] / 60:.1f} "
                 f"min wall at the load above; {cur['cpu_seconds'] / 60:.1f} min of CPU time, i.e. between "
                 f"{cur['cpu_seconds'] / 120:.1f} and {cur['cpu_seconds'] / 60:.1f} min on 2 idle cores)")
    L += ["",
          f"Targets (issue 12), {which}: {whole}. Peak RSS of every script < {TARGET_RSS / 1e9:.1f} GB: "
          + ("met" if not over else f"NOT met by {', '.join(over)}") + "."]
    if PREPARE in cur["rows"] and cur["rows"][PREPARE]["status"] != "missing":
        pr = cur["rows"][PREPARE]
        L += ["", f"The first row is the one-time model load that fills the processed-weights cache (as run_all.py does "
              f"before the analyses): {pr['seconds']:.1f} s, peak {gb(pr['peak_rss'])} GB, the cost every script paid "
              "before the cache."]
    inputs = res.get("inputs", {})
    if inputs.get("text"):
        L += ["", "Inputs made locally: `--text`: "
              f"{inputs['text']['bytes'] / 1e6:.1f} MB of generated text ({inputs['text']['lines']} lines; `make_text` in "
              "run_bench.py: demo-corpus sentences mixed with sentences of Zipf-distributed GPT-2 word tokens) instead of "
              f"WikiText-103 (token_freq.py's default reads its train split, about {WIKITEXT103_TRAIN_MB} MB)"
              + (f"; `--sae-path`: a random sae_lens StandardSAE (d_in {inputs['sae']['d_in']}, d_sae {inputs['sae']['d_sae']}, "
                 "the width of the public gpt2-small residual SAEs)" if inputs.get("sae") else "") + "."]
    notes = [(lab, n, r["note"]) for lab in labels for n, r in sc[lab]["rows"].items() if r.get("note")]
    if notes:
        L += ["", "Failures:"] + [f"- {lab} {n}: {note}" for lab, n, note in notes]
    return L + [""]


def report_whole(res: dict) -> list[str]:
    runs = res.get("cases", {}).get("wholerun")
    if not runs:
        return []
    L = ["## The whole regeneration, as `make figures` runs it (run_all.py)", ""]
    L += _reused(runs, "wholerun", res)
    L += ["`run_all.py --force` on the current tree with the local text and SAE (inputs below) and a cold cache "
          "(the processed weights, effective embeddings and text token ids are built during the run). `--jobs N`: "
          "steps at a time, each with 2/N torch threads, started in critical-path order; on Linux each step is "
          "forked from run_all after the heavy libraries are imported once. Per-step numbers from its run_all.json "
          "(os.wait4 of each step).", ""]
    scripts = list(dict.fromkeys(n for r in runs for n in r["steps"]))
    prepared = any(r.get("prepare") for r in runs)
    head = "| step | " + " | ".join(f"jobs {r['jobs']}: wall s | cpu s | peak GB" for r in runs) + " |"
    L += [head, "| --- |" + " ---: | ---: | ---: |" * len(runs)]
    for n in ([PREPARE] if prepared else []) + scripts:
        cells = []
        for r in runs:
            st = r.get("prepare") if n == PREPARE else r["steps"].get(n)
            if not st:
                cells += ["", "", ""]
                continue
            flag = "" if st["status"] == "ok" else f" ({st['status']})"
            cells += [f"{st['seconds']:.1f}{flag}", f"{st.get('cpu_seconds') or 0:.1f}", f"{st.get('peak_rss_gb') or 0:.2f}"]
        L.append(f"| {n} | " + " | ".join(cells) + " |")
    L.append("| **whole run** | " + " | ".join(f"**{r['seconds']:.1f}** | {r['cpu_seconds']:.1f} | {gb(r['peak_rss'])} (max)"
                                               for r in runs) + " |")
    L += ["", "Load while it ran (1-minute average, mean/max): " + "; ".join(
        f"jobs {r['jobs']}: {r['load1_mean']:.1f}/{r['load1_max']:.1f}" for r in runs) + "."]
    if prepared:
        L += ["", f"`{PREPARE}` is run_all's model load before the first analysis: on a cold cache it builds the "
              "processed weights once (TransformerLens' weight processing, which copies the whole state dict at each "
              "step; see the loading section) and every analysis step then memory-maps them. The whole run's "
              "(max) is the largest peak of any of its processes, this one included; the per-step target below "
              "is about the analysis steps."]
    for r in runs:
        over = [n for n, st in r["steps"].items() if (st.get("peak_rss_gb") or 0) * 1e9 >= TARGET_RSS]
        failed = [n for n, st in r["steps"].items() if st["status"] != "ok"]
        L += ["", f"Targets (issue 12), `--jobs {r['jobs']}`: whole regeneration < {TARGET_SECONDS / 60:.0f} min on 2 cores: "
              f"{'met' if r['rc'] == 0 and not failed and r['seconds'] < TARGET_SECONDS else 'NOT met'} "
              f"({r['seconds'] / 60:.2f} min wall, {r['cpu_seconds'] / 60:.2f} min CPU, exit {r['rc']}"
              + (f", failed: {', '.join(failed)}" if failed else "") + "); peak RSS of every step < "
              f"{TARGET_RSS / 1e9:.1f} GB: " + ("met" if not over else f"NOT met by {', '.join(over)}") + "."]
    return L + [""]


def report_hotspots(res: dict) -> list[str]:
    hs = res.get("hotspots")
    if not hs:
        return []
    L = ["## Where the time goes (cProfile, current code)", "",
         "Each script run once more under cProfile (which slows Python-heavy code, so only shares are shown): this",
         "repository's functions with the largest cumulative time, as a share of the profiled run (nested functions",
         "overlap; wrappers holding 95% or more are left out).", "",
         "| script | profiled s | imports | top functions (share of the run) |", "| --- | ---: | ---: | --- |"]
    for script, h in hs.items():
        if "error" in h:
            L.append(f"| {script} | failed ({h['error']}) | | |")
            continue
        L.append(f"| {script} | {h['profiled_seconds']:.1f} | {h.get('imports_share', 0):.0%} | "
                 + "; ".join(f"`{r['function']}` {r['share']:.0%}" for r in h["top"][:5]) + " |")
    return L + [""]


def report_memory(res: dict) -> list[str]:
    mem = res.get("memory")
    if not mem:
        return []
    L = ["## Where the memory peaks (current code)", "",
         "Each script run once more under `bench/peak_stack.py` (RSS sampled every 20 ms with the main thread's stack):",
         "the peak and this repository's innermost frames at that moment.", "",
         "| script | peak RSS GB | stack at the peak (innermost last) |", "| --- | ---: | --- |"]
    for script, m in mem.items():
        if "error" in m:
            L.append(f"| {script} | failed ({m['error']}) | |")
            continue
        L.append(f"| {script} | {gb(m['peak_rss'])} | " + " > ".join(f"`{f}`" for f in m["stack_at_peak"]) + " |")
    return L + [""]


def report_load(res: dict) -> list[str]:
    lc = (res.get("cases") or {}).get("load")
    if not lc:
        return []
    L = ["## Loading the model at gpt2-small size (processed-weights cache)", ""]
    L += _reused(lc, "load", res)
    L += ["`load_model` then one forward pass (which touches every weight), each in a fresh process; best of the repeats.",
          "Uncached: the route before the cache (`L1H5_WEIGHTS_CACHE=0`: Hugging Face weights converted and folded by",
          "TransformerLens in memory). First load: the same, plus writing the cache entry. Later loads: the processed",
          "state dict memory-mapped from the entry (`torch.load(mmap=True)`, `load_state_dict(assign=True)`).",
          "",
          "| route | uncached s | uncached peak GB | first load s | first load peak GB | later loads s | later loads peak GB | "
          "peak uncached/later | same logits | load (mean) |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for label, r in lc.items():
        u, f, c = r["uncached"], r["first"], r["cached"]
        if any("error" in x for x in (u, f, c)):
            L.append(f"| {label} | failed | | | | | | | | |")
            continue
        same = "yes" if u["logit_sum"] == f["logit_sum"] == c["logit_sum"] and c["from_cache"] else "NO"
        L.append(f"| {label} | {u['seconds']:.2f} | {gb(u['peak_rss'])} | {f['seconds']:.2f} | {gb(f['peak_rss'])} | "
                 f"{c['seconds']:.2f} | {gb(c['peak_rss'])} | {_ratio(u['peak_rss'], c['peak_rss'])} | {same} | "
                 f"{u['load1_mean']}/{f['load1_mean']}/{c['load1_mean']} |")
    return L + ["", "Seconds are the `load_model` call alone (imports excluded); peak RSS is the whole process "
                "(imports and the forward pass included).", ""]


def report_tokenise(res: dict) -> list[str]:
    tc = (res.get("cases") or {}).get("tokenise")
    if not tc:
        return []
    base = tc[0]
    mb = base.get("megabytes", 0)
    names = {"lines": "original: `tokenizer.encode(line)` per line into a Counter",
             "huggingface-w1": "previous common.freq: HF `encode_batch_fast` batches, 1 worker",
             "tiktoken-w1": "common.freq now: tiktoken (vendored BPE), 1 thread",
             "tiktoken-w2": "common.freq now: tiktoken (vendored BPE), 2 threads"}
    L = ["## Token counting (token_freq.py)", ""]
    L += _reused(tc, "tokenise", res)
    L += [f"The same {mb:.1f} MB text, each method in a fresh process, best of {base.get('repeats', 1)} interleaved repeats; "
          "the counting alone is timed (tokenizer loading and tiktoken's encoding, built from the vendored files, are "
          "`setup s`). Same counts in every case is checked on the full count vector.",
          "",
          "| method | count wall s | MB/s | count cpu s | setup s | wall speed-up | cpu speed-up | same counts | load (mean of repeats) |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for t in tc:
        if "error" in t:
            L.append(f"| {names.get(t['mode'], t['mode'])} | failed | | | | | | | |")
            continue
        loads = t.get("load1_all") or [t.get("load1_mean")]
        L.append(f"| {names.get(t['mode'], t['mode'])} | {t['seconds']:.2f} | {t['megabytes'] / t['seconds']:.1f} | "
                 f"{t['count_cpu_seconds']:.2f} | {t['setup_seconds']:.2f} | {base['seconds'] / t['seconds']:.1f}x | "
                 f"{base['count_cpu_seconds'] / t['count_cpu_seconds']:.1f}x | "
                 f"{'yes' if t['checksum'] == base.get('checksum') and t['tokens'] == base.get('tokens') else 'NO'} | "
                 f"{sum(loads) / len(loads):.1f} |")
    fast = [t for t in tc if "error" not in t and t["mode"].startswith("tiktoken")]
    if fast:
        rate = max(t["megabytes"] / t["seconds"] for t in fast)
        L += ["", f"At {rate:.1f} MB/s, WikiText-103 train (about {WIKITEXT103_TRAIN_MB} MB) would take about "
              f"{WIKITEXT103_TRAIN_MB / rate / 60:.1f} min to count at this load (extrapolated; the generated text's "
              "vocabulary is not WikiText's)."]
    return L + [""]


def report_guard(res: dict) -> list[str]:
    guard = (res.get("cases") or {}).get("guard")
    if not guard:
        return []
    L = ["## No dense vocabulary x vocabulary matrix", ""]
    L += _reused(guard, "guard", res)
    L += [f"One float32 50257 x 50257 matrix is {DENSE_BYTES / 1e9:.1f} GB (float16 {DENSE_BYTES / 2e9:.1f} GB, "
          f"bool {DENSE_BYTES / 4e9:.2f} GB). Peak RSS cannot rule out a boolean one (nor a tensor allocated but never",
          "touched), so `bench/dense_guard.py` ran every script on the planted model (the same 50257-token vocabulary, a",
          "small d_model) under a `TorchDispatchMode` that sees the output of every ATen operation and stops the script",
          f"if one reaches vocab^2/4 = {guard[0]['limit']:.3g} elements. Largest tensor each script produced:",
          "",
          "| script | exit | ATen ops seen | largest output | dtype | op | fraction of vocab^2 |",
          "| --- | ---: | ---: | --- | --- | --- | ---: |"]
    for g in guard:
        if not g.get("n_ops"):
            L.append(f"| {g['script']} | {g['rc']} | 0 | (no torch operations: counts in numpy) | | | |")
            continue
        L.append(f"| {g['script']} | {g['rc']} | {g['n_ops']} | {' x '.join(map(str, g['shape']))} | "
                 f"{g['dtype'].removeprefix('torch.')} | `{g['op']}` | {g['numel'] / VOCAB**2:.4f} |")
    worst = max(guard, key=lambda g: g.get("numel") or 0)
    L += ["", f"Largest anywhere: {worst['script']}, {worst['numel'] / VOCAB**2:.4f} of vocab^2 "
          f"({'no' if (worst.get('numel') or 0) < guard[0]['limit'] else 'A'} dense vocab x vocab result).", ""]
    return L


def report_selfrank(res: dict) -> list[str]:
    cmp_ = (res.get("cases") or {}).get("selfrank")
    if not cmp_:
        return []
    L = ["## Self-rank of query tokens: dense vs streamed", ""]
    L += _reused(cmp_, "selfrank", res)
    L += ["Original: the dense score matrix `E W_QK E^T` over the vocabulary, each row compared with its",
          "diagonal (the cheapest dense variant). Ours: `common.token_scores.self_rank`, key chunks x query chunks on the",
          "rank-64 factors. Same work: all n tokens as queries against the same n tokens as keys, each in a fresh process.",
          "",
          "| n (queries = keys) | dense s | dense peak GB | streamed s | streamed peak GB | time ratio dense/streamed | same ranks (sum) |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in cmp_["selfrank"]:
        d, s = c["dense"], c["streamed"]
        if "error" in d or "error" in s:
            L.append(f"| {c['n']} | failed | | | | | |")
            continue
        L.append(f"| {c['n']} | {d['seconds']:.2f} | {d['peak_rss'] / 1e9:.2f} | {s['seconds']:.2f} | "
                 f"{s['peak_rss'] / 1e9:.2f} | {d['seconds'] / s['seconds']:.2f} | {_same(d['checksum'], s['checksum'])} |")
    ok = [c for c in cmp_["selfrank"] if "error" not in c["dense"] and "error" not in c["streamed"]]
    full = cmp_.get("selfrank_full", {})
    if ok and full and "error" not in full:
        big = ok[-1]
        scale = (VOCAB / big["n"]) ** 2
        dense_full_s = big["dense"]["seconds"] * scale
        dense_full_gb = (max(big["dense"]["peak_rss"] - big["streamed"]["peak_rss"], 0) * scale + full["peak_rss"]) / 1e9
        stream_full_s = full["seconds"] * VOCAB / full["n_queries"]
        L += ["", f"Full vocabulary: the dense approach needs {DENSE_BYTES / 1e9:.1f} GB for the float32 scores alone; scaling "
              f"its measured memory at n = {big['n']} by n^2 gives about {dense_full_gb:.0f} GB, so it was **not run**; time "
              f"extrapolated: about {dense_full_s:.0f} s. Streamed, measured on {full['n_queries']} queries against all 50257 "
              f"keys: {full['seconds']:.1f} s at {full['peak_rss'] / 1e9:.2f} GB peak RSS, i.e. about {stream_full_s:.0f} s "
              f"for all queries. Ratio at full size: time {dense_full_s / stream_full_s:.1f}x (extrapolated), memory "
              f"{dense_full_gb / (full['peak_rss'] / 1e9):.0f}x.", ""]
    return L


def write_report(res: dict, path: Path) -> None:
    L = ["# Benchmark at gpt2-small size", "",
         f"Measured {res['date']} by `{res.get('command', 'python bench/run_bench.py')}` on `bench/model` (built by "
         "`python bench/build_model.py`: the real gpt2-small attention weights, layer norms, positional embeddings and",
         "biases from `../shared/gpt2`, with seeded random token embeddings and MLP weights of matching scale; vocabulary",
         "50257, 12 layers, 12 heads, d_model 768, n_ctx 1024). Timing and memory only: semantic results on this model",
         "are meaningless (random embeddings). Regenerate: `python bench/run_bench.py --before <git ref>` (see its docstring).",
         ""]
    L += report_machine(res) + report_whole(res) + report_scripts(res) + report_hotspots(res) + report_memory(res) + report_load(res) + report_tokenise(res) + report_selfrank(res) + report_guard(res)
    L += ["Raw numbers: `bench/results.json`.", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


def write_json(res: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def reuse_sections(res: dict, path: Path, cases: set[str], scripts_measured: bool) -> None:
    """Fill sections not measured in this run from an earlier results.json (old or new layout)."""
    old = json.loads(path.read_text())
    date = old.get("date", "?")
    measured = old.get("reused") or {}  # a section the earlier run carried over keeps its own date
    res.setdefault("reused", {})
    res["reused_machine"] = (old.get("machine") or {}).get("cpu")
    old_cases = old.get("cases") or {}
    legacy = old.get("comparisons") or {}
    for key in CASE_GROUPS:
        if key in cases:
            continue
        value = old_cases.get(key)
        if value is None and key == "selfrank" and legacy.get("selfrank"):
            value = {"selfrank": legacy["selfrank"], "selfrank_full": legacy.get("selfrank_full")}
        if value is None and key == "guard":
            value = old.get("guard")
        if value:
            res.setdefault("cases", {})[key] = value
            res["reused"][key] = measured.get(key, date)
    if not scripts_measured:
        if old.get("scripts") and isinstance(old["scripts"], dict):
            res["scripts"], res["versions"] = old["scripts"], old.get("versions", {})
            res["inputs"] = res.get("inputs") or old.get("inputs")
        elif isinstance(old.get("scripts"), list):  # the layout before --before existed: one version
            rows = {r["script"]: r for r in old["scripts"]}
            ran = [r for r in rows.values() if r["status"] != "missing"]
            res["scripts"] = {"before": {"rows": rows, "total_seconds": old.get("total_seconds", 0),
                                         "cpu_seconds": round(sum(r["cpu_seconds"] for r in ran), 2),
                                         "peak_rss": max((r["peak_rss"] for r in ran), default=0),
                                         "load1_mean": round(old.get("load1_mean_overall", 0), 2)}}
            res["inputs"] = old.get("inputs")
        else:
            return
        res["reused"]["scripts"] = measured.get("scripts", date)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(BENCH / "model"), help="gpt2-small-shaped HF folder (built if missing)")
    p.add_argument("--before", metavar="REF", default=None,
                   help="also run every script with the code at this git revision, alternating with the current code")
    p.add_argument("--only", default="", help="comma-separated scripts to run (default: every one that exists)")
    p.add_argument("--no-scripts", action="store_true", help="run no script (side-by-side cases only)")
    p.add_argument("--cases", default=",".join(CASE_GROUPS), help=f"side-by-side case groups to run ({', '.join(CASE_GROUPS)}; '' for none)")
    p.add_argument("--whole-jobs", default="2,1", help="--jobs values of the whole run (wholerun case), comma list")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each load/tokenise case (best reported)")
    p.add_argument("--text-mb", type=float, default=20.0, help="size of the generated text for --text")
    p.add_argument("--hotspots", metavar="SCRIPTS", default="",
                   help="after the timed runs, profile these scripts ('all' or a comma list) with cProfile: where the time goes")
    p.add_argument("--memory", metavar="SCRIPTS", default="",
                   help="after the timed runs, find where these scripts' memory peaks ('all' or a comma list; bench/peak_stack.py)")
    p.add_argument("--reuse", metavar="JSON", default=None,
                   help="carry sections not measured in this run over from this earlier results.json")
    p.add_argument("--render", metavar="JSON", default=None, help="only rewrite --results from a results.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary outputs and logs")
    p.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a script is killed")
    # internal: one side-by-side case in this process
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--n-queries", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--text", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        return run_case(args)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), Path(args.results))
        return 0
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if cases - set(CASE_GROUPS):
        p.error(f"unknown case group(s) {sorted(cases - set(CASE_GROUPS))}; choose from {CASE_GROUPS}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    try:
        args.whole_jobs = [int(j) for j in args.whole_jobs.split(",") if j.strip()]
    except ValueError:
        p.error(f"--whole-jobs {args.whole_jobs!r}: expected a comma list of integers")
    if not args.whole_jobs or min(args.whole_jobs) < 1:
        p.error("--whole-jobs: every value must be at least 1")

    model = Path(args.model).resolve()
    if not (model / "model.safetensors").exists():
        from build_model import build_folder

        print(f"building {model} ...", flush=True)
        build_folder(model)
    work = Path(tempfile.mkdtemp(prefix="l1h5-bench-"))
    logs = work / "logs"
    logs.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), L1H5_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    env.pop("L1H5_WEIGHTS_CACHE", None)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(model),
                 "command": "python bench/run_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    res["machine"] = machine(env, logs, model)
    print(json.dumps(res["machine"], indent=1), flush=True)
    text = work / "bench_text.txt"
    res["inputs"] = {"text": make_text(text, args.text_mb)}
    only = {s.strip().removesuffix(".py") + ".py" for s in args.only.split(",") if s.strip()}
    res["cases"] = {}
    try:
        if "load" in cases:
            print("load cases ...", flush=True)
            res["cases"]["load"] = load_cases(env, logs, model, work, args.repeats)
        if "tokenise" in cases:
            print("tokenise cases ...", flush=True)
            res["cases"]["tokenise"] = tokenise_cases(env, logs, model, text, args.repeats)
        sae_holder: dict = {}

        def sae() -> str:
            if "path" not in sae_holder:
                sae_holder.update(make_sae(work / "sae"))
                res["inputs"]["sae"] = dict(sae_holder)
            return sae_holder["path"]

        if "wholerun" in cases:
            res["cases"]["wholerun"] = whole_runs(env, logs, model, work, text, sae(), args.whole_jobs, args.timeout)
        if not args.no_scripts:
            commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True).stdout.strip()
            res["versions"] = {"after": {"commit": commit or "unknown"}}
            versions = []
            if args.before:
                res["versions"]["before"] = export_tree(args.before, work / "before")
                versions.append(Version("before", work / "before", work, env, text, sae))
            versions.append(Version("after", ROOT, work, env, text, sae))
            res["scripts"] = run_scripts(versions, model, work, only, args.timeout)
            if args.hotspots:
                print("hotspots (cProfile) ...", flush=True)
                wanted = script_order() if args.hotspots == "all" else [
                    s.strip().removesuffix(".py") + ".py" for s in args.hotspots.split(",") if s.strip()]
                res["hotspots"] = hotspots(versions[-1], wanted, model, work, args.timeout)
            if args.memory:
                print("memory peaks ...", flush=True)
                wanted = script_order() if args.memory == "all" else [
                    s.strip().removesuffix(".py") + ".py" for s in args.memory.split(",") if s.strip()]
                res["memory"] = memory_peaks(versions[-1], wanted, model, work, args.timeout)
        if "selfrank" in cases:
            print("self-rank cases ...", flush=True)
            res["cases"]["selfrank"] = selfrank_cases(env, logs, model)
        if "guard" in cases:
            print("dense guard on the planted model ...", flush=True)
            res["cases"]["guard"] = guard_scripts(env, work, text, only)
        if args.reuse:
            reuse_sections(res, Path(args.reuse), cases, not args.no_scripts)
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        write_json(res, results.with_name("results.json"))
        write_report(res, results)
        print(f"wrote {results} and {results.with_name('results.json')}")
    finally:
        if args.keep:
            print(f"outputs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [(v, n) for v, s in (res.get("scripts") or {}).items() if isinstance(s, dict)
              for n, r in s.get("rows", {}).items() if r["status"] not in ("ok", "missing")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
