"""L1H5 in SAE feature space: which features attend to which, and which does it suppress most?

Question. Seen through a sparse autoencoder of the residual stream that L1H5 reads, does the head
map features to same-category features while pushing each feature away from itself? And is the
head just "attend to similar tokens" (naive similarity attention), or something else?

Method.
* SAE: a gpt2-small residual-stream SAE loaded with sae_lens. Default release
  ``gpt2-small-res-jb`` (Joseph Bloom's residual SAEs, 24576 features), id
  ``blocks.1.hook_resid_pre``: the residual stream entering layer 1, exactly what L1H5 reads.
  ``--sae-release/--sae-id`` pick another; ``--sae-path`` loads a folder written by
  ``sae.save_model`` (``SAE.load_from_disk``, offline). Loading from the hub needs network (or a
  populated Hugging Face cache); offline it fails with a message saying so. With ``--model
  planted`` and no SAE option, a demo SAE of known planted directions is built into the cache
  (:func:`build_planted_sae`: one feature per category word, one per category, random ones).
* QK map in feature space: each decoder direction d_f goes through layer 1's LayerNorm on its own
  (LNPre: centre, scale to unit RMS, i.e. "the residual is this feature alone") and then through
  the head: S[f, g] = LN(d_f)^T W_QK LN(d_g) / sqrt(d_head) (``common.head_qk``, bilinear part; b_Q/b_K
  left out so that S is the feature-to-feature map itself). Rows are query features, columns key
  features. Rows are streamed in chunks (never d_sae x d_sae at once): for each feature, its top-k
  key features (score and softmax probability over all features), the row's mean and spread, its
  diagonal S[f, f], the diagonal's z-score within the row and its self-rank (how many features
  out-score the feature itself). "Self-suppression hits hardest" = most negative diagonal, among
  the features that fired on the prompts (every feature is in feature_qk.csv).
* Feature labels: the tokens on which each feature fires most, over the prompts below.
* Naive similarity attention: on the same prompts, softmax over earlier positions of
  cos(LN(x_q), LN(x_k)) / T, x = the residual entering layer 1, with BOS given a constant
  similarity c (BOS is an attention sink that resembles no word; without c a similarity rule
  cannot express "BOS otherwise"), compared with L1H5's real pattern: KL(L1H5 || naive),
  Jensen-Shannon, top-1 agreement, pooled correlation, and the attention mass on the token itself
  and its copies. T and c are fitted (grid, minimum mean KL) on the first half of the prompts and
  evaluated on the second half. A second variant masks self and copies before
  the softmax: if it fits much better, "similarity minus self" is the better description.
  Prompts: half category prompts (BOS + category words, some repeated), half random tokens with
  inserted category words (``common.prompts``), seeded.

Outputs (``figures/semantic_head/`` by default):
  feature_qk.csv            per feature: label, firing rate, diagonal, row mean/std, diag z-score,
                            self-rank, self probability, top-k key features
  feature_top_keys.csv      long form: query feature, rank, key feature, score, probability
  self_suppression.csv      the firing features with the most negative diagonal
  group_feature_qk.csv/.png QK map among the features that best represent the 30 group tokens
  self_suppression.png      diagonal z-scores of all features, and the most suppressed ones
  naive_vs_head.csv         per variant and prompt kind: metrics on held-out prompts; naive_vs_head.png
  summary.json, meta.json

Reference: the original repository explored SAE features of this head with sae_lens and compared
the head with a cosine-similarity attention; it reported no numbers to reproduce here.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.errors import error_summary
from common.cli import base_parser, script_name, start
from common.outputs import prepare_out_dir, write_csv, write_json, write_meta
from common.plotting import plt, save_figure, token_heatmap

DEFAULT_RELEASE = "gpt2-small-res-jb"
DEFAULT_SAE_ID = "blocks.1.hook_resid_pre"
TEMPERATURES = np.geomspace(0.001, 10.0, 41)
BOS_SIMS = np.linspace(-1.0, 4.0, 21)


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--sae-release", default=None,
                   help=f"sae_lens release on the Hugging Face hub (default {DEFAULT_RELEASE}; with --model planted "
                        "and no SAE option, the planted demo SAE is used instead)")
    p.add_argument("--sae-id", default=None, help=f"SAE id within the release (default {DEFAULT_SAE_ID})")
    p.add_argument("--sae-path", default=None, help="local SAE folder (cfg.json + sae_weights.safetensors); overrides the release")
    p.add_argument("--hook", default=None, help="residual hook the SAE reads (default: from the SAE's metadata, "
                                                 "else blocks.<layer>.hook_resid_pre)")
    p.add_argument("--top-k", type=int, default=10, help="key features listed per query feature")
    p.add_argument("--chunk", type=int, default=1024, help="query features scored at a time")
    p.add_argument("--n-prompts", type=int, default=128, help="prompts for labels and the naive comparison")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per prompt after BOS")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-suppressed", type=int, default=50, help="rows of self_suppression.csv")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.chunk < 1 or args.batch_size < 1 or args.n_suppressed < 1:
        p.error("--top-k, --chunk, --batch-size and --n-suppressed must be positive")
    if args.n_prompts < 4:
        p.error("--n-prompts must be at least 4 (half fit the temperature, half evaluate)")
    if args.seq_len < 2:
        p.error("--seq-len must be at least 2")
    return args


# ------------------------------------------------------------------------------------------
# SAE loading
# ------------------------------------------------------------------------------------------


def load_sae(release: str, sae_id: str, path: str | None, device: str = "cpu"):
    """The SAE (sae_lens), from a local folder or the hub; SystemExit with advice when unavailable."""
    from sae_lens import SAE

    if path:
        try:
            return SAE.load_from_disk(path, device=device)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: --sae-path {path}: {exc.strerror or exc}: expected a folder written by "
                             "sae.save_model (cfg.json + sae_weights.safetensors)") from None
        except Exception as exc:  # sae_lens raises many types for a malformed folder
            raise SystemExit(f"error: --sae-path {path}: cannot load SAE ({type(exc).__name__}: {exc})") from None
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:  # hub/cache errors come in many types; all mean "no weights here"
        raise SystemExit(
            f"error: could not load SAE release {release!r} id {sae_id!r} with sae_lens ({error_summary(exc)}).\n"
            "Loading from the Hugging Face hub needs network access or a populated cache (HF_HUB_OFFLINE=1 "
            "then uses only the cache). Offline, pass --sae-path to a folder saved with sae.save_model(...)."
        ) from None


def sae_hook(sae, layer: int, override: str | None) -> str:
    if override:
        return override
    meta = getattr(sae.cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    return name or f"blocks.{layer}.hook_resid_pre"


def build_planted_sae(model, categories: dict[str, list[int]], n_random: int = 48, seed: int = 0):
    """A StandardSAE (sae_lens) whose decoder rows are known directions of the planted model.

    Rows, in order: one "word" feature per category word (its effective embedding), one
    "category" feature per category (the mean of its words' embeddings), ``n_random`` random
    directions; all centred and unit norm. The encoder is the decoder transposed with bias -1, so a
    word feature fires on its own word (about +1.2) and, weaker, on its category's other words
    (about +0.3), but not on unrelated tokens, which share only the common non-BOS direction. Returns
    (sae, kinds, category of each feature or None).
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from common.effective_embeddings import effective_embeddings

    E = effective_embeddings(model, 1)
    words = [t for ids in categories.values() for t in ids]
    rows = [E[t] for t in words] + [E[torch.as_tensor(ids)].mean(0) for ids in categories.values()]
    g = torch.Generator().manual_seed(seed)
    rnd = torch.randn(n_random, E.shape[1], generator=g)
    D = torch.cat([torch.stack(rows), rnd - rnd.mean(1, keepdim=True)])
    D = D / D.norm(dim=1, keepdim=True)
    cfg = StandardSAEConfig(d_in=E.shape[1], d_sae=D.shape[0],
                            metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre"))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T)
        sae.b_dec.zero_()
        sae.b_enc.fill_(-1.0)
    kinds = ["word"] * len(words) + ["category"] * len(categories) + ["random"] * n_random
    cat_of = [c for c, ids in categories.items() for _ in ids] + list(categories) + [None] * n_random
    return sae, kinds, cat_of


def planted_demo_sae(model) -> Path:
    """The planted demo SAE saved (once, atomically) under the cache; its folder."""
    import shutil
    import tempfile

    from common.outputs import cache_dir
    from common.planted import ground_truth
    from common.outputs import model_fingerprint

    folder = cache_dir() / "sae" / f"planted-demo-{model_fingerprint(model)}"
    if (folder / "cfg.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        sae, _, _ = build_planted_sae(model, ground_truth()["categories"])
        sae.save_model(str(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another process built the same folder first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------------
# The QK map in feature space
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def feature_inputs(model, layer: int, W_dec: torch.Tensor) -> torch.Tensor:
    """Each decoder direction through layer ``layer``'s LayerNorm on its own: [d_sae, d_model]."""
    ln = model.blocks[layer].ln1
    out = torch.empty_like(W_dec, dtype=torch.float32)
    for s in range(0, W_dec.shape[0], 8192):
        out[s : s + 8192] = ln(W_dec[s : s + 8192].float().to(model.cfg.device)[None])[0].cpu()
    return out


@torch.no_grad()
def feature_qk_map(bilinear, X: torch.Tensor, k: int, chunk: int = 1024, progress: bool = True) -> dict:
    """Row statistics and top-k keys of S = X W X^T, streamed over query chunks.

    ``bilinear`` is a ``common.factored.Factored`` (scaled, bias-free). Returns tensors over features:
    diag, row_mean, row_std, diag_z, self_rank (keys scoring strictly above the diagonal),
    self_prob (softmax over all features), top_idx/top_score/top_prob [n, k] (self excluded).
    """
    n = X.shape[0]
    k = min(k, n - 1)
    _, keys = bilinear.project(X[:1], X)
    res = {name: torch.empty(n) for name in ("diag", "row_mean", "row_std", "self_rank", "self_prob")}
    res |= {"top_idx": torch.empty(n, k, dtype=torch.long), "top_score": torch.empty(n, k), "top_prob": torch.empty(n, k)}
    it = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="feature QK map", unit="chunk", file=sys.stderr)
    for s in it:
        q, _ = bilinear.project(X[s : s + chunk])
        S = (q @ keys.T).float()
        rows = torch.arange(len(q))
        d = S[rows, s + rows].clone()
        lse = torch.logsumexp(S, -1)
        sl = slice(s, s + len(q))
        res["diag"][sl] = d
        res["row_mean"][sl] = S.mean(-1)
        res["row_std"][sl] = S.std(-1)
        res["self_rank"][sl] = (S > d[:, None]).sum(-1).float()
        res["self_prob"][sl] = torch.exp(d - lse)
        S[rows, s + rows] = -math.inf
        top, ti = torch.topk(S, k, -1)
        res["top_idx"][sl], res["top_score"][sl], res["top_prob"][sl] = ti, top, torch.exp(top - lse[:, None])
    res["diag_z"] = (res["diag"] - res["row_mean"]) / res["row_std"].clamp_min(1e-12)
    return res


# ------------------------------------------------------------------------------------------
# Activations on prompts: labels, group-token features, and the naive comparison
# ------------------------------------------------------------------------------------------


def make_prompts(tokenizer, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """Interleaved category prompts (some repeats) and random-token prompts with category words."""
    from common.prompts import category_prompts, random_token_prompts

    a = category_prompts(tokenizer, n - n // 2, seq_len, seed=seed, repeat_prob=0.2).tokens
    b = random_token_prompts(tokenizer, n // 2, seq_len, n_inserted=max(2, seq_len // 3), seed=seed + 1).tokens
    out = torch.empty(n, seq_len + 1, dtype=torch.long)
    out[0::2], out[1::2] = a, b  # interleaved, so both halves (fit / evaluate) hold both kinds
    return out


@torch.no_grad()
def run_prompts(model, sae, tokens, layer, head, hook_name, group_ids, batch_size, n_label=3, progress=True):
    """One pass over the prompts: L1H5 patterns, LN'd residuals, feature firing statistics."""
    d_sae = sae.cfg.d_sae
    best_val = torch.full((d_sae, n_label), -math.inf)
    best_tok = torch.full((d_sae, n_label), -1, dtype=torch.long)
    fire_count = torch.zeros(d_sae)
    group_sum = torch.zeros(len(group_ids), d_sae)
    group_n = torch.zeros(len(group_ids))
    gid = torch.as_tensor(group_ids)
    patterns, resid_ln = [], []
    it = range(0, len(tokens), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="prompts", unit="batch", file=sys.stderr)
    store = {}

    def save(t, hook):
        store[hook.name] = t.detach()

    pat_name = f"blocks.{layer}.attn.hook_pattern"
    stop = max(layer, int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else layer) + 1
    for s in it:
        tb = tokens[s : s + batch_size].to(model.cfg.device)
        model.run_with_hooks(tb, stop_at_layer=stop, fwd_hooks=[(pat_name, save), (hook_name, save)])
        x = store[hook_name].float()
        patterns.append(store[pat_name][:, head].cpu())
        resid_ln.append(model.blocks[layer].ln1(x).cpu())
        acts = sae.encode(x.reshape(-1, x.shape[-1]).to(sae.W_dec.device)).float().cpu()
        flat_tok = tb.reshape(-1).cpu()
        keep = torch.ones_like(flat_tok, dtype=torch.bool)
        keep[:: tb.shape[1]] = False  # BOS says nothing about a feature's meaning
        acts, flat_tok = acts[keep], flat_tok[keep]
        fire_count += (acts > 0).sum(0)
        # per-token maximum activation, then merged into the running top tokens of each feature
        uniq, inv = torch.unique(flat_tok, return_inverse=True)  # sorted
        per_tok = torch.full((len(uniq), d_sae), -math.inf).scatter_reduce(
            0, inv[:, None].expand_as(acts), acts, reduce="amax").T.contiguous()  # [d_sae, U]
        best_val, best_tok = _merge_top(best_val, best_tok, per_tok, uniq, n_label)
        for j in range(len(group_ids)):
            m = flat_tok == gid[j]
            if m.any():
                group_sum[j] += acts[m].sum(0)
                group_n[j] += m.sum()
    n_pos = int(sum(p.shape[0] for p in patterns) * (tokens.shape[1] - 1))
    return {
        "pattern": torch.cat(patterns), "resid_ln": torch.cat(resid_ln),
        "fire_rate": fire_count / max(n_pos, 1), "best_val": best_val, "best_tok": best_tok,
        "group_mean": group_sum / group_n.clamp_min(1)[:, None], "group_n": group_n,
    }


def _merge_top(best_val, best_tok, per_tok, uniq, n_label):
    """Merge running top tokens [d_sae, n] with this batch's per-token maxima [d_sae, U].

    ``uniq`` is sorted and holds each token once, so a token can only be duplicated between the
    running table and the batch: its running value is folded into the batch column (max), and
    the running entry dropped.
    """
    pos = torch.searchsorted(uniq, best_tok.clamp_min(0)).clamp_max(len(uniq) - 1)
    present = (uniq[pos] == best_tok) & (best_tok >= 0)
    per_tok = per_tok.scatter_reduce(1, pos, best_val.masked_fill(~present, -math.inf), reduce="amax")
    cand_val = torch.cat([best_val.masked_fill(present, -math.inf), per_tok], 1)
    cand_tok = torch.cat([best_tok, uniq[None].expand(per_tok.shape[0], -1)], 1)
    top, ti = torch.topk(cand_val, min(n_label, cand_val.shape[1]), 1)
    return top, torch.gather(cand_tok, 1, ti)


def cosines(resid_ln: torch.Tensor) -> torch.Tensor:
    """cos(x_q, x_k) [batch, q, k] of LN'd residuals."""
    xn = resid_ln / resid_ln.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return xn @ xn.transpose(-1, -2)


def allowed_keys(tokens: torch.Tensor, mask_self: bool) -> torch.Tensor:
    """Causal mask, optionally without the query itself and its earlier copies (BOS keeps itself)."""
    n = tokens.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None].expand(len(tokens), -1, -1).clone()
    if mask_self:
        same = tokens[:, :, None] == tokens[:, None, :]
        same[:, 0, 0] = False  # BOS has nothing else to attend to
        allowed &= ~same
    return allowed


def naive_patterns(resid_ln: torch.Tensor, tokens: torch.Tensor, temperature: float, mask_self: bool,
                   bos_sim: float = 0.0, cos: torch.Tensor | None = None) -> torch.Tensor:
    """softmax_k<=q( cos(x_q, x_k) / T ), optionally with self and copies of the query masked.

    The BOS key's similarity is the constant ``bos_sim`` instead of a cosine: BOS is an attention
    sink whose residual resembles no word, so a similarity rule needs a fitted sink level.
    """
    cos = (cosines(resid_ln) if cos is None else cos).clone()
    cos[:, 1:, 0] = bos_sim
    logits = (cos / temperature).masked_fill(~allowed_keys(tokens, mask_self), -math.inf)
    return torch.softmax(logits, -1)


def compare_patterns(head: torch.Tensor, naive: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Agreement of two attention patterns [batch, q, k] over queries q >= 1."""
    eps = 1e-9
    A, N = head[:, 1:], naive[:, 1:]
    kl = (A * (torch.log(A + eps) - torch.log(N + eps))).sum(-1)
    M = (A + N) / 2
    js = 0.5 * (A * (torch.log(A + eps) - torch.log(M + eps))).sum(-1) + 0.5 * (N * (torch.log(N + eps) - torch.log(M + eps))).sum(-1)
    n = tokens.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()[1:][None].expand(len(tokens), -1, -1)
    a, b = A[causal].double(), N[causal].double()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    same = (tokens[:, :, None] == tokens[:, None, :])[:, 1:]
    return {
        "kl": float(kl.mean()), "js": float(js.mean()),
        "top1_agreement": float((A.argmax(-1) == N.argmax(-1)).float().mean()),
        "pooled_corr": corr,
        "head_self_mass": float((A * same).sum(-1).mean()),
        "naive_self_mass": float((N * same).sum(-1).mean()),
    }


def fit_naive(head, resid_ln, tokens, mask_self: bool) -> tuple[float, float]:
    """(T, BOS similarity) minimising the mean KL(head || naive) over queries q >= 1, on a grid."""
    cos = cosines(resid_ln)
    allowed = allowed_keys(tokens, mask_self)[:, 1:]
    A = head[:, 1:]
    a_log_a = (A * torch.log(A + 1e-9)).sum(-1).mean()
    best = (math.inf, 0.0, 0.0)
    for b in BOS_SIMS:
        c = cos.clone()
        c[:, 1:, 0] = b
        c = c[:, 1:]
        for t in TEMPERATURES:
            logp = torch.log_softmax((c / t).masked_fill(~allowed, -math.inf), -1)
            # KL = sum A log A - sum A log N; masked keys (log N = -inf) carry A ~ 0 but not exactly
            kl = a_log_a - (A * logp.clamp_min(math.log(1e-9))).sum(-1).mean()
            if kl < best[0]:
                best = (float(kl), float(t), float(b))
    return best[1], best[2]


# ------------------------------------------------------------------------------------------


def feature_label(f: int, best_tok, best_val, tok) -> str:
    toks = [tok.decode([int(t)]) for t, v in zip(best_tok[f].tolist(), best_val[f].tolist()) if t >= 0 and v > 0]
    return "/".join(repr(t)[1:-1] for t in toks) if toks else "(silent)"


def main(argv: list[str] | None = None) -> int:
    from common.prompts import group_token_ids
    from common.head_qk import FactoredQK

    args = parse_args(argv)
    demo_sae = args.model == "planted" and not (args.sae_path or args.sae_release or args.sae_id)
    args.sae_release = args.sae_release or DEFAULT_RELEASE
    args.sae_id = args.sae_id or DEFAULT_SAE_ID
    # Output folder, then the SAE (a missing SAE fails in seconds), then the model.
    prepare_out_dir(args.out, script_name(__file__), args.model)
    sae = None if demo_sae else load_sae(args.sae_release, args.sae_id, args.sae_path, "cpu")
    model, out = start(args, script_name(__file__))
    if demo_sae:
        from sae_lens import SAE

        folder = planted_demo_sae(model)
        print(f"--model planted without an SAE option: using the planted demo SAE {folder}", file=sys.stderr)
        args.sae_path = str(folder)
        sae = SAE.load_from_disk(str(folder))
    L, H = args.layer, args.head
    if args.seq_len + 1 > model.cfg.n_ctx:
        raise SystemExit(f"error: --seq-len {args.seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}")
    if sae.cfg.d_in != model.cfg.d_model:
        raise SystemExit(f"error: the SAE reads d_in={sae.cfg.d_in} but the model's residual stream has "
                         f"d_model={model.cfg.d_model}: this SAE is for another model")
    hook = sae_hook(sae, L, args.hook)
    if hook not in model.hook_dict:
        raise SystemExit(f"error: hook {hook!r} does not exist in this model (use --hook)")
    if hook != f"blocks.{L}.hook_resid_pre":
        print(f"warning: the SAE reads {hook}, not blocks.{L}.hook_resid_pre (the input of layer {L}); "
              "its features are still residual directions, but they were trained elsewhere", file=sys.stderr)
    tok = model.tokenizer
    W_dec = sae.W_dec.detach().float().cpu()
    d_sae = W_dec.shape[0]

    # QK map in feature space.
    X = feature_inputs(model, L, W_dec)
    qk = FactoredQK.from_model(model, L, H)
    bilinear = qk.scorer(biases=False, scaled=True)
    res = feature_qk_map(bilinear, X, args.top_k, args.chunk)

    # Prompts: labels, group-token features, patterns.
    tokens = make_prompts(tok, args.n_prompts, args.seq_len, args.seed)
    g_ids, g_labels, g_groups = group_token_ids(tok)
    run = run_prompts(model, sae, tokens, L, H, hook, g_ids, args.batch_size)
    labels = [feature_label(f, run["best_tok"], run["best_val"], tok) for f in range(d_sae)]

    k = res["top_idx"].shape[1]
    table = pd.DataFrame({
        "feature": np.arange(d_sae), "label": labels, "fire_rate": run["fire_rate"].numpy().round(5),
        "diag": res["diag"].numpy().round(4), "row_mean": res["row_mean"].numpy().round(4),
        "row_std": res["row_std"].numpy().round(4), "diag_z": res["diag_z"].numpy().round(4),
        "self_rank": res["self_rank"].numpy().astype(int),
        "self_rank_frac": (res["self_rank"] / max(d_sae - 1, 1)).numpy().round(4), "self_prob": res["self_prob"].numpy(),
        "top_keys": [" | ".join(f"{j}:{labels[j]}:{p:.3f}" for j, p in zip(res["top_idx"][f, :5].tolist(),
                                                                            res["top_prob"][f, :5].tolist()))
                     for f in range(d_sae)],
    })
    write_csv(out / "feature_qk.csv", table)
    write_csv(out / "feature_top_keys.csv", pd.DataFrame({
        "query_feature": np.repeat(np.arange(d_sae), k), "rank": np.tile(np.arange(1, k + 1), d_sae),
        "key_feature": res["top_idx"].numpy().ravel(), "score": res["top_score"].numpy().ravel().round(4),
        "prob": res["top_prob"].numpy().ravel()}))
    # Ranked among features that fired on the prompts: a silent feature (dead, or for tokens the
    # prompts lack) has no label to interpret, and a random direction can score low by chance.
    suppressed = table[table["fire_rate"] > 0].sort_values("diag").head(args.n_suppressed)
    write_csv(out / "self_suppression.csv", suppressed)

    # Group tokens -> the feature that fires most on each; QK map among those features.
    fire_ok = run["fire_rate"] < 0.5  # a feature on everywhere is a bias, not a token feature
    gm = run["group_mean"].masked_fill(~fire_ok[None], -math.inf)
    g_feat = gm.argmax(1)
    g_has = (run["group_n"] > 0) & (gm.max(1).values > 0)
    G = bilinear.scores(X[g_feat], X[g_feat]).numpy()
    G[~g_has.numpy()] = np.nan
    G[:, ~g_has.numpy()] = np.nan
    g_tick = [f"{w} (f{int(f)})" for w, f in zip(g_labels, g_feat)]
    write_csv(out / "group_feature_qk.csv", pd.DataFrame(G, index=g_tick, columns=g_tick).reset_index(names="query"))
    fig, ax = plt.subplots(figsize=(11, 9.5))
    lim = float(np.nanmax(np.abs(G))) if np.isfinite(G).any() else 1.0
    token_heatmap(ax, G, g_tick, title=f"L{L}H{H} QK map between the features of the 30 group tokens\n"
                  "(score of LN(decoder direction) pairs; diagonal = self)", vmin=-lim, vmax=lim, groups=g_groups)
    save_figure(fig, out / "group_feature_qk.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1, 1.3]})
    fired = (run["fire_rate"] > 0).numpy()
    a1.scatter(res["row_mean"].numpy()[~fired], res["diag"].numpy()[~fired], s=4, c="#bbbbbb", label="silent on prompts")
    a1.scatter(res["row_mean"].numpy()[fired], res["diag"].numpy()[fired], s=5, c="#4c72b0", label="fired")
    lo = float(min(res["row_mean"].min(), res["diag"].min()))
    hi = float(max(res["row_mean"].max(), res["diag"].max()))
    a1.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="self = row mean")
    a1.set_xlabel("mean score of the feature against all features (row mean)")
    a1.set_ylabel("self-score S[f, f]")
    a1.set_title(f"Self-scores of all {d_sae} features: below the line = self-suppressed")
    a1.legend(fontsize=8)
    top = suppressed.head(20)
    a2.barh(np.arange(len(top)), top["diag"], color="#c44e52")
    a2.set_yticks(np.arange(len(top)), [f"f{f} {lab[:28]} (rank {r})" for f, lab, r in
                                        zip(top["feature"], top["label"], top["self_rank"])], fontsize=7)
    a2.invert_yaxis()
    a2.set_xlabel("self-score S[f, f] (most negative = hit hardest by self-suppression)")
    a2.set_title("Most self-suppressed firing features")
    save_figure(fig, out / "self_suppression.png")

    # Naive similarity attention vs the head: fit T on the first half, evaluate on the second.
    half = len(tokens) // 2
    A, R = run["pattern"], run["resid_ln"]
    kinds = {"all": slice(half, None), "category": slice(half, None, 2), "random_tokens": slice(half + 1, None, 2)}
    if half % 2:  # prompts alternate category / random-token from index 0
        kinds["category"], kinds["random_tokens"] = kinds["random_tokens"], kinds["category"]
    n_ = tokens.shape[1]
    uni = torch.ones(n_, n_).tril()
    uni = (uni / uni.sum(-1, keepdim=True))[None].expand(len(tokens), -1, -1)
    rows, temps, examples = [], {}, {}
    for variant, mask_self in (("naive_cosine", False), ("naive_cosine_no_self", True), ("uniform_causal", None)):
        if mask_self is None:
            t, b, naive = float("nan"), float("nan"), uni
        else:
            t, b = fit_naive(A[:half], R[:half], tokens[:half], mask_self)
            naive = naive_patterns(R, tokens, t, mask_self, b)
            examples[variant] = naive[half]
        temps[variant] = t
        for kind, sl in kinds.items():
            rows.append({"variant": variant, "prompts": kind, "temperature": t, "bos_similarity": b,
                         **compare_patterns(A[sl], naive[sl], tokens[sl])})
    naive_df = pd.DataFrame(rows)
    write_csv(out / "naive_vs_head.csv", naive_df)

    ex_tok = [repr(tok.decode([t]))[1:-1] for t in tokens[half].tolist()]
    fig, axes = plt.subplots(1, 4, figsize=(24, 6.5), gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    for ax, (title, mat) in zip(axes[:3], [(f"L{L}H{H} (model)", A[half]),
                                           (f"naive cosine, T={temps['naive_cosine']:.3g}", examples["naive_cosine"]),
                                           (f"naive, self/copies masked, T={temps['naive_cosine_no_self']:.3g}",
                                            examples["naive_cosine_no_self"])]):
        token_heatmap(ax, mat.numpy(), ex_tok, title=title, cmap="viridis", center=None, vmin=0, vmax=1, cbar=False)
    m = naive_df[naive_df["prompts"] == "all"].set_index("variant")
    x = np.arange(len(m))
    axes[3].bar(x - 0.2, m["kl"], 0.4, label="KL(head || variant)")
    axes[3].bar(x + 0.2, m["naive_self_mass"], 0.4, label="variant's mass on self+copies")
    axes[3].axhline(float(m["head_self_mass"].iloc[0]), color="k", ls="--", lw=1, label="head's mass on self+copies")
    axes[3].set_xticks(x, [v.replace("_", "\n") for v in m.index], fontsize=8)
    axes[3].legend(fontsize=8)
    axes[3].set_title("held-out prompts")
    save_figure(fig, out / "naive_vs_head.png")

    summary = {
        "sae": args.sae_path or f"{args.sae_release}/{args.sae_id}", "hook": hook, "d_sae": d_sae,
        "n_prompts": len(tokens), "fraction_negative_diag": float((res["diag"] < 0).float().mean()),
        "fraction_negative_diag_z": float((res["diag_z"] < 0).float().mean()),
        "median_diag_z": float(res["diag_z"].median()), "mean_self_prob": float(res["self_prob"].mean()),
        "fraction_fired": float((run["fire_rate"] > 0).float().mean()),
        "most_suppressed": suppressed.head(10)[["feature", "label", "diag", "diag_z"]].to_dict("records"),
        "naive": {f"{r['variant']}/{r['prompts']}": {k2: v for k2, v in r.items() if k2 not in ("variant", "prompts")}
                  for r in rows},
    }
    write_json(out / "summary.json", summary)
    write_meta(out, args, {"summary": {k2: v for k2, v in summary.items() if k2 != "most_suppressed"}})

    print(f"{d_sae} features: {summary['fraction_negative_diag_z']:.1%} have a self-score below their row mean; "
          f"most suppressed: " + ", ".join(f"f{r['feature']} {r['label']}" for r in summary["most_suppressed"][:5]))
    for r in rows:
        print(f"{r['variant']:>22} {r['prompts']:>13}: KL {r['kl']:.3f}, JS {r['js']:.3f}, top-1 agreement {r['top1_agreement']:.2f}, "
              f"self mass {r['naive_self_mass']:.3f} (head {r['head_self_mass']:.3f})")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
