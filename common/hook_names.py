"""TransformerLens hook names, spelled once: ``act_name("pattern", 1)`` is ``blocks.1.attn.hook_pattern``.

Every hook point the repository reads or edits is named through :func:`act_name`, in
TransformerLens' own scheme: the same short names and the same results as
``transformer_lens.utilities.get_act_name`` (tests/test_hook_names.py checks every form against
it). Why not call get_act_name itself: importing it imports TransformerLens (seconds), and the
modules that ``--help`` and ``run_all.py --render-only`` import must not (issue 21); this module
imports nothing.
"""

from __future__ import annotations

# short name -> the hook's full name; {l} is the layer.
FORMS = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "normalized": "blocks.{l}.ln1.hook_normalized",  # LN1's output: what the layer's heads read
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "z": "blocks.{l}.attn.hook_z",
}


def act_name(name: str, layer: int | None = None) -> str:
    """The full hook name of ``name`` (a key of :data:`FORMS`) at ``layer`` (none for the embeddings)."""
    if name not in FORMS:
        raise ValueError(f"unknown hook {name!r} (known: {', '.join(FORMS)})")
    form = FORMS[name]
    if ("{l}" in form) != (layer is not None):
        raise ValueError(f"hook {name!r} {'needs' if '{l}' in form else 'takes no'} layer")
    return form.format(l=layer)
