"""Regenerate every figure: all analyses in dependency order, with a summary table.

``make figures`` runs this on real gpt2-small, ``make demo`` on the planted model (offline). Each
script runs as its own process (as a user would run it), so one failure does not stop the others;
the run ends non-zero and names the failed scripts. A step whose script, shared code, arguments
and upstream results are unchanged since its last successful run is skipped (``--force`` reruns).
At the end ``figures/INDEX.md`` (or ``<root>/INDEX.md``) lists every figure with the claim it
supports and the command that made it.

``--render-only`` runs no analysis: it redraws every figure from the results saved under the root
(each script's ``render(out_dir)``), in seconds, e.g. after restyling a plot.

Run: python run_all.py --model planted            (make demo)
     python run_all.py --model planted --render-only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from common.outputs import default_out_dir, write_text  # noqa: E402


@dataclass
class Step:
    script: str
    claim: str
    needs: list[str] = field(default_factory=list)
    # extra arguments per model kind ("planted", "real", or "any"); "{root}" is the output root
    args: dict[str, list[str]] = field(default_factory=dict)


STEPS = [
    Step("token_freq.py", "Token frequencies (input to clustering and the cosine analysis)."),
    Step("characterize_head.py", "L1H5 follows the three rules best of all heads (score ~0.6 vs >= 1.2 on gpt2-small)."),
    Step("component_ablation.py", "L1H5 reads token identity via the embedding and MLP0, not positions or layer-0 attention."),
    Step("skew_analysis.py", "W_sym has many negative eigenvalues (33 of the top 64); the skew part is smaller and removing it helps."),
    Step("svd_sym_skew_heatmap.py", "The symmetric part of W_QK alone reproduces the head's scores on the group tokens."),
    Step("svd_group_scaling_heatmap.py", "Scaling the negative eigenvalues to <= 0 turns self-attention back on."),
    Step("svd_rank_ablation.py", "Self-rank over the vocabulary as a function of how many negative eigenvalues are scaled, and by how much."),
    Step("cosine_attention_analysis.py", "Attention peaks at a cosine similarity just below 1.0, not at 1.0 (self-suppression).",
         needs=["token_freq.py"], args={"any": ["--freq-table", "{root}/token_freq/token_freq.csv"]}),
    Step("clustering.py", "Leiden communities of L1H5's attention graph are semantic categories.", needs=["token_freq.py"],
         args={"any": ["--freq-table", "{root}/token_freq/token_freq.csv"]}),
    Step("gradient_steering.py", "A gradient update of W_Q/W_K steers self-attention on or off; compared with eigenvalue steering."),
    Step("semantic_head.py", "L1H5's QK map in SAE feature space; L1H5 vs naive similarity attention."),
    Step("rule_preserving_ablation.py", "How much of L1H5's effect on the logits the three rules explain.",
         needs=["clustering.py"], args={"any": ["--communities", "{root}/clustering/communities.csv"]}),
]


def model_kind(model: str) -> str:
    return "planted" if model == "planted" else "real"


def fingerprint(step: Step, argv: list[str], upstream: list[str]) -> str:
    h = hashlib.sha256()
    for f in [ROOT / step.script, *sorted((ROOT / "common").glob("*.py"))]:
        h.update(f.read_bytes())
    h.update(json.dumps([argv, upstream]).encode())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="gpt2-small", help="'gpt2-small', 'planted' or a local HF GPT-2 folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="rerun steps even when up to date")
    p.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    p.add_argument("--root", default=None, help="output root (default figures/, figures/demo/ for planted)")
    p.add_argument("--render-only", action="store_true",
                   help="run no analysis: redraw every figure from the saved results under the root")
    args = p.parse_args(argv)

    only = {s.strip().removesuffix(".py") + ".py" for s in args.only.split(",") if s.strip()}
    unknown = only - {s.script for s in STEPS}
    if unknown:
        p.error(f"unknown script(s) {sorted(unknown)}; choose from {[s.script for s in STEPS]}")
    root = Path(args.root) if args.root else default_out_dir("x", args.model).parent
    root.mkdir(parents=True, exist_ok=True)
    kind = model_kind(args.model)
    console = Console()
    if args.render_only:
        return render_all(root, [s for s in STEPS if not only or s.script in only], args.model, console)
    stamps: dict[str, str] = {}
    rows = []
    for step in STEPS:
        name = step.script.removesuffix(".py")
        if only and step.script not in only:
            continue
        if not (ROOT / step.script).exists():
            rows.append((step.script, 0.0, 0, "missing"))
            continue
        out = root / name
        shown_root = root.resolve().relative_to(ROOT) if root.resolve().is_relative_to(ROOT) else root
        extra = [a.format(root=shown_root) for a in step.args.get("any", []) + step.args.get(kind, [])]
        cmd = [sys.executable, step.script, "--model", args.model, "--device", args.device,
               "--out", str(shown_root / name), *extra]
        stamp = fingerprint(step, cmd[2:], [stamps.get(n, "") for n in step.needs])
        stamps[step.script] = stamp
        stamp_file = out / ".run_all.stamp"
        if not args.force and stamp_file.exists() and stamp_file.read_text() == stamp and (out / "meta.json").exists():
            rows.append((step.script, 0.0, n_outputs(out), "up to date"))
            continue
        console.rule(f"[bold]{step.script}")
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT)
        dt = time.time() - t0
        ok = proc.returncode == 0
        if ok:
            write_text(stamp_file, stamp)
        elif stamp_file.exists():
            stamp_file.unlink()
        rows.append((step.script, dt, n_outputs(out), "ok" if ok else f"FAILED (exit {proc.returncode})"))

    write_index(root, args.model)
    table = Table(title=f"run_all --model {args.model}")
    for c in ("script", "seconds", "outputs", "status"):
        table.add_column(c)
    for script, dt, n, status in rows:
        style = "red" if status.startswith(("FAILED", "missing")) else None
        table.add_row(script, f"{dt:.1f}", str(n), status, style=style)
    console.print(table)
    failed = [r[0] for r in rows if r[3].startswith(("FAILED", "missing"))]
    if failed:
        console.print(f"[red]failed or missing: {', '.join(failed)}")
        return 1
    return 0


def render_all(root: Path, steps: list[Step], model: str, console: Console) -> int:
    """Every script's ``render(out_dir)`` on its saved results (no model is loaded)."""
    table = Table(title=f"run_all --render-only ({root})")
    for c in ("script", "seconds", "figures", "status"):
        table.add_column(c)
    failed = []
    for step in steps:
        out = root / step.script.removesuffix(".py")
        if not (out / "meta.json").exists():
            table.add_row(step.script, "", "", "no saved results", style="yellow")
            continue
        t0 = time.time()
        try:
            figures = importlib.import_module(step.script.removesuffix(".py")).render(out)
            table.add_row(step.script, f"{time.time() - t0:.1f}", str(len(figures or [])), "ok")
        except Exception as exc:  # one broken figure must not stop the others
            failed.append(step.script)
            table.add_row(step.script, f"{time.time() - t0:.1f}", "", f"FAILED ({type(exc).__name__}: {exc})", style="red")
    write_index(root, model)
    console.print(table)
    return 1 if failed else 0


def n_outputs(out: Path) -> int:
    return sum(1 for f in out.glob("*") if f.is_file() and not f.name.startswith(".")) if out.exists() else 0


def write_index(root: Path, model: str) -> None:
    """INDEX.md: every figure under ``root`` with the claim it supports and the command that made it."""
    lines = [f"# Figures ({'planted demo model' if model == 'planted' else model})", "",
             "Regenerate everything with `make demo` (planted, offline) or `make figures` (gpt2-small).", ""]
    for step in STEPS:
        out = root / step.script.removesuffix(".py")
        figs = sorted(f for f in out.glob("*") if f.suffix in (".png", ".html", ".svg")) if out.exists() else []
        if not figs:
            continue
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
        cmd = "python " + step.script + " " + " ".join(meta.get("argv") or [])
        lines += [f"## {step.script}", "", f"Claim: {step.claim}", "", f"Command: `{cmd.strip()}`", ""]
        lines += [f"- [{f.name}]({out.name}/{f.name})" for f in figs] + [""]
    write_text(root / "INDEX.md", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
