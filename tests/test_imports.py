"""Imports only what a path needs: ``--help`` of every script, a whole token_freq.py run and
``run_all.py --render-only`` never import transformer_lens (about 5 s of CPU per process, and
token_freq.py never uses it).

Checked in fresh interpreters (this test process has imported it long ago): a watcher on the
import system writes every attempt to import transformer_lens, from the process or any process
forked from it (run_all --render-only draws in a process pool), to a log that must stay empty, and
the interpreter prints its sorted module names after each phase, which must not include it.
"""

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py"))

WATCH = r'''
import importlib.abc, json, os, sys
class _Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformer_lens":
            with open(os.environ["IMPORT_LOG"], "a") as f:
                f.write(f"{os.getpid()} {name}\n")
        return None  # the import itself goes on as usual
sys.meta_path.insert(0, _Watch())
def phase(name):
    print(json.dumps({"phase": name, "modules": sorted(sys.modules)}), flush=True)
'''

HELP = WATCH + r'''
import contextlib, importlib, io
for stem in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            importlib.import_module(stem).main(["--help"])
        except SystemExit as exc:
            assert exc.code in (0, None), (stem, exc.code)
    assert "usage" in out.getvalue().lower(), stem
    phase(stem)
'''

TOKEN_FREQ_THEN_RENDER = WATCH + r'''
import contextlib, io
text, root = sys.argv[1], sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()):
    import token_freq
    assert token_freq.main(["--text", text, "--out", root + "/token_freq", "--workers", "2"]) == 0
phase("token_freq.py")
with contextlib.redirect_stdout(io.StringIO()):
    import run_all
    assert run_all.main(["--model", "planted", "--render-only", "--root", root]) == 0
phase("run_all.py --render-only")
'''


def _run(code: str, args: list[str], log) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), IMPORT_LOG=str(log), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"phase"')]


def test_help_of_every_script_does_not_import_transformer_lens(tmp_path):
    log = tmp_path / "imports.log"
    phases = _run(HELP, SCRIPTS, log)
    assert [p["phase"] for p in phases] == SCRIPTS and "token_freq" in SCRIPTS and "run_all" in SCRIPTS
    for p in phases:
        assert "transformer_lens" not in p["modules"], p["phase"]
    assert "argparse" in phases[0]["modules"]  # the module lists are real
    assert not log.exists(), log.read_text()


def test_token_freq_and_render_only_do_not_import_transformer_lens(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat on Monday.\n\n  Red, green and blue.\n" * 50)
    log = tmp_path / "imports.log"
    root = tmp_path / "root"
    phases = _run(TOKEN_FREQ_THEN_RENDER, [str(text), str(root)], log)
    assert [p["phase"] for p in phases] == ["token_freq.py", "run_all.py --render-only"]
    for p in phases:
        assert "transformer_lens" not in p["modules"], p["phase"]
        assert "tiktoken" in p["modules"]  # token_freq.py did count (the lists are real)
    assert not log.exists(), log.read_text()
    assert (root / "token_freq" / "token_freq.png").stat().st_size > 0  # drawn, then redrawn by --render-only
    assert (root / "report.html").exists()
