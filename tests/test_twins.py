"""The planted twins (``--model planted:<twin>``, issue 22): each builds, declares its false claims,
and really has the broken mechanism it declares -- checked on the BUILT model's attention with
TransformerLens, against the plain planted model as the control (so every check can fail).

Expected values come from the construction (common/planted.py's constants, the ground truth it
writes, float64 linear algebra here), never from the analysis scripts."""

import numpy as np
import pytest
import torch

from common import planted as P
from common.metrics import mass_split, semantic_score
from common.model import load_model
from common.planted_names import CLAIM_IDS, TWINS, is_planted, planted_twin
from common.prompts import GROUP_TOKENS, category_prompts, group_token_ids

TARGET_L, TARGET_H = P.TARGET


@pytest.fixture(scope="module")
def twins(planted_cache):
    """Every twin, loaded once for this module: name -> (model, ground truth)."""
    torch.set_grad_enabled(False)
    return {t: (load_model(f"planted:{t}"), P.ground_truth(twin=t)) for t in TWINS}


@pytest.fixture(scope="module")
def batch(tokenizer):
    return category_prompts(tokenizer, 12, 48, seed=11, repeat_prob=0.2)


def _pattern(model, tokens, hooks=()):
    """L1H5's attention pattern [batch, q, k] (TransformerLens hook, no analysis code)."""
    name = f"blocks.{TARGET_L}.attn.hook_pattern"
    store = {}

    def keep(t, hook):
        store["p"] = t[:, TARGET_H].detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=[*hooks, (name, keep)], stop_at_layer=TARGET_L + 1)
    return store["p"]


# -- names, folders, declarations -------------------------------------------------------------------------------
def test_names_and_output_folders():
    from common.genuine_weights import weights_verdict
    from common.outputs import FIGURES, default_out_dir

    assert is_planted("planted") and is_planted("planted:skew") and not is_planted("gpt2-small")
    assert planted_twin("planted") is None and planted_twin("planted:no-mlp0") == "no-mlp0"
    assert default_out_dir("s", "planted") == FIGURES / "demo" / "s"
    assert default_out_dir("s", "planted:copying") == FIGURES / "demo-copying" / "s"
    v = weights_verdict("planted:positional")
    assert (v.status, v.text) == ("planted", "planted:positional")
    with pytest.raises(SystemExit) as e:
        planted_twin("planted:nope")
    assert all(f"planted:{t}" in str(e.value.code) for t in TWINS)


def test_unknown_twin_stops_before_anything_is_written(tmp_path):
    from tests.conftest import run_script

    out = tmp_path / "never"
    proc = run_script("characterize_head.py", "--model", "planted:nope", "--out", str(out), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'nope'" in lines[0] and all(f"planted:{t}" in lines[0] for t in TWINS)
    assert not out.exists()
    root = tmp_path / "root"
    proc = run_script("run_all.py", "--model", "planted:nope", "--root", str(root), check=False)
    assert proc.returncode != 0 and "planted:copying" in proc.stderr and "Traceback" not in proc.stderr
    assert not root.exists()
    import characterize_head  # several models (cross-model table): every name is checked first

    with pytest.raises(SystemExit) as e:
        characterize_head.main(["--model", "planted", "planted:nope", "--out", str(out)])
    assert "planted:skew" in str(e.value.code) and not out.exists()


def test_ground_truth_declares_twin_and_false_claims(twins, truth):
    assert truth["twin"] is None and truth["false_claims"] == []
    for name, (_, t) in twins.items():
        assert t["twin"] == name
        assert t["false_claims"] == list(TWINS[name].false_claims) and t["false_claims"]
        assert set(t["false_claims"]) <= set(CLAIM_IDS)
    assert "head-survey" in twins["copying"][1]["false_claims"]
    assert "position-independence" in twins["positional"][1]["false_claims"]
    assert twins["skew"][1]["false_claims"] == ["sym-reproduces", "eigen-steering"]
    assert twins["no-mlp0"][1]["false_claims"] == ["component-ablation"]


def test_twins_change_only_l1h5_and_what_layer_2_calibrates_on():
    """One construction with switches: a twin's state dict equals the plain model's except layer 1's
    QK weights/biases (L1H5) and layer 2's attention, whose calibration reads L1H5's output."""
    base, _ = P.build_state_dict(0)
    allowed = {"h.1.attn.c_attn.weight", "h.1.attn.c_attn.bias", "h.2.attn.c_attn.weight",
               "h.2.attn.c_attn.bias", "h.2.attn.c_proj.weight", "h.2.attn.c_proj.bias"}
    d = P.D_MODEL
    for name in TWINS:
        sd, _ = P.build_state_dict(0, name)
        differ = {k for k in sd if not torch.equal(sd[k], base[k])}
        assert "h.1.attn.c_attn.weight" in differ and differ <= allowed, (name, differ)
        w, w0 = sd["h.1.attn.c_attn.weight"], base["h.1.attn.c_attn.weight"]
        cols = [h for h in range(P.N_HEADS) if not torch.equal(w[:, h * P.D_HEAD : (h + 1) * P.D_HEAD],
                                                                w0[:, h * P.D_HEAD : (h + 1) * P.D_HEAD])
                or not torch.equal(w[:, d + h * P.D_HEAD : d + (h + 1) * P.D_HEAD],
                                   w0[:, d + h * P.D_HEAD : d + (h + 1) * P.D_HEAD])]
        assert cols == [TARGET_H], (name, cols)
        assert torch.equal(w[:, 2 * d :], w0[:, 2 * d :])  # V untouched


# -- the mechanisms, broken as declared -----------------------------------------------------------------------
def _copying_design_self_mass(tokens, truth):
    """Mass on self and copies that the copying twin's designed logits give on ``tokens`` (torch
    here), from common/planted.py's constants: the twin flips the U term's sign, so self and copies
    get C + V + U = LOGIT_SAME_CATEGORY + LOGIT_IDENTITY + (LOGIT_SAME_CATEGORY + LOGIT_IDENTITY -
    LOGIT_SELF) = 5.5 + 4 + 15.5 = 25 (truth logits self); a word of another category with the same
    word index shares V and U (now both attracting) but only the any-category part of C:
    LOGIT_ANY_CATEGORY + 4 + 15.5 = 22.25; another word of the query's category 5.5; any other
    category word LOGIT_ANY_CATEGORY = 2.75; BOS LOGIT_BOS (5.75); every other word 0 (no generic part)."""
    cat, idx = {}, {}
    for c, ids in enumerate(truth["categories"].values()):
        for j, t in enumerate(ids):
            cat[t], idx[t] = c, j
    n = tokens.shape[1]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    c = torch.tensor([[cat.get(int(t), -1) for t in row] for row in tokens.tolist()])
    j = torch.tensor([[idx.get(int(t), -1) for t in row] for row in tokens.tolist()])
    known = c >= 0
    same_cat = (c[:, :, None] == c[:, None, :]) & known[:, :, None]
    same_idx = (j[:, :, None] == j[:, None, :]) & known[:, :, None] & ~same_cat
    same_tok = tokens[:, :, None] == tokens[:, None, :]
    self_logit = 2 * (P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY) - P.LOGIT_SELF
    logit = torch.zeros(same_tok.shape, dtype=torch.float64)
    any_cat = truth["logits"]["any_category"]
    other_cat = known[:, :, None] & (c[:, None, :] >= 0) & ~same_cat
    logit += P.LOGIT_SAME_CATEGORY * (same_cat & ~same_tok) + any_cat * other_cat
    logit += (self_logit - P.LOGIT_SAME_CATEGORY) * same_idx  # on top of any_cat: self's 25 less the C part's 2.75 = 22.25
    logit += self_logit * same_tok
    logit[:, :, 0] = P.LOGIT_BOS
    pat = logit.masked_fill(~visible, -torch.inf).softmax(-1)
    same_tok[:, :, 0] = False
    return float((pat * same_tok).sum(-1)[:, 1:].mean())


def test_copying_attends_to_self_and_copies(twins, planted_model, batch, truth):
    """Design: self and copies get 2 (5.5 + 4) + 6 = 25 logits (truth logits self) against 5.5 for
    another word of the category, LOGIT_ANY_CATEGORY = 2.75 for another category's word and LOGIT_BOS = 5.75
    for BOS -- but only LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY = 2.75 more than a word of another
    category with the same word index (it shares the identity codes, which now attract, and the
    any-category part: 2.75 + 4 + 15.5 = 22.25), so each such key takes e^-2.75 = 6% of self's
    weight (v3: e^-12). The designed logits give self and copies most of the mass on this batch
    (_copying_design_self_mass, computed here; v3 asserted > 0.95 on the argument that nothing came
    close; the intermediate tuning's helper had no any-category term); the measured mass lies
    within 0.05 of the design. The plain model gives them -6 (under 0.001, test_planted)."""
    model, t = twins["copying"]
    assert t["logits"]["self"] == 2 * (P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY) - P.LOGIT_SELF
    assert t["n_large_negative_eigenvalues"] == 0 and t["weyl_gap"] is None
    twin = mass_split(_pattern(model, batch.tokens), batch.tokens, batch.mask)
    plain = mass_split(_pattern(planted_model, batch.tokens), batch.tokens, batch.mask)
    design = _copying_design_self_mass(batch.tokens, truth)
    assert design > 0.9 and abs(twin["self_and_copies"] - design) < 0.05, (float(twin["self_and_copies"]), design)
    assert plain["self_and_copies"] < 0.001
    # with self attracting, the semantic score (mass on the ideal in-category/BOS keys) collapses
    assert semantic_score(_pattern(model, batch.tokens), batch.mask).mean() > 5
    # W_sym: the identity codes are now 12 large *positive* eigenvalues +w_U^2 (removing the
    # negative ones cannot turn self on: it already is). Both models also have the any-category
    # term w_C beta (sum_c C_c)(sum_c C_c)^T (v4), whose rank-one positive eigenvalue,
    # w_C^2 + n_cat w_C beta, is in logits (LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY) +
    # n_cat LOGIT_ANY_CATEGORY = 41 against the codes' 15.5 (measured 6.3 against w_U^2 3.3): the
    # planted part's largest eigenvalue, so by Weyl (i-th sorted eigenvalue within
    # perturbation_bound of the planted part's i-th) the twin's eigenvalues ranked 2..13 from the top
    # are the codes, within perturbation_bound (2.48) of w_U^2 (3.31) -- not enough to guarantee
    # w_U^2 / 2, so that is measured (3.04) -- and above the plain model's second largest (1.17);
    # the plain model's 12 most negative are below -w_U^2 / 2, the twin's are not.
    def eig(m):
        W = (m.W_Q[TARGET_L, TARGET_H].double() @ m.W_K[TARGET_L, TARGET_H].double().T).numpy()
        return np.linalg.eigvalsh((W + W.T) / 2)
    e_twin, e_plain = eig(model), eig(planted_model)
    w_u2 = -truth["planted_negative_eigenvalue"]
    top_t, top_p = np.sort(e_twin)[::-1], np.sort(e_plain)[::-1]
    assert top_t[0] > w_u2 + t["perturbation_bound"] and top_p[0] > w_u2 + truth["perturbation_bound"]
    big = top_t[1 : P.N_CODES + 1]
    assert np.abs(big - w_u2).max() <= t["perturbation_bound"] + 1e-5
    assert big[-1] > 0.5 * w_u2 and big[-1] > top_p[1]
    assert np.sort(e_plain)[P.N_CODES - 1] < -0.5 * w_u2 < np.sort(e_twin)[0]


def _shifted_pattern(model, tokens, shift):
    """L1H5's pattern for the same tokens with the positional embeddings of positions p + shift
    (BOS keeps position 0)."""
    w_pos = model.W_pos.detach()

    def fn(t, hook):
        t = t.clone()
        t[:, 1:] = w_pos[1 + shift : t.shape[1] + shift]
        return t

    return _pattern(model, tokens, hooks=[("hook_pos_embed", fn)])


def test_positional_pattern_moves_with_positions(twins, planted_model, batch):
    """Shifting every word by 40 positions: the plain L1H5 keeps its pattern (it reads no position),
    the positional twin's moves, and by the designed key-position logits: log-attention differences
    between keys of one query follow f(p) - f(p + 40) (ground truth, per position)."""
    model, t = twins["positional"]
    f = np.array(t["positional_key_logit"])
    lo, hi = P.PROMPT_POSITIONS
    assert f[0] == 0 and abs(f[lo : hi + 1].std() - P.LOGIT_POSITIONAL) < 1e-9
    shift, n = 40, batch.tokens.shape[1]

    def corr(m):
        a, b = _pattern(m, batch.tokens), _shifted_pattern(m, batch.tokens, shift)
        vis = torch.tril(torch.ones(n, n, dtype=torch.bool), -1)[1:]  # queries >= 1, earlier keys
        return float(np.corrcoef(a[:, 1:][:, vis].ravel(), b[:, 1:][:, vis].ravel())[0, 1]), a, b

    r_plain, _, _ = corr(planted_model)
    r_twin, a, b = corr(model)
    assert r_plain > 0.99 and r_twin < 0.9, (r_plain, r_twin)
    # log-ratio of attention to key k vs the query's other non-BOS keys changes by the design
    expect = f[1:n] - f[1 + shift : n + shift]
    got, want = [], []
    for q in range(8, n):
        la, lb = torch.log(a[:, q, 1 : q + 1]).double(), torch.log(b[:, q, 1 : q + 1]).double()
        d = (la - lb).numpy()
        got.append((d - d.mean(1, keepdims=True)).ravel())
        e = expect[:q]
        want.append(np.broadcast_to(e - e.mean(), d.shape).ravel())
    got, want = np.concatenate(got), np.concatenate(want)
    assert np.corrcoef(got, want)[0, 1] > 0.9
    assert abs(np.std(got) / np.std(want) - 1) < 0.25


def _mlp0_mean_hook(model, reference):
    """Mean ablation of MLP0's output over the non-BOS positions of ``reference`` (BOS kept)."""
    store = {}
    model.run_with_hooks(reference, fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, hook: store.update(x=t))],
                         stop_at_layer=1)
    mean = store["x"][:, 1:].reshape(-1, store["x"].shape[-1]).mean(0)

    def fn(t, hook):
        t = t.clone()
        t[:, 1:] = mean
        return t

    return ("blocks.0.hook_mlp_out", fn)


def test_no_mlp0_survives_mlp0_ablation(twins, planted_model, batch, tokenizer):
    """The twin's category term reads K (written by the token embedding), so mean-ablating MLP0
    (which writes C) leaves its in-category mass; the plain model's reads C and loses it. (v4: the
    clean in-category mass is about 0.27, not v3's > 0.5 -- BOS and, through the generic part,
    unrelated words take the rest, test_planted -- so the clean masses are compared with the
    plain model's ablated one instead of with 0.5.)"""
    model, t = twins["no-mlp0"]
    assert t["category_read_from"] == "K"
    ref = category_prompts(tokenizer, 12, 48, seed=99, repeat_prob=0.2).tokens

    def in_cat(m, hooks=()):
        return float(mass_split(_pattern(m, batch.tokens, hooks), batch.tokens, batch.mask)["in_category"])

    twin_clean, twin_abl = in_cat(model), in_cat(model, [_mlp0_mean_hook(model, ref)])
    plain_clean, plain_abl = in_cat(planted_model), in_cat(planted_model, [_mlp0_mean_hook(planted_model, ref)])
    assert twin_clean > 4 * plain_abl and plain_clean > 4 * plain_abl, (twin_clean, plain_clean, plain_abl)
    assert twin_abl > 0.9 * twin_clean, (twin_clean, twin_abl)
    assert plain_abl < 0.5 * plain_clean, (plain_clean, plain_abl)


def _group_scores(model, tokenizer):
    """L1H5's weight-only scores (x W_Q W_K^T x^T / sqrt(d_head)) on the 30 group tokens' layer-1
    inputs (one prompt: BOS + the group tokens), split into Sym and Skew."""
    ids, _, _ = group_token_ids(tokenizer)
    tokens = torch.tensor([[tokenizer.bos_token_id, *ids]])
    store = {}
    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{TARGET_L}.ln1.hook_normalized",
                                             lambda t, hook: store.update(x=t))], stop_at_layer=TARGET_L + 1)
    x = store["x"][0, 1:].double()
    W = model.W_Q[TARGET_L, TARGET_H].double() @ model.W_K[TARGET_L, TARGET_H].double().T
    s = np.sqrt(P.D_HEAD)
    return ((x @ W @ x.T) / s).numpy(), ((x @ ((W + W.T) / 2) @ x.T) / s).numpy(), W.numpy()


def test_skew_part_carries_the_group_scores(twins, planted_model, tokenizer):
    """The designed group-token logits: 12 per same-category pair, (4 - 22) per same-index pair
    (self included), plus, in the twin only, LOGIT_SKEW * skew_codes[i, j] between word indices i, j
    (design value of corr(Base, Sym): 0.82 at seed 0).
    From those, corr(Base, Sym) is computed here (float64); the built twin's must match it and fall
    well below 0.95, the plain model's stay above it, and W_sym still has the larger spectral norm
    (LOGIT_SKEW < 22: the spectrum claim stays true)."""
    model, t = twins["skew"]
    J = np.array(t["skew_codes"])
    assert np.allclose(J, -J.T) and np.allclose(np.linalg.svd(J, compute_uv=False), 1)
    cat = np.repeat(np.arange(len(GROUP_TOKENS)), [len(v) for v in GROUP_TOKENS.values()])
    idx = np.concatenate([np.arange(len(v)) for v in GROUP_TOKENS.values()])  # word index = code index
    same_cat, same_idx = cat[:, None] == cat[None, :], idx[:, None] == idx[None, :]
    sym = (P.LOGIT_SAME_CATEGORY * same_cat
           + (P.LOGIT_IDENTITY - (P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY - P.LOGIT_SELF)) * same_idx)
    design = np.corrcoef((sym + P.LOGIT_SKEW * J[np.ix_(idx, idx)]).ravel(), sym.ravel())[0, 1]
    base, sym_m, W = _group_scores(model, tokenizer)
    measured = np.corrcoef(base.ravel(), sym_m.ravel())[0, 1]
    base0, sym0, _ = _group_scores(planted_model, tokenizer)
    plain = np.corrcoef(base0.ravel(), sym0.ravel())[0, 1]
    assert design < 0.9 and abs(measured - design) < 0.05, (design, measured)
    assert plain > 0.95, plain
    assert np.linalg.norm((W + W.T) / 2, 2) > np.linalg.norm((W - W.T) / 2, 2)


def _self_top_without_negative_eigenvalues(model, tokenizer):
    """Share of the 30 group tokens whose own key is their top key once every negative eigenvalue
    of L1H5's W_sym is set to 0 (skew part kept), weight-only scores on their layer-1 inputs."""
    _, _, W = _group_scores(model, tokenizer)
    ids, _, _ = group_token_ids(tokenizer)
    tokens = torch.tensor([[tokenizer.bos_token_id, *ids]])
    store = {}
    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{TARGET_L}.ln1.hook_normalized",
                                             lambda t, hook: store.update(x=t))], stop_at_layer=TARGET_L + 1)
    x = store["x"][0, 1:].double().numpy()
    sym, skew = (W + W.T) / 2, (W - W.T) / 2
    lam, vec = np.linalg.eigh(sym)
    edited = (vec * np.clip(lam, 0, None)) @ vec.T + skew
    s = x @ edited @ x.T
    return float(np.mean(s.argmax(1) == np.arange(len(s))))


def test_skew_twin_breaks_eigen_steering(twins, planted_model, tokenizer):
    """Design: with the negative eigenvalues removed, self beats another word of its category by
    LOGIT_IDENTITY (4) in the plain model, but the skew twin adds LOGIT_SKEW * skew_codes[i, j]
    (14 x up to ~0.8) to some other word j of the same category: for every group token (indices
    0-5 share one skew block) some j outscores self by design."""
    J = np.array(twins["skew"][1]["skew_codes"])
    beaten = [max(J[i, j] for j in range(6) if j != i) * P.LOGIT_SKEW > P.LOGIT_IDENTITY for i in range(6)]
    assert all(beaten)
    assert _self_top_without_negative_eigenvalues(planted_model, tokenizer) == 1.0
    # v4: the generic part's random logits keep self on top for a third of the twin's group tokens
    # (v3 asserted < 0.2); the claim check's "differs" threshold is what the twin must stay under
    from svd_group_scaling_heatmap import STEER_TOP_BAD

    assert _self_top_without_negative_eigenvalues(twins["skew"][0], tokenizer) < STEER_TOP_BAD
