"""Effective token embeddings: the position-free input that layer L's attention sees.

For every token t (the original study's definition, for L = 1):
LN( W_E[t] + mean_p W_pos[p] + sum_{l<L} [mean attn_out_l + MLP_l(...)] ), where each layer's
attention output is replaced by its mean and each MLP is applied to the running token vector.
**Where the means are taken:** W_pos over all n_ctx positions; each layer's attention output
(``blocks.l.hook_attn_out``) over every non-BOS position of a fixed, seeded prompt mix
(16 category prompts and 16 random-token prompts with 12 inserted category words, 48 tokens
each, seed 0; see :func:`mean_attention_outputs`). "LN" is LNPre (centre, scale to unit RMS):
``model.blocks[L].ln1``, because the model is loaded with fold_ln.

**Effective-basis spectra**: E W E^T / n_vocab ([vocab, vocab]) has the spectra of
:meth:`common.factored.Factored.in_gram` applied to E^T E / n_vocab (:func:`embedding_gram`), a
2r x 2r problem.

Cached on disk (atomically) by model fingerprint, so every script shares one computation per model.
"""

from __future__ import annotations

import torch

from common.errors import require_absolute_positions
from common.outputs import atomic_path, cache_dir, model_fingerprint
from common.prompts import category_prompts, random_token_prompts

EFFECTIVE_VERSION = "eff-v1"  # bump when the definition of the effective embeddings changes


@torch.no_grad()
def embedding_gram(E: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """E^T E / n_tokens in float64 ([d_model, d_model]), accumulated in chunks."""
    d = E.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, E.shape[0], chunk):
        x = E[s : s + chunk].double()
        G += x.T @ x
    return G / E.shape[0]


def mean_prompt_tokens(tokenizer, seed: int = 0) -> torch.Tensor:
    """The fixed prompt mix over which mean attention outputs are taken (module docstring)."""
    a = category_prompts(tokenizer, 16, 48, seed=seed).tokens
    b = random_token_prompts(tokenizer, 16, 48, n_inserted=12, seed=seed).tokens
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
                         fwd_hooks=[(f"blocks.{l}.hook_attn_out", save) for l in layers])
    return store


@torch.no_grad()
def compute_effective_embeddings(model, layer: int = 1, batch_size: int = 2048) -> torch.Tensor:
    """The uncached computation behind :func:`effective_embeddings` ([d_vocab, d_model], float32)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.cfg.n_layers - 1}")
    dev = model.cfg.device
    attn_mean = mean_attention_outputs(model, list(range(layer)))
    pos_mean = model.W_pos.mean(0)
    W_E = model.W_E
    out = torch.empty(W_E.shape[0], W_E.shape[1], dtype=torch.float32)
    for s in range(0, W_E.shape[0], batch_size):
        x = (W_E[s : s + batch_size] + pos_mean)[None]  # [1, batch, d_model]: modules want [b, pos, d]
        for l in range(layer):
            blk = model.blocks[l]
            x = x + attn_mean[l].to(dev)
            if not getattr(model.cfg, "attn_only", False):
                x = x + blk.mlp(blk.ln2(x))
        out[s : s + batch_size] = model.blocks[layer].ln1(x)[0].float().cpu()
    return out


def effective_embeddings(model, layer: int = 1, batch_size: int = 2048, cache: bool = True) -> torch.Tensor:
    """Effective token embeddings [d_vocab, d_model] seen by layer ``layer``'s attention.

    Definition and where the means are taken: module docstring. Cached on disk under
    ``cache_dir()/effective/<fingerprint>-L<layer>.pt`` (written atomically), so every script
    shares one computation per model.
    """
    require_absolute_positions(model, "the effective embeddings (token embedding + mean of W_pos over positions)")
    if not cache:
        return compute_effective_embeddings(model, layer, batch_size)
    path = cache_dir() / "effective" / f"{model_fingerprint(model)}-{EFFECTIVE_VERSION}-L{layer}.pt"
    if path.exists():
        try:
            E = torch.load(path, map_location="cpu", weights_only=True)
            if E.shape == (model.cfg.d_vocab, model.cfg.d_model):
                return E
        except Exception:  # a corrupt cache file is recomputed, never trusted
            pass
    E = compute_effective_embeddings(model, layer, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(E, tmp)
    return E
