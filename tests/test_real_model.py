"""make check-real: this install against numbers measured on genuine gpt2-small elsewhere.

The ``real_model`` tests run only where the loaded gpt2-small is verified genuine
(common.genuine_weights; ``L1H5_REAL_MODEL`` names another place for its weights, e.g. a local
folder) and are skipped with a one-line reason otherwise. The comparison code itself is tested
here on the planted model, against numbers computed independently of it (dense numpy algebra for
the spectrum, TransformerLens' run_with_cache for the attention entries), correct and perturbed,
so a check that should fail does.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from common import real_checks
from shared_weights import load_shared_gpt2_state_dict, requires_shared

REAL = os.environ.get("L1H5_REAL_MODEL", "gpt2-small")


@pytest.fixture(scope="module")
def real_model():
    from common.genuine_weights import weights_verdict

    verdict = weights_verdict(REAL)
    if not verdict.genuine:
        pytest.skip(f"needs genuine gpt2-small ({REAL}: {verdict.text})")
    import torch

    from common.model import load_model

    torch.set_grad_enabled(False)
    return load_model(REAL)


@pytest.mark.real_model
def test_post_spectrum_of_L1H5(real_model):
    checks = real_checks.spectrum_checks(real_model)
    assert all(c.ok for c in checks), "\n".join(c.line() for c in checks)


@pytest.mark.real_model
def test_replication_attention_rows_of_L1H5(real_model):
    checks = real_checks.attention_checks(real_model)
    assert all(c.ok for c in checks), "\n".join(c.line() for c in checks)


# -- the comparison code, on the planted model ----------------------------------------------------


def test_reference_tokens_are_our_tokenizers():
    """The replication's printed token ids are what the vendored GPT-2 tokenizer makes of its words."""
    from common.gpt2_tokenizer import load_tokenizer

    ref = real_checks.reference()["attention_rows"]
    tok = load_tokenizer()
    assert [tok.bos_token_id, *tok.encode(" ".join(ref["words"]), add_special_tokens=False)] == ref["tokens"]
    assert len(ref["words"]) == 60 and len(ref["tokens"]) == 61
    rows = {}
    for q, k, v in ref["entries"]:
        rows.setdefault(q, {})[k] = v
    assert rows[1] == {0: 0.9098, 1: 0.0902} and rows[2] == {0: 0.2972, 1: 0.5769, 2: 0.1259}


def dense_spectrum(model, layer, head, top):
    """Independently: W_QK dense, numpy eigvalsh and svd."""
    wq = model.W_Q[layer, head].detach().double().numpy()
    wk = model.W_K[layer, head].detach().double().numpy()
    m = wq @ wk.T
    sym, skew = (m + m.T) / 2, (m - m.T) / 2
    lam = np.linalg.eigvalsh(sym)
    topk = lam[np.argsort(-np.abs(lam))[:top]]
    return {"n_negative_top": int((topk < 0).sum()), "sv_max_sym": float(np.linalg.svd(sym, compute_uv=False)[0]),
            "sv_max_skew": float(np.linalg.svd(skew, compute_uv=False)[0])}


def test_spectrum_comparison_passes_and_fails(planted_model):
    ref = copy.deepcopy(real_checks.reference())
    spec = ref["spectrum"]
    truth = dense_spectrum(planted_model, spec["layer"], spec["head"], spec["top"])
    spec.update(n_negative_top=truth["n_negative_top"], sv_max_sym=round(truth["sv_max_sym"], 2),
                sv_max_skew=round(truth["sv_max_skew"], 2))
    checks = real_checks.spectrum_checks(planted_model, ref)
    assert [c.name for c in checks] == ["n_negative_top", "sv_max_sym", "sv_max_skew"]
    assert all(c.ok for c in checks), "\n".join(c.line() for c in checks)
    for key, delta in (("n_negative_top", 1), ("sv_max_sym", 0.02), ("sv_max_skew", -0.02)):  # past the 0.01
        bad = copy.deepcopy(ref)
        bad["spectrum"][key] += delta
        failed = [c.name for c in real_checks.spectrum_checks(planted_model, bad) if not c.ok]
        assert failed == [key]
    # the genuine numbers are not the planted model's: the real reference fails here
    assert not all(c.ok for c in real_checks.spectrum_checks(planted_model))


def test_attention_comparison_passes_and_fails(planted_model):
    import torch

    ref = copy.deepcopy(real_checks.reference())
    rows = ref["attention_rows"]
    _, cache = planted_model.run_with_cache(torch.tensor([rows["tokens"]]), names_filter="blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"][0, rows["head"]].numpy()
    rows["entries"] = [[q, k, round(float(pattern[q, k]), 4)] for q, k, _ in rows["entries"]]
    checks = real_checks.attention_checks(planted_model, ref)
    assert len(checks) == 1 + len(rows["entries"]) and all(c.ok for c in checks), \
        "\n".join(c.line() for c in checks if not c.ok)
    bad = copy.deepcopy(ref)
    bad["attention_rows"]["entries"][2][2] += 2e-4  # A[1,1] off by two printed digits' worth
    assert [c.name for c in real_checks.attention_checks(planted_model, bad) if not c.ok] == ["A[1,1]"]
    bad = copy.deepcopy(ref)
    bad["attention_rows"]["words"] = bad["attention_rows"]["words"][::-1]
    assert not real_checks.attention_checks(planted_model, bad)[0].ok
    assert not all(c.ok for c in real_checks.attention_checks(planted_model))  # the genuine rows fail here


def test_check_real_command(planted_model, capsys):
    assert real_checks.main(["--model", "planted"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the checks need genuine gpt2-small; planted: planted" in err
    assert real_checks.main(["--model", "planted", "--any-weights"]) == 1  # runs, and fails on the wrong weights
    out = capsys.readouterr().out
    assert "FAIL" in out and out.strip().splitlines()[-1].endswith("failed")


@requires_shared
def test_spectrum_check_on_the_real_attention_weights():
    """Where gpt2-small's real attention tensors are at hand (../shared/gpt2, not its embeddings or
    MLPs, so no forward pass), the spectrum half of make check-real runs on them and passes."""
    from common.head_qk import FactoredQK

    qk = FactoredQK.from_gpt2_state_dict(load_shared_gpt2_state_dict(), 1, 5)
    checks = real_checks.spectrum_checks(None, qk=qk)
    assert all(c.ok for c in checks), "\n".join(c.line() for c in checks)
    qk_other = FactoredQK.from_gpt2_state_dict(load_shared_gpt2_state_dict(), 1, 4)
    assert not all(c.ok for c in real_checks.spectrum_checks(None, qk=qk_other))  # another head differs
