# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # L1H5, the self-suppressing semantic head, in the library's own functions
#
# A walkthrough of the study (the README tells the whole of it): the three rules on the L1H5
# post's example prompt, the score that measures them, where the head reads token identity from,
# the W_sym spectrum (and why its negative-eigenvalue count is no evidence), and steering the
# negative eigenvalues to turn self-attention back on.
#
# Open it with jupytext (`jupytext --to notebook notebooks/walkthrough.py`) or run it as a plain
# script: `python notebooks/walkthrough.py`. `MODEL = "planted"` (the offline demo model, whose
# L1H5 follows the rules by construction) runs anywhere; set it to `"gpt2-small"` with the weights
# in the Hugging Face cache (or a local GPT-2 folder) for the real head.

# %%
import os
import sys
from pathlib import Path

MODEL = os.environ.get("L1H5_MODEL", "planted")  # "gpt2-small", a local GPT-2 folder, "planted"
LAYER, HEAD = 1, 5
PROMPT = "<bos> cat horse blue sun apple 32 red snow sun rain happy 32 blue sun green"  # the post's example

try:  # the repository, so that `common` imports without `pip install -e .` (as a script or from notebooks/)
    ROOT = Path(__file__).resolve().parent.parent
except NameError:  # in Jupyter
    ROOT = Path.cwd() if (Path.cwd() / "common").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))

# %% [markdown]
# ## Load the model
# One loader for every model (gpt2-small with TransformerLens' default processing, local folders,
# the planted model); the analyses only read, so grad is off.

# %%
import numpy as np
import torch

from common.model import load_model

torch.set_grad_enabled(False)
model = load_model(MODEL)
print(f"{MODEL}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_head {model.cfg.d_head}")

# %% [markdown]
# ## The three rules on the post's example prompt
# Each query should attend to earlier tokens of its own category, never to itself or an earlier
# copy, and to BOS otherwise; `prompt_view` puts the observed pattern beside that ideal mask. A
# head that follows the rules need not put its top key on an ideal key for every query: gpt2-small's
# L1H5 (and the planted one, built as imperfect) leaks mass to BOS and to unrelated words, so some
# queries cost nats while most cost little; the mean cost below is the prompt's score.

# %%
from common.prompt_view import prompt_view

view = prompt_view(model, PROMPT, LAYER, HEAD)
for q in range(1, len(view.tokens)):
    ideal = [view.labels[k] for k in np.flatnonzero(view.ideal[q].numpy())]
    top = int(view.pattern[q].argmax())
    print(f"{q:2d} {view.labels[q]!r:10} {view.categories[q]:9} ideal {ideal!s:34} "
          f"top key {view.labels[top]!r:10} ({float(view.pattern[q, top]):.2f})  cost {view.cost[q]:.3f}")
print("outside the categories:", view.uncategorised)
print(f"mean cost on this prompt {view.score:.3f}; its worst query costs {np.nanmax(view.cost):.3f}")

# %% [markdown]
# The same picture as a figure (and a circuitsvis page of every head of the layer), written from
# saved files as every script does:

# %%
import tempfile

from common.genuine_weights import weights_verdict
from common.prompt_view import render_prompt_view, save_prompt_view

OUT = Path(os.environ.get("L1H5_WALKTHROUGH_OUT") or tempfile.mkdtemp(prefix="l1h5-walkthrough-"))
OUT.mkdir(parents=True, exist_ok=True)
save_prompt_view(OUT, view, MODEL)
print(render_prompt_view(OUT, weights_verdict(MODEL).text)[0])  # the weights' verdict under the figure

# %% [markdown]
# ## The score
# The post's semantic category score, mean over queries of -log(mass on the ideal keys): 0 is a
# perfect rule-follower; here over seeded prompts for every head, with a 95% CI.

# %%
from common.metrics import head_survey
from common.stats import mean_ci
from common.prompts import category_prompts

batch = category_prompts(model.tokenizer, 32, 48, seed=0, repeat_prob=0.1)
survey = head_survey(model, batch.tokens, batch.mask, batch_size=16)
mean, half = mean_ci(survey["score"].numpy(), axis=-1)
order = np.dstack(np.unravel_index(np.argsort(mean, axis=None), mean.shape))[0]
for layer, head in order[:4]:
    print(f"L{layer}H{head}: {mean[layer, head]:.3f} ± {half[layer, head]:.3f}")
print(f"L{LAYER}H{HEAD} self+copies mass {float(survey['mass']['self_and_copies'][LAYER, HEAD]):.4f}")

# %% [markdown]
# ## Where does the head read token identity from? (component ablation)
# Mean-ablating the token embedding or MLP0 should break the head; the positional embedding and
# layer-0 attention should not, since the rules are about token identity. "Should not" is read as
# the study's claim reads it: a change under a tenth of the token embedding ablation's change. A
# mean ablation also shortens the residual wherever the mean is shorter than the vectors it
# replaces (the mean of the positions is), and LayerNorm turns that into a rescaling of everything
# the head reads; so even a head that reads no position moves a little under it (the last lines
# below give each change as a share of the token embedding's; `component_ablation.py` adds a
# resample ablation, which keeps the norm).

# %%
from common.ablation import COMPONENTS, collect_activations, mean_ablation_hooks
from common.metrics import all_head_patterns, semantic_score

reference = collect_activations(model, category_prompts(model.tokenizer, 16, 48, seed=1).tokens, COMPONENTS.values())
hooks = mean_ablation_hooks(reference)
clean = semantic_score(all_head_patterns(model, batch.tokens, layers=[LAYER])[0, HEAD], batch.mask).mean()
print(f"clean: {float(clean):.3f}")
ablated = {}
for label, name in COMPONENTS.items():
    pat = all_head_patterns(model, batch.tokens, layers=[LAYER], hooks=hooks[name])[0, HEAD]
    ablated[label] = float(semantic_score(pat, batch.mask).mean())
    print(f"{label} mean-ablated: {ablated[label]:.3f}")
rise = ablated["token embedding"] - float(clean)
for label in ("positional embedding", "layer-0 attention", "layer-0 MLP"):
    print(f"{label}: change {(ablated[label] - float(clean)) / rise:+.0%} of the token embedding's")

# %% [markdown]
# ## The W_sym spectrum, and the inertia caveat
# W_QK = W_Q W_K^T splits into a symmetric and a skew part; the post counts 33 negative among the
# 64 largest eigenvalues of W_sym. But Sylvester's law of inertia gives every head whose [W_Q W_K]
# has full column rank exactly d_head negative eigenvalues, so the count cannot single L1H5 out.

# %%
from common.factored import inertia_note
from common.head_qk import FactoredQK

TOP = model.cfg.d_head  # the post's "64 largest" on gpt2-small (d_head 64)
qk = FactoredQK.from_model(model, LAYER, HEAD)
s = qk.spectrum_summary(top=TOP)
print(f"L{LAYER}H{HEAD}: {s['n_negative']} negative / {s['n_positive']} positive eigenvalues; "
      f"{s[f'n_negative_top{TOP}']} negative among the {TOP} largest; "
      f"largest singular value sym {s['sv_max_sym']:.3f} vs skew {s['sv_max_skew']:.3f}")
negatives = [FactoredQK.from_model(model, LAYER, h).spectrum_summary()["n_negative"] for h in range(model.cfg.n_heads)]
print(f"negative eigenvalues of every head of layer {LAYER}: {negatives}")
print(inertia_note(model.cfg.d_head))

# %% [markdown]
# ## Eigenvalue steering
# Scaling the negative eigenvalues of W_sym by alpha (1 = unmodified, 0 = removed, -1 = flipped)
# should make each token's own key its top key: self-suppression lives in those eigenvalues.

# %%
from common.effective_embeddings import effective_embeddings
from common.prompts import group_token_ids
from common.token_scores import self_rank

E = effective_embeddings(model, LAYER)
ids, labels, groups = group_token_ids(model.tokenizer)
for alpha in (1.0, 0.5, 0.0, -1.0):
    ranks = self_rank(qk.steer(alpha, biases=True, scaled=True), E, ids)
    print(f"alpha {alpha:+.1f}: own key is the top key for {float((ranks == 0).float().mean()):.0%} of the "
          f"30 group tokens; median rank of the own key over the vocabulary {int(ranks.median())}")

# %% [markdown]
# Every step here is one script of the repository at full size, with CIs, figures and the
# published numbers beside ours: `make demo` (planted) or `make figures` (gpt2-small), then
# `figures/report.html`.
