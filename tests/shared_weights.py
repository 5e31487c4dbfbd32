"""Test-only access to the real gpt2-small tensors in ../shared/gpt2 (absent for end users)."""

from pathlib import Path

import pytest
import torch

SHARED_GPT2 = Path(__file__).resolve().parents[2] / "shared" / "gpt2"
PARTIAL = SHARED_GPT2 / "gpt2_small_partial_f32.safetensors"

requires_shared = pytest.mark.skipif(not PARTIAL.exists(), reason="../shared/gpt2 weights absent")


def load_shared_gpt2_state_dict(folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The partial gpt2-small weights of ../shared/gpt2 (attention, LN, wpe; no wte or MLP)."""
    from safetensors.torch import load_file

    path = (Path(folder) if folder else SHARED_GPT2) / "gpt2_small_partial_f32.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return load_file(str(path))
