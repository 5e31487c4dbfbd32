"""Mutation check of the claim criteria: flip each comparison in every claim check, one at a time,
and confirm that tests/test_claims.py catches it (a check that survives a flipped comparison is
not tested on both branches).

Comparisons flipped: ``<`` <-> ``>=``, ``>`` <-> ``<=``, ``==`` <-> ``!=``, in the check of every
claim of the analysis scripts (``CLAIMS``) and in the criteria and status functions of common/claims.py.
Each mutant is compiled into its module in this process and the tests of test_claims.py are
called directly (seconds for all mutants). Not part of the suite (it rewrites modules in memory);
run it after changing a check:

    python tests/mutate_claims.py          # prints one line per mutant; exits 1 if any survived
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
CRITERIA = {"near", "at_least", "at_most", "sign", "banded", "all_of", "status", "model_kind"}
MODULES = ["common.claims", "characterize_head", "component_ablation", "skew_analysis", "self_suppression_survey",
           "svd_sym_skew_heatmap", "svd_group_scaling_heatmap", "cosine_attention_analysis", "clustering",
           "gradient_steering", "semantic_head", "rule_preserving_ablation", "composition"]


def targets(tree: ast.Module, module: str, checks: set[str]):
    """(function name, Compare node, operator index) of every comparison to flip."""
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and (fn.name in checks or
                                                 (module == "common.claims" and fn.name in CRITERIA)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Compare):
                    for i, op in enumerate(node.ops):
                        if type(op) in FLIP:
                            yield fn.name, node, i


def run_tests(test_module) -> str | None:
    """The first failing test of test_claims.py, or None when all pass."""
    for name, fn in inspect.getmembers(test_module, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != test_module.__name__:
            continue
        kwargs = {"tmp_path": Path(tempfile.mkdtemp())} if "tmp_path" in inspect.signature(fn).parameters else {}
        try:
            fn(**kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # an assertion, pytest.fail (a BaseException), or a check that breaks
            return f"{name} ({type(exc).__name__})"
    return None


def main() -> int:
    tests = importlib.import_module("test_claims")
    assert run_tests(tests) is None, "test_claims.py fails before any mutation"
    survived, total = [], 0
    for name in MODULES:
        mod = importlib.import_module(name)
        src = Path(mod.__file__).read_text()
        checks = {c.check.__name__ for c in getattr(mod, "CLAIMS", [])}  # the claims' checks, nothing else
        sites = list(targets(ast.parse(src), name, checks))
        for k, (fn_name, _, i) in enumerate(sites):
            tree = ast.parse(src)
            _, node, _ = list(targets(tree, name, checks))[k]
            old = type(node.ops[i]).__name__
            node.ops[i] = FLIP[type(node.ops[i])]()
            exec(compile(tree, mod.__file__, "exec"), mod.__dict__)
            if name == "common.claims":  # the test module and the scripts hold its names directly
                for holder in [tests, *(importlib.import_module(m) for m in MODULES[1:])]:
                    for attr in CRITERIA:
                        if attr in holder.__dict__:
                            holder.__dict__[attr] = mod.__dict__[attr]
            caught = run_tests(tests)
            total += 1
            where = f"{name}.{fn_name} line {node.lineno}: {old} -> {type(node.ops[i]).__name__}"
            print(f"{'caught' if caught else 'SURVIVED'}  {where}" + (f"  by {caught}" if caught else ""))
            if not caught:
                survived.append(where)
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # restore
            if name == "common.claims":
                for holder in [tests, *(importlib.import_module(m) for m in MODULES[1:])]:
                    for attr in CRITERIA:
                        if attr in holder.__dict__:
                            holder.__dict__[attr] = mod.__dict__[attr]
    print(f"{total - len(survived)} of {total} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
