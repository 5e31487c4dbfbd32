"""succession_ablation.py: succession cases, the effect of ablating L1H5 on them, and the heads that
read L1H5 (planted model; real gpt2-small attention weights where ../shared is present).

Ground truth: the order of days and months (facts written out here), hand-made text with known
successions, an unbatched re-computation of the ablation by hand, TransformerLens' all-pairs
composition scores, a Gram-matrix computation of the composition scores in float64 from the raw
shared tensors, and (planted v3) the reader head built into the planted model."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import check_help_and_common_errors, run_script
from script_run import run_then_render
from shared_weights import requires_shared

SCRIPT = "succession_ablation.py"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CATEGORIES = "days,months,digits"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_model):
    """One run, its figures drawn once, by render(out_dir) from the saved results (script_run)."""
    out = tmp_path_factory.mktemp("succession_ablation")
    drawn = run_then_render(SCRIPT, out, "--model", "planted", "--categories", CATEGORIES, "--n-mined", "12",
                            "--min-mined", "5", "--n-reference", "8", "--reference-len", "32", "--n-boot", "200",
                            "--threads", "1")
    return out, drawn


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


def test_outputs_and_cases(run, tokenizer):
    for f in ("cases.csv", "dropped_cases.csv", "effects.csv", "effect_summary.csv", "effects.png", "composition.csv",
              "composition_pairs.csv", "summary.json", "meta.json"):
        assert (run / f).exists(), f
    cases = pd.read_csv(run / "cases.csv", keep_default_na=False)
    summary = json.loads((run / "summary.json").read_text())
    assert set(cases.category) <= set(CATEGORIES.split(","))
    assert (cases.source == "mined").sum() == 12 and summary["n_mined_found"] >= 12
    for r in cases.itertuples():  # every kept answer is exactly one token, the one recorded
        assert tokenizer.encode(r.answer) == [r.answer_id]
    curated = set(zip(cases.prompt[cases.source == "curated"], cases.answer[cases.source == "curated"]))
    # facts: successions of the week and the year, including the wrap-around
    for prompt, answer in [("Monday, Tuesday,", " Wednesday"), ("Sunday, Monday,", " Tuesday"),
                           ("December, January,", " February"), ("November, December,", " January"), ("1, 2,", " 3")]:
        assert (prompt, answer) in curated, prompt
    # every mined case ends where the text continued with the successor of its last day/month/number
    for r in cases[cases.source == "mined"].itertuples():
        assert r.n_tokens <= 24 + 1
        words = [w.strip(",.-") for w in r.prompt.split()]
        ans = r.answer.strip()
        if r.category == "days":
            last = [w for w in words if w in DAYS][-1]
            assert DAYS[(DAYS.index(last) + 1) % 7] == ans, (r.prompt, r.answer)
        elif r.category == "months":
            last = [w for w in words if w in MONTHS][-1]
            assert MONTHS[(MONTHS.index(last) + 1) % 12] == ans, (r.prompt, r.answer)
        else:
            assert int(ans) == int([w for w in words if w.isdigit()][-1]) + 1, (r.prompt, r.answer)


def test_effect_matches_an_unbatched_recomputation(run, planted_model, tokenizer, truth):
    """Mean ablation of L1H5 done by hand, one unpadded prompt at a time, from the saved reference
    offsets: the same effect as the script's batched, right-padded run."""
    from common.demo_corpus import demo_text
    from common.natural_text import tokenize

    model = planted_model
    L, H = truth["target"]
    summary = json.loads((run / "summary.json").read_text())
    ids = tokenize(tokenizer, demo_text())
    ref = torch.tensor([[tokenizer.bos_token_id] + ids[s : s + 31] for s in summary["reference_offsets"]])
    _, cache = model.run_with_cache(ref, names_filter=f"blocks.{L}.attn.hook_z")
    mean_z = cache[f"blocks.{L}.attn.hook_z"][:, 1:, H].reshape(-1, model.cfg.d_head).mean(0)

    def ablate(z, hook):
        z = z.clone()
        z[:, 1:, H] = mean_z
        return z

    cases = pd.read_csv(run / "cases.csv", keep_default_na=False)
    eff = pd.read_csv(run / "effects.csv")
    eff = eff[(eff["head"] == H) & (eff.method == "mean")].set_index("case_id")
    for r in cases.iloc[np.r_[0:4, -4:0]].itertuples():
        text = r.prompt if r.source == "curated" else None
        toks = tokenizer.encode(text) if text is not None else None
        if toks is None:  # mined: the saved prompt is decoded text; re-encode its token ids from the text offset
            toks = ids[max(0, r.text_offset - 24) : r.text_offset]
        x = torch.tensor([[tokenizer.bos_token_id] + toks])
        clean = model(x)[0, -1]
        abl = model.run_with_hooks(x, fwd_hooks=[(f"blocks.{L}.attn.hook_z", ablate)])[0, -1]
        wrong = int(clean.clone().index_fill_(0, torch.tensor([r.answer_id]), -torch.inf).argmax())
        assert wrong == r.top_wrong_id
        d_clean = float(clean[r.answer_id] - clean[wrong])
        d_abl = float(abl[r.answer_id] - abl[wrong])
        assert d_clean == pytest.approx(r.clean_logit_diff, abs=2e-4)
        assert d_clean - d_abl == pytest.approx(eff.loc[r.case_id, "effect"], abs=2e-4)
        rank = int((abl > abl[r.answer_id]).sum()) + 1
        assert rank == eff.loc[r.case_id, "ablated_rank"]


def test_summary_statistics_and_verdict(run):
    cases = pd.read_csv(run / "cases.csv", keep_default_na=False)
    eff = pd.read_csv(run / "effects.csv")
    stats = pd.read_csv(run / "effect_summary.csv")
    summary = json.loads((run / "summary.json").read_text())
    heads = [summary["head"], *summary["controls"]]
    assert len(summary["controls"]) == 3 and summary["head"] not in summary["controls"]
    assert len(eff) == len(cases) * len(heads) * 2
    for r in stats.itertuples():
        ids = cases.case_id[(cases.source == r.source) | (r.source == "all")]
        if r.category != "all":
            ids = cases.case_id[(cases.source == r.source) & (cases.category == r.category)]
        e = eff[(eff["head"] == r.head) & (eff.method == r.method) & eff.case_id.isin(ids)].effect
        assert r.n == len(e) and r.mean_effect == pytest.approx(e.mean(), abs=1e-6)
        assert r.ci_lo <= r.mean_effect <= r.ci_hi
    v = summary["verdict"]
    row = stats[(stats["head"] == summary["head"]) & (stats.method == "mean") & (stats.source == "curated")
                & (stats.category == "all")].iloc[0]
    assert v["mean"] == pytest.approx(row.mean_effect)
    assert v["label"] == ("STRONG" if row.mean_effect > 0.5 else "Moderate" if row.mean_effect > 0.1 else "Weak")


def test_verdict_bands():
    from succession_ablation import verdict

    assert verdict(0.7, 0.55, 0.9)["label"] == "STRONG" and verdict(0.7, 0.55, 0.9)["firm"]
    v = verdict(0.3, 0.05, 0.6)
    assert v["label"] == "Moderate" and not v["firm"] and "spans Weak to STRONG" in v["text"]
    v = verdict(-0.2, -0.3, -0.1)
    assert v["label"] == "Weak" and v["firm"] and "against" in v["text"]


def test_render_redraws_from_saved_files(runs):
    """render(out_dir) drew every figure into a folder that held only the saved results."""
    run, paths = runs
    assert [p.name for p in paths] == ["effects.png"] + (["composition.png"] if len(pd.read_csv(run / "composition.csv")) else [])
    assert all(p.stat().st_size > 0 for p in paths)


def test_mining_finds_exactly_the_planted_successions(tokenizer):
    from succession_ablation import mine_cases

    text = ("We met on Monday and Tuesday, then left. Pages 12-13 were torn. It rained in May, June and July. "
            "Friday, Sunday and Wednesday were free. Chapter one, chapter two.")
    ids = tokenizer.encode(text)
    rows, tokens, found = mine_cases(tokenizer, ids, ["days", "months", "digits", "number_words"], 100, 5, seed=0)
    got = [(r["category"], r["answer"].strip()) for r in rows]
    assert got == [("days", "Tuesday"), ("digits", "13"), ("months", "June"), ("months", "July")]
    assert found == 4
    for r, t in zip(rows, tokens):
        assert len(t) <= 6 and t[0] == tokenizer.bos_token_id and ids[r["text_offset"]] == r["answer_id"]
        assert ids[r["text_offset"] - len(t) + 1 : r["text_offset"]] == t[1:]


def test_composition_scores_equal_transformer_lens_all_pairs(planted_model):
    """The writer-by-writer loop gives model.all_composition_scores' numbers for every pair."""
    from succession_ablation import composition_table

    model = planted_model
    pairs = composition_table(model)
    n_l = model.cfg.n_layers
    assert len(pairs) == 3 * sum(model.cfg.n_heads ** 2 * (n_l - 1 - l) for l in range(n_l))
    for mode in "QKV":
        ref = model.all_composition_scores(mode)
        sub = pairs[pairs["mode"] == mode]
        want = ref[sub.writer_layer.to_numpy(), sub.writer_head.to_numpy(), sub.reader_layer.to_numpy(),
                   sub.reader_head.to_numpy()].numpy()
        np.testing.assert_allclose(sub.score.to_numpy(), want, rtol=1e-4, atol=1e-6)


def test_composition_scores_equal_transformer_lens_per_writer_to_round_off(planted_model):
    """Reader layer by reader layer gives TransformerLens' composition_scores of one writer against
    every later layer at once (the previous writer-by-writer computation) to float32 round-off:
    rtol 1e-5, atol 5e-7 (each is within 1.3e-6 relative, 1.1e-7 absolute of the float64 scores
    here). Not bit for bit: the two batch the SVDs and matmuls differently (one layer's heads vs
    one writer against all later layers), and the kernels' round-off depends on the batch shape,
    differently on different CPUs."""
    from transformer_lens.utilities import composition_scores

    from succession_ablation import composition_table

    model = planted_model
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    pairs = composition_table(model)
    QK = model.QK[1:]
    rights = {"Q": QK, "K": QK.T, "V": model.OV[1:]}
    rl, rh = np.meshgrid(np.arange(1, n_l), np.arange(n_h), indexing="ij")
    for mode in "QKV":
        for l in range(n_l - 1):
            for h in range(n_h):
                want = composition_scores(model.OV[l, h], rights[mode]).float().numpy()[rl > l]
                got = pairs[(pairs["mode"] == mode) & (pairs.writer_layer == l) & (pairs.writer_head == h)]
                assert (got.reader_layer.to_numpy() == rl[rl > l]).all() and (got.reader_head.to_numpy() == rh[rl > l]).all()
                np.testing.assert_allclose(got.score.to_numpy(), want, rtol=1e-5, atol=5e-7)


def test_ablations_from_the_cached_residual_equal_whole_model_runs(planted_model, tokenizer, truth):
    """Starting every ablation at layer L from the clean run's residual gives exactly the logits of
    a whole-model run with the same hooks, batch for batch (padding included)."""
    from common.head_replacement import z_hooks
    from succession_ablation import last_logits, prompt_batches

    model = planted_model
    L, H = truth["target"]
    prompts = [[tokenizer.bos_token_id] + tokenizer.encode(t) for t in
               ("Monday, Tuesday,", "one two three four five", "January", "a b c d e f g h i j k", "x")]
    batches = prompt_batches(prompts, 2, tokenizer.bos_token_id, "cpu")
    assert [len(b) for b, _ in batches] == [2, 2, 1]
    resid = []
    clean = torch.cat([x for _, x in last_logits(model, batches, [], L, record=resid)])
    assert len(resid) == len(batches)
    hooks = z_hooks(L, H, lambda z, hook: torch.zeros_like(z))
    got = torch.cat([x for _, x in last_logits(model, batches, hooks, L, resid=resid)])
    whole = torch.cat([x for _, x in last_logits(model, batches, hooks)])
    assert torch.equal(got, whole) and not torch.equal(got, clean)
    with torch.no_grad():  # the last position of each prompt, run alone and unpadded
        for i, t in enumerate(prompts):
            alone = model(torch.tensor([t]))[0, -1]
            assert torch.allclose(clean[i], alone, atol=1e-4)


def test_reader_head_comes_out_on_top(planted_model, truth):
    # TEMPORARY guard: planted v2 has no layer after L1H5, so no reader; remove this skip once
    # planted v3 (with ground_truth()["reader_head"] and ["reader_composition"]) is merged.
    from succession_ablation import composition_table, readers_of

    L, H = truth["target"]
    readers = readers_of(composition_table(planted_model), L, H)
    mode = truth["reader_composition"]
    top = readers[readers["mode"] == mode].iloc[0]
    assert [int(top.reader_layer), int(top.reader_head)] == list(truth["reader_head"])
    assert top["rank"] == 1 and top.z > 3  # and it stands out from every head pair of the model


def _real_attention_model(vocab: int = 64):
    """gpt2-small's real attention weights (../shared) in a HookedTransformer, processed like
    common.model.load_local_folder (fold_ln, centred writing weights): the attention circuits of
    bench/build_model.py's model, with a tiny random vocabulary and zero MLP matrices (composition
    scores read neither)."""
    from types import SimpleNamespace as NS

    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config

    from common.model import gpt2_tl_config
    from shared_weights import load_shared_gpt2_state_dict

    sd = load_shared_gpt2_state_dict()
    d, n_l = 768, 12
    wte = torch.randn(vocab, d, generator=torch.Generator().manual_seed(0)) * 0.14

    def lin(name, w=None):
        return NS(weight=sd[f"{name}.weight"] if w is None else w, bias=sd[f"{name}.bias"])

    blocks = [NS(ln_1=lin(f"h.{i}.ln_1"), ln_2=lin(f"h.{i}.ln_2"),
                 attn=NS(c_attn=lin(f"h.{i}.attn.c_attn"), c_proj=lin(f"h.{i}.attn.c_proj")),
                 mlp=NS(c_fc=lin(f"h.{i}.mlp.c_fc", torch.zeros(d, 4 * d)),
                        c_proj=lin(f"h.{i}.mlp.c_proj", torch.zeros(4 * d, d)))) for i in range(n_l)]
    hf = NS(transformer=NS(wte=NS(weight=wte), wpe=NS(weight=sd["wpe.weight"]), h=blocks, ln_f=lin("ln_f")),
            lm_head=NS(weight=wte))
    cfg = gpt2_tl_config(GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=d, n_layer=n_l, n_head=12))
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True,
                                      refactor_factored_attn_matrices=False)
    return model, sd


def _gram_composition(sd, writer, n_l=12, n_h=12, dh=64):
    """Q/K/V composition scores of ``writer`` with every later head, in float64 from the raw HF
    tensors: LN weight folded into W_Q/W_K/W_V and their rows centred, W_O's rows centred; then
    ||A B||_F / (||A||_F ||B||_F) through 64 x 64 Gram matrices (no SVD, no TransformerLens)."""
    folded = {}

    def head(l, h):
        if l not in folded:
            w = sd[f"h.{l}.attn.c_attn.weight"].double() * sd[f"h.{l}.ln_1.weight"].double()[:, None]
            folded[l] = w - w.mean(0)
        w = folded[l]
        q, k, v = (w[:, j * 768 + h * dh : j * 768 + (h + 1) * dh] for j in range(3))
        o = sd[f"h.{l}.attn.c_proj.weight"].double()[h * dh : (h + 1) * dh]
        return q, k, v, o - o.mean(1, keepdim=True)

    _, _, va, oa = head(*writer)
    gv = va.T @ va
    norm_a = torch.sqrt(torch.trace(gv @ (oa @ oa.T)))  # ||W_V W_O||_F
    out = {}
    for l in range(writer[0] + 1, n_l):
        for h in range(n_h):
            q, k, v, o = head(l, h)
            gq, gk = q.T @ q, k.T @ k
            # right matrix X Y^T: ||W_V (W_O X) Y^T||_F^2 = tr(G_V M G_Y M^T) with M = W_O X
            for mode, (x, g_y, norm_b2) in {"Q": (q, gk, torch.trace(gq @ gk)),
                                           "K": (k, gq, torch.trace(gq @ gk)),
                                           "V": (v, o @ o.T, torch.trace((v.T @ v) @ (o @ o.T)))}.items():
                m = oa @ x
                out[(mode, l, h)] = float(torch.sqrt(torch.trace(gv @ m @ g_y @ m.T)) / norm_a / torch.sqrt(norm_b2))
    return out


@requires_shared
def test_real_gpt2_small_readers_of_l1h5():
    from succession_ablation import composition_table, readers_of

    model, sd = _real_attention_model()
    pairs = composition_table(model, writers=[(1, 5)])
    want = _gram_composition(sd, (1, 5))
    got = {(r.mode, r.reader_layer, r.reader_head): r.score for r in pairs.itertuples()}
    assert set(got) == set(want) and len(got) == 3 * 10 * 12
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4)
    readers = readers_of(pairs, 1, 5)
    for mode in "QKV":
        best = max((k for k in want if k[0] == mode), key=want.get)
        top = readers[readers["mode"] == mode].iloc[0]
        assert (mode, top.reader_layer, top.reader_head) == best


@pytest.mark.parametrize("args, message", [
    (["--categories", "days,colours"], "unknown category 'colours'"),
    (["--n-boot", "5"], "--n-boot must be at least"),
    (["--text", "{short}"], "text too short"),
    (["--cases", "{multi}", "--n-mined", "0"], "no curated case survives tokenization"),
    (["--control-heads", "5"], "is not another head"),
])
def test_bad_input(tmp_path, args, message, planted_model):
    """In-process: a one-line SystemExit, and nothing written to the output folder."""
    from succession_ablation import main

    (tmp_path / "short.txt").write_text("On Monday and Tuesday we met. " * 3)
    pd.DataFrame({"category": ["x", "y"], "prompt": ["a, b,", "p, q,"],
                  "answer": [" Wednesdayyyy", " (c)"]}).to_csv(tmp_path / "multi.csv", index=False)
    args = [a.format(short=tmp_path / "short.txt", multi=tmp_path / "multi.csv") for a in args]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--model", "planted", "--out", str(out), "--threads", "1", *args])
    msg = str(exc.value.code)
    assert message in msg and "\n" not in msg.strip()
    assert not out.exists() or not any(out.iterdir())


def test_help_and_common_errors(tmp_path, capsys, planted_model):
    from succession_ablation import main

    text = check_help_and_common_errors(main, tmp_path, capsys)
    assert "--composition-only" in text and "--categories" in text


def test_bad_input_subprocess(tmp_path):
    """As a user runs it: non-zero exit, one error line, no traceback, no outputs."""
    out = tmp_path / "out"
    proc = run_script(SCRIPT, "--model", "planted", "--out", str(out), "--categories", "weekdays", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown category 'weekdays'" in err[0] and "Traceback" not in proc.stderr
    assert not out.exists()
