"""Regenerate every figure: all analyses in dependency order, with a summary table.

``make figures`` runs this on real gpt2-small, ``make demo`` on the planted model (offline). Each
script runs as its own process (as a user would run it), so one failure does not stop the others;
the run ends non-zero and names the failed scripts. A step whose script, shared code, arguments
and upstream results are unchanged since its last successful run is skipped (``--force`` reruns).
At the end ``figures/INDEX.md`` (or ``<root>/INDEX.md``) lists every figure with the claim it
supports and the command that made it, ``run_all.json`` records each script's status, seconds and
first error line, and ``report.html`` (common/report.py) shows the whole study on one page.

Inputs that would otherwise come from the network are passed on: ``--text PATH`` (a text file or
folder) to every script that reads natural text (token_freq.py, rule_preserving_ablation.py,
succession_ablation.py) and ``--sae-path DIR`` (a folder written by ``sae.save_model``) to
semantic_head.py; with a populated Hugging Face cache for the model and ``HF_HUB_OFFLINE=1`` the
whole run is then offline.

Upstream results: a step that reads another step's output (the frequency table, the communities)
gets that file only if the upstream step succeeded (in this run, or earlier with an up-to-date
stamp). If it failed, the dependent runs on its documented fallback instead, never on a failed or
stale file: ``--freq-table none`` (common.freq's fallback token order) for clustering.py and
cosine_attention_analysis.py, ``--communities lists`` (the category lists) for
rule_preserving_ablation.py. The summary table and INDEX.md say so.

Before the first analysis the model is loaded once in its own process, which fills the
processed-weights cache (common.weights_cache), so every analysis memory-maps the processed
weights instead of building them (at gpt2-small size: about 1.2 instead of 2.5 GB per process).

``--render-only`` runs no analysis: it redraws every figure from the results saved under the root
(each script's ``render(out_dir)``), in seconds, e.g. after restyling a plot.

Run: python run_all.py --model planted            (make demo)
     python run_all.py --model gpt2-small --text wiki.train.raw --sae-path sae/   (make figures ARGS="...")
     python run_all.py --model planted --render-only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from common.outputs import default_out_dir, write_json, write_text  # noqa: E402
from common.genuine_weights import verdict_text  # noqa: E402
from common.report import build_report, run_record  # noqa: E402


@dataclass
class Upstream:
    """An input made by another step: ``option path`` if that step succeeded, else ``option fallback``."""

    script: str
    option: str
    path: str  # "{root}" is the output root
    fallback: str
    fallback_means: str


@dataclass
class Step:
    script: str
    claim: str
    upstream: list[Upstream] = field(default_factory=list)
    # run_all inputs this script takes: "text" -> --text PATH, "sae" -> --sae-path DIR
    inputs: list[str] = field(default_factory=list)
    # extra arguments per model kind ("planted", "real", or "any"); "{root}" is the output root
    args: dict[str, list[str]] = field(default_factory=dict)

    @property
    def needs(self) -> list[str]:
        return [u.script for u in self.upstream]


FREQ_TABLE = Upstream("token_freq.py", "--freq-table", "{root}/token_freq/token_freq.csv", "none",
                      "common.freq's fallback token order (category words, then ids ascending)")
COMMUNITIES = Upstream("clustering.py", "--communities", "{root}/clustering/communities.csv", "lists",
                       "the category lists instead of clustering.py's communities")
INPUT_OPTIONS = {"text": "--text", "sae": "--sae-path"}
NO_MODEL = {"token_freq.py"}  # steps that load no model (no need to fill the weights cache first)

STEPS = [
    Step("token_freq.py", "Token frequencies (input to clustering and the cosine analysis).", inputs=["text"]),
    Step("characterize_head.py", "L1H5 follows the three rules best of all heads (score ~0.6 vs >= 1.2 on gpt2-small)."),
    Step("component_ablation.py", "L1H5 reads token identity via the embedding and MLP0, not positions or layer-0 attention."),
    Step("skew_analysis.py", "W_sym has many negative eigenvalues (33 of the top 64); the skew part is smaller and removing it helps."),
    Step("self_suppression_survey.py", "Every full-rank head has d_head negative eigenvalues (Sylvester), so the count does not "
         "single L1H5 out; in token space L1H5 ranks each token's own key last."),
    Step("svd_sym_skew_heatmap.py", "The symmetric part of W_QK alone reproduces the head's scores on the group tokens."),
    Step("svd_group_scaling_heatmap.py", "Scaling the negative eigenvalues to <= 0 turns self-attention back on."),
    Step("svd_rank_ablation.py", "Self-rank over the vocabulary as a function of how many negative eigenvalues are scaled, and by how much."),
    Step("cosine_attention_analysis.py", "Attention peaks at a cosine similarity just below 1.0, not at 1.0 (self-suppression).",
         upstream=[FREQ_TABLE]),
    Step("clustering.py", "Leiden communities of L1H5's attention graph are semantic categories.", upstream=[FREQ_TABLE]),
    Step("gradient_steering.py", "A gradient update of W_Q/W_K steers self-attention on or off; compared with eigenvalue steering."),
    Step("semantic_head.py", "L1H5's QK map in SAE feature space; L1H5 vs naive similarity attention.", inputs=["sae"]),
    Step("rule_preserving_ablation.py", "How much of L1H5's effect on the logits the three rules explain.",
         upstream=[COMMUNITIES], inputs=["text"]),
    Step("succession_ablation.py", "Whether the model uses L1H5 for succession (Monday -> Tuesday), and which later heads read it.",
         inputs=["text"]),
]


def model_kind(model: str) -> str:
    return "planted" if model == "planted" else "real"


def fingerprint(step: Step, argv: list[str], upstream: list[str]) -> str:
    h = hashlib.sha256()
    for f in [ROOT / step.script, *sorted((ROOT / "common").glob("*.py"))]:
        h.update(f.read_bytes())
    h.update(json.dumps([argv, upstream]).encode())
    return h.hexdigest()[:16]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="gpt2-small", help="'gpt2-small', 'planted' or a local HF GPT-2 folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="rerun steps even when up to date")
    p.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    p.add_argument("--root", default=None, help="output root (default figures/, figures/demo/ for planted)")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="text file or folder for the scripts that read natural text "
                        f"({', '.join(s.script for s in STEPS if 'text' in s.inputs)}) instead of WikiText")
    p.add_argument("--sae-path", default=None, metavar="DIR",
                   help="local SAE folder (sae.save_model) for semantic_head.py instead of the hub's")
    p.add_argument("--render-only", action="store_true",
                   help="run no analysis: redraw every figure from the saved results under the root")
    args = p.parse_args(argv)
    args.only_set = {s.strip().removesuffix(".py") + ".py" for s in args.only.split(",") if s.strip()}
    unknown = args.only_set - {s.script for s in STEPS}
    if unknown:
        p.error(f"unknown script(s) {sorted(unknown)}; choose from {[s.script for s in STEPS]}")
    for option, value in (("--text", args.text), ("--sae-path", args.sae_path)):
        if value is not None and not Path(value).expanduser().exists():
            p.error(f"{option} {value}: no such file or folder")
    if args.sae_path is not None and not Path(args.sae_path).expanduser().is_dir():
        p.error(f"--sae-path {args.sae_path}: not a folder (expected one written by sae.save_model)")
    return args


def shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (commands and stamps stay portable)."""
    path = Path(path)
    resolved = path.resolve()
    return resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path


def step_command(step: Step, args: argparse.Namespace, root: Path, upstream_ok: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(command, notes): the step's command line, and a note for every fallback used."""
    kind = model_kind(args.model)
    r = shown(root)
    extra = [a.format(root=r) for a in step.args.get("any", []) + step.args.get(kind, [])]
    notes = []
    for u in step.upstream:
        if upstream_ok.get(u.script, False):
            extra += [u.option, u.path.format(root=r)]
        else:
            extra += [u.option, u.fallback]
            notes.append(f"{u.script} failed or has no results: {u.option} {u.fallback} ({u.fallback_means})")
    values = {"text": args.text, "sae": args.sae_path}
    for name in step.inputs:
        if values[name] is not None:
            extra += [INPUT_OPTIONS[name], str(Path(values[name]).expanduser().resolve())]
    cmd = [sys.executable, step.script, "--model", args.model, "--device", args.device, "--out", str(r / step.script.removesuffix(".py")), *extra]
    return cmd, notes


def succeeded_before(root: Path, script: str) -> bool:
    """An earlier run of ``script`` under ``root`` succeeded and is intact (stamp and meta.json)."""
    out = root / script.removesuffix(".py")
    return (out / ".run_all.stamp").exists() and (out / "meta.json").exists()


def prepare_model(args: argparse.Namespace, console: Console) -> tuple[float, str]:
    """Load the model once in its own process, so the processed-weights cache is filled before
    the analyses start (each of them then maps it instead of building it)."""
    code = ("import sys; from common.model import load_model, ModelUnavailable\n"
            "try:\n    load_model(sys.argv[1], sys.argv[2])\n"
            "except ModelUnavailable as exc:\n    print(f'error: {exc}', file=sys.stderr); raise SystemExit(2)\n")
    console.rule("[bold]processed weights (load the model once)")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code, args.model, args.device], cwd=ROOT)
    return time.time() - t0, "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = args.only_set
    root = Path(args.root) if args.root else default_out_dir("x", args.model).parent
    root.mkdir(parents=True, exist_ok=True)
    console = Console()
    if args.render_only:
        return render_all(root, [s for s in STEPS if not only or s.script in only], args.model, console)
    stamps: dict[str, str] = {}
    ok: dict[str, bool] = {}
    record = run_record(root)  # per script: status, seconds, first error line (report.html reads it)
    rows = []
    prepared = False
    inputs_stamp = input_signature(args)
    for step in STEPS:
        name = step.script.removesuffix(".py")
        if only and step.script not in only:
            continue
        if not (ROOT / step.script).exists():
            rows.append((step.script, 0.0, 0, "missing", ""))
            continue
        out = root / name
        upstream_ok = {u.script: ok.get(u.script, succeeded_before(root, u.script))
                       and (root / u.path.format(root=".")).exists() for u in step.upstream}
        cmd, notes = step_command(step, args, root, upstream_ok)
        upstream_stamps = [stamps.get(n) or _read_stamp(root, n) for n in step.needs]
        used = [inputs_stamp[i] for i in step.inputs if i in inputs_stamp]
        stamp = fingerprint(step, cmd[2:], upstream_stamps + used)
        stamps[step.script] = stamp
        stamp_file = out / ".run_all.stamp"
        note = "; ".join(notes)
        if not args.force and stamp_file.exists() and stamp_file.read_text() == stamp and (out / "meta.json").exists():
            ok[step.script] = True
            rows.append((step.script, 0.0, n_outputs(out), "up to date", note))
            continue
        if not prepared and step.script not in NO_MODEL:
            prepared = True
            dt, status = prepare_model(args, console)
            rows.append(("(model load: fills the weights cache)", dt, 0, status, ""))
        console.rule(f"[bold]{step.script}")
        for n in notes:
            console.print(f"[yellow]fallback: {n}")
        t0 = time.time()
        returncode, error = run_step(cmd)
        dt = time.time() - t0
        ok[step.script] = returncode == 0
        record[step.script] = {"status": "ok" if ok[step.script] else f"FAILED (exit {returncode})",
                               "seconds": round(dt, 1), "error": "" if ok[step.script] else error, "note": note}
        if ok[step.script]:
            write_text(stamp_file, stamp)
        elif stamp_file.exists():
            stamp_file.unlink()
        rows.append((step.script, dt, n_outputs(out), record[step.script]["status"], note))

    write_index(root, args.model)
    write_json(root / "run_all.json", {"model": args.model, "steps": record})
    build_report(root, args.model)
    table = Table(title=f"run_all --model {args.model}")
    for c in ("script", "seconds", "outputs", "status", "notes"):
        table.add_column(c)
    for script, dt, n, status, note in rows:
        style = "red" if status.startswith(("FAILED", "missing")) else ("yellow" if note else None)
        table.add_row(script, f"{dt:.1f}", str(n), status, note, style=style)
    console.print(table)
    failed = [r[0] for r in rows if r[3].startswith(("FAILED", "missing"))]
    if failed:
        console.print(f"[red]failed or missing: {', '.join(failed)}")
        return 1
    return 0


def run_step(cmd: list[str]) -> tuple[int, str]:
    """Run one script, its stderr passed through as it comes (progress bars stay live); returns the
    exit code and the error's first line (the script's "error: ..." line, else the last line)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    tail = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-16384:]
    returncode = proc.wait()
    lines = [ln.strip() for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return returncode, (errors[0] if errors else lines[-1] if lines else "")[:300]


def input_signature(args: argparse.Namespace) -> dict[str, str]:
    """A stamp of each given input's files (path, size, mtime), so a changed text or SAE reruns its readers."""
    out = {}
    for name, value in (("text", args.text), ("sae", args.sae_path)):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        out[name] = h.hexdigest()[:16]
    return out


def _read_stamp(root: Path, script: str) -> str:
    f = root / script.removesuffix(".py") / ".run_all.stamp"
    return f.read_text() if f.exists() else ""


def render_all(root: Path, steps: list[Step], model: str, console: Console) -> int:
    """Every script's ``render(out_dir)`` on its saved results (no model is loaded), one process
    per core: drawing is CPU-bound and the scripts are independent."""
    table = Table(title=f"run_all --render-only ({root})")
    for c in ("script", "seconds", "figures", "status"):
        table.add_column(c)
    todo = [s.script for s in steps if (root / s.script.removesuffix(".py") / "meta.json").exists()]
    with ProcessPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        done = dict(zip(todo, pool.map(render_one, todo, [str(root)] * len(todo))))
    failed = []
    for step in steps:
        if step.script not in done:
            table.add_row(step.script, "", "", "no saved results", style="yellow")
            continue
        seconds, n_figures, error = done[step.script]
        if error:  # one broken figure must not stop the others
            failed.append(step.script)
            table.add_row(step.script, f"{seconds:.1f}", "", f"FAILED ({error})", style="red")
        else:
            table.add_row(step.script, f"{seconds:.1f}", str(n_figures), "ok")
    write_index(root, model)
    build_report(root, model)
    console.print(table)
    return 1 if failed else 0


def render_one(script: str, root: str) -> tuple[float, int, str]:
    """(seconds, figures drawn, error or "") of one script's render on its saved results."""
    t0 = time.time()
    try:
        figures = importlib.import_module(script.removesuffix(".py")).render(Path(root) / script.removesuffix(".py"))
        return time.time() - t0, len(figures or []), ""
    except Exception as exc:
        return time.time() - t0, 0, f"{type(exc).__name__}: {exc}"


def fallbacks_used(step: Step, argv: list[str]) -> list[Upstream]:
    """The upstream inputs a saved run of ``step`` replaced by their fallback (from its meta argv)."""
    return [u for u in step.upstream
            if any(a == u.option and i + 1 < len(argv) and argv[i + 1] == u.fallback for i, a in enumerate(argv))]


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
        argv = meta.get("argv") or []
        cmd = "python " + step.script + " " + " ".join(argv)
        lines += [f"## {step.script}", "", f"Claim: {step.claim}", "", f"Command: `{cmd.strip()}`", "",
                  f"Weights: {verdict_text(meta) or 'not recorded'}", ""]
        for u in fallbacks_used(step, argv):
            lines += [f"**Fallback**: {u.script} had failed or had no results when this ran, so it used "
                      f"`{u.option} {u.fallback}`: {u.fallback_means}.", ""]
        lines += [f"- [{f.name}]({out.name}/{f.name})" for f in figs] + [""]
    write_text(root / "INDEX.md", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
