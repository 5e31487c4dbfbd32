"""The planted model (v4) has, on the BUILT model (load_model("planted")), every property its
construction promises: the three rules in L1H5 only (followed as imperfectly as in gpt2-small: modest
logits and a large generic part), a decoy, a reader, BOS-heavy later heads, gpt2-small-like biases
and layer norms, full-rank generic heads with the designed spectrum, positions as large as tokens,
a position- and content-dependent layer 0, a positional head.

Expected numbers come from common/planted.py's construction (its constants and ground_truth()),
or from linear algebra done here with numpy, never from the analysis code under test."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common import planted as P
from common.ablation import collect_activations, mean_ablation_hooks
from common.metrics import all_head_patterns, head_survey
from common.prompts import (CATEGORIES, category_prompts, random_token_prompts, self_and_copies_mask,
                             token_category_map)


@pytest.fixture(scope="module")
def survey(planted_model, tokenizer):
    batch = category_prompts(tokenizer, 32, 48, seed=11, repeat_prob=0.2)
    return batch, head_survey(planted_model, batch.tokens, batch.mask)


@pytest.fixture(scope="module")
def raw_state_dict(planted_cache):
    from safetensors.torch import load_file

    sd = load_file(str(P.planted_folder() / "model.safetensors"))
    return {k.removeprefix("transformer."): v for k, v in sd.items()}


def _dense_sym(model, layer, head):
    W = (model.W_Q[layer, head].double() @ model.W_K[layer, head].double().T).numpy()
    return (W + W.T) / 2, (W - W.T) / 2


# -- construction: deterministic, the folder is what the construction says ------------------------------------
def test_deterministic_and_folder_is_the_construction(raw_state_dict, truth):
    tensors, t = P.build_state_dict(seed=0)
    assert t == truth
    for k, v in tensors.items():
        assert torch.equal(raw_state_dict[k], v), k


# Per tensor of build_state_dict(seed=0): (sum |x|, sqrt(sum x^2)) in float64, recorded from the
# build on main after the split into per-layer builders (issue 22; that split was checked bit for bit
# against the single-function builder on one machine: state-dict sha256 39be7f76... before and after)
# and after the word lists gained the original's words and n_ctx became 256. Pins the construction
# on any CPU: the build runs QR/eigen/matmul through the installed BLAS, whose low bits differ
# between CPUs (a float32 ulp, 6e-8 relative), so the check is at rtol 1e-6, not bit for bit; any
# change of the construction moves these far more. Re-record (after bumping VERSION) with
# ``python tests/test_planted.py --record``.
STATS_FILE = Path(__file__).parent / "data" / "planted_stats.json"


def weight_stats(tensors) -> dict[str, list[float]]:
    return {k: [float(v.double().abs().sum()), float(v.double().norm())] for k, v in sorted(tensors.items())}


def test_weights_match_the_recorded_build():
    tensors, truth = P.build_state_dict(seed=0)
    assert truth["version"] == P.VERSION == "planted-v4"
    recorded = json.loads(STATS_FILE.read_text())
    stats = weight_stats(tensors)
    assert list(stats) == list(recorded)
    for k in stats:
        assert stats[k] == pytest.approx(recorded[k], rel=1e-6), k


def test_categories_are_realised_in_the_embedding(planted_model, truth, tokenizer):
    """truth["categories"] are the README's words (decoded independently), and the built W_E
    gives every pair of category words the cosine its blocks imply: shared K (same category),
    shared U and V (same index), N (every word)."""
    assert list(truth["categories"]) == list(CATEGORIES)
    ids, cat, idx = [], [], []
    for c, (name, toks) in enumerate(truth["categories"].items()):
        assert [tokenizer.decode([t]) for t in toks] == [" " + w for w in CATEGORIES[name]]
        ids += toks
        cat += [c] * len(toks)
        idx += list(range(len(toks)))
    E = planted_model.W_E[ids].double()
    cos = torch.nn.functional.normalize(E, dim=1) @ torch.nn.functional.normalize(E, dim=1).T
    cat, idx = torch.tensor(cat), torch.tensor(idx)
    same_cat = cat[:, None] == cat[None, :]
    same_idx = idx[:, None] == idx[None, :]
    norm2 = P.A_K**2 + P.A_U**2 + P.A_V**2 + P.A_N**2
    expect = torch.full_like(cos, P.A_N**2 / norm2)
    expect[same_cat] = (P.A_K**2 + P.A_N**2) / norm2
    expect[same_idx & ~same_cat] = (P.A_U**2 + P.A_V**2 + P.A_N**2) / norm2
    expect.fill_diagonal_(1.0)
    assert (cos - expect).abs().max() < 1e-4


# -- the rules, the decoy, the cross-layer ranking --------------------------------------------------------------
def _designed_pattern(tokens, mask, tokenizer, same_category, self_and_copies, bos, any_category=0.0,
                      shared_code=0.0):
    """The attention a head with exactly the designed logits would give on ``tokens`` (torch here,
    no analysis code): ``same_category`` for every earlier word of the query's category other than
    its own token, ``self_and_copies`` for the query itself and earlier copies, ``bos`` for BOS,
    ``any_category`` for a word of another category when the query is a category word, plus
    ``shared_code`` when that word has the query's index in its category (word j of every category
    carries the identity codes U_j, V_j), 0 for every other word (no generic part)."""
    n = tokens.shape[1]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    cat_of = token_category_map(tokenizer)
    code_of = {t: j for ids in _category_ids(tokenizer).values() for j, t in enumerate(ids)}
    cats = torch.tensor([[cat_of.get(int(t), -1) for t in row] for row in tokens.tolist()])
    codes = torch.tensor([[code_of.get(int(t), -1) for t in row] for row in tokens.tolist()])
    both = (cats[:, :, None] >= 0) & (cats[:, None, :] >= 0) & visible
    both[:, :, 0] = False
    same_cat = (cats[:, :, None] == cats[:, None, :]) & both
    other_cat = both & ~same_cat
    same_code = other_cat & (codes[:, :, None] == codes[:, None, :])
    same_tok = self_and_copies_mask(tokens)
    logit = torch.zeros(mask.shape, dtype=torch.float64)
    logit += same_category * (same_cat & ~same_tok) + self_and_copies * same_tok
    logit += any_category * other_cat + shared_code * same_code
    logit[:, :, 0] = bos
    return logit.masked_fill(~visible, -torch.inf).softmax(-1)


def _category_ids(tokenizer):
    """Category name -> token ids in word order (the index is the word's identity code)."""
    return {name: [tokenizer.encode(" " + w)[0] for w in words] for name, words in CATEGORIES.items()}


def _target_design(T, M, tokenizer):
    """L1H5's designed pattern (constants of common/planted.py): same category LOGIT_SAME_CATEGORY,
    another category's word LOGIT_ANY_CATEGORY (the beta term), self and copies LOGIT_SELF, BOS
    LOGIT_BOS; a word of another category with the query's code index shares its V and U codes:
    LOGIT_IDENTITY - (LOGIT_SAME_CATEGORY + LOGIT_IDENTITY - LOGIT_SELF) on top (-11.5)."""
    u_term = P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY - P.LOGIT_SELF
    return _designed_pattern(T, M, tokenizer, P.LOGIT_SAME_CATEGORY, P.LOGIT_SELF, P.LOGIT_BOS,
                             P.LOGIT_ANY_CATEGORY, P.LOGIT_IDENTITY - u_term)


def _score(pattern, mask):
    """The repo's semantic score, written out: mean over queries q >= 1 of -log(mass on the ideal keys)."""
    return float(-torch.log((pattern * mask).sum(-1).clamp_min(1e-6))[:, 1:].mean())


def _class_logits(model, tokens, tokenizer, layer, head):
    """L1H5's attention logits (the model's own forward, hook_attn_scores) of category queries,
    relative per query to its mean logit over the other categories' words (softmax ignores a
    per-query shift): mean and std over keys of each designed class."""
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_attn_scores")
    S = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, head].double()
    n = tokens.shape[1]
    cat_of = token_category_map(tokenizer)
    code_of = {t: j for ids in _category_ids(tokenizer).values() for j, t in enumerate(ids)}
    cats = torch.tensor([[cat_of.get(int(t), -1) for t in row] for row in tokens.tolist()])
    codes = torch.tensor([[code_of.get(int(t), -1) for t in row] for row in tokens.tolist()])
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)[None] & (cats[:, :, None] >= 0) & (cats[:, None, :] >= 0)
    earlier[:, :, 0] = False
    same_code = codes[:, :, None] == codes[:, None, :]
    same_cat = cats[:, :, None] == cats[:, None, :]
    classes = {"same_category": earlier & same_cat & ~same_code, "self_and_copies": self_and_copies_mask(tokens),
               "other_category": earlier & ~same_cat & ~same_code}
    ref = torch.where(classes["other_category"], S, torch.nan).nanmean(-1, keepdim=True)
    ok = ~ref.isnan()[..., 0] & (cats >= 0)
    ok[:, 0] = False
    dev = (S - ref)[ok]
    return {name: (float(dev[c[ok]].mean()), float(dev[c[ok]].std())) for name, c in classes.items()}


def test_survey_ranking_across_all_layers(survey, planted_model, truth, tokenizer):
    """L1H5 is the best rule-follower of all 24 heads, the decoy second, every other head no better
    than uniform attention.

    Derivation (v4; v3's perfect head scored under 0.1). On the built head, L1H5's logits of
    category queries (the model's forward, relative per query to the other categories' words) are
    the designed ones: same category LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY = 2.75 above another
    category's word (measured 2.9), self and copies LOGIT_SELF - LOGIT_ANY_CATEGORY = -8.75
    (measured -8.6), each within 0.5; around them the generic part spreads every class by a std of
    about 1.15 (v3's generic part: a few tenths). The designed logits alone give this batch a score
    of 0.73 (computed here; no generic part); the generic part's random logits only cost mass
    (measured 1.27: its spread, and a generic offset that favours the category keys over BOS by
    about 1.4 logits on these all-category prompts), so the measured score is at least the designed
    one (minus 0.1 for the LN-scale spread) -- a head as perfect as v3's, or one without the spread,
    fails that. The decoy's designed logits (category 2 for every same-category key, self included,
    BOS 4; generic part 0.15 per column, small) give 1.42 (measured 1.48), within 0.3. L1H5 beats
    the decoy on the mean over 32 prompts by 0.2 (v4: the generic part costs L1H5 0.5 of its 0.7
    designed lead): the paired per-prompt difference must be over 4 standard errors. Uniform
    attention over the visible keys (2.59) is the floor no generic head beats (their lowest: 2.7)."""
    batch, s = survey
    score = s["score"].mean(-1)  # [layer, head]
    assert score.shape == (truth["n_layers"], P.N_HEADS)
    (L, H), (DL, DH) = truth["target"], truth["decoy_head"]
    assert DL >= 2
    assert truth["logits"]["any_category"] == P.LOGIT_ANY_CATEGORY
    T, M = batch.tokens, batch.mask
    design = _score(_target_design(T, M, tokenizer), M)
    decoy = _score(_designed_pattern(T, M, tokenizer, P.LOGIT_DECOY_CATEGORY, P.LOGIT_DECOY_CATEGORY,
                                     P.LOGIT_DECOY_BOS), M)
    uniform = _score(_designed_pattern(T, M, tokenizer, 0.0, 0.0, 0.0), M)
    assert design < decoy - 0.25 and decoy < uniform - 1.0  # the construction's own ordering
    cls = _class_logits(planted_model, T, tokenizer, L, H)
    assert abs(cls["same_category"][0] - (P.LOGIT_SAME_CATEGORY - P.LOGIT_ANY_CATEGORY)) < 0.5, cls
    assert abs(cls["self_and_copies"][0] - (P.LOGIT_SELF - P.LOGIT_ANY_CATEGORY)) < 0.5, cls
    assert 0.5 < cls["other_category"][1] < 2.0, cls  # the generic part's spread
    assert design - 0.1 < score[L, H] < score[DL, DH], (float(score[L, H]), design)
    assert abs(score[DL, DH] - decoy) < 0.3, (float(score[DL, DH]), decoy)
    rest = score.clone()
    rest[L, H] = rest[DL, DH] = float("inf")
    assert rest.min() > uniform, (float(rest.min()), uniform)
    diff = s["score"][DL, DH] - s["score"][L, H]  # per prompt
    assert diff.mean() > 4 * diff.std() / len(diff) ** 0.5, (float(diff.mean()), float(diff.std()))
    order = score.flatten().argsort()[:2].tolist()
    assert order == [L * P.N_HEADS + H, DL * P.N_HEADS + DH]


def test_self_suppression_and_the_decoy_does_not(survey, truth, tokenizer):
    """Rule 2 in L1H5 only. Design: L1H5 gives self and copies LOGIT_SELF - LOGIT_SAME_CATEGORY =
    -11.5 logits against a same-category word and LOGIT_SELF - LOGIT_ANY_CATEGORY = -8.75 against
    another category's (e^-8.75 = 2e-4 per key), so their mass is negligible (designed logits on
    this batch, computed here: 6e-6; measured 3e-5) -- far below v3's threshold 0.05 too;
    the decoy gives self the category logit (it reads C, which self shares), so its mass on self
    and copies against its mass on other category words follows the key counts: the ratio the
    decoy's designed logits give on this batch (1.13, computed here; measured 1.12), against
    under 0.01 for L1H5. In-category mass (v4: 0.32, not v3's > 0.5; the rest leaks to the other
    categories' words through LOGIT_ANY_CATEGORY and the generic part, and to BOS): still over
    twice the decoy's and every generic head's (at most 0.09)."""
    batch, s = survey
    (L, H), (DL, DH) = truth["target"], truth["decoy_head"]
    T, M = batch.tokens, batch.mask
    same, in_cat = self_and_copies_mask(T), M.clone()
    in_cat[:, :, 0] = False

    def masses(pat):
        return [float((pat * part).sum(-1)[:, 1:].mean()) for part in (same, in_cat)]

    d_self, d_cat = masses(_designed_pattern(T, M, tokenizer, P.LOGIT_DECOY_CATEGORY, P.LOGIT_DECOY_CATEGORY,
                                             P.LOGIT_DECOY_BOS))
    t_self, _ = masses(_target_design(T, M, tokenizer))
    sc, ic = s["mass"]["self_and_copies"], s["mass"]["in_category"]
    assert t_self < 1e-4 and sc[L, H] < 1e-3
    assert sc[L, H] / ic[L, H] < 0.01
    ratio = float(sc[DL, DH] / ic[DL, DH])
    assert abs(ratio / (d_self / d_cat) - 1) < 0.25, (ratio, d_self / d_cat)
    # the decoy's masses themselves: its designed logits' (0.11 and 0.10), within 30%
    assert abs(sc[DL, DH] / d_self - 1) < 0.3 and abs(ic[DL, DH] / d_cat - 1) < 0.3
    others = ic.clone()
    others[L, H] = -1
    assert ic[L, H] > 2 * others.max(), (float(ic[L, H]), float(others.max()))


def _bos_only_mass(model, batch, layer, head=None):
    """Mean attention on BOS of the queries q >= 1 whose only allowed key is BOS: [layer, head] of
    layers 0..layer, or one head's."""
    pat = all_head_patterns(model, batch.tokens, layers=list(range(layer + 1)))
    no_key = batch.mask[:, :, 0] & (batch.mask.sum(-1) == 1)
    no_key[:, 0] = False
    assert no_key.sum() > 50
    bos = pat[..., 0][:, :, no_key].mean(-1)
    return bos if head is None else float(bos[layer, head])


def test_bos_fallback(planted_model, tokenizer, truth):
    """Rule 3: on queries whose only allowed key is BOS, L1H5 puts its mass on BOS -- as much as
    the construction says, and (on sparse prompts) far more than any other head of layers 0-1.

    Derivation (v4; v3's perfect head gave over 0.8 everywhere; v4's single expectation, truth
    design_masses 0.655, mixes two protocols and fits neither). (1) design_masses is the designed
    layers' own numpy forward pass on the build's calibration prompts (8 category prompts,
    repeat 0.2, and 8 random-token prompts with 12 category words, seeds 1000 + seed): the built
    model on those same prompts gives it within 0.01 (measured 0.6554). (2) Sparse prompts (random
    tokens, 8 category words): the no-key queries are mostly ordinary words, whose BOS logit
    LOGIT_BOS is against keys at about 0; the designed logits (computed here) give 0.88, measured
    0.81: within 0.1; every other head puts under half as much there. (3) Category-word prompts:
    a no-key query's other keys are all other categories' words at LOGIT_ANY_CATEGORY, so the
    designed logits give only 0.57 there (computed here), and the drop from sparse prompts is at
    least the designed drop (0.31; measured 0.49: the generic part favours category keys over BOS
    by a further ~1.4 logits on these prompts, _class_logits; measured 0.33 at seed 5, the
    calibration prompts' category half 0.32). On such prompts L1H5 is therefore no BOS-fallback
    head beside the others: layer-0 head 3 puts as much there (0.34 against L1H5's 0.32, the
    early queries' short contexts favouring BOS in every head), which the any-category term makes
    true by construction, so it is not asserted (v3 and the first v4 tuning asserted L1H5 over
    twice every other head there too)."""
    L, H = truth["target"]
    design = truth["design_masses"]["target_bos_on_bos_only_queries"]
    seed = truth["seed"]
    cal = [category_prompts(tokenizer, 8, 48, seed=1000 + seed, repeat_prob=0.2),
           random_token_prompts(tokenizer, 8, 48, n_inserted=12, seed=1000 + seed)]
    pats = [all_head_patterns(planted_model, b.tokens, layers=[0, L])[1, H, ..., 0] for b in cal]
    no_key = [b.mask[:, :, 0] & (b.mask.sum(-1) == 1) for b in cal]
    for nk in no_key:
        nk[:, 0] = False
    cal_mass = float(torch.cat([p[nk] for p, nk in zip(pats, no_key)]).mean())
    assert abs(cal_mass - design) < 0.01, (cal_mass, design)

    def designed(batch):
        nk = batch.mask[:, :, 0] & (batch.mask.sum(-1) == 1)
        nk[:, 0] = False
        return float(_target_design(batch.tokens, batch.mask, tokenizer)[..., 0][nk].mean())

    sparse = random_token_prompts(tokenizer, 16, 48, n_inserted=8, seed=5)
    dense = category_prompts(tokenizer, 16, 48, seed=5, repeat_prob=0.3)
    bos = _bos_only_mass(planted_model, sparse, L)
    d_sparse, d_dense = designed(sparse), designed(dense)
    assert abs(bos[L, H] - d_sparse) < 0.1, (float(bos[L, H]), d_sparse)
    others = bos.clone()
    others[L, H] = 0
    assert bos[L, H] > 2 * others.max(), (float(bos[L, H]), float(others.max()))
    m_dense = _bos_only_mass(planted_model, dense, L, H)
    assert d_dense < d_sparse - 0.2  # the any-category leak, by design
    assert float(bos[L, H]) - m_dense > d_sparse - d_dense - 0.05, (float(bos[L, H]), m_dense, d_sparse, d_dense)


# -- later layers: BOS-heavy heads, BOS damage, the reader ---------------------------------------------------------
def test_later_heads_attend_to_bos(planted_model, tokenizer, truth):
    """Each BOS head puts on BOS (mean over queries q >= 1) the mass the construction measured on
    its calibration prompts (truth design_masses: 0.76-0.91, as gpt2-small's later heads, not v3's
    99%; v3 asserted a mean over 0.8), within 0.05 (the per-head mean over hundreds of queries
    hardly moves with the prompts: measured within 0.01); the generic heads below do not."""
    assert truth["bos_heads"] and all(l >= 2 for l, _ in truth["bos_heads"])
    design = torch.tensor(truth["design_masses"]["bos_heads_bos_mass"])
    assert len(design) == len(truth["bos_heads"]) and ((design > 0.7) & (design < 0.95)).all()
    for batch in (category_prompts(tokenizer, 16, 48, seed=6, repeat_prob=0.2),
                  random_token_prompts(tokenizer, 16, 48, n_inserted=8, seed=6)):
        pat = all_head_patterns(planted_model, batch.tokens)
        bos = pat[..., 1:, 0].mean((-1, -2))  # [layer, head]
        masses = torch.stack([bos[l, h] for l, h in truth["bos_heads"]])
        assert (masses - design).abs().max() < 0.05, (masses, design)
        assert bos[0].max() < 0.5 and bos[1].mean() < 0.3  # the generic heads below do not


def test_damaging_bos_changes_the_output(planted_model, tokenizer):
    """Overwriting BOS's residual before layer 2 (by the mean of other prompts' non-BOS residuals)
    moves the next-token distribution far more than overwriting one ordinary position."""
    toks = category_prompts(tokenizer, 8, 24, seed=9).tokens
    ref = collect_activations(planted_model, category_prompts(tokenizer, 8, 24, seed=10).tokens,
                              ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
    mean = ref[:, 1:].reshape(-1, ref.shape[-1]).mean(0)

    def overwrite(pos):
        def fn(t, hook):
            t = t.clone()
            t[:, pos] = mean
            return t
        return [("blocks.2.hook_resid_pre", fn)]

    clean = torch.log_softmax(planted_model(toks), -1)

    def kl(hooks):
        with planted_model.hooks(fwd_hooks=hooks):
            lp = torch.log_softmax(planted_model(toks), -1)
        return float((clean.exp() * (clean - lp)).sum(-1)[:, 6:].mean())

    bos, other = kl(overwrite(0)), kl(overwrite(5))
    assert bos > 0.3 and bos > 3 * other, (bos, other)


def test_reader_composes_with_l1h5(planted_model, truth):
    """TransformerLens' composition scores put the reader on top of every later head, in the
    composition mode the construction states, and not in the other modes."""
    L, H = truth["target"]
    RL, RH = truth["reader_head"]
    mode = truth["reader_composition"]
    assert RL > L and mode in ("K", "V")
    scores = {m: planted_model.all_composition_scores(m)[L, H] for m in "QKV"}  # [layer, head]
    later = scores[mode][L + 1 :].flatten()
    top2 = later.topk(2)
    assert top2.indices[0] == (RL - L - 1) * P.N_HEADS + RH
    assert top2.values[0] > 2.5 * top2.values[1]
    for m in "QKV":
        if m != mode:
            assert scores[mode][RL, RH] > 2.5 * scores[m][RL, RH]


# -- weights like gpt2-small's: biases, layer norms, full-rank generic heads, the eigenvalue gap ---------------
def test_biases_and_layer_norms_everywhere(planted_model, raw_state_dict):
    sd, n = raw_state_dict, P.N_LAYERS
    for i in range(n):
        for ln in ("ln_1", "ln_2"):
            g, b = sd[f"h.{i}.{ln}.weight"], sd[f"h.{i}.{ln}.bias"]
            assert 0.1 < g.mean() < 1.0 and g.std() > 0.02 and b.norm() > 0.5, (i, ln)
        qkv = sd[f"h.{i}.attn.c_attn.bias"].reshape(3, P.N_HEADS, P.D_HEAD)
        assert (qkv.norm(dim=-1) > 0.1).all(), i  # b_Q, b_K, b_V of every head
        assert sd[f"h.{i}.attn.c_proj.bias"].norm() > 0.1 and sd[f"h.{i}.mlp.c_proj.bias"].norm() > 0.1
        assert sd[f"h.{i}.mlp.c_fc.bias"].norm() > 0.1
    assert sd["ln_f.weight"].std() > 0.02 and sd["ln_f.bias"].norm() > 0.1
    # folded (processed) biases relative to the weights, in gpt2-small's range (0.16-0.72)
    m = planted_model
    rq = m.b_Q.norm(dim=-1) / m.W_Q.flatten(-2).norm(dim=-1)
    rk = m.b_K.norm(dim=-1) / m.W_K.flatten(-2).norm(dim=-1)
    assert ((rq > 0.15) & (rq < 0.75)).all() and ((rk > 0.15) & (rk < 0.75)).all()
    assert (m.b_O.norm(dim=-1) > 0.1).all()


def test_target_biases_like_gpt2_small(planted_model, raw_state_dict, truth):
    """L1H5's folded |b_Q| and |b_K| relative to its weights are gpt2-small's (3.36 / 9.9 = 0.34 and
    2.49 / 9.5 = 0.26: the construction's B_Q_RATIO, B_K_RATIO), and folding the raw layer norm by
    hand gives the loaded head (LN parameters do matter). The absolute norms are no longer
    gpt2-small's (v3 asserted |b_Q| 3.36, |b_K| 2.49, ||W_Q||_F 9.85): v4's large generic part
    (TARGET_GENERIC_COLUMN) and modest logits give ||W_Q||_F 8.0, ||W_K||_F 12.9, so they are the
    construction's (truth target_bias), within a factor 1.5 of gpt2-small's ~9.7."""
    from common.head_qk import FactoredQK

    L, H = truth["target"]
    f = FactoredQK.from_model(planted_model, L, H)
    tb = truth["target_bias"]
    for name, ratio in (("Q", P.B_Q_RATIO), ("K", P.B_K_RATIO)):
        b, W = getattr(f, f"b_{name}").norm(), getattr(f, f"W_{name}").norm()
        assert float(b / W) == pytest.approx(ratio, rel=0.02), name
        assert float(b) == pytest.approx(tb[f"b_{name}"], rel=1e-3) and float(W) == pytest.approx(tb[f"W_{name}_fro"], rel=1e-3)
        assert 9.7 / 1.5 < float(W) < 9.7 * 1.5, (name, float(W))
    folded = FactoredQK.from_gpt2_state_dict(raw_state_dict, L, H, n_heads=P.N_HEADS)
    raw = FactoredQK.from_gpt2_state_dict(raw_state_dict, L, H, n_heads=P.N_HEADS, fold_ln=False)
    for a, b in ((folded.W_Q, f.W_Q), (folded.W_K, f.W_K), (folded.b_Q, f.b_Q), (folded.b_K, f.b_K)):
        assert (a - b).abs().max() < 1e-4 * b.abs().max()
    assert (raw.b_Q - f.b_Q).norm() > 0.5 * f.b_Q.norm()


def test_every_head_is_full_rank_and_generic(planted_model, truth):
    """[W_Q, W_K] has full column rank 2 d_head in every head, so (Sylvester) W_sym has exactly
    d_head negative and d_head positive eigenvalues; no two columns are shared."""
    dh = P.D_HEAD
    assert truth["n_negative_eigenvalues"] == truth["n_positive_eigenvalues"] == dh
    for l in range(truth["n_layers"]):
        for h in range(P.N_HEADS):
            A = torch.cat([planted_model.W_Q[l, h], planted_model.W_K[l, h]], 1).double()
            sv = torch.linalg.svdvals(A)
            assert sv[-1] > 1e-4 * sv[0], (l, h)
            An = torch.nn.functional.normalize(A, dim=0)
            cos = (An.T @ An).abs() - torch.eye(2 * dh, dtype=torch.float64)
            assert cos.max() < 0.99, (l, h)
            sym, _ = _dense_sym(planted_model, l, h)
            eig = np.linalg.eigvalsh(sym)
            tol = 1e-7 * np.abs(eig).max()
            assert (eig < -tol).sum() == dh and (eig > tol).sum() == dh, (l, h)


def test_planted_spectrum(planted_model, truth):
    """The designed spectrum of L1H5's W_sym (v4: Weyl guarantees no gap any more, truth weyl_gap
    None; v3 asserted one and a threshold inside it):
    * the loaded model's d_head negative eigenvalues are the designed ones (truth
      negative_eigenvalues, float64 on the designed matrices; the folder stores float32);
    * Weyl, per sorted eigenvalue: the n_large_negative_eigenvalues most negative lie within
      perturbation_bound of the planted -w_U^2;
    * the actual spectrum (not a guarantee): the ratio between neighbouring negative eigenvalues
      right after the N_CODES code eigenvalues is over 2 and above every ratio among them (the
      next one, -0.8 in folded units, stands apart from the bulk too, so it is not asserted the
      largest of all), and the N_CODES most negative
      eigenvectors span most of the identity-code subspace U (truth code_energy_in_most_negative:
      0.91 at k = N_CODES, each of the first N_CODES adding about 1 / N_CODES, the 28 others
      together under 0.05: the generic part turns the code eigenvectors partly out of U)."""
    L, H = truth["target"]
    sym, skew = _dense_sym(planted_model, L, H)
    eig = np.linalg.eigvalsh(sym)
    n, dh = truth["n_large_negative_eigenvalues"], P.D_HEAD
    assert n == P.N_CODES and truth["weyl_gap"] is None
    designed = np.array(truth["negative_eigenvalues"])
    assert designed.shape == (dh,) and (np.diff(designed) >= 0).all() and designed[-1] < 0
    assert np.abs(eig[:dh] - designed).max() < 1e-5 * np.abs(designed).max()
    big, bound = eig[:n], truth["perturbation_bound"]
    assert np.abs(big - truth["planted_negative_eigenvalue"]).max() <= bound + 1e-5
    ratio = eig[: dh - 1] / eig[1:dh]
    assert ratio[n - 1] > 2 and ratio[: n - 1].max() < ratio[n - 1]  # the codes stay together, apart from the rest
    energy = np.array(truth["code_energy_in_most_negative"])
    assert energy.shape == (dh,) and (np.diff(energy) >= -1e-12).all()
    assert 0.85 < energy[n - 1] <= 1 and (np.diff(energy[:n]) > 0.5 / n).all()
    assert energy[-1] - energy[n - 1] < 0.05
    s_sym, s_skew = np.linalg.norm(sym, 2), np.linalg.norm(skew, 2)
    assert 0 < s_skew < 0.5 * s_sym


# -- positions ----------------------------------------------------------------------------------------------------
def test_positions_as_large_as_tokens(planted_model, truth):
    W_pos = planted_model.W_pos
    norms = W_pos.norm(dim=-1)
    tok = truth["position_norm"]["category_token"]
    assert ((norms > 0.6 * tok) & (norms < 1.2 * tok)).all()
    a, b = P.PROMPT_POSITIONS
    all_mean, prompt_mean = W_pos.mean(0), W_pos[a : b + 1].mean(0)
    assert all_mean.norm() < 0.05 * norms.mean() and prompt_mean.norm() > 0.5 * norms.mean()
    assert all_mean.norm() == pytest.approx(truth["position_norm"]["mean_all_positions"], abs=1e-4)
    assert prompt_mean.norm() == pytest.approx(truth["position_norm"]["mean_prompt_positions"], abs=1e-4)


def test_layer0_attention_depends_on_position_and_content(planted_model, tokenizer):
    toks = category_prompts(tokenizer, 8, 24, seed=12).tokens
    n = toks.shape[1]
    W_pos = planted_model.W_pos

    def attn0(tokens, hooks=()):
        store = {}
        planted_model.run_with_hooks(tokens, stop_at_layer=1, fwd_hooks=list(hooks) + [
            ("blocks.0.hook_attn_out", lambda t, hook: store.__setitem__("a", t[:, 1:].clone()))])
        return store["a"]

    def rel(a, b):
        return float((a - b).norm(dim=-1).mean() / b.norm(dim=-1).mean())

    clean = attn0(toks)
    mean = clean.reshape(-1, clean.shape[-1]).mean(0)
    assert rel(mean.expand_as(clean), clean) > 0.25  # far from one constant vector ...
    resid = (planted_model.W_E[toks[:, 1:]] + W_pos[1:n]).norm(dim=-1).mean()
    assert (clean - mean).norm(dim=-1).mean() > 0.05 * resid  # ... and not negligible in the residual

    def shifted(t, hook):
        t = t.clone()
        t[:, 1:] = W_pos[1 + 40 : n + 40]
        return t

    assert rel(attn0(toks, [("hook_pos_embed", shifted)]), clean) > 0.2  # same tokens, other positions
    other = toks.clone()
    other[:, 1:-1] = category_prompts(tokenizer, 8, 24, seed=13).tokens[:, 1:-1]
    last = attn0(other)[:, -1]
    assert rel(last, clean[:, -1]) > 0.2  # same last token and position, other context


def test_identity_not_position(planted_model, tokenizer, truth):
    """L1H5's W_Q, W_K are orthogonal to every positional row and to layer-0 attention's output;
    mean-ablating positions or layer-0 attention hardly moves its score but breaks the positional
    head; the token embedding and MLP0 carry the category signal."""
    L, H = truth["target"]
    PL, PH = truth["positional_head"]
    m = planted_model
    for W in (m.W_Q[L, H], m.W_K[L, H]):
        for src in (m.W_pos, m.W_O[0].reshape(-1, m.cfg.d_model)):
            assert (src @ W).norm() < 1e-5 * src.norm() * W.norm()
    batch = category_prompts(tokenizer, 32, 48, seed=7, repeat_prob=0.2)
    ref = category_prompts(tokenizer, 32, 48, seed=8).tokens
    names = ["hook_pos_embed", "hook_embed", "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out"]
    # The repo's convention (common/ablation.py): reference-batch mean, BOS left alone.
    hooks = mean_ablation_hooks(collect_activations(m, ref, names))

    def survey(hooks=()):
        return head_survey(m, batch.tokens, batch.mask, hooks=hooks, layers=[0, 1])

    clean = survey()
    score, in_cat = clean["score"].mean(-1)[L, H], clean["mass"]["in_category"][L, H]
    # the category signal is made from the token embedding by MLP0: without either L1H5 loses
    # its in-category mass (v4: 0.27 -> 0.03 and 0.001) and its score rises by over 1 (v3 asserted
    # > 1.0 absolute against a clean score under 0.1; v4's clean score is about 1.0)
    moved = {}
    for name in ("hook_embed", "blocks.0.hook_mlp_out"):
        ablated = survey(hooks[name])
        moved[name] = ablated["score"].mean(-1)[L, H] - score
        assert moved[name] > 1.0 and ablated["mass"]["in_category"][L, H] < 0.25 * in_cat, name
    # positions and layer-0 attention reach L1H5 only through the LN scale and the generic part
    # (W_Q, W_K are orthogonal to P and A, checked above): they move the score (clean 1.03;
    # 0.87 and 1.01) by under a quarter of what removing MLP0 does (1.9)
    for name in ("hook_pos_embed", "blocks.0.hook_attn_out"):
        shift = survey(hooks[name])["score"].mean(-1)[L, H] - score
        assert abs(shift) < 0.25 * moved["blocks.0.hook_mlp_out"], (name, float(shift))
    prev = all_head_patterns(m, batch.tokens[:8], layers=[PL])[0, PH].diagonal(-1, -2, -1).mean()
    prev_abl = all_head_patterns(m, batch.tokens[:8], layers=[PL], hooks=hooks["hook_pos_embed"])[0, PH]
    assert prev > 0.9 and prev_abl.diagonal(-1, -2, -1).mean() < 0.3


def test_previous_token_head(planted_model, tokenizer, truth):
    PL, PH = truth["positional_head"]
    tokens = category_prompts(tokenizer, 8, 48, seed=2).tokens
    pat = all_head_patterns(planted_model, tokens, layers=[PL])[0, PH]
    assert pat.diagonal(-1, -2, -1).mean() > 0.8


if __name__ == "__main__" and "--record" in __import__("sys").argv:
    STATS_FILE.parent.mkdir(exist_ok=True)
    STATS_FILE.write_text(json.dumps(weight_stats(P.build_state_dict(seed=0)[0]), indent=1) + "\n")
    print(f"recorded {STATS_FILE}")
