"""Effective token embeddings: the position-free input that layer L's attention sees, and how
faithful it is.

For every token t (the original study's definition, for L = 1):
LN( W_E[t] + mean_p W_pos[p] + sum_{l<L} [mean attn_out_l + MLP_l(...)] ), where each layer's
attention output is replaced by its mean and each MLP is applied to the running token vector.
"LN" is LNPre (centre, scale to unit RMS): ``model.blocks[L].ln1``, because the model is loaded
with fold_ln.

**BOS** is the exception: it always sits at position 0, whose positional embedding is an outlier
(gpt2-small: norm 9.9 against 3.4-5.2 for the next positions), and position 0 attends only to
itself in every layer, so its layer-L input is the same in every prompt. BOS's row is that input
exactly: the model's ``blocks.L.ln1.hook_normalized`` for the one-token prompt [BOS] (W_E[BOS] +
W_pos[0] and every earlier layer's actual output there), not the position and attention means the
other rows use (until ``eff-v3`` it used them too: a BOS no prompt ever has).

**Where the means are taken** (recorded by :func:`effective_spec`, part of the cache key):

* W_pos over the positions given by ``positions``:

  - ``"prompt"`` (default): positions 1..48 (:data:`PROMPT_POSITIONS`), the positions the repo's
    prompts occupy (BOS + 48 tokens: the mean-attention prompt mix below and the scripts' seeded
    prompts, at most 48 words). Position 0 is left out: it always holds BOS (whose row uses
    position 0, above), and gpt2-small's W_pos[0] is an outlier.
  - ``"all"``: all n_ctx positions, the original study's choice. On gpt2-small's real W_pos
    (1024 positions) that mean has norm 0.59 while a single position has norm 3.4-5 and the
    mean over 1..48 has norm 3.28, at cosine 0.03 to it: it describes no position a prompt uses
    (issue 10, defect 4).
  - ``(first, last)``: any inclusive range.

* each layer's attention output (``blocks.l.hook_attn_out``) over every non-BOS position of a fixed,
  seeded prompt mix (:func:`mean_prompt_tokens`: 16 category prompts and 16 random-token prompts
  with 12 inserted category words, 48 tokens each, ``seed``), i.e. positions 1..48 too.

**Fidelity** (:func:`effective_fidelity`): on held-out seeded prompts of the same two kinds, the
effective embedding of each token is compared with the true layer-L attention input at its
position (``blocks.L.ln1.hook_normalized``): cosine, and the error of a head's attention scores
computed from effective embeddings against the model's real scores (non-BOS query/key pairs).
Scripts that use effective embeddings report :func:`effective_record` (spec + fidelity).

**Effective-basis spectra**: E W E^T / n_vocab ([vocab, vocab]) has the spectra of
:meth:`common.factored.Factored.in_gram` applied to E^T E / n_vocab (:func:`embedding_gram`), a
2r x 2r problem.

Cached on disk by model fingerprint and :func:`effective_spec` (layer, positions, prompt mix,
definition version), so every script shares one computation per model and choice: an entry of the
cache-entry protocol (:mod:`common.disk_cache`: atomic, checked against its key and checksum,
rebuilt when corrupt; an unwritable cache folder means computing uncached, with a one-line note)
at :func:`effective_cache_path`, holding ``embeddings.pt``.
"""

from __future__ import annotations

import numpy as np
import torch

from common import disk_cache
from common.errors import require_absolute_positions
from common.hook_names import act_name
from common.outputs import cache_dir, model_fingerprint
from common.prompts import category_prompts, random_token_prompts

EFFECTIVE_VERSION = "eff-v3"  # bump when the definition of the effective embeddings changes (v3: BOS at position 0)
BOS_ROW = "BOS: the model's own layer-L input at position 0 (one-token prompt [BOS]), exact"
PROMPT_LEN = 48  # tokens after BOS in the mean-attention prompt mix (and the scripts' prompts)
PROMPT_POSITIONS = (1, PROMPT_LEN)
MIX = {"category_prompts": {"n_prompts": 16, "seq_len": PROMPT_LEN},
       "random_token_prompts": {"n_prompts": 16, "seq_len": PROMPT_LEN, "n_inserted": 12}}
FIDELITY_SEED_OFFSET = 1000  # held-out prompts: a seed the mean was not taken over
EMBEDDINGS, LABEL = "embeddings.pt", "effective-embeddings"


@torch.no_grad()
def embedding_gram(E: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """E^T E / n_tokens in float64 ([d_model, d_model]), accumulated in chunks."""
    d = E.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, E.shape[0], chunk):
        x = E[s : s + chunk].double()
        G += x.T @ x
    return G / E.shape[0]


def position_range(model, positions="prompt") -> tuple[int, int]:
    """The inclusive range of W_pos rows averaged for ``positions`` (module docstring)."""
    n_ctx = model.cfg.n_ctx
    if positions == "prompt":
        first, last = PROMPT_POSITIONS[0], min(PROMPT_POSITIONS[1], n_ctx - 1)
    elif positions == "all":
        first, last = 0, n_ctx - 1
    elif isinstance(positions, (tuple, list)) and len(positions) == 2:
        first, last = int(positions[0]), int(positions[1])
    else:
        raise ValueError(f"positions must be 'prompt', 'all' or (first, last), not {positions!r}")
    if not 0 <= first <= last < n_ctx:
        raise ValueError(f"positions {first}..{last} outside the model's context 0..{n_ctx - 1}")
    return first, last


def effective_spec(model, layer: int = 1, positions="prompt", seed: int = 0) -> dict:
    """Everything the effective embeddings depend on besides the weights (JSON-able; recorded in
    outputs and part of the cache key)."""
    first, last = position_range(model, positions)
    name = positions if isinstance(positions, str) else "range"
    mean_pos = model.W_pos[first : last + 1].mean(0)
    return {
        "version": EFFECTIVE_VERSION,
        "layer": int(layer),
        "positions": name,
        "position_range": [first, last],
        "position_mean_norm": float(mean_pos.norm()),
        "attention_mean": ({"hook": "blocks.l.hook_attn_out", "over": "non-BOS positions",
                            "prompt_mix": MIX, "seed": int(seed)} if layer > 0 else None),
        "ln": f"blocks[{layer}].ln1 (LNPre)",
        "bos_row": BOS_ROW,
    }


def mean_prompt_tokens(tokenizer, seed: int = 0) -> torch.Tensor:
    """The fixed prompt mix over which mean attention outputs are taken (module docstring)."""
    a = category_prompts(tokenizer, MIX["category_prompts"]["n_prompts"], PROMPT_LEN, seed=seed).tokens
    r = MIX["random_token_prompts"]
    b = random_token_prompts(tokenizer, r["n_prompts"], PROMPT_LEN, n_inserted=r["n_inserted"], seed=seed).tokens
    return torch.cat([a, b])


@torch.no_grad()
def mean_attention_outputs(model, layers: list[int], seed: int = 0) -> dict[int, torch.Tensor]:
    """Mean of ``blocks.l.hook_attn_out`` over the non-BOS positions of :func:`mean_prompt_tokens`."""
    if not layers:
        return {}
    tokens = mean_prompt_tokens(model.tokenizer, seed).to(model.cfg.device)
    tokens = tokens[:, : model.cfg.n_ctx]
    store: dict[int, torch.Tensor] = {}

    def save(t, hook):
        store[int(hook.name.split(".")[1])] = t[:, 1:].reshape(-1, t.shape[-1]).mean(0).detach().cpu()

    model.run_with_hooks(tokens, stop_at_layer=max(layers) + 1,
                         fwd_hooks=[(act_name("attn_out", l), save) for l in layers])
    return store


@torch.no_grad()
def compute_effective_embeddings(model, layer: int = 1, batch_size: int = 2048, positions="prompt",
                                 seed: int = 0, token_ids=None) -> torch.Tensor:
    """The uncached computation behind :func:`effective_embeddings` ([n, d_model], float32): every
    token (default) or the tokens ``token_ids``, in that order."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.cfg.n_layers - 1}")
    dev = model.cfg.device
    first, last = position_range(model, positions)
    attn_mean = mean_attention_outputs(model, list(range(layer)), seed)
    pos_mean = model.W_pos[first : last + 1].mean(0)
    W_E = model.W_E if token_ids is None else model.W_E[torch.as_tensor(token_ids, device=model.W_E.device)]
    out = torch.empty(W_E.shape[0], W_E.shape[1], dtype=torch.float32)
    for s in range(0, W_E.shape[0], batch_size):
        x = (W_E[s : s + batch_size] + pos_mean)[None]  # [1, batch, d_model]: modules want [b, pos, d]
        for l in range(layer):
            blk = model.blocks[l]
            x = x + attn_mean[l].to(dev)
            if not getattr(model.cfg, "attn_only", False):
                x = x + blk.mlp(blk.ln2(x))
        out[s : s + batch_size] = model.blocks[layer].ln1(x)[0].float().cpu()
    bos = model.tokenizer.bos_token_id
    ids = torch.arange(W_E.shape[0]) if token_ids is None else torch.as_tensor(token_ids).cpu()
    if (ids == bos).any():
        out[ids == bos] = bos_input(model, layer)
    return out


@torch.no_grad()
def bos_input(model, layer: int = 1) -> torch.Tensor:
    """BOS's layer-``layer`` attention input at position 0 ([d_model], float32): the same in every
    prompt, since position 0 attends only to itself (module docstring)."""
    store = {}

    def save(t, hook):
        store["x"] = t[0, 0].detach().float().cpu()

    bos = torch.tensor([[model.tokenizer.bos_token_id]], device=model.cfg.device)
    model.run_with_hooks(bos, stop_at_layer=layer + 1, fwd_hooks=[(act_name("normalized", layer), save)])
    return store["x"]


def effective_cache_key(model, layer: int = 1, positions="prompt", seed: int = 0) -> dict:
    """What a cached table depends on: the model's weights (fingerprint), the spec (without
    ``position_mean_norm``, itself a function of the weights) and the table's shape."""
    spec = effective_spec(model, layer, positions, seed)
    return {"fingerprint": model_fingerprint(model),
            "spec": {k: v for k, v in spec.items() if k != "position_mean_norm"},
            "shape": [model.cfg.d_vocab, model.cfg.d_model]}


def effective_cache_path(model, layer: int = 1, positions="prompt", seed: int = 0):
    """The cache entry (a folder) of :func:`effective_embeddings`: fingerprint, version, layer and
    the key's digest."""
    return _entry_path(effective_cache_key(model, layer, positions, seed))


def _entry_path(key: dict):
    name = f"{key['fingerprint']}-{EFFECTIVE_VERSION}-L{key['spec']['layer']}-{disk_cache.digest(key)}"
    return cache_dir() / "effective" / name


def effective_embeddings(model, layer: int = 1, batch_size: int = 2048, cache: bool = True,
                         positions="prompt", seed: int = 0) -> torch.Tensor:
    """Effective token embeddings [d_vocab, d_model] seen by layer ``layer``'s attention.

    Definition, ``positions`` and ``seed`` (the prompt mix of the attention means): module
    docstring; :func:`effective_spec` records them. Cached on disk under
    :func:`effective_cache_path`, keyed by the model and the spec (module docstring).
    """
    require_absolute_positions(model, "the effective embeddings (token embedding + mean of W_pos over positions)")
    if not cache:
        return compute_effective_embeddings(model, layer, batch_size, positions, seed)
    key = effective_cache_key(model, layer, positions, seed)
    entry = _entry_path(key)
    E = disk_cache.read_entry(entry, key, EMBEDDINGS, LABEL, lambda path, meta: _load_table(path, key["shape"]))
    if E is not None:
        return E
    E = compute_effective_embeddings(model, layer, batch_size, positions, seed)
    try:
        disk_cache.write_entry(entry, key, EMBEDDINGS, lambda path: torch.save(E, path))
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        disk_cache.note_unwritable(LABEL, entry.parent, exc)
    return E


def _load_table(path, shape: list[int]) -> torch.Tensor:
    E = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(E, torch.Tensor) or list(E.shape) != shape:
        raise disk_cache.InvalidEntry(f"corrupt ({EMBEDDINGS} does not hold a {shape} table)")
    return E


def fidelity_prompts(tokenizer, n_prompts: int = 16, seq_len: int = PROMPT_LEN, seed: int = 0) -> torch.Tensor:
    """Held-out prompts for :func:`effective_fidelity`: half category prompts (with copies), half
    random-token prompts with inserted category words, seeded away from the mean's prompt mix."""
    s = seed + FIDELITY_SEED_OFFSET
    a = category_prompts(tokenizer, (n_prompts + 1) // 2, seq_len, seed=s, repeat_prob=0.2).tokens
    b = random_token_prompts(tokenizer, n_prompts // 2, seq_len, n_inserted=seq_len // 4, seed=s).tokens
    return torch.cat([a, b])


@torch.no_grad()
def effective_fidelity(model, layer: int = 1, head: int = 5, positions="prompt", seed: int = 0,
                       n_prompts: int = 16, seq_len: int = PROMPT_LEN, E: torch.Tensor | None = None) -> dict:
    """How close the effective embeddings are to the true layer-``layer`` attention inputs.

    On :func:`fidelity_prompts` (held out from the mean's prompt mix), at every non-BOS position:

    * ``cosine_*``: cosine between the token's effective embedding and the true LN1 output
      (``blocks.L.ln1.hook_normalized``) at that position (mean, 5th percentile, min);
    * ``score_*``: head ``head``'s attention scores (biases and 1/sqrt(d_head) included) from
      effective embeddings against the model's ``hook_attn_scores``, over non-BOS pairs k <= q:
      ``score_corr`` (Pearson), ``score_slope`` (least-squares slope of true on predicted: > 1
      means the effective scores are too flat), ``score_rel_rmse`` (RMS error / std of the true
      scores) and ``score_rel_rmse_centred`` (the same after subtracting each query row's mean,
      which the softmax ignores: the error that changes attention).

    ``E`` ([d_vocab, d_model]) is used if given; otherwise the needed rows are computed.
    """
    from common.head_qk import FactoredQK

    if seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"seq_len {seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"head {head} out of range 0..{model.cfg.n_heads - 1}")
    tokens = fidelity_prompts(model.tokenizer, n_prompts, seq_len, seed)
    store = {}

    def save(t, hook):
        store[hook.name] = t.detach().float().cpu()

    norm_name, score_name = act_name("normalized", layer), act_name("attn_scores", layer)
    model.run_with_hooks(tokens.to(model.cfg.device), stop_at_layer=layer + 1,
                         fwd_hooks=[(norm_name, save), (score_name, save)])
    true_x, true_s = store[norm_name][:, 1:], store[score_name][:, head, 1:, 1:]  # drop BOS
    toks = tokens[:, 1:]
    if E is None:
        ids, inv = torch.unique(toks, return_inverse=True)
        X = compute_effective_embeddings(model, layer, positions=positions, seed=seed, token_ids=ids)[inv]
    else:
        X = E[toks]
    cos = torch.nn.functional.cosine_similarity(X.double(), true_x.double(), dim=-1).flatten()

    scorer = FactoredQK.from_model(model, layer, head).scorer()
    pred = torch.stack([scorer.scores(x, x) for x in X]).double()  # [batch, q, k]
    n = toks.shape[1]
    low = torch.ones(n, n, dtype=torch.bool).tril()
    t, p = true_s.double()[:, low], pred[:, low]
    rows = low.float()

    def centred(s):  # subtract each query row's mean over its visible keys
        s = torch.where(low, s, torch.zeros((), dtype=s.dtype))  # masked scores are -inf
        m = s.sum(-1, keepdim=True) / rows.sum(-1, keepdim=True)
        return (s - m)[:, low]

    tc, pc = centred(true_s.double()), centred(pred)
    tf, pf = t.flatten().numpy(), p.flatten().numpy()
    slope = float(np.dot(pf - pf.mean(), tf - tf.mean()) / np.dot(pf - pf.mean(), pf - pf.mean()))
    first, last = position_range(model, positions)
    return {
        "layer": int(layer), "head": int(head), "positions": positions if isinstance(positions, str) else "range",
        "position_range": [first, last], "n_prompts": int(tokens.shape[0]), "seq_len": int(seq_len),
        "n_positions": int(cos.numel()), "n_pairs": int(tf.size),
        "cosine_mean": float(cos.mean()), "cosine_p05": float(torch.quantile(cos, 0.05)), "cosine_min": float(cos.min()),
        "score_corr": float(np.corrcoef(tf, pf)[0, 1]),
        "score_slope": slope,
        "score_rel_rmse": float(torch.sqrt(((t - p) ** 2).mean()) / t.std()),
        "score_rel_rmse_centred": float(torch.sqrt(((tc - pc) ** 2).mean()) / tc.std()),
    }


def effective_record(model, layer: int = 1, head: int = 5, positions="prompt", seed: int = 0,
                     E: torch.Tensor | None = None) -> dict:
    """What a script records about its effective embeddings: :func:`effective_spec` plus
    ``fidelity`` (:func:`effective_fidelity` for ``head``)."""
    spec = effective_spec(model, layer, positions, seed)
    seq_len = min(PROMPT_LEN, model.cfg.n_ctx - 1)
    spec["fidelity"] = effective_fidelity(model, layer, head, positions, seed, seq_len=seq_len, E=E)
    return spec
