"""The planted model follows the three rules by construction, and only its L1H5 does."""

import numpy as np
import pytest
import torch

from common.ablation import collect_activations, mean_ablation_hooks
from common.metrics import all_head_patterns, head_survey
from common.planted import build_state_dict
from common.prompts import category_prompts, random_token_prompts


@pytest.fixture(scope="module")
def survey(planted_model, tokenizer):
    batch = category_prompts(tokenizer, 32, 48, seed=11, repeat_prob=0.2)
    return batch, head_survey(planted_model, batch.tokens, batch.mask)


def test_deterministic():
    a, ta = build_state_dict(seed=0)
    b, tb = build_state_dict(seed=0)
    assert ta == tb and all(torch.equal(a[k], b[k]) for k in a)


def test_categories_are_the_prompt_lists(truth, tokenizer):
    from common.prompts import category_token_ids

    assert truth["categories"] == category_token_ids(tokenizer)
    assert truth["target"] == [1, 5] and truth["positional_head"] == [1, 0]


def test_only_l1h5_follows_the_rules(survey, truth):
    _, s = survey
    score = s["score"].mean(-1)
    L, H = truth["target"]
    assert score[L, H] < 0.3
    others = torch.cat([score.flatten()[: L * score.shape[1] + H], score.flatten()[L * score.shape[1] + H + 1 :]])
    assert others.min() > 1.0


def test_self_suppression(survey, truth):
    _, s = survey
    L, H = truth["target"]
    assert s["mass"]["self_and_copies"][L, H] < 0.05
    assert s["mass"]["in_category"][L, H] > 0.5


def test_bos_fallback(planted_model, tokenizer, truth):
    L, H = truth["target"]
    for batch in (category_prompts(tokenizer, 16, 48, seed=5, repeat_prob=0.3),
                  random_token_prompts(tokenizer, 16, 48, n_inserted=8, seed=5)):
        pat = all_head_patterns(planted_model, batch.tokens, layers=[L])[0, H]
        no_key = batch.mask[:, :, 0].clone()
        no_key[:, 0] = False
        assert no_key.sum() > 50
        assert pat[..., 0][no_key].mean() > 0.8


def test_identity_not_position(planted_model, tokenizer, truth):
    """Mean-ablating positions moves L1H5 by < 10% but breaks the positional head; the token
    embedding and MLP0 carry the category signal."""
    L, H = truth["target"]
    PL, PH = truth["positional_head"]
    batch = category_prompts(tokenizer, 32, 48, seed=7, repeat_prob=0.2)
    ref = category_prompts(tokenizer, 32, 48, seed=8).tokens
    names = ["hook_pos_embed", "hook_embed", "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out"]
    # The repo's convention (common/ablation.py): reference-batch mean, BOS left alone.
    hooks = mean_ablation_hooks(collect_activations(planted_model, ref, names))

    def score(hooks=()):
        return head_survey(planted_model, batch.tokens, batch.mask, hooks=hooks)["score"].mean(-1)

    clean = score()
    pos = score(hooks["hook_pos_embed"])
    assert abs(pos[L, H] - clean[L, H]) / clean[L, H] < 0.10
    assert abs(pos[PL, PH] - clean[PL, PH]) / clean[PL, PH] > 0.5
    for name in ("hook_embed", "blocks.0.hook_mlp_out"):
        ablated = score(hooks[name])
        assert ablated[L, H] > 1.0, name
    attn0 = score(hooks["blocks.0.hook_attn_out"])
    assert abs(attn0[L, H] - clean[L, H]) / clean[L, H] < 0.10


def test_previous_token_head(planted_model, tokenizer, truth):
    PL, PH = truth["positional_head"]
    tokens = category_prompts(tokenizer, 8, 48, seed=2).tokens
    pat = all_head_patterns(planted_model, tokens, layers=[PL])[0, PH]
    assert pat.diagonal(-1, -2, -1).mean() > 0.8


def test_spectrum_of_planted_w_qk(planted_model, truth):
    L, H = truth["target"]
    W_QK = (planted_model.W_Q[L, H] @ planted_model.W_K[L, H].T).double().numpy()
    sym, skew = (W_QK + W_QK.T) / 2, (W_QK - W_QK.T) / 2
    eig = np.linalg.eigvalsh(sym)
    tol = 1e-6 * np.abs(eig).max()
    assert (eig < -tol).sum() == truth["n_negative_eigenvalues"] > 0
    s_sym, s_skew = np.linalg.norm(sym, 2), np.linalg.norm(skew, 2)
    assert 0 < s_skew < 0.5 * s_sym
