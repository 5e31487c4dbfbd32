"""The hub-cache routes: gpt2-small (the default) and the other GPT-2-family models by name
(gpt2-medium, distilgpt2, the Stanford CRFM seeds), offline, at small size.

Small Hugging Face cache entries are laid out like the real ones (``bench/build_model.py``'s
``lay_out_hf_cache``: ``hub/models--<repo>/{blobs,snapshots/<rev>,refs/main}``) under the real
repository ids in a temporary HF_HOME with HF_HUB_OFFLINE=1, so ``--model gpt2-medium`` goes through
``HookedTransformer.from_pretrained("gpt2-medium")`` exactly as with a real cache, without network
and without gigabytes of weights.

How TransformerLens builds these models offline (``loading_from_pretrained``): the name is resolved
through its alias table, then the config comes from the cached ``config.json`` (``AutoConfig``;
its GPT-2 conversion reads n_embd, n_head, n_layer, n_ctx, vocab_size, activation_function,
scale_attn_by_inverse_layer_idx, and sets d_mlp = 4 n_embd), not from sizes of its own; the weights
from the cached weights file. So a small config under a real name gives a small model of that name.

Entries (ground truth for each check in brackets):

* ``models--gpt2`` and ``models--gpt2-medium``: the planted model's folder (a few layers of
  8 heads, L1H5 planted; safetensors; with tokenizer files) [the planted model loaded from its
  local folder; :func:`common.planted.ground_truth`'s target head];
* ``models--distilgpt2``: random, distilgpt2's 6 layers at d_model 32, 8 heads; safetensors, no
  tokenizer files (the loader uses the vendored GPT-2 tokenizer) [its config; transformers' own
  forward pass];
* ``models--stanford-crfm--alias-gpt2-small-x21``: random, 3 layers, d_model 32, with the Mistral
  runs' ``scale_attn_by_inverse_layer_idx`` and ``reorder_and_upcast_attn``; ``pytorch_model.bin``
  (the older weights format) [its config; transformers' own forward pass, which also shows the
  layer-index scaling matters].

Two more entries cannot load (``models--gpt2-large``: a config without n_ctx; ``models--stanford-crfm--
beren-gpt2-medium-x49``: config.json only), for the messages of an existing entry.

Not exercised: the real checkpoints (their sizes, their exact file lists, the real weights), and
gpt2-large, gpt2-xl and the other nine Stanford seeds beyond their names reaching the hub route
(each gives the one-line message naming its own cache folder).

HF_HOME / HF_HUB_OFFLINE are read when huggingface_hub is imported, so everything that loads runs in
ONE subprocess (imports dominate the cost); the tests read what it saved.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from build_model import lay_out_hf_cache  # noqa: E402

from common import hub_models  # noqa: E402

PROMPT = [50256, 3797, 3290, 2266, 4171, 3797, 15496, 11, 995, 0, 3797, 2266]
TINY = {  # name -> (config overrides, weights file) of the random entries
    # 8 heads: characterize_head's default target L1H5 must exist in every model it surveys
    "distilgpt2": ({"n_layer": 6, "n_head": 8, "n_embd": 32, "n_positions": 64}, "model.safetensors"),
    "stanford-crfm/alias-gpt2-small-x21": (
        {"n_layer": 3, "n_head": 4, "n_embd": 32, "n_positions": 64,
         "scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True}, "pytorch_model.bin"),
}
PLANTED_AS = ("gpt2", "gpt2-medium")  # hub names the planted model's folder is laid out as
PRESENT = (*PLANTED_AS, *TINY)
GPT2_PROMPT = "<|endoftext|> cat dog red blue Monday cat Tuesday seven"
# entries that exist but cannot load: a config without n_ctx (TransformerLens' GPT-2 conversion reads
# it; every hub GPT-2 config has it) and an entry holding config.json only (an interrupted download)
BROKEN = ("gpt2-large", "stanford-crfm/beren-gpt2-medium-x49")
ALIASES_TRIED = {"distil-gpt2": "distilgpt2", "stanford-gpt2-small-a": "stanford-crfm/alias-gpt2-small-x21",
                 "GPT2-Medium": "gpt2-medium"}


def tiny_folder(path: Path, overrides: dict, weights: str, seed: int) -> Path:
    """A random Hugging Face GPT-2 folder: the real vocabulary, small sizes, every parameter drawn
    (layer norms and biases far from their defaults; weights large enough that attention is far
    from uniform), and config.json with n_ctx as the hub's GPT-2 configs have it."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, **overrides)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn_like(p) * 0.25)
    model.save_pretrained(str(path))
    if weights == "pytorch_model.bin":
        sd = load_file(str(path / "model.safetensors"))
        torch.save(sd, path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    raw = json.loads((path / "config.json").read_text())
    raw["n_ctx"] = raw["n_positions"]  # the hub's GPT-2 configs carry n_ctx; TransformerLens reads it
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    return path


# One interpreter: load each present model (first load builds the processed-weights entry, a second
# one maps it back); for the random ones also the uncached TransformerLens route and transformers'
# own forward pass on the same folder (eager attention; for the Stanford entry also with the
# layer-index scaling switched off; the planted entries are checked against the planted model),
# the one-line message for every absent name, and characterize_head over two models.
CHILD = r"""
import json, sys, torch
from pathlib import Path
from transformers import GPT2LMHeadModel
from common import hub_models
from common.model import load_model, _load, _from_pretrained, ModelUnavailable
torch.set_grad_enabled(False)
folders, out, prompt = json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
compared = json.loads(sys.argv[5])
toks = torch.tensor([prompt])
res = {"present": {}, "absent": {}, "aliases": {}}
# gpt2-small (the default): its model, a second load from the processed-weights entry, and the
# uncached TransformerLens route; tensors go to gpt2.pt
m = load_model("gpt2-small")
warm, uncached = _load("gpt2-small", "cpu"), _from_pretrained("gpt2", "cpu")
t = m.to_tokens(sys.argv[6], prepend_bos=False)
torch.save({"logits": m(t), "warm": warm(t), "uncached": uncached(t), "W_Q": m.W_Q[1, 5].clone(),
            "from_cache": bool(getattr(warm, "_l1h5_processed_cache", None))}, out / "gpt2.pt")
del m, warm, uncached
for name, folder in folders.items():
    m = load_model(name)
    if name == "gpt2":
        continue
    warm = _load(name, "cpu")
    r = {"cfg": [m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_model, m.cfg.d_head, m.cfg.d_mlp, m.cfg.n_ctx, m.cfg.d_vocab],
         "scale_by_layer": bool(m.cfg.scale_attn_by_inverse_layer_idx),
         "pos_type": m.cfg.positional_embedding_type, "normalization": m.cfg.normalization_type,
         "built_then_mapped": bool(getattr(m, "_l1h5_processed_cache", None)),
         "warm_from_cache": bool(getattr(warm, "_l1h5_processed_cache", None)),
         "cache_origin": json.loads((Path(warm._l1h5_processed_cache) / "entry.json").read_text())["origin"],
         "tokens_ok": m.to_tokens(" cat dog", prepend_bos=True)[0].tolist() == [50256, 3797, 3290]}
    if name in compared:  # the planted model: against its local-folder load (gpt2 test, test_model)
        uncached = _from_pretrained(name, "cpu")
        r["same_as_uncached"] = torch.equal(m(toks), uncached(toks)) and torch.equal(warm(toks), uncached(toks))
        got = m(toks).log_softmax(-1)
        hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
        r["vs_transformers"] = (got - hf(toks).logits.log_softmax(-1)).abs().max().item()
        if hf.config.scale_attn_by_inverse_layer_idx:
            plain = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager",
                                                    scale_attn_by_inverse_layer_idx=False).eval()
            r["vs_transformers_unscaled"] = (got - plain(toks).logits.log_softmax(-1)).abs().max().item()
    res["present"][name] = r
for alias in json.loads(sys.argv[4]):
    res["aliases"][alias] = load_model(alias) is load_model(hub_models.official_name(alias))
for name in hub_models.OFFICIAL:
    if name in folders:
        continue
    try:
        load_model(name)
        res["absent"][name] = None
    except ModelUnavailable as exc:
        res["absent"][name] = str(exc)
import characterize_head
# 48 words (the script's default length): on 12-word prompts most queries have no partner, and the
# planted L1H5's any-category leak lets the decoy rank first (0.91 against 0.99, by construction).
code = characterize_head.main(["--model", "gpt2-medium", "distilgpt2", "--n-prompts", "4", "--seq-len", "48",
                               "--batch-size", "4", "--threads", "1", "--out", str(out / "cross")])
res["characterize_head_exit"] = code
# the start-up every script runs turns the missing-entry message into "error: ..." and exit 2
import contextlib, io
from common.cli import base_parser, start
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        start(base_parser("x").parse_args(["--model", "gpt2-xl", "--out", str(out / "x")]), "x")
except SystemExit as exc:
    res["start_exit"], res["start_stderr"] = exc.code, err.getvalue()
(out / "result.json").write_text(json.dumps(res))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_cache):
    from common.planted import planted_folder

    work = tmp_path_factory.mktemp("other-models")
    home = work / "hf-home"
    planted = work / "planted"
    planted.mkdir()
    for f in planted_folder().iterdir():
        shutil.copy(f, planted / f.name)
    raw = json.loads((planted / "config.json").read_text())
    raw["n_ctx"] = raw["n_positions"]  # the hub's GPT-2 configs carry n_ctx; TransformerLens reads it
    (planted / "config.json").write_text(json.dumps(raw))
    folders = dict.fromkeys(PLANTED_AS, planted)
    for i, (name, (overrides, weights)) in enumerate(TINY.items()):
        folders[name] = tiny_folder(work / hub_models.short_name(name), overrides, weights, seed=i + 1)
    for name, folder in folders.items():
        lay_out_hf_cache(folder, home, repo=name)
    no_n_ctx = tiny_folder(work / "no-n-ctx", TINY["distilgpt2"][0], "model.safetensors", seed=9)
    raw = json.loads((no_n_ctx / "config.json").read_text())
    del raw["n_ctx"]
    (no_n_ctx / "config.json").write_text(json.dumps(raw))
    lay_out_hf_cache(no_n_ctx, home, repo=BROKEN[0])
    (work / "config-only").mkdir()
    shutil.copy(folders["distilgpt2"] / "config.json", work / "config-only" / "config.json")
    lay_out_hf_cache(work / "config-only", home, repo=BROKEN[1])
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(var, None)  # these would override HF_HOME
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({k: str(v) for k, v in folders.items()}), str(work),
         json.dumps(PROMPT), json.dumps(list(ALIASES_TRIED)), json.dumps(list(TINY)), GPT2_PROMPT],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {"work": work, "home": home, "folders": folders,
            "res": json.loads((work / "result.json").read_text())}


def test_gpt2_small_from_offline_hf_cache_matches_local_folder(run, planted_model):
    got = torch.load(run["work"] / "gpt2.pt", weights_only=True)
    # The processed-weights cache changes nothing: identical logits to TransformerLens' own route.
    assert got["from_cache"]
    assert torch.equal(got["logits"], got["uncached"]) and torch.equal(got["warm"], got["uncached"])
    want = planted_model(planted_model.to_tokens(GPT2_PROMPT, prepend_bos=False))
    assert got["logits"].shape == want.shape
    assert torch.allclose(got["logits"], want, atol=1e-4, rtol=0), (got["logits"] - want).abs().max()
    assert torch.equal(got["W_Q"], planted_model.W_Q[1, 5])


def test_missing_entry_stops_a_script_with_exit_2_and_one_line(run):
    res = run["res"]
    assert res["start_exit"] == 2
    lines = res["start_stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not load gpt2-xl weights"), lines
    assert "cache entry models--gpt2-xl in " in lines[0] and "is missing" in lines[0] and "--model planted" in lines[0]
    assert not (run["work"] / "x" / "summary.json").exists()


def test_cache_entries_are_laid_out_under_the_real_repo_ids(run):
    hub = run["home"] / "hub"
    assert sorted(p.name for p in hub.iterdir() if not p.name.startswith(".")) == sorted(
        ["models--gpt2", "models--gpt2-medium", "models--distilgpt2", "models--stanford-crfm--alias-gpt2-small-x21",
         *(hub_models.cache_entry(b) for b in BROKEN)])
    snap = hub / "models--stanford-crfm--alias-gpt2-small-x21" / "snapshots"
    (rev,) = snap.iterdir()
    assert (hub / "models--stanford-crfm--alias-gpt2-small-x21" / "refs" / "main").read_text() == rev.name
    assert (rev / "pytorch_model.bin").is_symlink() and not (rev / "model.safetensors").exists()


def test_each_name_loads_with_its_configs_sizes(run, planted_model):
    present = run["res"]["present"]
    assert sorted(present) == sorted(set(PRESENT) - {"gpt2"})  # gpt2-small: its own test below
    p = planted_model.cfg
    assert present["gpt2-medium"]["cfg"] == [p.n_layers, p.n_heads, p.d_model, p.d_head, p.d_mlp, p.n_ctx, 50257]
    for name, (o, _) in TINY.items():
        d = o["n_embd"]  # TransformerLens' GPT-2 conversion: d_mlp = 4 d_model, n_ctx from config's n_ctx
        assert present[name]["cfg"] == [o["n_layer"], o["n_head"], d, d // o["n_head"], 4 * d, o["n_positions"], 50257]
    assert present["distilgpt2"]["cfg"][0] == 6  # distilgpt2's depth
    assert present["stanford-crfm/alias-gpt2-small-x21"]["scale_by_layer"]
    assert not present["distilgpt2"]["scale_by_layer"]
    for name, r in present.items():
        assert r["pos_type"] == "standard" and r["normalization"] == "LNPre", name  # processed like gpt2-small
        assert r["tokens_ok"], name  # the vendored GPT-2 tokenizer, BOS prepended


def test_logits_equal_transformers_forward_pass(run):
    """Ground truth independent of TransformerLens: transformers' GPT2LMHeadModel on the same folder
    (log-probs: center_unembed shifts every logit of a position by one constant)."""
    for name in TINY:
        r = run["res"]["present"][name]
        assert r["vs_transformers"] < 1e-4, (name, r["vs_transformers"])
    # The comparison can fail: without the Mistral runs' layer-index scaling the logits differ.
    assert run["res"]["present"]["stanford-crfm/alias-gpt2-small-x21"]["vs_transformers_unscaled"] > 1e-2


def test_processed_weights_cache_serves_them_unchanged(run):
    for name, r in run["res"]["present"].items():
        assert r["built_then_mapped"] and r["warm_from_cache"], name
        assert r["cache_origin"] == f"hf:{name}", name
    for name in TINY:  # bit-identical logits to TransformerLens' own (uncached) route
        assert run["res"]["present"][name]["same_as_uncached"], name


def test_aliases_share_their_model(run):
    assert run["res"]["aliases"] == {a: True for a in ALIASES_TRIED}


def test_unloadable_entry_gives_one_line_message_naming_it(run):
    absent = run["res"]["absent"]
    assert sorted(absent) == sorted(set(hub_models.OFFICIAL) - set(PRESENT))
    assert "gpt2-xl" in absent and "gpt2-large" in absent and "stanford-crfm/expanse-gpt2-small-x777" in absent
    for name, msg in absent.items():
        assert msg is not None, f"{name} loaded from a cache that does not hold it"
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
        entry = hub_models.cache_entry(name)
        assert f"cache entry {entry} in {run['home'] / 'hub'} " in msg, msg
        assert "--model planted" in msg and "--model /path/to/gpt2" in msg, msg
        if name not in BROKEN:
            assert f"{entry} in {run['home'] / 'hub'} is missing" in msg and "HF_HUB_OFFLINE=1 is already set" in msg, msg
    # an entry that exists: incomplete (no weights file), or complete but failing to load
    assert f"{hub_models.cache_entry(BROKEN[1])} in {run['home'] / 'hub'} is incomplete" in absent[BROKEN[1]]
    broken = absent[BROKEN[0]]
    assert "holds config.json and the weights" in broken and "n_ctx" in broken, broken
    assert "models--stanford-crfm--arwen-gpt2-medium-x21" in absent["stanford-crfm/arwen-gpt2-medium-x21"]


def test_characterize_head_cross_model_table(run, truth, planted_model):
    assert run["res"]["characterize_head_exit"] == 0
    out = run["work"] / "cross"
    table = pd.read_csv(out / "cross_model.csv")
    assert list(table.model) == ["gpt2-medium", "distilgpt2"]  # one row per model, in --model order
    medium, distil = table.iloc[0], table.iloc[1]
    # gpt2-medium is the planted model here: its lowest head is the planted one.
    assert (medium.lowest_layer, medium.lowest_head) == tuple(truth["target"]), medium
    assert medium.n_heads == planted_model.cfg.n_layers * planted_model.cfg.n_heads and distil.n_heads == 6 * 8
    for sub, row in (("gpt2-medium", medium), ("distilgpt2", distil)):
        heads = pd.read_csv(out / sub / "head_scores.csv")
        assert len(heads) == row.n_heads
        best = heads.sort_values("score_mean").iloc[0]
        assert (best.layer, best["head"], best.score_mean) == (row.lowest_layer, row.lowest_head, row.lowest_score)
        assert json.loads((out / sub / "meta.json").read_text())["args"]["model"] == sub
    assert (out / "cross_model.png").stat().st_size > 0


def test_official_names_match_transformer_lens():
    """The name table (common/hub_models.py, importable without TransformerLens) is TransformerLens'
    own: every GPT-2-family name it loads with the GPT-2 tokenizer, with the same aliases."""
    from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    theirs = [n for n in OFFICIAL_MODEL_NAMES
              if n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2") or n.startswith("stanford-crfm/")]
    assert len(theirs) == 15 and sorted(hub_models.OFFICIAL) == sorted(theirs)
    for name in theirs:
        assert set(hub_models.ALIASES[name]) == set(MODEL_ALIASES.get(name, [])), name
        for alias in (name, *MODEL_ALIASES.get(name, [])):
            assert hub_models.official_name(alias.upper()) == name


def test_default_output_folders():
    from common.outputs import FIGURES, default_out_dir

    assert default_out_dir("x", "gpt2-small") == default_out_dir("x", "gpt2") == FIGURES / "x"
    assert default_out_dir("x", "planted") == FIGURES / "demo" / "x"
    assert default_out_dir("x", "gpt2-medium") == FIGURES / "models" / "gpt2-medium" / "x"
    assert default_out_dir("x", "stanford-crfm/alias-gpt2-small-x21") == FIGURES / "models" / "alias-gpt2-small-x21" / "x"
    assert default_out_dir("x", "stanford-gpt2-small-a") == FIGURES / "models" / "alias-gpt2-small-x21" / "x"
    assert default_out_dir("x", "/data/my-gpt2") == FIGURES / "local" / "my-gpt2" / "x"


def test_rotary_model_is_refused_by_absolute_position_methods(tmp_path):
    """A model without W_pos (rotary, built directly, no hub): the effective embeddings and
    component_ablation stop with one line instead of an AttributeError deep inside."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from common.effective_embeddings import effective_embeddings
    from common.errors import require_absolute_positions

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=50,
                                  act_fn="gelu_new", positional_embedding_type="rotary", rotary_dim=4)
    rotary = HookedTransformer(cfg)
    assert not hasattr(rotary, "pos_embed")  # no W_pos to average: the method would be meaningless
    for call in (lambda: effective_embeddings(rotary, 1, cache=False),
                 lambda: effective_embeddings(rotary, 1),
                 lambda: require_absolute_positions(rotary, "component_ablation")):
        with pytest.raises(SystemExit) as e:
            call()
        msg = str(e.value.code)
        assert msg.startswith("error: ") and len(msg.splitlines()) == 1, msg
        assert "absolute positional embeddings" in msg and "'rotary'" in msg


def test_component_ablation_refuses_rotary_model(tmp_path, monkeypatch):
    """The script's own start-up path: component_ablation.main with a rotary model stops before
    any result is written."""
    import component_ablation
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from common.gpt2_tokenizer import load_tokenizer

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=8, d_vocab=50257,
                                  act_fn="gelu_new", positional_embedding_type="rotary", rotary_dim=4)
    rotary = HookedTransformer(cfg, load_tokenizer())
    monkeypatch.setattr(component_ablation, "start", lambda args, script: (rotary, tmp_path))
    with pytest.raises(SystemExit) as e:
        component_ablation.main(["--model", "planted", "--out", str(tmp_path), "--n-prompts", "4"])
    assert "component_ablation" in str(e.value.code) and "'rotary'" in str(e.value.code)
    assert not list(tmp_path.iterdir())
