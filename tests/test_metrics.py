"""The semantic category score and the mass split on hand-built attention patterns."""

import math

import pytest

import torch

from common.metrics import EPS, all_head_patterns, mass_split, semantic_score


def _mask():
    # 4 positions: BOS, a, b (same category as a), a (copy)
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = m[0, 1, 0] = True
    m[0, 2, 1] = True
    m[0, 3, 2] = True
    return m


def test_perfect_pattern_scores_zero():
    m = _mask()
    assert semantic_score(m.float(), m).item() == 0.0


def test_score_values():
    m = _mask()
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0] = 1
    a[0, 1, 0] = 0.5; a[0, 1, 1] = 0.5              # half on BOS: -log 0.5
    a[0, 2, 1] = 0.25; a[0, 2, 2] = 0.75            # a quarter in category: -log 0.25
    a[0, 3, 3] = 1.0                                  # all on itself: clamped at -log EPS
    expected = (math.log(2) + math.log(4) - math.log(EPS)) / 3
    assert abs(semantic_score(a, m).item() - expected) < 1e-5
    # leading head dimensions broadcast
    assert semantic_score(a.expand(2, 3, 1, 4, 4), m).shape == (2, 3, 1)


def test_mass_split():
    tokens = torch.tensor([[50256, 10, 20, 10]])
    m = _mask()
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0] = 1
    a[0, 1, 0] = 0.5; a[0, 1, 1] = 0.5     # self 0.5, BOS 0.5
    a[0, 2, 1] = 0.25; a[0, 2, 2] = 0.75    # in-category 0.25, self 0.75
    a[0, 3, 1] = 0.6; a[0, 3, 2] = 0.4      # earlier copy 0.6, in-category 0.4
    s = mass_split(a, tokens, m)
    assert abs(s["self_and_copies"].item() - (0.5 + 0.75 + 0.6) / 3) < 1e-6
    assert abs(s["in_category"].item() - (0.25 + 0.4) / 3) < 1e-6
    assert abs(s["bos"].item() - 0.5 / 3) < 1e-6
    assert abs(s["other"].item()) < 1e-6


def test_all_head_patterns_stop_after_the_last_pattern_equals_a_full_forward_pass(planted_model):
    """The pass ends at the last hook_pattern needed: the patterns equal those of a full forward pass
    (run_with_cache over every layer), ablation hooks before that point still act, hooks after it do
    not fire, and no hook is left on the model."""
    from common.ablation import mean_ablation_hooks

    model = planted_model
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=g)
    tokens[:, 0] = 50256
    _, cache = model.run_with_cache(tokens)
    clean1 = cache["blocks.1.attn.hook_pattern"].transpose(0, 1)
    for layers in ([1], [0, 1], None, [1, 0, 1]):
        got = all_head_patterns(model, tokens, layers=layers)
        want = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"].transpose(0, 1)
                            for l in (layers if layers is not None else range(model.cfg.n_layers))])
        assert torch.equal(got, want), layers
    fired = []
    hooks = mean_ablation_hooks({"hook_embed": torch.randn(2, 9, model.cfg.d_model, generator=g)})["hook_embed"]
    late = [("blocks.1.hook_mlp_out", lambda t, hook: fired.append(hook.name))]
    ablated = all_head_patterns(model, tokens, layers=[1], hooks=hooks + late)
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens)
    assert torch.equal(ablated[0], cache["blocks.1.attn.hook_pattern"].transpose(0, 1))
    assert not torch.equal(ablated[0], clean1) and fired == []
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_post_protocol_score_by_hand():
    """The post's score (src/metrics.py of the original repository): -log of the allowed mass clamped
    at 1e-12, averaged over every row, BOS's included. Worked out by hand on BOS + 3 tokens."""
    import torch

    from common.metrics import bos_only_share, semantic_score
    from common.protocol import POST

    mask = torch.tensor([[[1, 0, 0, 0],    # BOS: itself
                          [1, 0, 0, 0],    # token 1: nothing in-category before it -> BOS
                          [0, 1, 0, 0],    # token 2: token 1 is in its category
                          [0, 1, 1, 0]]],  # token 3: tokens 1 and 2
                        dtype=torch.bool)
    pattern = torch.tensor([[[1.0, 0.0, 0.0, 0.0],
                             [0.5, 0.5, 0.0, 0.0],
                             [0.7, 0.0, 0.3, 0.0],    # all its mass off the allowed key
                             [0.2, 0.3, 0.1, 0.4]]])
    post = (0.0 + math.log(2) - math.log(1e-12) - math.log(0.4)) / 4  # 4 rows, BOS's costs 0
    ours = (math.log(2) - math.log(EPS) - math.log(0.4)) / 3  # rows 1..3, clamp 1e-6
    assert semantic_score(pattern, mask, POST.eps, POST.bos_row).item() == pytest.approx(post, rel=1e-6)
    assert semantic_score(pattern, mask).item() == pytest.approx(ours, rel=1e-6)
    # by hand: (0 + 0.6931 + 27.6310 + 0.9163) / 4 and (0.6931 + 13.8155 + 0.9163) / 3
    assert post == pytest.approx(7.3101, abs=1e-4) and ours == pytest.approx(5.1416, abs=1e-4)
    assert bos_only_share(mask).item() == pytest.approx(1 / 3)  # token 1 of the 3 scored queries
