"""ML-LR learning-rate multipliers and the optimizer's parameter groups.

Every trainable parameter of a module in Mods_Robust trains at the base learning rate (multiplier
1); every other trainable parameter (other projections, embeddings, norms, LoRA factors of other
modules) at base × ``ratio``. Parameters are matched to modules by their canonical name
(``mlr.modules.canonical_module_name``), so LoRA factors take their base module's multiplier.

A GPT-2 fused ``c_attn`` weight holds q, k and v in one tensor, and a tensor has one learning rate:
it trains at the base rate only when all three of its slices are robust (the safe side).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from mlr.errors import MlrInputError
from mlr.io import read_json
from mlr.modules import canonical_module_name, decoder_modules
from mlr.options import Bounds

# ML-LR's ratio: 1 is vanilla fine-tuning, 0 freezes every module outside Mods_Robust.
RATIO_BOUNDS = Bounds(0, 1)


def read_mods_robust(path: str | os.PathLike) -> list[str]:
    """The module names of a ``mods_robust.json`` (``{"modules": [...], ...}``)."""
    data = read_json(path, "mods_robust file")
    modules = data.get("modules") if isinstance(data, dict) else None
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise MlrInputError(f"{path}: expected {{\"modules\": [module names, ...]}}")
    return modules


def module_lr_multipliers(model: nn.Module, robust_modules: Sequence[str],
                          ratio: float) -> dict[str, float]:
    """{trainable parameter name: lr multiplier}: 1.0 for Mods_Robust, ``ratio`` for the rest
    (:data:`RATIO_BOUNDS`).

    Raises ``MlrInputError`` for a ratio outside [0, 1] or a robust module the model does not have.
    """
    problem = RATIO_BOUNDS.problem(ratio)
    if problem is not None:
        raise MlrInputError(f"ratio {ratio:g} {problem}")
    refs = decoder_modules(model)
    unknown = sorted(set(robust_modules) - {ref.name for ref in refs})
    if unknown:
        raise MlrInputError(f"Mods_Robust names modules this model does not have: "
                            f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    slices: dict[str, set[str]] = {}
    for ref in refs:
        slices.setdefault(ref.module_name, set()).add(ref.name)
    robust = {module for module, names in slices.items() if names <= set(robust_modules)}
    return {name: 1.0 if canonical_module_name(name) in robust else float(ratio)
            for name, parameter in model.named_parameters() if parameter.requires_grad}


def decays(parameter: nn.Parameter) -> bool:
    """Weight decay applies to matrices, not to norm weights or biases (1-D tensors)."""
    return parameter.ndim >= 2


def param_groups(model: nn.Module, multipliers: dict[str, float],
                 weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for the parameters named in ``multipliers`` (those with multiplier 0 are
    left out: frozen), one group per (multiplier, decays) pair, with ``param_names``."""
    return phased_param_groups(model, [multipliers], weight_decay)


def phased_param_groups(model: nn.Module, tables: Sequence[dict[str, float]],
                        weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups when the multipliers change over phases (``mlr.tuning.phases``): one
    group per (multipliers over the phases, decays) pair, with ``param_names`` and the first
    phase's ``lr_mult``; parameters at 0 (or absent) in every table are left out."""
    groups: dict[tuple[tuple[float, ...], bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        mults = tuple(table.get(name, 0.0) for table in tables)
        if not any(mults):
            continue
        decay = decays(parameter)
        group = groups.setdefault((mults, decay), {
            "params": [], "param_names": [], "lr_mult": mults[0],
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(parameter)
        group["param_names"].append(name)
    return list(groups.values())
