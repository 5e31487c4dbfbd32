"""Load any supported model as a processed HookedTransformer.

Three kinds of names are understood by :func:`load_model`:

* ``gpt2-small`` (alias ``gpt2``, the default) and the other GPT-2-family models TransformerLens
  knows that share GPT-2's tokenizer (:mod:`common.hub_models`: gpt2-medium, gpt2-large, gpt2-xl,
  distilgpt2, the Stanford CRFM seeds ``stanford-crfm/alias-gpt2-small-x21`` ...), through
  ``HookedTransformer.from_pretrained``, i.e. the Hugging Face cache or hub. Offline, populate the
  cache once and set ``HF_HUB_OFFLINE=1``; a missing cache entry is named in a one-line message.
  The tokenizer is the GPT-2 copy vendored in ``common/tokenizer`` (the same vocabulary and merges
  for all of them), so only ``config.json`` and the weights are read from the cache.
* a path to a local Hugging Face GPT-2 folder (``config.json``, ``model.safetensors`` or
  ``pytorch_model.bin``, tokenizer files): loaded without any network access.
* ``planted``: the offline demo model of :mod:`common.planted`, generated deterministically into a
  cache folder and then loaded through the same local-folder route; ``planted:<twin>`` likewise
  builds one of its twins (:mod:`common.planted_names`), whose named claims are false by
  construction.

Every route applies the ``from_pretrained`` defaults (fold_ln, center_writing_weights,
center_unembed, fold_value_biases), so W_Q/W_K match published TransformerLens analyses.

The processed weights are cached on disk (:mod:`common.weights_cache`): the first load of a model
builds and saves them, every later load (any process) memory-maps them back, with identical
weights, in about a second and half the peak memory. ``L1H5_WEIGHTS_CACHE=0`` builds every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from common.errors import error_summary
from common.gpt2_tokenizer import TOKENIZER_DIR, load_tokenizer
from common.hub_models import cache_entry, official_name
from common.planted import planted_folder
from common.planted_names import is_planted, planted_twin
from common.weights_cache import PROCESSING, Source, load_processed

if TYPE_CHECKING:  # TransformerLens is imported where a model is built: a bad folder fails in seconds
    from transformer_lens import HookedTransformer

REAL_NAMES = {"gpt2-small", "gpt2"}  # gpt2-small; the other hub names: common.hub_models
PLANTED = "planted"


class ModelUnavailable(RuntimeError):
    """The requested weights cannot be had; the message says what to do instead."""


def resolve_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available (use --device cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("error: --device mps requested but MPS is not available (use --device cpu)")
    return device


# Models loaded in this process, by (name, device). Scripts never change a model's weights (every
# edit is a hook or a separate scorer), so several analyses run in one process (run_all's tests, a
# notebook) share one load. A local folder is keyed by its resolved path and config/weights mtimes.
_LOADED: dict[tuple, "HookedTransformer"] = {}


def load_model(name: str = "gpt2-small", device: str = "cpu") -> HookedTransformer:
    """Return a processed HookedTransformer (with tokenizer) for ``name``; see module docstring.

    Loaded once per process and (name, device); :func:`forget_models` drops them.
    """
    device = resolve_device(device)
    key = _cache_key(name, device)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time: gpt2-small-sized models cost ~1 GB each
        _LOADED[key] = _load(name, device)
    return _LOADED[key]


def forget_models() -> None:
    """Drop the in-process models of :func:`load_model` (the next call loads again)."""
    _LOADED.clear()


def _cache_key(name: str, device: str) -> tuple:
    path = Path(name).expanduser()
    if official_name(name):
        return (official_name(name), device)  # an alias shares its model's load
    if is_planted(name) or not path.exists():
        return (name, device)
    stamps = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(path.glob("*")) if p.is_file())
    return (str(path.resolve()), device, stamps)


# What the processed weights depend on besides their source files: this loader's code.
_LOADER_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _load(name: str, device: str) -> HookedTransformer:
    if is_planted(name):
        return _load_folder(planted_folder(twin=planted_twin(name)), device)
    if official_name(name):  # a hub name wins over a folder of that name (use ./name for the folder)
        return _load_hub(official_name(name), device)
    path = Path(name).expanduser()
    if path.exists():
        return _load_folder(path, device)
    raise ModelUnavailable(
        f"unknown model {name!r}: use 'gpt2-small', another GPT-2-family name (gpt2-medium, gpt2-large, "
        "gpt2-xl, distilgpt2, stanford-crfm/alias-gpt2-small-x21, ...), 'planted', or a path to a local "
        "Hugging Face GPT-2 folder (config.json + model.safetensors/pytorch_model.bin + tokenizer)"
    )


def _load_folder(folder: Path, device: str) -> HookedTransformer:
    """A local folder through the processed-weights cache (built by :func:`load_local_folder`)."""
    folder = Path(folder)
    config, weights = _folder_files(folder)
    _check_vocabulary(folder, config)
    model = load_processed(Source(
        route="local-folder", origin=str(folder.resolve()),
        files={"config.json": config, "weights": weights}, code=_LOADER_CODE,
        build=lambda: load_local_folder(folder, "cpu"),
        tokenizer=lambda: load_tokenizer(_tokenizer_dir(folder)),
    ), device)
    model.name_or_path = str(folder)
    return model


def _load_hub(repo: str, device: str) -> HookedTransformer:
    """A hub model (``repo``: its official name, e.g. "gpt2", "gpt2-medium") through the
    processed-weights cache, keyed by the hub files ``from_pretrained`` reads; without them (no
    cache entry, no network) the uncached route gives the usual one-line message."""
    files = _hub_files(repo)
    if files is None:
        return _from_pretrained(repo, device)
    return load_processed(Source(route=f"hf:{repo}", origin=f"hf:{repo}", files=files, code=_LOADER_CODE,
                                 build=lambda: _from_pretrained(repo, "cpu"), tokenizer=load_tokenizer), device)


def _hub_files(repo: str) -> dict[str, Path] | None:
    """config.json and the weights file of hub repository ``repo`` as transformers picks them
    (model.safetensors, else pytorch_model.bin), from the HF cache (refreshed first when online)."""
    try:
        from huggingface_hub import hf_hub_download

        files = {"config.json": Path(hf_hub_download(repo, "config.json"))}
        for name in ("model.safetensors", "pytorch_model.bin"):
            try:
                files["weights"] = Path(hf_hub_download(repo, name))
                return files
            except Exception:  # not cached / not on the hub: try the next format
                continue
    except Exception:  # no cache entry and no network: the uncached route explains
        return None
    return None


def _from_pretrained(repo: str, device: str) -> HookedTransformer:
    """``HookedTransformer.from_pretrained`` with the processing defaults and the vendored GPT-2
    tokenizer; any failure becomes a one-line :class:`ModelUnavailable` naming the cache entry."""
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(repo, device=device, tokenizer=load_tokenizer(), **PROCESSING)
    except Exception as exc:  # the hub/cache raise many different types; all mean "no weights"
        raise ModelUnavailable(_unavailable_message(repo, exc)) from None


def _unavailable_message(repo: str, exc: BaseException) -> str:
    """One line: which model, whether its cache entry is missing, incomplete or complete (then the
    error is in loading it, not in fetching it), where the cache is, and what to do."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    label = "gpt2-small" if repo == "gpt2" else repo
    entry = Path(HF_HUB_CACHE) / cache_entry(repo)
    why = f"could not load {label} weights ({error_summary(exc)[:160]})"
    options = ("use --model /path/to/gpt2 (a local HF GPT-2 folder) or --model planted (the offline demo model)")

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name), str)

    if entry.exists() and cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin")):
        return (f"{why}, although the cache entry {entry.name} in {entry.parent} holds config.json and the "
                f"weights: the error is in loading them, not in fetching them; {options}")
    state = "is incomplete (config.json or the weights file missing)" if entry.exists() else "is missing"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    where = (f"HF_HUB_OFFLINE=1 is already set and the cache entry {entry.name} in {entry.parent} {state}"
             if offline else
             f"no network, and the cache entry {entry.name} in {entry.parent} {state} "
             "(export HF_HUB_OFFLINE=1 once it is populated)")
    return f"{why}: {where}; run once with network access so Hugging Face caches {repo!r}, or {options}"


def load_local_folder(folder: str | Path, device: str = "cpu") -> HookedTransformer:
    """Load a Hugging Face GPT-2 folder fully offline, processed like ``from_pretrained``.

    ``HookedTransformer.from_pretrained`` would ask the hub for the config even when given
    ``hf_model``, so the config is converted from the local ``config.json`` instead.
    """
    from transformers import GPT2Config

    folder = Path(folder)
    _, weights = _folder_files(folder)
    hf_cfg = GPT2Config.from_pretrained(str(folder))
    _check_state_dict(weights, hf_cfg)  # before TransformerLens is imported: a bad file fails fast
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf_model = GPT2LMHeadModel.from_pretrained(str(folder), config=hf_cfg, dtype=torch.float32)
    tokenizer = load_tokenizer(_tokenizer_dir(folder))

    cfg = gpt2_tl_config(hf_cfg, device)
    state_dict = convert_gpt2_weights(hf_model, cfg)
    del hf_model  # the state dict holds the tensors; each is freed once processing replaces it
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **PROCESSING)
    del state_dict
    model.move_model_modules_to_device()
    model.eval()
    model.name_or_path = str(folder)
    return model


def _folder_files(folder: Path) -> tuple[Path, Path]:
    """(config.json, weights file) of a local HF GPT-2 folder, or ModelUnavailable saying what is wrong."""
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelUnavailable(f"{folder}: no config.json; not a Hugging Face model folder")
    weights = [folder / p for p in ("model.safetensors", "pytorch_model.bin") if (folder / p).exists()]
    if not weights:
        raise ModelUnavailable(f"{folder}: no model.safetensors or pytorch_model.bin")
    try:
        raw_cfg = json.loads(config_path.read_text())
    except ValueError as exc:
        raise ModelUnavailable(f"{config_path}: not valid JSON ({exc})") from None
    if raw_cfg.get("model_type", "gpt2") != "gpt2":
        raise ModelUnavailable(f"{folder}: model_type {raw_cfg.get('model_type')!r}; only GPT-2 folders are supported")
    return config_path, weights[0]


def _check_vocabulary(folder: Path, config_path: Path) -> None:
    """ModelUnavailable (one line) when the folder's vocabulary is smaller than the tokenizer it is
    read with: the tokenizer's ids (BOS is 50256 in GPT-2's) would index past the embedding, which
    otherwise surfaces as an IndexError deep inside a forward pass. A larger vocabulary (padded
    to a multiple of 64, as some GPT-2 checkpoints are) is fine."""
    n_vocab = json.loads(config_path.read_text()).get("vocab_size", 50257)
    tok_dir = _tokenizer_dir(folder)
    n_tok = len(load_tokenizer(tok_dir))
    if n_vocab < n_tok:
        which = "the folder's own tokenizer files" if tok_dir == folder else f"GPT-2's tokenizer in {TOKENIZER_DIR}"
        raise ModelUnavailable(
            f"{folder}: the model's vocabulary has {n_vocab:,} tokens (config.json vocab_size) but its tokenizer "
            f"({which}) has {n_tok:,}, so token ids would index past the embedding; use a GPT-2-vocabulary "
            f"model (vocab_size >= {n_tok:,}) or put the model's own tokenizer (vocab.json, merges.txt) in the folder")


def _tokenizer_dir(folder: Path) -> Path:
    has_tokenizer = any((folder / f).exists() for f in ("tokenizer.json", "vocab.json"))
    return folder if has_tokenizer else TOKENIZER_DIR


def gpt2_tl_config(hf_cfg, device: str = "cpu"):
    """HookedTransformerConfig for a GPT-2 HF config, as TransformerLens' GPT-2 conversion builds it.

    TransformerLens' own converter re-reads the config from the hub (or from a folder's
    config.json, where it needs ``n_ctx``, a key transformers 5 no longer writes), so the same
    fields are mapped here from the local config. fold_ln turns the LN type into ``LNPre``.
    """
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=hf_cfg.n_embd,
        d_head=hf_cfg.n_embd // hf_cfg.n_head,
        n_heads=hf_cfg.n_head,
        d_mlp=hf_cfg.n_inner or 4 * hf_cfg.n_embd,
        n_layers=hf_cfg.n_layer,
        n_ctx=hf_cfg.n_positions,
        eps=hf_cfg.layer_norm_epsilon,
        d_vocab=hf_cfg.vocab_size,
        act_fn=hf_cfg.activation_function,
        use_attn_scale=getattr(hf_cfg, "scale_attn_weights", True),
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=hf_cfg.scale_attn_by_inverse_layer_idx,
        normalization_type="LNPre",
        original_architecture="GPT2LMHeadModel",
        model_name=Path(str(hf_cfg._name_or_path or "local-gpt2")).name,
        init_weights=False,
        default_prepend_bos=True,
        device=device,
        dtype=torch.float32,
    )


def _check_state_dict(weights_file: Path, hf_cfg) -> None:
    """Name every missing or mis-shaped tensor before transformers silently random-initialises it."""
    try:
        if weights_file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights_file), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            sd = torch.load(weights_file, map_location="cpu", weights_only=True)
            shapes = {k: tuple(v.shape) for k, v in sd.items()}
    except Exception as exc:  # SafetensorError, UnpicklingError, EOFError, RuntimeError ...: all "unreadable"
        raise ModelUnavailable(
            f"{weights_file}: unreadable weights file, corrupt or truncated ({error_summary(exc)[:120]}); "
            "save or download it again (e.g. model.save_pretrained(folder)), or use --model planted") from None
    shapes = {k.removeprefix("transformer."): v for k, v in shapes.items()}
    d, v, n = hf_cfg.n_embd, hf_cfg.vocab_size, hf_cfg.n_positions
    m = hf_cfg.n_inner or 4 * d
    expected = {"wte.weight": (v, d), "wpe.weight": (n, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(hf_cfg.n_layer):
        expected |= {
            f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,),
            f"h.{i}.attn.c_attn.weight": (d, 3 * d), f"h.{i}.attn.c_attn.bias": (3 * d,),
            f"h.{i}.attn.c_proj.weight": (d, d), f"h.{i}.attn.c_proj.bias": (d,),
            f"h.{i}.ln_2.weight": (d,), f"h.{i}.ln_2.bias": (d,),
            f"h.{i}.mlp.c_fc.weight": (d, m), f"h.{i}.mlp.c_fc.bias": (m,),
            f"h.{i}.mlp.c_proj.weight": (m, d), f"h.{i}.mlp.c_proj.bias": (d,),
        }
    missing = sorted(k for k in expected if k not in shapes)
    wrong = sorted(f"{k} {shapes[k]} (expected {s})" for k, s in expected.items() if k in shapes and shapes[k] != s)
    if missing or wrong:
        msg = [f"{weights_file}: incomplete GPT-2 weights"]
        if missing:
            msg.append("missing: " + ", ".join(missing[:12]) + (f" (+{len(missing) - 12} more)" if len(missing) > 12 else ""))
        if wrong:
            msg.append("wrong shape: " + ", ".join(wrong[:12]))
        raise ModelUnavailable("\n".join(msg))
