"""characterize_head.py end to end on the planted model (in process), its figures drawn from the
saved files, and its bad-input errors."""

import json

import pandas as pd
import pytest
import torch

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
    """The survey ranks the planted target first and the decoy second, CIs apart (the claim's
    criterion for a planted model), and every generic head scores at least twice the target (the
    post's separation: L1H5 0.6, every other head 1.2 or more). v4 (modest logits, a large generic
    part) leaks mass to BOS and unrelated words: the target scores ~1.1 on our prompts (0.6 under
    the post's), the decoy (category logit 2, BOS logit 4) ~1.5, the generic heads 2.7 or more.
    v3's "target < 0.3, next-lowest > 2 x target + 0.5" held only for its perfect head."""
    out = run
    for f in ("head_scores.csv", *FIGURES, "mass_split.csv", "attention_L1H5.html", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    table = pd.read_csv(out / "head_scores.csv")
    # every head of every layer, not only layers 0..target (the published survey is all 12 x 12)
    assert len(table) == truth["n_layers"] * 8 and table.layer.max() == truth["n_layers"] - 1
    order = table.sort_values("score_mean").reset_index(drop=True)
    assert [tuple(order.loc[i, ["layer", "head"]]) for i in range(2)] == [tuple(truth["target"]), tuple(truth["decoy_head"])]
    hi = order.score_mean + order.score_ci95
    lo = order.score_mean - order.score_ci95
    assert hi[0] < lo[1]  # target and decoy: CIs apart
    generic = order.iloc[2:]
    assert (generic.score_mean - generic.score_ci95 > hi[1]).all()  # the decoy is apart from every generic head
    assert generic.score_mean.min() > 2 * order.score_mean[0]
    summary = json.loads((out / "summary.json").read_text())
    # the planted decoy (a later-layer partial rule-follower) is the next-lowest head anywhere
    assert summary["target_rank"] == 1 and summary["n_heads_total"] == len(table)
    assert [summary["next_lowest"][k] for k in ("layer", "head")] == truth["decoy_head"]
    assert summary["next_lowest"]["score"] == pytest.approx(order.score_mean[1])
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


def test_overlap_mask_against_a_readers_categories(tokenizer):
    """overlap_mask on a prompt written by hand, against the rule applied to a reader's category
    sets (earlier key, a shared category, another token; else BOS), for every merge."""
    import characterize_head as ch
    from common.prompts import CATEGORIES, ideal_mask, token_category_map

    words = [" May", " Monday", " plum", " red", " John", " he", " one", " 1999", " Monday", " cherry", " Mary",
             " lime", " June"]
    reader = {"May": {"months"}, "Monday": {"days"}, "plum": {"fruits"}, "red": {"colours"}, "John": {"names"},
              "he": {"pronouns"}, "one": {"numbers"}, "1999": {"years"}, "cherry": {"fruits"}, "Mary": {"names"},
              "lime": {"fruits"}, "June": {"months"}}
    ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    assert all(len(i) == 1 for i in ids)
    tokens = torch.tensor([[tokenizer.bos_token_id] + [i[0] for i in ids]])
    groups = ch.overlap_groups(CATEGORIES)
    assert set(groups) == {"months+days", "names+pronouns", "numbers+years", "fruit/colour words", "all merged"}
    assert {a for a, _ in groups["fruit/colour words"]} == {"word:lime", "word:peach", "word:plum", "word:cherry"}
    merged = {"months+days": [{"months", "days"}], "names+pronouns": [{"names", "pronouns"}],
              "numbers+years": [{"numbers", "years"}], "fruit/colour words": [], "all merged": None}
    colour_words = {"lime", "peach", "plum", "cherry"}
    for name in groups:
        joins = [s for v in merged.values() if v for s in v] if name == "all merged" else merged[name]
        def cats(w):
            c = set(reader[w])
            for j in joins:
                if c & j:
                    c |= j
            if name in ("fruit/colour words", "all merged") and w in colour_words:
                c.add("colours")
            return c
        seq = [None] + [w.strip() for w in words]
        n = len(seq)
        want = torch.zeros(n, n, dtype=torch.bool)
        for q in range(1, n):
            for k in range(1, q):
                want[q, k] = bool(cats(seq[q]) & cats(seq[k])) and seq[q] != seq[k]
        want[:, 0] = ~want.any(-1)
        got = ch.overlap_mask(tokens, tokenizer, CATEGORIES, groups[name])[0]
        assert torch.equal(got, want), name
    # no merge: exactly the ideal mask
    assert torch.equal(ch.overlap_mask(tokens, tokenizer, CATEGORIES, []), ideal_mask(tokens, token_category_map(tokenizer)))


def test_overlap_sensitivity_on_the_planted_model(run, truth, planted_model, tokenizer):
    """The planted head keeps every planted category apart: a word of a merged-in category gets only
    the any-category logit every category word gets (LOGIT_ANY_CATEGORY, not LOGIT_SAME_CATEGORY), so
    a merge counts keys the head does not prefer as correct, and the head's designed pattern (its
    logits alone, computed in test_planted) scores higher under every merge (designed rises 0.04-0.3).
    The built head's large generic part spreads its mass over every key, so the measured rise of one
    merge is small (0.01-0.04 on these prompts): judged paired, on the same prompts (the target's
    per-prompt scores are recomputed here from its attention patterns with each merge's mask,
    overlap_mask, and reproduce the table), each merge's mean rise is not significantly negative
    (95% CI), and all merges together raise the score significantly and more than any one merge.
    (v3 and the first v4 tuning asserted every merge's rise significant; that needed a head whose
    unrelated keys got no mass.)"""
    import characterize_head as ch
    from scipy import stats

    from common.metrics import all_head_patterns, query_costs
    from common.prompts import CATEGORIES, category_prompts
    from common.protocol import POST_KEYWORDS
    from test_planted import _target_design

    layer, head = truth["target"]
    o = pd.read_csv(run / "overlap_sensitivity.csv").set_index("merge")
    scores = pd.read_csv(run / "head_scores.csv").set_index(["layer", "head"])
    assert list(o.index) == ["none", "months+days", "names+pronouns", "numbers+years", "fruit/colour words", "all merged"]
    assert o.loc["none", "target_score"] == pytest.approx(scores.loc[(layer, head), "score_mean"], abs=1e-9)
    assert o.loc["none", "changed_queries"] == 0
    args = json.loads((run / "meta.json").read_text())["args"]
    tok = planted_model.tokenizer
    batch = category_prompts(tok, args["n_prompts"], args["seq_len"], args["seed"], repeat_prob=args["repeat_prob"])
    pattern = all_head_patterns(planted_model, batch.tokens, layers=[layer])[0][head]
    base = query_costs(pattern, batch.mask)[:, 1:].mean(-1)
    assert float(base.mean()) == pytest.approx(o.loc["none", "target_score"], abs=1e-4)
    groups = ch.overlap_groups(CATEGORIES)
    designed_base = query_costs(_target_design(batch.tokens, batch.mask, tokenizer), batch.mask)[:, 1:].mean()
    for m in o.index[1:]:
        r = o.loc[m]
        assert r.changed_queries > 0, m
        mask = ch.overlap_mask(batch.tokens, tok, CATEGORIES, groups[m])
        merged = query_costs(pattern, mask)[:, 1:].mean(-1)
        assert float(merged.mean()) == pytest.approx(r.target_score, abs=1e-4), m
        rise = (merged - base).double().numpy()
        half = stats.t.ppf(0.975, len(rise) - 1) * rise.std(ddof=1) / len(rise) ** 0.5
        designed = query_costs(_target_design(batch.tokens, mask, tokenizer), mask)[:, 1:].mean() - designed_base
        assert float(designed) > 0, (m, float(designed))
        if m == "all merged":
            assert rise.mean() - half > 0, (m, rise.mean(), half)
        else:
            assert rise.mean() + half > 0, (m, rise.mean(), half)
    assert o.loc["all merged", "target_score"] > o.drop(index=["none", "all merged"]).target_score.max()
    s = json.loads((run / "summary.json").read_text())["overlap_sensitivity"]
    assert s["all merged"]["target_score"] == pytest.approx(o.loc["all merged", "target_score"])
    post = ch.overlap_groups(POST_KEYWORDS)
    assert set(post) == {"numbers+years", "fruit/colour words", "all merged"}
    assert post["fruit/colour words"] == [("word:peach", "colors")]
