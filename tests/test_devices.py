"""Everything the head-replacement hooks and gradient_steering create lives on the model's device.

How a CPU machine catches a CPU-built tensor meeting a GPU activation: the activations (and, for
the hooks, a copy of the planted model) are put on PyTorch's "meta" device, and every torch call
made meanwhile is watched by :class:`DeviceAudit`. A call that mixes a non-scalar tensor of one
device with one of another is recorded (CUDA raises on most such calls; meta raises on some but
lets a matrix product through, so the audit is what makes the check complete), and so is every
tensor a call returns on another device than the activations'. With the scorers built on the CPU
(as common.head_qk builds them), today's code fails both checks; the fixed code passes.

The same scripts are run end to end on CUDA / MPS where available (skipped otherwise).
"""

from __future__ import annotations

import copy
import json
from argparse import Namespace

import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

META = torch.device("meta")
# Calls that move a tensor to a device by design: their operands may differ in device.
MOVES = {"to", "cpu", "cuda", "copy_", "new_tensor", "__get__"}


class DeviceAudit(TorchFunctionMode):
    """Records torch calls whose tensor operands sit on different devices (CPU 0-dim scalars
    excepted, as in PyTorch) and calls that return a tensor off ``device`` (except random draws
    from an explicit CPU generator: seeded alike on every device, then moved)."""

    def __init__(self, device: torch.device = META):
        super().__init__()
        self.device, self.mixed, self.off_device = device, [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1 and name not in MOVES:
            self.mixed.append((name, sorted(map(str, devices))))
        out = func(*args, **kwargs)
        gen = kwargs.get("generator")
        if gen is not None and gen.device.type == "cpu":
            return out  # a seeded CPU draw, the same numbers on every device (it must be moved before use)
        if name not in MOVES or self.device in devices:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device != self.device and t.dim() > 0:
                    self.off_device.append((name, str(t.device), tuple(t.shape)))
        return out

    def assert_clean(self, what: str):
        assert not self.mixed, f"{what}: torch calls mixing devices: {self.mixed[:5]}"
        assert not self.off_device, f"{what}: tensors created off the activations' device: {self.off_device[:5]}"


def test_the_audit_sees_a_cpu_tensor_meet_a_meta_activation():
    """Negative control: a matrix product of a meta activation with a CPU weight (which meta
    alone lets through) and a CPU tensor created next to a meta activation are both caught."""
    x = torch.ones(2, 3, device=META)
    with DeviceAudit() as audit:
        y = x @ torch.ones(3, 4)
    assert y.device == META and audit.mixed and audit.mixed[0][0] in ("matmul", "__matmul__")
    with DeviceAudit() as audit:
        torch.zeros(5)  # no device=: lands on the CPU
    assert audit.off_device
    w = torch.ones(3, 4)  # a CPU weight built beforehand, as the scorers are
    with DeviceAudit() as audit:
        (x @ w.to(x.device)) + torch.tensor(1.0)  # moved weight, CPU scalar: fine
    audit.assert_clean("control")


@pytest.fixture(scope="module")
def meta_model(planted_model):
    """A copy of the planted model on the meta device (the session's model is left as it is)."""
    m = copy.deepcopy(planted_model)
    m.to(META)
    assert m.cfg.device in (META, "meta") and m.W_Q.device == META
    return m


@pytest.fixture(scope="module")
def setup(planted_model, truth, tokenizer):
    from common.head_qk import FactoredQK
    from common.prompts import category_prompts

    layer, head = truth["target"]
    qk = FactoredQK.from_model(planted_model, layer, head)  # built on the CPU, as the scripts do
    assert qk.W_Q.device.type == "cpu"
    batch = category_prompts(tokenizer, 3, 10, seed=4, repeat_prob=0.3)
    return layer, head, qk, batch


def _scorers(qk):
    """Every kind of scorer the scripts build: the head, eigenvalue edits with and without the
    skew part (biases kept), a top-k sum, gradient_steering's eigen and weight variants."""
    import gradient_steering as gs
    from common.factored import Factored, steer

    eig, c = qk.sym_eig(), 1.0 / qk.attn_scale
    sym = steer(qk.scorer(), 1.0, "negative", keep_skew=False, eig=eig, eig_scale=c)
    U = eig.vectors[:, :2].float()
    return {
        "head": qk.scorer(),
        "negative zeroed": qk.steer(0.0, "negative", keep_skew=True, biases=True, scaled=True),
        "sym": sym,
        "sym minus two directions": sym.plus(Factored(U, -U * eig.values[:2].float() * c)),
        "eigen alpha": gs.eigen_scorer(qk, 0.5),
        "edited weights": gs.weight_variant(qk, qk.W_Q * 1.1, qk.W_K).scorer,
    }


def test_hooks_compute_on_the_models_device(meta_model, setup, tokenizer):
    """Every replacement hook, run inside the model's forward on meta: nothing is made or used
    on the CPU (the score hooks fail this today: the scorer stays on the CPU)."""
    from common.ablation import mean_ablation_hooks, resample_ablation_hooks
    from common.head_replacement import (
        categories_from_lists,
        layer_input,
        pattern_hooks,
        rules_pattern,
        run_from_layer,
        score_hooks,
        z_hooks,
    )

    layer, head, qk, batch = setup
    tokens = batch.tokens.to(META)
    resid = torch.zeros(*tokens.shape, meta_model.cfg.d_model, device=META)
    cats = categories_from_lists(tokenizer, meta_model.cfg.d_vocab)  # a CPU table, as rpa builds it
    ref_z = {"z": torch.randn(4, tokens.shape[1], meta_model.cfg.d_head)}  # a CPU cache, as rpa keeps it
    hooks = {name: score_hooks(layer, head, s) for name, s in _scorers(qk).items()}
    hooks["mean"] = z_hooks(layer, head, mean_ablation_hooks(ref_z)["z"][0][1])  # statistics on the CPU
    hooks["resample"] = z_hooks(layer, head, resample_ablation_hooks(ref_z)["z"][0][1])
    with DeviceAudit() as audit:
        hooks["rules"] = pattern_hooks(layer, head, rules_pattern(tokens, cats))
    audit.assert_clean("rules pattern")
    for name, h in hooks.items():
        with DeviceAudit() as audit:
            out = run_from_layer(meta_model, resid, layer, h)
        assert out.device == META and out.shape[:2] == tokens.shape
        if name == "resample":  # common.ablation draws on the CPU on purpose (the same draws on every
            audit.off_device.clear()  # device) and moves the sample; it must still never mix devices
        audit.assert_clean(name)
    with DeviceAudit() as audit:
        x = layer_input(meta_model, batch.tokens, layer, head)
    assert x.device == META
    audit.assert_clean("layer_input")


def test_scores_compute_on_the_activations_device(setup):
    """head_scores (every scorer) and qk_scores (CPU weights) on meta activations."""
    from common.head_replacement import head_scores, qk_scores

    _, _, qk, batch = setup
    x = torch.zeros(*batch.tokens.shape, qk.d_model, device=META)
    for name, s in _scorers(qk).items():
        with DeviceAudit() as audit:
            out = head_scores(s, x)
        assert out.device == META
        audit.assert_clean(name)
    with DeviceAudit() as audit:
        out = qk_scores(x, qk.W_Q, qk.W_K, qk.b_Q, qk.b_K, qk.attn_scale)
    assert out.device == META
    audit.assert_clean("qk_scores")


@pytest.mark.parametrize("rank, keep", [(0, 1.0), (2, 0.0)])
def test_gradient_steering_runs_on_the_activations_device(setup, rank, keep):
    """gradient_steering's optimisation (update, Adam, trust region, both losses), its held-out
    evaluation and every variant's scores, with the head's input on meta: all on meta."""
    import gradient_steering as gs

    _, _, qk, batch = setup
    x = torch.zeros(*batch.tokens.shape, qk.d_model, device=META)
    data = (x, batch.tokens.to(META))
    args = Namespace(rank=rank, seed=0, lr=0.01, margin=10.0, keep_weight=keep, max_edit=1.0)
    for direction in ("promote", "suppress"):
        with DeviceAudit() as audit, torch.enable_grad():
            run = gs.Steering(qk, data, data, direction, args)
            for _ in range(2):
                loss, task, kept = run.losses("train")
                run.step(loss)
            held = run.losses("held")
        assert all(p.device == META for p in run.upd.parameters())
        assert all(t.device == META for t in (loss, task, kept, *held))
        audit.assert_clean(f"{direction}, rank {rank}")
    variants = {"weights": gs.weight_variant(qk, qk.W_Q, qk.W_K + qk.W_Q),
                "eigen": gs.Variant(gs.eigen_scorer(qk, 0.5), alpha=0.5)}
    for name, v in variants.items():
        with DeviceAudit() as audit:
            numbers = gs.evaluation_tensors(v.scores(qk, x), batch.tokens, batch.mask)  # CPU tokens and mask
        assert all(t.device == META for t in numbers.values())
        audit.assert_clean(name)


ACCELERATORS = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS device")),
]


@pytest.mark.parametrize("device", ACCELERATORS)
def test_scripts_run_end_to_end_on_an_accelerator(tmp_path, device, planted_model):
    """gradient_steering and rule_preserving_ablation with --device: they run, and give the CPU
    run's numbers (float round-off aside)."""
    from conftest import run_main

    gs_args = ["--model", "planted", "--steps", "5", "--n-prompts", "16", "--n-heldout", "8",
               "--n-rank-queries", "20", "--threads", "1"]
    rpa_args = ["--model", "planted", "--text", "demo", "--communities", "lists", "--n-windows", "4",
                "--n-reference", "2", "--window-len", "32", "--batch-size", "4", "--n-boot", "50", "--threads", "1"]
    for script, args, table, cols in (
            ("gradient_steering.py", gs_args, "variants", ["mass_self_and_copies", "mean_log_self_mass"]),
            ("rule_preserving_ablation.py", rpa_args, "explained", ["mean_kl", "explained"])):
        runs = {}
        for dev in ("cpu", device):
            out = tmp_path / f"{script}-{dev}"
            run_main(script, *args, "--device", dev, "--out", str(out))
            runs[dev] = pd.read_csv(out / f"{table}.csv")
            assert json.loads((out / "meta.json").read_text())["args"]["device"] == dev
        pd.testing.assert_frame_equal(runs["cpu"][cols], runs[device][cols], rtol=1e-3, atol=1e-4)
