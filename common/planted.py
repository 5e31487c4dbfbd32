"""The planted model: a small GPT-2 whose layer-1 head 5 follows L1H5's three rules by construction.

Why: real gpt2-small weights cannot be downloaded offline, and a test can only check that an
analysis *recovers* a mechanism if the mechanism is known exactly. This model keeps the real GPT-2
vocabulary and tokenizer and the GPT-2 architecture (2 layers, 8 heads of 40 dims, d_model 320),
and is saved as an ordinary Hugging Face GPT-2 folder, so it is loaded through the same route as
any local model.

Construction (all writes live in orthonormal, zero-mean blocks of the residual basis, so LayerNorm
only rescales and TransformerLens' centring leaves the weights as designed):

* token embedding: a category word (category c, index j in its list) writes K_c (category key),
  two identity codes U_j and V_j (orthogonal within a category, so distinct words never suppress
  each other while copies of one token always do) and N (every non-BOS token); BOS writes B; all
  other tokens write N plus a random vector in the unused directions;
* positional embedding: small sinusoids in their own block P (L1H5 never reads P);
* layer 0: near-zero attention (its output is almost constant); MLP0 has one neuron per category
  reading K_c and writing C_c, so -- as in gpt2-small -- the category signal L1H5 reads is made
  by MLP0 from the token embedding;
* L1H5: W_Q W_K^T = w_C^2 sum_c C_c C_c^T + w_V^2 sum_j V_j V_j^T - w_U^2 sum_j U_j U_j^T
  + w_B^2 N B^T. The first term attracts same-category keys (rule 1); the second is a positive
  token-identity similarity and the third, with negative eigenvalues, outweighs it (rule 2: net
  self score LOGIT_SELF), so removing the negative eigenvalues makes each token its own top key;
  the last is an asymmetric BOS term (rule 3) and the source of the skew part. Its OV circuit copies the attended token's K and U into the residual, so the head
  matters for the logits;
* L1H0: a previous-token head reading only P (the positional contrast for ablations);
* every other head: random, diffuse.

:func:`ground_truth` exposes what tests check against (categories, the heads, the number of
negative eigenvalues of W_sym read off the built weights).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.gpt2_tokenizer import TOKENIZER_DIR, load_tokenizer
from common.outputs import cache_dir
from common.prompts import CATEGORIES, category_token_ids

VERSION = "planted-v2"
D_MODEL, N_LAYERS, N_HEADS, N_CTX = 320, 2, 8, 128
D_HEAD = D_MODEL // N_HEADS
D_MLP = 4 * D_MODEL  # TransformerLens' GPT-2 conversion ignores n_inner
TARGET = (1, 5)
POSITIONAL_HEAD = (1, 0)
N_CODES = max(len(w) for w in CATEGORIES.values())
N_FREQ = D_HEAD // 2  # positional code: N_FREQ sine/cosine pairs

# Residual norms of each written component (embedding, position, MLP0 output). The identity codes
# are shared across categories (word j of every category), so they are kept smaller than the
# category components: otherwise same-index words of different categories would look as similar
# (cosine) as same-category words.
A_K, A_U, A_V, A_N, A_C, A_B, A_P, A_OTHER = 1.0, 0.8, 0.8, 1.0, 1.0, 1.0, 0.1, 1.4
# Target attention logits (after 1/sqrt(d_head)) for L1H5 on a typical category query.
LOGIT_SAME_CATEGORY, LOGIT_SELF, LOGIT_BOS = 12.0, -6.0, 7.0
# Positive part of the identity signal: with the negative eigenvalues removed, self then beats
# every other word of its category by this margin (as scaling them to 0 does in gpt2-small).
LOGIT_IDENTITY = 4.0
LOGIT_PREV_TOKEN = 16.0


def _gelu_new(x: float) -> float:
    return float(torch.nn.functional.gelu(torch.tensor(x), approximate="tanh"))


def build_state_dict(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """The Hugging Face GPT-2 state dict (Conv1D [in, out] layout) and the ground truth."""

    rng = np.random.default_rng(seed)
    tok = load_tokenizer()
    vocab, bos = tok.vocab_size, tok.bos_token_id
    cat_ids = category_token_ids(tok)
    n_cat = len(cat_ids)
    d, dh = D_MODEL, D_HEAD

    # Orthonormal basis of the zero-mean subspace, carved into named blocks.
    g = rng.normal(size=(d, d))
    g[:, 0] = 1.0
    basis, _ = np.linalg.qr(g)
    basis = basis[:, 1:]  # column 0 spans the all-ones direction
    sizes = {"K": n_cat, "C": n_cat, "U": N_CODES, "V": N_CODES, "N": 1, "B": 1, "P": 2 * N_FREQ}
    blocks, start = {}, 0
    for name, size in sizes.items():
        blocks[name] = basis[:, start : start + size]
        start += size
    other = basis[:, start:]
    K, C, U, V, N, B, P = (blocks[k] for k in sizes)

    # Token embedding.
    wte = other @ rng.normal(size=(other.shape[1], vocab)) / np.sqrt(other.shape[1]) * A_OTHER
    wte = wte.T + A_N * N[:, 0]
    category_of = {}
    for c, ids in enumerate(cat_ids.values()):
        for j, t in enumerate(ids):
            wte[t] = A_K * K[:, c] + A_U * U[:, j] + A_V * V[:, j] + A_N * N[:, 0]
            category_of[t] = c
    wte[bos] = A_B * B[:, 0]

    # Positional embedding: s_p = [cos(w_f p), sin(w_f p)]_f / sqrt(N_FREQ), unit norm.
    omega = 2 * np.pi / np.geomspace(2.5, 4 * N_CTX, N_FREQ)
    pos = np.arange(N_CTX)[:, None] * omega[None, :]
    s = np.concatenate([np.cos(pos), np.sin(pos)], axis=1) / np.sqrt(N_FREQ)
    wpe = A_P * s @ P.T

    sd: dict[str, np.ndarray] = {"wte.weight": wte, "wpe.weight": wpe}
    for i in range(N_LAYERS):
        sd |= {f"h.{i}.ln_1.weight": np.ones(d), f"h.{i}.ln_1.bias": np.zeros(d)}
        sd |= {f"h.{i}.ln_2.weight": np.ones(d), f"h.{i}.ln_2.bias": np.zeros(d)}
        sd[f"h.{i}.attn.c_attn.bias"] = np.zeros(3 * d)
        sd[f"h.{i}.attn.c_proj.bias"] = np.zeros(d)
        sd[f"h.{i}.mlp.c_fc.bias"] = np.zeros(D_MLP)
        sd[f"h.{i}.mlp.c_proj.bias"] = np.zeros(d)
    sd |= {"ln_f.weight": np.ones(d), "ln_f.bias": np.zeros(d)}

    # Layer 0: tiny attention, so its output is nearly constant.
    sd["h.0.attn.c_attn.weight"] = rng.normal(scale=0.005, size=(d, 3 * d))
    sd["h.0.attn.c_proj.weight"] = rng.normal(scale=0.005, size=(d, d))

    # MLP0: neuron c reads K_c and writes C_c (with norm A_C for a category token).
    x_norm0 = np.sqrt(A_K**2 + A_U**2 + A_V**2 + A_N**2 + A_P**2)
    k_ln = np.sqrt(d) * A_K / x_norm0  # K_c coordinate after LN0
    gain, bias = 0.5, -3.0
    act = _gelu_new(gain * k_ln + bias)
    fc = np.zeros((d, D_MLP))
    fc[:, :n_cat] = gain * K
    fc_b = np.zeros(D_MLP)
    fc_b[:n_cat] = bias
    proj = np.zeros((D_MLP, d))
    proj[:n_cat] = (A_C / act) * C.T
    sd["h.0.mlp.c_fc.weight"], sd["h.0.mlp.c_fc.bias"], sd["h.0.mlp.c_proj.weight"] = fc, fc_b, proj

    # Layer 1 attention.
    scale = np.sqrt(dh)
    x_norm1 = np.sqrt(A_K**2 + A_U**2 + A_V**2 + A_N**2 + A_C**2 + A_P**2)
    ln1 = np.sqrt(d) / x_norm1  # LN1 gain on a category token's components
    ln1_bos = np.sqrt(d) / np.sqrt(A_B**2 + A_P**2)
    w_c = np.sqrt(LOGIT_SAME_CATEGORY * scale) / (ln1 * A_C)
    w_v = np.sqrt(LOGIT_IDENTITY * scale) / (ln1 * A_V)
    w_u = np.sqrt((LOGIT_SAME_CATEGORY + LOGIT_IDENTITY - LOGIT_SELF) * scale) / (ln1 * A_U)
    w_b = np.sqrt(LOGIT_BOS * scale / (ln1 * A_N * ln1_bos * A_B))
    # Other heads: random, giving attention logits with a spread of about 1.4.
    W_Q = rng.normal(scale=1.2 / np.sqrt(d), size=(N_HEADS, d, dh))
    W_K = rng.normal(scale=1.2 / np.sqrt(d), size=(N_HEADS, d, dh))
    W_V = rng.normal(scale=0.02, size=(N_HEADS, d, dh))
    W_O = rng.normal(scale=0.02, size=(N_HEADS, dh, d))

    h = TARGET[1]
    W_Q[h], W_K[h], W_V[h], W_O[h] = 0, 0, 0, 0
    W_Q[h][:, :n_cat], W_K[h][:, :n_cat] = w_c * C, w_c * C
    cols = np.cumsum([0, n_cat, N_CODES, N_CODES])
    W_Q[h][:, cols[1] : cols[2]], W_K[h][:, cols[1] : cols[2]] = w_v * V, w_v * V
    W_Q[h][:, cols[2] : cols[3]], W_K[h][:, cols[2] : cols[3]] = w_u * U, -w_u * U
    W_Q[h][:, cols[3]], W_K[h][:, cols[3]] = w_b * N[:, 0], w_b * B[:, 0]
    # OV: copy the attended word's category key and identity code (norm ~1 in the residual).
    ov = 1.0 / ln1
    n_ov = min(dh, n_cat + N_CODES)
    read = np.concatenate([K, U], axis=1)[:, :n_ov]
    W_V[h][:, :n_ov] = np.sqrt(ov) * read
    W_O[h][:n_ov] = np.sqrt(ov) * read.T

    # L1H0: previous-token head. Query at p is rotated back by one step, so it matches key p - 1.
    hp = POSITIONAL_HEAD[1]
    ln_p = np.sqrt(d) * A_P / x_norm1
    g_p = np.sqrt(LOGIT_PREV_TOKEN * scale) / ln_p
    rot = np.zeros((2 * N_FREQ, 2 * N_FREQ))  # maps coords of s_p to coords of s_{p-1}
    c_, s_ = np.cos(omega), np.sin(omega)
    f = np.arange(N_FREQ)
    rot[f, f], rot[f + N_FREQ, f] = c_, s_
    rot[f, f + N_FREQ], rot[f + N_FREQ, f + N_FREQ] = -s_, c_
    W_Q[hp] = g_p * P @ rot
    W_K[hp] = g_p * P

    q = W_Q.transpose(1, 0, 2).reshape(d, d)
    k = W_K.transpose(1, 0, 2).reshape(d, d)
    v = W_V.transpose(1, 0, 2).reshape(d, d)
    sd["h.1.attn.c_attn.weight"] = np.concatenate([q, k, v], axis=1)
    sd["h.1.attn.c_proj.weight"] = W_O.reshape(d, d)
    sd["h.1.mlp.c_fc.weight"] = rng.normal(scale=0.02, size=(d, D_MLP))
    sd["h.1.mlp.c_proj.weight"] = rng.normal(scale=0.02, size=(D_MLP, d))

    W_QK = W_Q[h] @ W_K[h].T
    eig = np.linalg.eigvalsh((W_QK + W_QK.T) / 2)
    tol = 1e-6 * np.abs(eig).max()
    truth = {
        "version": VERSION,
        "seed": seed,
        "target": list(TARGET),
        "positional_head": list(POSITIONAL_HEAD),
        "categories": {name: ids for name, ids in cat_ids.items()},
        "n_negative_eigenvalues": int((eig < -tol).sum()),
        "n_positive_eigenvalues": int((eig > tol).sum()),
        "logits": {"same_category": LOGIT_SAME_CATEGORY, "self": LOGIT_SELF, "bos": LOGIT_BOS,
                   "self_without_negative_eigenvalues": LOGIT_SAME_CATEGORY + LOGIT_IDENTITY},
    }
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()}
    return tensors, truth


def write_folder(folder: Path, seed: int = 0) -> None:
    """Write the planted model as a Hugging Face GPT-2 folder (config, safetensors, tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel


    tensors, truth = build_state_dict(seed)
    cfg = GPT2Config(
        vocab_size=tensors["wte.weight"].shape[0], n_positions=N_CTX, n_embd=D_MODEL,
        n_layer=N_LAYERS, n_head=N_HEADS, activation_function="gelu_new",
        bos_token_id=50256, eos_token_id=50256,
    )
    hf = GPT2LMHeadModel(cfg)
    missing, unexpected = hf.transformer.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("attn.bias") and not m.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"planted state dict mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(folder))
    for f in TOKENIZER_DIR.glob("*.json"):
        shutil.copy(f, folder / f.name)
    shutil.copy(TOKENIZER_DIR / "merges.txt", folder / "merges.txt")
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=1))


def _source_fingerprint() -> str:
    """Rebuild the cached folder whenever this construction or the word lists change."""
    src = Path(__file__).read_bytes() + (Path(__file__).parent / "prompts.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:12]


def planted_folder(seed: int = 0) -> Path:
    """The cached planted-model folder, built (atomically) on first use."""
    folder = cache_dir() / f"{VERSION}-seed{seed}-{_source_fingerprint()}"
    if (folder / "ground_truth.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        write_folder(tmp, seed)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; its folder is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ground_truth(seed: int = 0) -> dict:
    return json.loads((planted_folder(seed) / "ground_truth.json").read_text())
