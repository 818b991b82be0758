"""LoRA adapters (peft) on the seven ML-LR module types, and merging them back for saving."""

from __future__ import annotations

from torch import nn

from mlr.modules import decoder_modules


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap ``model`` with LoRA adapters of ``rank`` on every q, k, v, o, gate, up, down module.

    Only the adapters train; their parameter names map back to the base module
    (``mlr.modules.canonical_module_name``), so ML-LR multipliers apply to them unchanged.
    """
    from peft import LoraConfig, get_peft_model

    targets = sorted({ref.module_name for ref in decoder_modules(model)})
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with any LoRA adapters folded into its weights."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model
