"""Sparse autoencoders (sae_lens) of the residual stream: where one comes from, and the planted demo SAE.

Three sources, in the order :func:`wants_demo_sae` / :func:`load_sae` decide:

* ``--sae-path FOLDER``: a folder written by ``sae.save_model`` (cfg.json +
  sae_weights.safetensors), loaded with ``SAE.load_from_disk`` (offline).
* ``--sae-release/--sae-id``: ``SAE.from_pretrained`` from the Hugging Face hub (or its cache).
  Default: Joseph Bloom's residual-stream SAEs ``gpt2-small-res-jb`` (24576 features), id
  ``blocks.1.hook_resid_pre``, the residual stream entering layer 1 (what L1H5 reads). Offline
  without a cached copy this fails with a message saying so.
* ``--model planted`` with none of those options: :func:`planted_demo_sae`, an SAE of known
  planted directions (:func:`build_planted_sae`) saved once under the cache, keyed by the model's
  fingerprint.

Every failure is a one-line SystemExit (no traceback), raised before any result is written.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from common.effective_embeddings import effective_embeddings
from common.errors import error_summary
from common.outputs import cache_dir, model_fingerprint
from common.planted import ground_truth

DEFAULT_RELEASE = "gpt2-small-res-jb"
DEFAULT_SAE_ID = "blocks.1.hook_resid_pre"


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
    return args.model == "planted" and not (args.sae_path or args.sae_release or args.sae_id)


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
    return name or f"blocks.{layer}.hook_resid_pre"


def check_sae(sae, model, layer: int, hook_override: str | None) -> str:
    """The hook name, after checking that ``sae`` fits ``model`` (SystemExit otherwise); warns when
    the SAE reads another residual stream than the input of ``layer``."""
    if sae.cfg.d_in != model.cfg.d_model:
        raise SystemExit(f"error: the SAE reads d_in={sae.cfg.d_in} but the model's residual stream has "
                         f"d_model={model.cfg.d_model}: this SAE is for another model")
    hook = sae_hook(sae, layer, hook_override)
    if hook not in model.hook_dict:
        raise SystemExit(f"error: hook {hook!r} does not exist in this model (use --hook)")
    if hook != f"blocks.{layer}.hook_resid_pre":
        print(f"warning: the SAE reads {hook}, not blocks.{layer}.hook_resid_pre (the input of layer {layer}); "
              "its features are still residual directions, but they were trained elsewhere", file=sys.stderr)
    return hook


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


def load_planted_demo_sae(model):
    """:func:`planted_demo_sae` loaded; (sae, folder)."""
    from sae_lens import SAE

    folder = planted_demo_sae(model)
    return SAE.load_from_disk(str(folder)), folder
