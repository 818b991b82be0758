"""Decoder layers and q/k/v/o/gate/up/down modules of Llama-family, GPT-2 and LoRA-wrapped models."""

from __future__ import annotations

import pytest
import torch
from mlr.errors import MlrInputError
from mlr.modules import MODULE_TYPES, canonical_module_name, decoder_layers, decoder_modules
from peft import LoraConfig, get_peft_model
from tiny_models import HIDDEN, tiny_gpt2, tiny_llama
from torch import nn


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_llama_family(family):
    model = tiny_llama(layers=2, family=family)
    refs = decoder_modules(model)
    assert [(r.layer, r.type) for r in refs] == [(i, t) for i in range(2) for t in MODULE_TYPES]
    q = refs[0]
    assert q.name == q.module_name == "model.layers.0.self_attn.q_proj"
    assert q.parameter_name == "model.layers.0.self_attn.q_proj.weight"
    assert q.weight() is model.model.layers[0].self_attn.q_proj.weight
    down = refs[-1]
    assert down.name == "model.layers.1.mlp.down_proj" and down.type == "down"
    assert decoder_layers(model) is model.model.layers


def test_gpt2_splits_fused_attention_into_column_slices():
    model = tiny_gpt2(layers=2)
    refs = decoder_modules(model)
    assert [r.type for r in refs[:6]] == ["q", "k", "v", "o", "up", "down"]
    c_attn = model.transformer.h[1].attn.c_attn.weight  # Conv1D: [in, 3 * hidden]
    q, k, v, o, up, down = refs[6:]
    assert (q.name, k.name, v.name) == tuple(f"transformer.h.1.attn.c_attn[{t}]" for t in "qkv")
    assert q.module_name == "transformer.h.1.attn.c_attn"
    for part, ref in enumerate((q, k, v)):
        assert torch.equal(ref.weight(), c_attn[:, part * HIDDEN:(part + 1) * HIDDEN])
        assert ref.numel == HIDDEN * HIDDEN
    assert (o.name, up.name, down.name) == (
        "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj")
    with torch.no_grad():
        k.weight().fill_(7.0)  # a view: writing it writes only k's columns of c_attn
    assert (c_attn[:, HIDDEN:2 * HIDDEN] == 7).all() and not (c_attn[:, :HIDDEN] == 7).any()


@pytest.mark.parametrize("build,targets,fan_in_fan_out", [
    (tiny_llama, ["q_proj", "v_proj", "down_proj"], False),
    (tiny_gpt2, ["c_attn", "c_fc"], True),
])
def test_lora_wrapped_names_match_the_plain_model(build, targets, fan_in_fan_out):
    plain = decoder_modules(build(layers=2))
    wrapped_model = get_peft_model(build(layers=2), LoraConfig(
        r=2, target_modules=targets, fan_in_fan_out=fan_in_fan_out))
    wrapped = decoder_modules(wrapped_model)
    assert [(r.name, r.type, r.layer) for r in wrapped] == [(r.name, r.type, r.layer) for r in plain]
    assert any("base_layer" in r.parameter_name for r in wrapped)
    named = dict(wrapped_model.named_parameters())
    for ref in wrapped:  # the base weight, shaped like the plain model's
        assert named[ref.parameter_name] is ref.parameter
        assert ref.numel == next(p for p in plain if p.name == ref.name).numel
    for name in named:  # every LoRA factor maps onto the module it adapts
        if "lora_" in name:
            assert canonical_module_name(name) in {r.module_name for r in plain}


@pytest.mark.parametrize("name,expected", [
    ("model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.q_proj"),
    ("model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.q_proj"),
    ("base_model.model.model.layers.3.self_attn.q_proj.base_layer.weight",
     "model.layers.3.self_attn.q_proj"),
    ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
     "model.layers.3.self_attn.q_proj"),
    ("base_model.model.model.layers.3.mlp.up_proj.lora_B.other", "model.layers.3.mlp.up_proj"),
    ("base_model.model.transformer.h.0.attn.c_attn.base_layer.bias", "transformer.h.0.attn.c_attn"),
    ("transformer.h.0.attn.c_attn[q]", "transformer.h.0.attn.c_attn[q]"),
])
def test_canonical_module_name(name, expected):
    assert canonical_module_name(name) == expected


def test_unrecognized_models_raise_input_errors():
    with pytest.raises(MlrInputError, match="no recognizable decoder layers"):
        decoder_modules(nn.Sequential(nn.Linear(2, 2)))
    odd = nn.Module()
    odd.layers = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(MlrInputError, match="no recognizable q/k/v/o"):
        decoder_modules(odd)
