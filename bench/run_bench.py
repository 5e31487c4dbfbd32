"""Benchmark every analysis script at gpt2-small size: wall time and peak memory, written to bench/RESULTS.md.

Question: does regenerating every figure at real size (vocabulary 50257, 12 layers, d_model 768)
fit in 10 minutes on 2 CPU cores with peak RSS under 3 GB, and does any script hold a dense
vocabulary x vocabulary matrix?

Method:
* the model is ``bench/model`` (``bench/build_model.py``: real gpt2-small attention, LN, wpe and
  bias tensors, seeded random wte and MLP weights), loaded with ``--model bench/model``;
* every top-level script that exists runs as its own process, one at a time, in run_all.py's
  dependency order, with its default settings (the work ``make figures`` does), ``--out`` in a
  temporary folder and a fresh (cold) ``L1H5_CACHE``, so shared intermediates (effective
  embeddings, frequency table) are paid for by the first script that needs them;
* per script: wall time (perf_counter), CPU time and peak RSS of the process and its children
  (``os.wait4`` rusage; ``ru_maxrss``), and the machine load (1-minute load average, sampled);
* inputs that cannot be downloaded here are made locally and named in the report: a generated
  text (``--text``) instead of WikiText-103, a random 768-dim sae_lens SAE instead of a
  pretrained one;
* side-by-side with the original approach on the same work (each case in its own process):
  self-rank of query tokens over the vocabulary as a dense score matrix (measured where it fits
  in memory, extrapolated to 50257 x 50257 otherwise, and said so) against the streamed
  ``common.token_scores.self_rank``; line-by-line tokenisation against ``common.freq``'s batched counting.

Outputs: ``bench/RESULTS.md`` and ``bench/results.json`` (every number in RESULTS.md).
Usage: ``python bench/run_bench.py`` (``--only a,b`` for a subset, ``--no-compare`` to skip the
side-by-side cases, ``--keep`` to keep the temporary outputs and logs).
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
TARGET_SECONDS, TARGET_RSS = 600, 3e9  # GB here means 10^9 bytes throughout
WIKITEXT103_TRAIN_MB = 540  # raw train split, about 540 MB of text: what token_freq.py reads by default

SCRIPTS = [  # the brief's list; the order is replaced by run_all.py's where it exists
    "token_freq.py", "characterize_head.py", "component_ablation.py", "skew_analysis.py",
    "svd_sym_skew_heatmap.py", "svd_group_scaling_heatmap.py", "svd_rank_ablation.py",
    "cosine_attention_analysis.py", "clustering.py", "gradient_steering.py", "semantic_head.py",
    "rule_preserving_ablation.py",
]


def script_order() -> list[str]:
    try:
        import run_all  # the lead's dependency order (token_freq before its readers)

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


def extra_args(script: str, help_text: str, ctx: dict) -> list[str]:
    """Inputs a script needs that cannot be downloaded here, passed only if the script has the flag."""
    args = []
    if _has_flag(help_text, "--text"):
        args += ["--text", ctx["text"]]
    if _has_flag(help_text, "--freq-table"):
        args += ["--freq-table", str(ctx["out"] / "token_freq" / "token_freq.csv")]
    if _has_flag(help_text, "--communities") and (ctx["out"] / "clustering" / "communities.csv").exists():
        args += ["--communities", str(ctx["out"] / "clustering" / "communities.csv")]
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


def measure(cmd: list[str], env: dict, log: Path, timeout: float | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS (bytes) of it and its descendants."""
    sampler = LoadSampler()
    sampler.start()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
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
            "peak_rss": ru.ru_maxrss * 1024, **load}  # Linux reports ru_maxrss in KiB


# ----------------------------------------------------------------------------------------------
# side-by-side cases (each run as `run_bench.py --case NAME ...` in its own process)
# ----------------------------------------------------------------------------------------------


def _l1h5_inputs(model_dir: Path, n: int):
    """L1H5's QK factors and the first n rows of an LN-normalised token embedding of the bench model."""
    import torch
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


def case_tokenise(text: Path, mode: str, megabytes: float) -> dict:
    """Token counts of the first ``megabytes`` of ``text``: line by line (original) or batched (ours)."""
    import collections

    import numpy as np

    from common.freq import count_tokens, split_lines, string_batches
    from common.gpt2_tokenizer import load_tokenizer

    raw = text.read_text(encoding="utf-8")[: int(megabytes * 1e6)]
    lines = split_lines(raw)
    tok = load_tokenizer()
    t0 = time.perf_counter()
    if mode == "lines":
        counter = collections.Counter()
        for line in lines:
            counter.update(tok(line)["input_ids"])
        counts = np.zeros(VOCAB, np.int64)
        for k, v in counter.items():
            counts[k] = v
    else:
        counts = count_tokens(string_batches(lines), workers=int(mode.removeprefix("batched-w")), tokenizer=tok)
    return {"seconds": time.perf_counter() - t0, "checksum": int((counts * np.arange(VOCAB)).sum() % 1_000_003),
            "tokens": int(counts.sum())}


def case_processed(model_dir: Path, path: Path, save: bool) -> dict:
    """A possible faster loader: the already processed (folded, centred) state dict saved once, then
    memory-mapped into a HookedTransformer with ``assign=True`` (no HF model, no folding copies)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from common.gpt2_tokenizer import load_tokenizer
    from common.model import load_model

    if save:
        m = load_model(str(model_dir))
        torch.save({"cfg": m.cfg.to_dict(), "state_dict": m.state_dict()}, path)
        return {"seconds": 0.0}
    t0 = time.perf_counter()
    blob = torch.load(path, mmap=True, weights_only=False)
    m = HookedTransformer(HookedTransformerConfig.from_dict(blob["cfg"]), load_tokenizer(model_dir), move_to_device=False)
    m.load_state_dict(blob["state_dict"], strict=False, assign=True)
    m.eval()
    toks = m.to_tokens("The cat sat on the mat with a dog and a red ball.")
    logits = m(toks)  # touches every weight once, so the mapped pages count in the peak RSS
    return {"seconds": time.perf_counter() - t0, "logit_sum": float(logits.double().sum())}


def run_case(args) -> int:
    import torch

    torch.set_grad_enabled(False)
    if args.case == "dense-selfrank":
        res = case_dense_selfrank(Path(args.model), args.n)
    elif args.case == "streamed-selfrank":
        res = case_streamed_selfrank(Path(args.model), args.n, args.n_queries or args.n)
    elif args.case.startswith("tokenise-"):
        res = case_tokenise(Path(args.text), args.case.removeprefix("tokenise-"), args.megabytes)
    elif args.case == "load-model":
        from common.model import load_model

        t0 = time.perf_counter()
        load_model(args.model)
        res = {"seconds": time.perf_counter() - t0}
    elif args.case in ("save-processed", "load-processed"):
        res = case_processed(Path(args.model), Path(args.text), args.case == "save-processed")
    elif args.case == "threads":
        import transformer_lens  # noqa: F401  (so the peak RSS is the import floor of every script)

        res = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    else:
        raise SystemExit(f"error: unknown case {args.case}")
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def measure_case(name: str, extra: list[str], env: dict, logs: Path, model: Path) -> dict:
    log = logs / f"case-{name}-{'-'.join(extra).replace('/', '_')[-60:]}.log"
    m = measure([sys.executable, str(Path(__file__)), "--case", name, "--model", str(model), *extra], env, log)
    lines = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")]
    if m["rc"] != 0 or not lines:
        return {**m, "error": log.read_text()[-1500:]}
    return {**m, **json.loads(lines[-1][7:])}


def comparisons(env: dict, logs: Path, model: Path, text: Path) -> dict:
    out: dict = {"selfrank": [], "tokenise": []}
    # Same work side by side: all n queries against n keys (n x n), dense vs streamed.
    for n in (4096, 8192, 16384):
        d = measure_case("dense-selfrank", ["--n", str(n)], env, logs, model)
        s = measure_case("streamed-selfrank", ["--n", str(n)], env, logs, model)
        out["selfrank"].append({"n": n, "dense": d, "streamed": s})
        print(f"  self-rank n={n}: dense {d.get('seconds', float('nan')):.2f}s {d['peak_rss'] / 1e9:.2f} GB, "
              f"streamed {s.get('seconds', float('nan')):.2f}s {s['peak_rss'] / 1e9:.2f} GB", flush=True)
    # Full vocabulary: streamed on a subset of queries (extrapolated linearly to all 50257).
    nq = 8192
    full = measure_case("streamed-selfrank", ["--n", str(VOCAB), "--n-queries", str(nq)], env, logs, model)
    out["selfrank_full"] = {"n_queries": nq, **full}
    print(f"  self-rank full vocab, {nq} queries streamed: {full.get('seconds', float('nan')):.2f}s", flush=True)
    for mode in ("lines", "batched-w1", "batched-w2"):
        r = measure_case(f"tokenise-{mode}", ["--text", str(text), "--megabytes", "10"], env, logs, model)
        out["tokenise"].append({"mode": mode, "megabytes": 10, **r})
        print(f"  tokenise 10 MB {mode}: {r.get('seconds', float('nan')):.2f}s", flush=True)
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
        extra = extra_args(script, help_text, ctx)
        report = logs / f"guard-{script}.json"
        cmd = [sys.executable, str(BENCH / "dense_guard.py"), str(report), script, "--model", "planted",
               "--out", str(out / script.removesuffix(".py")), *extra]
        m = measure(cmd, env, logs / f"guard-{script}.log")
        g = json.loads(report.read_text()) if report.exists() else {}
        rows.append({"script": script, "rc": m["rc"], "seconds": m["seconds"], **{k: g.get(k) for k in
                     ("numel", "shape", "dtype", "op", "n_ops", "limit")}})
        print(f"  guard {script}: rc {m['rc']}, largest {g.get('shape')} {g.get('dtype')} ({g.get('op')})", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# machine and report
# ----------------------------------------------------------------------------------------------


def machine(env: dict, logs: Path, model: Path) -> dict:
    import psutil
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    threads = measure_case("threads", [], env, logs, model)
    load = measure_case("load-model", [], env, logs, model)
    processed = logs / "processed.pt"
    measure_case("save-processed", ["--text", str(processed)], env, logs, model)
    mapped = measure_case("load-processed", ["--text", str(processed)], env, logs, model)
    processed.unlink(missing_ok=True)
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "torch_threads": threads.get("torch_threads"), "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "load1_at_start": round(os.getloadavg()[0], 2),
        "import_only_peak_rss": threads["peak_rss"],
        "load_model": {k: load.get(k) for k in ("seconds", "cpu_seconds", "peak_rss", "rc")},
        "load_processed_mmap": {k: mapped.get(k) for k in ("seconds", "cpu_seconds", "peak_rss", "rc")},
    }


def _same(a: int, b: int) -> str:
    """Rank sums of two methods: equal, or their relative difference (float rounding at near-ties)."""
    return "yes" if a == b else f"rank sums differ by {abs(a - b) / max(abs(a), 1):.1e} (relative)"


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def write_report(res: dict, path: Path) -> None:
    m = res["machine"]
    runs = res["scripts"]
    ran = [r for r in runs if r["status"] != "missing"]
    total = res["total_seconds"]
    peak = max((r["peak_rss"] for r in ran), default=0)
    L = [
        "# Benchmark at gpt2-small size",
        "",
        f"Measured {res['date']} by `python bench/run_bench.py` on `bench/model` (built by `python bench/build_model.py`:",
        "the real gpt2-small attention weights, layer norms, positional embeddings and biases from",
        "`../shared/gpt2`, with seeded random token embeddings and MLP weights of matching scale; vocabulary",
        "50257, 12 layers, 12 heads, d_model 768, n_ctx 1024). Timing and memory only: semantic results on",
        "this model are meaningless (random embeddings).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}; {m['usable_cpus']} usable cores ({m['logical_cpus']} logical); RAM {m['ram_gb']} GB",
        f"- torch {m['torch']} with {m['torch_threads']} intra-op threads; Python {m['python']}; {m['platform']}",
        f"- **Shared machine**: up to 7 agents use these 2 cores. 1-minute load average at start {m['load1_at_start']},",
        f"  mean during the script runs {res['load1_mean_overall']:.2f} (per script below). A load above 2 means the",
        "  scripts got less than the 2 cores; `cpu s` (user + system CPU time of the script and its children)",
        "  is the measure of work that contention does not inflate. On 2 idle cores a script's wall time would",
        "  lie between `cpu s / 2` (both torch threads busy throughout) and `cpu s` (single-threaded parts).",
        "",
        "## Every script (default settings, cold cache, one at a time)",
        "",
        f"Floor of every script: importing torch and transformer_lens alone peaks at {gb(m['import_only_peak_rss'])} GB; "
        f"`load_model('bench/model')` alone takes {m['load_model']['seconds']:.1f} s",
        f"and peaks at {gb(m['load_model']['peak_rss'])} GB RSS (TransformerLens' `load_and_process_state_dict` holds",
        "several copies of the weights while folding; about 1.2 GB stays resident afterwards).",
        *([f"A possible remedy, measured: the processed state dict saved once (`torch.save`) and memory-mapped back",
           f"(`torch.load(mmap=True)`, `load_state_dict(assign=True)`, then one forward pass) took "
           f"{m['load_processed_mmap']['seconds']:.1f} s and peaked at {gb(m['load_processed_mmap']['peak_rss'])} GB RSS",
           "(`case_processed` in run_bench.py; not used by the scripts)."]
          if m.get("load_processed_mmap", {}).get("rc") == 0 else []),
        "",
        "| script | status | wall s | cpu s | peak RSS GB | load (mean/max) | extra inputs |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in runs:
        if r["status"] == "missing":
            L.append(f"| {r['script']} | not yet written (skipped) | | | | | |")
            continue
        L.append(f"| {r['script']} | {r['status']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {gb(r['peak_rss'])} | "
                 f"{r['load1_mean']:.1f}/{r['load1_max']:.1f} | {' '.join(r['extra']) or '-'} |")
    cpu_total = sum(r["cpu_seconds"] for r in ran)
    L += [
        f"| **whole run** ({len(ran)} scripts) | | **{total:.1f}** | {cpu_total:.1f} | **{gb(peak)}** (max) | "
        f"{res['load1_mean_overall']:.1f} | |",
        "",
        f"Targets: whole regeneration < {TARGET_SECONDS // 60} min on 2 cores: "
        f"{'met' if total < TARGET_SECONDS else 'NOT met'} as measured: {total / 60:.1f} min wall at the load above; "
        f"{cpu_total / 60:.1f} min of CPU time in all, i.e. between {cpu_total / 120:.1f} and {cpu_total / 60:.1f} min "
        f"on 2 idle cores. Peak RSS < 3 GB: {'met' if peak < TARGET_RSS else 'NOT met'} "
        f"(highest {peak / 1e9:.3f} GB = {peak / 2**30:.2f} GiB, {max(ran, key=lambda r: r['peak_rss'])['script'] if ran else '-'}).",
    ]
    tok = [t for t in (res.get("comparisons") or {}).get("tokenise", []) if "error" not in t]
    if tok and any(r["script"] == "token_freq.py" and r["status"] == "ok" for r in runs):
        rate = max(t["megabytes"] / t["seconds"] for t in tok)
        extra_s = (WIKITEXT103_TRAIN_MB - res["inputs"]["text"]["bytes"] / 1e6) / rate
        L.append(f"With WikiText-103 train (about {WIKITEXT103_TRAIN_MB} MB) instead of the {res['inputs']['text']['bytes'] / 1e6:.0f} MB "
                 f"generated text, token_freq.py would count about {extra_s / 60:.1f} min longer (at the best measured "
                 f"{rate:.2f} MB/s below), so the whole regeneration would take about {(total + extra_s) / 60:.1f} min "
                 "(estimate; download excluded).")
    missing = [r["script"] for r in runs if r["status"] == "missing"]
    failed = [r["script"] for r in runs if r["status"] not in ("ok", "missing")]
    if missing:
        L.append(f"Not measured because the script does not exist yet: {', '.join(missing)}.")
    if failed:
        L.append(f"Failed (see the notes below): {', '.join(failed)}.")
    L += [
        "",
        "### Inputs made locally",
        "",
        f"- `--text`: {res['inputs']['text']['bytes'] / 1e6:.1f} MB of generated text "
        f"({res['inputs']['text']['lines']} lines; `make_text` in run_bench.py: demo-corpus sentences mixed with",
        "  sentences of Zipf-distributed GPT-2 word tokens) instead of WikiText-103 (no network here). token_freq.py's default",
        f"  reads WikiText-103 train (about {WIKITEXT103_TRAIN_MB} MB); see the extrapolation below.",
    ]
    if res["inputs"].get("sae"):
        s = res["inputs"]["sae"]
        L.append(f"- `--sae`: a random sae_lens StandardSAE (d_in {s['d_in']}, d_sae {s['d_sae']}, the width of the public "
                 "gpt2-small residual SAEs), saved with `save_model` into a temporary folder.")
    L += [
        "- Every script ran with `--model bench/model --out <temporary folder>` and a fresh `L1H5_CACHE`.",
        "",
        "## No dense vocabulary x vocabulary matrix",
        "",
        f"One float32 50257 x 50257 matrix is {DENSE_BYTES / 1e9:.1f} GB (float16 {DENSE_BYTES / 2e9:.1f} GB, "
        f"bool {DENSE_BYTES / 4e9:.2f} GB). The highest peak RSS of any script was {gb(peak)} GB, below the "
        "float16 and float32 sizes; the model-loading peak alone exceeds the boolean size, so RSS cannot rule out",
        "a boolean one (nor a tensor allocated but never touched). Hence the direct check below.",
    ]
    guard = res.get("guard")
    if guard:
        L += [
            "",
            "`bench/dense_guard.py` ran every script on the planted model (the same 50257-token vocabulary, a small",
            "d_model) under a `TorchDispatchMode` that sees the output of every ATen operation and stops the script",
            f"if one reaches vocab^2/4 = {guard[0]['limit']:.3g} elements. Largest tensor each script produced:",
            "",
            "| script | exit | ATen ops seen | largest output | dtype | op | fraction of vocab^2 |",
            "| --- | ---: | ---: | --- | --- | --- | ---: |",
        ]
        for g in guard:
            if not g.get("n_ops"):
                L.append(f"| {g['script']} | {g['rc']} | 0 | (no torch operations: counts in numpy) | | | |")
                continue
            L.append(f"| {g['script']} | {g['rc']} | {g['n_ops']} | {' x '.join(map(str, g['shape']))} | "
                     f"{g['dtype'].removeprefix('torch.')} | `{g['op']}` | {g['numel'] / VOCAB**2:.4f} |")
        worst = max(guard, key=lambda g: g.get("numel") or 0)
        L += ["", "numpy arrays are not seen by the guard; they are covered by the peak RSS above (below 5 GB, so",
              "no float16/32 vocab x vocab array either).", "",
              f"Largest anywhere: {worst['script']}, {worst['numel'] / VOCAB**2:.4f} of vocab^2 "
              f"({'no' if (worst.get('numel') or 0) < guard[0]['limit'] else 'A'} dense vocab x vocab result)."]
    cmp_ = res.get("comparisons")
    if cmp_:
        L += [
            "",
            "## Side by side with the original approach",
            "",
            *([f"Measured separately ({cmp_['measured']}, 1-minute load {cmp_['load1_at_start']} at start) with "
               "`run_bench.py --compare-only`; per-case loads in results.json.", ""] if cmp_.get("measured") else []),
            "### Self-rank of query tokens (L1H5's QK circuit over token embeddings)",
            "",
            "Original: the dense score matrix `E W_QK E^T` over the vocabulary, each row compared with its",
            "diagonal (the cheapest dense variant; a full sort would cost more). Ours: `common.token_scores.self_rank`,",
            "key chunks of 8192 x query chunks of 1024 on the rank-64 factors. Same work: all n tokens as",
            "queries against the same n tokens as keys, each in a fresh process (peak RSS includes about",
            "0.3-0.5 GB of Python, torch and the loaded embedding slice).",
            "",
            "| n (queries = keys) | dense s | dense peak GB | streamed s | streamed peak GB | time ratio dense/streamed | same ranks (sum) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in cmp_["selfrank"]:
            d, s = c["dense"], c["streamed"]
            if "error" in d or "error" in s:
                L.append(f"| {c['n']} | failed | | | | | |")
                continue
            L.append(f"| {c['n']} | {d['seconds']:.2f} | {d['peak_rss'] / 1e9:.2f} | {s['seconds']:.2f} | "
                     f"{s['peak_rss'] / 1e9:.2f} | {d['seconds'] / s['seconds']:.2f} | "
                     f"{_same(d['checksum'], s['checksum'])} |")
        ok = [c for c in cmp_["selfrank"] if "error" not in c["dense"]]
        full = cmp_["selfrank_full"]
        if ok and "error" not in full:
            big = ok[-1]
            scale = (VOCAB / big["n"]) ** 2
            dense_full_s = big["dense"]["seconds"] * scale
            # Scale the measured memory above the import floor by n^2 (scores, mask, and the int64 row sums).
            floor = full["peak_rss"] if "error" not in full else 0.5e9
            dense_full_gb = (max(big["dense"]["peak_rss"] - big["streamed"]["peak_rss"], 0) * scale + floor) / 1e9
            stream_full_s = full["seconds"] * VOCAB / full["n_queries"]
            L += [
                "",
                f"Full vocabulary (50257 x 50257): the dense approach needs {DENSE_BYTES / 1e9:.1f} GB for the float32",
                f"scores alone; scaling its measured memory at n = {big['n']} (above the streamed run's) by n^2 gives",
                f"about {dense_full_gb:.0f} GB (scores, boolean mask, and the row sums, which torch computes in int64),",
                "which fits neither the 3 GB target nor safely this shared machine, so it was **not run**; time extrapolated",
                f"from n = {big['n']} by n^2: about {dense_full_s:.0f} s. Streamed, measured on {full['n_queries']} queries",
                f"against all 50257 keys: {full['seconds']:.1f} s at {full['peak_rss'] / 1e9:.2f} GB peak RSS, i.e. about",
                f"{stream_full_s:.0f} s for all 50257 queries (linear in queries). Ratio at full size: time "
                f"{dense_full_s / stream_full_s:.1f}x (extrapolated), memory {dense_full_gb / (full['peak_rss'] / 1e9):.0f}x.",
            ]
        L += [
            "",
            "### Tokenisation for the frequency table",
            "",
            "The first 10 MB of the generated text, counted three ways (same counts in every case):",
            "original line by line (`tokenizer(line)` per line into a `collections.Counter`), and",
            "`common.freq.count_tokens` (batched `encode_batch_fast`, numpy counts) with 1 and 2 worker processes.",
            "",
            "| method | wall s (counting) | MB/s | process cpu s | peak RSS GB | ratio vs line by line | same counts |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        base = cmp_["tokenise"][0]
        for t in cmp_["tokenise"]:
            if "error" in t:
                L.append(f"| {t['mode']} | failed | | | | | |")
                continue
            L.append(f"| {t['mode']} | {t['seconds']:.2f} | {t['megabytes'] / t['seconds']:.2f} | {t['cpu_seconds']:.1f} | {t['peak_rss'] / 1e9:.2f} | "
                     f"{base['seconds'] / t['seconds']:.2f} | {'yes' if t['checksum'] == base.get('checksum') else 'NO'} |")
        best = min((t for t in cmp_["tokenise"] if "error" not in t), key=lambda t: t["seconds"], default=None)
        if best:
            rate = best["megabytes"] / best["seconds"]
            L += ["", f"At {rate:.2f} MB/s ({best['mode']}), WikiText-103 train (about {WIKITEXT103_TRAIN_MB} MB) would take about "
                  f"{WIKITEXT103_TRAIN_MB / rate / 60:.1f} min to count on this machine at this load (extrapolated; the",
                  "generated text's vocabulary is not WikiText's, so treat it as an estimate)."]
    notes = [r for r in runs if r.get("note")]
    if notes:
        L += ["", "## Notes", ""] + [f"- {r['script']}: {r['note']}" for r in notes]
    L += ["", "Raw numbers: `bench/results.json`.", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(BENCH / "model"), help="gpt2-small-shaped HF folder (built if missing)")
    p.add_argument("--only", default="", help="comma-separated scripts to run (default: every one that exists)")
    p.add_argument("--text-mb", type=float, default=20.0, help="size of the generated text for --text")
    p.add_argument("--no-compare", action="store_true", help="skip the side-by-side cases")
    p.add_argument("--compare-only", metavar="JSON", default=None,
                   help="run only the side-by-side cases and save them to JSON (for --compare-from)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only rewrite --results from a results.json of an earlier run")
    p.add_argument("--compare-from", metavar="JSON", default=None,
                   help="reuse side-by-side cases saved by --compare-only instead of running them")
    p.add_argument("--keep", action="store_true", help="keep the temporary outputs and logs")
    p.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a script is killed")
    # internal: one side-by-side case in this process
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--n-queries", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--text", default=None, help=argparse.SUPPRESS)
    p.add_argument("--megabytes", type=float, default=20, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        return run_case(args)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), Path(args.results))
        return 0

    model = Path(args.model).resolve()
    if not (model / "model.safetensors").exists():
        from build_model import build_folder

        print(f"building {model} ...", flush=True)
        build_folder(model)
    work = Path(tempfile.mkdtemp(prefix="l1h5-bench-"))
    logs, out = work / "logs", work / "out"
    logs.mkdir()
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), L1H5_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(model)}
    res["machine"] = machine(env, logs, model)
    print(json.dumps(res["machine"], indent=1), flush=True)
    text = work / "bench_text.txt"
    res["inputs"] = {"text": make_text(text, args.text_mb)}
    only = {s.strip().removesuffix(".py") + ".py" for s in args.only.split(",") if s.strip()}
    if args.compare_only:
        print("side-by-side cases ...", flush=True)
        saved = {"date": res["date"], "machine": res["machine"], "comparisons": comparisons(env, logs, model, text)}
        print("dense guard on the planted model ...", flush=True)
        saved["guard"] = guard_scripts(env, work, text, only)
        Path(args.compare_only).write_text(json.dumps(saved, indent=1) + "\n")
        print(f"wrote {args.compare_only}")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    sae_holder: dict = {}

    def sae() -> str:
        if "path" not in sae_holder:
            sae_holder.update(make_sae(work / "sae"))
            res["inputs"]["sae"] = dict(sae_holder)
        return sae_holder["path"]

    ctx = {"text": str(text), "out": out, "sae": sae}
    runs = []
    t_all = time.perf_counter()
    for script in script_order():
        if only and script not in only:
            continue
        if not (ROOT / script).exists():
            runs.append({"script": script, "status": "missing"})
            print(f"{script}: missing, skipped", flush=True)
            continue
        help_text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                                   capture_output=True, text=True).stdout
        extra = extra_args(script, help_text, ctx)
        cmd = [sys.executable, script, "--model", str(model), "--out", str(out / script.removesuffix(".py")), *extra]
        print(f"{script} {' '.join(extra)} ...", flush=True)
        m = measure(cmd, env, logs / f"{script}.log", timeout=args.timeout)
        r = {"script": script, "extra": [a if not a.startswith(str(work)) else "<tmp>" + a[len(str(work)):] for a in extra],
             "status": "ok" if m["rc"] == 0 else f"failed (exit {m['rc']})", **m}
        if m["rc"] != 0:
            tail = (logs / f"{script}.log").read_text()[-2000:]
            r["log_tail"] = tail
            last = [l for l in tail.splitlines() if l.strip()][-1:] or [""]
            r["note"] = f"exit {m['rc']}: `{last[0][:200]}`"
        runs.append(r)
        print(f"  {r['status']}: {m['seconds']:.1f} s wall, {m['cpu_seconds']:.1f} s cpu, "
              f"{m['peak_rss'] / 1e9:.2f} GB peak RSS, load {m['load1_mean']}", flush=True)
    res["total_seconds"] = round(time.perf_counter() - t_all, 2)
    res["scripts"] = runs
    ran = [r for r in runs if r["status"] != "missing"]
    res["load1_mean_overall"] = (sum(r["load1_mean"] * r["seconds"] for r in ran) / max(sum(r["seconds"] for r in ran), 1e-9)
                                 if ran else os.getloadavg()[0])
    if args.compare_from:
        saved = json.loads(Path(args.compare_from).read_text())
        res["comparisons"] = {**saved["comparisons"], "measured": saved["date"],
                              "load1_at_start": saved["machine"]["load1_at_start"]}
        res["guard"] = saved.get("guard")
    elif not args.no_compare:
        print("side-by-side cases ...", flush=True)
        res["comparisons"] = comparisons(env, logs, model, text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(res, results)
    json_tmp = results.with_name("results.json.tmp")
    json_tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    os.replace(json_tmp, results.with_name("results.json"))
    print(f"wrote {results} ({res['total_seconds']:.1f} s for {len(ran)} scripts)")
    if args.keep:
        print(f"outputs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["status"] not in ("ok", "missing") for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
