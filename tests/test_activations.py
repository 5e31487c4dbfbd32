"""common.activations.capture and common.ablation.collect_activations: the activations of a full
forward pass (run_with_cache), from passes that end at the last hook point asked for and that hold
at most TOKENS_PER_PASS tokens."""

import torch

from common import ablation
from common.activations import capture


def _tokens(model, n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, model.cfg.d_vocab, (n, length), generator=g)
    t[:, 0] = 50256
    return t


def test_capture_equals_a_full_pass_and_ends_at_the_last_hook_point(planted_model):
    model = planted_model
    tokens = _tokens(model, 3, 11)
    names = ["blocks.1.attn.hook_z", "hook_embed", "blocks.0.hook_mlp_out"]
    _, cache = model.run_with_cache(tokens)
    fired = []
    late = [(n, lambda t, hook: fired.append(hook.name))
            for n in ("blocks.1.hook_attn_out", "blocks.1.mlp.hook_post", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")]
    got = capture(model, tokens, names, hooks=late)
    assert sorted(got) == sorted(names)
    for n in names:
        assert torch.equal(got[n], cache[n]), n
    assert fired == []  # nothing after blocks.1.attn.hook_z ran
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_collect_activations_in_token_budgeted_passes_equals_one_pass(planted_model, monkeypatch):
    """Rows per pass = TOKENS_PER_PASS // positions (at least 1, at most batch_size): 13 rows of 16
    tokens with a budget of 64 tokens run as passes of 4, 4, 4 and 1 rows; the activations equal a
    single full pass's (run_with_cache) up to float round-off of the batch size."""
    model = planted_model
    tokens = _tokens(model, 13, 16, seed=1)
    names = ["hook_pos_embed", "blocks.0.hook_attn_out", "blocks.1.attn.hook_z"]
    _, cache = model.run_with_cache(tokens)
    passes = []
    real_capture = ablation.capture

    def counting(model, toks, *a, **k):
        passes.append(len(toks))
        return real_capture(model, toks, *a, **k)

    monkeypatch.setattr(ablation, "capture", counting)
    monkeypatch.setattr(ablation, "TOKENS_PER_PASS", 64)
    got = ablation.collect_activations(model, tokens, names, batch_size=32)
    assert passes == [4, 4, 4, 1]
    for n in names:
        want = cache[n] if cache[n].shape[0] == 13 else cache[n].expand(13, *cache[n].shape[1:])
        assert got[n].shape == want.shape, n
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)
    passes.clear()
    monkeypatch.setattr(ablation, "TOKENS_PER_PASS", 10)  # fewer tokens than one row: one row per pass
    ablation.collect_activations(model, tokens[:3], names)
    assert passes == [1, 1, 1]
    passes.clear()
    monkeypatch.setattr(ablation, "TOKENS_PER_PASS", 10_000)  # batch_size still bounds the rows
    ablation.collect_activations(model, tokens, names, batch_size=5)
    assert passes == [5, 5, 3]
