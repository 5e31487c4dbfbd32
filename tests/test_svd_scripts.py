"""svd_sym_skew_heatmap.py, svd_group_scaling_heatmap.py and svd_rank_ablation.py on the planted
model: the symmetric part carries the scores, and scaling the planted negative eigenvalues turns
self-attention on (ground truth: common.planted)."""

import importlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import check_help_and_common_errors, run_main

from common import planted as P

FIGURES = {
    "svd_sym_skew_heatmap": ("scores_heatmaps.png", "patterns_heatmaps.png", "scatter.png"),
    "svd_group_scaling_heatmap": ("scaling_scores.png", "scaling_patterns.png", "self_vs_alpha.png"),
    "svd_rank_ablation": ("grid_heatmaps.png",),
}


@pytest.fixture(scope="module")
def sym_skew(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("svd_sym_skew_heatmap")
    run_main("svd_sym_skew_heatmap.py", "--model", "planted", "--out", out, "--n-sample", "300", "--threads", "1")
    return out


@pytest.fixture(scope="module")
def sym_skew_twin(tmp_path_factory, planted_model):
    """The same run on the skew twin: the plain model plus a designed skew identity-code term."""
    out = tmp_path_factory.mktemp("svd_sym_skew_heatmap_skew")
    run_main("svd_sym_skew_heatmap.py", "--model", "planted:skew", "--out", out, "--n-sample", "300",
             "--threads", "1")
    return out


def _group_design():
    """Designed weights-only L1H5 logits on the 30 group tokens (5 groups of 6; the j-th word of
    each group holds its category's j-th slot, so it shares the identity codes U_j, V_j with the
    j-th word of every other group). Query i, key j: same group SAME, other group ANY; the same
    slot adds IDENTITY (V) and -(SAME + IDENTITY - SELF) (U), so self gets SELF and the other
    groups' same-slot words ANY + SELF - SAME. Symmetric by construction (common.planted)."""
    grp, slot = np.repeat(np.arange(5), 6), np.tile(np.arange(6), 5)
    D = np.where(grp[:, None] == grp[None], P.LOGIT_SAME_CATEGORY, P.LOGIT_ANY_CATEGORY)
    return D + np.where(slot[:, None] == slot[None], P.LOGIT_SELF - P.LOGIT_SAME_CATEGORY, 0.0)


@pytest.fixture(scope="module")
def scaling(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("svd_group_scaling_heatmap")
    run_main("svd_group_scaling_heatmap.py", "--model", "planted", "--out", out,
             "--curve-alphas", "-1", "-0.5", "0", "0.5", "1", "--threads", "1")
    return out


@pytest.fixture(scope="module")
def rank_grid(tmp_path_factory, planted_model, truth):
    out = tmp_path_factory.mktemp("svd_rank_ablation")
    n_large, n_neg = truth["n_large_negative_eigenvalues"], truth["n_negative_eigenvalues"]
    run_main("svd_rank_ablation.py", "--model", "planted", "--out", out, "--query-set", "category",
             "--ks", "1", n_large, n_neg, n_neg + 8, "--scales", "-1", "0", "0.5", "1",
             "--spearman-queries", "32", "--spearman-keys", "256", "--threads", "1")
    return out


def test_sym_skew_heatmap(sym_skew, sym_skew_twin):
    """Base = Sym + Skew on the group tokens and on BOS + sampled tokens, against the construction.

    Group tokens: the designed logits (_group_design) are symmetric, so Skew there is the generic
    part's only: Skew(Base) = Skew(Base - D) for the design D. A random residual splits its energy
    about evenly between its symmetric and skew parts, so ||Skew|| is about ||Base - D|| / sqrt(2)
    (measured 24.9 of 37.3) and the ratio ||Skew|| / ||Base|| is small (measured 0.16) as long as the
    designed block dominates Base (corr(Base, D) measured 0.97). v3 asserted ratio < 0.1 and a
    mean TV distance between softmax(Base) and softmax(Sym) < 0.05: with v4's large generic part the
    skew entries are about 0.8 logits rms and the TV is 0.23. The contrast that can fail: the skew
    twin (the same model plus LOGIT_SKEW * skew_codes on the identity codes) has the designed skew
    added to exactly this panel (twin minus plain Skew vs the design: correlation 0.99, norm
    within 15%; ratio 0.79, TV 0.69, corr(Base, Sym) 0.61: the sym-reproduces claim's bar 0.95 is
    missed there and met here).

    BOS + 299 random tokens: random tokens carry no planted structure among themselves (only the
    generic product and BOS's one-sided N B^T column, each as skew as symmetric), so there the
    ratio is about 1 / sqrt(2) (measured 0.69), far above the group tokens'.
    """
    for f in (*FIGURES["svd_sym_skew_heatmap"], "scores.csv", "numbers.csv", "scatter_points.csv", "summary.json",
              "meta.json"):
        assert (sym_skew / f).stat().st_size > 0, f
    n = pd.read_csv(sym_skew / "numbers.csv")
    g, s = n.iloc[0], n.iloc[1]
    assert g.pearson_base_sym > 0.95 and g.variance_share_sym > 0.95
    assert g.max_abs_reconstruction_error < 1e-3  # Base = Sym + Skew
    scores = pd.read_csv(sym_skew / "scores.csv")
    assert len(scores) == 3 * 30 * 30 and set(scores.panel) == {"Base", "Sym", "Skew"}
    panel = lambda sc, p: sc[sc.panel == p].score.to_numpy().reshape(30, 30)  # noqa: E731
    D = _group_design()
    base, skew = panel(scores, "Base"), panel(scores, "Skew")
    assert np.corrcoef(base.ravel(), D.ravel())[0, 1] > 0.95  # the scores are the designed ones
    resid = np.linalg.norm(base - D)
    assert np.linalg.norm(skew) < 0.8 * resid  # Skew is the generic residual's (1/sqrt(2) expected)
    assert g.fro_ratio_skew_base == pytest.approx(np.linalg.norm(skew) / np.linalg.norm(base), rel=1e-4)
    assert g.fro_ratio_skew_base < 0.8 * resid / np.linalg.norm(base)
    # random tokens: about 1/sqrt(2); the group tokens far below
    assert abs(s.fro_ratio_skew_base - 1 / np.sqrt(2)) < 0.1 and s.fro_ratio_skew_base > 3 * g.fro_ratio_skew_base
    # the skew twin: its designed skew term is what Skew gains, and every asymmetry number rises
    twin = pd.read_csv(sym_skew_twin / "numbers.csv").iloc[0]
    tscores = pd.read_csv(sym_skew_twin / "scores.csv")
    designed = P.LOGIT_SKEW * np.kron(np.ones((5, 5)), np.array(P.ground_truth(twin="skew")["skew_codes"])[:6, :6])
    gained = panel(tscores, "Skew") - skew
    assert np.corrcoef(gained.ravel(), designed.ravel())[0, 1] > 0.95
    assert np.linalg.norm(gained) == pytest.approx(np.linalg.norm(designed), rel=0.15)
    assert twin.fro_ratio_skew_base > 3 * g.fro_ratio_skew_base
    assert twin.mean_tv_attention_base_sym > 2 * g.mean_tv_attention_base_sym
    assert twin.pearson_base_sym < 0.9 < 0.95 < g.pearson_base_sym
    summary = json.loads((sym_skew / "summary.json").read_text())
    assert summary["score_kind"] == "weights only"  # --biases is off by default here
    assert len(summary["group_tokens"]) == len(summary["groups"]) == 30
    # the scatter's points are the saved scores: every group pair, and BOS's row/column, the
    # diagonal and a sample of the 300 sampled tokens' pairs
    pts = pd.read_csv(sym_skew / "scatter_points.csv")
    grp = pts[pts.token_set == "group tokens"]
    assert len(grp) == 30 * 30 and np.allclose(grp.base.to_numpy(), base.ravel(), atol=1e-4)
    assert (pts.token_set == "sampled tokens").sum() == 2 * 300 - 1 + 299 + 10_000


def test_group_scaling(scaling, truth):
    for f in (*FIGURES["svd_group_scaling_heatmap"], "scores.csv", "curves.csv", "summary.json", "meta.json"):
        assert (scaling / f).stat().st_size > 0, f
    c = pd.read_csv(scaling / "curves.csv")
    assert len(c) == 5 * 30
    at = {a: g for a, g in c.groupby("alpha")}
    # unmodified: self is suppressed (far down the vocabulary, no self-attention among the group)
    assert (at[1.0].self_rank_vocab >= 1000).mean() >= 0.9
    assert at[1.0].self_attention_group.max() < 0.01
    # negative eigenvalues removed (alpha = 0) or flipped: self is the top key over the whole
    # vocabulary (the planted positive identity term makes self beat its category at alpha = 0)
    for a in (-1.0, -0.5, 0.0):
        assert (at[a].self_rank_vocab == 0).mean() >= 0.9
    # self's attention among the 30 group tokens (5 groups of 6; word j of every group holds the
    # group's j-th slot, so it shares the identity codes U_j, V_j with one word of each other group:
    # 4 "partners"). Design (v4), for a query of the group tokens with every negative eigenvalue
    # scaled by alpha (f = share of the code energy in the 40 negative eigenvectors, truth
    # code_energy_in_most_negative[39] = 0.97; code term c = SAME + IDENTITY - SELF = 15.5):
    # self s(alpha) = SAME + IDENTITY - c (1 - f) - alpha c f; the 5 other words of its group SAME;
    # its 4 partners ANY + IDENTITY - c (1 - f) - alpha c f, always SAME - ANY = 2.75 under self
    # (the shared codes move them with self); the 20 others ANY. So alpha = 0 gives self 0.70 of
    # the mass, alpha <= -0.5 the partner limit 1 / (1 + 4 e^-2.75) = 0.80 (v3 and the intermediate
    # tuning had no any-category term and ignored the partners: > 0.9), alpha = 0.5 0.003. The
    # generic part's random logits spread the per-token values (measured 0.57-0.97; means 0.76 at
    # alpha 0, 0.88-0.89 below): every mean within 0.15 under the design.
    code = P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY - P.LOGIT_SELF
    f = truth["code_energy_in_most_negative"][truth["n_negative_eigenvalues"] - 1]

    def design(alpha):
        s_self = P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY - code * (1 - f) - alpha * code * f
        return 1 / (1 + 5 * np.exp(P.LOGIT_SAME_CATEGORY - s_self)
                    + 4 * np.exp(P.LOGIT_ANY_CATEGORY - P.LOGIT_SAME_CATEGORY)
                    + 20 * np.exp(P.LOGIT_ANY_CATEGORY - s_self))

    assert design(0.5) < 0.1 * design(0.0)  # the ordering asserted below, by design
    group = c.groupby("alpha").self_attention_group.mean()
    for a in (-1.0, -0.5, 0.0):
        assert group[a] > design(a) - 0.15, (a, group[a], design(a))
    # alpha = -1 and -0.5 are both at the partner limit (they differ by terms of order e^-11)
    assert abs(group[-1.0] - group[-0.5]) < 0.05, group
    assert group[-0.5] >= group[0.0] > 10 * group[0.5] > 10 * group[1.0], group
    assert np.all(np.diff(c.groupby("alpha").self_score.mean().to_numpy()) < 0)  # self score falls with alpha
    s = pd.read_csv(scaling / "scores.csv")
    assert {"unmodified (alpha = 1)", "alpha = 0.5", "alpha = 0", "alpha = -1"} == set(s.panel)
    # --which negative scales every negative eigenvalue: a full-rank head has d_head of them
    # (Sylvester), the designed ones (truth negative_eigenvalues, float64 on the designed matrices;
    # v4 has no Weyl-guaranteed gap, so no threshold splits them)
    summary = json.loads((scaling / "summary.json").read_text())
    assert summary["n_selected"] == truth["n_negative_eigenvalues"]
    sel = np.array(summary["selected_eigenvalues"])
    assert len(sel) == truth["n_negative_eigenvalues"] and (sel < 0).all()
    designed = np.array(truth["negative_eigenvalues"])
    assert np.abs(np.sort(sel) - designed).max() < 1e-5 * np.abs(designed).max()
    assert json.loads((scaling / "meta.json").read_text())["args"]["biases"] is True  # on by default here


def test_rank_ablation(rank_grid, truth):
    """Self-rank over the whole vocabulary after scaling the k most negative eigenvalues.

    Construction (common.planted, v4): on a category query the identity codes give self
    -w_U^2-part = -(self_without_negative_eigenvalues - self) = -(SAME + IDENTITY - SELF) = -15.5
    logits, the positive identity term leaves self at SAME + IDENTITY = 9.5 against SAME = 5.5 for
    its category once they are gone (its 4-per-category code partners in other categories move
    with self and stay SAME - ANY = 2.75 under it). Scaling the k most negative eigenvalues by s
    moves the self logit by about code f (1 - s), f = the share of the word's code energy in the
    selected eigenvectors; self tops its category when code f (1 - s) > need = SAME - SELF = 11.5.
    k = 12: f is about truth code_energy_in_most_negative[11] = 0.966 (the generic part turns the
    code eigenvectors partly out of U; v3: f = 1), so s = 0 gives self a mean lead of
    15.5 * 0.966 - 11.5 = 3.5 logits, which the generic part's random logits (a few units) overturn
    for a few words: acc@1 >= 0.9; s = -1 a lead of 18 logits: >= 0.98; s = 0.5 a deficit of
    11.5 - 7.5 = 4.0 logits: none. k = 40 adds only the other 28 negative eigenvalues (|lambda| <
    0.9, together under 0.01 of the code energy): the same outcomes. k = 1: the codes' shares of one
    eigenvector sum to at most 1, so f > need / (2 code) = 0.37 at s = -1 holds for at most 2 of the
    12 codes (<= 28 of the 163 words); k = 11 is not determined by the construction.
    """
    code = truth["logits"]["self_without_negative_eigenvalues"] - truth["logits"]["self"]
    need = truth["logits"]["same_category"] - truth["logits"]["self"]
    f12 = truth["code_energy_in_most_negative"][truth["n_large_negative_eigenvalues"] - 1]
    assert code == P.LOGIT_SAME_CATEGORY + P.LOGIT_IDENTITY - P.LOGIT_SELF and need == P.LOGIT_SAME_CATEGORY - P.LOGIT_SELF
    assert code * f12 > need + 2 and code * f12 * 0.5 < need - 3  # s = 0 wins, s = 0.5 loses, by design
    assert 2 * code * f12 > need + 12  # s = -1
    assert 3 * need / (2 * code) > 1  # k = 1: at most 2 codes can reach f > need / (2 code)
    for f in (*FIGURES["svd_rank_ablation"], "grid.csv", "ranks.npz", "summary.json", "meta.json"):
        assert (rank_grid / f).stat().st_size > 0, f
    g = pd.read_csv(rank_grid / "grid.csv")
    n_large, n_neg = truth["n_large_negative_eigenvalues"], truth["n_negative_eigenvalues"]
    n_words = sum(len(v) for v in truth["categories"].values())
    assert len(g) == 4 * 4 and (g.n_queries == n_words).all()
    assert set(g.k_effective) == {1, n_large, n_neg}  # k = n_neg + 8 is capped at the d_head negative ones
    assert (g[g.k == n_neg + 8].k_effective == n_neg).all()
    cell = lambda k, s: g[(g.k == k) & (g.scale == s)].iloc[0]  # noqa: E731
    for k in (1, n_large, n_neg):  # unmodified: self far down the vocabulary for every word
        assert cell(k, 1.0)["acc@1"] == 0 and cell(k, 1.0).mean_rank > 10_000
    for k in (n_large, n_neg, n_neg + 8):
        assert cell(k, 0.0)["acc@1"] >= 0.9 and cell(k, -1.0)["acc@1"] >= 0.98  # the 12 planted codes suffice
        assert cell(k, 0.5)["acc@1"] == 0.0  # halving them does not
    for s in (0.0, -1.0):
        assert cell(1, s)["acc@1"] <= 28 / n_words
    # the rank ordering is really changed by the edit (independent check of its value: below)
    assert cell(n_large, -1.0).spearman_keys < cell(n_large, 0.0).spearman_keys < cell(n_large, 0.5).spearman_keys < 1
    r = np.load(rank_grid / "ranks.npz")
    assert r["ranks"].shape == (4, 4, n_words) and len(r["queries"]) == n_words
    summary = json.loads((rank_grid / "summary.json").read_text())
    assert summary["n_negative_eigenvalues"] == n_neg
    assert json.loads((rank_grid / "meta.json").read_text())["peak_rss_mb"] > 0


def test_key_order_spearman_equals_a_dense_computation(planted_model, truth):
    """key_order_spearman against W_QK edited densely in float64 and scipy's Spearman per query."""
    import torch
    from scipy.stats import spearmanr

    from common.effective_embeddings import effective_embeddings
    from common.head_qk import FactoredQK

    m = importlib.import_module("svd_rank_ablation")
    model = planted_model
    E = effective_embeddings(model, 1)
    days, colours = truth["categories"]["days"], truth["categories"]["colours"]
    q_ids = torch.tensor(days[:4] + colours[:4])
    g = torch.Generator().manual_seed(0)
    k_ids = torch.cat([torch.tensor(days + colours), torch.randperm(E.shape[0], generator=g)[:100]])
    qk = FactoredQK.from_model(model, 1, 5)
    n_large = truth["n_large_negative_eigenvalues"]
    ks, scales = [1, n_large], [-1.0, 0.0, 1.0]
    got = m.key_order_spearman(qk.scorer(), qk.sym_eig(), E, q_ids, k_ids, ks, scales, 1.0 / qk.attn_scale, True)

    W_Q, W_K = model.W_Q[1, 5].double(), model.W_K[1, 5].double()
    b_Q, b_K = model.b_Q[1, 5].double(), model.b_K[1, 5].double()
    W = W_Q @ W_K.T
    lam, U = torch.linalg.eigh((W + W.T) / 2)  # ascending: the most negative first
    x, y = E[q_ids].double(), E[k_ids].double()
    base = (x @ W_Q + b_Q) @ (y @ W_K + b_K).T
    for ik, k in enumerate(ks):
        for js, s in enumerate(scales):
            edit = (s - 1.0) * (x @ U[:, :k]) * lam[:k] @ (y @ U[:, :k]).T
            want = [spearmanr(base[i].numpy(), (base + edit)[i].numpy()).statistic for i in range(len(q_ids))]
            assert np.allclose(got[ik, js], want, atol=1e-3), (k, s)
    assert got[1, 0].mean() < 0.9  # flipping the planted codes reorders these keys


def test_argsort_rows_is_torch_argsort():
    """argsort_rows (numpy's sort where a row has no tie) returns torch.argsort's permutation
    exactly, ties (including -0.0 against 0.0) and NaN rows included."""
    import torch

    m = importlib.import_module("svd_rank_ablation")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g)
    x[1] = torch.randint(0, 5, (300,), generator=g).float()  # many ties
    x[2, 7], x[2, 100] = -0.0, 0.0
    x[3, 5] = float("nan")
    x[4, 9] = x[4, 200]
    got = m.argsort_rows(x)
    assert torch.equal(got, torch.argsort(x, -1))
    assert torch.equal(torch.sort(x[5]).values, x[5][got[5]])  # a row without ties: sorted


def test_rank_ablation_sampled_queries(planted_model):
    # compute() alone (no files, no figure): the sampled-query path of the same grid
    from common.effective_embeddings import effective_embeddings
    from common.head_qk import FactoredQK

    m = importlib.import_module("svd_rank_ablation")
    args = m.parse_args(["--model", "planted", "--n-queries", "24", "--ks", "2", "--scales", "0", "1",
                         "--spearman-queries", "8", "--spearman-keys", "64"])
    results = m.compute(planted_model, args, FactoredQK.from_model(planted_model, args.layer, args.head),
                        effective_embeddings(planted_model, args.layer))
    g = results.tables["grid"]
    assert (g.n_queries == 24).all() and (g.mean_rank_ci95 >= 0).all() and "acc@256_ci95" in g
    assert results.summary["queries"] == "24 sampled queries" and len(results.ranks["queries"]) == 24


@pytest.mark.parametrize("script,fixture", [("svd_sym_skew_heatmap", "sym_skew"),
                                            ("svd_group_scaling_heatmap", "scaling"),
                                            ("svd_rank_ablation", "rank_grid")])
def test_render_redraws_from_saved_files(script, fixture, request):
    out = request.getfixturevalue(fixture)
    drawn_by_main = {f: (out / f).read_bytes() for f in FIGURES[script]}
    for f in FIGURES[script]:
        (out / f).unlink()
    paths = importlib.import_module(script).render(out)
    assert sorted(p.name for p in paths) == sorted(FIGURES[script])
    for f in FIGURES[script]:  # the same figures: they depend on the saved files only
        assert (out / f).read_bytes() == drawn_by_main[f], f


def test_biases_flag_has_one_spelling(capsys):
    sym = importlib.import_module("svd_sym_skew_heatmap").parse_args
    assert sym([]).biases is False and sym(["--biases"]).biases is True
    for script in ("svd_group_scaling_heatmap", "svd_rank_ablation"):
        parse = importlib.import_module(script).parse_args
        assert parse([]).biases is True and parse(["--no-biases"]).biases is False
    with pytest.raises(SystemExit) as e:
        sym(["--with-biases"])  # the old spelling is gone
    assert e.value.code == 2 and "--with-biases" in capsys.readouterr().err


@pytest.mark.parametrize("script,bad", [
    ("svd_sym_skew_heatmap.py", ["--n-sample", "1"]),
    ("svd_group_scaling_heatmap.py", ["--which", "zero"]),
    ("svd_rank_ablation.py", ["--ks", "0"]),
])
def test_help_and_bad_input(script, bad, tmp_path, capsys, planted_model):
    main = importlib.import_module(script.removesuffix(".py")).main
    check_help_and_common_errors(main, tmp_path, capsys)
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--out", str(tmp_path), *bad])
    assert e.value.code != 0
    assert bad[0] in capsys.readouterr().err + str(e.value.code)


def test_group_scaling_in_context(scaling):
    """in_context.csv: the claim's numbers on the group tokens' true layer inputs in the demo text.
    Planted: removing the negative eigenvalues makes every token its own top key (self logit +16
    against +12 for a same-category key), unmodified never (-6)."""
    from common.context_inputs import EFFECTIVE, IN_CONTEXT
    from svd_group_scaling_heatmap import check_eigen_steering

    t = pd.read_csv(scaling / "in_context.csv").set_index(["statistic", "inputs"])
    top = t.loc[("share of group tokens whose own key is the top key at alpha 0", IN_CONTEXT)]
    med = t.loc[("median self-rank over the vocabulary at alpha 1", IN_CONTEXT)]
    assert top.n_tokens == 30 and top.value >= 0.9 and med.value >= 100
    ev = check_eigen_steering(scaling)
    eff = t.loc[("share of group tokens whose own key is the top key at alpha 0", EFFECTIVE)].value
    assert eff == ev.numbers["self_top_share_alpha0"]  # the effective row is the number the claim judges
    assert "in_context" in ev.numbers and "in context over 30 tokens" in ev.note


def test_rank_grid_in_context(rank_grid):
    from common.context_inputs import EFFECTIVE, IN_CONTEXT
    from svd_rank_ablation import check_rank_grid

    t = pd.read_csv(rank_grid / "in_context.csv").set_index(["statistic", "inputs"])
    g = pd.read_csv(rank_grid / "grid.csv")
    assert t.loc[("best acc@1 over the grid", EFFECTIVE)].value == pytest.approx(g["acc@1"].max())
    unedited = t.loc[("unedited mean self-rank", IN_CONTEXT)]
    best = t.loc[("best acc@1 over the grid", IN_CONTEXT)]
    assert unedited.n_tokens >= 100 and unedited.value > 100  # planted: self never the top key unedited
    assert best.value >= 0.9  # ... and the top key once the negative eigenvalues are removed
    assert "in_context" in check_rank_grid(rank_grid).numbers
