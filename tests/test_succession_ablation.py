"""succession_ablation.py: succession cases and the effect of ablating L1H5 on them (planted model).
The heads that read L1H5 are composition.py's (tests/test_composition.py).

Ground truth: the order of days and months (facts written out here), hand-made text with known
successions, and an unbatched re-computation of the ablation by hand."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import check_help_and_common_errors, run_script
from script_run import run_then_render

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
    for f in ("cases.csv", "dropped_cases.csv", "effects.csv", "effect_summary.csv", "effects.png", "summary.json",
              "meta.json"):
        assert (run / f).exists(), f
    assert not list(run.glob("composition*"))  # composition.py's outputs, not this script's
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
    assert [p.name for p in paths] == ["effects.png"]
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


@pytest.mark.parametrize("args, message", [
    (["--categories", "days,colours"], "unknown category 'colours'"),
    (["--n-boot", "5"], "--n-boot must be at least"),
    (["--text", "{short}"], "text too short"),
    (["--cases", "{multi}", "--n-mined", "0"], "no curated case survives tokenization"),
    (["--control-heads", "5"], "is not another head"),
    (["--composition-only"], "python composition.py --model planted"),  # moved to its own script
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
    assert "--categories" in text and "--composition-only" not in text  # moved to composition.py


def test_bad_input_subprocess(tmp_path):
    """As a user runs it: non-zero exit, one error line, no traceback, no outputs."""
    out = tmp_path / "out"
    proc = run_script(SCRIPT, "--model", "planted", "--out", str(out), "--categories", "weekdays", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown category 'weekdays'" in err[0] and "Traceback" not in proc.stderr
    assert not out.exists()
