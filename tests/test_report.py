"""report.html: one self-contained page drawn from saved results only (common/report.py).

Built here from the committed demo results (figures/demo/, made by ``make demo``), copied to a
temporary root, so no model runs; one script's results are removed to check the "not run" row.
"""

import json
import re
import shutil

import pandas as pd
import pytest

from browser import check_page, find_chromium, network_references
from common.outputs import FIGURES
from common.report import build_report, evaluate, read_claims
from run_all import all_claims

CLAIMS = all_claims()

DEMO = FIGURES / "demo"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if not (DEMO / "characterize_head" / "meta.json").exists():
        pytest.fail("figures/demo has no saved results: run `make demo` (they are committed)")
    root = tmp_path_factory.mktemp("report") / "demo"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("*.html"))
    shutil.rmtree(root / "semantic_head")  # as if it had failed
    (root / "run_all.json").write_text(json.dumps({"steps": {"semantic_head.py": {
        "status": "FAILED (exit 2)", "seconds": 1.0, "error": "error: could not load the SAE (OSError: offline)"}}}))
    build_report(root, CLAIMS, "planted")
    return root


def test_every_claim_has_a_row_and_a_status(root):
    rows = evaluate(root, CLAIMS)
    assert rows == read_claims(root)  # claims.json is what the page was made from
    assert [r["id"] for r in rows] == [c.id for c in CLAIMS]
    assert len({c.id for c in CLAIMS}) == len(CLAIMS)
    by_id = {r["id"]: r for r in rows}
    assert by_id["naive-similarity"]["status"] == "not run"
    assert "could not load the SAE" in by_id["naive-similarity"]["error"]
    # the demo results exist for every other claim, and the plain planted model's ground truth is that
    # every claim with a shape holds (its false_claims list is empty); measurements are "shown"
    measurements = {"rank-grid", "succession"}
    for r in rows:
        if r["script"] != "semantic_head":
            assert r["status"] == ("shown" if r["id"] in measurements else "planted: holds"), r
            assert r["model_kind"] == "planted" and r["measured"]
    html = (root / "report.html").read_text()
    assert html.count("class='claim-row'") == len(CLAIMS)
    assert "planted" in html.lower() and "not gpt2-small" in html.lower()
    assert network_references(html) == []
    for c in CLAIMS:  # CSV links are relative to the report, so the folder can be copied
        if c.script != "semantic_head":
            assert f"href='{c.script}/{c.table}'" in html and (root / c.script / c.table).exists()


def test_renders_offline_with_every_image(root, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = check_page(root / "report.html", tmp_path / "report.png", want_dom=True, height=2000)
    assert page.ok, page.problems
    loaded, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', page.dom).groups())
    n_figures = sum(1 for c in CLAIMS if c.script != "semantic_head")
    assert total == n_figures and loaded == total


def _relabel(root, tmp_path, model, weights):
    """A copy of the demo results as if another model had made them (meta.json's model and verdict)."""
    other = tmp_path / "relabelled"
    shutil.copytree(root, other)
    for meta_path in other.rglob("meta.json"):
        meta = json.loads(meta_path.read_text())
        meta["args"]["model"] = model
        meta["weights"] = {**meta.get("weights", {}), "status": weights, "verdict": weights}
        meta_path.write_text(json.dumps(meta))
    return other


def test_other_models_are_measured_never_judged(root, tmp_path):
    """gpt2-medium, a training seed or a checkpoint whose weights are not gpt2-small's: the number is
    shown beside the published one, with no verdict."""
    for model, weights in (("gpt2-medium", "unverified"), ("/data/my-gpt2", "not gpt2-small")):
        rows = evaluate(_relabel(root, tmp_path / model.replace("/", "_"), model, weights), CLAIMS)
        ran = [r for r in rows if r["status"] != "not run"]
        assert ran and {r["status"] for r in ran} <= {"measured", "shown"}
        assert {r["id"] for r in ran if r["status"] == "shown"} == {"rank-grid", "rules-explained", "succession",
                                                                     "self-rank", "reader"}


def test_genuine_weights_are_judged_against_the_published_numbers(root, tmp_path):
    """The same saved numbers labelled genuine gpt2-small: judged against the published values (the
    planted v4 model's are near them under the post's protocol by design, far from them elsewhere),
    and the protocol-bound claims cannot be reproduced under our prompts."""
    genuine = _relabel(root, tmp_path, "gpt2-small", "genuine")
    rows = {r["id"]: r for r in evaluate(genuine, CLAIMS)}
    # The protocol-bound claims are judged on the post-protocol runs (<root>/post/). Planted v4 is
    # built to score near the post's numbers there, so the verdict follows the criterion applied by
    # hand to the saved table: L1H5's CI within 0.6 +- 0.1 and the next-lowest head's CI at or above
    # 1.15 is reproduced, either CI wholly outside is differs (v4: 0.535 +- 0.016 and 1.301 +- 0.011).
    hs = pd.read_csv(genuine / "post" / "characterize_head" / "head_scores.csv").sort_values("score_mean")
    t, nxt = hs.iloc[0], hs.iloc[1]
    assert (int(t.layer), int(t["head"])) == (1, 5)
    t_lo, t_hi, n_lo = t.score_mean - t.score_ci95, t.score_mean + t.score_ci95, nxt.score_mean - nxt.score_ci95
    expected = "reproduced" if 0.5 <= t_lo and t_hi <= 0.7 and n_lo >= 1.15 else \
        "differs" if t_hi < 0.5 or t_lo > 0.7 or nxt.score_mean + nxt.score_ci95 < 1.15 else "inconclusive"
    assert rows["head-survey"]["status"] == expected and rows["head-survey"]["post_protocol"]["protocol_matches"]
    assert rows["component-ablation"]["status"] == "differs"
    shutil.rmtree(genuine / "post")  # without them, our prompts cannot reproduce (nor refute) the post's numbers
    rows = {r["id"]: r for r in evaluate(genuine, CLAIMS)}
    assert rows["head-survey"]["status"] == "inconclusive" and "protocol" in rows["head-survey"]["note"]
    assert rows["head-survey"]["published_outcome"] == "differs"  # ours: 1.19 is not 0.6
    assert rows["component-ablation"]["status"] == "inconclusive"
    assert rows["spectrum"]["status"] == "differs"  # 30 of 64, 5.93 vs 2.29: not the post's 33, 1.86, 1.34
    assert rows["skew-downstream"]["status"] == "reproduced"  # both drops have the published sign, CIs excluding 0
    assert rows["self-rank"]["status"] == "shown"
    assert rows["reader"]["status"] == "shown"  # no published number: a measurement on gpt2-small
    assert {r["status"] for r in rows.values()} <= {"reproduced", "differs", "inconclusive", "shown", "not run"}
