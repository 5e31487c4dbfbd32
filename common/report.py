"""``report.html``: the study as one self-contained page, drawn from saved results only.

For every claim of the README's claims table the page shows the figure, the number measured here
beside the published one (with its confidence interval where the analysis has one), a status and
a link to the CSV behind the number. Statuses:

* ``reproduced`` / ``differs``: real gpt2-small; the claim's stated criterion holds or not (the
  criterion is written next to each claim, with the published number);
* ``planted: holds`` / ``planted: does not hold``: the planted demo model, whose mechanism is
  known by construction; its numbers are **not** gpt2-small's and are never compared with the
  published ones, only the claim's shape (who is lowest, which sign, which side of a threshold);
* ``shown``: a measurement without a published criterion (new analyses);
* ``not run``: no saved results, with the first line of the error when run_all recorded one.

No model is run: the page is rebuilt from ``<root>/<script>/`` files and ``<root>/run_all.json``
(run_all's per-script status, seconds and first error line), so ``run_all.py --render-only``
rebuilds it too. Images are embedded (data URIs) and CSV links are relative, so the folder can be
copied anywhere; the page has no remote script, style or font.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from common.genuine_weights import verdict_text
from common.outputs import write_text
from common.planted_names import is_planted
from common.results import read_table

RULES = [
    ("Semantic clustering", "a token attends to earlier tokens of the same category "
     "(<code>cat</code>&rarr;<code>dog</code>, <code>red</code>&rarr;<code>blue</code>, "
     "<code>Monday</code>&rarr;<code>Tuesday</code>)."),
    ("Self-suppression", "it never attends to itself, nor to earlier copies of itself."),
    ("BOS fallback", "with no in-category token before it, attention goes to BOS."),
]
MECHANISM = (
    "The head reads token identity (the token embedding through MLP0), not position. Its QK circuit "
    "W<sub>QK</sub> = W<sub>Q</sub>W<sub>K</sub><sup>T</sup> splits into a symmetric part and a "
    "smaller skew part; scaling the negative eigenvalues of the symmetric part, or a gradient update "
    "of W<sub>Q</sub>/W<sub>K</sub>, turns self-attention back on. Note: every head whose "
    "[W<sub>Q</sub> W<sub>K</sub>] has full column rank has exactly d<sub>head</sub> negative "
    "eigenvalues of W<sub>sym</sub> (Sylvester's law of inertia), so the count of negative "
    "eigenvalues alone does not single L1H5 out; token-space evidence (self-rank, self-score) does."
)


@dataclass
class Measured:
    """What a claim's saved results say: the measured value (text), whether the claim's criterion
    holds on this model (None: no criterion), and a short note."""

    value: str
    holds: bool | None
    note: str = ""


@dataclass
class Claim:
    text: str
    source: str
    script: str
    figure: str
    table: str
    published: str
    criterion: str
    measure: Callable[[Path, dict], Measured]


def _target(meta: dict) -> tuple[int, int]:
    a = meta.get("args", {})
    return int(a.get("layer", 1)), int(a.get("head", 5))


def _row(df: pd.DataFrame, **eq) -> pd.Series:
    sel = df
    for k, v in eq.items():
        sel = sel[sel[k] == v]
    if sel.empty:
        raise KeyError(f"no row with {eq}")
    return sel.iloc[0]


def _fmt(x: float, ci: float | None = None, digits: int = 3) -> str:
    s = f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"
    if ci is not None and math.isfinite(ci):
        s += f" &plusmn; {ci:.{digits}g}"
    return s


# -- one measure per claim: read the saved table, apply the claim's criterion ---------------------

def _head_scores(d: Path, meta: dict) -> Measured:
    df = read_table(d / "head_scores.csv").sort_values("score_mean").reset_index(drop=True)
    layer, head = _target(meta)
    rank = int(df.index[(df.layer == layer) & (df['head'] == head)][0]) + 1
    t = df.iloc[rank - 1]
    nxt = df[~((df.layer == layer) & (df['head'] == head))].iloc[0]
    return Measured(
        f"L{layer}H{head}: {_fmt(t.score_mean, t.score_ci95)} (rank {rank} of {len(df)}); next lowest "
        f"L{int(nxt.layer)}H{int(nxt['head'])}: {_fmt(nxt.score_mean, nxt.score_ci95)}",
        rank == 1, "" if rank == 1 else f"L{layer}H{head} is not the lowest-scoring head")


def _component_ablation(d: Path, meta: dict) -> Measured:
    df = read_table(d / "summary.csv")
    _, head = _target(meta)
    df = df[df["head"] == head]
    get = lambda name: _row(df, ablation=name, method="mean")  # noqa: E731
    clean = _row(df, ablation="clean")
    emb, mlp = get("token embedding"), get("layer-0 MLP")
    pos, att = get("positional embedding"), get("layer-0 attention")
    breaks = emb.ratio_to_clean > 1.5 and mlp.ratio_to_clean > 1.5
    # "does not break it": a change under 10% of the embedding ablation's (a ratio to a tiny clean
    # score would measure the layer-norm rescaling that any mean ablation causes, not reading position)
    keeps = all(abs(x["mean"] - clean["mean"]) < 0.1 * abs(emb["mean"] - clean["mean"]) for x in (pos, att))
    return Measured(
        f"clean {_fmt(clean['mean'], clean.ci95)}; embedding {_fmt(emb['mean'], emb.ci95)}, MLP0 "
        f"{_fmt(mlp['mean'], mlp.ci95)}; positions {_fmt(pos['mean'], pos.ci95)}, layer-0 attention "
        f"{_fmt(att['mean'], att.ci95)} (mean ablation)", breaks and keeps)


def _position_independence(d: Path, meta: dict) -> Measured:
    df = read_table(d / "position_independence.csv")
    _, head = _target(meta)
    df = df[df["head"] == head]
    r = {v: float(x) for v, x in zip(df.variant, df.pearson_r)}
    return Measured(", ".join(f"{k} r = {v:.4f}" for k, v in r.items()), min(r.values()) > 0.99)


def _spectrum(d: Path, meta: dict) -> Measured:
    df = read_table(d / "spectrum_summary.csv")
    layer, head = _target(meta)
    r = _row(df, layer=layer, head=head, basis="residual")
    top = next(c for c in df.columns if c.startswith("n_negative_top"))
    value = (f"{int(r[top])} of the {int(r.top_k)} largest eigenvalues negative; largest singular value "
             f"{r.sv_max_sym:.3f} (sym) vs {r.sv_max_skew:.3f} (skew); all non-zero: {int(r.n_negative)} "
             f"negative, {int(r.n_positive)} positive")
    return Measured(value, r.sv_max_sym > r.sv_max_skew,
                    "the negative count equals d_head for every full-rank head (Sylvester): not evidence by itself")


def _downstream(d: Path, meta: dict) -> Measured:
    df = read_table(d / "downstream_summary.csv")
    whole = df[df.ablation.str.startswith("whole head (mean")].iloc[0]
    skew = df[df.ablation.str.startswith("skew part removed")].iloc[0]
    return Measured(f"whole head (mean) drop {_fmt(whole.mean_drop, whole.ci95)}; skew part removed drop "
                    f"{_fmt(skew.mean_drop, skew.ci95)}", bool(whole.mean_drop > 0 and skew.mean_drop < 0))


def _sym_skew(d: Path, meta: dict) -> Measured:
    r = read_table(d / "numbers.csv").iloc[0]
    return Measured(f"corr(Base, Sym) {r.pearson_base_sym:.4f}; Sym explains {100 * r.variance_share_sym:.1f}% "
                    f"of the variance; ||Skew||/||Base|| {r.fro_ratio_skew_base:.3g}", bool(r.pearson_base_sym > 0.95))


def _scaling(d: Path, meta: dict) -> Measured:
    c = read_table(d / "curves.csv")
    top = lambda a: float((c[c.alpha == a].self_rank_vocab == 0).mean())  # noqa: E731
    med1 = float(c[c.alpha == 1.0].self_rank_vocab.median())
    alphas = [a for a in (0.5, 0.0, -1.0) if (c.alpha == a).any()]
    value = "; ".join(f"alpha {a:g}: self is the top key for {100 * top(a):.0f}%" for a in alphas)
    value += f"; unmodified (alpha 1): median self-rank {med1:.0f}"
    return Measured(value, bool(0.0 in alphas and top(0.0) >= 0.9 and med1 >= 100))


def _rank_grid(d: Path, meta: dict) -> Measured:
    g = read_table(d / "grid.csv")
    base = g[g.scale == 1.0]
    best = g.loc[g["acc@1"].idxmax()]
    value = (f"unedited mean self-rank {base.mean_rank.iloc[0]:.0f}; best edit k = {int(best.k)}, scale "
             f"{best.scale:g}: self top-1 for {100 * best['acc@1']:.1f}% of {int(best.n_queries)} queries") \
        if not base.empty else f"best acc@1 {best['acc@1']:.3f}"
    return Measured(value, None)


def _cosine(d: Path, meta: dict) -> Measured:
    s = json.loads((d / "summary.json").read_text())
    lo, hi = s.get("peak_ci", [math.nan, math.nan])
    return Measured(f"peak of (score - self-score) at cosine {s['peak_cosine']:.3f} "
                    f"(mean difference {s['peak_mean_diff']:.3g}, 95% CI [{lo:.3g}, {hi:.3g}])",
                    bool(s.get("peak_below_one")))


def _clustering(d: Path, meta: dict) -> Measured:
    ex = read_table(d / "examples.csv")
    q = json.loads((d / "quality.json").read_text()) if (d / "quality.json").exists() else {}
    parts = [html.escape(f"{e.example.strip()}: {e.companion_fraction:.0%}" if e.in_graph
                         else f"{e.example.strip()}: not in graph") for e in ex.itertuples()]
    found = ex[ex.in_graph.astype(bool)]
    holds = bool(len(found)) and bool((found.companion_fraction >= 0.5).all())
    extra = f"; ARI {q['ari']:.3f} vs the category lists" if "ari" in q else ""
    return Measured("companions in the same community: " + ", ".join(parts) + extra, holds)


def _steering(d: Path, meta: dict) -> Measured:
    v = read_table(d / "variants.csv").set_index("variant")
    o, p = v.loc["original"], v.loc["gradient promote"]
    return Measured(f"mass on self+copies: original {o.mass_self_and_copies:.3g}, after the gradient update "
                    f"{p.mass_self_and_copies:.3g}", bool(o.mass_self_and_copies < 0.05 and p.mass_self_and_copies > 0.5))


def _semantic(d: Path, meta: dict) -> Measured:
    n = read_table(d / "naive_vs_head.csv")
    a = _row(n, variant="naive_cosine", prompts="all")
    b = _row(n, variant="naive_cosine_no_self", prompts="all")
    return Measured(f"KL(head || naive cosine) {a.kl:.3f}; with self and copies masked {b.kl:.3f}; "
                    f"naive puts {a.naive_self_mass:.3f} on self+copies, the head {a.head_self_mass:.2g}",
                    bool(a.kl > b.kl and a.naive_self_mass > 10 * max(a.head_self_mass, 1e-9)))


def _rules(d: Path, meta: dict) -> Measured:
    e = read_table(d / "explained.csv")
    r = _row(e, variant="rules", baseline="mean")
    return Measured(f"the rules explain {100 * r.explained:.1f}% [{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}] of the "
                    f"mean-ablation KL", None)


def _token_space(d: Path, meta: dict) -> Measured:
    t = read_table(d / "token_self_suppression.csv")
    w = read_table(d / "weights_survey.csv")
    layer, head = _target(meta)
    cat = t[t.subset == "category"]
    me = _row(cat, layer=layer, head=head)
    others = cat[~((cat.layer == layer) & (cat["head"] == head))]
    wt = _row(w, layer=layer, head=head)
    rank = int((w.n_negative_top > wt.n_negative_top).sum()) + 1
    return Measured(
        f"own key's mean percentile among all vocabulary keys (category words; 1 = last): L{layer}H{head} "
        f"{me.mean_self_rank_pct:.3f}, best other head of the layer {others.mean_self_rank_pct.max():.3f}; "
        f"negatives among the top {int(wt.top_k)} eigenvalues: {int(wt.n_negative_top)} (rank {rank} of {len(w)} heads); "
        f"{int(w.full_column_rank.sum())} of {len(w)} heads full rank",
        bool(me.mean_self_rank_pct > others.mean_self_rank_pct.max()))


def _succession(d: Path, meta: dict) -> Measured:
    v = json.loads((d / "summary.json").read_text())["verdict"]
    return Measured(html.escape(f"{v['text']} ({v['scope']})"), None)


CLAIMS = [
    Claim("L1H5 scores ~0.6 on the semantic category score, every other head >= 1.2", "post",
          "characterize_head", "head_scores.png", "head_scores.csv", "0.6 vs >= 1.2",
          "the studied head is the lowest-scoring head of the model", _head_scores),
    Claim("Ablating the token embedding or MLP0 breaks the head; positions and layer-0 attention do not", "post",
          "component_ablation", "ablation_boxplot.png", "summary.csv", "embedding -> ~2.1, MLP0 -> ~1.75 (from ~0.6)",
          "embedding and MLP0 ablation raise the score > 1.5x; positions and layer-0 attention change it by less "
          "than 10% of the embedding ablation's change",
          _component_ablation),
    Claim("Same tokens at other positions give the same token-pair pattern", "post", "component_ablation",
          "position_independence.png", "position_independence.csv", "qualitative",
          "pattern correlation > 0.99 under shuffled, shifted and padded positions", _position_independence),
    Claim("33 of the 64 largest eigenvalues of W_sym are negative; largest singular value 1.86 (sym) vs 1.34 (skew)",
          "post", "skew_analysis", "spectrum_target.png", "spectrum_summary.csv", "33/64; 1.86 vs 1.34",
          "the symmetric part dominates (largest singular value above the skew part's)", _spectrum),
    Claim("Removing only the skew part helps the correct-token logit", "post", "skew_analysis", "downstream.png",
          "downstream_summary.csv", "0.44 vs -0.35", "ablating the whole head hurts (drop > 0); removing only "
          "the skew part helps (drop < 0)", _downstream),
    Claim("The negative-eigenvalue count does not single L1H5 out; the self-rank of each token in token space does",
          "new (Sylvester's law of inertia)", "self_suppression_survey", "self_suppression.png",
          "token_self_suppression.csv", "33/64 is not distinctive (every full-rank head: 64/64)",
          "the studied head ranks each category word's own key lower than every other head of its layer does",
          _token_space),
    Claim("The symmetric part alone reproduces the group heatmap", "post", "svd_sym_skew_heatmap",
          "scores_heatmaps.png", "numbers.csv", "qualitative (visual)", "corr(Base, Sym) > 0.95 on the group tokens",
          _sym_skew),
    Claim("Scaling the negative eigenvalues to 0.5 / 0 / -1 turns self-attention back on", "post",
          "svd_group_scaling_heatmap", "scaling_patterns.png", "curves.csv", "qualitative",
          "at alpha = 0 self is the top key over the vocabulary for >= 90% of the group tokens; unmodified it is not",
          _scaling),
    Claim("Self-rank over the vocabulary vs k and scale (the original needed ~40 GB of RAM)", "original repository",
          "svd_rank_ablation", "grid_heatmaps.png", "grid.csv", "grid (no single number)", "none (measurement)",
          _rank_grid),
    Claim("Attention peaks at a cosine similarity just below 1.0, not at 1.0", "post", "cosine_attention_analysis",
          "cosine_attention.png", "cosine_attention.csv", "peak just below 1", "the peak window lies below cosine 1",
          _cosine),
    Claim("' red' clusters with colours, ' 69' with two-digit numbers, 'Monday' with weekdays, ' Italy' with countries",
          "original repository", "clustering", "community_map.png", "examples.csv", "qualitative",
          "every example present in the graph shares its community with >= 50% of its companions", _clustering),
    Claim("A gradient update of W_Q/W_K steers self-attention", "original repository", "gradient_steering",
          "group_heatmaps.png", "variants.csv", "qualitative",
          "self+copies mass < 0.05 before and > 0.5 after the promoting update", _steering),
    Claim("L1H5 differs from naive similarity attention", "original repository", "semantic_head",
          "naive_vs_head.png", "naive_vs_head.csv", "qualitative",
          "naive cosine attention is closer to the head once self and copies are masked", _semantic),
    Claim("How much of the head's effect the three rules explain (anchor: copy suppression of L10H7 explains 76.9%)",
          "new", "rule_preserving_ablation", "explained.png", "explained.csv", "none for L1H5 (76.9% is L10H7's)",
          "none (measurement)", _rules),
    Claim("L1H5 serves succession (Monday -> Tuesday); the original printed STRONG > 0.5 / Moderate > 0.1 / Weak but "
          "never reported the result", "original repository", "succession_ablation", "effects.png", "effect_summary.csv",
          "never reported", "none (the verdict and its 95% CI are the measurement)", _succession),
]


# -- the page -------------------------------------------------------------------------------------

@dataclass
class ClaimRow:
    claim: Claim
    measured: Measured | None
    status: str
    error: str = ""


def evaluate(root: Path, model: str) -> list[ClaimRow]:
    """Every claim's measured value and status from the saved results under ``root``."""
    runs = run_record(root)
    planted = is_planted(model)
    rows = []
    for c in CLAIMS:
        d = root / c.script
        run = runs.get(f"{c.script}.py", {})
        if not (d / "meta.json").exists() or not (d / c.table).exists():
            why = run.get("error") or (f"run_all status: {run['status']}" if run.get("status") else "no saved results")
            rows.append(ClaimRow(c, None, "not run", why))
            continue
        try:
            m = c.measure(d, json.loads((d / "meta.json").read_text()))
        except Exception as exc:  # a malformed table is reported on the page, never hidden
            rows.append(ClaimRow(c, None, "not run", f"could not read results: {type(exc).__name__}: {exc}"))
            continue
        if m.holds is None:
            status = "shown"
        elif planted:
            status = "planted: holds" if m.holds else "planted: does not hold"
        else:
            status = "reproduced" if m.holds else "differs"
        rows.append(ClaimRow(c, m, status))
    return rows


def build_report(root: str | Path, model: str) -> Path:
    """Write ``<root>/report.html`` from the saved results under ``root``; returns its path."""
    root = Path(root)
    rows = evaluate(root, model)
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/meta.json"))}
    page = _page(root, model, rows, metas, run_record(root))
    return write_text(root / "report.html", page)


def run_record(root: Path) -> dict:
    """run_all.json's per-script record (status, seconds, first error line); {} when absent or unreadable."""
    path = Path(root) / "run_all.json"
    try:
        return json.loads(path.read_text()).get("steps", {}) if path.exists() else {}
    except ValueError:
        return {}


def _img(path: Path) -> str:
    if not path.exists():
        return '<p class="missing">figure missing</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


STATUS_CLASS = {"reproduced": "ok", "planted: holds": "ok", "differs": "bad", "planted: does not hold": "bad",
                "shown": "info", "not run": "none"}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
.banner{padding:.6em 1em;border-radius:6px;margin:1em 0;background:#eef4fb;border:1px solid #bcd}
.banner.planted{background:#fff4e0;border-color:#e0b060}
table{border-collapse:collapse;width:100%;font-size:.92em} th,td{border:1px solid #ddd;padding:.35em .5em;
vertical-align:top;text-align:left} th{background:#f4f4f4}
.status{font-weight:600;white-space:nowrap} .ok{color:#17692f} .bad{color:#a11} .info{color:#245}
.none{color:#777} .claim img{max-width:100%;border:1px solid #eee} .claim{margin:1.5em 0}
.small{font-size:.85em;color:#555} code{background:#f3f3f3;padding:0 .2em}
"""

# Marks every image once the browser has decoded it, so an offline check can count broken images.
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-loaded', good ? '1' : '0'); if (good) ok++;
  }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _page(root: Path, model: str, rows: list[ClaimRow], metas: dict, runs: dict) -> str:
    planted = is_planted(model)
    any_meta = next(iter(metas.values()), {})
    verdict = verdict_text(any_meta) or ("planted (demo model built by common/planted.py)" if planted
                                         else "not checked")
    e = html.escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>L1H5 report: {e(model)}</title><style>{CSS}</style></head><body>",
           "<h1>gpt2-small's L1H5: the self-suppressing semantic head</h1>",
           f"<div class='banner{' planted' if planted else ''}'><b>Model:</b> {e(model)} &nbsp; "
           f"<b>Weights:</b> {e(verdict)}"
           + ("<br><b>Planted demo model:</b> a small model whose L1H5 follows the rules by construction. "
              "Its numbers test that each analysis recovers a known mechanism; they are not gpt2-small's "
              "and are never compared with the published values." if planted else "") + "</div>",
           "<h2>The three rules</h2><ol>"]
    out += [f"<li><b>{n}</b>: {t}</li>" for n, t in RULES]
    out += [f"</ol><p>{MECHANISM}</p>", "<h2>Claims</h2>",
            "<table id='claims'><tr><th>#</th><th>claim (source)</th><th>published</th><th>measured here"
            + (" (planted model)" if planted else "") + "</th><th>criterion</th><th>status</th><th>data</th></tr>"]
    for i, r in enumerate(rows, 1):
        c = r.claim
        measured = r.measured.value if r.measured else f"<span class='none'>{e(r.error)}</span>"
        note = f"<div class='small'>{e(r.measured.note)}</div>" if r.measured and r.measured.note else ""
        link = f"<a href='{e(c.script)}/{e(c.table)}'>{e(c.table)}</a>" if r.measured else ""
        out.append(f"<tr class='claim-row' data-status='{e(r.status)}'><td>{i}</td><td>{e(c.text)} "
                   f"<span class='small'>({e(c.source)})</span></td><td>{e(c.published)}</td>"
                   f"<td>{measured}{note}</td><td class='small'>{e(c.criterion)}</td>"
                   f"<td class='status {STATUS_CLASS[r.status]}'>{e(r.status)}</td><td>{link}</td></tr>")
    out.append("</table>")
    for i, r in enumerate(rows, 1):
        c = r.claim
        out.append(f"<div class='claim' id='claim-{i}'><h3>{i}. {e(c.text)}</h3>"
                   f"<p class='small'><code>{e(c.script)}.py</code> &middot; status: "
                   f"<span class='status {STATUS_CLASS[r.status]}'>{e(r.status)}</span></p>")
        out.append(_img(root / c.script / c.figure) if r.measured else f"<p class='none'>not run: {e(r.error)}</p>")
        out.append("</div>")
    out.append(_footer(metas, runs))
    out.append(f"<script>{CHECK_SCRIPT}</script></body></html>")
    return "\n".join(out)


def _footer(metas: dict, runs: dict) -> str:
    e = html.escape
    versions = sorted({(m.get("version", "?"), m.get("torch", "?"), m.get("transformer_lens", "?"))
                       for m in metas.values()})
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(str(m.get('args', {}).get('seed', '')))}</td>"
        f"<td>{e(str(runs.get(name + '.py', {}).get('seconds', '')))}</td><td>{e(m.get('finished', ''))}</td></tr>"
        for name, m in metas.items())
    vtext = "; ".join(f"commit {v[0]}, torch {v[1]}, transformer_lens {v[2]}" for v in versions)
    return ("<h2>Run</h2><p class='small'>" + e(vtext) + "</p><table class='small'><tr><th>script</th><th>seed</th>"
            "<th>seconds</th><th>finished</th></tr>" + rows + "</table>")
