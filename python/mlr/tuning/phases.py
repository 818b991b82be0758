"""Learning-rate multipliers that change at given steps: ML-LR has one phase, SWAT two.

- **ML-LR** (``--schedule ml-lr``): Mods_Robust at the base LR, every other trainable parameter at
  base × ratio, for the whole run.
- **SWAT** (``--schedule swat``; the later version of the same paper): a warm-up that trains
  Mods_Robust alone (every other parameter frozen), then ordinary fine-tuning of everything at
  the base LR. One LR schedule (warm-up and cosine) spans both phases: our choice, the paper's
  text being unavailable to us.

Each phase is a table {parameter name: multiplier}. The optimizer gets one param group per
(multipliers over the phases, decays) pair; at a phase's first step ``enter`` sets every group's
``lr_mult`` to that phase's value (``MLRAdamW`` reads it at every step) and freezes the parameters
whose multiplier is 0 there (no gradient is computed; as with ``torch.optim.AdamW``, a parameter
without a gradient is not stepped and gets no state) or unfreezes them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mlr.errors import MlrInputError
from mlr.tuning.ml_lr import module_lr_multipliers, phased_param_groups

SCHEDULES = ("ml-lr", "swat")
SWAT_WARMUP_FRACTION = 0.25  # of the steps, when no warm-up length is given: our choice


def default_swat_warmup(steps: int) -> int:
    """SWAT's warm-up when none is given: a quarter of the steps, rounded up (so that a short run
    still has one)."""
    return math.ceil(steps * SWAT_WARMUP_FRACTION)


@dataclass(frozen=True)
class MultiplierPhases:
    """Phase ``k`` runs from step ``starts[k]`` (0-based) to the next start; ``tables[k]`` holds
    its multiplier of every parameter that trains in some phase (0: frozen in this one)."""

    starts: tuple[int, ...]
    tables: tuple[dict[str, float], ...]

    def __post_init__(self) -> None:
        if not self.starts or self.starts[0] != 0 or list(self.starts) != sorted(set(self.starts)):
            raise ValueError(f"phase starts must begin at 0 and increase, got {self.starts}")
        if len(self.starts) != len(self.tables):
            raise ValueError("one multiplier table per phase")

    def phase_at(self, step: int) -> int:
        """The phase that the 0-based ``step`` belongs to."""
        return bisect.bisect_right(self.starts, step) - 1

    def trainable(self) -> set[str]:
        """Parameters with a nonzero multiplier in some phase."""
        return {name for table in self.tables for name, mult in table.items() if mult > 0.0}

    def without(self, frozen: set[str]) -> MultiplierPhases:
        """The same phases with the parameters named in ``frozen`` at 0 in every one."""
        return MultiplierPhases(self.starts, tuple(
            {name: 0.0 if name in frozen else mult for name, mult in table.items()}
            for table in self.tables))

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """One group per (multipliers over the phases, decays) pair (``phased_param_groups``)."""
        return phased_param_groups(model, self.tables, weight_decay)

    def enter(self, optimizer: Any, step: int) -> None:
        """Give every group of ``optimizer`` (built by ``param_groups``) the multiplier of the
        phase of ``step``, and freeze or unfreeze its parameters to match."""
        table = self.tables[self.phase_at(step)]
        for group in optimizer.param_groups:
            mult = table.get(group["param_names"][0], 0.0)
            group["lr_mult"] = mult
            for parameter in group["params"]:
                parameter.requires_grad_(mult > 0.0)


def ml_lr_phases(model: nn.Module, robust_modules: Sequence[str],
                 ratio: float) -> MultiplierPhases:
    """One phase: Mods_Robust at 1, the rest at ``ratio`` (``mlr.tuning.ml_lr``)."""
    return MultiplierPhases((0,), (module_lr_multipliers(model, robust_modules, ratio),))


def swat_phases(model: nn.Module, robust_modules: Sequence[str],
                warmup_steps: int) -> MultiplierPhases:
    """Mods_Robust alone for ``warmup_steps`` steps, then everything at 1. Raises
    ``MlrInputError`` when Mods_Robust is empty (the warm-up would train nothing)."""
    if not robust_modules:
        raise MlrInputError("--schedule swat needs a non-empty --mods-robust: its warm-up trains "
                            "Mods_Robust alone")
    warm = module_lr_multipliers(model, robust_modules, 0.0)
    everything = {name: 1.0 for name in warm}
    if warmup_steps == 0:
        return MultiplierPhases((0,), (everything,))
    return MultiplierPhases((0, warmup_steps), (warm, everything))
