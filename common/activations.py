"""Forward passes that keep some activations and stop as soon as the last of them is stored.

An activation never depends on anything computed after it, so once every hook point asked for has
fired the rest of the pass is wasted work and wasted memory: :func:`capture` ends it there (a
hook raises a private exception that the call catches; TransformerLens' ``run_with_hooks`` removes
its hooks on the way out). For ``blocks.1.attn.hook_z`` the pass skips layer 1's output
projection and MLP, and every later layer. ``stop_at_layer`` bounds the pass as well, so a hook
point that never fires costs no more than the blocks up to its layer.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable

import torch


class _Captured(Exception):
    """Raised by the hook that stores the last activation :func:`capture` needs."""


def layer_of(hook_name: str) -> int:
    """Block index of a hook point (-1 for the embeddings)."""
    if hook_name.startswith("blocks."):
        return int(hook_name.split(".")[1])
    return -1


@torch.no_grad()
def capture(model, tokens: torch.Tensor, hook_names: Iterable[str], hooks=(),
            keep: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach) -> dict[str, torch.Tensor]:
    """``{hook name: keep(activation)}`` from one forward pass of ``tokens``, ended as soon as the
    last one is stored. ``hooks``: extra forward hooks that run before the stores (ablations);
    those on points after the last stored one do not fire."""
    names = list(dict.fromkeys(hook_names))
    store: dict[str, torch.Tensor] = {}

    def save(t, hook):
        store[hook.name] = keep(t)
        if len(store) == len(names):
            raise _Captured

    ctx = model.hooks(fwd_hooks=list(hooks)) if hooks else nullcontext()
    with ctx:
        try:
            model.run_with_hooks(
                tokens.to(model.cfg.device),
                stop_at_layer=max(max((layer_of(n) for n in names), default=-1) + 1, 1),
                fwd_hooks=[(n, save) for n in names],
            )
        except _Captured:
            pass
    return store
