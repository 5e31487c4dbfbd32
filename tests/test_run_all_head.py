"""run_all.py --layer --head --seed: every script gets them, the run records them, and another
head than L1H5 gets its own root (``<root>/L<layer>H<head>/``, e.g. figures/demo/L2H3/).

Ground truth: the arguments each stand-in script of the fake repository (tests/test_run_all.py)
records, and, on the real scripts with the planted model, the head and seed each script's saved
summary and meta.json say it studied.
"""

import json

import pytest

import run_all
from test_run_all import FakeRepo, option  # noqa: F401  (the stand-in repository)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    fake = FakeRepo(tmp_path / "repo", [s.script for s in run_all.STEPS])
    monkeypatch.setattr(run_all, "ROOT", fake.path)
    return fake


def test_every_script_gets_layer_head_and_seed(repo, tmp_path):
    root = tmp_path / "out"
    assert run_all.main(["--model", "planted", "--root", str(root), "--layer", "2", "--head", "3", "--seed", "7"]) == 0
    calls = repo.calls()
    assert set(calls) == {s.script for s in run_all.STEPS}
    for script, argv in calls.items():
        assert option(argv, "--seed") == "7", script
        if script == "token_freq.py":  # no head: token counts
            assert "--layer" not in argv and "--head" not in argv
        else:
            assert (option(argv, "--layer"), option(argv, "--head")) == ("2", "3"), script
    record = json.loads((root / "run_all.json").read_text())
    assert (record["layer"], record["head"], record["seed"]) == (2, 3, 7)
    assert "Head studied: L2H3, seed 7" in (root / "INDEX.md").read_text()
    repo.reset()  # another seed: every step reruns (its stamp includes the arguments)
    assert run_all.main(["--model", "planted", "--root", str(root), "--layer", "2", "--head", "3", "--seed", "8"]) == 0
    assert set(repo.calls()) == {s.script for s in run_all.STEPS}


def test_default_root_per_head(monkeypatch, tmp_path):
    from common import outputs

    monkeypatch.setattr(outputs, "FIGURES", tmp_path / "figures")
    assert run_all.default_root("planted") == tmp_path / "figures" / "demo"
    assert run_all.default_root("planted", 1, 5) == tmp_path / "figures" / "demo"
    assert run_all.default_root("planted", 3, 4) == tmp_path / "figures" / "demo" / "L3H4"
    assert run_all.default_root("gpt2-small", 3, 4) == tmp_path / "figures" / "L3H4"
    with pytest.raises(SystemExit):
        run_all.parse_args(["--head", "-1"])


def test_real_scripts_study_the_given_head_in_its_own_root(monkeypatch, tmp_path, planted_cache):
    """As a user runs it (a subprocess: run_all forks its steps, which must not inherit this test
    process's torch thread pool); the default root from $L1H5_FIGURES."""
    from conftest import run_script

    monkeypatch.setenv("L1H5_FIGURES", str(tmp_path / "figures"))
    run_script("run_all.py", "--model", "planted", "--layer", "2", "--head", "3", "--seed", "4", "--jobs", "1",
               "--only", "characterize_head,svd_sym_skew_heatmap")
    root = tmp_path / "figures" / "demo" / "L2H3"
    for script in ("characterize_head", "svd_sym_skew_heatmap"):
        meta = json.loads((root / script / "meta.json").read_text())
        assert (meta["args"]["layer"], meta["args"]["head"], meta["args"]["seed"]) == (2, 3, 4), script
    summary = json.loads((root / "characterize_head" / "summary.json").read_text())
    assert (summary["layer"], summary["head"]) == (2, 3)
    assert (root / "characterize_head" / "attention_L2H3.html").exists()
    assert not (root / "characterize_head" / "attention_L1H5.html").exists()
    assert json.loads((root / "run_all.json").read_text())["head"] == 3
    assert not (tmp_path / "figures" / "demo" / "characterize_head").exists()  # L1H5's root untouched
