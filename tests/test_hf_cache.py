"""The default ``gpt2-small`` route (Hugging Face cache, offline), tested at small size.

The planted model's folder is laid out as the hub cache entry of ``gpt2`` in a temporary HF_HOME,
so ``load_model("gpt2-small")`` goes through ``HookedTransformer.from_pretrained`` exactly as with
the real cache, without network and without 500 MB of weights. HF_HOME / HF_HUB_OFFLINE are read
when huggingface_hub is imported, hence the subprocesses.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from build_model import lay_out_hf_cache  # noqa: E402

PROMPT = "<|endoftext|> cat dog red blue Monday cat Tuesday seven"


def _run(code: str, hf_home, *args, timeout=120):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               TOKENIZERS_PARALLELISM="false")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(var, None)  # these would override HF_HOME
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def planted_hf_home(tmp_path_factory, planted_cache):
    from common.planted import planted_folder

    folder = tmp_path_factory.mktemp("planted-as-gpt2")
    for f in planted_folder().iterdir():
        shutil.copy(f, folder / f.name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_ctx"] = cfg["n_positions"]  # TransformerLens' GPT-2 config conversion reads n_ctx
    (folder / "config.json").write_text(json.dumps(cfg))
    home = tmp_path_factory.mktemp("hf-home")
    snapshot = lay_out_hf_cache(folder, home)
    assert (home / "hub" / "models--gpt2" / "refs" / "main").read_text() == snapshot.name
    return home


def test_gpt2_small_from_offline_hf_cache_matches_local_folder(planted_hf_home, planted_model, tmp_path):
    out = tmp_path / "logits.pt"
    # load_model (first load: builds the processed-weights cache entry), a second load from that
    # entry, and the uncached from_pretrained route, in one interpreter.
    code = (
        "import sys, torch\n"
        "from common.model import load_model, _load, _from_pretrained\n"
        "torch.set_grad_enabled(False)\n"
        "m = load_model('gpt2-small')\n"
        "warm = _load('gpt2-small', 'cpu')\n"
        "uncached = _from_pretrained('cpu')\n"
        f"toks = m.to_tokens({PROMPT!r}, prepend_bos=False)\n"
        "torch.save({'logits': m(toks), 'warm': warm(toks), 'uncached': uncached(toks), "
        "'from_cache': bool(getattr(warm, '_l1h5_processed_cache', None)), "
        "'same_tokens': warm.to_tokens('cat dog').tolist() == uncached.to_tokens('cat dog').tolist(), "
        "'W_Q': m.W_Q[1, 5].clone(), 'n_layers': m.cfg.n_layers, 'd_model': m.cfg.d_model}, sys.argv[1])\n"
    )
    proc = _run(code, planted_hf_home, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    # The processed-weights cache changes nothing: identical logits to TransformerLens' own route.
    assert got["from_cache"] and got["same_tokens"]
    assert torch.equal(got["logits"], got["uncached"]) and torch.equal(got["warm"], got["uncached"])
    assert (got["n_layers"], got["d_model"]) == (planted_model.cfg.n_layers, planted_model.cfg.d_model)
    want = planted_model(planted_model.to_tokens(PROMPT, prepend_bos=False))
    assert got["logits"].shape == want.shape
    assert torch.allclose(got["logits"], want, atol=1e-4, rtol=0), (got["logits"] - want).abs().max()
    assert torch.equal(got["W_Q"], planted_model.W_Q[1, 5])


def _check_short_message(text: str) -> None:
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) <= 12, text
    for hint in ("HF_HUB_OFFLINE=1", "--model /path/to/gpt2", "--model planted"):
        assert hint in text, (hint, text)


def test_empty_hf_cache_gives_short_actionable_error_and_exit_2(tmp_path):
    # One interpreter for both checks (imports dominate the cost): load_model raises the short
    # ModelUnavailable, then the start-up every script runs (common.cli.start) turns it into exit 2.
    code = (
        "import sys\n"
        "from common.model import load_model, ModelUnavailable\n"
        "from common.cli import base_parser, start\n"
        "try:\n"
        "    load_model('gpt2-small')\n"
        "except ModelUnavailable as exc:\n"
        "    print(exc, flush=True)\n"
        "else:\n"
        "    raise SystemExit(5)\n"
        "start(base_parser('x').parse_args(sys.argv[1:]), 'x')\n"
    )
    proc = _run(code, tmp_path / "empty-hf-home", "--model", "gpt2-small", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    _check_short_message(proc.stdout)
    assert "already set" in proc.stdout  # it says the cache, not the network, is the problem
    assert proc.stderr.lstrip().startswith("error:"), proc.stderr[-3000:]
    _check_short_message(proc.stderr)
