"""Which heads follow the three rules of a self-suppressing semantic head?

Question. Is L1H5 the head of gpt2-small whose attention best follows the three rules (attend to
earlier same-category tokens, never to yourself or earlier copies, BOS otherwise), and by how much?

Method. Many seeded category prompts (BOS + words drawn across the categories of
``common/prompts.py``, some words repeated so that rule 2 is tested) go through the model once,
up to the target layer (``stop_at_layer``); every head's ``hook_pattern`` is scored with the
post's semantic category score L = mean_q -log(sum_k M[q,k] A[q,k]) (lower is better), and its
attention mass is split into self+copies, in-category, BOS and other. The original used a single
prompt; here the mean and a 95% confidence interval over prompts are reported.

Outputs (``figures/characterize_head/`` by default):
  head_scores.csv / head_scores.png  score per head (mean, CI), target outlined
  mass_split.csv / mass_split.png    attention mass parts: target head vs the median head
  attention_<layer>_<head>.html      interactive circuitsvis page of the target head (offline)
  summary.json, meta.json

Published reference (the L1H5 post, gpt2-small): L1H5 about 0.6, the next-lowest heads 1.2 or more.

Run: python characterize_head.py --model planted   (real gpt2-small: --model gpt2-small)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from common.cli import base_parser, start
from common.metrics import MASS_PARTS, all_head_patterns, head_survey, mean_ci
from common.outputs import write_text
from common.prompts import category_prompts
from common.results import Results, load_meta, load_summary, load_table, save_results

SCRIPT = "characterize_head"


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__)
    p.add_argument("--n-prompts", type=int, default=64, help="number of seeded category prompts")
    p.add_argument("--seq-len", type=int, default=48, help="category words per prompt (BOS not counted)")
    p.add_argument("--repeat-prob", type=float, default=0.1, help="chance a word repeats an earlier one")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    if args.n_prompts < 2:
        p.error("--n-prompts must be at least 2 (a confidence interval needs two prompts)")
    if args.seq_len < 2:
        p.error("--seq-len must be at least 2")
    if not 0 <= args.repeat_prob < 1:
        p.error("--repeat-prob must be in [0, 1)")
    return args


def prompts(model, args):
    """The seeded category prompts every head is scored on."""
    if args.seq_len + 1 > model.cfg.n_ctx:
        raise SystemExit(f"error: --seq-len {args.seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}")
    return category_prompts(model.tokenizer, args.n_prompts, args.seq_len, args.seed, repeat_prob=args.repeat_prob)


def compute(model, args, batch) -> Results:
    """Score and mass split of every head of layers 0..layer; the target against the median head."""
    layer, head = args.layer, args.head
    survey = head_survey(model, batch.tokens, batch.mask, batch_size=args.batch_size, layers=list(range(layer + 1)))
    score = survey["score"].numpy()  # [layer, head, prompt]
    mean, half = mean_ci(score, axis=-1)
    table = pd.DataFrame([
        {"layer": l, "head": h, "score_mean": mean[l, h], "score_ci95": half[l, h],
         **{f"mass_{p}": float(survey["mass"][p][l, h]) for p in MASS_PARTS}}
        for l in range(mean.shape[0]) for h in range(mean.shape[1])
    ])
    order = table.sort_values("score_mean").reset_index(drop=True)
    median_row = order.iloc[len(order) // 2]
    target_row = table[(table.layer == layer) & (table["head"] == head)].iloc[0]
    mass = pd.DataFrame([
        {"head": f"L{layer}H{head} (target)", **{p: target_row[f"mass_{p}"] for p in MASS_PARTS}},
        {"head": f"L{int(median_row.layer)}H{int(median_row['head'])} (median score)",
         **{p: median_row[f"mass_{p}"] for p in MASS_PARTS}},
    ])
    others = table[~((table.layer == layer) & (table["head"] == head))]
    nxt = others.sort_values("score_mean").iloc[0]
    summary = {
        "model": args.model, "layer": layer, "head": head, "n_prompts": args.n_prompts,
        "target_score": float(target_row.score_mean), "target_score_ci95": float(target_row.score_ci95),
        "target_rank": int((table.score_mean < target_row.score_mean).sum()) + 1,
        "next_lowest": {"layer": int(nxt.layer), "head": int(nxt["head"]),
                        "score": float(others.score_mean.min())},
        "target_mass": {p: float(target_row[f"mass_{p}"]) for p in MASS_PARTS},
        "published_gpt2_small": {"L1H5": 0.6, "next_lowest_at_least": 1.2},
    }
    return Results({"head_scores": table, "mass_split": mass}, summary)


def attention_page(model, tokens, layer: int, head: int) -> str:
    """Self-contained circuitsvis page (``local_src`` inlines the JS; ``str(html)`` needs a CDN)."""
    import circuitsvis as cv

    pattern = all_head_patterns(model, tokens[None], layers=[layer])[0, head, 0]
    labels = [model.tokenizer.decode([t]) for t in tokens.tolist()]
    return cv.attention.attention_pattern(tokens=labels, attention=pattern).local_src


def render(out_dir) -> list[Path]:
    """head_scores.png and mass_split.png from the saved tables (title: prompts and model of the run)."""
    from common.plotting import plt, save_figure, sns

    out_dir = Path(out_dir)
    table, summary = load_table(out_dir, "head_scores"), load_summary(out_dir)
    mean = table.pivot(index="layer", columns="head", values="score_mean").to_numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * mean.shape[1], 0.8 + 0.5 * mean.shape[0]))
    sns.heatmap(mean, annot=mean.shape[1] <= 16, fmt=".2f", cmap="viridis_r", ax=ax,
                cbar_kws={"label": "semantic category score (lower = follows the rules)"})
    ax.add_patch(plt.Rectangle((summary["head"], summary["layer"]), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Semantic category score per head, {summary['n_prompts']} prompts ({load_meta(out_dir)['args']['model']})")
    paths = [save_figure(fig, out_dir / "head_scores.png")]

    mass = load_table(out_dir, "mass_split")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    mass.set_index("head")[list(MASS_PARTS)].plot.barh(stacked=True, ax=ax, colormap="tab10")
    ax.set_xlabel("mean attention mass per query")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False)
    ax.set_title("Where the attention goes")
    paths.append(save_figure(fig, out_dir / "mass_split.png"))
    return paths


def report(results: Results) -> None:
    summary, layer, head = results.summary, results.summary["layer"], results.summary["head"]
    order = results.tables["head_scores"].sort_values("score_mean").reset_index(drop=True)
    t = Table(title="Lowest semantic category scores (lower = follows the three rules)")
    for c in ("rank", "head", "score", "95% CI", "self+copies", "in-category", "BOS"):
        t.add_column(c)
    for i, r in order.head(5).iterrows():
        name = f"L{int(r.layer)}H{int(r['head'])}"
        t.add_row(str(i + 1), f"[bold]{name}[/]" if (r.layer, r["head"]) == (layer, head) else name,
                  f"{r.score_mean:.3f}", f"±{r.score_ci95:.3f}", f"{r.mass_self_and_copies:.3f}",
                  f"{r.mass_in_category:.3f}", f"{r.mass_bos:.3f}")
    Console().print(t)
    print(f"L{layer}H{head}: score {summary['target_score']:.3f}, rank {summary['target_rank']}")


def main(argv: list[str] | None = None) -> int:
    """Score every head up to the target layer on seeded category prompts; save the tables and the
    target head's interactive page (data for a viewer); draw from the saved files; report."""
    args = parse_args(argv)
    model, out_dir = start(args, SCRIPT)
    batch = prompts(model, args)
    results = compute(model, args, batch)
    save_results(out_dir, results, args, SCRIPT)
    write_text(out_dir / f"attention_L{args.layer}H{args.head}.html",
               attention_page(model, batch.tokens[0], args.layer, args.head))
    render(out_dir)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
