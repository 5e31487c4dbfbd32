"""gradient_steering.py on the planted model: gradient steering of L1H5's self-attention.

Ground truth (common.planted, v4): L1H5 gives itself a net logit LOGIT_SELF against
LOGIT_SAME_CATEGORY for its same-category keys (LOGIT_ANY_CATEGORY of it shared by every category
key) and LOGIT_BOS for BOS, so its self-attention starts near zero; its identity-code eigenvalues
are the most negative of W_sym. Its generic part (TARGET_GENERIC_COLUMN) adds random logits on
every pair.
"""

import json

import pandas as pd
import pytest
import torch

from conftest import check_bad_input
from script_run import run_then_render

SCRIPT = "gradient_steering.py"
FIGURES = ("loss_curve.png", "group_heatmaps.png", "self_rank.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("gradient_steering")
    drawn = run_then_render(SCRIPT, out, "--model", "planted", "--steps", "40", "--lr", "0.02",
                            "--n-prompts", "64", "--n-heldout", "48", "--n-rank-queries", "100", "--threads", "1")
    return out, drawn


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


@pytest.fixture(scope="module")
def run_without_kl(tmp_path_factory, planted_model):
    """The same suppressing update without its KL term (--keep-weight 0): the contrast for what
    the KL term keeps."""
    from conftest import run_main

    out = tmp_path_factory.mktemp("gradient_steering_no_kl")
    run_main(SCRIPT, "--model", "planted", "--steps", "40", "--lr", "0.02", "--n-prompts", "64", "--n-heldout", "48",
             "--n-rank-queries", "5", "--direction", "suppress", "--keep-weight", "0", "--threads", "1", "--out", str(out))
    return out


def _row(run, variant):
    v = pd.read_csv(run / "variants.csv")
    return v[v.variant == variant].iloc[0]


def test_outputs_complete(run):
    for f in ("loss_curve.csv", "loss_curve.png", "variants.csv", "group_attention.csv", "group_heatmaps.png",
              "self_ranks.csv", "self_rank.png", "monday_top10.csv", "summary.json", "meta.json"):
        assert (run / f).stat().st_size > 0, f
    v = pd.read_csv(run / "variants.csv")
    assert list(v.variant) == ["original", "gradient promote", "gradient suppress", "trace step (W_K += W_Q)",
                               "eigen promote (matched)", "eigen suppress (matched)"]
    assert len(pd.read_csv(run / "group_attention.csv")) == 6 * 30 * 30
    assert not list(run.glob(".*"))  # no temporary files left behind


def test_render_draws_every_figure_from_saved_files(runs):
    """render(out_dir) drew every figure into a folder that held only the saved results."""
    out, drawn = runs
    assert sorted(p.name for p in drawn) == sorted(FIGURES)
    for f in FIGURES:
        assert (out / f).stat().st_size > 0, f


def test_loss_goes_down(run):
    """The loss is task + KL (--keep-weight 1); the KL term is 0 at step 0 by construction (the
    edit starts at zero) and must grow once the edit moves the pattern. Task loss at step 0:
    promote, -mean log(self mass), about the gap from the query's self logit to BOS's (its top
    key), LOGIT_BOS - LOGIT_SELF (11.25 nats; measured ~11.3); suppress, softplus(margin) (10.0). The
    task is met when promote's self mass is above a half on (geometric) average, i.e. task loss
    under log 2, and suppress's log self mass reaches its target (softplus(0) = log 2). v3
    asserted total loss under a fifth of its start; in v4 promote's start is smaller (11.25 against
    v3's 13 nats) while the KL it pays for moving BOS's and the partners' mass onto self stays
    (~2.3 nats after 40 steps), so the total ends at ~0.21 of its start: asserted under a half
    (the held-out bound), with the task itself asserted met."""
    import math

    from common.planted import LOGIT_BOS, LOGIT_SELF

    c = pd.read_csv(run / "loss_curve.csv")
    margin = json.loads((run / "meta.json").read_text())["args"]["margin"]
    start = {"promote": LOGIT_BOS - LOGIT_SELF, "suppress": math.log1p(math.exp(margin))}
    for d in ("promote", "suppress"):
        cd = c[c.direction == d]
        assert cd.train_keep_kl.iloc[0] == pytest.approx(0, abs=1e-6), d
        # promote: to the generic part's per-query scatter of the two logits (and log(1 + the other
        # keys' weight) >= 0); suppress: exact (the log self mass starts at its target + margin)
        assert cd.train_task_loss.iloc[0] == pytest.approx(start[d], abs=1.5 if d == "promote" else 1e-3), d
        assert cd.train_task_loss.iloc[-1] < math.log(2), d
        assert cd.train_loss.iloc[-1] < 0.5 * cd.train_loss.iloc[0], d
        held = cd.heldout_loss.dropna()
        assert held.iloc[-1] < 0.5 * held.iloc[0], d


def test_promote_makes_self_attention_dominant(run):
    orig, prom = _row(run, "original"), _row(run, "gradient promote")
    assert orig.mass_self_and_copies < 1e-3  # the planted head suppresses itself
    assert prom.mass_self_and_copies > 0.5  # held-out prompts, after 40 steps
    assert prom.category_median_rank < 5 < orig.category_median_rank  # own key near the top of the vocabulary
    trace = _row(run, "trace step (W_K += W_Q)")
    assert trace.mass_self_and_copies > 0.5  # the original's one-step baseline also promotes self


def test_suppress_lowers_self_attention_and_keeps_categories(run, run_without_kl):
    """The suppressing update lowers self-attention further, and its KL term (the shape of the
    non-self attention) is what keeps in-category attention: without it (--keep-weight 0) the
    cheapest way down is to send every query to BOS, and in-category mass vanishes.

    v3 asserted that the update kept 80% of the in-category mass. That held for v3's head, whose
    category partners (logit 12) held most of the non-self mass, so the KL term weighed them
    heavily. In v4 they hold a small share (~0.12 here; BOS ~0.75, unrelated words ~0.13), and
    self shares its category term (LOGIT_SAME_CATEGORY) with its partners: lowering the category term lowers
    self at a small KL cost, so the update keeps about half. The test now asserts the contrast the
    KL term is there for: far more in-category mass kept with it than without it, the same
    self-suppression asked of both, and a better (lower) semantic score."""
    orig, sup = _row(run, "original"), _row(run, "gradient suppress")
    nokl = _row(run_without_kl, "gradient suppress")
    assert _row(run_without_kl, "original").mass_in_category == pytest.approx(orig.mass_in_category, rel=1e-6)
    assert sup.mean_log_self_mass < orig.mean_log_self_mass - 5  # asked for 10 nats lower
    assert sup.mass_self_and_copies < orig.mass_self_and_copies
    assert nokl.mass_in_category < 0.1 * sup.mass_in_category  # without the KL term: everything to BOS
    assert sup.in_category_share_of_nonself > 10 * nokl.in_category_share_of_nonself
    assert sup.semantic_score < nokl.semantic_score
    assert sup.mass_in_category > 0.25 * orig.mass_in_category  # a part the KL term keeps (v4: ~half)


def test_eigen_steering_is_matched(run):
    for d in ("promote", "suppress"):
        g, e = _row(run, f"gradient {d}"), _row(run, f"eigen {d} (matched)")
        assert abs(g.mean_log_self_mass - e.mean_log_self_mass) < 0.05 * max(1.0, abs(g.mean_log_self_mass)), d
        assert (e.alpha < 1) == (d == "promote")
        # the flag is set, and says what was asked and what was reached (the rows' own numbers)
        assert str(e.alpha_matched) == "True", d
        assert e.match_target == pytest.approx(g.mean_log_self_mass, rel=1e-6), d
        assert e.match_achieved == pytest.approx(e.mean_log_self_mass, rel=1e-6), d
    assert pd.isna(_row(run, "original").alpha_matched)  # not an eigen variant
    s = json.loads((run / "summary.json").read_text())
    assert s["all_alphas_matched"] is True and len(s["eigen_matching"]) == 2


@pytest.fixture(scope="module")
def held_input(planted_model, truth):
    from common.head_qk import FactoredQK
    from common.head_replacement import layer_input
    from common.prompts import category_prompts

    layer, head = truth["target"]
    tokens = category_prompts(planted_model.tokenizer, 8, 10, seed=7, repeat_prob=0.3).tokens
    return FactoredQK.from_model(planted_model, layer, head), (layer_input(planted_model, tokens, layer, head), tokens)


def test_match_alpha_flags_an_unreachable_target(held_input):
    """A self-mass is at most 1, so a mean log self-mass above 0 is out of reach for any alpha
    (promote side), and so is one of -1e9 nats (suppress side, alpha up to 1 + 2^11): the furthest
    edit tried comes back flagged, never as a match. A reachable target is matched."""
    import gradient_steering as gs

    qk, held = held_input
    for target, furthest in ((0.5, 1 - 2 ** 11), (-1e9, 1 + 2 ** 11)):
        m = gs.match_alpha(qk, held, target)
        assert m.matched is False and m.target == target and m.alpha == furthest
        assert m.achieved <= 0 and abs(m.achieved - target) > 0.5
        assert m.row() == {"alpha_matched": False, "match_target": target, "match_achieved": m.achieved}
    start = gs.match_alpha(qk, held, 0.0).achieved  # any reachable value: halfway to no edit
    v1 = float(gs.log_self_mass(gs.edited_scores(qk, held[0]), held[1]).mean())  # the head as it is
    target = (start + v1) / 2
    m = gs.match_alpha(qk, held, target)
    assert m.matched and abs(m.achieved - target) <= gs.MATCH_TOL * max(1, abs(target))


def test_an_unmatched_alpha_is_flagged_in_the_csv_report_and_figures(tmp_path, monkeypatch, capsys, planted_model):
    """With every target moved out of reach, variants.csv, summary.json, the printed report and
    both figures that show the eigen variants say "NOT matched", with the value reached and the target."""
    import matplotlib.text

    import common.plotting
    import gradient_steering as gs
    from conftest import run_main

    real = gs.match_alpha
    monkeypatch.setattr(gs, "match_alpha", lambda qk, held, target, **kw: real(qk, held, 0.5, **kw))
    drawn = {}
    monkeypatch.setattr(common.plotting, "save_figure", lambda fig, path, weights: drawn.setdefault(
        path.name, " ".join(" ".join(t.get_text().split()) for t in fig.findobj(matplotlib.text.Text))) and path)
    run_main("gradient_steering.py", "--model", "planted", "--out", str(tmp_path), "--steps", "3", "--n-prompts", "8",
             "--n-heldout", "4", "--n-rank-queries", "5", "--threads", "1")
    v = pd.read_csv(tmp_path / "variants.csv").set_index("variant")
    for d in ("promote", "suppress"):
        e = v.loc[f"eigen {d} (matched)"]
        assert str(e.alpha_matched) == "False" and e.match_target == 0.5
        assert e.match_achieved == pytest.approx(e.mean_log_self_mass) and e.match_achieved < 0
        assert e.alpha == 1 - 2 ** 11
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["all_alphas_matched"] is False
    assert {k: m["matched"] for k, m in s["eigen_matching"].items()} == {
        "eigen promote (matched)": False, "eigen suppress (matched)": False}
    out = " ".join(capsys.readouterr().out.split())  # the report, rich's line wrapping undone
    assert out.count("NOT matched") == 4  # the alpha column of both rows, and a warning for each
    for d in ("promote", "suppress"):
        e = v.loc[f"eigen {d} (matched)"]
        assert (f"eigen {d} (matched) is NOT matched: no alpha reached the target held-out mean log self-mass "
                f"0.500; alpha -2047 (the furthest edit tried) reaches {e.match_achieved:.3f}") in out
    for fig in ("group_heatmaps.png", "self_rank.png"):
        assert drawn[fig].count("NOT matched") == 2, fig
        for d in ("promote", "suppress"):
            e = v.loc[f"eigen {d} (matched)"]
            assert (f"eigen {d}: NOT matched (alpha -2.05e+03 reaches mean log self-mass {e.match_achieved:.2f}, "
                    "target 0.50)") in drawn[fig], fig


def test_monday_top10(run, truth, tokenizer, planted_model):
    """" Monday"'s 10 top keys over the full vocabulary, against its scores recomputed here from
    the model's own W_Q, W_K, b_Q, b_K of the target and the layer's effective embeddings.

    Construction (typical in-context category query): a same-category key gets
    LOGIT_SAME_CATEGORY above an unrelated key, of which LOGIT_ANY_CATEGORY every category key
    gets; Monday's own key LOGIT_SELF net; the generic part adds random logits (std ~0.8 over the
    vocabulary's keys). Two things move one query's numbers off the design: the effective
    embeddings (one token in a mean context) have another LN scale than the calibration prompts,
    and each query's own generic part shifts its logits on every category key (over the 168
    category queries: same-category lift 7.8 +- 2.0, other categories 3.2, difference 4.6 +- 0.7;
    Monday: 4.2, 0.3, 3.9). v3 asserted Monday's lift within 1 of the design and the weekdays in
    the top 6; v4 asserts what the construction fixes for every category query: the
    category-specific term, weekdays over the other categories' words, to a logit of
    LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY or more (its scatter across queries is under a logit);
    weekdays above unrelated keys; their median rank in the top percent of the vocabulary,
    Monday's own key near the bottom, and the top 10 holds at least one weekday (chance: 10 x 6 /
    50257 ~ 0.001)."""
    import math

    from common.effective_embeddings import effective_embeddings
    from common.planted import LOGIT_ANY_CATEGORY, LOGIT_SAME_CATEGORY

    layer, head = truth["target"]
    top = pd.read_csv(run / "monday_top10.csv", keep_default_na=False)
    days = set(truth["categories"]["days"])
    monday = tokenizer.encode(" Monday")[0]
    orig = top[top.variant == "original"].sort_values("rank")
    assert len(orig) == 10
    m = planted_model
    E = effective_embeddings(m, layer)
    q = E[monday] @ m.W_Q[layer, head] + m.b_Q[layer, head]
    scores = (E @ m.W_K[layer, head] + m.b_K[layer, head]) @ q / math.sqrt(m.cfg.d_head)
    vals, ids = torch.topk(scores, 10)
    assert orig.token_id.tolist() == ids.tolist()
    assert orig.score.to_numpy() == pytest.approx(vals.numpy(), abs=1e-3)
    vocab = scores.numel()
    assert orig.query_self_rank.iloc[0] == int((scores > scores[monday]).sum())
    assert monday not in set(orig.token_id)  # self-suppression: never its own top key
    assert orig.query_self_rank.iloc[0] > 0.99 * vocab  # its own key is near the bottom of the vocabulary
    assert len(days & set(orig.token_id)) >= 1
    in_cat = {t for ids_ in truth["categories"].values() for t in ids_} | {m.tokenizer.bos_token_id}
    unrelated = torch.tensor([t for t in range(vocab) if t not in in_cat])
    others = torch.tensor(sorted(days - {monday}))
    lift = float(scores[others].mean() - scores[unrelated].mean())
    other_cats = torch.tensor(sorted(in_cat - days - {m.tokenizer.bos_token_id}))
    specific = lift - float(scores[other_cats].mean() - scores[unrelated].mean())
    assert specific > LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY - 1.0, specific
    assert lift > specific > 0  # Monday's lift to the other categories' words is positive too
    ranks = (scores[None, :] > scores[others][:, None]).sum(-1)
    assert float(ranks.float().median()) < 0.01 * vocab
    prom = top[top.variant == "gradient promote"].sort_values("rank")
    assert monday in set(prom.token_id) and prom.query_self_rank.iloc[0] < 10


def _model_scores(model, tokens, layer, head, dQ=None, dK=None):
    """The head's attention scores from the model's own forward pass (hook_attn_scores), with
    x dQ added to its queries and x dK to its keys (x: the LN1-normalised input): an edit of W_Q/W_K
    made inside the model, independent of common.head_replacement."""
    seen = {}

    def save_x(t, hook):
        seen["x"] = t

    def add(d):
        def fn(t, hook):
            t = t.clone()
            t[:, :, head] = t[:, :, head] + seen["x"] @ d
            return t
        return fn

    hooks = [(f"blocks.{layer}.ln1.hook_normalized", save_x)]
    if dQ is not None:
        hooks += [(f"blocks.{layer}.attn.hook_q", add(dQ)), (f"blocks.{layer}.attn.hook_k", add(dK))]
    hooks.append((f"blocks.{layer}.attn.hook_attn_scores", lambda t, hook: seen.__setitem__("s", t[:, head])))
    model.run_with_hooks(tokens, stop_at_layer=layer + 1, fwd_hooks=hooks)
    return seen["s"]


def test_weight_path_and_factored_path_match_the_model(planted_model, truth):
    """The scores gradient_steering trains through (head_replacement.qk_scores on W_Q + dW_Q,
    W_K + dW_K) and the factored-scorer path (eigen steering) both equal the model's own scores
    with the same edit made inside its forward pass."""
    import gradient_steering as gs
    from common.head_qk import FactoredQK
    from common.head_replacement import head_scores, layer_input
    from common.prompts import category_prompts

    layer, head = truth["target"]
    model = planted_model
    tokens = category_prompts(model.tokenizer, 4, 10, seed=5, repeat_prob=0.3).tokens
    x = layer_input(model, tokens, layer, head)
    g = torch.Generator().manual_seed(0)
    shape = (model.cfg.d_model, model.cfg.d_head)
    dQ, dK = 0.05 * torch.randn(shape, generator=g), 0.05 * torch.randn(shape, generator=g)
    qk = FactoredQK.from_model(model, layer, head)
    reference = _model_scores(model, tokens, layer, head, dQ, dK)
    a = gs.edited_scores(qk, x, dQ, dK)  # the training path
    b = head_scores(gs.weight_variant(qk, qk.W_Q + dQ, qk.W_K + dK).scorer, x)  # the factored path
    finite = torch.isfinite(reference)
    for s in (a, b):
        assert torch.equal(finite, torch.isfinite(s))
        assert torch.allclose(s[finite], reference[finite], atol=1e-3, rtol=1e-4)
    assert not torch.allclose(reference[finite], _model_scores(model, tokens, layer, head)[finite], atol=1e-3)  # the edit matters
    clean = _model_scores(model, tokens, layer, head)
    for s in (gs.edited_scores(qk, x), head_scores(qk.scorer(), x)):
        assert torch.allclose(s[finite], clean[finite], atol=1e-3)
    with torch.enable_grad():  # the training path is differentiable in the update
        d = torch.zeros(shape, requires_grad=True)
        gs.edited_scores(qk, x, d, d)[finite].sum().backward()
    assert d.grad is not None and float(d.grad.abs().sum()) > 0


def test_low_rank_update_and_trust_region():
    import gradient_steering as gs

    upd = gs.Update(64, 8, rank=2, seed=0)
    dQ, dK = upd.deltas()
    assert dQ.shape == (64, 8) and float(dQ.abs().max()) == 0.0  # exact start
    with torch.no_grad():
        upd.bQ.fill_(1.0)
        upd.bK.fill_(1.0)
    upd.project(0.5, 0.25)
    dQ, dK = upd.deltas()
    assert float(dQ.norm()) == pytest.approx(0.5, rel=1e-5)
    assert float(dK.norm()) == pytest.approx(0.25, rel=1e-5)
    assert torch.linalg.matrix_rank(dQ) <= 2


def test_help(capsys):
    from gradient_steering import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--lr", "--steps", "--rank", "--direction", "--max-edit", "--keep-weight"):
        assert flag in out


@pytest.mark.parametrize("args, message", [
    (["--head", "99"], "out of range"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--direction", "sideways"], "invalid choice"),
    (["--rank", "999"], "exceeds d_head"),
    (["--query-word", "Mondayish"], "--query-word"),
    (["--out", "/proc/x"], "not writable"),
])
def test_bad_input(tmp_path, capsys, args, message):
    from gradient_steering import main

    check_bad_input(main, tmp_path, capsys, args, message)


def test_in_context_self_ranks(run):
    """in_context.csv: the category words' median self-rank on their true layer inputs in the
    demo text. Planted: never the top key before the update (self logit -6 against +12)."""
    from common.context_inputs import EFFECTIVE, IN_CONTEXT
    from gradient_steering import check_gradient_steering

    t = pd.read_csv(run / "in_context.csv").set_index(["statistic", "inputs"])
    orig = t.loc[("median self-rank of category words, original", IN_CONTEXT)]
    assert orig.n_tokens >= 100 and orig.value > 100
    r = pd.read_csv(run / "self_ranks.csv")
    eff = r[(r.variant == "original") & (r.kind == "category")]["rank"].median()
    assert t.loc[("median self-rank of category words, original", EFFECTIVE)].value == eff
    assert ("median self-rank of category words, gradient promote", IN_CONTEXT) in t.index
    assert "in_context" in check_gradient_steering(run).numbers
