"""common/effective_embeddings.py (issue 10, defects 4 and 7): the W_pos averaging is an explicit,
recorded option (default: the positions prompts occupy), the cache key holds the prompt mix and
the position choice, and the fidelity of effective embeddings against the true layer-L inputs is
measured, on planted v3 and on a model with gpt2-small's real positional embedding, layer norms
and attention weights (bench/build_model.py's model; skipped where ../shared is absent)."""

import copy
import json

import numpy as np
import pytest
import torch

import common.effective_embeddings as ee
from common.effective_embeddings import (compute_effective_embeddings, effective_cache_path, effective_embeddings,
                                         effective_fidelity, effective_record, effective_spec)
from shared_weights import requires_shared


def _lnpre(x, eps):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


# -- defect 4: the position choice is an explicit, recorded option ---------------------------------------------
def test_position_choice_is_explicit_and_recorded(planted_model, truth):
    m = planted_model
    spec = effective_spec(m, 1)
    assert spec["positions"] == "prompt" and spec["position_range"] == [1, 48]
    assert spec["attention_mean"]["prompt_mix"] == ee.MIX and spec["attention_mean"]["seed"] == 0
    assert effective_spec(m, 1, "all")["position_range"] == [0, m.cfg.n_ctx - 1]
    custom = effective_spec(m, 1, (3, 10), seed=2)
    assert custom["positions"] == "range" and custom["position_range"] == [3, 10]
    assert custom["attention_mean"]["seed"] == 2
    # the norm of the averaged positional vector, against the construction's own numbers
    assert spec["position_mean_norm"] == pytest.approx(truth["position_norm"]["mean_prompt_positions"], abs=1e-4)
    assert effective_spec(m, 1, "all")["position_mean_norm"] == pytest.approx(
        truth["position_norm"]["mean_all_positions"], abs=1e-4)
    json.dumps(spec)
    for bad in ("bogus", (5, 500), (10, 3), (-1, 4)):
        with pytest.raises(ValueError):
            effective_spec(m, 1, bad)


def test_layer0_effective_embedding_is_ln_of_token_plus_mean_position(planted_model):
    """At layer 0 the definition is LN(W_E[t] + mean of the chosen W_pos rows), and for BOS
    LN(W_E[BOS] + W_pos[0]) whatever the choice (it always sits at position 0): checked by hand."""
    m = planted_model
    ids = torch.tensor([0, 262, 3797, 50256, 12345])
    got = {}
    for positions, (a, b) in (("prompt", (1, 48)), ("all", (0, m.cfg.n_ctx - 1)), ((5, 9), (5, 9))):
        E = compute_effective_embeddings(m, 0, positions=positions, token_ids=ids)
        ref = _lnpre(m.W_E[ids] + m.W_pos[a : b + 1].mean(0), m.cfg.eps)
        ref[3] = _lnpre(m.W_E[50256] + m.W_pos[0], m.cfg.eps)
        torch.testing.assert_close(E, ref, atol=1e-5, rtol=1e-5)
        got[str(positions)] = E
    assert (got["prompt"] - got["all"]).norm() > 0.1 * got["prompt"].norm()
    full = compute_effective_embeddings(m, 0)
    torch.testing.assert_close(full[ids], got["prompt"])  # default: the prompt positions


# -- issue 20: BOS's row is its input at position 0 ------------------------------------------------------------
@pytest.mark.parametrize("layer", [1, 2])
def test_bos_row_is_the_layer_input_at_position_zero(planted_model, layer):
    """BOS always sits at position 0, which attends only to itself: its effective embedding is the
    layer's LN'd input there (``blocks.L.ln1.hook_normalized`` at position 0 of ordinary prompts
    of other lengths and contents; equal to float32 round-off, 1e-5), in the full table, for
    ``token_ids`` and from the cache. The old definition (the means over positions 1..48 and the
    mean attention outputs) misses it by far more."""
    m = planted_model
    bos = m.tokenizer.bos_token_id
    prompts = [ee.fidelity_prompts(m.tokenizer, 4, 20), ee.fidelity_prompts(m.tokenizer, 2, 48, seed=5)]
    true = []
    for p in prompts:
        _, cache = m.run_with_cache(p, stop_at_layer=layer + 1, names_filter=f"blocks.{layer}.ln1.hook_normalized")
        true.append(cache[f"blocks.{layer}.ln1.hook_normalized"][:, 0])
    true = torch.cat(true)
    assert (true - true[0]).abs().max() < 1e-5  # the same in every prompt
    rows = compute_effective_embeddings(m, layer, token_ids=[262, bos, 3797])
    torch.testing.assert_close(rows[1].expand_as(true), true, atol=1e-5, rtol=1e-5)
    E = effective_embeddings(m, layer)
    assert "eff-v3" in effective_cache_path(m, layer).name and effective_cache_path(m, layer).exists()
    torch.testing.assert_close(E[bos], rows[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(E[[262, 3797]], rows[[0, 2]], atol=1e-5, rtol=1e-5)  # other rows: the means
    # the old BOS row: W_E[BOS] + the mean of W_pos[1..48], mean attention outputs, MLPs, LN
    attn = ee.mean_attention_outputs(m, list(range(layer)))
    x = (m.W_E[bos] + m.W_pos[1:49].mean(0))[None, None]
    for l in range(layer):
        x = x + attn[l]
        x = x + m.blocks[l].mlp(m.blocks[l].ln2(x))
    old = m.blocks[layer].ln1(x)[0, 0]
    assert (old - true[0]).norm() > 100 * 1e-5 * true[0].norm()
    assert effective_spec(m, layer)["bos_row"].startswith("BOS: the model's own layer-L input at position 0")


# -- defect 7: the cache key includes the prompt mix and the position choice ---------------------------------
def test_cache_key_holds_positions_and_prompt_mix(planted_model, monkeypatch):
    m = planted_model
    paths = {effective_cache_path(m, 1, p, s) for p, s in (("prompt", 0), ("all", 0), ((2, 30), 0), ("prompt", 1))}
    assert len(paths) == 4
    assert effective_cache_path(m, 1) == effective_cache_path(m, 1, "prompt", 0)
    assert effective_cache_path(m, 1) != effective_cache_path(m, 2)
    base = effective_cache_path(m, 1)
    mix = copy.deepcopy(ee.MIX)
    mix["random_token_prompts"]["n_inserted"] = 6
    monkeypatch.setattr(ee, "MIX", mix)
    assert effective_cache_path(m, 1) != base
    monkeypatch.undo()
    # cached files hold what their spec says (layer 0: cheap to compute in full)
    E_all = effective_embeddings(m, 0, positions="all")
    assert effective_cache_path(m, 0, "all").exists()
    E_prompt = effective_embeddings(m, 0)
    assert torch.equal(effective_embeddings(m, 0, positions="all"), E_all)  # from the cache
    assert torch.equal(E_all, compute_effective_embeddings(m, 0, positions="all"))
    assert torch.equal(E_prompt, compute_effective_embeddings(m, 0))
    assert not torch.equal(E_all, E_prompt)


def test_corrupt_cache_entry_is_noted_and_recomputed(planted_model, tmp_path, monkeypatch, capfd):
    """A cached table whose bytes changed (same size and modification time) is never served: one
    note, and the table computed again (layer 0, positions "all": cheap in full)."""
    import os

    m = planted_model
    monkeypatch.setenv("L1H5_CACHE", str(tmp_path / "cache"))
    want = compute_effective_embeddings(m, 0, positions="all")
    assert torch.equal(effective_embeddings(m, 0, positions="all"), want)
    table = effective_cache_path(m, 0, "all") / ee.EMBEDDINGS
    st = table.stat()
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor's storage
    table.write_bytes(bytes(data))
    os.utime(table, ns=(st.st_atime_ns, st.st_mtime_ns))
    capfd.readouterr()
    assert torch.equal(effective_embeddings(m, 0, positions="all"), want)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0] and "rebuilding it" in err[0], err
    assert torch.equal(effective_embeddings(m, 0, positions="all"), want)  # the rewritten entry
    assert capfd.readouterr().err == ""


def test_unwritable_cache_folder_computes_with_one_note(planted_model, tmp_path, monkeypatch, capfd):
    from common import disk_cache

    m = planted_model
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("L1H5_CACHE", str(blocker))
    disk_cache.NOTED.clear()
    capfd.readouterr()
    want = compute_effective_embeddings(m, 0)
    assert torch.equal(effective_embeddings(m, 0), want) and torch.equal(effective_embeddings(m, 0), want)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: cannot write the effective-embeddings cache") \
        and str(blocker) in err[0], err


# -- fidelity against true forward passes ------------------------------------------------------------------
def test_fidelity_is_exact_when_inputs_do_not_vary(planted_model):
    """A copy of the model whose W_pos rows are all the mean over the prompt positions: at layer 0
    the effective embeddings then ARE the true inputs, so fidelity must be perfect."""
    m = copy.deepcopy(planted_model)
    if hasattr(m, "_l1h5_fingerprint"):
        del m._l1h5_fingerprint
    with torch.no_grad():
        m.W_pos[:] = m.W_pos[1:49].mean(0)
    for head in (0, 3):
        f = effective_fidelity(m, 0, head, n_prompts=4, seq_len=20)
        assert f["cosine_min"] > 1 - 1e-5 and f["score_corr"] > 1 - 1e-6
        assert f["score_rel_rmse"] < 1e-3 and f["score_rel_rmse_centred"] < 1e-3
        assert f["score_slope"] == pytest.approx(1.0, abs=1e-3)
    f = effective_fidelity(planted_model, 0, 3, n_prompts=4, seq_len=20)  # the real positions: not exact
    assert f["cosine_min"] < 0.99


def test_fidelity_on_planted_prompt_positions_beat_all(planted_model, truth):
    """On planted v3 (positions as large as tokens, varying layer-0 attention) the default choice
    keeps L1H5's scores close to the model's; the 1024-style mean over all positions does not."""
    L, H = truth["target"]
    p = effective_fidelity(planted_model, L, H)
    a = effective_fidelity(planted_model, L, H, positions="all")
    assert p["n_positions"] == 16 * 48 and p["n_pairs"] == 16 * 48 * 49 // 2
    assert p["position_range"] == [1, 48] and a["position_range"] == [0, planted_model.cfg.n_ctx - 1]
    assert p["cosine_mean"] > 0.93 and p["score_corr"] > 0.97 and p["score_rel_rmse_centred"] < 0.3
    assert a["cosine_mean"] < p["cosine_mean"] - 0.1
    assert a["score_rel_rmse_centred"] > 2 * p["score_rel_rmse_centred"]
    assert abs(1 - a["score_slope"]) > 2 * abs(1 - p["score_slope"])
    # the positional head is not described by position-free embeddings at all: fidelity says so
    assert effective_fidelity(planted_model, *truth["positional_head"])["score_corr"] < 0.3


def test_effective_record(planted_model, truth):
    rec = effective_record(planted_model, *truth["target"])
    assert rec["positions"] == "prompt" and rec["fidelity"]["head"] == truth["target"][1]
    assert set(effective_spec(planted_model, 1)) <= set(rec)
    json.dumps(rec)


# -- a model with gpt2-small's real positions, layer norms and attention weights ----------------------------
@pytest.fixture(scope="module")
def real_tensor_model():
    """bench/build_model.py's gpt2-small-shaped model (real wpe, LN, attention, biases; seeded random
    wte and MLPs), restricted to layers 0-1 (all a layer-1 input depends on), built in memory and
    processed like every local folder (fold_ln, centring)."""
    pytest.importorskip("safetensors")
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    from bench.build_model import HUB_CONFIG, build_state_dict
    from common.gpt2_tokenizer import load_tokenizer
    from common.model import gpt2_tl_config

    n_layer = 2
    sd = {k: v for k, v in build_state_dict().items() if not k.startswith("h.") or int(k.split(".")[1]) < n_layer}
    cfg = GPT2Config(**{k: v for k, v in HUB_CONFIG.items() if k != "architectures"} | {"n_layer": n_layer})
    with torch.device("meta"):
        hf = GPT2LMHeadModel(cfg)
    hf.transformer.load_state_dict(sd, strict=False, assign=True)
    hf.lm_head.weight = hf.transformer.wte.weight
    tl_cfg = gpt2_tl_config(hf.config)
    model = HookedTransformer(tl_cfg, load_tokenizer(), move_to_device=False)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, tl_cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True, refactor_factored_attn_matrices=False)
    model.eval()
    del hf, sd
    return model


@requires_shared
def test_real_positions_the_choice_matters(real_tensor_model):
    """gpt2-small's real W_pos (issue 10): the 1024-position mean has norm 0.59, the mean over
    positions 1..48 3.28, at cosine 0.03."""
    m = real_tensor_model
    p, a = effective_spec(m, 1), effective_spec(m, 1, "all")
    assert a["position_range"] == [0, 1023] and p["position_range"] == [1, 48]
    assert a["position_mean_norm"] == pytest.approx(0.59, abs=0.01)
    assert p["position_mean_norm"] == pytest.approx(3.28, abs=0.01)
    cos = torch.nn.functional.cosine_similarity(m.W_pos.mean(0), m.W_pos[1:49].mean(0), dim=0)
    assert abs(float(cos)) < 0.06


@requires_shared
def test_real_fidelity_prompt_positions_beat_all(real_tensor_model):
    """With gpt2-small's real positions and L1H5's real weights, effective embeddings over the
    prompt positions are closer to the true layer-1 inputs, and L1H5's scores from them closer to
    the real scores, than with the 1024-position mean; neither reproduces the scores exactly."""
    m = real_tensor_model
    p = effective_fidelity(m, 1, 5)
    a = effective_fidelity(m, 1, 5, positions="all")
    assert p["cosine_mean"] > a["cosine_mean"] + 0.005 and p["cosine_p05"] > a["cosine_p05"]
    assert p["score_rel_rmse_centred"] < a["score_rel_rmse_centred"] - 0.02
    assert p["score_corr"] > a["score_corr"]
    assert 0.8 < p["cosine_mean"] < 0.99 and 0.5 < p["score_corr"] < 0.95
    assert np.isfinite(list(v for v in p.values() if isinstance(v, float))).all()


def test_qk_scripts_record_effective_embedding_fidelity(tmp_path, planted_model, truth):
    """start_head (the QK scripts' start-up) writes how the effective embeddings were made and
    how faithful they are, into the script's output folder."""
    import argparse
    import json

    from common.cli import start_head

    args = argparse.Namespace(model="planted", device="cpu", layer=truth["target"][0], head=truth["target"][1],
                              seed=0, threads=1, out=str(tmp_path))
    s = start_head(args, "x")
    rec = json.loads((tmp_path / "effective_embeddings.json").read_text())
    assert rec["positions"] == "prompt" and rec["layer"] == args.layer
    assert s.E.shape == (planted_model.cfg.d_vocab, planted_model.cfg.d_model)
    # planted v3 is built so that effective embeddings are faithful on the prompt positions
    assert rec["fidelity"]["cosine_mean"] > 0.9 and rec["fidelity"]["score_corr"] > 0.95
