"""Build a gpt2-small-shaped Hugging Face GPT-2 folder for benchmarking, from the real tensors we have.

Question: how fast and how memory-hungry is every script at real gpt2-small size (vocabulary 50257,
12 layers, 12 heads, d_model 768, n_ctx 1024) when the real weights cannot be downloaded?

Method: ``../shared/gpt2/gpt2_small_partial_f32.safetensors`` holds the real OpenAI GPT-2 small
tensors except the token embedding and the MLP weight matrices (see its README). Those real tensors
(``wpe``, every layer norm, every attention weight and bias, the MLP biases, ``ln_f``) are copied
unchanged; the missing ones are drawn from a seeded normal distribution of matching scale:

* ``wte`` [50257, 768]: N(0, 0.14^2) per entry, so a token row has norm about 0.14 * sqrt(768) = 3.9,
  the same order as the real positional rows in the file (mean row norm 3.39) and as the token
  rows of the released model (roughly 3-4). wte is also the (tied) unembedding, so logits have a
  realistic spread.
* ``h.i.mlp.c_fc.weight`` [768, 3072]: N(0, s^2) with s = the std of block i's real query/key
  weights, so MLP pre-activations are as large as the attention scores' inputs in that block.
* ``h.i.mlp.c_proj.weight`` [3072, 768]: N(0, s^2) with s = the std of block i's real attention
  output projection times sqrt(768 / 3072), so the MLP writes to the residual stream with about the
  variance of the attention output despite its 4x wider input.

The attention circuits (W_Q, W_K, W_V, W_O of every head, L1H5 included) are therefore exactly
gpt2-small's; what a head reads from the embedding is not (random token embeddings, random MLPs),
so semantic results on this model mean nothing: it exists to measure time and memory.

Outputs (each written atomically: a temporary folder beside the target, then a rename):

* ``--out DIR`` (default ``bench/model/``, git-ignored): an HF GPT-2 folder (config.json with
  n_ctx 1024 as in the hub's ``gpt2`` config, model.safetensors, the vendored GPT-2 tokenizer
  files) that ``--model DIR`` loads offline.
* ``--hf-cache DIR``: the same files laid out as the Hugging Face hub cache entry of ``gpt2``
  (``DIR/hub/models--gpt2/refs/main`` holds a revision id; ``snapshots/<id>/`` links to
  ``blobs/``), so that with ``HF_HOME=DIR HF_HUB_OFFLINE=1`` both
  ``HookedTransformer.from_pretrained("gpt2-small")`` and ``common.model.load_model("gpt2-small")``
  load it. ``--verify`` then checks that both routes give the same W_Q for L1H5 and that it equals
  the shared file's c_attn slice (unprocessed, and after TransformerLens' fold_ln: rows scaled by
  ln_1's weight, then centred over d_model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "gpt2" / "gpt2_small_partial_f32.safetensors"
TOKENIZER_DIR = ROOT / "common" / "tokenizer"
DEFAULT_OUT = ROOT / "bench" / "model"
VOCAB, D_MODEL, N_LAYERS, N_HEADS, N_CTX = 50257, 768, 12, 12, 1024
D_MLP = 4 * D_MODEL
WTE_STD = 0.14

# The hub's gpt2 config.json, field for field; TransformerLens' GPT-2 conversion reads n_ctx.
HUB_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": N_CTX,
    "n_embd": D_MODEL,
    "n_head": N_HEADS,
    "n_layer": N_LAYERS,
    "n_positions": N_CTX,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": VOCAB,
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def build_state_dict(shared: Path = SHARED, seed: int = 0) -> dict:
    """Real tensors from ``shared`` plus the seeded stand-ins described in the module docstring."""
    import torch
    from safetensors.torch import load_file

    if not shared.exists():
        raise SystemExit(f"error: {shared} not found (the partial gpt2-small tensors; see ../shared/gpt2/README.md)")
    sd = load_file(str(shared))
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    if "wte.weight" in sd or any(f"h.{i}.mlp.c_fc.weight" in sd for i in range(N_LAYERS)):
        raise SystemExit(f"error: {shared} unexpectedly holds wte/MLP weights; this builder would overwrite them")
    sd["wte.weight"] = normal((VOCAB, D_MODEL), WTE_STD)
    for i in range(N_LAYERS):
        qk = sd[f"h.{i}.attn.c_attn.weight"][:, : 2 * D_MODEL]
        attn_out = sd[f"h.{i}.attn.c_proj.weight"]
        sd[f"h.{i}.mlp.c_fc.weight"] = normal((D_MODEL, D_MLP), qk.std().item())
        sd[f"h.{i}.mlp.c_proj.weight"] = normal((D_MLP, D_MODEL), attn_out.std().item() * math.sqrt(D_MODEL / D_MLP))
    return {k: v.contiguous() for k, v in sorted(sd.items())}


def write_folder_files(folder: Path, state_dict: dict, seed: int) -> None:
    from safetensors.torch import save_file

    save_file(state_dict, str(folder / "model.safetensors"), metadata={
        "format": "pt",
        "note": f"bench model: real gpt2-small tensors from {SHARED.name} + seeded random wte/MLP weights (seed {seed})",
    })
    (folder / "config.json").write_text(json.dumps(HUB_CONFIG, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)
    (folder / "BENCH_MODEL.md").write_text(
        "Benchmark stand-in for gpt2-small built by bench/build_model.py "
        f"(seed {seed}): real attention/LN/wpe/bias tensors, random wte and MLP weights. "
        "Not a language model; for timing and memory only.\n"
    )


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a fully written ``tmp`` folder onto ``target`` (old contents removed only afterwards)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_folder(out: Path, seed: int = 0) -> Path:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_folder_files(tmp, build_state_dict(seed=seed), seed)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lay_out_hf_cache(folder: Path, hf_home: Path, repo: str = "gpt2") -> Path:
    """Copy an HF model folder into ``hf_home`` as the hub cache entry of ``repo``; returns the snapshot.

    Layout as huggingface_hub writes it: blobs named by content hash, ``snapshots/<revision>/<file>``
    relative symlinks to them, ``refs/main`` holding the revision. The revision id is derived from the
    files' hashes, so rebuilding identical content gives the same id.
    """
    folder, hf_home = Path(folder), Path(hf_home)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    hashes = {p.name: _sha256(p) for p in files}
    revision = hashlib.sha1("".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()

    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    target = hub / f"models--{repo.replace('/', '--')}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=hub))
    try:
        (tmp / "blobs").mkdir()
        (tmp / "refs").mkdir()
        snap = tmp / "snapshots" / revision
        snap.mkdir(parents=True)
        for p in files:
            blob = tmp / "blobs" / hashes[p.name]
            if not blob.exists():
                shutil.copyfile(p, blob)
            (snap / p.name).symlink_to(Path("..") / ".." / "blobs" / hashes[p.name])
        (tmp / "refs" / "main").write_text(revision)  # no newline, as huggingface_hub writes it
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "snapshots" / revision


# Run in a fresh interpreter: HF_HOME / HF_HUB_OFFLINE must be set before huggingface_hub is imported.
_VERIFY_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from safetensors import safe_open
from transformer_lens import HookedTransformer
from common.model import load_model
torch.set_grad_enabled(False)
L, H, D = 1, 5, 64
with safe_open(sys.argv[2], "pt") as f:
    c_attn = f.get_tensor(f"h.{L}.attn.c_attn.weight")
    ln1_w = f.get_tensor(f"h.{L}.ln_1.weight")
raw_wq = c_attn[:, H * D:(H + 1) * D]
raw = HookedTransformer.from_pretrained("gpt2-small", device="cpu", fold_ln=False,
                                        center_writing_weights=False, center_unembed=False)
res = {"unprocessed_vs_file_maxdiff": (raw.W_Q[L, H] - raw_wq).abs().max().item()}
del raw
tl = HookedTransformer.from_pretrained("gpt2-small", device="cpu")
toks = tl.to_tokens("The cat sat on the mat with a dog and a red ball.")
tl_wq, tl_logits = tl.W_Q[L, H].clone(), tl(toks)
res["cfg"] = [tl.cfg.n_layers, tl.cfg.n_heads, tl.cfg.d_model, tl.cfg.d_vocab, tl.cfg.n_ctx]
del tl
# fold_ln scales W_Q's rows by ln_1's weight, then centres it over d_model (LNPre centres its input).
folded = ln1_w[:, None] * raw_wq
res["fold_ln_vs_file_maxdiff"] = (tl_wq - folded + folded.mean(0, keepdim=True)).abs().max().item()
for route, name in (("load_model_gpt2_small", "gpt2-small"), ("load_model_local_folder", sys.argv[3])):
    m = load_model(name)
    res[route + "_W_Q_maxdiff"] = (m.W_Q[L, H] - tl_wq).abs().max().item()
    res[route + "_logits_maxdiff"] = (m(toks) - tl_logits).abs().max().item()
    del m
print("RESULT " + json.dumps(res))
"""


def verify(hf_home: Path, folder: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _VERIFY_CHILD, str(ROOT), str(SHARED), str(folder)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: verification failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    ok = (res["cfg"] == [N_LAYERS, N_HEADS, D_MODEL, VOCAB, N_CTX]
          and res["load_model_gpt2_small_W_Q_maxdiff"] == 0.0 and res["unprocessed_vs_file_maxdiff"] == 0.0
          and res["load_model_local_folder_W_Q_maxdiff"] < 1e-6 and res["fold_ln_vs_file_maxdiff"] < 1e-6
          and res["load_model_gpt2_small_logits_maxdiff"] < 1e-4 and res["load_model_local_folder_logits_maxdiff"] < 1e-3)
    res["ok"] = ok
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="HF GPT-2 folder to write")
    p.add_argument("--hf-cache", type=Path, default=None, metavar="DIR",
                   help="also lay the folder out as the hub cache entry of 'gpt2' under DIR (use HF_HOME=DIR)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random wte and MLP weights")
    p.add_argument("--force", action="store_true", help="rebuild --out even if it exists")
    p.add_argument("--verify", action="store_true",
                   help="with --hf-cache: load both routes offline and compare W_Q of L1H5 with the shared file")
    args = p.parse_args(argv)

    out = args.out.resolve()
    stamp = out / "BENCH_MODEL.md"
    if args.force or not stamp.exists() or f"seed {args.seed})" not in stamp.read_text():
        print(f"building {out} ...", flush=True)
        build_folder(out, args.seed)
    else:
        print(f"{out} exists (use --force to rebuild)")
    if args.hf_cache:
        snap = lay_out_hf_cache(out, args.hf_cache)
        print(f"hub cache entry: {snap}\n  use: HF_HOME={args.hf_cache.resolve()} HF_HUB_OFFLINE=1")
        if args.verify:
            res = verify(args.hf_cache.resolve(), out)
            print(json.dumps(res, indent=2))
            if not res["ok"]:
                print("error: verification failed", file=sys.stderr)
                return 1
    elif args.verify:
        raise SystemExit("error: --verify needs --hf-cache DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
