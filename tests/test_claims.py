"""Every claim's criterion on each of its branches (common/claims.py and each script's CLAIMS).

Each check is run on small synthetic saved results built to be reproduced, differs and
inconclusive (and, for the planted shape, to hold and to fail), with the expected outcome worked
out by hand from the published number and the stated tolerance, never from the check itself. The
statuses are then checked per model kind: genuine gpt2-small, planted, any other model.
``tests/mutate_claims.py`` flips each comparison of these checks in turn and confirms that this
file catches it.
"""

import functools
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import characterize_head
import clustering
import component_ablation
import composition
import cosine_attention_analysis
import gradient_steering
import rule_preserving_ablation
import self_suppression_survey
import semantic_head
import skew_analysis
import succession_ablation
import svd_group_scaling_heatmap
import svd_rank_ablation
import svd_sym_skew_heatmap
from common import claims as C
from run_all import all_claims

REP, DIF, INC = C.REPRODUCED, C.DIFFERS, C.INCONCLUSIVE
README = Path(__file__).resolve().parents[1] / "README.md"


def run_dir(tmp_path, tables: dict, summary: dict | None = None, model="gpt2-small", weights="genuine",
            protocol="post", layer=1, head=5, **more_args) -> Path:
    """A saved run: meta.json (args, genuine-weights verdict), tables as CSV, summary.json."""
    d = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    args = {"model": model, "layer": layer, "head": head, **({"protocol": protocol} if protocol else {}), **more_args}
    (d / "meta.json").write_text(json.dumps({"args": args, "weights": {"status": weights, "verdict": weights}}))
    for name, rows in tables.items():
        pd.DataFrame(rows).to_csv(d / f"{name}.csv", index=False)
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


# -- the interval criteria and the statuses -----------------------------------------------------

def test_near():
    assert C.near((0.55, 0.65), 0.6, 0.1) == REP
    assert C.near((0.5, 0.7), 0.6, 0.1) == REP  # the tolerance's edges are inside
    assert C.near((0.45, 0.55), 0.6, 0.1) == INC
    assert C.near((0.65, 0.75), 0.6, 0.1) == INC
    assert C.near((0.71, 0.8), 0.6, 0.1) == DIF
    assert C.near((0.2, 0.49), 0.6, 0.1) == DIF


def test_bounds():
    assert C.at_least((1.2, 1.4), 1.2) == REP
    assert C.at_least((1.1, 1.3), 1.2) == INC
    assert C.at_least((1.0, 1.19), 1.2) == DIF
    assert C.at_most((0.0, 0.1), 0.1) == REP
    assert C.at_most((0.05, 0.15), 0.1) == INC
    assert C.at_most((0.11, 0.2), 0.1) == DIF


def test_sign():
    assert C.sign((0.1, 0.2), positive=True) == REP
    assert C.sign((-0.1, 0.1), positive=True) == INC
    assert C.sign((-0.2, -0.1), positive=True) == DIF
    assert C.sign((-0.2, -0.1), positive=False) == REP
    assert C.sign((-0.1, 0.1), positive=False) == INC
    assert C.sign((0.1, 0.2), positive=False) == DIF
    assert C.sign((0.0, 0.2), positive=True) == INC  # an interval touching 0 does not exclude it


def test_banded_and_all_of():
    good, bad = (lambda x: x >= 0.95), (lambda x: x < 0.9)
    assert [C.banded(x, good, bad) for x in (0.96, 0.92, 0.8)] == [REP, INC, DIF]
    assert C.all_of(REP, REP) == REP
    assert C.all_of(REP, INC) == INC
    assert C.all_of(REP, DIF) == DIF
    assert C.all_of(INC, DIF) == DIF
    assert C.all_of() == INC


def test_status_depends_on_what_was_loaded():
    ev = C.Evidence("x", published=REP, holds=False)
    assert C.status(ev, "genuine") == REP
    assert C.status(ev, "planted") == C.FAILS
    assert C.status(C.Evidence("x", published=DIF, holds=True), "planted") == C.HOLDS
    assert C.status(ev, "other") == C.MEASURED
    assert C.status(C.Evidence("x", published=REP, protocol_matches=False), "genuine") == INC
    assert C.status(C.Evidence("x", published=DIF, protocol_matches=False), "genuine") == INC
    assert C.status(C.Evidence("x", holds=True), "genuine") == C.SHOWN  # no published counterpart
    assert C.status(C.Evidence("x"), "planted") == C.SHOWN
    assert C.status(None, "genuine") == C.NOT_RUN


def test_model_kind():
    meta = lambda model, w: {"args": {"model": model}, "weights": {"status": w}}  # noqa: E731
    assert C.model_kind(meta("planted", "planted")) == "planted"
    assert C.model_kind(meta("planted:copying", "planted")) == "planted"
    assert C.model_kind(meta("gpt2-small", "genuine")) == "genuine"
    assert C.model_kind(meta("/data/gpt2", "genuine")) == "genuine"  # a local copy of the real weights
    assert C.model_kind(meta("gpt2-small", "not gpt2-small")) == "other"
    assert C.model_kind(meta("gpt2-medium", "unverified")) == "other"
    assert C.model_kind({"args": {"model": "gpt2-small"}}) == "other"  # no verdict recorded: no verdict given


# -- each claim's check --------------------------------------------------------------------------

def head_scores(target=(0.6, 0.02), others=((1.3, 0.02), (1.5, 0.03))):
    rows = [{"layer": 1, "head": 5, "score_mean": target[0], "score_ci95": target[1]}]
    rows += [{"layer": 0, "head": h, "score_mean": m, "score_ci95": c} for h, (m, c) in enumerate(others)]
    return {"head_scores": rows}


def test_head_survey(tmp_path):
    check = characterize_head.check_head_survey
    post_run = functools.partial(run_dir, seq_len=255)  # the post's 255-word prompts
    ok = check(post_run(tmp_path, head_scores()))
    assert (ok.published, ok.holds, ok.protocol_matches) == (REP, True, True)
    assert check(post_run(tmp_path, head_scores(target=(0.9, 0.02)))).published == DIF
    assert check(post_run(tmp_path, head_scores(target=(0.3, 0.02)))).published == DIF
    assert check(post_run(tmp_path, head_scores(target=(0.68, 0.05)))).published == INC
    assert check(post_run(tmp_path, head_scores(others=((1.0, 0.02), (1.5, 0.02))))).published == DIF
    assert check(post_run(tmp_path, head_scores(others=((1.15, 0.0), (1.5, 0.02))))).published == REP  # 1.2, one decimal
    assert check(post_run(tmp_path, head_scores(others=((1.14, 0.0), (1.5, 0.02))))).published == DIF
    assert check(post_run(tmp_path, head_scores(others=((1.15, 0.05), (1.5, 0.02))))).published == INC
    # planted shape: lowest with CIs apart
    assert check(post_run(tmp_path, head_scores(target=(0.6, 0.1), others=((0.65, 0.1), (1.5, 0.1))))).holds is False
    assert check(post_run(tmp_path, head_scores(target=(0.6, 0.01), others=((0.3, 0.01), (1.5, 0.1))))).holds is False
    # our prompts: the numbers match but a genuine run cannot reproduce the post's experiment
    ours = check(post_run(tmp_path, head_scores(), protocol="ours"))
    assert ours.protocol_matches is False and C.status(ours, "genuine") == INC and "protocol" in ours.note
    assert check(post_run(tmp_path, head_scores(), protocol=None)).protocol_matches is False
    assert check(post_run(tmp_path, head_scores(), seq_len=100)).protocol_matches is False  # shorter than the post's


def ablation(clean=(0.66, 0.02), emb=(2.1, 0.05), mlp=(1.75, 0.05), pos=(0.67, 0.01), att=(0.65, 0.01)):
    rows = [{"ablation": "clean", "method": "-", "head": 5, "mean": clean[0], "ci95": clean[1]}]
    for name, (m, c) in (("token embedding", emb), ("layer-0 MLP", mlp), ("positional embedding", pos),
                         ("layer-0 attention", att)):
        rows += [{"ablation": name, "method": "mean", "head": 5, "mean": m, "ci95": c},
                 {"ablation": name, "method": "mean", "head": 4, "mean": 9.0, "ci95": 0.1}]  # another head
    return {"summary": rows}


def test_component_ablation(tmp_path):
    check = component_ablation.check_component_ablation
    post_run = functools.partial(run_dir, seq_len=63, ablate_bos=True)  # the post's ablation experiment
    ok = check(post_run(tmp_path, ablation()))
    assert (ok.published, ok.holds) == (REP, True)
    assert check(post_run(tmp_path, ablation(emb=(3.0, 0.05)))).published == DIF
    assert check(post_run(tmp_path, ablation(mlp=(1.2, 0.05)))).published == DIF
    assert check(post_run(tmp_path, ablation(clean=(1.0, 0.02)))).published == DIF
    assert check(post_run(tmp_path, ablation(emb=(2.2, 0.1)))).published == INC
    # "positions do not matter": a change over 10% of the embedding ablation's (0.144 here)
    moved = check(post_run(tmp_path, ablation(pos=(1.2, 0.01))))
    assert (moved.published, moved.holds) == (DIF, False)
    assert check(post_run(tmp_path, ablation(att=(0.9, 0.01)))).holds is False
    assert check(post_run(tmp_path, ablation(pos=(0.78, 0.05)))).published == INC  # |0.12| +- 0.05 spans 0.144
    # "MLP0 breaks it": an ablated score that barely moves
    assert check(post_run(tmp_path, ablation(mlp=(0.7, 0.05)))).holds is False
    assert check(post_run(tmp_path, ablation(mlp=(0.9, 0.01)))).holds is False  # above clean, under 1.5x
    assert check(post_run(tmp_path, ablation(emb=(1.2, 0.6)))).holds is False  # CI reaches the clean CI
    ours = check(post_run(tmp_path, ablation(), protocol="ours"))
    assert ours.protocol_matches is False and "protocol" in ours.note and ok.note == "" and ok.protocol_matches
    assert check(post_run(tmp_path, ablation(), ablate_bos=False)).protocol_matches is False  # BOS kept: not the post's
    assert check(post_run(tmp_path, ablation(), seq_len=20)).protocol_matches is False
    assert ok.numbers["embedding"]["value"] == 2.1 and ok.numbers["embedding"]["ci"] == pytest.approx([2.05, 2.15])


def test_position_independence(tmp_path):
    check = component_ablation.check_position_independence
    table = lambda r: {"position_independence": [  # noqa: E731
        {"variant": v, "head": 5, "pearson_r": x} for v, x in (("shuffled", 0.999), ("shifted", r), ("padded", 0.998))]
        + [{"variant": "shuffled", "head": 0, "pearson_r": 0.1}]}
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.995)))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.97)))) == (INC, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.9)))) == (DIF, False)
    assert check(run_dir(tmp_path, table(0.99))).published == REP


def spectrum(n_neg=33, sym=1.861, skew=1.347, top=64):
    return {"spectrum_summary": [
        {"layer": 1, "head": 5, "basis": "residual", "top_k": top, f"n_negative_top{top}": n_neg, "sv_max_sym": sym,
         "sv_max_skew": skew, "n_negative": 64, "n_positive": 64},
        {"layer": 1, "head": 5, "basis": "effective", "top_k": top, f"n_negative_top{top}": 1, "sv_max_sym": 9.0,
         "sv_max_skew": 9.5, "n_negative": 64, "n_positive": 64}]}


def test_spectrum(tmp_path):
    check = skew_analysis.check_spectrum
    ok = check(run_dir(tmp_path, spectrum()))
    assert (ok.published, ok.holds) == (REP, True)
    assert check(run_dir(tmp_path, spectrum(n_neg=32))).published == DIF
    assert check(run_dir(tmp_path, spectrum(sym=1.9))).published == DIF
    assert check(run_dir(tmp_path, spectrum(skew=1.33))).published == REP  # within 0.01 of 1.34
    assert check(run_dir(tmp_path, spectrum(skew=1.2))).published == DIF
    assert check(run_dir(tmp_path, spectrum(top=40))).published == INC  # not the published top 64
    assert check(run_dir(tmp_path, spectrum(sym=1.0, skew=1.2))).holds is False


def downstream(whole=(0.44, 0.05), skew=(-0.35, 0.05)):
    return {"downstream_summary": [{"ablation": skew_analysis.WHOLE_HEAD, "mean_drop": whole[0], "ci95": whole[1]},
                                   {"ablation": "whole head (zero)", "mean_drop": -5.0, "ci95": 0.1},
                                   {"ablation": skew_analysis.SKEW_REMOVED, "mean_drop": skew[0], "ci95": skew[1]}]}


def test_skew_downstream(tmp_path):
    check = skew_analysis.check_skew_downstream
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, downstream()))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, downstream(skew=(0.1, 0.05))))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, downstream(skew=(-0.01, 0.05))))) == (INC, False)
    assert check(run_dir(tmp_path, downstream(whole=(-0.3, 0.05)))).published == DIF
    assert check(run_dir(tmp_path, downstream(whole=(0.03, 0.05)))).published == INC
    # the planted demo's -0.0019 +- 0.0016 excludes 0: it holds, barely, and says so with its CI
    assert check(run_dir(tmp_path, downstream(skew=(-0.0019, 0.0016)))).holds is True


def test_self_rank(tmp_path):
    check = self_suppression_survey.check_self_rank

    def tables(me):
        others = {0: 0.5, 1: 0.55, 2: 0.6, 3: 0.65, 4: 0.75}
        tok = [{"layer": 1, "head": h, "subset": "category", "mean_self_rank_pct": me if h == 5 else others[h]}
               for h in range(6)]
        tok += [{"layer": 1, "head": h, "subset": "all", "mean_self_rank_pct": 0.1 if h == 5 else 0.9} for h in range(6)]
        tok += [{"layer": 0, "head": 0, "subset": "category", "mean_self_rank_pct": 0.99}]  # another layer
        w = [{"layer": 1, "head": h, "n_negative_top": 30 + h, "top_k": 64, "full_column_rank": True} for h in range(6)]
        return {"token_self_suppression": tok, "weights_survey": w}

    ok = check(run_dir(tmp_path, tables(0.98)))
    assert ok.holds is True and ok.published is None and C.status(ok, "genuine") == C.SHOWN
    # the inertia count beside it: head 5 has 35 negatives among the top 64, the most of its layer
    assert (ok.numbers["n_negative_top"], ok.numbers["n_negative_top_rank"]) == (35, 1)
    assert ok.numbers["best_other_head_pct"] == 0.75
    assert check(run_dir(tmp_path, tables(0.7))).holds is False  # head 4 ranks its own key lower (0.75)
    assert check(run_dir(tmp_path, tables(0.75))).holds is False  # equal to the best other head: not lower


def test_sym_reproduces(tmp_path):
    check = svd_sym_skew_heatmap.check_sym_reproduces
    table = lambda r: {"numbers": [{"token_set": "30 group tokens", "pearson_base_sym": r, "variance_share_sym": r * r,  # noqa: E731
                                    "fro_ratio_skew_base": 0.1},
                                   {"token_set": "vocabulary", "pearson_base_sym": 0.1, "variance_share_sym": 0.01,
                                    "fro_ratio_skew_base": 0.9}]}
    assert [(e.published, e.holds) for e in (check(run_dir(tmp_path, table(r))) for r in (0.97, 0.95, 0.92, 0.8))] == \
        [(REP, True), (REP, True), (INC, False), (DIF, False)]


def test_eigen_steering(tmp_path):
    check = svd_group_scaling_heatmap.check_eigen_steering

    def curves(top0=1.0, rank1=500):
        rows = []
        for i in range(10):
            rows += [{"alpha": 1.0, "self_rank_vocab": rank1}, {"alpha": 0.5, "self_rank_vocab": 50},
                     {"alpha": 0.0, "self_rank_vocab": 0 if i < 10 * top0 else 3}, {"alpha": -1.0, "self_rank_vocab": 0}]
        return {"curves": rows}

    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves()))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves(top0=0.9)))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves(top0=0.7)))) == (INC, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves(top0=0.2)))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves(rank1=50)))) == (INC, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, curves(rank1=5)))) == (DIF, False)
    assert check(run_dir(tmp_path, curves(rank1=100))).published == REP
    assert check(run_dir(tmp_path, curves(rank1=10))).published == INC  # 10 is not under 100 / 10
    text = check(run_dir(tmp_path, curves(top0=0.7))).text
    assert "alpha 0.5: self is the top key for 0%" in text and "alpha 0: self is the top key for 70%" in text
    only = {"curves": [r for r in curves()["curves"] if r["alpha"] != -1.0]}
    assert "alpha -1" not in check(run_dir(tmp_path, only)).text  # only the alphas that were run
    no_alpha1 = {"curves": [r for r in curves()["curves"] if r["alpha"] != 1.0]}
    with pytest.raises(KeyError, match="alpha 1"):
        check(run_dir(tmp_path, no_alpha1))


def cosine(peak_centre=0.95, peak=(2.0, 0.1), top=(0.5, 0.1), top_pairs=20, rest=1.0):
    def w(centre, m, h, n=100):
        return {"centre": centre, "lo": centre - 0.025, "hi": centre + 0.025, "n_pairs": n, "mean_diff": m,
                "ci_lo": m - h, "ci_hi": m + h}
    rows = [w(0.5, rest - 0.9, 0.05), w(0.8, rest, 0.1), w(peak_centre, *peak)]
    rows.append({**w(0.995, *top, n=top_pairs), "lo": 0.99, "hi": 1.0})
    rows.append({**w(0.3, 50.0, 1.0, n=0)})  # an empty window is ignored
    return {"cosine_attention": rows}


def test_cosine_peak(tmp_path):
    check = cosine_attention_analysis.check_cosine_peak
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, cosine()))) == (REP, True)
    assert check(run_dir(tmp_path, cosine(peak_centre=0.85))).published == DIF  # peak below 0.9
    assert check(run_dir(tmp_path, cosine(peak_centre=0.85))).holds is True  # the planted shape needs no 0.9
    assert check(run_dir(tmp_path, cosine(peak_centre=0.9))).published == REP  # 0.9 is inside [0.9, 1)
    # a window at cosine >= 0.99 as high as the peak (CIs overlap): not shown to be lower
    near_top = check(run_dir(tmp_path, cosine(top=(1.9, 0.2))))
    assert (near_top.published, near_top.holds) == (INC, False)
    # the peak at cosine 1 itself: the claim is false
    at_one = check(run_dir(tmp_path, cosine(top=(3.0, 0.1))))
    assert (at_one.published, at_one.holds) == (DIF, False)
    # self-attention wins everywhere (a copying head): the peak is below self, the shape fails
    below_self = check(run_dir(tmp_path, cosine(peak=(-1.0, 0.1), top=(-3.0, 0.1), rest=-2.0)))
    assert below_self.holds is False
    assert check(run_dir(tmp_path, cosine(peak=(0.05, 0.1), top=(-3.0, 0.1), rest=-2.0))).holds is False  # CI reaches 0
    assert check(run_dir(tmp_path, cosine(top_pairs=0))).published == REP  # no pairs at >= 0.99: nothing above


def test_clustering(tmp_path):
    check = clustering.check_clustering
    table = lambda fr: {"examples": [  # noqa: E731
        {"example": f" w{i}", "in_graph": f is not None, "companion_fraction": f} for i, f in enumerate(fr)]}
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table([1.0, 0.5, None])))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table([1.0, 0.4])))) == (INC, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table([0.2, 0.4])))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table([None, None])))) == (INC, False)


def test_gradient_steering(tmp_path):
    check = gradient_steering.check_gradient_steering
    table = lambda o, p: {"variants": [{"variant": "original", "mass_self_and_copies": o},  # noqa: E731
                                       *([{"variant": "gradient promote", "mass_self_and_copies": p}] if p is not None else []),
                                       {"variant": "gradient suppress", "mass_self_and_copies": 0.0}]}
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.01, 0.9)))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.01, 0.3)))) == (INC, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.01, 0.01)))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.7, 0.9)))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.2, 0.9)))) == (INC, False)
    none = check(run_dir(tmp_path, table(0.01, None)))
    assert C.status(none, "genuine") == C.SHOWN and C.status(none, "planted") == C.SHOWN


def test_naive_similarity(tmp_path):
    check = semantic_head.check_naive_similarity
    table = lambda kl, kl_ns, naive, head: {"naive_vs_head": [  # noqa: E731
        {"variant": "naive_cosine", "prompts": "all", "kl": kl, "naive_self_mass": naive, "head_self_mass": head},
        {"variant": "naive_cosine", "prompts": "category", "kl": 0.0, "naive_self_mass": 0.0, "head_self_mass": 1.0},
        {"variant": "naive_cosine_no_self", "prompts": "all", "kl": kl_ns, "naive_self_mass": 0.0, "head_self_mass": head}]}
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(1.0, 0.2, 0.1, 0.001)))) == (REP, True)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(0.2, 1.0, 0.1, 0.001)))) == (DIF, False)
    assert (lambda e: (e.published, e.holds))(check(run_dir(tmp_path, table(1.0, 0.2, 0.1, 0.05)))) == (DIF, False)
    assert check(run_dir(tmp_path, table(1.0, 1.0, 0.1, 0.001))).holds is False  # masking must lower the KL


def test_measurements_are_shown(tmp_path):
    grid = {"grid": [{"k": 1, "scale": 1.0, "mean_rank": 900.0, "n_queries": 10, "acc@1": 0.0},
                     {"k": 8, "scale": -1.0, "mean_rank": 0.0, "n_queries": 10, "acc@1": 0.8}]}
    ev = svd_rank_ablation.check_rank_grid(run_dir(tmp_path, grid))
    assert ev.numbers["best_k"] == 8 and C.status(ev, "genuine") == C.SHOWN and C.status(ev, "planted") == C.SHOWN
    expl = {"explained": [{"variant": "rules", "baseline": "mean", "explained": 0.9, "ci_lo": 0.8, "ci_hi": 0.95},
                          {"variant": "rules", "baseline": "resample", "explained": 0.1, "ci_lo": 0.0, "ci_hi": 0.2}]}
    ev = rule_preserving_ablation.check_rules_explained(run_dir(tmp_path, expl))
    assert ev.numbers["explained"] == {"value": 0.9, "ci": [0.8, 0.95]} and C.status(ev, "genuine") == C.SHOWN
    assert C.status(ev, "planted") == C.HOLDS and C.status(ev, "other") == C.SHOWN
    for lo, holds in ((0.5, False), (0.51, True)):
        expl["explained"][0]["ci_lo"] = lo
        assert rule_preserving_ablation.check_rules_explained(run_dir(tmp_path, expl)).holds is holds
    summ = {"verdict": {"text": "Weak", "scope": "curated", "mean": 0.01, "ci_lo": -0.1, "ci_hi": 0.1, "label": "Weak"}}
    ev = succession_ablation.check_succession(run_dir(tmp_path, {"effect_summary": []}, summary=summ))
    assert ev.numbers["label"] == "Weak" and C.status(ev, "other") == C.SHOWN


def test_reader(tmp_path):
    """The top V reader (by rank, whatever the row order) stands out above z 3; Q and K rows,
    however high, do not count."""
    check = composition.check_reader

    def table(z_v, z_q=9.0):
        rows = [{"mode": "Q", "reader_layer": 2, "reader_head": 1, "score": 0.9, "z": z_q, "percentile": 100.0,
                 "rank": 1, "n_pairs": 50},
                {"mode": "V", "reader_layer": 2, "reader_head": 3, "score": 0.1, "z": 0.5, "percentile": 60.0,
                 "rank": 2, "n_pairs": 50},
                {"mode": "V", "reader_layer": 2, "reader_head": 7, "score": 0.2, "z": z_v, "percentile": 98.0,
                 "rank": 1, "n_pairs": 50}]
        return {"composition": rows}

    ok = check(run_dir(tmp_path, table(6.7)))
    assert ok.holds is True and ok.numbers["reader"] == [2, 7] and ok.numbers["z"] == 6.7 and ok.published is None
    assert C.status(ok, "planted") == C.HOLDS and C.status(ok, "genuine") == C.SHOWN
    assert C.status(ok, "other") == C.SHOWN
    weak = check(run_dir(tmp_path, table(1.2)))  # gpt2-small's best V reader: no standout
    assert weak.holds is False and C.status(weak, "planted") == C.FAILS and C.status(weak, "genuine") == C.SHOWN
    assert check(run_dir(tmp_path, table(3.0))).holds is False  # 3 sd is not above 3
    assert check(run_dir(tmp_path, table(3.01))).holds is True
    assert check(run_dir(tmp_path, table(1.2, z_q=1.0))).holds is False  # nothing stands out anywhere
    none = check(run_dir(tmp_path, {"composition": [{"mode": "Q", "reader_layer": 2, "reader_head": 0, "score": 0.1,
                                                     "z": 9.0, "percentile": 99.0, "rank": 1, "n_pairs": 9}]}))
    assert none.holds is None and C.status(none, "planted") == C.SHOWN  # no V reader: nothing to judge


# -- one place for claim text ---------------------------------------------------------------------

def test_claims_are_gathered_with_stable_unique_ids():
    ids = [c.id for c in all_claims()]
    assert len(ids) == len(set(ids))
    assert {"head-survey", "skew-downstream"} <= set(ids)  # ids other tools use
    assert all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)


def test_readme_claims_table_is_generated_from_the_claims():
    text = README.read_text()
    block = re.search(r"<!-- claims:begin -->\n(.*?)\n<!-- claims:end -->", text, re.S)
    assert block, "README.md lacks the generated claims table (python run_all.py --claims-table)"
    assert block.group(1).strip() == C.markdown_table(all_claims()).strip(), \
        "README's claims table is stale: regenerate it with python run_all.py --claims-table"
