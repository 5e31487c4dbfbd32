"""common/context_inputs.py on the planted model: the true layer-1 inputs of tokens in natural-text
windows, against an independent full forward pass, and L1H5's self-suppression measured on them."""

import argparse

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def windows(tokenizer):
    from common.natural_text import sample_windows
    from common.text_ids_cache import script_text_ids

    ids, _ = script_text_ids(None, "planted", tokenizer)
    return sample_windows(ids, 49, 12, tokenizer.bos_token_id, seed=5)[0]


@pytest.fixture(scope="module")
def category_ids(truth):
    return sorted(t for ids in truth["categories"].values() for t in ids)


def test_inputs_equal_the_models_own_layer1_attention_input(planted_model, windows):
    """layer_inputs (stop_at_layer, then ln1) against a full run_with_cache's
    blocks.1.ln1.hook_normalized, position by position. Both are the same float32 operations on the
    same weights (layer 0 run on the same tokens), so they agree to float32 round-off: 1e-5 on
    entries of RMS 1."""
    from common.context_inputs import layer_inputs

    _, cache = planted_model.run_with_cache(windows, names_filter="blocks.1.ln1.hook_normalized")
    want = cache["blocks.1.ln1.hook_normalized"].float()
    got = layer_inputs(planted_model, windows, 1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_means_and_counts_per_token_against_masks(planted_model, windows, category_ids):
    """collect's per-token mean and count against numpy masks over the full forward pass; a token
    that never occurs gets no row and is listed as missing; BOS (position 0) is never counted."""
    from common.context_inputs import collect

    _, cache = planted_model.run_with_cache(windows, names_filter="blocks.1.ln1.hook_normalized")
    x = cache["blocks.1.ln1.hook_normalized"].double().numpy()[:, 1:]
    toks = windows.numpy()[:, 1:]
    absent = next(t for t in range(1000, 50000) if t not in set(toks.ravel().tolist()))
    bos = int(windows[0, 0])
    ctx = collect(planted_model, windows, 1, category_ids + [absent, bos], batch_size=5)
    assert absent in ctx.missing and absent not in ctx.token_ids.tolist()
    assert (bos in ctx.missing) == (bos not in toks)  # BOS counts only where it occurs after position 0
    occurring = [t for t in category_ids if (toks == t).any()]
    assert ctx.token_ids.tolist() == sorted(set(occurring) | ({bos} if (toks == bos).any() else set()))
    assert len(occurring) >= 20
    for t in occurring:
        i = ctx.token_ids.tolist().index(t)
        mask = toks == t
        assert int(ctx.count[i]) == int(mask.sum())
        np.testing.assert_allclose(ctx.mean[i].numpy(), x[mask].mean(0), atol=1e-5)
    E = torch.zeros(planted_model.cfg.d_vocab, planted_model.cfg.d_model)
    Ex = ctx.substitute(E)
    assert torch.equal(Ex[ctx.token_ids], ctx.mean) and not Ex[absent].any() and not E.any()


def test_in_context_self_rank_follows_the_planted_rules(planted_model, truth, category_ids):
    """On the category words' true layer-1 inputs in the demo text, L1H5's own key is never the
    top key over the vocabulary (planted self logit -6 against +12 for a same-category key), and
    with the negative eigenvalues of W_sym removed it is (planted: self then scores +16)."""
    from common.context_inputs import context_inputs
    from common.effective_embeddings import effective_embeddings
    from common.head_qk import FactoredQK
    from common.token_scores import self_rank, self_rank_grid

    layer, head = truth["target"]
    lg = truth["logits"]
    assert lg["self"] < lg["same_category"] < lg["self_without_negative_eigenvalues"]
    args = argparse.Namespace(text=None, model="planted", seed=0, context_windows=64, layer=layer)
    ctx = context_inputs(planted_model, args, category_ids)
    covered = ctx.covered(category_ids)
    assert len(covered) >= 100 and ctx.record()["n_covered"] == len(covered)
    qk = FactoredQK.from_model(planted_model, layer, head)
    Ex = ctx.substitute(effective_embeddings(planted_model, layer))
    scorer = qk.scorer()
    assert (self_rank(scorer, Ex, covered) > 0).all()
    # the self-score itself: near the planted self logit, far below a same-category key's
    s = scorer.scores(Ex[covered], Ex[covered])
    assert (s.diag() < lg["bos"]).all()
    eig = qk.sym_eig()
    r = self_rank_grid(qk.scorer(scaled=True), eig, Ex, covered, [eig.n_negative], [0.0],
                       eig_scale=1.0 / qk.attn_scale)[0, 0]
    assert (r == 0).float().mean() >= 0.9


def test_comparison_rows_and_evidence(tmp_path):
    """in_context.csv rows read back into a claim's numbers and note; the judgement is untouched."""
    from common.claims import Evidence
    from common.context_inputs import IN_CONTEXT, comparison, comparison_table, context_numbers, with_context
    from common.outputs import write_csv

    rows = comparison("stat", 0.5, 10, 0.25, 4, 0.4, note="n") + comparison("empty", 1.0, 10, None, 0)
    write_csv(tmp_path / "in_context.csv", comparison_table(rows))
    nums = context_numbers(tmp_path)
    assert nums["stat"][IN_CONTEXT] == 0.25 and nums["stat"]["n_tokens in context"] == 4
    assert nums["empty"][IN_CONTEXT] is None
    ev = with_context(Evidence("x", {"a": 1}, published="reproduced", holds=True), tmp_path)
    assert ev.numbers["a"] == 1 and ev.numbers["in_context"] == nums and ev.holds and ev.published == "reproduced"
    assert "stat 0.25 in context over 4 tokens (effective 0.5 over 10; 0.4 on the same tokens)" in ev.note
    assert "empty: no token occurs" in ev.note
    assert with_context(Evidence("y"), tmp_path / "nothing").note == ""
