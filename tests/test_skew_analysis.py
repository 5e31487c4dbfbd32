"""skew_analysis.py on the planted model: the planted negative-eigenvalue count is recovered, the
controls behave as their construction says, and the downstream hooks are exact."""

import importlib
import json

import pandas as pd
import pytest

from conftest import check_help_and_common_errors, run_script

SCRIPT = "skew_analysis.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_cache):
    out = tmp_path_factory.mktemp("skew_analysis")
    run_script(SCRIPT, "--model", "planted", "--out", str(out), "--n-prompts", "8", "--seq-len", "10",
               "--batch-size", "8")
    return out


def test_outputs_complete(run):
    for f in ("spectrum_summary.csv", "eigenvalues.csv", "spectrum_target.png", "spectrum_heads.png",
              "controls.csv", "controls_scores.csv", "controls_heatmaps.png", "downstream.csv",
              "downstream_summary.csv", "downstream.png", "meta.json"):
        assert (run / f).stat().st_size > 0, f
    s = pd.read_csv(run / "spectrum_summary.csv")
    assert len(s) == 8 * 2  # every head, both bases


def test_planted_spectrum_recovered(run, truth):
    s = pd.read_csv(run / "spectrum_summary.csv")
    _, h = truth["target"]
    res = s[(s["head"] == h) & (s.basis == "residual")].iloc[0]
    assert res.n_negative == truth["n_negative_eigenvalues"]
    assert res.n_positive == truth["n_positive_eigenvalues"]
    assert res.sv_max_skew < 0.2 * res.sv_max_sym  # only the BOS term is asymmetric
    eff = s[(s["head"] == h) & (s.basis == "effective")].iloc[0]
    assert eff.n_negative >= truth["n_negative_eigenvalues"] - 1
    ev = pd.read_csv(run / "eigenvalues.csv")
    n = ev[(ev["head"] == h) & (ev.basis == "residual") & (ev.part == "sym_eigenvalue")]
    assert len(n) == res.n_eigenvalues_nonzero and (n.value < 0).sum() == res.n_negative


def test_controls_and_downstream(run):
    c = pd.read_csv(run / "controls.csv").set_index("control")
    actual = c.loc[[i for i in c.index if "actual" in i][0]]
    assert actual.mean_self_attention < 0.01  # self-suppression on the group tokens
    assert actual.mean_same_group_attention > 0.9
    for name in c.index:
        if name.startswith("random skew"):
            assert c.loc[name].corr_scores_with_transpose < -0.99  # truly skew-symmetric
            assert c.loc[name].skew_share > 0.999
        if name.startswith("random symmetric"):
            assert c.loc[name].corr_scores_with_transpose > 0.99
            assert c.loc[name].n_negative == c.loc[[i for i in c.index if "actual" in i][0]].n_negative
    meta = json.loads((run / "meta.json").read_text())
    assert meta["downstream_control_max_abs_logit_deviation"] < 1e-3
    d = pd.read_csv(run / "downstream.csv")
    assert len(d) == 8 and d.filter(like="drop").notna().all().all()


def test_help_and_bad_input(tmp_path, capsys, planted_model):
    # In-process (the end-to-end run above is the subprocess one): every extra interpreter costs
    # a transformer_lens import.
    main = importlib.import_module(SCRIPT.removesuffix(".py")).main
    assert "skew" in check_help_and_common_errors(main, tmp_path, capsys).lower()
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--top", "0"])
    assert e.value.code != 0 and "--top" in capsys.readouterr().err
