"""The repository installs as a package (``pip install -e .`` / ``pip install .``).

Ground truth: the files in the repository. pyproject.toml must declare every top-level script as a
py-module (setuptools' discovery refuses the flat layout, so a forgotten one is silently missing
from an install), ship common's data files, and ask for ranges that the pinned, tested versions of
requirements.txt satisfy (torch's range must keep the installed CPU build). A wheel is built from
a copy of the sources, offline, and its contents are checked against the repository's own files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TEST_ONLY = {"pytest", "pytest-xdist"}


def pinned() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def test_every_script_is_a_py_module_and_common_a_package():
    scripts = {p.stem for p in ROOT.glob("*.py")}
    declared = PYPROJECT["tool"]["setuptools"]
    assert set(declared["py-modules"]) == scripts
    assert declared["packages"] == ["common"]
    assert not [p for p in (ROOT / "common").iterdir() if p.is_dir() and (p / "__init__.py").exists()], \
        "a sub-package of common must be declared in packages"
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert (ROOT / f"{module}.py").exists() and re.search(rf"^def {func}\(", (ROOT / f"{module}.py").read_text(), re.M), name


def test_dependency_ranges_hold_the_pinned_versions():
    pins = pinned()
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    tests = {Requirement(r).name.lower(): Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert set(reqs) == set(pins) - TEST_ONLY and set(tests) == TEST_ONLY
    for name, req in {**reqs, **tests}.items():
        assert req.specifier.contains(Version(pins[name])), f"{name}: {req} excludes the tested {pins[name]}"
    # torch: the CPU build installed here (2.13.0+cpu) satisfies it, so pip never swaps it for a CUDA wheel
    assert reqs["torch"].specifier.contains(Version("2.13.0+cpu"))
    assert not reqs["torch"].specifier.contains(Version("2.14.0"))
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_wheel_holds_scripts_common_and_its_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ["pyproject.toml", "README.md", *[p.name for p in ROOT.glob("*.py")]]:
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "common", src / "common", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("l1h5-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.name for p in ROOT.glob("*.py")}
    expected |= {f"common/{p.relative_to(ROOT / 'common').as_posix()}" for p in (ROOT / "common").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "common/tokenizer/vocab.json" in names and "common/data/gpt2_small_fingerprints.json" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert re.search(r"^Requires-Dist: torch.*<2\.14", text, re.M)


def test_default_figures_root_checkout_installed_and_env(tmp_path, monkeypatch):
    from common import outputs

    monkeypatch.delenv("L1H5_FIGURES", raising=False)
    assert outputs.figures_root() == ROOT / "figures"  # a checkout (also pip install -e .)
    monkeypatch.setattr(outputs, "REPO_ROOT", tmp_path / "site-packages")  # pip install .: no pyproject.toml
    monkeypatch.chdir(tmp_path)
    assert outputs.figures_root() == tmp_path.resolve() / "figures"
    monkeypatch.setenv("L1H5_FIGURES", str(tmp_path / "mine"))
    assert outputs.figures_root() == tmp_path.resolve() / "mine"
