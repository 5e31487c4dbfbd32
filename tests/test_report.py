"""report.html: one self-contained page drawn from saved results only (common/report.py).

Built here from the committed demo results (figures/demo/, made by ``make demo``), copied to a
temporary root, so no model runs; one script's results are removed to check the "not run" row.
"""

import json
import re
import shutil

import pytest

from common.browser import check_page, find_chromium, network_references
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
    measurements = {"rank-grid", "rules-explained", "succession"}
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
