"""common/genuine_weights.py: a checkpoint's raw tensors against the shipped gpt2-small checksums.

Ground truth: the checksum table's own layout (an independent hashlib computation on a synthetic
checkpoint), ../shared/gpt2/README.md (which tensors the shared file lacks: wte and the 24 MLP
weight matrices; the bench model replaces exactly those with random values)."""

import hashlib
import json
import os
import sys
import time

import numpy as np
import pytest
import torch

from common import genuine_weights as gw
from conftest import ROOT
from real_tensor_model import real_tensor_folder
from shared_weights import PARTIAL, SHARED_GPT2, requires_shared

# ../shared/gpt2/README.md, "Missing": what the bench model fills with random values.
MISSING_FROM_SHARED = ["wte.weight"] + [f"h.{i}.mlp.{m}.weight" for i in range(12) for m in ("c_fc", "c_proj")]


def test_shipped_table_is_the_shared_one_and_complete():
    table = gw.load_fingerprints()
    assert len(table) == 148
    assert sum(e["transposed"] for e in table.values()) == 48  # 4 block matrices x 12 layers
    shared = SHARED_GPT2 / "fingerprints.json"
    if shared.exists():
        assert gw.FINGERPRINTS.read_bytes() == shared.read_bytes()
    assert "0hq/WebGPT" in (gw.FINGERPRINTS.parent / "PROVENANCE.md").read_text()


@pytest.fixture()
def tiny_table(tmp_path, monkeypatch):
    """A 3-tensor checksum table computed independently (hashlib on numpy bytes, Conv1D weight
    transposed as the real table's layout says), and the matching Hugging Face tensors."""
    rng = np.random.default_rng(0)
    tensors = {"wpe.weight": rng.normal(size=(5, 4)).astype("<f4"),
               "h.0.attn.c_attn.weight": rng.normal(size=(4, 12)).astype("<f4"),
               "h.0.ln_1.bias": rng.normal(size=4).astype("<f4")}
    entries = {}
    for k, v in tensors.items():
        transposed = k.endswith("c_attn.weight")
        raw = (v.T.copy() if transposed else v).tobytes()
        entries[k] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw), "transposed": transposed}
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"about": {}, "tensors": entries}))
    monkeypatch.setattr(gw, "FINGERPRINTS", path)
    gw.load_fingerprints.cache_clear()
    yield tensors
    gw.load_fingerprints.cache_clear()


def test_verdicts_on_synthetic_checkpoints(tiny_table, tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    # a cache of its own: the session's is shared with the other test worker, whose verdicts being
    # written at the same moment would show up as temporary files in the check at the end
    monkeypatch.setenv("L1H5_CACHE", str(tmp_path / "cache"))

    good = tmp_path / "good" / "model.safetensors"
    good.parent.mkdir()
    save_file({"transformer." + k: v for k, v in tiny_table.items()} | {"h.0.attn.bias": np.ones((1, 1, 2, 2), "<f4")},
              str(good))
    v = gw.weights_verdict(str(good.parent), use_cache=False)
    assert v.text == "genuine gpt2-small (3/3 tensors verified)" and v.genuine and v.differing == []

    # pytorch_model.bin, one value changed by one ulp, one tensor missing
    bad = dict(tiny_table)
    w = bad["h.0.attn.c_attn.weight"].copy()
    w[2, 7] = np.nextafter(w[2, 7], np.float32(np.inf))
    bad["h.0.attn.c_attn.weight"] = w
    del bad["h.0.ln_1.bias"]
    (tmp_path / "bad").mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in bad.items()}, tmp_path / "bad" / "pytorch_model.bin")
    v = gw.weights_verdict(str(tmp_path / "bad"), use_cache=False)
    assert v.text == "not gpt2-small: 2 tensors differ (h.0.attn.c_attn.weight, h.0.ln_1.bias)"
    assert v.missing == ["h.0.ln_1.bias"] and v.n_verified == 1

    # the same numbers stored untransposed ([out, in]) are not the Conv1D layout: they differ
    wrong = dict(tiny_table)
    wrong["h.0.attn.c_attn.weight"] = np.ascontiguousarray(tiny_table["h.0.attn.c_attn.weight"].T)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    assert gw.verify_checkpoint(tmp_path / "wrong.safetensors", use_cache=False).differing == ["h.0.attn.c_attn.weight"]

    assert gw.weights_verdict("planted").text == "planted"
    assert gw.weights_meta("planted") == {"weights": gw.Verdict("planted", "planted").to_meta()}
    assert gw.weights_meta(None) == {}
    assert gw.weights_verdict(str(tmp_path / "nothing-here")).status == "unverified"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    v = gw.weights_verdict(str(tmp_path / "broken"))  # a one-line verdict, never a crash
    assert v.status == "unverified" and "could not be read" in v.text and "\n" not in v.text
    assert not list(gw.cache_dir().glob("genuine/.*"))  # no half-written cache entry


def test_hf_cache_route_and_disk_cache(tiny_table, tmp_path):
    from safetensors.numpy import save_file

    sys.path.insert(0, str(ROOT / "bench"))
    from build_model import lay_out_hf_cache

    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(tiny_table, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    hub = tmp_path / "hf-home" / "hub"
    assert gw.weights_verdict("gpt2-small", hf_cache=tmp_path / "empty").status == "unverified"
    snap = lay_out_hf_cache(folder, tmp_path / "hf-home")
    assert gw.checkpoint_file("gpt2-small", hf_cache=hub) == snap / "model.safetensors"

    first = gw.weights_verdict("gpt2-small", hf_cache=hub)
    assert first.genuine and not first.cached
    assert first.checkpoint == str((snap / "model.safetensors").resolve())  # the blob, symlink resolved
    again = gw.weights_verdict("gpt2-small", hf_cache=hub)
    assert again.cached and again.text == first.text
    cfile = gw._cache_file(gw.file_identity(snap / "model.safetensors"))
    assert cfile.exists() and not list(cfile.parent.glob(".*"))  # atomic: no temporary left behind
    cfile.write_text("{ not json")  # a corrupt entry is recomputed, not trusted
    assert not gw.weights_verdict("gpt2-small", hf_cache=hub).cached
    blob = (snap / "model.safetensors").resolve()
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # new identity -> new check
    assert not gw.weights_verdict("gpt2-small", hf_cache=hub).cached


def test_an_unwritable_cache_folder_does_not_change_the_verdict(tiny_table, tmp_path, monkeypatch):
    """The verdict is about the checkpoint: a cache folder that cannot be written (here a file)
    leaves it uncached, not "unverified: ... could not be read"."""
    from safetensors.numpy import save_file

    (tmp_path / "good").mkdir()
    save_file(tiny_table, str(tmp_path / "good" / "model.safetensors"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("L1H5_CACHE", str(blocker))
    v = gw.weights_verdict(str(tmp_path / "good"))
    assert v.text == "genuine gpt2-small (3/3 tensors verified)" and not v.cached


def test_compact_names():
    assert gw.compact_names(MISSING_FROM_SHARED) == "wte.weight, h.0-11.mlp.c_fc.weight, h.0-11.mlp.c_proj.weight"
    assert gw.compact_names(["h.0.x", "h.2.x", "h.3.x", "ln_f.bias"]) == "ln_f.bias, h.0,2-3.x"


@requires_shared
def test_shared_partial_file_matches_the_table_bit_for_bit():
    v = gw.verify_checkpoint(PARTIAL, use_cache=False)
    assert v.n_verified == 123
    assert sorted(v.differing) == sorted(MISSING_FROM_SHARED) == sorted(v.missing)


@requires_shared
def test_bench_model_from_shared_differs_in_exactly_wte_and_the_mlp_matrices(tmp_path_factory):
    folder = real_tensor_folder(tmp_path_factory)
    t0 = time.perf_counter()
    v = gw.verify_checkpoint(folder / "model.safetensors", use_cache=False)  # the full check, uncached
    seconds = time.perf_counter() - t0
    print(f"\n[benchmark] genuine-weights check of the full-size bench model: {seconds:.2f} s "
          f"(hashing {v.seconds:.2f} s, {(folder / 'model.safetensors').stat().st_size / 1e6:.0f} MB)")
    assert v.status == "not gpt2-small" and not v.cached
    assert sorted(v.differing) == sorted(MISSING_FROM_SHARED) and v.missing == []  # present, but random
    assert v.n_verified == 123 and v.n_total == 148
    assert v.text == ("not gpt2-small: 25 tensors differ "
                      "(wte.weight, h.0-11.mlp.c_fc.weight, h.0-11.mlp.c_proj.weight)")
    gw.weights_verdict(str(folder))  # computes and caches (or reads an earlier test's entry)
    t0 = time.perf_counter()
    again = gw.weights_verdict(str(folder))
    print(f"[benchmark] cached verdict: {time.perf_counter() - t0:.4f} s")
    assert again.cached and again.text == v.text and again.differing == v.differing


def test_tensors_are_read_one_at_a_time_with_the_same_bytes_and_hashes(tmp_path):
    """The plain-read safetensors path gives safe_open's arrays; the blockwise hash of a transpose
    equals the hash of the whole transposed copy (widths not a multiple of the block); a file with
    another dtype goes through safe_open."""
    import hashlib

    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from common import genuine_weights as gw

    rng = np.random.default_rng(0)
    tensors = {"transformer.wte.weight": rng.standard_normal((700, 300)).astype("<f4"),
               "h.0.ln_1.bias": rng.standard_normal(300).astype("<f4")}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    got = dict(gw._iter_tensors(path))
    with safe_open(str(path), framework="np") as f:
        assert {gw._normalise(k): f.get_tensor(k).tobytes() for k in f.keys()} == {k: v.tobytes() for k, v in got.items()}
    a = got["wte.weight"]
    assert gw.tensor_sha256(a, True) == hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest()
    assert gw.tensor_sha256(a, False) == hashlib.sha256(a.tobytes()).hexdigest()
    save_file({"x": np.ones((3, 2), dtype=np.float16)}, str(tmp_path / "half.safetensors"))
    (name, arr), = gw._iter_tensors(tmp_path / "half.safetensors")
    assert name == "x" and arr.dtype == np.float16 and arr.shape == (3, 2)


def test_scripts_hash_the_checkpoint_before_the_model_is_in_memory(monkeypatch, planted_model, tmp_path):
    """cli.start computes (and caches) the verdict before it loads the model, so the hashing's
    file buffers never stack on the model's memory; meta.json then reads the cached verdict."""
    import common.model
    from common.cli import base_parser, start

    calls = []
    monkeypatch.setattr(gw, "weights_verdict", lambda model, *a, **k: calls.append(("verdict", model)))
    monkeypatch.setattr(common.model, "load_model", lambda model, device="cpu": calls.append(("load", model)) or planted_model)
    start(base_parser("x").parse_args(["--model", "some/folder", "--out", str(tmp_path / "out")]), "x")
    assert calls == [("verdict", "some/folder"), ("load", "some/folder")]
