"""meta.json records the installed version of every library that shapes a number.

Ground truth, independent of importlib.metadata (which write_meta uses): each library's own
``__version__`` where it has one, and the pinned, tested set in requirements.txt, which is what
``make setup`` (and so CI) installs here. transformer_lens has no ``__version__`` (meta.json used
to say "unknown"); its pin is the check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from packaging.version import Version

from common.outputs import write_meta

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"torch": "torch", "numpy": "numpy", "transformers": "transformers", "sae_lens": "sae_lens",
           "safetensors": "safetensors", "pandas": "pandas", "scikit_learn": "sklearn", "tiktoken": "tiktoken"}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, v = line.split("==")
            out[name.strip().replace("-", "_")] = v.strip()
    return out


def test_meta_names_the_real_version_of_every_number_library(tmp_path):
    import importlib

    meta = json.loads(write_meta(tmp_path, argparse.Namespace(model="planted", seed=0), script="x").read_text())
    libs = meta["libraries"]
    for needed in ("transformer_lens", "transformers", "sae_lens", "torch", "numpy"):
        assert needed in libs and libs[needed] not in ("unknown", "not installed"), needed
    for key, module in MODULES.items():
        assert libs[key] == importlib.import_module(module).__version__, key
    pinned = pins()
    for key, version in libs.items():
        if key in pinned:
            assert Version(version).public == Version(pinned[key]).public, f"{key}: {version} vs pinned {pinned[key]}"
    assert meta["transformer_lens"] == pinned["transformer_lens"] == libs["transformer_lens"]
    assert meta["torch"] == libs["torch"]


def test_weights_cache_key_changes_with_transformer_lens(monkeypatch):
    """The processed-weights cache is keyed by the real versions: a transformer_lens upgrade
    rebuilds it (with "unknown" it never would)."""
    from common import outputs
    from common.disk_cache import digest
    from common.weights_cache import Source, make_key

    src = Source(route="r", origin="o", files={}, code="c", build=lambda: None, tokenizer=lambda: None)
    key = make_key(src)
    assert key["versions"]["transformer_lens"] == pins()["transformer_lens"]
    real = outputs.library_versions
    monkeypatch.setattr(outputs, "library_versions",
                        lambda names: {**real(names), "transformer_lens": "9.9.9"})
    assert digest(make_key(src)) != digest(key)
