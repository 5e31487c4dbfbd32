"""run_all.py: which inputs reach which script, and what a dependent gets when its upstream failed.

run_all.main runs in process; the scripts it starts are subprocesses by design. To keep this fast
and exact, most tests point run_all at a stand-in repository whose scripts (one per real step)
only record the arguments they were given and succeed or fail on request; one test runs the real
token_freq.py through run_all.
"""

import json
import textwrap
from pathlib import Path

import pytest

import run_all

FAKE_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    here = Path(__file__).resolve().parent
    name, argv = Path(__file__).stem, sys.argv[1:]
    out = Path(argv[argv.index("--out") + 1])
    t0 = time.time()
    time.sleep(json.loads((here / "control.json").read_text()).get("sleep", 0))
    with open(here / "calls.jsonl", "a") as f:
        f.write(json.dumps([name, argv, [t0, time.time()], os.environ.get("OMP_NUM_THREADS")]) + "\\n")
    if name in json.loads((here / "control.json").read_text())["fail"]:
        print("error: planned failure", file=sys.stderr)
        raise SystemExit(3)
    out.mkdir(parents=True, exist_ok=True)
    if name == "token_freq":
        (out / "token_freq.csv").write_text("token,id,count\\n")
    if name == "clustering":
        (out / "communities.csv").write_text("id,community\\n")
    (out / "figure.png").write_bytes(b"png")
    (out / "meta.json").write_text(json.dumps({"argv": argv}))
''')

FAKE_MODEL = textwrap.dedent('''
    from pathlib import Path

    class ModelUnavailable(Exception):
        pass

    def load_model(name, device="cpu"):
        with open(Path(__file__).resolve().parent.parent / "prepared.txt", "a") as f:
            f.write(name + "\\n")
''')

FAKE_CLI = textwrap.dedent('''
    from pathlib import Path

    def warm_weights_verdict(name):
        with open(Path(__file__).resolve().parent.parent / "prepared.txt", "a") as f:
            f.write("verdict " + name + "\\n")
''')


class FakeRepo:
    def __init__(self, path: Path, scripts):
        self.path = path
        (path / "common").mkdir(parents=True)
        # a regular package, so it wins over the real common/ when PYTHONPATH names the repo (make test)
        (path / "common" / "__init__.py").write_text("")
        (path / "common" / "model.py").write_text(FAKE_MODEL)
        (path / "common" / "cli.py").write_text(FAKE_CLI)
        for script in scripts:
            (path / script).write_text(FAKE_SCRIPT)
        self.fail()

    def fail(self, *scripts: str, sleep: float = 0.0) -> None:
        (self.path / "control.json").write_text(json.dumps({"fail": [s.removesuffix(".py") for s in scripts],
                                                            "sleep": sleep}))

    def runs(self) -> list[list]:
        """[name, argv, [start, end], OMP_NUM_THREADS] of every run since the last ``reset``."""
        f = self.path / "calls.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []

    def calls(self) -> dict[str, list[str]]:
        """script -> argv of its last run (since the last ``reset``)."""
        return {r[0] + ".py": r[1] for r in self.runs()}

    def reset(self) -> None:
        (self.path / "calls.jsonl").unlink(missing_ok=True)


def option(argv: list[str], name: str):
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.fixture
def repo(tmp_path, monkeypatch):
    fake = FakeRepo(tmp_path / "repo", [s.script for s in run_all.STEPS])
    monkeypatch.setattr(run_all, "ROOT", fake.path)
    monkeypatch.setenv("COLUMNS", "300")  # rich: the summary table unwrapped
    return fake


def run(root: Path, *args: str) -> int:
    return run_all.main(["--model", "planted", "--root", str(root), *args])


def test_failed_upstream_gives_dependents_their_fallback_not_its_path(repo, tmp_path, capsys):
    root = tmp_path / "out"
    assert run(root) == 0  # everything succeeds: dependents read their upstream's files
    calls = repo.calls()
    table = str(root / "token_freq" / "token_freq.csv")
    assert option(calls["clustering.py"], "--freq-table") == table
    assert option(calls["cosine_attention_analysis.py"], "--freq-table") == table
    assert option(calls["rule_preserving_ablation.py"], "--communities") == str(root / "clustering" / "communities.csv")
    # the prepare step: the genuine-weights verdict, then the model, once, before the analyses
    assert (repo.path / "prepared.txt").read_text() == "verdict planted\nplanted\n"
    prep = json.loads((root / "run_all.json").read_text())["prepare"]
    assert prep["status"] == "ok" and prep["seconds"] >= 0 and 0 < prep["peak_rss_gb"] < 100

    # token_freq fails now; its table from the earlier run is still on disk but must not be used.
    repo.fail("token_freq.py", "clustering.py")
    repo.reset()
    capsys.readouterr()
    assert run(root, "--force") == 1
    calls, out = repo.calls(), capsys.readouterr().out
    assert (root / "token_freq" / "token_freq.csv").exists()
    for script in ("clustering.py", "cosine_attention_analysis.py"):
        assert option(calls[script], "--freq-table") == "none", calls[script]
    assert option(calls["rule_preserving_ablation.py"], "--communities") == "lists"
    assert "failed or missing: token_freq.py, clustering.py" in out
    record = json.loads((root / "run_all.json").read_text())["steps"]  # what report.html shows as "not run"
    assert record["token_freq.py"]["status"] == "FAILED (exit 3)"
    assert record["token_freq.py"]["error"] == "error: planned failure"
    ch = record["characterize_head.py"]
    assert ch == {"status": "ok", "seconds": ch["seconds"], "cpu_seconds": ch["cpu_seconds"],
                  "peak_rss_gb": ch["peak_rss_gb"], "error": "", "note": ""}
    assert ch["cpu_seconds"] >= 0 and 0 < ch["peak_rss_gb"] < 100  # measured by os.wait4
    assert (root / "report.html").exists()
    assert "--freq-table none" in out and "--communities lists" in out
    index = (root / "INDEX.md").read_text()
    cosine = index.split("## cosine_attention_analysis.py")[1].split("## ")[0]
    assert "**Fallback**" in cosine and "`--freq-table none`" in cosine
    assert "`--communities lists`" in index.split("## rule_preserving_ablation.py")[1]
    assert "**Fallback**" not in index.split("## characterize_head.py")[1].split("## ")[0]

    # token_freq succeeds again: its dependents rerun with the table, the fallback note goes away.
    repo.fail()
    repo.reset()
    assert run(root) == 0
    calls = repo.calls()
    assert option(calls["cosine_attention_analysis.py"], "--freq-table") == table
    assert "characterize_head.py" not in calls  # unchanged: up to date
    assert "**Fallback**" not in (root / "INDEX.md").read_text()


def test_only_a_dependent_uses_an_earlier_successful_upstream_else_the_fallback(repo, tmp_path):
    root = tmp_path / "out"
    assert run(root, "--only", "clustering") == 0  # token_freq never ran under this root
    assert option(repo.calls()["clustering.py"], "--freq-table") == "none"
    assert run(root, "--only", "token_freq") == 0
    repo.reset()
    assert run(root, "--only", "clustering") == 0  # upstream changed: reruns, now with the table
    assert option(repo.calls()["clustering.py"], "--freq-table") == str(root / "token_freq" / "token_freq.csv")


def test_text_and_sae_reach_exactly_their_readers(repo, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("one two three\n")
    sae = tmp_path / "sae"
    sae.mkdir()
    root = tmp_path / "out"
    assert run(root, "--text", str(text), "--sae-path", str(sae)) == 0
    calls = repo.calls()
    # the text's readers: the frequency table, the natural-text ablations, and the token-space
    # scripts, which also measure their claims on true layer-1 inputs in that text
    readers = {"token_freq.py", "rule_preserving_ablation.py", "succession_ablation.py", "self_suppression_survey.py",
               "svd_group_scaling_heatmap.py", "svd_rank_ablation.py", "cosine_attention_analysis.py", "clustering.py",
               "gradient_steering.py"}
    assert {s for s, argv in calls.items() if "--text" in argv} == readers
    assert all(option(calls[s], "--text") == str(text.resolve()) for s in readers)
    assert {s for s, argv in calls.items() if "--sae-path" in argv} == {"semantic_head.py"}
    assert option(calls["semantic_head.py"], "--sae-path") == str(sae.resolve())

    repo.reset()
    assert run(root, "--text", str(text), "--sae-path", str(sae)) == 0
    assert repo.calls() == {}  # nothing changed: every step up to date
    text.write_text("one two three four\n")  # a new text: its readers (and their dependents) rerun
    assert run(root, "--text", str(text), "--sae-path", str(sae)) == 0
    assert set(repo.calls()) == readers  # clustering and cosine also read the new text's frequency table


def test_bad_inputs_stop_before_anything_runs(repo, tmp_path, capsys):
    for args, message in ((["--text", str(tmp_path / "nope.txt")], "--text"),
                          (["--sae-path", str(tmp_path / "nope")], "--sae-path"),
                          (["--only", "nonsense"], "unknown script")):
        with pytest.raises(SystemExit) as e:
            run(tmp_path / "out", *args)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert repo.calls() == {}


def test_real_token_freq_gets_the_text(tmp_path):
    """The real token_freq.py, started by run_all with --text: counts that text, not the default corpus."""
    text = tmp_path / "corpus.txt"
    text.write_text("The cat cat dog\n")
    root = tmp_path / "out"
    assert run(root, "--only", "token_freq", "--text", str(text)) == 0
    from common.freq import load_freq_table

    table = load_freq_table(root / "token_freq" / "token_freq.csv")
    # GPT-2 ids by hand: "The" 464, " cat" 3797, " dog" 3290, "\n" 198
    assert dict(zip(table["id"], table["count"])) == {464: 1, 3797: 2, 3290: 1, 198: 1}
    assert json.loads((root / "token_freq" / "meta.json").read_text())["args"]["text"] == str(text.resolve())
    assert not (root / "INDEX.md").read_text().count("Fallback")


def test_fallback_values_are_understood_by_their_readers(tmp_path, monkeypatch):
    """'none' gives common.freq's fallback order even where a table exists; see rule_preserving_ablation
    for 'lists'."""
    from common import freq

    table = tmp_path / "token_freq.csv"
    table.write_text("token,id,count\n zebra,1976,99\n")
    monkeypatch.setattr(freq, "default_table_path", lambda model="gpt2-small": table)
    assert freq.top_tokens("planted", 1) == [1976]  # the default table is found...
    ids, source = freq.resolve_top_tokens("planted", 50, "none")
    assert ids == freq.fallback_order()[:50] and "fallback" in source  # ...but not with 'none'


def test_render_only_redraws_every_figure_from_the_committed_demo_results(tmp_path, capsys):
    """--render-only on a copy of figures/demo: no model, every script's render succeeds, the
    PNGs come back, and INDEX.md and report.html are rebuilt."""
    import shutil

    from common.outputs import FIGURES

    root = tmp_path / "demo"
    shutil.copytree(FIGURES / "demo", root, ignore=shutil.ignore_patterns("*.png", "INDEX.md", "report.html"))
    assert run(root, "--render-only") == 0
    for step in run_all.STEPS:
        assert list((root / step.script.removesuffix(".py")).glob("*.png")), step.script
    assert (root / "INDEX.md").exists() and (root / "report.html").exists()


def test_jobs_run_steps_side_by_side_but_never_before_their_upstream(repo, tmp_path):
    """--jobs 2: steps overlap in time (each told to use its share of the cores), a dependent
    starts only after its upstream ended; --jobs 1: no two steps overlap. Each step's output is in
    logs/<script>.log."""
    repo.fail("svd_rank_ablation.py", sleep=0.4)
    assert run(tmp_path / "two", "--jobs", "2") == 1
    runs = {r[0]: r for r in repo.runs()}
    spans = sorted(r[2] for r in runs.values())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two steps overlapped with --jobs 2"
    assert max(sum(s[0] < t < s[1] for s in spans) for t in (x[0] + 1e-3 for x in spans)) <= 2  # never more than 2
    for up, down in (("token_freq", "clustering"), ("token_freq", "cosine_attention_analysis"),
                     ("clustering", "rule_preserving_ablation")):
        assert runs[down][2][0] >= runs[up][2][1], (up, down)
    assert {r[3] for r in runs.values()} == {str(max(1, run_all.usable_cores() // 2))}
    log = (tmp_path / "two" / "logs" / "svd_rank_ablation.log").read_text()
    assert "error: planned failure" in log
    record = json.loads((tmp_path / "two" / "run_all.json").read_text())
    assert record["jobs"] == 2 and record["steps"]["svd_rank_ablation.py"]["error"] == "error: planned failure"

    repo.reset()
    assert run(tmp_path / "one", "--jobs", "1") == 1
    spans = sorted(r[2] for r in repo.runs())
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "steps overlapped with --jobs 1"


def test_longest_chain_starts_first():
    """Priority = own cost + the costliest chain waiting on it: token_freq (feeds clustering, which
    feeds rule_preserving_ablation) outranks a longer step with no dependents; recorded seconds win."""
    steps = {s.script: s for s in run_all.STEPS}
    chosen = [steps[n] for n in ("token_freq.py", "clustering.py", "rule_preserving_ablation.py", "characterize_head.py")]
    p = run_all.critical_path(chosen, {"token_freq.py": {"seconds": 2.0}, "clustering.py": {"seconds": 3.0},
                                       "rule_preserving_ablation.py": {"seconds": 50.0},
                                       "characterize_head.py": {"seconds": 54.0}})
    assert p == {"token_freq.py": 55.0, "clustering.py": 53.0, "rule_preserving_ablation.py": 50.0,
                 "characterize_head.py": 54.0}
    assert run_all.critical_path([steps["characterize_head.py"]], {}) == {"characterize_head.py": steps["characterize_head.py"].cost}
