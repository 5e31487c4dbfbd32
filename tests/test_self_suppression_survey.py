"""self_suppression_survey.py and common/self_suppression.py.

Ground truth: the planted model's construction (common/planted.py, ground_truth(): the target head
repels a token's own key, reads no position; the positional head reads only positions), math
(Sylvester's law, a brute-force positional sensitivity), and the real gpt2-small attention weights
of ../shared through bench/build_model.py's model (skipped where ../shared is absent)."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from common.effective_embeddings import effective_embeddings
from common.head_qk import FactoredQK
from common.self_suppression import summarise_tokens, token_self_stats
from conftest import check_help_and_common_errors, run_main
from real_tensor_model import real_tensor_folder
from shared_weights import load_shared_gpt2_state_dict, requires_shared

SCRIPT = "self_suppression_survey.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("self_suppression_survey")
    run_main(SCRIPT, "--model", "planted", "--out", str(out), "--n-sample", "64", "--threads", "1")
    return out


@pytest.fixture(scope="module")
def category_ids(truth):
    return sorted(t for ids in truth["categories"].values() for t in ids)


def test_outputs_and_render_from_saved_files(run, tmp_path):
    import shutil

    import self_suppression_survey as survey

    for f in ("weights_survey.csv", "token_self_scores.csv", "token_self_suppression.csv",
              "weights_survey_heatmaps.png", "self_suppression.png", "summary.json", "meta.json"):
        assert (run / f).stat().st_size > 0, f
    assert not (run / "self_suppression_all_heads.png").exists()  # one layer only
    meta = json.loads((run / "meta.json").read_text())
    assert meta["weights"]["verdict"] == "planted" and not meta["weights_only_inputs_genuine"]
    # render() draws from the saved files alone: copy them (no PNGs) to a new folder. The saved
    # rows of layer 1 are copied to layer 0 as well, as --token-space all would save them, which
    # adds the all-heads figure without a second model run.
    for f in ("weights_survey.csv", "token_self_suppression.csv", "summary.json", "meta.json"):
        shutil.copy(run / f, tmp_path / f)
    tok = pd.read_csv(tmp_path / "token_self_suppression.csv")
    pd.concat([tok.assign(layer=0), tok]).to_csv(tmp_path / "token_self_suppression.csv", index=False)
    paths = survey.render(tmp_path)
    assert sorted(p.name for p in paths) == ["self_suppression.png", "self_suppression_all_heads.png",
                                             "weights_survey_heatmaps.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_inertia_columns_obey_sylvester(run, planted_model):
    w = pd.read_csv(run / "weights_survey.csv")
    cfg = planted_model.cfg
    assert len(w) == cfg.n_layers * cfg.n_heads
    full = w[w.rank_factors == 2 * cfg.d_head]
    assert len(full) > 0 and full.full_column_rank.all()
    assert (full.n_negative == cfg.d_head).all() and (full.n_positive == cfg.d_head).all()
    assert (full.n_zero == cfg.d_model - 2 * cfg.d_head).all()
    assert (w.n_negative + w.n_positive + w.n_zero == cfg.d_model).all()
    s = json.loads((run / "summary.json").read_text())
    assert s["full_rank_heads_obey_sylvester"] and "Sylvester" in s["inertia_note"]


def test_planted_target_stands_out_in_token_space_but_not_on_the_count(run, truth):
    layer, head = truth["target"]
    tok = pd.read_csv(run / "token_self_suppression.csv")
    cat = tok[(tok["layer"] == layer) & (tok.subset == "category")].set_index("head")
    others = cat.drop(index=head)
    # Construction: a category word's own key gets LOGIT_SELF < 0 while unrelated keys get ~0, so
    # with key main effects removed the own key sits at the very bottom of the vocabulary.
    assert truth["logits"]["self"] < 0
    assert cat.loc[head, "mean_self_rank_pct"] >= 0.9
    assert cat.loc[head, "mean_self_rank_pct"] > others.mean_self_rank_pct.max() + 0.25
    assert cat.loc[head, "frac_negative_self_score"] >= 0.9
    assert cat.loc[head, "mean_neg_share"] > 0.5 and cat.loc[head, "mean_neg_share"] > others.mean_neg_share.max()
    # ... while the post's count does not single it out: read as "more negatives among the top =
    # more self-suppression", it ranks other heads of the layer above the target
    w = pd.read_csv(run / "weights_survey.csv")
    wl = w[w["layer"] == layer].set_index("head")
    assert wl.loc[head, "n_negative_top"] < wl.drop(index=head).n_negative_top.max()
    s = json.loads((run / "summary.json").read_text())["token_space"]["standout"]
    assert s["category"]["target_highest_self_rank_pct"] and not s["n_negative_top"]["target_highest_count"]
    # and where the target has full-rank [W_Q W_K], its inertia equals every full-rank head's (Sylvester)
    if wl.loc[head, "full_column_rank"]:
        full = wl[wl.full_column_rank]
        assert full.n_negative.nunique() == 1 and full.n_positive.nunique() == 1


def test_every_head_has_the_same_inertia_the_count_misses_the_target_the_token_statistic_does_not(
        run, planted_model, truth, category_ids):
    """Planted v3: every head's [W_Q W_K] has full column rank (common.planted checks it), so by
    Sylvester's law every head of every layer has inertia (d_head, d_head, d_model - 2 d_head):
    no eigenvalue count can tell the self-suppressing target apart. The post's count (negatives
    among the d_head largest |lambda|) ranks it *low*, below the decoy (2, 2), a same-category
    head that does not suppress itself; the token statistic separates the two completely."""
    cfg = planted_model.cfg
    dh, d = cfg.d_head, cfg.d_model
    assert (truth["n_negative_eigenvalues"], truth["n_positive_eigenvalues"]) == (dh, dh)
    w = pd.read_csv(run / "weights_survey.csv").set_index(["layer", "head"])
    counts = {}
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            # independent float64 inertia of W_sym
            Wq, Wk = planted_model.W_Q[layer, head].double().numpy(), planted_model.W_K[layer, head].double().numpy()
            lam = np.linalg.eigvalsh((Wq @ Wk.T + Wk @ Wq.T) / 2)
            tol = 1e-6 * np.abs(lam).max()
            assert ((lam < -tol).sum(), (lam > tol).sum()) == (dh, dh), (layer, head)
            assert FactoredQK.from_model(planted_model, layer, head).weights().inertia().as_tuple() == (dh, dh, d - 2 * dh)
            row = w.loc[(layer, head)]
            assert (row.n_negative, row.n_positive, row.n_zero) == (dh, dh, d - 2 * dh), (layer, head)
            counts[layer, head] = int((lam[np.argsort(-np.abs(lam))[:dh]] < 0).sum())
            assert row.n_negative_top == counts[layer, head], (layer, head)
    target, decoy = tuple(truth["target"]), tuple(truth["decoy_head"])
    # The count from the construction: the target's planted W_sym has n_categories eigenvalues
    # +w_C^2 (same category), N_CODES = n_large_negative_eigenvalues eigenvalues +w_V^2 and as
    # many -w_U^2 (identity), a +-w_B^2/2 pair (the BOS term), zeros elsewhere; the generic part
    # moves each by at most perturbation_bound (Weyl), small against w_C^2, w_V^2, w_U^2. So the
    # d_head largest |lambda| hold the N_CODES code eigenvalues and the n_categories + N_CODES
    # positive ones, leaving room for at most d_head - n_categories - 2 N_CODES other negatives.
    n_codes, n_cat = truth["n_large_negative_eigenvalues"], len(truth["categories"])
    assert n_codes <= counts[target] <= dh - n_cat - n_codes
    assert counts[target] < counts[decoy] and counts[target] < max(counts.values())
    # Token space (each head on its own layer's effective embeddings, category words as queries):
    # the target's own key sits at the bottom (planted self logit -6, same category +12), the
    # decoy's near the top (its self-score is the same-category score, so only the other words
    # of the query's category, at most 11 of the vocabulary, can tie or beat it).
    ids = torch.tensor(category_ids)
    stats = {}
    for layer in (target[0], decoy[0]):
        E = effective_embeddings(planted_model, layer)
        Ec = E - E.mean(0, keepdim=True)
        heads = range(cfg.n_heads) if layer == target[0] else [decoy[1]]
        for h in heads:
            stats[layer, h] = token_self_stats(FactoredQK.from_model(planted_model, layer, h), E, ids, E_centred=Ec)
    t, dcy = stats[target], stats[decoy]
    assert t.self_rank_pct.mean() >= 0.9 and (t.self_score_centred < 0).mean() >= 0.9
    assert dcy.self_rank_pct.max() < 0.01 and (dcy.self_score_centred > 0).all()
    best_other = max(v.self_rank_pct.mean() for k, v in stats.items() if k != target)
    assert t.self_rank_pct.mean() > best_other + 0.25


def test_token_self_stats_match_dense_scores():
    """Streamed ranks and the eigen-share against a dense computation on a small random vocabulary."""
    g = torch.Generator().manual_seed(1)
    V, d, dh = 300, 16, 4
    E = torch.randn(V, d, generator=g)
    qk = FactoredQK(torch.randn(d, dh, generator=g), torch.randn(d, dh, generator=g),
                    torch.randn(dh, generator=g), torch.randn(dh, generator=g))
    ids = torch.tensor([0, 5, 17, 299])
    t = token_self_stats(qk, E, ids, key_chunk=64, query_chunk=3)
    raw = ((E.double() @ qk.W_Q.double() + qk.b_Q.double()) @ (E.double() @ qk.W_K.double() + qk.b_K.double()).T
           / qk.attn_scale)
    inter = raw - raw.mean(0, keepdim=True)  # each key's mean over all queries removed
    # float32 streamed ranks vs float64 here: exact, since no key comes within 8e-5 of a row's largest
    # |score| of the own key's score (measured), far beyond float32 round-off (~1e-7)
    for row, i in zip(t.itertuples(), ids.tolist()):
        others = torch.arange(V) != i
        assert row.self_rank_raw == int((raw[i, others] > raw[i, i]).sum())
        assert row.self_rank == int((inter[i, others] > inter[i, i] + 1e-9).sum())
        assert row.self_rank_pct == pytest.approx(row.self_rank / (V - 1))
        x = (E[i] - E.mean(0)).double()
        W = qk.W_Q.double() @ qk.W_K.double().T
        lam, U = np.linalg.eigh(((W + W.T) / 2).numpy())
        c = lam * (x.numpy() @ U) ** 2
        assert row.neg_share == pytest.approx(-c[lam < 0].sum() / np.abs(c).sum(), rel=1e-6)
        assert row.self_score_centred == pytest.approx(float(x @ W @ x), rel=1e-4, abs=1e-4)
    s = summarise_tokens(t.assign(layer=0, head=0), ["layer", "head"])
    assert s.n_queries.iloc[0] == 4 and s.mean_self_rank_pct.iloc[0] == pytest.approx(t.self_rank_pct.mean())


def test_positional_sensitivity_brute_force_and_planted(run, truth):
    import self_suppression_survey as survey

    g = torch.Generator().manual_seed(2)
    P, W_Q, W_K = torch.randn(9, 6, generator=g), torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    b_Q, b_K = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    got_pp = survey.positional_sensitivity(P, W_Q, W_K, attn_scale=2.0)
    got = survey.positional_sensitivity(P, W_Q, W_K, attn_scale=2.0, b_Q=b_Q)
    for h in range(2):
        S = (P @ W_Q[h]) @ (P @ W_K[h]).T / 2.0
        ref = np.mean([np.std(S[i, : i + 1].numpy()) for i in range(1, 9)])
        assert float(got_pp[h]) == pytest.approx(ref, rel=1e-5)
        # the whole score, both biases in: b_K adds only per-query constants, which drop out
        full = ((P @ W_Q[h] + b_Q[h]) @ (P @ W_K[h] + b_K[h]).T / 2.0).double().numpy()
        ref_full = np.mean([np.std(full[i, : i + 1]) for i in range(1, 9)])
        assert float(got[h]) == pytest.approx(ref_full, rel=1e-5)
        assert abs(ref_full - ref) > 0.05 * ref  # the b_Q term matters on these weights
    w = pd.read_csv(run / "weights_survey.csv")
    layer, head = truth["target"]
    pl, ph = truth["positional_head"]
    for col in ("positional_sensitivity", "positional_sensitivity_pos_pos"):
        wl = w[w["layer"] == pl].set_index("head")[col]
        assert wl.idxmax() == ph, col  # the previous-token head reads only positions
        # the target's W_Q, W_K are orthogonal to the positional block: nothing varies with key position
        assert w[(w["layer"] == layer) & (w["head"] == head)][col].iloc[0] < 1e-6 * wl.max(), col


def test_weights_only_part_ignores_the_token_embedding(planted_model):
    import self_suppression_survey as survey

    other = copy.deepcopy(planted_model)  # never edit the shared model in place
    with torch.no_grad():
        other.W_E.copy_(torch.randn(other.W_E.shape, generator=torch.Generator().manual_seed(3)))
    a = survey.weights_only_survey(planted_model, top=planted_model.cfg.d_head, rtol=1e-5)
    b = survey.weights_only_survey(other, top=other.cfg.d_head, rtol=1e-5)
    pd.testing.assert_frame_equal(a, b)
    del other


def test_help_and_bad_input(tmp_path, capsys, planted_model):
    import self_suppression_survey as survey

    assert "suppress their own token" in check_help_and_common_errors(survey.main, tmp_path, capsys)
    for bad in (["--n-sample", "-1"], ["--top", "0"], ["--token-space", "some"]):
        with pytest.raises(SystemExit) as e:
            survey.main(["--model", "planted", "--out", str(tmp_path), *bad])
        assert e.value.code != 0 and bad[0] in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))  # nothing half-written


@requires_shared
def test_real_gpt2_small_attention_weights_survey(tmp_path_factory):
    """On gpt2-small's real attention weights (bench model: real W_Q/W_K/W_pos/LN, random wte/MLP)."""
    from common.model import forget_models

    folder = real_tensor_folder(tmp_path_factory)
    out = tmp_path_factory.mktemp("survey-real")
    try:
        run_main(SCRIPT, "--model", str(folder), "--out", str(out), "--token-space", "none", "--threads", "1")
    finally:
        forget_models()  # free the 0.5 GB model for the rest of the session
    w = pd.read_csv(out / "weights_survey.csv")
    assert len(w) == 144
    assert (w.rank_factors == 128).all() and (w.n_negative == 64).all() and (w.n_positive == 64).all()
    t = w[(w["layer"] == 1) & (w["head"] == 5)].iloc[0]
    assert t.n_negative_top == 33  # the post's "33 of the 64 largest"
    assert t.sv_max_sym == pytest.approx(1.86, abs=0.01) and t.sv_max_skew == pytest.approx(1.35, abs=0.015)
    l1 = w[w["layer"] == 1].set_index("head")
    assert l1.positional_sensitivity.idxmin() == 5  # L1H5: least position-dependent head of layer 1
    assert set(l1.positional_sensitivity.nlargest(2).index) == {0, 1}
    # issue 20: with the query-bias x key-position term (which varies across keys) L1H5 moves from
    # 0.0386 to about 0.10, still the lowest of layer 1, and L1H9 from 0.0395 (second lowest) to
    # about 0.43, 10th of 12 from the lowest
    assert l1.loc[5, "positional_sensitivity_pos_pos"] == pytest.approx(0.0386, abs=5e-4)
    assert l1.loc[9, "positional_sensitivity_pos_pos"] == pytest.approx(0.0395, abs=5e-4)
    assert l1.positional_sensitivity_pos_pos.rank().loc[9] == 2
    assert l1.loc[5, "positional_sensitivity"] == pytest.approx(0.103, abs=0.005)
    assert l1.loc[9, "positional_sensitivity"] == pytest.approx(0.432, abs=0.005)
    assert l1.positional_sensitivity.rank().loc[9] == 10
    # both against an independent computation from the shared file itself (ln_1 folded by hand:
    # W <- diag(ln_1.weight) W, b_Q <- b_Q + ln_1.bias W_Q; W_pos centred), every head of layer 1
    sd = load_shared_gpt2_state_dict()
    P = sd["wpe.weight"].double()
    P = P - P.mean(1, keepdim=True)
    W, b = sd["h.1.attn.c_attn.weight"].double(), sd["h.1.attn.c_attn.bias"].double()
    g, beta = sd["h.1.ln_1.weight"].double(), sd["h.1.ln_1.bias"].double()
    low = torch.ones(len(P), len(P), dtype=torch.bool).tril()

    def spread(S):  # mean over queries i >= 1 of the std over keys j <= i
        m = torch.where(low, S, 0.0).sum(1) / low.sum(1)
        return float((torch.where(low, (S - m[:, None]) ** 2, 0.0).sum(1) / low.sum(1))[1:].sqrt().mean())

    for h in range(12):
        q_cols, k_cols = slice(64 * h, 64 * h + 64), slice(768 + 64 * h, 768 + 64 * h + 64)
        q = P @ (g[:, None] * W[:, q_cols])
        k = P @ (g[:, None] * W[:, k_cols])
        b_q = b[q_cols] + beta @ W[:, q_cols]
        assert l1.loc[h, "positional_sensitivity_pos_pos"] == pytest.approx(spread(q @ k.T / 8), rel=1e-4), h
        assert l1.loc[h, "positional_sensitivity"] == pytest.approx(spread((q + b_q) @ k.T / 8), rel=1e-4), h
    # issue 11's reading of the count: layer 1's other heads have 35-49, L1H11 has 4
    assert l1.loc[11, "n_negative_top"] == 4 and l1.drop(index=[5, 11]).n_negative_top.between(35, 49).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["weights"]["verdict"] == ("not gpt2-small: 25 tensors differ "
                                          "(wte.weight, h.0-11.mlp.c_fc.weight, h.0-11.mlp.c_proj.weight)")
    assert meta["weights_only_inputs_genuine"]  # what these statistics read is verified genuine
    assert not (out / "token_self_scores.csv").exists()


def test_in_context_self_rank_beside_the_effective_one(run, truth):
    """in_context.csv: the category words' self-rank percentile on their true layer inputs in the
    demo text; planted, the target's own key is still ranked lowest of its layer (self logit -6
    against +12 for a same-category key), and the claim's evidence carries both numbers.

    The level: v4's first tuning gave 0.9997 (effective 0.9992) and this test asserted > 0.99. The
    final build moves the generic query's rows of what every token has (N, the common O vector) onto
    each category's K row (common.planted._target_head: ordinary words' queries must not read the
    category keys), and the percentile ranks centred embeddings, whose centring cancelled those rows
    for a category word (its N and O coordinates are within about 10% of the vocabulary mean's) but
    does not cancel its K_c coordinate. Its centred query now carries that generic part, which puts
    1.5% of the vocabulary's keys below self in context (5% on effective embeddings; measured 0.985
    and 0.948). Asserted: above 0.97, and 0.4 above the best other head of the layer (0.55, as
    before)."""
    from common.context_inputs import IN_CONTEXT
    from self_suppression_survey import check_self_rank

    layer, head = truth["target"]
    t = pd.read_csv(run / "in_context.csv").set_index(["statistic", "inputs"])
    me = t.loc[(f"mean self-rank percentile L{layer}H{head} (category words)", IN_CONTEXT)]
    other = t.loc[("best other head of the layer", IN_CONTEXT)]
    assert me.n_tokens >= 100 and me.value > 0.97 and me.value > other.value + 0.4
    ev = check_self_rank(run)
    assert ev.numbers["in_context"][f"mean self-rank percentile L{layer}H{head} (category words)"][IN_CONTEXT] == me.value
    assert "in context over" in ev.note
