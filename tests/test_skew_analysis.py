"""skew_analysis.py on the planted model: the planted negative-eigenvalue count is recovered, the
controls behave as their construction says, and the downstream hooks are exact."""

import json

import pandas as pd
import pytest
from conftest import check_help_and_common_errors, run_main, run_script

import skew_analysis

SCRIPT = "skew_analysis.py"
FIGURES = ("spectrum_target.png", "spectrum_heads.png", "controls_heatmaps.png", "downstream.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("skew_analysis")
    run_main(SCRIPT, "--model", "planted", "--out", out, "--n-prompts", "8", "--seq-len", "10",
             "--batch-size", "8", "--threads", "1")
    return out


def test_outputs_complete(run):
    for f in ("spectrum_summary.csv", "eigenvalues.csv", "controls.csv", "controls_scores.csv", "downstream.csv",
              "downstream_summary.csv", "summary.json", "meta.json", *FIGURES):
        assert (run / f).stat().st_size > 0, f
    s = pd.read_csv(run / "spectrum_summary.csv")
    assert len(s) == 8 * 2  # every head, both bases
    assert json.loads((run / "meta.json").read_text())["args"]["top_eigenvalues"] == 64


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
    summary = json.loads((run / "summary.json").read_text())
    assert summary["downstream_control_max_abs_logit_deviation"] < 1e-3
    d = pd.read_csv(run / "downstream.csv")
    assert len(d) == 8 and d.filter(like="drop").notna().all().all()


def test_render_redraws_from_saved_files(run):
    drawn_by_main = {f: (run / f).read_bytes() for f in FIGURES}
    for f in FIGURES:
        (run / f).unlink()
    paths = skew_analysis.render(run)
    assert sorted(p.name for p in paths) == sorted(FIGURES)
    for f in FIGURES:  # the same figures: they depend on the saved files only
        assert (run / f).read_bytes() == drawn_by_main[f], f


def test_help_and_bad_input(tmp_path, capsys, planted_model):
    main = skew_analysis.main
    help_text = check_help_and_common_errors(main, tmp_path, capsys)
    assert "skew" in help_text.lower() and "--top-eigenvalues" in help_text
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--top-eigenvalues", "0"])
    assert e.value.code != 0 and "--top-eigenvalues" in capsys.readouterr().err


def test_bad_input_exits_with_one_line_and_no_traceback(tmp_path):
    proc = run_script(SCRIPT, "--model", "planted", "--out", str(tmp_path), "--top-eigenvalues", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [errors[-1]] and "--top-eigenvalues must be >= 1" in errors[0]
    assert not list(tmp_path.iterdir())  # nothing written
