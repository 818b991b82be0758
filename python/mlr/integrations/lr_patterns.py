"""Learning-rate multipliers from glob patterns over module names, for hand-written ML-LR setups.

The companion of :func:`mlr.tuning.ml_lr.module_lr_multipliers` (multipliers from a ``mods_robust.json``)
and resolved the same way: a parameter takes the multiplier of its canonical module
(:func:`mlr.modules.canonical_module_name`), so LoRA adapters follow the module they adapt.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

from mlr.errors import MlrInputError
from mlr.modules import canonical_module_name


def pattern_lr_multipliers(model: nn.Module, patterns: Mapping[str, float],
                           default: float = 1.0) -> dict[str, float]:
    """``{trainable parameter name: multiplier}`` from patterns such as
    ``{"model.layers.*.self_attn.*": 1.0, "model.layers.*": 0.1}``: the first pattern that matches
    a parameter's module wins, ``default`` applies to the rest. A negative multiplier, or a pattern
    that matches no trainable module (a typo), is an error."""
    for what, mult in [*patterns.items(), ("default", default)]:
        if not float(mult) >= 0.0:
            raise MlrInputError(f"lr multiplier for {what} must be >= 0, got {mult}")
    multipliers, used = {}, set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        module = canonical_module_name(name)
        pattern = next((p for p in patterns if fnmatchcase(module, p)), None)
        used.add(pattern)
        multipliers[name] = float(default if pattern is None else patterns[pattern])
    unused = [pattern for pattern in patterns if pattern not in used]
    if unused:
        raise MlrInputError(f"lr multiplier pattern {unused[0]!r} matches no trainable module")
    return multipliers
