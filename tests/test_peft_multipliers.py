"""PEFT LoRA adapters take the learning-rate multiplier written for their base module
(``...q_proj.lora_A.default.weight`` → ``model.layers.0.self_attn.q_proj``), from a Mods_Robust
list or from glob patterns, and MLRAdamW trains them as torch AdamW at lr × multiplier."""

from __future__ import annotations

import copy

import pytest
import torch
from mlr.errors import MlrInputError
from mlr.integrations.lr_patterns import pattern_lr_multipliers
from mlr.tuning.ml_lr import module_lr_multipliers, param_groups
from peft import LoraConfig, get_peft_model

from mlr_kernels import MLRAdamW
from tests.optim_cases import assert_same_params, available_backends, torch_adamw_for
from tests.tiny_models import VOCAB, tiny_llama

ROBUST = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]


def _lora_llama() -> torch.nn.Module:
    torch.manual_seed(0)  # LoRA A factors are drawn from the global generator
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    return get_peft_model(tiny_llama(layers=2), config)


def test_adapters_take_their_base_modules_multiplier():
    multipliers = module_lr_multipliers(_lora_llama(), ROBUST, ratio=0.25)
    assert multipliers and all(".lora_" in name for name in multipliers)  # base weights are frozen
    assert multipliers["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == 1.0
    assert multipliers["base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"] == 1.0
    assert multipliers["base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"] == 0.25
    assert sum(m == 1.0 for m in multipliers.values()) == 4  # A and B of the two robust modules



@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_a_ratio_outside_0_1_is_refused(ratio):
    """The Python API checks ML-LR's ratio as the CLI's configs do (one declared range)."""
    with pytest.raises(MlrInputError, match=r"ratio .* must be in \[0, 1\]"):
        module_lr_multipliers(tiny_llama(layers=2), ROBUST, ratio=ratio)

def test_adapters_follow_glob_patterns_on_base_module_names():
    multipliers = pattern_lr_multipliers(_lora_llama(), {"model.layers.*.self_attn.v_proj": 0.5,
                                                         "model.layers.1.*": 2.0}, default=0.1)
    assert multipliers["base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"] == 0.5
    assert multipliers["base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight"] == 2.0
    assert multipliers["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == 0.1
    with pytest.raises(MlrInputError, match="matches no trainable module"):
        pattern_lr_multipliers(_lora_llama(), {"model.layers.*.self_attn.qproj": 1.0})


@pytest.mark.parametrize("backend", available_backends())
def test_lora_training_with_multipliers_matches_torch_adamw(backend):
    ours = _lora_llama()
    ref = copy.deepcopy(ours)
    multipliers = module_lr_multipliers(ours, ROBUST, ratio=0.25)
    opt = MLRAdamW(param_groups(ours, multipliers, weight_decay=0.1), lr=1e-2, backend=backend)
    ref_opt = torch_adamw_for(param_groups(ref, multipliers, weight_decay=0.1), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        ids = torch.randint(3, VOCAB, (4, 10), generator=gen)
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
    assert_same_params(ours, ref)
