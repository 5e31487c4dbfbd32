"""characterize_head.py end to end on the planted model, and its bad-input errors."""

import json

import pandas as pd

from conftest import run_script


def test_end_to_end(tmp_path):
    out = tmp_path / "out"
    run_script("characterize_head.py", "--model", "planted", "--n-prompts", "16", "--out", str(out))
    for f in ("head_scores.csv", "head_scores.png", "mass_split.csv", "mass_split.png",
              "attention_L1H5.html", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    table = pd.read_csv(out / "head_scores.csv")
    assert len(table) == 16
    best = table.sort_values("score_mean").iloc[0]
    assert (best.layer, best["head"]) == (1, 5) and best.score_mean < 0.3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_rank"] == 1 and summary["next_lowest"]["score"] > 1.0
    html = (out / "attention_L1H5.html").read_text()
    assert "<script src=\"http" not in html and "unpkg.com" not in html  # local_src, not the CDN
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"]["model"] == "planted" and meta["args"]["seed"] == 0
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_help():
    proc = run_script("characterize_head.py", "--help")
    assert "--n-prompts" in proc.stdout and "--layer" in proc.stdout


def test_bad_head_and_layer(tmp_path):
    proc = run_script("characterize_head.py", "--model", "planted", "--head", "99", "--out", str(tmp_path), check=False)
    assert proc.returncode != 0 and "heads 0..7" in proc.stderr
    proc = run_script("characterize_head.py", "--model", "planted", "--layer", "5", "--out", str(tmp_path), check=False)
    assert proc.returncode != 0 and "layers 0..1" in proc.stderr
    assert not list(tmp_path.glob("*.csv"))


def test_unwritable_out_dir_fails_before_work(tmp_path):
    proc = run_script("characterize_head.py", "--model", "planted", "--out", "/proc/l1h5-out", check=False)
    assert proc.returncode != 0 and "not writable" in proc.stderr


def test_missing_weights_message(tmp_path):
    proc = run_script("characterize_head.py", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "unknown model" in proc.stderr and "Traceback" not in proc.stderr
