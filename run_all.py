"""Regenerate every figure: all analyses in dependency order, with a summary table.

``make figures`` runs this on real gpt2-small, ``make demo`` on the planted model (offline). Each
script runs as its own process, so one failure does not stop the others; the run ends non-zero
and names the failed scripts. ``--jobs`` steps run at a time (default: 2 on a machine with two or
more cores, each with its share of the cores as torch threads), in an order that starts the
longest chain of work first; a step starts once the steps it reads from have finished. On Linux a
step's process is forked from this one after the heavy libraries (torch, transformer_lens,
pandas, matplotlib) have been imported once, which saves every step their import (about
7 s of CPU each); the repository's own modules are imported afresh by each step. Each step's
output goes to ``<root>/logs/<script>.log`` (shown live with ``--jobs 1``), and ``run_all.json``
records its wall and CPU seconds and peak memory (``prepare``: the same for the model load that
fills the processed-weights cache before the first analysis, when this run did it). A step whose
script, shared code, arguments and upstream results are unchanged since its last successful run
is skipped (``--force`` reruns).
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
cosine_attention_analysis.py, ``--communities lists`` (no communities variant) for
rule_preserving_ablation.py. The summary table and INDEX.md say so.

rule_preserving_ablation.py's headline number (the ``rules`` row, claim ``rules-explained``) uses
the word lists of common.prompts whether or not clustering.py succeeded; the communities it is
given only add a labelled ``rules_communities`` row, which is circular (the communities come from
the same head's QK scores) and is shown beside the word-list number, never instead of it.

Before the first analysis the model is loaded once in its own process, which fills the
processed-weights cache (common.weights_cache), so every analysis memory-maps the processed
weights instead of building them (at gpt2-small size: about 1.2 instead of 2.5 GB per process).

``--render-only`` runs no analysis: it redraws every figure from the results saved under the root
(each script's ``render(out_dir)``), in seconds, e.g. after restyling a plot.

Run: python run_all.py --model planted            (make demo)
     python run_all.py --model planted --jobs 1    (one step at a time, output live)
     python run_all.py --model gpt2-small --text wiki.train.raw --sae-path sae/   (make figures ARGS="...")
     python run_all.py --model planted --render-only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import runpy
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from common.outputs import default_out_dir, write_json, write_text  # noqa: E402
from common.report import POST_ROOT, build_report, read_claims, run_record  # noqa: E402
from common.results import verdict_text  # noqa: E402
from common.planted_names import check_model_name, is_planted  # noqa: E402


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
    upstream: list[Upstream] = field(default_factory=list)
    # run_all inputs this script takes: "text" -> --text PATH, "sae" -> --sae-path DIR
    inputs: list[str] = field(default_factory=list)
    # extra arguments per model kind ("planted", "real", or "any"); "{root}" is the output root
    args: dict[str, list[str]] = field(default_factory=dict)
    # scheduling hint only: CPU seconds at gpt2-small size (bench/RESULTS.md); the last run's own
    # seconds (run_all.json) replace it
    cost: float = 20.0

    @property
    def needs(self) -> list[str]:
        return [u.script for u in self.upstream]


@dataclass
class Row:
    """One line of the summary table run_all prints at the end: a step (or the model load) and how it went."""

    script: str
    seconds: float = 0.0
    cpu_seconds: float | None = None
    peak_gb: float | None = None
    outputs: int = 0  # files in the step's output folder
    status: str = ""  # "ok", "up to date", "FAILED (exit n)" or "missing"
    note: str = ""  # the fallbacks the step used

    @property
    def failed(self) -> bool:
        return self.status.startswith(("FAILED", "missing"))


FREQ_TABLE = Upstream("token_freq.py", "--freq-table", "{root}/token_freq/token_freq.csv", "none",
                      "common.freq's fallback token order (category words, then ids ascending)")
COMMUNITIES = Upstream("clustering.py", "--communities", "{root}/clustering/communities.csv", "lists",
                       "no communities variant (the rules row uses the word lists either way)")
INPUT_OPTIONS = {"text": "--text", "sae": "--sae-path", "protocol": "--protocol"}
NO_MODEL = {"token_freq.py"}  # steps that load no model (no need to fill the weights cache first)
NO_HEAD = {"token_freq.py"}  # steps without --layer/--head (every step takes --seed)
DEFAULT_HEAD = (1, 5)  # L1H5: its study goes to the model's root; another head's to <root>/L<layer>H<head>/

STEPS = [
    Step("token_freq.py", inputs=["text"], cost=15),
    Step("characterize_head.py", inputs=["protocol"], cost=18),
    Step("component_ablation.py", inputs=["protocol"], cost=35),
    Step("skew_analysis.py", cost=31),
    Step("self_suppression_survey.py", inputs=["text"], cost=44),
    Step("svd_sym_skew_heatmap.py", cost=12),
    Step("svd_group_scaling_heatmap.py", inputs=["text"], cost=14),
    Step("svd_rank_ablation.py", inputs=["text"], cost=52),
    Step("cosine_attention_analysis.py", upstream=[FREQ_TABLE], inputs=["text"], cost=14),
    Step("clustering.py", upstream=[FREQ_TABLE], inputs=["text"], cost=14),
    Step("gradient_steering.py", inputs=["text"], cost=29),
    Step("semantic_head.py", inputs=["sae"], cost=37),
    Step("rule_preserving_ablation.py", upstream=[COMMUNITIES], inputs=["text"], cost=109),
    Step("succession_ablation.py", inputs=["text"], cost=156),
    Step("composition.py", cost=10),
]


def model_kind(model: str) -> str:
    return "planted" if is_planted(model) else "real"


def fingerprint(step: Step, argv: list[str], upstream: list[str]) -> str:
    h = hashlib.sha256()
    for f in [ROOT / step.script, *sorted((ROOT / "common").glob("*.py"))]:
        h.update(f.read_bytes())
    h.update(json.dumps([argv, upstream]).encode())
    return h.hexdigest()[:16]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="gpt2-small", help="'gpt2-small', 'planted', 'planted:<twin>' or a local HF GPT-2 folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layer", type=int, default=DEFAULT_HEAD[0], help="layer of the head to study (every script's --layer)")
    p.add_argument("--head", type=int, default=DEFAULT_HEAD[1], help="head to study (every script's --head); another "
                   "head than L1H5 gets its own root, <root>/L<layer>H<head>/")
    p.add_argument("--seed", type=int, default=0, help="every script's --seed")
    p.add_argument("--force", action="store_true", help="rerun steps even when up to date")
    p.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    p.add_argument("--root", default=None, help="output root (default figures/, figures/demo/ for planted, "
                   "figures/demo-<twin>/ for planted:<twin>; with another head than L1H5, L<layer>H<head>/ inside it)")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="text file or folder for the scripts that read natural text "
                        f"({', '.join(s.script for s in STEPS if 'text' in s.inputs)}) instead of WikiText")
    p.add_argument("--sae-path", default=None, metavar="DIR",
                   help="local SAE folder (sae.save_model) for semantic_head.py instead of the hub's")
    p.add_argument("--protocol", default="ours", choices=["post", "ours"],
                   help="prompt protocol of the scripts that build category prompts (common/protocol.py); "
                        "'post' runs go under <root>/post/ by default, where the report of <root> reads them")
    p.add_argument("--render-only", action="store_true",
                   help="run no analysis: redraw every figure from the saved results under the root")
    p.add_argument("--claims-table", action="store_true",
                   help="print the README's claims table, generated from every script's CLAIMS, and exit")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="steps run at a time, each with cores/jobs torch threads (1: one at a time, output shown live)")
    args = p.parse_args(argv)
    check_model_name(args.model)  # planted:<unknown>: one line naming the twins, nothing made
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.layer < 0 or args.head < 0:
        p.error("--layer and --head must be >= 0")
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


def default_root(model: str, layer: int = DEFAULT_HEAD[0], head: int = DEFAULT_HEAD[1]) -> Path:
    """The model's figures root (common.outputs.default_out_dir's parent); for another head than
    L1H5 its own folder inside it, ``L<layer>H<head>/`` (figures/L3H4/, figures/demo/L3H4/)."""
    root = default_out_dir("x", model).parent
    return root if (layer, head) == DEFAULT_HEAD else root / f"L{layer}H{head}"


def shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (commands and stamps stay portable)."""
    path = Path(path)
    resolved = path.resolve()
    return resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved  # steps run in ROOT


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
        if name == "protocol":
            extra += [INPUT_OPTIONS[name], args.protocol]
        elif values[name] is not None:
            extra += [INPUT_OPTIONS[name], str(Path(values[name]).expanduser().resolve())]
    head = [] if step.script in NO_HEAD else ["--layer", str(args.layer), "--head", str(args.head)]
    cmd = [sys.executable, step.script, "--model", args.model, "--device", args.device, *head, "--seed", str(args.seed),
           "--out", str(r / step.script.removesuffix(".py")), *extra]
    return cmd, notes


def succeeded_before(root: Path, script: str) -> bool:
    """An earlier run of ``script`` under ``root`` succeeded and is intact (stamp and meta.json)."""
    out = root / script.removesuffix(".py")
    return (out / ".run_all.stamp").exists() and (out / "meta.json").exists()


PREPARE = "(model load: fills the weights cache)"
PREPARE_CODE = ("import sys; from common.cli import warm_weights_verdict; from common.model import load_model, ModelUnavailable\n"
                "warm_weights_verdict(sys.argv[1])\n"
                "try:\n    load_model(sys.argv[1], sys.argv[2])\n"
                "except ModelUnavailable as exc:\n    print(f'error: {exc}', file=sys.stderr); raise SystemExit(2)\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.claims_table:
        from common.claims import markdown_table

        print(markdown_table(all_claims()))
        return 0
    only = args.only_set
    root = Path(args.root) if args.root else default_root(args.model, args.layer, args.head)
    if args.protocol == "post" and not args.root:
        root = root / POST_ROOT
    root.mkdir(parents=True, exist_ok=True)
    console = Console()
    if args.render_only:
        return render_all(root, [s for s in STEPS if not only or s.script in only], args.model, console)
    t_run = time.time()
    record = run_record(root)  # per script: status, seconds, first error line (report.html reads it)
    steps = [s for s in STEPS if not only or s.script in only]
    rows = {s.script: Row(s.script, status="missing") for s in steps if not (ROOT / s.script).exists()}
    todo = [s for s in steps if s.script not in rows]
    priority = critical_path(todo, record)
    threads = max(1, usable_cores() // args.jobs)
    runner = Runner(root / "logs", args.jobs, threads, console)
    stamps: dict[str, str] = {}
    ok: dict[str, bool] = {}
    inputs_stamp = input_signature(args)
    prepare = None  # the model load before the first analysis: None (not needed yet), "running", "done"
    prepared = {}  # its record in run_all.json (the one-time fill of the processed-weights cache)
    try:
        while todo or runner.running:
            # Start what can start: every upstream of this run finished, the model prepared if needed.
            for step in sorted(todo, key=lambda st: -priority[st.script]):
                if len(runner.running) >= args.jobs:
                    break
                if any(u in {t.script for t in todo} or u in runner.running for u in step.needs):
                    continue
                name = step.script.removesuffix(".py")
                out = root / name
                upstream_ok = {u.script: ok.get(u.script, succeeded_before(root, u.script))
                               and (root / u.path.format(root=".")).exists() for u in step.upstream}
                cmd, notes = step_command(step, args, root, upstream_ok)
                upstream_stamps = [stamps.get(n) or _read_stamp(root, n) for n in step.needs]
                used = [inputs_stamp[i] for i in step.inputs if i in inputs_stamp]
                stamp = fingerprint(step, cmd[2:], upstream_stamps + used)
                note = "; ".join(notes)
                if (not args.force and (out / ".run_all.stamp").exists()
                        and (out / ".run_all.stamp").read_text() == stamp and (out / "meta.json").exists()):
                    stamps[step.script], ok[step.script] = stamp, True
                    rows[step.script] = Row(step.script, outputs=n_outputs(out), status="up to date", note=note)
                    todo.remove(step)
                    continue
                if step.script not in NO_MODEL and prepare != "done":
                    if prepare is None:
                        prepare = "running"
                        runner.start(PREPARE, ["-c", PREPARE_CODE, args.model, args.device])
                    continue  # wait for the weights cache
                stamps[step.script] = stamp
                for n in notes:
                    console.print(f"[yellow]{step.script}: fallback: {n}")
                runner.start(step.script, cmd[1:], context=(stamp, note))
                todo.remove(step)
            if not runner.running:
                if todo:  # every waiting step has a finished upstream: something would have started
                    raise RuntimeError(f"run_all: no step can start: {[t.script for t in todo]}")
                continue
            # Wait for one to finish.
            done = runner.wait_one()
            if done.script == PREPARE:  # if it failed, every analysis still runs and says why it cannot load
                prepare = "done"
                rows[PREPARE] = Row(PREPARE, done.seconds, done.cpu_seconds, done.peak_gb, status=done.status)
                prepared = done.usage()
                continue
            stamp, note = done.context
            out = root / done.script.removesuffix(".py")
            ok[done.script] = done.returncode == 0
            record[done.script] = {**done.usage(), "error": "" if ok[done.script] else done.error, "note": note}
            if ok[done.script]:
                write_text(out / ".run_all.stamp", stamp)
            elif (out / ".run_all.stamp").exists():
                (out / ".run_all.stamp").unlink()
            rows[done.script] = Row(done.script, done.seconds, done.cpu_seconds, done.peak_gb, n_outputs(out),
                                    done.status, note)
    finally:
        runner.stop_all()
    wall = time.time() - t_run

    write_json(root / "run_all.json", {"model": args.model, "layer": args.layer, "head": args.head, "seed": args.seed,
                                       "jobs": args.jobs, "threads_per_job": threads,
                                       "wall_seconds": round(wall, 1), "steps": record,
                                       **({"prepare": prepared} if prepared else {})})
    build_report(root, all_claims(), args.model)
    write_index(root, args.model)
    table = Table(title=f"run_all --model {args.model} ({args.jobs} at a time, {threads} thread(s) each): {wall:.0f} s")
    for c in ("script", "seconds", "cpu s", "peak GB", "outputs", "status", "notes"):
        table.add_column(c)
    order = [PREPARE] + [s.script for s in steps]
    for row in (rows[k] for k in order if k in rows):
        style = "red" if row.failed else ("yellow" if row.note else None)
        table.add_row(row.script, f"{row.seconds:.1f}", "" if row.cpu_seconds is None else f"{row.cpu_seconds:.1f}",
                      "" if row.peak_gb is None else f"{row.peak_gb:.2f}", str(row.outputs), row.status, row.note,
                      style=style)
    console.print(table)
    failed = [k for k in order if k in rows and rows[k].failed]
    if failed:
        console.print(f"[red]failed or missing: {', '.join(failed)}")
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# Running steps: scheduling, one process per step, logs, CPU and memory
# ----------------------------------------------------------------------------------------------


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """Two steps at a time where there are two cores or more: a step's single-threaded stretches
    (imports, Python loops, drawing) then overlap with the other's torch work. More would need
    proportionally more memory (up to ~1.5 GB per step at gpt2-small size)."""
    return min(2, usable_cores())


def critical_path(steps: list[Step], record: dict) -> dict[str, float]:
    """Priority of each step: its cost plus the costliest chain of steps that wait for it (cost =
    the last run's seconds when recorded, else ``Step.cost``), so long chains start first."""
    cost = {s.script: float(record.get(s.script, {}).get("seconds") or s.cost) for s in steps}
    waiting = {s.script: [t.script for t in steps if s.script in t.needs] for s in steps}
    memo: dict[str, float] = {}

    def rank(script: str) -> float:
        if script not in memo:
            memo[script] = cost[script] + max((rank(t) for t in waiting[script]), default=0.0)
        return memo[script]

    return {s.script: rank(s.script) for s in steps}


# Imported once by this process before the first step forks (Linux): each step then skips them.
PRELOAD = ("torch", "pandas", "matplotlib.pyplot", "transformers", "transformer_lens")


@dataclass
class Finished:
    script: str
    returncode: int
    seconds: float
    cpu_seconds: float | None
    peak_gb: float | None
    error: str
    context: object

    @property
    def status(self) -> str:
        return "ok" if self.returncode == 0 else f"FAILED (exit {self.returncode})"

    def usage(self) -> dict:
        """Its run_all.json record: status, wall and CPU seconds, peak RSS."""
        return {"status": self.status, "seconds": round(self.seconds, 1), "cpu_seconds": self.cpu_seconds,
                "peak_rss_gb": self.peak_gb}


class Runner:
    """Runs steps as separate processes, at most ``jobs`` at a time, each writing its output to
    ``logs/<script>.log`` (echoed live when one runs at a time).

    On Linux a step is forked from this process after :data:`PRELOAD` is imported, and runs its
    script with ``runpy`` as ``__main__`` (argv, working directory and ``sys.path`` as ``python
    script.py`` would have them; the repository's ``common`` modules are dropped first, so the
    step imports them afresh from ROOT). Nothing in this process uses torch before forking, so no
    thread pool is inherited. Elsewhere each step is a fresh ``python`` process. Wall and CPU
    seconds and peak RSS come from ``os.wait4``.
    """

    def __init__(self, log_dir: Path, jobs: int, threads: int, console: Console):
        self.log_dir, self.jobs, self.threads, self.console = log_dir, jobs, threads, console
        self.fork = sys.platform.startswith("linux")
        self.running: dict[str, dict] = {}
        self.preloaded = False

    def start(self, script: str, argv: list[str], context: object = None) -> None:
        """Start ``python <argv>`` (argv[0] is the script, or "-c" and code) for ``script``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / (script.removesuffix(".py").strip("()").replace(" ", "_").replace(":", "") + ".log")
        log.write_bytes(b"")
        if self.jobs == 1 or script == PREPARE:
            self.console.rule(f"[bold]{script}")
        else:
            self.console.print(f"[bold]started[/bold] {script}")
        env_threads = {} if self.jobs == 1 else {"OMP_NUM_THREADS": str(self.threads)}
        if self.fork:
            self._preload()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the step's process: never returns
                _child(log, argv, None if self.jobs == 1 else self.threads)
            proc = None
        else:
            fh = open(log, "ab")
            proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env_threads})
            fh.close()
            pid = proc.pid
        self.running[script] = {"pid": pid, "proc": proc, "log": log, "t0": time.time(), "pos": 0,
                                "context": context}

    def _preload(self) -> None:
        if not self.preloaded:
            import importlib

            import matplotlib

            matplotlib.use("Agg")
            for name in PRELOAD:
                try:
                    importlib.import_module(name)
                except ImportError:
                    pass  # the step will say what is missing
            self.preloaded = True

    def wait_one(self) -> Finished:
        """Block until a step ends; echo the live log meanwhile (one step at a time)."""
        while True:
            for script, job in list(self.running.items()):
                if self.jobs == 1:
                    self._echo(job)
                if job["proc"] is None:
                    pid, status, usage = os.wait4(job["pid"], os.WNOHANG)
                    if pid == 0:
                        continue
                    code = os.waitstatus_to_exitcode(status)
                    cpu, peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9
                else:
                    code = job["proc"].poll()
                    if code is None:
                        continue
                    cpu = peak = None
                if self.jobs == 1:
                    self._echo(job)
                del self.running[script]
                done = Finished(script, code, time.time() - job["t0"], None if cpu is None else round(cpu, 1),
                                None if peak is None else round(peak, 2), first_error(job["log"]), job["context"])
                self._report(done, job["log"])
                return done
            time.sleep(0.1)

    def _echo(self, job: dict) -> None:
        with open(job["log"], "rb") as f:
            f.seek(job["pos"])
            chunk = f.read()
        if chunk:
            job["pos"] += len(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    def _report(self, done: Finished, log: Path) -> None:
        usage = "" if done.cpu_seconds is None else f", {done.cpu_seconds:.1f} s CPU, {done.peak_gb:.2f} GB peak"
        if done.returncode == 0:
            if self.jobs > 1:
                self.console.print(f"[green]done[/green] {done.script}: {done.seconds:.1f} s{usage}")
            return
        self.console.print(f"[red]FAILED[/red] {done.script} (exit {done.returncode}, {done.seconds:.1f} s{usage}): "
                           f"{done.error}  [full output: {shown(log)}]")
        if self.jobs > 1:  # its output was not shown: the last lines say what went wrong
            lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
            tail = [ln for ln in lines if ln.strip()][-15:]
            self.console.print("\n".join("    " + ln for ln in tail), markup=False, highlight=False)

    def stop_all(self) -> None:
        """Stop every running step (on an interrupt or error in this process)."""
        import signal

        for job in self.running.values():
            try:
                os.kill(job["pid"], signal.SIGTERM)
                os.waitpid(job["pid"], 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.running.clear()


def _child(log: Path, argv: list[str], threads: int | None) -> None:
    """In the forked process: run ``python <argv>`` as a fresh interpreter would, then exit."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # new streams on the log (the parent's may be replaced objects, e.g. under pytest)
        sys.stdout = open(1, "w", buffering=1, errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
        os.chdir(ROOT)
        for name in [m for m in sys.modules if m == "common" or m.startswith("common.")]:
            del sys.modules[name]  # this process's copies: the step imports its own from ROOT
        sys.path[0] = str(ROOT)
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(threads)
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = [str(ROOT / argv[0]), *argv[1:]]
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def first_error(log: Path) -> str:
    """The step's first "error: ..." line in the last 16 KB of its output, else its last line."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 16384))
        tail = f.read()
    lines = [ln.strip() for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors[0] if errors else lines[-1] if lines else "")[:300]


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
    build_report(root, all_claims(), model)
    write_index(root, model)
    console.print(table)
    return 1 if failed else 0


def all_claims() -> list:
    """Every script's claims (its ``CLAIMS``, declared beside its analysis), in the order of STEPS."""
    return [c for step in STEPS for c in getattr(importlib.import_module(step.script.removesuffix(".py")), "CLAIMS", [])]


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
    """INDEX.md: every figure under ``root`` with the claims it supports (their status, from
    claims.json) and the command that made it."""
    claims = read_claims(root) if (root / "claims.json").exists() else []
    lines = [f"# Figures ({('planted demo model' + ('' if model == 'planted' else f' twin {model}')) if is_planted(model) else model})", "",
             "Regenerate everything with `make demo` (planted, offline) or `make figures` (gpt2-small).", ""]
    run = json.loads((root / "run_all.json").read_text()) if (root / "run_all.json").exists() else {}
    if "head" in run:
        flags = f"--layer {run['layer']} --head {run['head']} --seed {run['seed']}"
        lines += [f"Head studied: L{run['layer']}H{run['head']}, seed {run['seed']} (`ARGS=\"{flags}\"`).", ""]
    for step in STEPS:
        out = root / step.script.removesuffix(".py")
        figs = sorted(f for f in out.glob("*") if f.suffix in (".png", ".html", ".svg")) if out.exists() else []
        if not figs:
            continue
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
        argv = meta.get("argv") or []
        cmd = "python " + step.script + " " + " ".join(argv)
        mine = [c for c in claims if c["script"] + ".py" == step.script]
        lines += [f"## {step.script}", ""]
        lines += [f"Claim `{c['id']}`: {c['claim']} ({c['source']}). Published: {c['published']}. Status: "
                  f"**{c['status']}**" + (f" ({c['text']})" if c.get("text") else "")
                  + (f"; under the post's protocol (`{POST_ROOT}/{c['script']}/`): {c['post_protocol']['text']}"
                     if c.get("post_protocol") else "") + "\n" for c in mine]
        lines += ["", f"Command: `{cmd.strip()}`", "",
                  f"Weights: {verdict_text(meta) or 'not recorded'}", ""]
        for u in fallbacks_used(step, argv):
            lines += [f"**Fallback**: {u.script} had failed or had no results when this ran, so it used "
                      f"`{u.option} {u.fallback}`: {u.fallback_means}.", ""]
        lines += [f"- [{f.name}]({out.name}/{f.name})" for f in figs] + [""]
    write_text(root / "INDEX.md", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
