"""composition.py: the heads that read L1H5 (Q-, K- and V-composition scores of every head pair),
on the planted model and its twins; real gpt2-small attention weights where ../shared is present.

Ground truth: TransformerLens' all-pairs composition scores, a Gram-matrix computation of the
composition scores in float64 from the raw shared tensors, z-scores and percentiles worked out by
hand on a small table, and the reader head built into the planted model (``reader_head``,
``reader_composition`` of its ground truth), which no twin changes (common/planted_names.py).
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from common.claims import FAILS, HOLDS, model_kind, status
from common.planted_names import TWINS
from conftest import check_help_and_common_errors, run_main
from script_run import run_then_render
from shared_weights import requires_shared

SCRIPT = "composition.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, planted_model):
    """One run, its figure drawn once, by render(out_dir) from the saved results (script_run)."""
    out = tmp_path_factory.mktemp("composition")
    drawn = run_then_render(SCRIPT, out, "--model", "planted", "--threads", "1")
    return out, drawn


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


def test_outputs_are_the_readers_of_the_saved_pairs(run, truth):
    """composition.csv is L1H5's rows of composition_pairs.csv; summary.json lists its top readers."""
    for f in ("composition.csv", "composition_pairs.csv", "composition.png", "summary.json", "meta.json"):
        assert (run / f).exists(), f
    L, H = truth["target"]
    pairs = pd.read_csv(run / "composition_pairs.csv")
    readers = pd.read_csv(run / "composition.csv")
    mine = pairs[(pairs.writer_layer == L) & (pairs.writer_head == H)]
    assert len(readers) == len(mine) == 3 * 8 * (3 - 1 - L)  # planted: 3 layers of 8 heads
    key = ["mode", "reader_layer", "reader_head"]
    both = readers.merge(mine, on=key, suffixes=("", "_pair"))
    assert len(both) == len(readers) and np.allclose(both.score, both.score_pair)
    summary = json.loads((run / "summary.json").read_text())
    top_v = summary["readers"]["V"][0]
    assert [top_v["layer"], top_v["head"]] == list(truth["reader_head"])


def test_readers_z_and_percentiles_by_hand():
    """z against all pairs of the mode (ddof 1), percentile = share of pairs strictly below, the
    same against the writer's layer only, and the rank among the writer's readers."""
    from composition import readers_of

    # writer L0H0 reads into (1,0), (1,1); writer L0H1 into (1,0), (1,1); writer L1H0 into (2,0)
    rows = [("V", 0, 0, 1, 0, 1.0), ("V", 0, 0, 1, 1, 4.0), ("V", 0, 1, 1, 0, 2.0), ("V", 0, 1, 1, 1, 3.0),
            ("V", 1, 0, 2, 0, 5.0), ("Q", 0, 0, 1, 0, 9.0)]
    pairs = pd.DataFrame(rows, columns=["mode", "writer_layer", "writer_head", "reader_layer", "reader_head", "score"])
    r = readers_of(pairs, 0, 0)
    v = r[r["mode"] == "V"]
    # V scores 1, 4, 2, 3, 5: mean 3, sample sd sqrt(10 / 4)
    sd = np.sqrt(2.5)
    assert v.reader_head.tolist() == [1, 0] and v["rank"].tolist() == [1, 2]  # 4.0 first
    np.testing.assert_allclose(v.z, [(4 - 3) / sd, (1 - 3) / sd])
    np.testing.assert_allclose(v.percentile, [60.0, 0.0])  # 4 is above 1, 2, 3 of the five; 1 above none
    np.testing.assert_allclose(v.percentile_writer_layer, [75.0, 0.0])  # layer-0 writers: 1, 4, 2, 3
    q = r[r["mode"] == "Q"]
    assert len(q) == 1 and q.z.iloc[0] == 0.0  # one pair: no spread, z 0
    assert readers_of(pairs, 2, 0).empty  # no reader after the last layer


def test_composition_scores_equal_transformer_lens_all_pairs(planted_model):
    """The writer-by-writer loop gives model.all_composition_scores' numbers for every pair."""
    from composition import composition_table

    model = planted_model
    pairs = composition_table(model)
    n_l = model.cfg.n_layers
    assert len(pairs) == 3 * sum(model.cfg.n_heads ** 2 * (n_l - 1 - l) for l in range(n_l))
    for mode in "QKV":
        ref = model.all_composition_scores(mode)
        sub = pairs[pairs["mode"] == mode]
        want = ref[sub.writer_layer.to_numpy(), sub.writer_head.to_numpy(), sub.reader_layer.to_numpy(),
                   sub.reader_head.to_numpy()].numpy()
        np.testing.assert_allclose(sub.score.to_numpy(), want, rtol=1e-4, atol=1e-6)


def test_composition_scores_equal_transformer_lens_per_writer_to_round_off(planted_model):
    """Reader layer by reader layer gives TransformerLens' composition_scores of one writer against
    every later layer at once (the previous writer-by-writer computation) to float32 round-off:
    rtol 1e-5, atol 5e-7 (each is within 1.3e-6 relative, 1.1e-7 absolute of the float64 scores
    here). Not bit for bit: the two batch the SVDs and matmuls differently (one layer's heads vs
    one writer against all later layers), and the kernels' round-off depends on the batch shape,
    differently on different CPUs."""
    from transformer_lens.utilities import composition_scores

    from composition import composition_table

    model = planted_model
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    pairs = composition_table(model)
    QK = model.QK[1:]
    rights = {"Q": QK, "K": QK.T, "V": model.OV[1:]}
    rl, rh = np.meshgrid(np.arange(1, n_l), np.arange(n_h), indexing="ij")
    for mode in "QKV":
        for l in range(n_l - 1):
            for h in range(n_h):
                want = composition_scores(model.OV[l, h], rights[mode]).float().numpy()[rl > l]
                got = pairs[(pairs["mode"] == mode) & (pairs.writer_layer == l) & (pairs.writer_head == h)]
                assert (got.reader_layer.to_numpy() == rl[rl > l]).all() and (got.reader_head.to_numpy() == rh[rl > l]).all()
                np.testing.assert_allclose(got.score.to_numpy(), want, rtol=1e-5, atol=5e-7)


def test_reader_head_comes_out_on_top(planted_model, truth):
    """The planted reader head (built to read L1H5's output through its values) is L1H5's top
    reader in the construction's mode, and stands out from every head pair of the model."""
    from composition import composition_table, readers_of

    L, H = truth["target"]
    readers = readers_of(composition_table(planted_model), L, H)
    mode = truth["reader_composition"]
    top = readers[readers["mode"] == mode].iloc[0]
    assert [int(top.reader_layer), int(top.reader_head)] == list(truth["reader_head"])
    assert top["rank"] == 1 and top.z > 3  # and it stands out from every head pair of the model


def _real_attention_model(vocab: int = 64):
    """gpt2-small's real attention weights (../shared) in a HookedTransformer, processed like
    common.model.load_local_folder (fold_ln, centred writing weights): the attention circuits of
    bench/build_model.py's model, with a tiny random vocabulary and zero MLP matrices (composition
    scores read neither)."""
    from types import SimpleNamespace as NS

    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config

    from common.model import gpt2_tl_config
    from shared_weights import load_shared_gpt2_state_dict

    sd = load_shared_gpt2_state_dict()
    d, n_l = 768, 12
    wte = torch.randn(vocab, d, generator=torch.Generator().manual_seed(0)) * 0.14

    def lin(name, w=None):
        return NS(weight=sd[f"{name}.weight"] if w is None else w, bias=sd[f"{name}.bias"])

    blocks = [NS(ln_1=lin(f"h.{i}.ln_1"), ln_2=lin(f"h.{i}.ln_2"),
                 attn=NS(c_attn=lin(f"h.{i}.attn.c_attn"), c_proj=lin(f"h.{i}.attn.c_proj")),
                 mlp=NS(c_fc=lin(f"h.{i}.mlp.c_fc", torch.zeros(d, 4 * d)),
                        c_proj=lin(f"h.{i}.mlp.c_proj", torch.zeros(4 * d, d)))) for i in range(n_l)]
    hf = NS(transformer=NS(wte=NS(weight=wte), wpe=NS(weight=sd["wpe.weight"]), h=blocks, ln_f=lin("ln_f")),
            lm_head=NS(weight=wte))
    cfg = gpt2_tl_config(GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=d, n_layer=n_l, n_head=12))
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True,
                                      refactor_factored_attn_matrices=False)
    return model, sd


def _gram_composition(sd, writer, n_l=12, n_h=12, dh=64):
    """Q/K/V composition scores of ``writer`` with every later head, in float64 from the raw HF
    tensors: LN weight folded into W_Q/W_K/W_V and their rows centred, W_O's rows centred; then
    ||A B||_F / (||A||_F ||B||_F) through 64 x 64 Gram matrices (no SVD, no TransformerLens)."""
    folded = {}

    def head(l, h):
        if l not in folded:
            w = sd[f"h.{l}.attn.c_attn.weight"].double() * sd[f"h.{l}.ln_1.weight"].double()[:, None]
            folded[l] = w - w.mean(0)
        w = folded[l]
        q, k, v = (w[:, j * 768 + h * dh : j * 768 + (h + 1) * dh] for j in range(3))
        o = sd[f"h.{l}.attn.c_proj.weight"].double()[h * dh : (h + 1) * dh]
        return q, k, v, o - o.mean(1, keepdim=True)

    _, _, va, oa = head(*writer)
    gv = va.T @ va
    norm_a = torch.sqrt(torch.trace(gv @ (oa @ oa.T)))  # ||W_V W_O||_F
    out = {}
    for l in range(writer[0] + 1, n_l):
        for h in range(n_h):
            q, k, v, o = head(l, h)
            gq, gk = q.T @ q, k.T @ k
            # right matrix X Y^T: ||W_V (W_O X) Y^T||_F^2 = tr(G_V M G_Y M^T) with M = W_O X
            for mode, (x, g_y, norm_b2) in {"Q": (q, gk, torch.trace(gq @ gk)),
                                           "K": (k, gq, torch.trace(gq @ gk)),
                                           "V": (v, o @ o.T, torch.trace((v.T @ v) @ (o @ o.T)))}.items():
                m = oa @ x
                out[(mode, l, h)] = float(torch.sqrt(torch.trace(gv @ m @ g_y @ m.T)) / norm_a / torch.sqrt(norm_b2))
    return out


@requires_shared
def test_real_gpt2_small_readers_of_l1h5():
    from composition import composition_table, readers_of

    model, sd = _real_attention_model()
    pairs = composition_table(model, writers=[(1, 5)])
    want = _gram_composition(sd, (1, 5))
    got = {(r.mode, r.reader_layer, r.reader_head): r.score for r in pairs.itertuples()}
    assert set(got) == set(want) and len(got) == 3 * 10 * 12
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4)
    readers = readers_of(pairs, 1, 5)
    for mode in "QKV":
        best = max((k for k in want if k[0] == mode), key=want.get)
        top = readers[readers["mode"] == mode].iloc[0]
        assert (mode, top.reader_layer, top.reader_head) == best


def test_reader_claim_holds_on_the_planted_model(run, truth):
    """The claim's check on the saved run names the planted reader and calls it standing out."""
    from composition import check_reader

    ev = check_reader(run)
    assert ev.numbers["reader"] == list(truth["reader_head"]) and truth["reader_composition"] == "V"
    assert ev.holds is True and ev.published is None
    assert ev.numbers["z"] > 3


def test_twins_declare_the_reader_claim_correctly(tmp_path, planted_cache):
    """No twin switch touches L1H5's output or the reader's values (tests/test_twins.py checks that
    a twin changes only L1H5's QK and what layer 2 calibrates on), so the reader claim holds on
    every twin unless its ground truth declares it false. Run on the copying twin, whose switch
    changes L1H5's attention, and so what layer 2 calibrates on, the most (one twin keeps the
    suite fast; the composition scores read no QK weight of L1H5)."""
    twin = "copying"
    from composition import CLAIMS, check_reader

    out = tmp_path / "composition"
    run_main(SCRIPT, "--model", f"planted:{twin}", "--out", str(out), "--threads", "1")
    kind = model_kind(json.loads((out / "meta.json").read_text()))
    (claim,) = CLAIMS
    want = FAILS if claim.id in TWINS[twin].false_claims else HOLDS
    assert kind == "planted" and status(check_reader(out), kind) == want


def test_render_redraws_from_saved_files(runs):
    """render(out_dir) drew the figure into a folder that held only the saved results."""
    run, paths = runs
    assert [p.name for p in paths] == ["composition.png"] and paths[0].stat().st_size > 0


def test_help_and_common_errors(tmp_path, capsys, planted_model):
    from composition import main

    text = check_help_and_common_errors(main, tmp_path, capsys)
    assert "--layer" in text and "--categories" not in text  # weights only: no succession options
