"""Mean, resample and "keep only" ablation hooks for TransformerLens models.

Every function returns ordinary forward hooks ``[(hook_name, fn), ...]`` for
``model.run_with_hooks(..., fwd_hooks=hooks)``, ``with model.hooks(fwd_hooks=hooks)`` or
:func:`common.metrics.all_head_patterns` / :func:`common.metrics.head_survey` (``hooks=``).

Conventions (shared by every script that ablates, so numbers are comparable):

* **Reference data.** Replacement values come from a *separate* seeded reference batch, never
  from the prompts being scored, so a prompt cannot leak its own activations back in.
* **Mean ablation** replaces the activation at every ablated position by one vector: the mean of
  that activation over all non-BOS positions of all reference prompts. One global mean (rather
  than a per-position mean) is what makes ablating the positional embedding meaningful: a
  per-position mean of ``hook_pos_embed`` would be the positional embedding itself.
* **Resample ablation** replaces the activation at each ablated (prompt, position) by the
  activation at a uniformly drawn (prompt, position) of the reference batch (non-BOS positions),
  drawn with a seeded generator. Values stay on the activation manifold, which mean ablation does
  not guarantee; drawing the position at random too makes it an ablation of position for
  ``hook_pos_embed``.
* **BOS is left alone** by default (``ablate_bos=False``): position 0 is the attention sink that
  rule 3 (attend to BOS when nothing else fits) relies on, and ablating it would mix "the
  component carries the signal" with "BOS stopped being BOS". With ``ablate_bos=True`` position
  0 is replaced too and the statistics are taken over all positions.
* **Keep only** (:func:`keep_only_hooks`): a later hook point is overwritten by an earlier one of
  the same forward pass, e.g. layer 1's input replaced by MLP0's output alone.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from common.activations import capture
from common.hook_names import act_name

Hook = tuple[str, Callable]

# The hook points component_ablation.py studies, with readable labels.
COMPONENTS: dict[str, str] = {
    "token embedding": act_name("embed"),
    "positional embedding": act_name("pos_embed"),
    "layer-0 attention": act_name("attn_out", 0),
    "layer-0 MLP": act_name("mlp_out", 0),
}


# Rows per forward pass in collect_activations: at most this many tokens (rows x positions). The
# MLP's GELU holds several [rows, positions, d_mlp] temporaries at once (about 0.1 GB for 32 windows
# of 64 tokens at gpt2-small size), more than the activations kept; a thousand tokens per pass keep
# the matrix products as fast on a CPU.
TOKENS_PER_PASS = 1024


@torch.no_grad()
def collect_activations(model, tokens: torch.Tensor, hook_names: Iterable[str],
                        batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Activations [batch, pos, ...] at ``hook_names`` for ``tokens``, each pass ending at the last
    of them (:func:`common.activations.capture`); at most ``batch_size`` rows and
    :data:`TOKENS_PER_PASS` tokens per pass."""
    hook_names = list(hook_names)
    rows = max(1, min(batch_size, TOKENS_PER_PASS // max(1, tokens.shape[-1])))
    store: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}
    for i in range(0, len(tokens), rows):
        got = capture(model, tokens[i : i + rows], hook_names, keep=lambda t: t.detach().cpu())
        for n in hook_names:
            store[n].append(got[n])
    return {n: torch.cat(v) for n, v in store.items()}


def _positions(acts: torch.Tensor, ablate_bos: bool) -> torch.Tensor:
    """The reference vectors [n, ...] that statistics are taken over."""
    if acts.dim() == 2:  # hook_pos_embed may come without a batch dimension in some versions
        acts = acts[None]
    pool = acts if ablate_bos else acts[:, 1:]
    return pool.reshape(-1, *acts.shape[2:])


def _target_slice(t: torch.Tensor, ablate_bos: bool) -> tuple[slice, ...]:
    return (slice(None), slice(None if ablate_bos else 1, None))


def mean_ablation_hooks(reference: dict[str, torch.Tensor], ablate_bos: bool = False) -> dict[str, list[Hook]]:
    """One hook list per hook point: replace the activation by its reference mean (see module doc)."""
    out = {}
    for name, acts in reference.items():
        mean = _positions(acts, ablate_bos).mean(0)

        def fn(t, hook, mean=mean):
            t = t.clone()
            t[_target_slice(t, ablate_bos)] = mean.to(t.device, t.dtype)
            return t

        out[name] = [(name, fn)]
    return out


def resample_ablation_hooks(reference: dict[str, torch.Tensor], seed: int = 0,
                            ablate_bos: bool = False) -> dict[str, list[Hook]]:
    """One hook list per hook point: each ablated (prompt, position) gets a random reference vector.

    The generator is seeded once per hook, so a fixed sequence of forward passes is reproducible.
    """
    out = {}
    for name, acts in reference.items():
        pool = _positions(acts, ablate_bos)
        gen = torch.Generator().manual_seed(seed)

        def fn(t, hook, pool=pool, gen=gen):
            t = t.clone()
            view = t[_target_slice(t, ablate_bos)]
            idx = torch.randint(len(pool), view.shape[:2], generator=gen)
            t[_target_slice(t, ablate_bos)] = pool[idx].to(t.device, t.dtype)
            return t

        out[name] = [(name, fn)]
    return out


def keep_only_hooks(source: str, target: str, ablate_bos: bool = False) -> list[Hook]:
    """Overwrite hook point ``target`` by the value of ``source`` from the same forward pass.

    ``source`` must run before ``target`` (e.g. ``blocks.0.hook_mlp_out`` -> ``blocks.1.hook_resid_pre``:
    layer 1 sees MLP0's output and nothing else). Position 0 keeps its own value unless ``ablate_bos``.
    """
    saved: dict[str, torch.Tensor] = {}

    def save(t, hook):
        saved["value"] = t

    def replace(t, hook):
        if "value" not in saved:
            raise RuntimeError(f"keep_only_hooks: {source} did not run before {target}")
        t = t.clone()
        sl = _target_slice(t, ablate_bos)
        t[sl] = saved.pop("value")[sl].to(t.dtype)
        return t

    return [(source, save), (target, replace)]
