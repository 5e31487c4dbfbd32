"""component_ablation.py on the planted model: where L1H5's category signal comes from, and
whether the head ignores position (ground truth: common.planted)."""

import json
import pandas as pd
import pytest
import torch

from conftest import check_bad_input
from script_run import run_then_render

SCRIPT = "component_ablation.py"
FIGURES = ("ablation_boxplot.png", "ablation_heads.png", "position_independence.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_model):
    out = tmp_path_factory.mktemp("component_ablation")
    drawn = run_then_render(SCRIPT, out, "--model", "planted", "--n-prompts", "128", "--seq-len", "10",
                            "--n-reference", "16", "--batch-size", "128", "--threads", "1")
    return out, drawn


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


@pytest.fixture(scope="module")
def ours(tmp_path_factory, planted_model):
    """The script at its default protocol ("ours": 256 prompts of 20 words, 64 reference prompts),
    where the component-ablation claim is judged. The small run above (10-word prompts) has a
    smaller embedding signal: a position-only head's score grows with the number of earlier words."""
    from conftest import run_main

    out = tmp_path_factory.mktemp("component_ablation_ours")
    run_main(SCRIPT, "--model", "planted", "--batch-size", "128", "--threads", "1", "--out", str(out))
    return out


def _mean(summary, ablation, method, head):
    row = summary[(summary.ablation == ablation) & (summary.method == method) & (summary["head"] == head)]
    assert len(row) == 1, (ablation, method, head)
    return float(row["mean"].iloc[0])


def test_outputs_complete(run):
    for f in ("scores.csv", "summary.csv", "position_independence.csv", "position_example.csv",
              "position_pairs.csv", *FIGURES, "summary.json", "meta.json"):
        assert (run / f).stat().st_size > 0, f
    meta = json.loads((run / "meta.json").read_text())
    assert "non-BOS positions of 16 reference prompts" in meta["mean_ablation_data"]
    scores = pd.read_csv(run / "scores.csv")
    # 128 prompts x 8 heads x (clean + 4 components x 2 methods + MLP0-only)
    assert len(scores) == 128 * 8 * 10
    assert scores.score.notna().all()
    assert not list(run.glob(".*"))  # no temporary files left behind


def test_figure_data_agree_with_the_table(run, truth):
    """The saved figure data (first prompt, every visible pair) are the target head's pairs that
    position_independence.csv summarises."""
    _, h = truth["target"]
    pos = pd.read_csv(run / "position_independence.csv")
    pairs = pd.read_csv(run / "position_pairs.csv")
    example = pd.read_csv(run / "position_example.csv")
    for variant in ("shuffled", "shifted", "padded"):
        row = pos[(pos.variant == variant) & (pos["head"] == h)].iloc[0]
        p = pairs[pairs.variant == variant]
        assert p.n_pairs.sum() == row.n_pairs, variant
        assert (p.rearranged - p.clean).abs().max() == pytest.approx(row.max_abs_diff, abs=1e-3), variant
    n = 11  # BOS + --seq-len 10
    assert len(example) == n * n
    clean = example.pivot(index="query", columns="key", values="clean").to_numpy()
    assert pd.isna(clean[0, 1]) and not pd.isna(clean[1, 0])  # causal: upper triangle not visible
    assert clean[~pd.isna(clean)].reshape(-1).size == n * (n + 1) // 2
    assert abs(pd.DataFrame(clean).sum(1) - 1).max() < 1e-5  # each query's attention sums to 1


def test_render_draws_every_figure_from_saved_files(runs):
    """render(out_dir) drew every figure into a folder that held only the saved results."""
    out, drawn = runs
    assert sorted(p.name for p in drawn) == sorted(FIGURES)
    for f in FIGURES:
        assert (out / f).stat().st_size > 0, f


def _category_blind_floor(tokens, mask) -> float:
    """The lowest semantic score a head that cannot tell categories apart reaches on these prompts
    (computed from the prompts alone, not by the script). Such a head's pattern on a query depends
    only on its position (and, at most, on which earlier keys are copies of it): the cost is convex
    and symmetric in the earlier non-copy words, so its best choice spreads the word mass evenly
    over them, and puts on BOS, per position, the share of that position's queries whose only
    allowed key is BOS (the minimiser of the binary cross-entropy). Its score is then that share's
    entropy (mean over positions) plus -log(n_allowed / n_earlier_non_copy_words) over the
    in-category queries."""
    n = tokens.shape[1]
    keys = torch.ones(n, n, dtype=torch.bool).tril(-1)[None] & (tokens[:, :, None] != tokens[:, None, :])
    keys[:, :, 0] = False
    bos_only = mask[:, :, 0] & (mask.sum(-1) == 1)
    n_allowed = mask[:, :, 1:].sum(-1).float().clamp_min(1)
    words = torch.where(bos_only, torch.zeros(()), -torch.log(n_allowed / keys.sum(-1).float().clamp_min(1)))
    p = bos_only.float().mean(0)
    entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    return float(entropy[1:].mean() + words[:, 1:].mean())


def _row(summary, ablation, method, head):
    row = summary[(summary.ablation == ablation) & (summary.method == method) & (summary["head"] == head)]
    assert len(row) == 1, (ablation, method, head)
    return row.iloc[0]


def test_embedding_and_mlp0_carry_the_signal(run, truth, tokenizer, planted_model):
    """Construction (common.planted): L1H5 reads the category from MLP0's output C (written from
    the token embedding's category key) and token identity from the embedding's codes; it reads
    neither position nor layer-0 attention. Mean-ablating the token embedding makes every word the
    same vector, so everything up to L1H5 depends on position only: the head cannot do better than
    the category-blind floor F of the prompts (_category_blind_floor, computed here from the mask
    alone); resampling draws tokens independent of the prompt, so it stays above F on average.
    Mean- or resample-ablating MLP0 removes C (the head keeps identity, which the floor allows
    for). With MLP0's output alone as its input the head loses the identity codes and the BOS cue
    (LOGIT_BOS lives in the embedding), so BOS-only queries lose BOS. Each ablation is therefore
    asserted above F and with its CI above clean's (the claim's planted criterion, common/claims).

    That the clean head reads the categories is checked on its word mass, not its score. v4's
    clean score (~1.07 on these 10-word prompts) is *above* F (~0.80): F spends the optimal BOS
    share on each position (78% of these queries are BOS-only), while v4's head, by design, gives a
    partnerless query only part of its mass on BOS (the other categories' words take the rest
    through LOGIT_ANY_CATEGORY), so "clean below F", asserted for v3's near-perfect head, is a
    BOS-calibration threshold, not the category signal. The signal: a query with partners splits
    its earlier-word mass (non-BOS, non-copy keys) between partners and the other words. A
    category-blind head splits it evenly: cost -log(n_allowed / n_keys) (mean ~1.5 here). The
    designed logits give each partner exp(LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY) times an
    other-category word's weight: cost ~0.23 here; the generic random part blurs that. Asserted:
    the clean head's cost (an independent forward pass on the script's prompts, ~0.39) is below
    the midpoint of designed and blind, and below every other head of the layer (~1.65 or more)."""
    import numpy as np

    import common.planted as P
    from common.metrics import all_head_patterns
    from common.prompts import category_prompts

    s = pd.read_csv(run / "summary.csv")
    layer, h = truth["target"]
    args = json.loads((run / "meta.json").read_text())["args"]
    batch = category_prompts(tokenizer, args["n_prompts"], args["seq_len"], args["seed"],
                             repeat_prob=args["repeat_prob"])
    floor = _category_blind_floor(batch.tokens, batch.mask)
    clean = _row(s, "clean", "-", h)
    for ablation in ("token embedding", "layer-0 MLP"):
        for method in ("mean", "resample"):
            r = _row(s, ablation, method, h)
            assert r["mean"] - r.ci95 > max(floor, clean["mean"] + clean.ci95), (ablation, method)
    only = _row(s, "MLP0 output only", "replace", h)
    assert only["mean"] - only.ci95 > max(floor, clean["mean"] + clean.ci95)  # identity codes and BOS cue live in the embedding

    t, mask = batch.tokens, batch.mask
    n = t.shape[1]
    keys = torch.ones(n, n, dtype=torch.bool).tril(-1)[None] & (t[:, :, None] != t[:, None, :])
    keys[:, :, 0] = False  # earlier words that are not copies of the query
    allowed = mask.clone()
    allowed[:, :, 0] = False  # the query's partners
    partnered = allowed.any(-1)
    n_allowed, n_keys = allowed.sum(-1).float(), keys.sum(-1).float()
    blind = float(-torch.log(n_allowed / n_keys)[partnered].mean())
    odds = float(np.exp(P.LOGIT_SAME_CATEGORY - P.LOGIT_ANY_CATEGORY))
    designed = float(-torch.log(odds * n_allowed / (odds * n_allowed + n_keys - n_allowed))[partnered].mean())
    pat = all_head_patterns(planted_model, t, layers=[layer])[0]
    cost = [float(-torch.log((p * allowed).sum(-1) / (p * keys).sum(-1))[partnered].mean()) for p in pat]
    assert designed < 0.5 * blind  # the construction separates partners from the other words
    assert cost[h] < (designed + blind) / 2, (cost[h], designed, blind)
    assert all(cost[h] < c for g, c in enumerate(cost) if g != h), cost


def test_position_and_layer0_attention_do_not(run, ours, truth):
    """The post: ablating the positional embedding or layer-0 attention leaves L1H5's score "about
    unchanged" (gpt2-small: 0.66, while the token embedding takes it to 2.1); the claim reads that
    as a change under KEEPS_SHARE (a tenth) of the token embedding's change.

    Construction (common.planted): L1H5's W_Q, W_K are orthogonal to the positional block P and
    to layer-0 attention's output block A, and MLP0's category neurons read only the token's K
    coordinate. Position and layer-0 attention therefore reach L1H5 only through LayerNorm's
    scale (LN1, and MLP0's LN2, which sets the size of the category coordinate C the head reads);
    test_position_reaches_the_target_only_through_layernorm_scale checks that. For the script's
    numbers this means:

    * resample ablation draws another position's vector, of the same norm (every planted position
      has norm 1.48), so the residual's scale stays put and only MLP0's generic neurons (output
      weights 0.02) still carry position -- the route the LN-frozen test bounds at 1%: within 2%
      of clean, on the small run;
    * mean ablation replaces every position by the mean over the reference positions, which is
      shorter (the fast pairs average out: planted |mean of positions 1..10| 1.38 against 1.48 per
      position), so the residual shrinks and LN scales the logits: the score moves by a share of
      the *clean* score (v4: ~10% of it on both runs), not of the signal. The claim's bound (a
      tenth of the token embedding's change) is asserted where the claim is judged, the default
      protocol (``ours``: 20-word prompts; v4: positions ~7%, layer-0 attention ~2% of the
      embedding change; the claim reads "planted: holds"). On the small run's 10-word prompts the
      embedding change is smaller (a position-only head's score grows with the number of earlier
      words: 0.65 there against 1.6), and the same LN shift is ~18% of it; there the test asserts
      only that layer-0 attention's mean ablation stays within the tenth. The positional twin moves
      by far more than a tenth (tests/test_twin_verdicts.py).
    """
    from component_ablation import KEEPS_SHARE, check_component_ablation

    s = pd.read_csv(run / "summary.csv")
    _, h = truth["target"]
    _, hp = truth["positional_head"]
    clean = _mean(s, "clean", "-", h)
    signal = _mean(s, "token embedding", "mean", h) - clean
    assert signal > 0.5 * clean  # the claim's "breaks": 1.5x clean or more
    for ablation in ("positional embedding", "layer-0 attention"):
        assert abs(_mean(s, ablation, "resample", h) / clean - 1) < 0.02, ablation
    assert abs(_mean(s, "layer-0 attention", "mean", h) - clean) < KEEPS_SHARE * signal
    # the previous-token head, which reads only position, moves far more under the same ablation
    pos_clean = _mean(s, "clean", "-", hp)
    assert abs(_mean(s, "positional embedding", "mean", hp) / pos_clean - 1) > 0.5

    d = pd.read_csv(ours / "summary.csv")
    clean = _mean(d, "clean", "-", h)
    signal = _mean(d, "token embedding", "mean", h) - clean
    assert signal > 0.5 * clean
    for ablation in ("positional embedding", "layer-0 attention"):
        for method in ("mean", "resample"):
            assert abs(_mean(d, ablation, method, h) - clean) < KEEPS_SHARE * signal, (ablation, method)
    assert check_component_ablation(ours).holds  # the claim's own check: "planted: holds"


def test_position_reaches_the_target_only_through_layernorm_scale(run, planted_model, truth):
    """With every LayerNorm scale before L1H5 held at its clean value, mean-ablating the
    positional embedding or layer-0 attention leaves L1H5's score unchanged (construction: the
    head reads neither P nor A; what is left is MLP0's generic neurons, output weights 0.02,
    reading P), while the positional head still moves. Without the freeze the same hooks
    reproduce the script's mean-ablation numbers: the script's shift (v4: ~10% of clean) is LN scale alone."""
    from common.ablation import COMPONENTS, collect_activations, mean_ablation_hooks
    from common.metrics import all_head_patterns, semantic_score
    from common.prompts import category_prompts

    args = json.loads((run / "meta.json").read_text())["args"]
    tok = planted_model.tokenizer
    layer, h = truth["target"]
    _, hp = truth["positional_head"]
    # the script's prompts and reference batch (its documented seeds)
    batch = category_prompts(tok, args["n_prompts"], args["seq_len"], args["seed"], repeat_prob=args["repeat_prob"])
    ref = category_prompts(tok, args["n_reference"], args["seq_len"], args["seed"] + 1, repeat_prob=args["repeat_prob"])
    means = mean_ablation_hooks(collect_activations(planted_model, ref.tokens, COMPONENTS.values()))
    # LN1 and LN2 of layers 0 .. layer-1, and LN1 of the target's layer
    scale_names = [f"blocks.{l}.{ln}.hook_scale" for l in range(layer) for ln in ("ln1", "ln2")]
    scale_names.append(f"blocks.{layer}.ln1.hook_scale")
    clean_scale = {}

    def save(t, hook):
        clean_scale[hook.name] = t.clone()

    def frozen(t, hook):
        return clean_scale[hook.name]

    def score(hooks):
        pat = all_head_patterns(planted_model, batch.tokens, layers=[layer], hooks=hooks)[0]
        return semantic_score(pat, batch.mask).mean(-1)

    clean = score([(n, save) for n in scale_names])
    assert set(clean_scale) == set(scale_names)
    summary = pd.read_csv(run / "summary.csv")
    assert float(clean[h]) == pytest.approx(_mean(summary, "clean", "-", h), rel=1e-4)
    for ablation in ("positional embedding", "layer-0 attention"):
        hooks = means[COMPONENTS[ablation]]
        free = score(hooks)
        assert float(free[h]) == pytest.approx(_mean(summary, ablation, "mean", h), rel=1e-4)
        fixed = score(hooks + [(n, frozen) for n in scale_names])
        assert abs(float(fixed[h] / clean[h]) - 1) < 0.01, ablation
        if ablation == "positional embedding":
            assert abs(float(fixed[hp] / clean[hp]) - 1) > 0.5


def test_token_pair_pattern_is_position_independent(run, truth):
    """Construction: L1H5's W_Q, W_K are orthogonal to the positional block P (and to layer-0
    attention's A), so position reaches its pattern only through LN scale and MLP0's generic
    neurons (which read P and write the generic block that the head's generic random part reads).
    v3's generic part was tiny, and the test asked r > 0.999 and mean |difference| < 0.005; v4's
    is six times larger (TARGET_GENERIC_COLUMN 0.5 against 0.08), and the shifted variant gives
    r ~0.9988, mean |difference| ~0.006. Asserted now: the claim's own bar (r >= POSITION_R_GOOD,
    "reproduced") under every variant, and the contrast with the generic heads of the same layer,
    which read P directly: the target's 1 - r under a tenth of every generic head's (v4: ~1/80)
    and its mean |difference| under a fifth of theirs (v4: ~1/7)."""
    from component_ablation import POSITION_R_GOOD

    p = pd.read_csv(run / "position_independence.csv").set_index(["variant", "head"])
    _, h = truth["target"]
    _, hp = truth["positional_head"]
    for variant in ("shuffled", "shifted", "padded"):
        target = p.loc[(variant, h)]
        assert target.pearson_r >= POSITION_R_GOOD, variant
        generic = p.loc[variant].drop(index=[h, hp])
        assert len(generic) == 6
        assert (1 - target.pearson_r) < 0.1 * (1 - generic.pearson_r).min(), variant
        assert target.mean_abs_diff < 0.2 * generic.mean_abs_diff.min(), variant
    shuffled_pos = p.loc[("shuffled", hp)]
    assert shuffled_pos.pearson_r < 0.5 and shuffled_pos.mean_abs_diff > 0.05


def test_position_variants_move_the_heads_that_read_position(run, truth):
    """Negative controls for the shifted and padded variants (a no-op rearrangement would leave
    every head unchanged, and the target's test above would still pass).

    * shifted: the positional head (1, 0) attends to the previous position (planted logit 16 on
      a relative offset of 1). Shifting the words' positions by --shift keeps the offsets between
      words but not the first word's offset to BOS (1 becomes 1 + shift), so that word's query
      moves its whole attention off BOS: max |difference| ~ 1, and its two visible pairs (BOS,
      itself) move by ~1 each, so the mean |difference| over the n_pairs pairs is at least
      ~2 n_prompts / n_pairs (0.031; measured 0.034). The target's change is spread thinly over
      every pair instead (v4: mean 0.006, see the test above), so the contrast is asserted in the
      claim's own metric: the positional head's 1 - r more than ten times the target's (v4: ~100x;
      v3 asserted 10x in mean |difference|, which v4's larger generic part brings to ~5x).
    * padded: --pad filler tokens between BOS and the words. The first word's previous token is
      now a filler, so the previous-token head moves its first word's whole attention off BOS
      onto it (BOS mass ~0, pad mass ~1/seq-len).
    * the old left-padding with <|endoftext|> (the BOS-padded diagnostic) moves BOS and every word
      together, so every relative offset -- all the previous-token head reads -- is kept (planted
      positions: the fast pairs rotate uniformly, the slow pair too up to position 48): the
      positional head stays unchanged there, which checks that that arrangement keeps BOS and the
      words contiguous and in order.
    What both position variants change is absolute position, which the generic heads of the layer
    read (their random W_Q, W_K span the whole residual, the positional block included): each of
    them moves, under both variants, by far more than the target (1 - r more than ten times the
    target's: v4 ~80x and more).
    """
    p = pd.read_csv(run / "position_independence.csv").set_index(["variant", "head"])
    _, h = truth["target"]
    _, hp = truth["positional_head"]
    target = {v: p.loc[(v, h)] for v in ("shifted", "padded")}
    shifted = p.loc[("shifted", hp)]
    assert shifted.max_abs_diff > 0.9
    n_prompts = json.loads((run / "meta.json").read_text())["args"]["n_prompts"]
    assert shifted.mean_abs_diff > 0.9 * 2 * n_prompts / shifted.n_pairs
    assert 1 - shifted.pearson_r > 10 * (1 - target["shifted"].pearson_r)
    padded = p.loc[("padded", hp)]
    assert padded.bos_mass_clean > 0.05 and padded.bos_mass < 0.01 * padded.bos_mass_clean
    n_words = 10  # --seq-len: the first of the word queries attends to the filler before it
    assert padded.pad_mass == pytest.approx(1 / n_words, abs=0.01)
    diag = pd.read_csv(run / "position_bos_padded.csv").set_index("head")
    assert diag.loc[hp].pearson_r > 0.999
    generic = [g for g in p.loc["padded"].index if g not in (h, hp)]
    assert len(generic) == 6
    for variant in ("shifted", "padded"):
        for g in generic:
            row = p.loc[(variant, g)]
            assert row.pearson_r < 0.95 and 1 - row.pearson_r > 10 * (1 - target[variant].pearson_r), (variant, g)


def test_padded_variant_keeps_bos_at_position_zero(run, planted_model, truth):
    """The padded variant puts --pad filler tokens (not BOS) between BOS and the words: BOS keeps
    position 0 and its role (rule 3; planted: a token-based BOS logit LOGIT_BOS, which a filler, in
    no category, lacks). The head reads no position, so the fillers change no other key's designed
    logit: they add their own weight to the softmax's denominator, which scales every other key's
    mass -- BOS's included -- by (1 - pad_mass): bos_mass = bos_mass_clean (1 - pad_mass). The
    fillers also feed layer 0 and MLP0's generic neurons, whose output the head's generic part
    reads (v4: TARGET_GENERIC_COLUMN 0.5), so the BOS share of the non-filler mass moves a little
    too (v4: ~6%; v3, with a tiny generic part, moved <1%, and its check was "to 0.02" absolute):
    asserted within a tenth of bos_mass_clean. Each filler carries only the head's generic logits
    and not BOS's, so it gets under a tenth of BOS's mass. The old left-padding with
    <|endoftext|> (the BOS-padded diagnostic) puts --pad more BOS tokens in front of the real one,
    which take most of that mass.

    Rule 3 itself (v3 asserted BOS mass > 0.5 over all word queries; v4 ~0.45 on these prompts,
    where a partnerless query's other-category words take part of its mass through
    LOGIT_ANY_CATEGORY): the target's word queries put more on BOS than any other head of the
    layer, and its BOS-only queries put at least twice as much on BOS as its queries with partners
    (v4: 0.52 against 0.18; partners get LOGIT_SAME_CATEGORY > LOGIT_BOS).
    The clean and padded BOS masses are recomputed here from forward passes on prompts built by
    hand (the script's documented seeds), to 1e-4 (float32 round-off of other batch shapes)."""
    from common.metrics import all_head_patterns
    from common.prompts import category_prompts

    args = json.loads((run / "meta.json").read_text())["args"]
    assert args["pad_word"] == " the" and args["pad"] == 8
    layer, h = truth["target"]
    tok = planted_model.tokenizer
    batch = category_prompts(tok, args["n_prompts"], args["seq_len"], args["seed"], repeat_prob=args["repeat_prob"])
    the = tok.encode(" the", add_special_tokens=False)[0]
    t = batch.tokens
    padded = torch.cat([t[:, :1], torch.full((len(t), args["pad"]), the), t[:, 1:]], 1)
    clean_all = all_head_patterns(planted_model, t, layers=[layer])[0]
    clean_pat = clean_all[h]
    pad_pat = all_head_patterns(planted_model, padded, layers=[layer])[0][h]
    words = torch.arange(1, t.shape[1]) + args["pad"]  # the word queries' new positions
    want_clean = float(clean_pat[:, 1:, 0].mean())
    want_bos = float(pad_pat[:, words, 0].mean())
    want_pads = float(pad_pat[:, words, 1 : 1 + args["pad"]].sum(-1).mean())

    row = pd.read_csv(run / "position_independence.csv").set_index(["variant", "head"]).loc[("padded", h)]
    assert row.bos_mass_clean == pytest.approx(want_clean, abs=1e-4)
    assert row.bos_mass == pytest.approx(want_bos, abs=1e-4) and row.pad_mass == pytest.approx(want_pads, abs=1e-4)
    # rule 3: the planted head sends the queries with no partner to BOS
    word_bos = clean_all[:, :, 1:, 0].mean((-1, -2))
    assert all(want_clean > float(b) for g, b in enumerate(word_bos) if g != h), word_bos
    bos_only = batch.mask[:, :, 0] & (batch.mask.sum(-1) == 1)
    partnered = batch.mask[:, :, 1:].any(-1)
    bos_only[:, 0] = partnered[:, 0] = False
    assert float(clean_pat[bos_only][:, 0].mean()) > 2 * float(clean_pat[partnered][:, 0].mean())
    assert row.bos_mass / (1 - row.pad_mass) == pytest.approx(row.bos_mass_clean, rel=0.1)
    assert row.pad_mass / args["pad"] < 0.1 * row.bos_mass  # a filler is not BOS
    diag = pd.read_csv(run / "position_bos_padded.csv").set_index("head").loc[h]
    assert diag.variant == "BOS-padded (BOS moved)" and diag.bos_mass_clean == pytest.approx(want_clean, abs=1e-4)
    assert diag.bos_mass < 0.5 * diag.bos_mass_clean and diag.pad_mass > 0.5
    # the diagnostic is not a position variant: the claim's table holds only the three
    pos = pd.read_csv(run / "position_independence.csv")
    assert sorted(set(pos.variant)) == ["padded", "shifted", "shuffled"]


def test_rearrange_maps_positions_back():
    from component_ablation import rearrange

    tokens = torch.tensor([[50256, 11, 12, 13, 14, 15], [50256, 21, 22, 23, 24, 25]])
    w_pos = torch.zeros(16, 4)
    from component_ablation import BOS_PADDED

    for variant in ("shuffled", "padded", "shifted", BOS_PADDED):
        new, pos_map, _ = rearrange(tokens, variant, seed=3, shift=2, pad=3, pad_token=262, w_pos=w_pos)
        assert torch.equal(torch.gather(new, 1, pos_map), tokens), variant
        assert (pos_map[:, 0] == pos_map[:, 0].min()).all()  # BOS stays first among the real tokens
    new, pos_map, _ = rearrange(tokens, "padded", seed=3, shift=2, pad=3, pad_token=262, w_pos=w_pos)
    assert new[0].tolist() == [50256, 262, 262, 262, 11, 12, 13, 14, 15]  # BOS at 0, fillers, the words
    assert (pos_map[:, 0] == 0).all()
    new, _, _ = rearrange(tokens, BOS_PADDED, seed=3, shift=2, pad=3, pad_token=50256, w_pos=w_pos)
    assert new[0].tolist() == [50256] * 4 + [11, 12, 13, 14, 15]  # the old arrangement: pads first
    with pytest.raises(SystemExit, match="exceeds the context"):
        rearrange(tokens, "shifted", 0, shift=12, pad=0, pad_token=50256, w_pos=w_pos)


def test_ablation_hooks(planted_model):
    from common.ablation import collect_activations, keep_only_hooks, mean_ablation_hooks, resample_ablation_hooks

    model = planted_model
    ref = torch.randint(0, 50000, (4, 7))
    ref[:, 0] = 50256
    acts = collect_activations(model, ref, ["hook_embed", "blocks.0.hook_mlp_out"])
    tokens = torch.randint(0, 50000, (2, 5))
    tokens[:, 0] = 50256
    seen = {}

    def grab(t, hook):
        seen[hook.name] = t.clone()

    (name, fn), = mean_ablation_hooks(acts)["hook_embed"]
    model.run_with_hooks(tokens, stop_at_layer=1, fwd_hooks=[(name, fn), ("blocks.0.hook_resid_pre", grab)])
    emb = seen["blocks.0.hook_resid_pre"] - model.W_pos[:5]
    ref_mean = acts["hook_embed"][:, 1:].reshape(-1, model.cfg.d_model).mean(0)
    assert torch.allclose(emb[:, 1:], ref_mean.expand(2, 4, -1), atol=1e-5)
    assert torch.allclose(emb[:, 0], model.W_E[50256].expand(2, -1), atol=1e-5)  # BOS untouched

    (name, fn), = resample_ablation_hooks(acts, seed=1)["hook_embed"]
    model.run_with_hooks(tokens, stop_at_layer=1, fwd_hooks=[(name, fn), ("blocks.0.hook_resid_pre", grab)])
    emb = (seen["blocks.0.hook_resid_pre"] - model.W_pos[:5])[:, 1:].reshape(-1, model.cfg.d_model)
    pool = acts["hook_embed"][:, 1:].reshape(-1, model.cfg.d_model)
    assert (torch.cdist(emb, pool).min(1).values < 1e-4).all()  # every value is a reference vector

    keep = keep_only_hooks("blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre")
    grabs = [("blocks.0.hook_mlp_out", grab), ("blocks.1.hook_resid_pre", grab)]
    model.run_with_hooks(tokens, stop_at_layer=2, fwd_hooks=keep + grabs)
    assert torch.allclose(seen["blocks.1.hook_resid_pre"][:, 1:], seen["blocks.0.hook_mlp_out"][:, 1:])


def test_help(capsys):
    from component_ablation import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--n-reference" in out and "--ablate-bos" in out


@pytest.mark.parametrize("args, message", [
    (["--head", "99"], "out of range"),
    (["--out", "/proc/x"], "not writable"),
    (["--n-prompts", "1"], "--n-prompts"),
    (["--shift", "-1"], "non-negative"),
    (["--layer", "0", "--head", "5"], "--layer must be >= 1"),
    (["--seq-len", "300"], "exceeds the model's context"),
    (["--pad-word", " red"], "category word"),
    (["--pad-word", "<|endoftext|>"], "is BOS"),
    (["--pad-word", " Redistribution"], "not one"),
])
def test_bad_input(tmp_path, capsys, args, message):
    from component_ablation import main

    check_bad_input(main, tmp_path, capsys, args, message)
