"""Which heads follow the three rules of a self-suppressing semantic head?

Question. Is L1H5 the head of gpt2-small whose attention best follows the three rules (attend to
earlier same-category tokens, never to yourself or earlier copies, BOS otherwise), and by how much?

Method. Many seeded category prompts (BOS + words drawn across the categories of
``common/prompts.py``, some words repeated so that rule 2 is tested) go through the model once;
every head of every layer (the published survey is all 12 x 12 of gpt2-small) is scored on its
``hook_pattern`` with the post's semantic category score L = mean_q -log(sum_k M[q,k] A[q,k])
(lower is better), and its attention mass is split into self+copies, in-category, BOS and other.
The original used a single prompt; here the mean and a 95% confidence interval over prompts are
reported, with the target's rank among all heads and the next-lowest head anywhere in the model.
Beside every score: ``bos_only``, the share of scored queries whose only allowed key is BOS, and
the score over the other queries alone (``score_in_category_queries``).

Category-overlap sensitivity: some categories overlap in meaning (months and days, names and
pronouns, number words and years, and words that name a fruit and a colour: orange, lime, peach,
plum, cherry, violet). The same patterns are re-scored with such categories merged (a merged
pair is one category; a fruit/colour word belongs to both the fruits and the colours), each merge
alone and all together, where the protocol's word lists hold both sides
(``overlap_sensitivity.csv``): a head that treats them as one category scores lower merged, a head
that keeps them apart scores higher. No second forward pass.

Protocols (``--protocol``, :mod:`common.protocol`): ``ours`` (default) as above; ``post`` is the
published experiment: the original repository's 8 categories of 5-6 words, prompts of 255 words
drawn with replacement, the score clamped at 1e-12 and averaged over every row (BOS's too), here
over 16 such prompts for a CI. Only a ``post`` run at 255 words is compared with the published
0.6 / 1.2 (claim ``head-survey``); it needs a context of 256 tokens.

Several models at once (``--model gpt2-small gpt2-medium stanford-crfm/alias-gpt2-small-x21 ...``):
each model's survey goes to its own sub-folder, and ``cross_model.csv`` / ``cross_model.png`` put
the lowest-scoring head of every model (its score and CI) and the --layer/--head head side by side:
"does every model, every training seed, grow an L1H5?" in one command.

Outputs (``figures/characterize_head/`` by default):
  head_scores.csv / head_scores.png  score per head (mean, CI), target outlined
  mass_split.csv / mass_split.png    attention mass parts: target head vs the median head
  overlap_sensitivity.csv            per merge of overlapping categories: the target's score (CI),
                                     rank and bos_only, the best other head, beside the unmerged
  attention_<layer>_<head>.html      interactive circuitsvis page of the target head (offline)
  summary.json, meta.json
  cross_model.csv / cross_model.png  (several --model values) lowest head of each model

Your own text (``--prompt "TEXT"``, :mod:`common.prompt_view`): the head's observed pattern on it
beside the ideal mask of the three rules and each query's cost, words outside the categories shown
as such, and a circuitsvis page of every head of the layer; into ``<out>/prompt/`` by default:
  prompt_pattern.csv / prompt_pattern.png, prompt_summary.json, prompt_heads_L<layer>.html

Published reference (the L1H5 post, gpt2-small): L1H5 about 0.6, the next-lowest heads 1.2 or more.

Run: python characterize_head.py --model planted   (real gpt2-small: --model gpt2-small)
     python characterize_head.py --model planted --prompt "<bos> cat horse blue sun apple 32 red snow sun"
     python characterize_head.py --model gpt2-small gpt2-medium distilgpt2 --out figures/cross_model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from common.claims import POST, Claim, Evidence, all_of, at_least, interval, near, number, protocol, target
from common.cli import add_protocol_flag, apply_protocol, base_parser, keeps_state, start
from common.genuine_weights import weights_verdict
from common.outputs import FIGURES, claim_out_dir, prepare_out_dir
from common.planted_names import check_model_name
from common.metrics import MASS_PARTS, all_head_patterns, bos_only_share, head_survey
from common.stats import mean_ci
from common.outputs import write_text
from common.prompts import category_token_ids, category_prompts
from common.protocol import POST as POST_PROTOCOL, PROTOCOLS
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text

SCRIPT = "characterize_head"


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__, several_models=True)
    add_protocol_flag(p)
    p.add_argument("--n-prompts", type=int, default=None,
                   help="number of seeded category prompts (default: 64; --protocol post: 16)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="category words per prompt, BOS not counted (default: 48; --protocol post: 255)")
    p.add_argument("--repeat-prob", type=float, default=None,
                   help="extra chance a word repeats an earlier one (default: 0.1; --protocol post: 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="instead of the survey: the head on this text (observed pattern, ideal mask, cost per query) "
                        "and every head of its layer in a circuitsvis page; default output <out>/prompt/")
    args = apply_protocol(p.parse_args(argv), n_prompts="survey_prompts", seq_len="survey_words",
                          repeat_prob="repeat_prob")
    if args.prompt is not None and len(args.model) > 1:
        p.error("--prompt takes one --model")
    if args.prompt is not None and not args.prompt.strip():
        p.error("--prompt is empty")
    if args.n_prompts < 2:
        p.error("--n-prompts must be at least 2 (a confidence interval needs two prompts)")
    if args.seq_len < 2:
        p.error("--seq-len must be at least 2")
    if not 0 <= args.repeat_prob < 1:
        p.error("--repeat-prob must be in [0, 1)")
    return args


def prompts(model, args):
    """The seeded category prompts every head is scored on (the protocol's word lists)."""
    if args.seq_len + 1 > model.cfg.n_ctx:
        raise SystemExit(f"error: --seq-len {args.seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}"
                         + (" (the post's prompts are 255 words: pass a shorter --seq-len, and the run is then not "
                            "the post's protocol)" if args.protocol == "post" else ""))
    return category_prompts(model.tokenizer, args.n_prompts, args.seq_len, args.seed,
                            PROTOCOLS[args.protocol].categories, repeat_prob=args.repeat_prob)


# Overlapping categories (module docstring): pairs merged into one, and words in both fruits and colours.
OVERLAP_MERGES = {"months+days": ("months", "days"), "names+pronouns": ("names", "pronouns"),
                  "numbers+years": ("numbers", "years")}
FRUIT_COLOUR = "fruit/colour words"
FRUIT_COLOUR_WORDS = ("orange", "lime", "peach", "plum", "cherry", "violet")
FRUITS, COLOURS = ("fruits",), ("colours", "colors")  # our lists' name and the post's
ALL_MERGED = "all merged"


def overlap_groups(categories: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
    """Merge name -> the (category, category) pairs it joins, for the merges whose two sides are
    both in ``categories``; a fruit/colour word is a pair ('word:<w>', colour category). With two
    or more merges, ``all merged`` holds them all."""
    out = {name: [(a, b)] for name, (a, b) in OVERLAP_MERGES.items() if a in categories and b in categories}
    fruit = next((c for c in FRUITS if c in categories), None)
    colour = next((c for c in COLOURS if c in categories), None)
    words = [w for w in FRUIT_COLOUR_WORDS if fruit and colour and (w in categories[fruit] or w in categories[colour])]
    if words:
        out[FRUIT_COLOUR] = [(f"word:{w}", colour if w in categories[fruit] else fruit) for w in words]
    if len(out) > 1:
        out[ALL_MERGED] = [pair for pairs in out.values() for pair in pairs]
    return out


def overlap_mask(tokens: torch.Tensor, tokenizer, categories: dict[str, list[str]], pairs) -> torch.Tensor:
    """The ideal mask (common.prompts.ideal_mask) with the ``pairs`` of :func:`overlap_groups`
    applied: k < q allowed iff k and q share a (merged) category and are different tokens; BOS
    when no key is allowed. A token's categories are a set (a fruit/colour word has two)."""
    names = list(categories)
    ids = category_token_ids(tokenizer, categories)
    member = torch.zeros(tokenizer.vocab_size + 1, len(names), dtype=torch.bool)
    for c, toks in enumerate(ids.values()):
        member[torch.tensor(toks), c] = True
    for a, b in pairs:
        if a.startswith("word:"):  # one word joins the other category
            t = category_token_ids(tokenizer, {"w": [a[5:]]})["w"][0]
            member[t, names.index(b)] = True
        else:  # the two categories are one: each member joins the other
            ia, ib = names.index(a), names.index(b)
            both = member[:, ia] | member[:, ib]
            member[:, ia] = member[:, ib] = both
    g = member[tokens].float()  # [batch, pos, n_categories]
    n = tokens.shape[1]
    share = (g @ g.transpose(1, 2)) > 0
    mask = share & (tokens[:, :, None] != tokens[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    mask[:, 0, :] = False
    mask[:, :, 0] = False
    mask[:, :, 0] = ~mask.any(-1)
    return mask


def overlap_table(score: np.ndarray, extra: dict[str, np.ndarray], masks: dict, base_mask, groups: dict,
                  layer: int, head: int) -> pd.DataFrame:
    """One row per merge (``none``: unmerged): the target's score and CI, its rank among all heads,
    the best other head and its score, bos_only, and how many scored queries' allowed keys change."""
    rows = []
    for name, sc in [("none", score), *extra.items()]:
        mean, half = mean_ci(sc, axis=-1)
        flat = mean.ravel()
        t = flat[layer * mean.shape[1] + head]
        others = np.delete(flat, layer * mean.shape[1] + head)
        best = int(np.argmin(np.where(np.arange(flat.size) == layer * mean.shape[1] + head, np.inf, flat)))
        m = base_mask if name == "none" else masks[name]
        rows.append({
            "merge": name, "pairs": "" if name == "none" else "; ".join(f"{a}+{b}" for a, b in groups[name]),
            "target_score": float(t), "target_score_ci95": float(half[layer, head]),
            "target_rank": int((flat < t).sum()) + 1, "best_other": f"L{best // mean.shape[1]}H{best % mean.shape[1]}",
            "best_other_score": float(others.min()), "bos_only": float(bos_only_share(m)),
            "changed_queries": float((m[:, 1:] != base_mask[:, 1:]).any(-1).float().mean()),
        })
    return pd.DataFrame(rows)


def compute(model, args, batch) -> Results:
    """Score and mass split of every head of every layer; the target against the median head;
    the category-overlap sensitivity of the same patterns."""
    layer, head = args.layer, args.head
    proto = PROTOCOLS[args.protocol]
    groups = overlap_groups(proto.categories)
    masks = {name: overlap_mask(batch.tokens, model.tokenizer, proto.categories, pairs) for name, pairs in groups.items()}
    survey = head_survey(model, batch.tokens, batch.mask, batch_size=args.batch_size, eps=proto.eps,
                         bos_row=proto.bos_row, extra_masks=masks)
    score = survey["score"].numpy()  # [layer, head, prompt]
    mean, half = mean_ci(score, axis=-1)
    other, other_half = mean_ci(survey["score_in_category_queries"].numpy(), axis=-1)
    table = pd.DataFrame([
        {"layer": l, "head": h, "score_mean": mean[l, h], "score_ci95": half[l, h],
         "score_in_category_queries": other[l, h], "score_in_category_queries_ci95": other_half[l, h],
         "bos_only": survey["bos_only"],
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
        "model": args.model, "layer": layer, "head": head, "n_prompts": args.n_prompts, "protocol": args.protocol,
        "seq_len": args.seq_len, "bos_only": survey["bos_only"], "score_eps": proto.eps, "score_bos_row": proto.bos_row,
        "target_score": float(target_row.score_mean), "target_score_ci95": float(target_row.score_ci95),
        "target_rank": int((table.score_mean < target_row.score_mean).sum()) + 1, "n_heads_total": len(table),
        "next_lowest": {"layer": int(nxt.layer), "head": int(nxt["head"]),
                        "score": float(others.score_mean.min())},
        "target_mass": {p: float(target_row[f"mass_{p}"]) for p in MASS_PARTS},
        "lowest": {"layer": int(order.iloc[0].layer), "head": int(order.iloc[0]["head"]),
                   "score": float(order.iloc[0].score_mean), "ci95": float(order.iloc[0].score_ci95),
                   "next_score": float(order.iloc[1].score_mean)},
        "published_gpt2_small": {"L1H5": 0.6, "next_lowest_at_least": 1.2},
    }
    overlap = overlap_table(score, {k: v.numpy() for k, v in survey["extra_scores"].items()}, masks, batch.mask,
                            groups, layer, head)
    summary["overlap_sensitivity"] = {r.merge: {"target_score": r.target_score, "target_rank": int(r.target_rank)}
                                      for r in overlap.itertuples()}
    return Results({"head_scores": table, "mass_split": mass, "overlap_sensitivity": overlap}, summary)


def attention_page(model, tokens, layer: int, head: int) -> str:
    """Self-contained circuitsvis page (``local_src`` inlines the JS; ``str(html)`` needs a CDN)."""
    import circuitsvis as cv

    pattern = all_head_patterns(model, tokens[None], layers=[layer])[0, head, 0]
    labels = [model.tokenizer.decode([t]) for t in tokens.tolist()]
    return cv.attention.attention_pattern(tokens=labels, attention=pattern).local_src


def render(out_dir) -> list[Path]:
    """head_scores.png and mass_split.png from the saved tables (title: prompts and model of the run);
    in a --prompt folder, prompt_pattern.png (:func:`common.prompt_view.render_prompt_view`)."""
    from common.plotting import heatmap, plt, save_figure

    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    if (out_dir / "prompt_pattern.csv").exists() and not (out_dir / "head_scores.csv").exists():
        from common.prompt_view import render_prompt_view

        return render_prompt_view(out_dir, weights)
    table, summary = load_table(out_dir, "head_scores"), load_summary(out_dir)
    mean = table.pivot(index="layer", columns="head", values="score_mean").to_numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * mean.shape[1], 0.8 + 0.5 * mean.shape[0]))
    heatmap(mean, annot=mean.shape[1] <= 16, fmt=".2f", cmap="viridis_r", ax=ax,
                cbar_kws={"label": "semantic category score (lower = follows the rules)"})
    ax.add_patch(plt.Rectangle((summary["head"], summary["layer"]), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Semantic category score per head, {summary['n_prompts']} prompts ({meta['args']['model']})")
    paths = [save_figure(fig, out_dir / "head_scores.png", weights)]

    mass = load_table(out_dir, "mass_split")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    mass.set_index("head")[list(MASS_PARTS)].plot.barh(stacked=True, ax=ax, colormap="tab10")
    ax.set_xlabel("mean attention mass per query")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False)
    ax.set_title("Where the attention goes")
    paths.append(save_figure(fig, out_dir / "mass_split.png", weights))
    return paths


def report(results: Results, out_dir: Path) -> None:
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
    o = Table(title=f"L{layer}H{head} with overlapping categories merged")
    for c in ("merge", "score", "95% CI", "rank", "best other head", "bos_only", "queries changed"):
        o.add_column(c)
    for r in results.tables["overlap_sensitivity"].itertuples():
        o.add_row(r.merge, f"{r.target_score:.3f}", f"±{r.target_score_ci95:.3f}", str(r.target_rank),
                  f"{r.best_other} {r.best_other_score:.3f}", f"{r.bos_only:.3f}", f"{r.changed_queries:.3f}")
    Console().print(o)
    Console().print(f"outputs: {out_dir}")


def cross_model(summaries: list[dict]) -> pd.DataFrame:
    """One row per model: its lowest-scoring head (score, CI) and the --layer/--head head's score and rank."""
    rows = []
    for s in summaries:
        rows.append({"model": s["model"], "lowest_layer": s["lowest"]["layer"], "lowest_head": s["lowest"]["head"],
                     "lowest_score": s["lowest"]["score"], "lowest_score_ci95": s["lowest"]["ci95"],
                     "next_score": s["lowest"]["next_score"], "target": f"L{s['layer']}H{s['head']}",
                     "target_score": s["target_score"], "target_score_ci95": s["target_score_ci95"],
                     "target_rank": s["target_rank"], "n_heads": s["n_heads_total"]})
    return pd.DataFrame(rows)


def render_cross_model(out_dir) -> list[Path]:
    """cross_model.png from cross_model.csv: each model's lowest head against its runner-up."""
    from common.plotting import plt, save_figure

    t = load_table(out_dir, "cross_model")
    weights = verdict_text(load_meta(out_dir))  # several models: none recorded for the whole table
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(t), 3.6))
    x = range(len(t))
    ax.bar([i - 0.2 for i in x], t.lowest_score, 0.4, yerr=t.lowest_score_ci95, label="lowest head")
    ax.bar([i + 0.2 for i in x], t.next_score, 0.4, label="next-lowest head")
    ax.set_xticks(list(x), [f"{m}\nL{a}H{b}" for m, a, b in zip(t.model, t.lowest_layer, t.lowest_head)], fontsize=7)
    ax.set_ylabel("semantic category score (lower = follows the rules)")
    ax.set_title("Does every model grow an L1H5? Lowest-scoring head per model")
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(out_dir) / "cross_model.png", weights)]


def run_one(args) -> Results:
    """The whole analysis for one model (args.model is one name)."""
    model, out_dir = start(args, SCRIPT)
    batch = prompts(model, args)
    results = compute(model, args, batch)
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model))
    write_text(out_dir / f"attention_L{args.layer}H{args.head}.html",
               attention_page(model, batch.tokens[0], args.layer, args.head))
    render(out_dir)
    report(results, out_dir)
    return results


@keeps_state
def main(argv: list[str] | None = None) -> int:
    """Score every head on seeded category prompts; save the tables and the target head's
    interactive page (data for a viewer); draw from the saved files; report. With several models,
    one sub-folder each and the cross-model table."""
    args = parse_args(argv)
    if args.prompt is not None:
        run_prompt(argparse.Namespace(**{**vars(args), "model": args.model[0]}))
        return 0
    if len(args.model) == 1:
        run_one(argparse.Namespace(**{**vars(args), "model": args.model[0]}))
        return 0
    check_model_name(args.model)  # every name before the first folder: planted:<unknown> stops here
    out_dir = prepare_out_dir(args.out or FIGURES / "cross_model" / SCRIPT, SCRIPT)
    summaries = []
    for name in args.model:
        sub = argparse.Namespace(**{**vars(args), "model": name, "out": str(out_dir / model_folder(name))})
        summaries.append(run_one(sub).summary)
    claim_out_dir(out_dir, args)
    save_results(out_dir, Results({"cross_model": cross_model(summaries)}, {"models": args.model}), args, SCRIPT,
                 weights=None)  # several models: each sub-folder has its own verdict
    render_cross_model(out_dir)
    Console().print(load_table(out_dir, "cross_model").to_string(index=False))
    return 0


def run_prompt(args) -> None:
    """--prompt: the head on the user's text (common.prompt_view), saved, then drawn by render."""
    from common.outputs import default_out_dir
    from common.prompt_view import prompt_view, save_prompt_view

    args.out = args.out or str(default_out_dir(SCRIPT, args.model) / "prompt")
    model, out_dir = start(args, SCRIPT)
    try:
        view = prompt_view(model, args.prompt, args.layer, args.head)
    except ValueError as exc:
        raise SystemExit(f"error: --prompt: {exc}") from None
    save_prompt_view(out_dir, view, args.model)
    from common.genuine_weights import weights_meta
    from common.outputs import write_meta

    write_meta(out_dir, args, weights_meta(args.model), script=SCRIPT)
    render(out_dir)
    none = ", ".join(map(repr, view.uncategorised)) or "none"
    print(f"L{args.layer}H{args.head} on {len(view.tokens)} tokens: score {view.score:.3f} (0 = follows the three "
          f"rules exactly); worst query {int(np.nanargmax(view.cost))} {view.labels[int(np.nanargmax(view.cost))]!r} "
          f"cost {np.nanmax(view.cost):.3f}; outside the categories: {none} -> {out_dir}")


def model_folder(name: str) -> str:
    """A folder name for a model name or path (stanford-crfm/alias-gpt2-small-x21 -> alias-gpt2-small-x21)."""
    return Path(name.rstrip("/")).name



# -- claims (common/claims.py): judged from the saved head_scores.csv ------------------------------

POST_L1H5, POST_L1H5_TOL = 0.6, 0.1  # the post gives one decimal ("about 0.6"), from one prompt
POST_FLOOR, POST_FLOOR_TOL = 1.2, 0.05  # "1.2 or more", one decimal: a head at 1.15 rounds to 1.2


def check_head_survey(out_dir) -> Evidence:
    """The target's score (mean, 95% CI) near the published 0.6 and every other head's at or above
    the published floor; on a planted model: the target is the lowest head, its CI apart from the
    next-lowest head's."""
    out_dir = Path(out_dir)
    table = load_table(out_dir, "head_scores").sort_values("score_mean").reset_index(drop=True)
    layer, head = target(out_dir)
    me = (table.layer == layer) & (table["head"] == head)
    t, others = table[me].iloc[0], table[~me]
    nxt = others.iloc[0]
    t_ci, n_ci = interval(t.score_mean, t.score_ci95), interval(nxt.score_mean, nxt.score_ci95)
    rank = int((table.score_mean < t.score_mean).sum()) + 1
    args = load_meta(out_dir)["args"]
    proto = protocol(args)
    post = proto == "post" and args.get("seq_len") == POST_PROTOCOL.survey_words
    return Evidence(
        f"L{layer}H{head}: {t.score_mean:.3f} ± {t.score_ci95:.3f} (rank {rank} of {len(table)}); next lowest "
        f"L{int(nxt.layer)}H{int(nxt['head'])}: {nxt.score_mean:.3f} ± {nxt.score_ci95:.3f} (protocol: {proto})",
        {"target_score": number(t.score_mean, t_ci), "next_lowest_score": number(nxt.score_mean, n_ci),
         "target_rank": rank, "n_heads": len(table)},
        published=all_of(near(t_ci, POST_L1H5, POST_L1H5_TOL), at_least(n_ci, POST_FLOOR - POST_FLOOR_TOL)),
        holds=bool(rank == 1 and t_ci[1] < n_ci[0]),
        protocol_matches=post,
        note="" if post else "not the post's prompts (255 words of its 8 categories): the published 0.6 / 1.2 "
                             "are not comparable (run with --protocol post)")


CLAIMS = [Claim(
    "head-survey", SCRIPT, "L1H5 follows the three rules best of all heads: semantic category score about 0.6, "
    "every other head 1.2 or more", POST, "L1H5 ~0.6; every other head >= 1.2", "head_scores.png", "head_scores.csv",
    f"L1H5's 95% CI within {POST_L1H5} ± {POST_L1H5_TOL} (one published decimal) and the next-lowest head's CI at "
    f"or above {POST_FLOOR - POST_FLOOR_TOL} ({POST_FLOOR} to one decimal), under the post's prompts; planted: the "
    "target is the lowest head, CIs apart", check_head_survey, protocol_bound=True)]

if __name__ == "__main__":
    raise SystemExit(main())
