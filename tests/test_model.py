"""Model loading: the local-folder route equals transformers, tokenizer ids, clear errors."""

import json
import shutil

import pytest
import torch

from common.model import ModelUnavailable, load_local_folder, load_model
from common.planted import planted_folder


def test_tokenizer_ids(tokenizer):
    assert tokenizer("Hello, world!")["input_ids"] == [15496, 11, 995, 0]
    assert tokenizer.encode("<|endoftext|> cat dog red blue cat") == [50256, 3797, 3290, 2266, 4171, 3797]
    assert tokenizer.bos_token_id == 50256


def test_local_folder_matches_transformers(planted_model):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(planted_folder())).eval()
    tokens = torch.tensor([[50256, 3797, 3290, 2266, 4171, 3797, 15496, 11, 995, 0]])
    ours = planted_model(tokens).log_softmax(-1)
    with torch.no_grad():
        theirs = hf(tokens).logits.log_softmax(-1)
    # center_unembed shifts every logit of a position by one constant: compare log-probs.
    assert (ours - theirs).abs().max().item() < 1e-4


def test_processing_matches_from_pretrained_defaults(planted_model):
    # fold_ln turns LN into LNPre; center_writing_weights makes W_E/W_pos/W_O/W_out rows zero-mean.
    assert planted_model.cfg.normalization_type == "LNPre"
    assert planted_model.W_E.mean(-1).abs().max() < 1e-5
    assert planted_model.W_O.mean(-1).abs().max() < 1e-5
    assert planted_model.W_U.mean(-1).abs().max() < 1e-5  # center_unembed


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(planted_folder(), folder)
    sd = load_file(str(folder / "model.safetensors"))
    victim = next(k for k in sd if k.endswith("h.1.mlp.c_fc.weight"))
    del sd[victim]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelUnavailable, match=r"missing: h\.1\.mlp\.c_fc\.weight"):
        load_local_folder(folder)


def test_wrong_shape_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(planted_folder(), folder)
    sd = load_file(str(folder / "model.safetensors"))
    key = next(k for k in sd if k.endswith("wpe.weight"))
    sd[key] = sd[key][:10].clone()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelUnavailable, match="wpe.weight"):
        load_local_folder(folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelUnavailable, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelUnavailable, match="unknown model"):
        load_model("no-such-model-anywhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelUnavailable, match="model.safetensors"):
        load_model(str(tmp_path))
