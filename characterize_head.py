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
"""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from common.cli import base_parser, script_name, start
from common.metrics import MASS_PARTS, all_head_patterns, head_survey, mean_ci
from common.outputs import write_csv, write_json, write_meta, write_text
from common.plotting import plt, save_figure, sns
from common.prompts import category_prompts


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, out = start(args, script_name(__file__))
    if args.seq_len + 1 > model.cfg.n_ctx:
        raise SystemExit(f"error: --seq-len {args.seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}")
    L, H = args.layer, args.head
    batch = category_prompts(model.tokenizer, args.n_prompts, args.seq_len, args.seed, repeat_prob=args.repeat_prob)

    survey = head_survey(model, batch.tokens, batch.mask, batch_size=args.batch_size, layers=list(range(L + 1)))
    score = survey["score"].numpy()  # [layer, head, prompt]
    mean, half = mean_ci(score, axis=-1)
    rows = [
        {"layer": l, "head": h, "score_mean": mean[l, h], "score_ci95": half[l, h],
         **{f"mass_{p}": float(survey["mass"][p][l, h]) for p in MASS_PARTS}}
        for l in range(mean.shape[0]) for h in range(mean.shape[1])
    ]
    table = pd.DataFrame(rows)
    write_csv(out / "head_scores.csv", table)

    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * mean.shape[1], 0.8 + 0.5 * mean.shape[0]))
    sns.heatmap(mean, annot=mean.shape[1] <= 16, fmt=".2f", cmap="viridis_r", ax=ax,
                cbar_kws={"label": "semantic category score (lower = follows the rules)"})
    ax.add_patch(plt.Rectangle((H, L), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Semantic category score per head, {args.n_prompts} prompts ({args.model})")
    save_figure(fig, out / "head_scores.png")

    order = table.sort_values("score_mean").reset_index(drop=True)
    median_row = order.iloc[len(order) // 2]
    target_row = table[(table.layer == L) & (table["head"] == H)].iloc[0]
    mass = pd.DataFrame([
        {"head": f"L{L}H{H} (target)", **{p: target_row[f"mass_{p}"] for p in MASS_PARTS}},
        {"head": f"L{int(median_row.layer)}H{int(median_row['head'])} (median score)",
         **{p: median_row[f"mass_{p}"] for p in MASS_PARTS}},
    ])
    write_csv(out / "mass_split.csv", mass)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    mass.set_index("head")[list(MASS_PARTS)].plot.barh(stacked=True, ax=ax, colormap="tab10")
    ax.set_xlabel("mean attention mass per query")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False)
    ax.set_title("Where the attention goes")
    save_figure(fig, out / "mass_split.png")

    html_path = out / f"attention_L{L}H{H}.html"
    write_text(html_path, attention_page(model, batch.tokens[0], L, H))

    others = table[~((table.layer == L) & (table["head"] == H))]
    summary = {
        "model": args.model, "layer": L, "head": H, "n_prompts": args.n_prompts,
        "target_score": float(target_row.score_mean), "target_score_ci95": float(target_row.score_ci95),
        "target_rank": int((table.score_mean < target_row.score_mean).sum()) + 1,
        "next_lowest": {"layer": int(others.sort_values("score_mean").iloc[0].layer),
                        "head": int(others.sort_values("score_mean").iloc[0]["head"]),
                        "score": float(others.score_mean.min())},
        "target_mass": {p: float(target_row[f"mass_{p}"]) for p in MASS_PARTS},
        "published_gpt2_small": {"L1H5": 0.6, "next_lowest_at_least": 1.2},
    }
    write_json(out / "summary.json", summary)
    write_meta(out, args)
    report(order, L, H, summary)
    return 0


def attention_page(model, tokens, layer: int, head: int) -> str:
    """Self-contained circuitsvis page (``local_src`` inlines the JS; ``str(html)`` needs a CDN)."""
    import circuitsvis as cv

    pattern = all_head_patterns(model, tokens[None], layers=[layer])[0, head, 0]
    labels = [model.tokenizer.decode([t]) for t in tokens.tolist()]
    return cv.attention.attention_pattern(tokens=labels, attention=pattern).local_src


def report(order: pd.DataFrame, layer: int, head: int, summary: dict) -> None:
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


if __name__ == "__main__":
    raise SystemExit(main())
