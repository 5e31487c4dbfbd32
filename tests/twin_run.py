"""Run the scripts that decide a planted twin's declared false claims, at reduced size, and
evaluate every claim of those scripts from the saved results (tests/test_twin_*.py)."""

from __future__ import annotations

from pathlib import Path

from common.claims import FAILS, HOLDS
from common.planted import ground_truth
from common.report import evaluate
from conftest import run_main
from run_all import all_claims

# Reduced sizes: enough prompts for 95% CIs that separate a twin's break from the plain model's.
SMALL = {
    "characterize_head.py": ["--n-prompts", "8", "--seq-len", "32"],
    "component_ablation.py": ["--n-prompts", "32", "--n-reference", "16"],
    "skew_analysis.py": ["--n-prompts", "16", "--seq-len", "24"],
    "self_suppression_survey.py": ["--n-sample", "64"],  # the category words are always in; 64 more sampled
    "svd_sym_skew_heatmap.py": [],
    "svd_group_scaling_heatmap.py": [],
    "cosine_attention_analysis.py": ["--n-tokens", "1024", "--freq-table", "none"],
    "clustering.py": ["--n-tokens", "400", "--freq-table", "none", "--layout-iterations", "50", "--n-heatmaps", "1"],
    "gradient_steering.py": ["--steps", "20", "--n-prompts", "32", "--n-heldout", "16", "--n-rank-queries", "50"],
    "semantic_head.py": ["--n-prompts", "16", "--seq-len", "32"],
    "rule_preserving_ablation.py": ["--text", "demo", "--n-windows", "24", "--window-len", "32", "--n-reference", "8",
                                    "--n-boot", "200", "--communities", "lists"],
}


def deciding_scripts(false_claims) -> list[str]:
    """The scripts whose claims include a declared false one (their other claims must hold)."""
    return sorted({c.script + ".py" for c in all_claims() if c.id in set(false_claims)})


def twin_records(twin: str, root: Path) -> tuple[set[str], dict[str, dict]]:
    """(declared false claims, claims.json records of every claim of the deciding scripts)."""
    model = f"planted:{twin}"
    false = set(ground_truth(twin=twin)["false_claims"])
    scripts = deciding_scripts(false)
    assert false and scripts, f"{twin} declares no false claim a script decides"
    for script in scripts:
        extra = []
        if script == "semantic_head.py":  # an SAE of known directions, built for this twin
            extra = ["--sae-path", str(planted_sae(model, root / "sae"))]
        run_main(script, "--model", model, "--out", str(root / script.removesuffix(".py")), "--threads", "1",
                 *SMALL[script], *extra)
    claims = [c for c in all_claims() if c.script + ".py" in scripts]
    records = {r["id"]: r for r in evaluate(root, claims)}
    assert false <= set(records)
    return false, records


def planted_sae(model_name: str, path: Path) -> Path:
    from common.model import load_model
    from common.sae import build_planted_sae

    model = load_model(model_name)
    truth = ground_truth(twin=model_name.split(":", 1)[1])
    sae = build_planted_sae(model, truth["categories"], n_random=48)[0]
    sae.save_model(str(path))
    return path


def assert_statuses(twin: str, false: set[str], records: dict[str, dict]) -> None:
    """Every claim: ``planted: fails`` if the twin's ground truth lists it, ``planted: holds`` else."""
    for cid, r in records.items():
        want = FAILS if cid in false else HOLDS
        assert r["model_kind"] == "planted"
        assert r["status"] == want, \
            f"planted:{twin} {cid}: {r['status']} ({r['text'] or r['error']}), ground truth: {'false' if cid in false else 'true'}"
