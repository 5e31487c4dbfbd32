"""Twins of the planted model break exactly the claims their ground truth declares (issue 22).

Each twin (``--model planted:<twin>``, common/planted_names.py) is built so that named claims are
false by construction. Here the scripts that decide those claims run on the twin at reduced size,
the report's records are evaluated from their saved results, and every claim of those scripts must
read ``planted: fails`` if the twin's ground truth lists it and ``planted: holds`` otherwise
. The plain planted model is the control (tests/test_report.py, on the
committed demo results: every claim holds). A verdict that cannot tell a twin from the plain model
fails here.
"""

import pytest

from common.claims import FAILS, HOLDS
from common.planted import ground_truth
from common.report import evaluate
from conftest import run_main
from run_all import all_claims

# Reduced sizes: enough prompts for 95% CIs that separate the twin's break from the plain model's.
SMALL = {
    "characterize_head.py": ["--n-prompts", "8", "--seq-len", "32"],
    "component_ablation.py": ["--n-prompts", "32", "--n-reference", "16"],
    "self_suppression_survey.py": [],
    "svd_sym_skew_heatmap.py": [],
    "svd_group_scaling_heatmap.py": [],
    "cosine_attention_analysis.py": ["--n-tokens", "1024", "--freq-table", "none"],
    "rule_preserving_ablation.py": ["--text", "demo", "--n-windows", "24", "--window-len", "32", "--n-reference", "8",
                                    "--n-boot", "200", "--communities", "lists"],
}
SMALL.update({
    "skew_analysis.py": ["--n-prompts", "16", "--seq-len", "24"],
})
TWINS = ("copying", "positional", "skew", "no-mlp0")


def deciding_scripts(false_claims) -> list[str]:
    """The scripts whose claims include a declared false one (their other claims must hold)."""
    return sorted({c.script + ".py" for c in all_claims() if c.id in set(false_claims)})


@pytest.mark.parametrize("twin", TWINS)
def test_twin_fails_exactly_its_declared_claims(twin, tmp_path, planted_cache):
    model = f"planted:{twin}"
    false = set(ground_truth(twin=twin)["false_claims"])
    scripts = deciding_scripts(false)
    assert false and scripts, f"{twin} declares no false claim a script decides"
    for script in scripts:
        run_main(script, "--model", model, "--out", str(tmp_path / script.removesuffix(".py")), "--threads", "1",
                 *SMALL[script])
    claims = [c for c in all_claims() if c.script + ".py" in scripts]
    records = {r["id"]: r for r in evaluate(tmp_path, claims)}
    assert false <= set(records)
    for cid, r in records.items():
        want = FAILS if cid in false else HOLDS
        assert r["model_kind"] == "planted"
        assert r["status"] == want, f"{model} {cid}: {r['status']} ({r['text']}), ground truth: {'false' if cid in false else 'true'}"
