"""``report.html``, ``claims.json``: the study as one self-contained page, drawn from saved results only.

The claims are declared beside the analyses that check them (each script's ``CLAIMS``, gathered by
run_all.py); this module only evaluates them on the saved results and renders. :func:`evaluate`
makes one record per claim (id, script, claim, source, published, measured numbers with CIs,
criterion, status), written as ``<root>/claims.json``; report.html (and run_all's INDEX.md) are made
from that file. What a status means is stated once, in :mod:`common.claims`.

No model is run: the records come from ``<root>/<script>/`` files and ``<root>/run_all.json``
(run_all's per-script status, seconds and first error line), so ``run_all.py --render-only``
rebuilds them too. Images are embedded (data URIs) and CSV links are relative, so the folder can be
copied anywhere; the page has no remote script, style or font.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from common.claims import (DIFFERS, FAILS, HOLDS, INCONCLUSIVE, MEASURED, NOT_RUN, REPRODUCED, SHOWN, Claim,
                           model_kind, status)
from common.outputs import write_json, write_text
from common.planted_names import is_planted
from common.results import verdict_text

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


def evaluate(root: str | Path, claims: list[Claim]) -> list[dict]:
    """The claims.json records: every claim's measured numbers and status from the saved results
    under ``root`` (``<root>/<script>/``), judged by what that run loaded (:mod:`common.claims`)."""
    root = Path(root)
    runs = run_record(root)
    records = []
    for c in claims:
        d = root / c.script
        run = runs.get(f"{c.script}.py", {})
        rec = {"id": c.id, "script": c.script, "claim": c.claim, "source": c.source, "published": c.published,
               "criterion": c.criterion, "figure": c.figure, "table": c.table, "model": None, "model_kind": None,
               "measured": None, "text": "", "note": "", "status": NOT_RUN, "error": ""}
        if not (d / "meta.json").exists() or not (d / c.table).exists():
            rec["error"] = run.get("error") or (f"run_all status: {run['status']}" if run.get("status")
                                                else "no saved results")
            records.append(rec)
            continue
        meta = json.loads((d / "meta.json").read_text())
        kind = model_kind(meta)
        rec.update(model=meta.get("args", {}).get("model"), model_kind=kind, weights=verdict_text(meta))
        try:
            ev = c.check(d)
        except Exception as exc:  # a malformed table is reported on the page, never hidden
            rec["error"] = f"could not read results: {type(exc).__name__}: {exc}"
            records.append(rec)
            continue
        rec.update(measured=ev.numbers, text=ev.text, note=ev.note, status=status(ev, kind),
                   published_outcome=ev.published, holds=ev.holds, protocol_matches=ev.protocol_matches)
        if c.protocol_bound:
            _judge_post_run(c, root / POST_ROOT / c.script, kind, rec)
        if c.token_space:
            rec["effective_embeddings"] = _fidelity(d)
        records.append(rec)
    return records


POST_ROOT = "post"  # <root>/post/<script>/: the --protocol post runs (make figures, make demo)


def _judge_post_run(c: Claim, post_dir: Path, kind: str, rec: dict) -> None:
    """A protocol-bound claim: the ``--protocol post`` run, when saved, is the one compared with the
    published numbers (a genuine run's status comes from it); ours stays beside it in ``rec``."""
    if not ((post_dir / "meta.json").exists() and (post_dir / c.table).exists()):
        return
    try:
        post = c.check(post_dir)
    except Exception as exc:
        rec["note"] = f"the post-protocol run could not be read: {type(exc).__name__}: {exc}"
        return
    rec["post_protocol"] = {"text": post.text, "measured": post.numbers, "published_outcome": post.published,
                            "protocol_matches": post.protocol_matches}
    rec["note"] = post.note  # the ours run's "not the post's prompts" is answered by this run
    if kind == "genuine" and model_kind(json.loads((post_dir / "meta.json").read_text())) == "genuine":
        rec["status"] = status(post, kind)


def _fidelity(d: Path) -> dict | None:
    """How faithful the effective embeddings a token-space claim used are to the head's true inputs
    (``effective_embeddings.json``, written by ``cli.start_head``), or None when not recorded."""
    path = d / "effective_embeddings.json"
    try:
        f = json.loads(path.read_text()).get("fidelity", {}) if path.exists() else {}
    except ValueError:
        return None
    keep = ("cosine_mean", "cosine_min", "score_corr", "score_rel_rmse")
    return {k: f[k] for k in keep if k in f} or None


def build_report(root: str | Path, claims: list[Claim], model: str) -> Path:
    """Write ``<root>/claims.json`` from the saved results under ``root``, then ``report.html``
    from claims.json; returns the page's path."""
    root = Path(root)
    records = evaluate(root, claims)
    write_json(root / "claims.json", records)
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/meta.json"))}
    page = _page(root, model, read_claims(root), metas, run_record(root))
    return write_text(root / "report.html", page)


def read_claims(root: str | Path) -> list[dict]:
    """claims.json under ``root`` (what report.html and INDEX.md are made from)."""
    return json.loads((Path(root) / "claims.json").read_text())


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


STATUS_CLASS = {REPRODUCED: "ok", HOLDS: "ok", DIFFERS: "bad", FAILS: "bad", INCONCLUSIVE: "info",
                MEASURED: "info", SHOWN: "info", NOT_RUN: "none"}

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


def _page(root: Path, model: str, records: list[dict], metas: dict, runs: dict) -> str:
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
           + ("<br><b>Planted demo model:</b> a small model whose L1H5 follows the rules by construction"
              + (f" except where the twin <code>{e(model)}</code> breaks them" if ":" in model else "")
              + ". Each claim is judged against the planted ground truth (<i>planted: holds / fails</i>); its "
              "numbers are not gpt2-small's and are never compared with the published values." if planted else "")
           + f"<br><span class='small'>{STATUS_HELP}</span></div>",
           "<h2>The three rules</h2><ol>"]
    out += [f"<li><b>{n}</b>: {t}</li>" for n, t in RULES]
    out += [f"</ol><p>{MECHANISM}</p>", "<h2>Claims</h2>",
            "<table id='claims'><tr><th>id</th><th>claim (source)</th><th>published</th><th>measured here"
            + (" (planted model)" if planted else "") + "</th><th>criterion</th><th>status</th><th>data</th></tr>"]
    for r in records:
        ran = r["status"] != NOT_RUN
        measured = e(r["text"]) if ran else f"<span class='none'>{e(r['error'] or 'not run')}</span>"
        extra = [r["note"]] if r.get("note") else []
        if r.get("post_protocol"):
            extra.insert(0, "under the post's protocol: " + r["post_protocol"]["text"])
        if r.get("effective_embeddings"):
            f = r["effective_embeddings"]
            extra.append("effective embeddings vs the head's true inputs: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in f.items()))
        note = "".join(f"<div class='small'>{e(x)}</div>" for x in extra)
        link = f"<a href='{e(r['script'])}/{e(r['table'])}'>{e(r['table'])}</a>" if ran else ""
        out.append(f"<tr class='claim-row' id='row-{e(r['id'])}' data-status='{e(r['status'])}'>"
                   f"<td><a href='#{e(r['id'])}'><code>{e(r['id'])}</code></a></td><td>{e(r['claim'])} "
                   f"<span class='small'>({e(r['source'])})</span></td><td>{e(r['published'])}</td>"
                   f"<td>{measured}{note}</td><td class='small'>{e(r['criterion'])}</td>"
                   f"<td class='status {STATUS_CLASS[r['status']]}'>{e(r['status'])}</td><td>{link}</td></tr>")
    out.append("</table><p class='small'>The same records, machine-readable: <a href='claims.json'>claims.json</a>."
               "</p>")
    for r in records:
        ran = r["status"] != NOT_RUN
        out.append(f"<div class='claim' id='{e(r['id'])}'><h3><code>{e(r['id'])}</code> {e(r['claim'])}</h3>"
                   f"<p class='small'><code>{e(r['script'])}.py</code> &middot; status: "
                   f"<span class='status {STATUS_CLASS[r['status']]}'>{e(r['status'])}</span></p>")
        out.append(_img(root / r["script"] / r["figure"]) if ran else f"<p class='none'>not run: {e(r['error'])}</p>")
        out.append("</div>")
    out.append(_footer(metas, runs))
    out.append(f"<script>{CHECK_SCRIPT}</script></body></html>")
    return "\n".join(out)


STATUS_HELP = ("Statuses: <i>reproduced</i> / <i>differs</i> / <i>inconclusive</i>: genuine gpt2-small, the published "
               "number (with the stated tolerance) against our 95% CI, under the published protocol; "
               "<i>planted: holds</i> / <i>planted: fails</i>: a planted model, against its ground truth; "
               "<i>measured</i>: another model, shown beside gpt2-small's published number without a verdict; "
               "<i>shown</i>: no published counterpart; <i>not run</i>: no saved results.")


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
