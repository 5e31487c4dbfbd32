"""Rank and inertia of W_sym (common/factored.py): Sylvester's law of inertia, checked against numpy
eigenvalues of the dense matrix on random heads, a constructed rank-deficient head, and all 144
heads of real gpt2-small (../shared; skipped where absent)."""

import numpy as np
import pytest
import torch

from common.factored import Factored, inertia_note, spectrum_summary
from common.head_qk import FactoredQK
from shared_weights import PARTIAL, load_shared_gpt2_state_dict, requires_shared


def _dense_inertia(W_Q: torch.Tensor, W_K: torch.Tensor, rtol=1e-5):
    """Independent reference: eigenvalues of the dense (W + W^T)/2 by numpy, rank of [W_Q W_K]."""
    W = W_Q.double().numpy() @ W_K.double().numpy().T
    lam = np.linalg.eigvalsh((W + W.T) / 2)
    tol = rtol * np.abs(lam).max()
    neg, pos = int((lam < -tol).sum()), int((lam > tol).sum())
    A = np.concatenate([W_Q.double().numpy(), W_K.double().numpy()], 1)
    return (neg, pos, W.shape[0] - neg - pos), int(np.linalg.matrix_rank(A))


@pytest.mark.parametrize("d,dh,seed", [(40, 8, 0), (64, 16, 1), (200, 64, 2)])
def test_full_rank_random_head_has_dhead_negative_and_positive(d, dh, seed):
    g = torch.Generator().manual_seed(seed)
    W_Q, W_K = torch.randn(d, dh, generator=g), torch.randn(d, dh, generator=g)
    inertia = Factored(W_Q, W_K).inertia()
    ref, ref_rank = _dense_inertia(W_Q, W_K)
    assert ref == (dh, dh, d - 2 * dh) and ref_rank == 2 * dh  # the theorem, from numpy alone
    assert inertia.as_tuple() == ref
    assert inertia.rank_factors == 2 * dh and inertia.full_column_rank and inertia.rank == 2 * dh
    s = spectrum_summary(Factored(W_Q, W_K), top=dh)
    assert (s["n_negative"], s["n_positive"], s["n_zero"]) == ref
    assert s["rank_sym"] == 2 * dh and s["rank_factors"] == 2 * dh and s["full_column_rank"]
    # the count among the top d_head is whatever the magnitudes give, not the inertia
    assert 0 <= s[f"n_negative_top{dh}"] <= dh


def test_rank_deficient_heads_break_the_dhead_count():
    d, dh = 48, 10
    g = torch.Generator().manual_seed(3)
    W_Q, B = torch.randn(d, dh, generator=g), torch.randn(d, dh, generator=g)
    # W_K = W_Q: W_QK = W_Q W_Q^T is positive semi-definite of rank d_head -> (0, dh, d - dh)
    # W_K = -W_Q: negative semi-definite -> (dh, 0, d - dh)
    # k columns shared (W_K[:, :k] = W_Q[:, :k]): k PSD rank-one terms plus dh - k indefinite
    # pairs a b^T + b a^T (one + and one - each) -> (dh - k, dh, d - 2 dh + k), [W_Q W_K] rank 2 dh - k
    k = 4
    shared = torch.cat([W_Q[:, :k], B[:, k:]], 1)
    for W_K, expected, rank in [(W_Q, (0, dh, d - dh), dh), (-W_Q, (dh, 0, d - dh), dh),
                                (shared, (dh - k, dh, d - 2 * dh + k), 2 * dh - k)]:
        inertia = Factored(W_Q, W_K).inertia()
        ref, ref_rank = _dense_inertia(W_Q, W_K)
        assert ref == expected and ref_rank == rank
        assert inertia.as_tuple() == expected and inertia.rank_factors == rank
        assert not inertia.full_column_rank
        assert inertia.as_tuple() != (dh, dh, d - 2 * dh)
        s = spectrum_summary(Factored(W_Q, W_K), top=dh)
        assert (s["n_negative"], s["n_positive"], s["n_zero"], s["rank_factors"]) == (*expected, rank)
        assert not s["full_column_rank"]


def test_spectrum_summary_keeps_its_existing_keys():
    g = torch.Generator().manual_seed(4)
    s = spectrum_summary(Factored(torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g)), top=6)
    for key in ("n_eigenvalues_nonzero", "n_negative", "n_positive", "n_negative_top6", "top_k", "lambda_min",
                "lambda_max", "sv_max_sym", "sv_max_skew", "fro_full", "fro_sym", "fro_skew", "skew_share"):
        assert key in s
    assert s["rank_sym"] == s["n_eigenvalues_nonzero"]
    assert "Sylvester" in inertia_note(64, 64) and "64 negative and 64 positive" in inertia_note(64)


@requires_shared
def test_all_144_real_gpt2_small_heads_have_64_negative_and_64_positive():
    sd = load_shared_gpt2_state_dict(PARTIAL.parent)
    counts = {}
    for layer in range(12):
        for head in range(12):
            w = FactoredQK.from_gpt2_state_dict(sd, layer, head).weights()  # LN folded and centred, as TL
            inertia = w.inertia()
            counts[(layer, head)] = (inertia.as_tuple(), inertia.rank_factors)
    assert set(counts.values()) == {((64, 64, 640), 128)}, {k: v for k, v in counts.items() if v != ((64, 64, 640), 128)}
    # ... while the post's count among the 64 largest is 33 for L1H5 (it only reflects magnitudes)
    assert FactoredQK.from_gpt2_state_dict(sd, 1, 5).spectrum_summary(64)["n_negative_top64"] == 33
