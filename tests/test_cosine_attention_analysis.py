"""cosine_attention_analysis.py: chunked windows equal a dense computation; on the planted model the
curve peaks below similarity 1 (self-suppression) at the in-category similarity band."""

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_main

import cosine_attention_analysis as caa


def _check_against_dense(q, k, unit, n_fine, window_bins, step_bins, block):
    """Every saved window against a dense computation; every fine bin in some window. Returns the
    table and the number of windows whose CI was checked."""
    N = len(q)
    acc = caa.windowed_difference(q, k, unit, window_bins, step_bins, n_fine, block=block, progress=False)
    table = caa.window_table(acc, window_bins, step_bins, n_fine)

    s = q @ k.T
    diff = (s - s.diag()[:, None]).double().numpy()
    # bins from the same float32 cosines as the script, so no pair can straddle a bin edge
    fine = ((unit @ unit.T).clamp(-1, 1) + 1) / 2 * n_fine
    fine = fine.long().clamp(0, n_fine - 1).numpy()
    off = ~np.eye(N, dtype=bool)
    checked = 0
    covered = set()
    for _, row in table.iterrows():
        w = int(round((row["lo"] + 1) / (2 / n_fine)))
        assert row["hi"] == pytest.approx(row["lo"] + window_bins * 2 / n_fine)
        covered |= set(range(w, w + window_bins))
        inwin = (fine >= w) & (fine < w + window_bins) & off
        assert row["n_pairs"] == inwin.sum()
        if inwin.sum() == 0:
            continue
        mean = diff[inwin].mean()
        assert row["mean_diff"] == pytest.approx(mean, rel=1e-6, abs=1e-6)
        assert row["share_above_self"] == pytest.approx((diff[inwin] > caa.ABOVE_TOL).mean())
        # cluster-robust variance, per query row, written out directly
        n_q = inwin.sum(1)
        s_q = np.where(inwin, diff, 0).sum(1)
        used = n_q > 0
        nq = used.sum()
        assert row["n_queries"] == nq
        if nq > 1:
            var = nq / (nq - 1) * ((s_q[used] - mean * n_q[used]) ** 2).sum() / n_q.sum() ** 2
            assert row["ci_hi"] - row["mean_diff"] == pytest.approx(1.96 * math.sqrt(var), rel=1e-4, abs=1e-6)
            checked += 1
    assert covered == set(range(n_fine))  # every cosine, up to 1, is in some window (defect 6)
    assert table["hi"].iloc[-1] == pytest.approx(1.0) and table["lo"].iloc[0] == pytest.approx(-1.0)
    assert int(acc["fine_n"].sum()) == N * (N - 1)
    return table, checked


def test_chunked_windows_equal_dense_computation():
    g = torch.Generator().manual_seed(0)
    N, r, d = 60, 5, 8
    q, k = torch.randn(N, r, generator=g), torch.randn(N, r, generator=g)
    E = torch.randn(N, d, generator=g)
    unit = E / E.norm(dim=1, keepdim=True)
    # window 0.4, step 0.15 in cosine: the steps from -1 end at 0.95, a last window ends at 1
    _, checked = _check_against_dense(q, k, unit, n_fine=40, window_bins=8, step_bins=3, block=7)
    assert checked >= 5


def test_tiles_change_nothing_beyond_round_off():
    """Query rows are computed in tiles (memory) inside blocks: any tile size gives the same totals,
    for blocks that do and do not divide N. Pair counts are exact; the float sums agree to float32
    round-off (rtol 1e-6: each logit is a float32 dot product whose low bits depend on the BLAS
    kernel chosen for the tile's shape, which differs between CPUs, so bit-identity is not
    guaranteed by construction)."""
    g = torch.Generator().manual_seed(2)
    N, r, d = 50, 5, 8
    q, k = torch.randn(N, r, generator=g), torch.randn(N, r, generator=g)
    E = torch.randn(N, d, generator=g)
    unit = E / E.norm(dim=1, keepdim=True)
    for block in (13, 50):
        ref = caa.windowed_difference(q, k, unit, 8, 3, 40, block=block, tile=block, progress=False)
        for tile in (4, 7, 10):
            acc = caa.windowed_difference(q, k, unit, 8, 3, 40, block=block, tile=tile, progress=False)
            assert acc.keys() == ref.keys()
            for key in ("n", "queries", "fine_n", "nn"):
                assert np.array_equal(acc[key], ref[key]), (block, tile, key)
            for key in ref:
                np.testing.assert_allclose(acc[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=f"{block} {tile} {key}")


def test_step_002_windows_cover_the_most_similar_pairs():
    """Defect 6: with --step 0.02 (and the default --window 0.05, --bin-width 0.0025) the steps from
    -1 end at the window [0.94, 0.99]; pairs at cosine >= 0.99 must still be in a window."""
    n_fine, window_bins, step_bins = caa.bins(caa.parse_args(["--step", "0.02"]))
    assert (n_fine - window_bins) % step_bins != 0  # the case the steps alone miss
    g = torch.Generator().manual_seed(1)
    n, d, r = 40, 16, 6
    base = torch.randn(n, d, generator=g)
    near = base + 0.05 * torch.randn(n, d, generator=g) * base.norm(dim=1, keepdim=True) / math.sqrt(d)
    E = torch.cat([base, near])
    unit = E / E.norm(dim=1, keepdim=True)
    q, k = torch.randn(2 * n, r, generator=g), torch.randn(2 * n, r, generator=g)
    cos = unit @ unit.T
    top = ((cos >= 0.99) & ~torch.eye(2 * n, dtype=torch.bool)).sum()
    assert top >= n  # every near-copy pair (both orders) sits above 0.99
    table, _ = _check_against_dense(q, k, unit, n_fine, window_bins, step_bins, block=13)
    last = table.iloc[-1]
    assert last["lo"] == pytest.approx(0.95) and last["hi"] == pytest.approx(1.0)
    assert last["n_pairs"] >= top


FIGURES = ("cosine_attention.png",)


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_model):
    import token_freq

    freq_dir = tmp_path_factory.mktemp("freq")
    token_freq.main(["--model", "planted", "--out", str(freq_dir), "--workers", "1", "--no-plot"])
    out = tmp_path_factory.mktemp("cos")
    run_main("cosine_attention_analysis.py", "--model", "planted", "--out", out, "--n-tokens", "1024",
             "--freq-table", freq_dir / "token_freq.csv", "--threads", "1")
    return out


def test_planted_peak_below_one_at_category_similarity(run):
    out = run
    for f in ("cosine_attention.png", "cosine_attention.csv", "category_pairs.csv", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "cosine_attention.csv")
    pairs = pd.read_csv(out / "category_pairs.csv")
    assert summary["n_tokens"] == 1024 and "token_freq.csv" in summary["token_source"]
    assert summary["n_pairs"] == 1024 * 1023

    # Self-suppression: the curve peaks below similarity 1 and the peak clearly out-scores self
    # (d = 0 at cosine 1), i.e. attention does NOT peak at the token itself.
    assert summary["peak_below_one"]
    assert summary["peak_window"][1] < 1.0
    assert summary["peak_ci"][0] > 5.0  # planted: same-category logit +12 vs self -6

    # The peak sits at the in-category similarity band, far above unrelated pairs.
    same_cos = summary["same_category_mean_cosine"]
    assert summary["peak_window"][0] - 0.05 <= same_cos <= summary["peak_window"][1] + 0.05
    assert same_cos > summary["mean_cosine"] + 0.2
    band = table[(table["lo"] <= same_cos) & (table["hi"] > same_cos)]
    unrelated = table[(table["lo"] <= summary["mean_cosine"]) & (table["hi"] > summary["mean_cosine"])]
    assert band["ci_lo"].min() > unrelated["ci_hi"].max() + 5.0
    assert (band["share_above_self"] > 0.95).all()
    assert (pairs["diff"] > 0).mean() > 0.95 and len(pairs) > 1000
    assert set(table.columns) >= {"centre", "lo", "hi", "n_pairs", "n_queries", "mean_diff", "ci_lo", "ci_hi"}


def test_every_window_restores_the_gaps(run):
    """render's full window grid: the saved (populated) windows at their own places, empty ones between."""
    meta = json.loads((run / "meta.json").read_text())
    args = argparse.Namespace(**meta["args"])
    saved = pd.read_csv(run / "cosine_attention.csv")
    full = caa.every_window(saved, args)
    assert len(full) == int(round((2 - args.window) / args.step)) + 1
    populated = full[full["n_pairs"] > 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(populated, saved.astype(float))
    empty = full[full["n_pairs"] == 0]
    assert len(empty) > 0 and empty["mean_diff"].isna().all()
    assert np.allclose(np.diff(full["lo"]), args.step)


def test_planted_run_with_step_002(run, tmp_path):
    """--step 0.02 end to end: the saved windows sit on the grid render uses (which ends at 1), and
    windows shared with the default --step 0.01 grid hold the same numbers."""
    meta = json.loads((run / "meta.json").read_text())
    out = tmp_path / "cos002"
    run_main("cosine_attention_analysis.py", "--model", "planted", "--out", out, "--n-tokens", "1024",
             "--freq-table", meta["args"]["freq_table"], "--step", "0.02", "--threads", "1")
    args = argparse.Namespace(**json.loads((out / "meta.json").read_text())["args"])
    saved = pd.read_csv(out / "cosine_attention.csv")
    full = caa.every_window(saved, args)
    assert full["hi"].iloc[-1] == pytest.approx(1.0) and full["lo"].iloc[0] == pytest.approx(-1.0)
    assert np.allclose(np.diff(full["lo"].iloc[:-1]), 0.02) and full["lo"].iloc[-1] == pytest.approx(0.95)
    pd.testing.assert_frame_equal(full[full["n_pairs"] > 0].reset_index(drop=True), saved.astype(float))
    default = pd.read_csv(run / "cosine_attention.csv")
    both = saved.merge(default, on=["lo", "hi"], suffixes=("", "_default"))
    assert len(both) > 10
    assert (both["n_pairs"] == both["n_pairs_default"]).all()
    assert np.allclose(both["mean_diff"], both["mean_diff_default"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peak_below_one"] and summary["peak_ci"][0] > 5.0


def test_render_redraws_from_saved_files(run):
    drawn_by_main = {f: (run / f).read_bytes() for f in FIGURES}
    for f in FIGURES:
        (run / f).unlink()
    assert [p.name for p in caa.render(run)] == list(FIGURES)
    for f in FIGURES:  # the same figure: it depends on the saved files only
        assert (run / f).read_bytes() == drawn_by_main[f], f


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        caa.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--n-tokens" in out and "--freq-table" in out and "--window" in out and "--bin-width" in out
    assert "--resolution" not in out  # the fine bin width's old name (clustering's --resolution is Leiden's)


def test_bad_input(tmp_path, capsys, planted_model):
    with pytest.raises(SystemExit, match="--head 99 out of range"):
        caa.main(["--model", "planted", "--head", "99", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="not writable"):
        caa.main(["--model", "planted", "--out", "/proc/x/cos"])
    with pytest.raises(SystemExit, match="not found"):
        caa.main(["--model", "planted", "--out", str(tmp_path / "b"), "--freq-table", str(tmp_path / "none.csv")])
    with pytest.raises(SystemExit) as exc:
        caa.main(["--model", "planted", "--n-tokens", "1"])
    assert exc.value.code == 2 and "--n-tokens must be at least 2" in capsys.readouterr().err


def test_in_context_peak_beside_the_effective_one(run):
    """in_context.csv: the peak on the tokens' true layer inputs in the demo text. Planted, same-
    category keys out-score self (+12 against -6), so the peak lies above self and below cosine 1
    there too; the effective row is the claim's own number."""
    from common.context_inputs import EFFECTIVE, IN_CONTEXT

    t = pd.read_csv(run / "in_context.csv").set_index(["statistic", "inputs"])
    s = json.loads((run / "summary.json").read_text())
    assert t.loc[("peak cosine", EFFECTIVE)].value == pytest.approx(s["peak_cosine"])
    cos, height = t.loc[("peak cosine", IN_CONTEXT)], t.loc[("peak mean s[i,j]-s[i,i]", IN_CONTEXT)]
    assert 0 < cos.n_tokens < 1024 and cos.value < 0.99 and height.value > 0
    ev = caa.check_cosine_peak(run)
    assert ev.numbers["in_context"]["peak cosine"][IN_CONTEXT] == pytest.approx(cos.value)
