"""rule_preserving_ablation.py on the planted model: the rules and W_sym explain L1H5's effect,
removing the negative eigenvalues does not; the score replacement is exact; bad input fails clearly."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from script_run import run_then_render

SCRIPT = "rule_preserving_ablation.py"
FIGURES = ("explained.png", "k_curve.png")
# The script's default windows (16 of 96 tokens, 16 reference windows), where the rules-explained
# claim is judged: planted v4's head leaks much of its mass to unrelated words, so on v3's smaller
# test size (8 windows of 48) the rules' bootstrap CI reached down to 0.42, below the claim's 0.5.
# Fewer bootstrap resamples than the default 2000 (the CI's end points move by ~0.01).
FAST = ["--n-windows", "16", "--n-reference", "16", "--window-len", "96", "--batch-size", "8", "--n-boot", "500"]


@pytest.fixture(scope="module")
def demo_windows(tokenizer):
    from common.natural_text import load_text, sample_windows, tokenize

    text, _ = load_text("demo")
    tokens, _ = sample_windows(tokenize(tokenizer, text), 48, 6, tokenizer.bos_token_id, seed=3)
    return tokens


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory, truth, planted_model):
    out = tmp_path_factory.mktemp("rpa")
    # By |eigenvalue| the planted W_sym has the any-category direction and the 12 suppressing
    # identity codes first (k = 12 holds 11 of them), then the other category directions (to
    # k = 26); its full rank is 2 d_head (every head has full column rank, truth): the planted
    # directions and the generic ones (test_rules_and_w_sym_explain_the_planted_head).
    rank = truth["n_negative_eigenvalues"] + truth["n_positive_eigenvalues"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        # no --communities: the default categories are the word lists
        drawn = run_then_render(SCRIPT, out, "--model", "planted", "--text", "demo",
                                "--k-values", f"1,12,26,{rank}", *FAST, "--threads", "1")
    return out, stdout.getvalue(), rank, drawn


def _truth_communities(truth, path):
    """A clustering.py-style table whose communities are the planted categories (what clustering.py
    recovers on the planted model, tests/test_clustering.py), community names of our own."""
    rows = [(t, f"c{j}") for j, ids in enumerate(truth["categories"].values()) for t in ids]
    pd.DataFrame({"token": ["x"] * len(rows), "id": [r[0] for r in rows],
                  "community": [r[1] for r in rows]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def with_communities(tmp_path_factory, truth, planted_model):
    out = tmp_path_factory.mktemp("rpa-communities")
    table = _truth_communities(truth, out.parent / "communities.csv")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_then_render(SCRIPT, out, "--model", "planted", "--text", "demo", "--communities", str(table),
                        "--k-values", "1", *FAST, "--threads", "1")
    return out, stdout.getvalue(), table


def test_end_to_end_outputs(end_to_end, truth):
    out, stdout, rank, _ = end_to_end
    for f in ("explained.csv", "k_curve.csv", "query_types.csv", "worst_failures.csv", "per_window_kl.csv",
              *FIGURES, "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    assert not list(out.glob(".*-*")), "temporary files left behind"
    s = json.loads((out / "summary.json").read_text())
    assert s["categories_source"].startswith("category lists")
    assert "categories: category lists" in stdout
    # the default run has no communities variant, and says so
    assert s["communities_source"] is None and s["n_communities"] == 0
    assert "rules_communities" not in set(pd.read_csv(out / "explained.csv").variant)
    assert s["recomputed_pattern_max_abs_diff"] < 1e-4
    assert s["w_sym_rank"] == rank and s["w_sym_n_negative"] == truth["n_negative_eigenvalues"]
    worst = pd.read_csv(out / "worst_failures.csv", keep_default_na=False)
    assert {"context", "token", "head_attended", "rules_predicted", "kl_rules"} <= set(worst.columns)
    assert worst.kl_rules.is_monotonic_decreasing and len(worst) > 0
    assert "worst failures of the rules" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["k_values"] == [1, 12, 26, rank] and meta["summary"]["n_windows"] == s["n_windows"]


def test_render_draws_every_figure_from_saved_files(end_to_end):
    """render(out_dir) drew every figure into a folder that held only the saved results."""
    out, _, _, drawn = end_to_end
    assert sorted(p.name for p in drawn) == sorted(FIGURES)
    for f in FIGURES:
        assert (out / f).stat().st_size > 0, f


def test_rules_and_w_sym_explain_the_planted_head(end_to_end, planted_model, truth):
    """The rules-explained claim on the planted model: the rules' pattern explains more than half
    of the head's effect, its CI above RULES_EXPLAIN_MOST (v4 ~0.76, CI [0.65, 0.84] against
    the mean ablation; ~0.82 against resampling). v3 asserted >= 0.95 with CI >= 0.9, which only
    v3's near-perfect head met: v4's head has a large generic random part (TARGET_GENERIC_COLUMN
    0.5) that leaks mass to unrelated words, and the rules' pattern has no generic part.
    W_sym keeps the symmetric half of that generic part (it drops only the skew half: the N B^T
    term's and the generic part's), so it explains more than the rules: asserted as its CI lying
    above the rules' point estimate (v4 0.93 [0.89, 0.96]). Removing the self-suppression
    (negative eigenvalues zeroed) is far worse than the rules, in fact worse than no head."""
    import rule_preserving_ablation as rpa

    out, _, rank, _ = end_to_end
    ex = pd.read_csv(out / "explained.csv").set_index(["variant", "baseline"])
    for b in ("mean", "resample"):
        rules, sym = ex.loc[("rules", b)], ex.loc[("sym", b)]
        assert rules.ci_lo > rpa.RULES_EXPLAIN_MOST, b
        assert sym.ci_lo > rules.explained, b
        assert ex.loc[("neg_zeroed", b), "explained"] < rules.explained - 0.5
        assert ex.loc[("sym_neg_zeroed", b), "explained"] < rules.explained - 0.5
    assert ex.loc[("mean", "mean"), "mean_kl"] > 0.01  # the head matters at all
    assert rpa.check_rules_explained(out).holds  # the claim's own check: "planted: holds"

    k = pd.read_csv(out / "k_curve.csv").set_index("k")
    assert list(k.index) == [1, 12, 26, rank]
    # By |eigenvalue| (W_sym recomputed below from the weights, float64): v4's largest is
    # positive, the rank-one term that gives every category key LOGIT_ANY_CATEGORY (sum of the
    # category directions, outer product with itself, on top of their own w_C^2); then come the
    # 12 identity codes (-w_U^2 moved by the generic part: ~-3.0..-3.7), then the other category
    # directions (~1.1) among generic ones (the next negative ~-0.8). So the 12 largest are that
    # direction and 11 codes: suppression with no category term explains little. With the category
    # directions (k = 26) the planted part is in and explains much more -- but in v4 not "nearly
    # everything" (v3: > 0.9): the generic directions left out carry the rest, so the full W_sym
    # (k = rank) explains clearly more again.
    assert k.loc[1, "eigenvalue_k"] > 0 and k.loc[12, "eigenvalue_k"] < 0
    assert k.loc[12, "n_negative_in_top_k"] == 11
    assert k.loc[12, "explained"] < 0.5
    assert k.loc[26, "ci_lo"] > k.loc[12, "ci_hi"]
    assert k.loc[rank, "ci_lo"] > k.loc[26, "ci_hi"]
    # The curve's last point (k = rank) is the smallest |eigenvalue| and every negative one is in.
    assert abs(k.loc[rank, "eigenvalue_k"]) == pytest.approx(truth["min_abs_eigenvalue"], rel=0.05)
    assert k.loc[rank, "n_negative_in_top_k"] == truth["n_negative_eigenvalues"]
    # The scorers behind the curve, against W_QK written out densely (float64): the top-k
    # eigen-directions of W_sym by |eigenvalue|, and for k = rank W_sym itself, each with the
    # head's b_Q/b_K cross-terms and 1/sqrt(d_head), on seeded LN-scale inputs.
    scorers, _, ks = rpa.mechanism_scorers(planted_model, 1, 5, ",".join(str(i) for i in k.index))
    m = planted_model
    W_Q, W_K = m.W_Q[1, 5].double(), m.W_K[1, 5].double()
    b_Q, b_K = m.b_Q[1, 5].double(), m.b_K[1, 5].double()
    W = W_Q @ W_K.T
    lam, U = torch.linalg.eigh((W + W.T) / 2)
    order = torch.argsort(lam.abs(), descending=True)
    x = torch.randn(24, m.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)

    def dense(M):
        return (x @ M @ x.T + (x @ W_Q @ b_K)[:, None] + (x @ W_K @ b_Q)[None, :] + b_Q @ b_K) / m.cfg.attn_scale

    # the spectrum the comment above describes, from the weights themselves
    by_size = lam[order]
    assert by_size[0] > 0 and (by_size[1:13] < 0).all() and by_size[1:13].abs().min() > 2 * by_size[13:].abs().max()
    for kk in ks:
        top = order[:kk]
        M = (U[:, top] * lam[top]) @ U[:, top].T
        if kk == rank:
            assert torch.allclose(M, (W + W.T) / 2, atol=1e-6 * float(W.abs().max()))  # all directions = W_sym
        got = scorers["sym" if kk == rank else f"top{kk}"].scores(x.float(), x.float()).double()
        want = dense(M)
        assert (got - want).abs().max() < 1e-4 * want.abs().max(), kk
    assert (scorers["sym"].scores(x.float(), x.float()).double() - dense(W)).abs().max() > 0.1  # the skew part is gone


def test_score_replacement_is_exact(planted_model, demo_windows):
    from common.head_replacement import cache_inputs, kl_per_token, run_from_layer, score_hooks
    from common.head_qk import FactoredQK

    m = planted_model
    scorer = FactoredQK.from_model(m, 1, 5).scorer()
    cache = cache_inputs(m, demo_windows, 1, 5, scorer=scorer)
    assert (cache["recomputed"] - cache["pattern"]).abs().max() < 1e-4
    clean = run_from_layer(m, cache["resid_pre"], 1, [])
    assert torch.allclose(clean, m(demo_windows), atol=1e-4)  # starting at layer 1 changes nothing
    same = run_from_layer(m, cache["resid_pre"], 1, score_hooks(1, 5, scorer))
    assert kl_per_token(torch.log_softmax(clean, -1), same).max() < 1e-5


def _assert_logits_close(got, want, model, x):
    """Logits of the final residual ``x`` from two unembedding calls agree to float32 round-off:
    |difference| <= 1e-6 x the Cauchy-Schwarz bound |x| |W_U[:, v]| + |b_U[v]| of each logit
    (float32 logits here are within 1.6e-7 of that of float64, measured). Not bit for bit: the
    two calls multiply by W_U in another memory layout or at another number of rows, and the BLAS
    kernel (hence the order of the sums) depends on both, differently on different CPUs."""
    bound = x.double().norm(dim=-1, keepdim=True) * model.W_U.double().norm(dim=0) + model.b_U.double().abs()
    assert got.shape == want.shape
    assert ((got.double() - want.double()).abs() <= 1e-6 * bound).all(), (got - want).abs().max()


def test_blockwise_kl_and_logits_are_the_whole_tensor_numbers(planted_model, demo_windows):
    """run_from_layer's logits are the model's own (to float32 round-off: :func:`_assert_logits_close`),
    and so are logits unembedded a few windows at a time; log_softmax_ in place and kl_per_token
    block by block give exactly (torch.equal) the whole-tensor numbers of the same logits: every
    operation there is row-wise (each row is reduced by the same code in the same order however
    many rows there are), so bit-identity is guaranteed; and the KL is the float64 sum
    p (log p - log q) computed here."""
    from common.head_replacement import (cache_inputs, final_residual, kl_per_token, log_softmax_, row_blocks,
                                         run_from_layer, unembed, z_hooks)

    m = planted_model
    resid = cache_inputs(m, demo_windows, 1, 5)["resid_pre"]
    hooks = z_hooks(1, 5, lambda z, hook: -4.0 * z)  # a large change, so the KL is well above float32 round-off
    with torch.no_grad():
        _assert_logits_close(run_from_layer(m, resid, 1, []), m(resid, start_at_layer=1), m,
                             final_residual(m, resid, 1, []))
        with m.hooks(fwd_hooks=hooks):
            want_other = m(resid, start_at_layer=1)
    other = run_from_layer(m, resid, 1, hooks)
    x = final_residual(m, resid, 1, hooks)
    _assert_logits_close(other, want_other, m, x)
    assert (other - want_other).abs().max() < 1e-3 < (other - run_from_layer(m, resid, 1, [])).abs().max()  # the hooks act
    clean = run_from_layer(m, resid, 1, [])
    whole = torch.log_softmax(clean, -1)
    clean_logp = log_softmax_(clean.clone())
    assert torch.equal(clean_logp, whole)
    d = torch.log_softmax(other, -1)
    d.sub_(whole).neg_()
    assert torch.equal(kl_per_token(clean_logp, other), torch.linalg.vecdot(whole.exp(), d).clamp_min(0.0))
    p64, q64 = torch.log_softmax(clean.double(), -1), torch.log_softmax(other.double(), -1)
    ref = (p64.exp() * (p64 - q64)).sum(-1)
    assert torch.allclose(kl_per_token(clean_logp, other).double(), ref, rtol=1e-3, atol=1e-5)
    assert ref.max() > 1e-2  # the ablation does change the predictions
    # variant_kls unembeds UNEMBED_MIN_ROWS positions or more at a time: the whole batch's logits
    from rule_preserving_ablation import UNEMBED_MIN_ROWS

    g = -(-UNEMBED_MIN_ROWS // x.shape[1])
    assert g < len(x)  # more than one group: the grouping is exercised
    _assert_logits_close(torch.cat([unembed(m, x[i : i + g]) for i in range(0, len(x), g)]), other, m, x)
    for n in (1, 5, 64, 65, 127, 128, 129, 1000):
        blocks = row_blocks(n)
        assert blocks[0].start == 0 and blocks[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
        sizes = [b.stop - b.start for b in blocks]
        assert max(sizes) <= 64 and min(sizes) >= min(n, 32)


def test_rules_mask_matches_ideal_mask(tokenizer, demo_windows):
    from common.head_replacement import categories_from_lists, rules_mask, rules_pattern
    from common.prompts import ideal_mask, repeated_token_prompts, token_category_map

    cats = categories_from_lists(tokenizer, 50257)
    cat_of = token_category_map(tokenizer)
    # On prompts of listed (spaced) words both agree; on natural text the lists' other spellings
    # count too (test_natural_text_categories_match_every_spelling).
    for toks in (repeated_token_prompts(tokenizer, 4, 20).tokens,):
        assert torch.equal(rules_mask(toks, cats), ideal_mask(toks, cat_of))
    p = rules_pattern(demo_windows, cats)
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]))


def test_community_table_is_read(tmp_path, tokenizer, truth):
    from common.head_replacement import categories_from_communities

    rows = [(t, c) for c, ids in enumerate(truth["categories"].values()) for t in ids]
    rows += [(11, 99), (50256, 100), (50256, 100)]  # a singleton and BOS: both in no category
    pd.DataFrame({"token": ["x"] * len(rows), "id": [r[0] for r in rows], "community": [r[1] for r in rows]}).to_csv(
        tmp_path / "communities.csv", index=False)
    cats = categories_from_communities(tmp_path / "communities.csv", 50257)
    assert cats.n_tokens == len(rows) - 3 and len(cats.names) == len(truth["categories"])
    assert cats.of(11) == -1 and cats.of(50256) == -1
    assert cats.of(truth["categories"]["days"][0]) == cats.of(truth["categories"]["days"][1]) >= 0
    assert "communities from" in cats.source
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="community column"):
        categories_from_communities(tmp_path / "bad.csv", 50257)


def test_windows_and_text_errors(tmp_path, tokenizer):
    from common.natural_text import TextUnavailable, read_text_path, sample_windows

    ids = list(range(100))
    toks, starts = sample_windows(ids, 11, 5, 50256, seed=0)
    assert toks.shape == (5, 11) and (toks[:, 0] == 50256).all()
    assert len(set(starts)) == 5 and all(s % 10 == 0 for s in starts)
    assert torch.equal(toks, sample_windows(ids, 11, 5, 50256, seed=0)[0])
    assert len(sample_windows(ids, 11, 50, 50256)[0]) == 10  # fewer available than asked
    with pytest.raises(ValueError, match="shorter than one window"):
        sample_windows(ids[:5], 11, 1, 50256)
    with pytest.raises(TextUnavailable, match="no .txt files"):
        read_text_path(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert read_text_path(tmp_path) == "first\nsecond"


def _main(*args):
    import rule_preserving_ablation as rpa

    return rpa.main(list(args))


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    (tmp_path / "empty.txt").write_text("  \n")
    cases = [
        (["--text", str(tmp_path / "missing.txt")], "no such file"),
        (["--text", str(tmp_path / "empty.txt")], "the text is empty"),
        (["--text", str(short)], "shorter than one window"),
        (["--text", "demo", "--head", "99"], "out of range"),
        (["--text", "demo", "--out", "/proc/x"], "not writable"),
        (["--text", "demo", "--window-len", "1"], "at least 2"),
        (["--text", "demo", "--communities", str(tmp_path / "nope.csv")], "no such file"),
    ]
    for extra, msg in cases:
        argv = ["--model", "planted", *(["--out", str(tmp_path / "o")] if "--out" not in extra else []), *extra]
        with pytest.raises(SystemExit) as e:
            _main(*argv)
        assert msg in str(e.value.code), (extra, e.value.code)
    with pytest.raises(SystemExit) as e:
        _main("--help")
    assert e.value.code == 0
    assert "--communities" in capsys.readouterr().out


def test_k_values_parsing():
    import rule_preserving_ablation as rpa

    assert rpa.parse_k_values("auto", 28) == [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28]
    assert rpa.parse_k_values("auto", 10) == list(range(1, 11))
    assert rpa.parse_k_values("auto", 128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert rpa.parse_k_values("3,1", 10) == [1, 3]
    with pytest.raises(SystemExit, match="within 1..10"):
        rpa.parse_k_values("11", 10)
    assert np.array_equal(rpa.parse_k_values("all", 3), [1, 2, 3])


def test_wikitext_unavailable_names_the_alternatives(monkeypatch):
    import datasets

    from common.natural_text import TextUnavailable, load_text

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TextUnavailable, match="--text PATH") as e:
        load_text(None)
    assert "--text demo" in str(e.value) and "ConnectionError" in str(e.value)


def test_default_categories_are_the_word_lists_even_beside_a_clustering_output(tmp_path, tokenizer, truth):
    """The communities are computed from the head's own QK scores: by default (no --communities,
    or 'lists') the rules use the word lists only, even with a clustering output beside ours;
    a community table adds the rules_communities variant and leaves the rules' categories alone."""
    import rule_preserving_ablation as rpa
    from common.prompts import CATEGORIES

    (tmp_path / "clustering").mkdir()
    days = truth["categories"]["days"]
    table = tmp_path / "clustering" / "communities.csv"
    pd.DataFrame({"id": days, "community": [0] * len(days)}).to_csv(table, index=False)
    for arg in (None, "lists"):
        cats = rpa.resolve_categories(arg, tokenizer, 50257)
        assert list(cats) == ["rules"] and cats["rules"].source.startswith("category lists")
        assert cats["rules"].names == list(CATEGORIES)
    both = rpa.resolve_categories(str(table), tokenizer, 50257)
    assert list(both) == ["rules", rpa.COMMUNITIES]
    assert both["rules"].source.startswith("category lists")
    assert str(table) in both[rpa.COMMUNITIES].source and both[rpa.COMMUNITIES].n_tokens == len(days)


def test_communities_are_a_labelled_variant_beside_the_word_lists(end_to_end, with_communities, truth):
    """--communities PATH: the word-list rules row is the default run's (same windows, same
    bootstrap; equal to float round-off, 1e-9), and a labelled rules_communities row is added; with
    communities equal to the planted categories it explains the planted head about as well."""
    import rule_preserving_ablation as rpa

    out0 = end_to_end[0]
    out, stdout, table = with_communities
    s = json.loads((out / "summary.json").read_text())
    assert s["categories_source"].startswith("category lists")
    assert s["communities_source"] == f"communities from {table}"
    assert s["n_communities"] == len(truth["categories"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["summary"]["communities_source"] == s["communities_source"]
    assert f"categories ({rpa.COMMUNITIES}, circular): communities from {table}" in stdout
    ex = pd.read_csv(out / "explained.csv").set_index(["variant", "baseline"])
    ex0 = pd.read_csv(out0 / "explained.csv").set_index(["variant", "baseline"])
    for b in ("mean", "resample"):
        for col in ("mean_kl", "explained", "ci_lo", "ci_hi"):
            assert ex.loc[("rules", b), col] == pytest.approx(ex0.loc[("rules", b), col], abs=1e-9), (b, col)
        assert "word-list" in ex.loc[("rules", b), "label"]
        label = ex.loc[(rpa.COMMUNITIES, b), "label"]
        assert "communities" in label and "circular" in label
        # Communities equal to the planted categories give the rules' pattern wherever the text's
        # category words are the planted ids, so the two rows explain the head alike (measured
        # within 0.01). Whether either explains *most* of the head is the rules-explained claim,
        # asserted in test_rules_and_w_sym_explain_the_planted_head (v3 asserted >= 0.9 here).
        assert abs(ex.loc[(rpa.COMMUNITIES, b), "explained"] - ex.loc[("rules", b), "explained"]) < 0.1
        assert s["explained"][b][rpa.COMMUNITIES]["explained"] == pytest.approx(ex.loc[(rpa.COMMUNITIES, b), "explained"])
    assert s["explained"]["mean"]["rules"]["explained"] == pytest.approx(ex.loc[("rules", "mean"), "explained"])
    assert (out / "explained.png").stat().st_size > 0


def test_communities_variant_follows_the_community_table(planted_model, tokenizer, truth, demo_windows, tmp_path):
    """The rules_communities pattern is built from the table it is given: communities equal to the
    planted categories reproduce the head's effect about as well as the word lists, while
    communities that mix the categories (the i-th word of every category together, so no two
    words of one community share a category) do far worse (the head never attends across
    categories)."""
    from argparse import Namespace

    import rule_preserving_ablation as rpa
    from common.head_replacement import cache_inputs, categories_from_communities

    truthful = categories_from_communities(_truth_communities(truth, tmp_path / "t.csv"), 50257)
    rows = [(t, f"m{i}") for ids in truth["categories"].values() for i, t in enumerate(ids)]
    pd.DataFrame({"id": [r[0] for r in rows], "community": [r[1] for r in rows]}).to_csv(tmp_path / "m.csv", index=False)
    mixed = categories_from_communities(tmp_path / "m.csv", 50257)
    m = planted_model
    ev, ref = demo_windows[:4], demo_windows[4:]
    cache = cache_inputs(m, ev, 1, 5)
    hooks = rpa.variant_hooks(1, 5, {}, cache_inputs(m, ref, 1, 5)["z"], seed=0)
    args = Namespace(layer=1, head=5, batch_size=4)
    rule_cats = {"rules": rpa.resolve_categories(None, tokenizer, 50257)["rules"], "truthful": truthful, "mixed": mixed}
    kl, _ = rpa.variant_kls(m, args, ev, cache["resid_pre"], rule_cats, hooks)
    ablated = kl["mean"].mean()
    # Contrasts only: how much the rules explain (v3 here: rules < 0.1 x ablated) is the
    # rules-explained claim, asserted in test_rules_and_w_sym_explain_the_planted_head.
    # Truthful communities = the planted categories: the rules' pattern on the planted words
    # (measured 0.01175 against 0.01195).
    assert abs(kl["truthful"].mean() - kl["rules"].mean()) < 0.1 * kl["rules"].mean()
    # Mixed communities send a category query's mass to other categories' words with its own
    # identity code, which the head scores at LOGIT_SELF - LOGIT_SAME_CATEGORY = 4 - 13.75 = -9.75
    # (the code terms without the category's): worse than the rules and than removing the head
    # (measured 2.6x and 1.6x; v3: > 5x
    # the rules, when the rules' KL was near 0).
    assert kl["mixed"].mean() > ablated and kl["mixed"].mean() > 2 * kl["rules"].mean()


# "Monday" at a line start, " monday" (two tokens), a listed word inside a longer one, homographs.
NATURAL = ("The shop opens on Tuesday.\nMonday was cold, and on monday we rest.\nRedistribution is allowed "
           "(Friday) but it may rain in May.\nHe said the Red Sea was red. Tom met john.")
# Each token of NATURAL with the category a reader gives it (None: no category word there).
NATURAL_TRUTH = [
    ("The", None), (" shop", None), (" opens", None), (" on", None), (" Tuesday", "days"), (".", None),
    ("\n", None), ("Monday", "days"), (" was", None), (" cold", None), (",", None), (" and", "logical"),
    (" on", None), (" m", None), ("onday", None), (" we", "pronouns"), (" rest", None), (".", None), ("\n", None),
    ("Red", None), ("ist", None), ("ribution", None), (" is", None), (" allowed", None), (" (", None),
    ("Friday", "days"), (")", None), (" but", "logical"), (" it", "pronouns"), (" may", None), (" rain", "weather"),
    (" in", None), (" May", "months"), (".", None), ("\n", None), ("He", "pronouns"), (" said", None),
    (" the", None), (" Red", "colours"), (" Sea", None), (" was", None), (" red", "colours"), (".", None),
    (" Tom", "names"), (" met", None), (" john", "names"), (".", None),
]


def test_natural_text_categories_match_every_spelling(tmp_path, tokenizer):
    """On natural text (rule_preserving_ablation's category lists), a listed word counts however
    the text spells it as one token: "Monday" at a line start, "Friday" after a bracket, "He"
    starting a line, " Red", " john"; " monday" is two tokens (" m" + "onday") and counts as none,
    as do "Red" inside "Redistribution" and " may" (the verb). The rules' keys for every query
    follow from a reader's categories by the rule itself (earlier, same category, other token;
    else BOS), computed here without the code under test."""
    import rule_preserving_ablation as rpa
    from common.head_replacement import rules_mask
    from common.natural_text import tokenize
    from common.prompts import CATEGORIES

    ids = tokenize(tokenizer, NATURAL)
    assert [tokenizer.decode([i]) for i in ids] == [t for t, _ in NATURAL_TRUTH]
    tokens = torch.tensor([[tokenizer.bos_token_id, *ids]])
    cats = rpa.resolve_categories("lists", tokenizer, 50257)["rules"]
    names = list(CATEGORIES)
    truth = [None] + [c for _, c in NATURAL_TRUTH]
    expected = torch.zeros(len(truth), len(truth), dtype=torch.bool)
    for q in range(len(truth)):
        for k in range(1, q):
            expected[q, k] = truth[q] is not None and truth[k] == truth[q] and tokens[0, k] != tokens[0, q]
        expected[q, 0] = not expected[q].any()
    got = rules_mask(tokens, cats)[0]
    for q in range(len(truth)):
        assert torch.equal(got[q], expected[q]), (q, tokenizer.decode([int(tokens[0, q])]), truth[q])
    assert cats.of_tokens(tokens)[0].tolist() == [-1] + [names.index(c) if c else -1 for _, c in NATURAL_TRUTH]

    # The query-type table and the worst-failure rows see the same categories as the rules: "Red"
    # inside "Redistribution" or " may" the verb is a query with no category.
    mask = rules_mask(tokens, cats)
    pattern = mask.float() / mask.float().sum(-1, keepdim=True)
    n = len(truth) - 1
    kl = torch.arange(1, n + 1, dtype=torch.float32)[None]  # distinct, so every position is ranked
    table = rpa.query_type_table(tokens, mask, pattern, {"rules": kl, "mean": kl}, cats).set_index("query_type")
    assert table.loc["no category", "n_tokens"] == sum(c is None for c in truth[1:])
    worst = rpa.worst_failures(tokens, pattern, mask, kl, kl, cats, tokenizer, n)
    assert dict(zip(worst.position, worst.category)) == {q: truth[q] or "" for q in range(1, len(truth))}
