"""semantic_head.py on the planted model with a tiny SAE in sae_lens format.

The SAE's decoder rows are known directions of the planted residual stream: one identity feature
per category word (that word's effective embedding), one feature per category (the mean of its
words) and random directions. By construction L1H5 must map each word feature to the features of
its own category, score every word feature lowest against itself, and differ from naive cosine
attention mainly by not attending to itself.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_main

from common import planted as P

N_RANDOM = 48
FIGURES = ("group_feature_qk.png", "self_suppression.png", "naive_vs_head.png")


def build_planted_sae(model, truth, path):
    from common.effective_embeddings import effective_embeddings
    from common.sae import build_planted_sae as build

    sae, kind, cat_of = build(model, truth["categories"], n_random=N_RANDOM)
    # the layout the assertions rely on, checked independently of the builder
    words = [t for ids in truth["categories"].values() for t in ids]
    E = effective_embeddings(model, 1)[torch.tensor(words)]
    assert torch.allclose(sae.W_dec[: len(words)], E / E.norm(dim=1, keepdim=True), atol=1e-5)
    assert kind.count("word") == len(words) and kind.count("random") == N_RANDOM
    sae.save_model(str(path))
    return words, kind, cat_of


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory, planted_model, truth):
    tmp = tmp_path_factory.mktemp("semantic_head")
    words, kind, cat_of = build_planted_sae(planted_model, truth, tmp / "sae")
    out = tmp / "out"
    run_main("semantic_head.py", "--model", "planted", "--sae-path", str(tmp / "sae"), "--out", str(out),
             "--n-prompts", "48", "--seq-len", "32")
    return out, words, kind, cat_of, tmp / "sae"


def test_outputs(sae_run):
    out = sae_run[0]
    for f in ("feature_qk.csv", "feature_top_keys.csv", "self_suppression.csv", "group_feature_qk.csv",
              "group_feature_qk.png", "self_suppression.png", "naive_vs_head.csv", "naive_vs_head.png",
              "naive_example.csv", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    assert not list(out.glob(".*"))


def test_features_attend_to_their_category(sae_run, planted_model, truth):
    """A word feature's top keys among the features that carry a category (word and category
    features) are its own category's. By construction (common.planted, final v4) a category query
    gives a same-category word SAME = 5.5, every other category's word ANY = 2.75 (the any-category
    term), except the word in its own slot of each other category (the shared identity codes U_j,
    V_j): ANY + SELF - SAME = -8.75; a key with no category (the SAE's random directions) about 0.
    On top of that the generic part scores word pairs with a spread of a few logits. The demo SAE's
    random directions carry no category and reach the top lists through the generic part alone,
    so they are left out of the share. (v3, generic part 0.08 and same-category logit 12: >= 95%
    of the top-5 same-category and every score > 5.)"""
    out, words, kind, cat_of, _ = sae_run
    top = pd.read_csv(out / "feature_top_keys.csv")
    top = top[top["query_feature"] < len(words)]
    # the listed scores are the head's bilinear map, recomputed here with plain torch (as in
    # test_self_suppression_hits_word_features) over every SAE feature
    from sae_lens import SAE

    layer, head = truth["target"]
    D = SAE.load_from_disk(str(sae_run[4])).W_dec.detach().float()
    x = D / ((D**2).mean(-1, keepdim=True) + planted_model.cfg.eps).sqrt()
    S = ((x @ planted_model.W_Q[layer, head]) @ (x @ planted_model.W_K[layer, head]).T
         / planted_model.cfg.d_head**0.5).numpy()
    assert abs(S[top["query_feature"], top["key_feature"]] - top["score"].to_numpy()).max() < 1e-3
    has_cat = [kind[k] != "random" for k in top["key_feature"]]
    first = top[has_cat].sort_values(["query_feature", "rank"]).groupby("query_feature").head(5)
    same = [cat_of[q] == cat_of[k] for q, k in zip(first["query_feature"], first["key_feature"])]
    # chance: a query's category holds about 12 of the 176 word and category features (7%)
    assert sum(same) / len(same) >= 0.8  # measured 0.89
    # the margin behind it, on the full map. Designed per word (the logits above, with truth's
    # category sizes): its same-category words against the other categories' words SAME - (mean of
    # ANY and the partners' ANY + SELF - SAME) = 3.71 on average; against the random directions
    # SAME = 5.5. The generic part has no category structure on average (and the effective-embedding
    # inputs carry the planted coordinates a little larger than in context): every word's margin
    # positive (measured min 2.9), the means at least the design (measured 4.54 and 5.97), and the
    # other categories above the random directions (the any-category term: measured 1.43 of the
    # designed 1.79). (The intermediate tuning, no any-category term: margin > SAME.)
    n = len(words)
    cats = np.array(cat_of[:n])
    slots = np.array([ids.index(t) for t in words for ids in truth["categories"].values() if t in ids])
    design = np.where(cats[:, None] == cats[None, :], P.LOGIT_SAME_CATEGORY, P.LOGIT_ANY_CATEGORY) + np.where(
        slots[:, None] == slots[None, :], P.LOGIT_SELF - P.LOGIT_SAME_CATEGORY, 0.0)
    W = S[:n, :n]
    rnd = [i for i, k in enumerate(kind) if k == "random"]
    same_cat = (cats[:, None] == cats[None, :]) & ~np.eye(n, dtype=bool)
    margin = np.array([W[i, same_cat[i]].mean() - W[i, cats != cats[i]].mean() for i in range(n)])
    designed = np.array([design[i, same_cat[i]].mean() - design[i, cats != cats[i]].mean() for i in range(n)])
    vs_random = np.array([W[i, same_cat[i]].mean() - S[i, rnd].mean() for i in range(n)])
    assert (margin > 0).all() and margin.mean() > designed.mean()
    assert (vs_random > 0).all() and vs_random.mean() > P.LOGIT_SAME_CATEGORY
    assert vs_random.mean() - margin.mean() > 0.5 * (P.LOGIT_SAME_CATEGORY - designed.mean())


def test_self_suppression_hits_word_features(sae_run, planted_model, truth):
    out, words, kind, cat_of, _ = sae_run
    table = pd.read_csv(out / "feature_qk.csv", keep_default_na=False)
    word = table.iloc[: len(words)]
    # The feature map itself, computed here with plain torch: a word feature's decoder row is
    # d = E_w / |E_w| (checked in build_planted_sae above), a centred vector, which LNPre scales
    # to x = d / sqrt(mean(d^2) + eps); S[f, f] = x W_Q W_K^T x / sqrt(d_head) (bias-free, as the
    # script documents).
    from common.effective_embeddings import effective_embeddings

    layer, head = truth["target"]
    d = effective_embeddings(planted_model, layer)[torch.tensor(words)]
    d = d / d.norm(dim=1, keepdim=True)
    x = d / ((d**2).mean(-1, keepdim=True) + planted_model.cfg.eps).sqrt()
    q, k = x @ planted_model.W_Q[layer, head], x @ planted_model.W_K[layer, head]
    diag = (q * k).sum(-1) / planted_model.cfg.d_head**0.5
    assert abs(word["diag"].to_numpy() - diag.numpy()).max() < 1e-3  # the CSV keeps 4 decimals
    # Rule 2 by construction (common.planted, v4): self = same-category (3.75) + identity (+4) -
    # code (13.75) = LOGIT_SELF = -6 < 0, below a same-category word by the identity-code gap
    # LOGIT_SAME_CATEGORY - LOGIT_SELF = 9.75. The gap involves only the token's own U, V
    # coordinates (the C term is the same for self and a same-category word), scaled by LN1: it
    # stays 9.75 up to the LN1 scale of an effective embedding against the calibration prompts' (a
    # few %). Per word the generic part (v4: TARGET_GENERIC_COLUMN 0.8) adds its own self-score and
    # a category-dependent offset (measured: the per-word ratio spreads with std 0.15), which the
    # mean over the words averages out: hence the mean within 10%, and per word only the sign
    # (self below every same-category word: 9.75 against that spread). The same-category scores
    # come from the full map recomputed here (v3 used the listed top keys, which the larger generic
    # spread now biases upwards by selection).
    gap = truth["logits"]["same_category"] - truth["logits"]["self"]
    n = len(words)
    S = ((q @ k.T) / planted_model.cfg.d_head**0.5).numpy()  # the word features' block of the map
    assert np.allclose(np.diag(S), diag.numpy(), atol=1e-4)
    cats = np.array(cat_of[:n])
    same_cat = (cats[:, None] == cats[None, :]) & ~np.eye(n, dtype=bool)
    same = np.array([S[i, same_cat[i]].mean() for i in range(n)])
    # The absolute level is not designed here: softmax ignores a per-query shift, and the unit-norm
    # feature directions have another LN1 scale than the words in context, which scales the shared
    # any-category term (a few words' self-score is slightly positive). Rule 2 is relative: below.
    assert word["diag"].mean() < 0
    assert abs((same - word["diag"].to_numpy()).mean() / gap - 1) < 0.10  # measured 1.055
    assert all((S[i, same_cat[i]] > S[i, i]).all() for i in range(n))
    # Self ranks low in its row: LOGIT_SELF = -6 lies below every word feature's row mean (the
    # generic part is zero-mean over keys; measured diag_z <= -0.46), and below most keys, against
    # a row spread of about 3.5 logits that the generic part gives every feature (v3, nearly no
    # generic part: every self-rank fraction > 0.85; v4 measured median 0.92, min 0.71).
    assert (word["diag_z"] < 0).all() and word["self_rank_frac"].median() > 0.85
    # A category direction alone attends to itself: it holds each identity code at 1/12 weight, so
    # its code penalty is about 13.75 / 12 instead of 13.75 and its self-score keeps the
    # same-category term (v3: > 4 with a 12-logit term; v4: positive, above every word's).
    category = table.iloc[len(words) : len(words) + 14]
    assert (category["diag"] > 0).all() and category["diag"].min() > word["diag"].max()
    assert category["self_rank_frac"].max() < word["self_rank_frac"].min()
    sup = pd.read_csv(out / "self_suppression.csv", keep_default_na=False)
    assert all(kind[f] == "word" for f in sup["feature"].head(20))


def test_features_fire_selectively(sae_run, tokenizer):
    """The demo SAE's features fire where the construction says (common.sae.build_planted_sae):
    a word feature exactly on its own word (fire rate = the word's frequency in the prompts, label
    = the word alone), a category feature exactly on its category's words, a random feature
    nowhere. On planted v3 without b_dec every feature fired at every position (fire rate 1)."""
    import numpy as np

    from semantic_head import make_prompts

    out, words, kind, cat_of, _ = sae_run
    args = json.loads((out / "meta.json").read_text())["args"]
    body = make_prompts(tokenizer, args["n_prompts"], args["seq_len"], args["seed"])[:, 1:].flatten()
    freq = {t: float((body == t).float().mean()) for t in words}
    table = pd.read_csv(out / "feature_qk.csv", keep_default_na=False)
    for i in range(len(kind)):
        lab, rate = table["label"].iloc[i], table["fire_rate"].iloc[i]
        if kind[i] == "word":
            expected = freq[words[i]]
            assert lab == (tokenizer.decode([words[i]]) if expected > 0 else "(silent)"), (i, lab)
        elif kind[i] == "category":
            expected = sum(freq[t] for t, c in zip(words, cat_of) if c == cat_of[i])
            assert all(t in {tokenizer.decode([w]) for w, c in zip(words, cat_of) if c == cat_of[i]}
                       for t in lab.split("/")), (i, lab)
        else:
            expected = 0.0
            assert lab == "(silent)", (i, lab)
        assert np.isclose(rate, expected, atol=1e-5), (i, kind[i], rate, expected)
    assert sum(freq[t] > 0 for t in words) > 0.9 * len(words)  # the prompts hold nearly every word


def test_group_map_block_structure(sae_run, tokenizer, truth):
    """Each of the 30 group tokens is represented by its own word feature (the one that fires
    most on it), so the map is the word features' block: negative diagonal (self, planted
    LOGIT_SELF -6), self below every same-group word (the identity-code gap SAME - SELF = 11.5
    logits), and same-group pairs above other-group pairs. Design (final v4): the 5 groups' j-th
    words share the identity codes of slot j, so a row's 24 other-group entries are 20 x ANY and
    4 x (ANY + SELF - SAME) = -8.75: the block margin is SAME - (20 ANY + 4 (ANY + SELF - SAME)) / 24
    = 4.67. No NaN: every group token has a firing feature. (v3, same-category logit 12 and almost
    no generic part: every same-group score > 5. v4's generic part spreads word-pair scores by a
    few logits: the block shows per row, as the block mean against the off-block mean.)"""
    out, words = sae_run[0], sae_run[1]
    table = pd.read_csv(out / "group_feature_qk.csv").set_index("query")
    G = table.to_numpy()
    assert G.shape == (30, 30)
    import numpy as np

    assert np.isfinite(G).all()
    for tick in table.index:  # "Monday (f24)": feature 24 is the word feature of " Monday"
        w, f = tick.rsplit(" (f", 1)
        assert tokenizer.decode([words[int(f[:-1])]]).strip() == w.strip(), tick
    diag = np.diag(G)
    block = np.kron(np.eye(5), np.ones((6, 6))).astype(bool) & ~np.eye(30, dtype=bool)
    assert (diag < 0).all()
    assert all(diag[i] < G[i, block[i]].min() for i in range(30))
    off = ~np.kron(np.eye(5), np.ones((6, 6))).astype(bool)
    margin = np.array([G[i, block[i]].mean() - G[i, off[i]].mean() for i in range(30)])
    # every row: its group above the rest (measured 4.1-7.0); on average by at least the design
    # (the generic part has no group structure on average; measured 5.33; the intermediate tuning,
    # no any-category term, asked for more than SAME)
    lg = truth["logits"]
    design = lg["same_category"] - (20 * lg["any_category"] + 4 * (lg["any_category"] + lg["self"] - lg["same_category"])) / 24
    assert (margin > 0).all() and margin.mean() > design


def test_naive_similarity_differs_by_self_attention(sae_run):
    out = sae_run[0]
    s = json.loads((out / "summary.json").read_text())["naive"]
    naive, no_self = s["naive_cosine/all"], s["naive_cosine_no_self/all"]
    # The head gives self and copies almost nothing (LOGIT_SELF -6 against BOS 5.75 and a
    # same-category 5.5), while naive cosine gives self the largest similarity of every word key
    # (cos = 1): at least 10x the head's mass (the naive-similarity claim's own bar; measured 42x).
    # (v3 asserted a margin of 0.1 and a halved KL: its head put nearly all of a category query's
    # mass on a few in-category keys, so the fitted naive temperature was low and self took much of
    # the naive mass. v4's head leaks mass to BOS and to the other categories' words, the fitted
    # naive pattern is flat (T about 1.3) and self gets 0.06 of it.)
    assert naive["naive_self_mass"] > 10 * naive["head_self_mass"]
    # Masking self and copies removes that mass: for the same (T, BOS level) the mean KL drops by
    # E[-(1 - a) log(1 - s)] - E[a log(N_self / 1e-9)] (s: naive self mass, a: head's), > 0 here;
    # the refitted variant does at least about as well (measured 0.85 -> 0.77).
    assert no_self["kl"] < naive["kl"]
    # Masking self makes naive similarity track the head (pooled correlation of the patterns);
    # top-1 agreement is not used as the bar: the head splits its mass evenly among in-category
    # keys, so its top-1 among near-ties is arbitrary. The masked entries are few and carried
    # 0.06 of the naive mass, so the gain is small in v4 (0.713 -> 0.716; v3 asked for +0.1).
    # The level is lower than in the intermediate tuning (0.898, where a bar of 0.8 was set from
    # that measurement): masking self and copies leaves a planted difference naive cosine cannot
    # see. The j-th words of all categories share the identity codes U_j, V_j, so their cosine is
    # as high as a same-category pair's, while the head gives them ANY + SELF - SAME = -8.75 against
    # SAME = 5.5 and ANY = 2.75 for the rest of the other categories (the any-category term). The bar
    # is the contrast with the uniform causal pattern (the same prompts' null): at least twice its
    # correlation (measured 0.716 against 0.289).
    assert no_self["pooled_corr"] > naive["pooled_corr"]
    uniform = s["uniform_causal/all"]
    assert no_self["pooled_corr"] > 2 * uniform["pooled_corr"]
    # against the uniform causal pattern: the fitted similarity is far closer to the head (KL
    # measured 1.47 against 0.77; the intermediate tuning asked for 2x with 3x measured: the
    # shared-code partners above cost the fitted pattern in KL as in correlation, so 1.5x)
    assert uniform["kl"] > 1.5 * no_self["kl"] and uniform["pooled_corr"] < 0.5 < no_self["pooled_corr"]


def test_feature_map_streaming_equals_dense():
    from common.head_qk import FactoredQK
    from semantic_head import feature_qk_map

    g = torch.Generator().manual_seed(1)
    qk = FactoredQK(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g))
    X = torch.randn(150, 64, generator=g)
    f = qk.scorer(biases=False)
    res = feature_qk_map(f, X, k=4, chunk=40, progress=False)
    S = f.scores(X, X)
    assert torch.allclose(res["diag"], S.diagonal(), atol=1e-4)
    # self-rank against float64 scores: keys more than a round-off band above the diagonal count,
    # those more than it below do not, those inside it may count either way (the streamed
    # [chunk, n] matmul rounds as the BLAS kernel chosen for its shape does, which differs between
    # CPUs, so equal ranks are not guaranteed there). Band: 1e-6 |q| (|k_j| + |k_self|), the
    # Cauchy-Schwarz bounds of the two scores compared (float32 is within 2.3e-7 of that here).
    q64, k64 = X.double() @ f.left.double(), X.double() @ f.right.double()
    S64 = q64 @ k64.T
    kn = k64.norm(dim=-1)
    band = 1e-6 * q64.norm(dim=-1)[:, None] * (kn[None, :] + kn[:, None])
    others = S64.clone().fill_diagonal_(-float("inf"))
    lo = (others > S64.diagonal()[:, None] + band).sum(-1)
    hi = (others > S64.diagonal()[:, None] - band).sum(-1)
    rank = res["self_rank"].long()
    assert ((lo <= rank) & (rank <= hi)).all() and (hi > lo).sum() <= 0.05 * len(X)  # the band decides little
    off = S.clone()
    off.fill_diagonal_(-float("inf"))
    assert torch.allclose(res["top_score"], torch.topk(off, 4, -1).values, atol=1e-4)
    assert torch.allclose(res["self_prob"], torch.softmax(S, -1).diagonal(), atol=1e-6)


def test_run_prompts_blocks_match_a_direct_computation(sae_run, planted_model, monkeypatch):
    """run_prompts encodes a few positions and merges a few features at a time: with tiny blocks
    its firing rates and top tokens equal those of all positions encoded at once. The batches and
    encoder blocks differ from the reference's, so activations agree only to float32 round-off
    (values: rel 1e-5); counts and token order are still exact here because the planted SAE keeps
    every pre-activation >= 0.11 from its threshold and distinct top values >= 5e-4 apart
    (relative), far beyond round-off (measured)."""
    from sae_lens import SAE

    import semantic_head as sh
    from common.prompts import group_token_ids

    tok = planted_model.tokenizer
    sae = SAE.load_from_disk(str(sae_run[4]))
    tokens = sh.make_prompts(tok, 6, 12, seed=3)
    hook = "blocks.1.hook_resid_pre"
    monkeypatch.setattr(sh, "FEATURE_BLOCK", 7)
    monkeypatch.setattr(sh, "ENCODE_POSITIONS", 5)
    run = sh.run_prompts(planted_model, sae, tokens, 1, 5, hook, group_token_ids(tok)[0], batch_size=4,
                         progress=False)

    _, cache = planted_model.run_with_cache(tokens, names_filter=hook, stop_at_layer=2)
    x = cache[hook][:, 1:]  # BOS left out
    acts = sae.encode(x.reshape(-1, x.shape[-1])).detach()
    flat = tokens[:, 1:].reshape(-1)
    fired = acts > 0
    assert torch.allclose(run["fire_rate"], fired.sum(0) / len(flat))
    checked = 0
    for f in torch.nonzero(fired.any(0)).flatten().tolist():
        per_token = {}
        for t, v in zip(flat[fired[:, f]].tolist(), acts[fired[:, f], f].tolist()):
            per_token[t] = max(v, per_token.get(t, 0.0))
        top = sorted(per_token.items(), key=lambda kv: -kv[1])[:3]
        got = [(t, v) for t, v in zip(run["best_tok"][f].tolist(), run["best_val"][f].tolist()) if v > 0]
        assert [t for t, _ in got] == [t for t, _ in top], f
        assert [v for _, v in got] == pytest.approx([v for _, v in top], rel=1e-5)
        checked += 1
    assert checked >= 20


def test_errors(tmp_path, capsys, planted_model, sae_run):
    import semantic_head

    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--help"])
    assert e.value.code == 0 and "--sae-path" in capsys.readouterr().out
    # offline (conftest sets HF_HUB_OFFLINE=1) the default hub SAE cannot load: a clear message
    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--model", "planted", "--sae-release", "gpt2-small-res-jb", "--out", str(tmp_path)])
    msg = str(e.value.code)
    assert "could not load SAE release 'gpt2-small-res-jb'" in msg and "--sae-path" in msg
    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--model", "planted", "--sae-path", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert "cfg.json" in str(e.value.code)
    from sae_lens import StandardSAE, StandardSAEConfig

    StandardSAE(StandardSAEConfig(d_in=16, d_sae=8)).save_model(str(tmp_path / "small"))
    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--model", "planted", "--sae-path", str(tmp_path / "small"), "--out", str(tmp_path)])
    assert "d_in=16" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--model", "planted", "--sae-path", str(sae_run[4]), "--head", "99", "--out", str(tmp_path)])
    assert "out of range" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        semantic_head.main(["--model", "planted", "--sae-path", str(sae_run[4]), "--out", "/proc/l1h5-out"])
    assert "not writable" in str(e.value.code)
    assert not list(tmp_path.glob("*.csv"))


def test_planted_demo_sae_is_cached_and_loadable(planted_model, sae_run):
    """`--model planted` without an SAE option uses this folder (what `make demo` runs)."""
    from sae_lens import SAE

    from common.sae import planted_demo_sae

    folder = planted_demo_sae(planted_model)
    assert planted_demo_sae(planted_model) == folder  # built once
    sae = SAE.load_from_disk(str(folder))
    ref = SAE.load_from_disk(str(sae_run[4]))
    assert sae.cfg.d_sae == ref.cfg.d_sae and torch.allclose(sae.W_dec, ref.W_dec)


def test_render_draws_every_figure_from_saved_files_only(sae_run, tmp_path, monkeypatch):
    """render() on a copy of the saved tables (no figures, no model) redraws every figure exactly."""
    import common.model
    import semantic_head

    out = sae_run[0]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.png"))
    assert not list(copy.glob("*.png"))

    def no_model(*a, **k):
        raise AssertionError("render must not load a model")

    monkeypatch.setattr(common.model, "load_model", no_model)
    paths = semantic_head.render(copy)
    assert sorted(p.name for p in paths) == sorted(FIGURES)
    for f in FIGURES:  # main() drew its figures from the same files: identical bytes
        assert (copy / f).read_bytes() == (out / f).read_bytes(), f


def test_naive_example_is_the_first_held_out_prompt(sae_run):
    """naive_example.csv: three causal attention patterns (rows sum to 1) on one prompt starting with
    BOS; the head gives its own token and its copies almost nothing (planted self logit about -6)."""
    out = sae_run[0]
    ex = pd.read_csv(out / "naive_example.csv", keep_default_na=False)
    assert set(ex["pattern"]) == {"head", "naive_cosine", "naive_cosine_no_self"}
    for _, g in ex.groupby("pattern"):
        assert len(g) == 33 * 33
        assert (g.loc[g["key"] > g["query"], "weight"] == 0).all()
        assert (g.groupby("query")["weight"].sum() - 1).abs().max() < 1e-4
    head = ex[ex["pattern"] == "head"]
    assert head.loc[head["query"] == 0, "query_token"].iloc[0] == "<|endoftext|>"
    self_or_copy = (head["key_token"] == head["query_token"]) & (head["key"] > 0)
    assert self_or_copy.sum() >= 33 - 1  # every query but BOS sees itself
    assert head.loc[self_or_copy].groupby("query")["weight"].sum().max() < 0.05


def test_rule2_mask_in_naive_attention():
    """Self and copies (rule 2) are masked for the naive variant; BOS is never a copy."""
    from semantic_head import allowed_keys, compare_patterns

    a, b = 7, 8
    tokens = torch.tensor([[50256, a, b, a, a]])
    allowed = allowed_keys(tokens, mask_self=True)[0]
    expected = torch.tensor([[1, 0, 0, 0, 0],   # BOS keeps itself
                             [1, 0, 0, 0, 0],   # a: only BOS
                             [1, 1, 0, 0, 0],   # b: BOS, a
                             [1, 0, 1, 0, 0],   # a (copy): BOS, b
                             [1, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert torch.equal(allowed_keys(tokens, mask_self=False)[0], torch.ones(5, 5, dtype=torch.bool).tril())
    # self mass: query 4 (a) puts 0.5 on its copy at 1 and 0.5 on BOS; query 3 (a) 1.0 on itself
    A = torch.zeros(1, 5, 5)
    A[0, 0, 0] = A[0, 1, 0] = A[0, 2, 0] = 1.0
    A[0, 3, 3] = 1.0
    A[0, 4, 1] = A[0, 4, 0] = 0.5
    m = compare_patterns(A, A, tokens)
    assert m["head_self_mass"] == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
