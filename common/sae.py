"""Sparse autoencoders (sae_lens) of the residual stream: where one comes from, and the planted demo SAE.

Three sources, in the order :func:`wants_demo_sae` / :func:`load_sae` decide:

* ``--sae-path FOLDER``: a folder written by ``sae.save_model`` (cfg.json +
  sae_weights.safetensors), loaded with ``SAE.load_from_disk`` (offline).
* ``--sae-release/--sae-id``: ``SAE.from_pretrained`` from the Hugging Face hub (or its cache).
  Default: Joseph Bloom's residual-stream SAEs ``gpt2-small-res-jb`` (24576 features), id
  ``blocks.1.hook_resid_pre``, the residual stream entering layer 1 (what L1H5 reads). Offline
  without a cached copy this fails with a message saying so.
* ``--model planted`` with none of those options: :func:`planted_demo_sae`, an SAE of known
  planted directions (:func:`build_planted_sae`) saved once under the cache, keyed by the builder's version and the model's
  fingerprint.

Every failure is a one-line SystemExit (no traceback), raised before any result is written.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from common.effective_embeddings import effective_embeddings, mean_prompt_tokens
from common.errors import error_summary
from common.hook_names import act_name
from common.outputs import cache_dir, model_fingerprint
from common.planted import ground_truth
from common.planted_names import is_planted

DEFAULT_RELEASE = "gpt2-small-res-jb"
DEFAULT_SAE_ID = act_name("resid_pre", 1)


def add_sae_flags(p) -> None:
    """--sae-release, --sae-id, --sae-path, --hook: the one spelling of "which SAE"."""
    p.add_argument("--sae-release", default=None,
                   help=f"sae_lens release on the Hugging Face hub (default {DEFAULT_RELEASE}; with --model planted "
                        "and no SAE option, the planted demo SAE is used instead)")
    p.add_argument("--sae-id", default=None, help=f"SAE id within the release (default {DEFAULT_SAE_ID})")
    p.add_argument("--sae-path", default=None,
                   help="local SAE folder (cfg.json + sae_weights.safetensors); overrides the release")
    p.add_argument("--hook", default=None, help="residual hook the SAE reads (default: from the SAE's metadata, "
                                                 "else blocks.<layer>.hook_resid_pre)")


def wants_demo_sae(args) -> bool:
    """True for ``--model planted`` without any SAE option (the offline demo)."""
    return is_planted(args.model) and not (args.sae_path or args.sae_release or args.sae_id)


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
    """The hook the SAE reads: ``override``, else the SAE's metadata, else the layer's resid_pre."""
    if override:
        return override
    meta = getattr(sae.cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    return name or act_name("resid_pre", layer)


def check_sae(sae, model, layer: int, hook_override: str | None) -> str:
    """The hook name, after checking that ``sae`` fits ``model`` (SystemExit otherwise); warns when
    the SAE reads another residual stream than the input of ``layer``."""
    if sae.cfg.d_in != model.cfg.d_model:
        raise SystemExit(f"error: the SAE reads d_in={sae.cfg.d_in} but the model's residual stream has "
                         f"d_model={model.cfg.d_model}: this SAE is for another model")
    hook = sae_hook(sae, layer, hook_override)
    if hook not in model.hook_dict:
        raise SystemExit(f"error: hook {hook!r} does not exist in this model (use --hook)")
    if hook != act_name("resid_pre", layer):
        print(f"warning: the SAE reads {hook}, not blocks.{layer}.hook_resid_pre (the input of layer {layer}); "
              "its features are still residual directions, but they were trained elsewhere", file=sys.stderr)
    return hook


DEMO_SAE_VERSION = "demo-v2"  # bump when build_planted_sae changes (part of the demo SAE's cache key)
WORD_ENC_BIAS, CATEGORY_ENC_BIAS, RANDOM_ENC_BIAS = -1.0, -0.75, -1.0


@torch.no_grad()
def mean_residual(model, layer: int = 1, seed: int = 0) -> torch.Tensor:
    """Mean of ``blocks.<layer>.hook_resid_pre`` over the non-BOS positions of the effective
    embeddings' prompt mix (:func:`common.effective_embeddings.mean_prompt_tokens`) [d_model]."""
    tokens = mean_prompt_tokens(model.tokenizer, seed).to(model.cfg.device)[:, : model.cfg.n_ctx]
    name = act_name("resid_pre", layer)
    _, cache = model.run_with_cache(tokens, names_filter=name, stop_at_layer=layer + 1)
    return cache[name][:, 1:].reshape(-1, cache[name].shape[-1]).mean(0).float().cpu()


def build_planted_sae(model, categories: dict[str, list[int]], n_random: int = 48, seed: int = 0):
    """A StandardSAE (sae_lens) whose decoder rows are known directions of the planted model.

    Decoder rows, in order: one "word" feature per category word (its effective embedding), one
    "category" feature per category (the mean of its words' effective embeddings), ``n_random``
    random directions; all centred and unit norm.

    Encoder: like a trained SAE, the input is measured from ``b_dec`` = the mean residual entering
    layer 1 (:func:`mean_residual`; sae_lens subtracts b_dec before encoding). This matters from
    planted v3 on: every residual there shares a large common part (the mean position, norm 1.34,
    layer-0 and MLP0 biases, the non-BOS direction), and a decoder row (an effective embedding)
    contains it too, so without b_dec every word feature's pre-activation exceeded 1 at every
    position (all features fired everywhere, were dismissed as "bias" features, and the group map
    of semantic_head.py was all NaN). W_enc is W_dec^T. From the construction (common.planted):
    on its own word a word feature reads the word's own components K, U, V, C, i.e.
    (A_K^2 + A_U^2 + A_V^2 + A_C^2) / |x| ~ 3.3 / 2.6 ~ 1.26 (|x| the residual's norm); on another
    word of its category only K and C, ~ 2 / 2.6 ~ 0.77; on any other token about 0. With bias -1 a
    word feature fires on its own word only. A category feature reads K and C of every word of its
    category (~ 0.9, ~ 0 elsewhere); with bias -0.75 it fires on its category's words, more
    weakly than each word's own feature, so the feature that fires most on a word is that
    word's feature. Random features (bias -1) stay silent. Returns (sae, kinds, category of each
    feature or None).
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    E = effective_embeddings(model, 1)
    words = [t for ids in categories.values() for t in ids]
    rows = [E[t] for t in words] + [E[torch.as_tensor(ids)].mean(0) for ids in categories.values()]
    g = torch.Generator().manual_seed(seed)
    rnd = torch.randn(n_random, E.shape[1], generator=g)
    D = torch.cat([torch.stack(rows), rnd - rnd.mean(1, keepdim=True)])
    D = D / D.norm(dim=1, keepdim=True)
    cfg = StandardSAEConfig(d_in=E.shape[1], d_sae=D.shape[0], apply_b_dec_to_input=True,
                            metadata=SAEMetadata(hook_name=act_name("resid_pre", 1)))
    sae = StandardSAE(cfg)
    bias = torch.tensor([WORD_ENC_BIAS] * len(words) + [CATEGORY_ENC_BIAS] * len(categories)
                        + [RANDOM_ENC_BIAS] * n_random)
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T)
        sae.b_dec.copy_(mean_residual(model, 1, seed))
        sae.b_enc.copy_(bias)
    kinds = ["word"] * len(words) + ["category"] * len(categories) + ["random"] * n_random
    cat_of = [c for c, ids in categories.items() for _ in ids] + list(categories) + [None] * n_random
    return sae, kinds, cat_of


def planted_demo_sae(model) -> Path:
    """The planted demo SAE saved (once, atomically) under the cache; its folder."""
    folder = cache_dir() / "sae" / f"planted-demo-{DEMO_SAE_VERSION}-{model_fingerprint(model)}"
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


def load_planted_demo_sae(model):
    """:func:`planted_demo_sae` loaded; (sae, folder)."""
    from sae_lens import SAE

    folder = planted_demo_sae(model)
    return SAE.load_from_disk(str(folder)), folder
