"""characterize_head.py end to end on the planted model (in process), its figures drawn from the
saved files, and its bad-input errors."""

import json

import pandas as pd
import pytest

from conftest import check_help_and_common_errors
from script_run import run_then_render

SCRIPT = "characterize_head.py"
FIGURES = ("head_scores.png", "mass_split.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("characterize_head") / "out"
    drawn = run_then_render(SCRIPT, out, "--model", "planted", "--n-prompts", "16", "--threads", "1")
    return out, drawn


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


def test_end_to_end(run, truth):
    out = run
    for f in ("head_scores.csv", *FIGURES, "mass_split.csv", "attention_L1H5.html", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    table = pd.read_csv(out / "head_scores.csv")
    # every head of every layer, not only layers 0..target (the published survey is all 12 x 12)
    assert len(table) == truth["n_layers"] * 8 and table.layer.max() == truth["n_layers"] - 1
    order = table.sort_values("score_mean").reset_index(drop=True)
    assert [tuple(order.loc[i, ["layer", "head"]]) for i in range(2)] == [tuple(truth["target"]), tuple(truth["decoy_head"])]
    assert order.score_mean[0] < 0.3
    summary = json.loads((out / "summary.json").read_text())
    # the planted decoy (a later-layer partial rule-follower) is the next-lowest head anywhere
    assert summary["target_rank"] == 1 and summary["n_heads_total"] == len(table)
    assert [summary["next_lowest"][k] for k in ("layer", "head")] == truth["decoy_head"]
    assert summary["next_lowest"]["score"] > 2 * order.score_mean[0] + 0.5
    html = (out / "attention_L1H5.html").read_text()
    assert "<script src=\"http" not in html and "unpkg.com" not in html  # local_src, not the CDN
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"]["model"] == "planted" and meta["args"]["seed"] == 0
    assert meta["script"] == SCRIPT
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_render_draws_every_figure_from_saved_files(runs):
    """render(out_dir) drew every figure into a folder that held only the saved results."""
    out, drawn = runs
    assert sorted(p.name for p in drawn) == sorted(FIGURES)
    for f in FIGURES:
        assert (out / f).stat().st_size > 0, f


def test_help_and_bad_input(tmp_path, capsys):
    from characterize_head import main

    help_text = check_help_and_common_errors(main, tmp_path, capsys)
    assert "--n-prompts" in help_text and "--layer" in help_text
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--head", "99", "--out", str(tmp_path)])
    assert "heads 0..7" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--layer", "5", "--out", str(tmp_path)])
    assert "layers 0..2" in str(e.value.code)
    assert not list(tmp_path.glob("*.csv"))


def test_missing_weights_message(tmp_path, capsys):
    """A model that cannot be loaded: exit code 2 and a one-line message. SystemExit is the only
    exception that leaves main (anything else would be a traceback), and it is raised before any
    result is written."""
    from characterize_head import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown model" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.csv"))


def test_several_models_give_one_cross_model_table(tmp_path, planted_model):
    """Two models (the planted model by name and by folder: the same weights) -> one sub-folder
    each and cross_model.csv with each model's lowest head; both are the planted target."""
    from common.planted import ground_truth, planted_folder
    from conftest import run_main

    layer, head = ground_truth()["target"]
    folder = planted_folder()
    run_main(SCRIPT, "--model", "planted", str(folder), "--n-prompts", "4", "--out", tmp_path, "--threads", "1")
    t = pd.read_csv(tmp_path / "cross_model.csv")
    assert list(t.model) == ["planted", str(folder)]
    assert (t.lowest_layer == layer).all() and (t.lowest_head == head).all()
    assert t.lowest_score.iloc[0] == pytest.approx(t.lowest_score.iloc[1], abs=1e-6)
    assert (t.lowest_score < t.next_score).all() and (t.target_rank == 1).all()
    assert (tmp_path / "cross_model.png").stat().st_size > 0
    for sub in ("planted", folder.name):
        assert (tmp_path / sub / "head_scores.csv").exists()
