"""``AnalysisConfig``: every option of probe, robustness map and search, declared once.

``mlr probe``, ``mlr analyze`` and ``mlr search`` each take a subset of these fields as options
(``PROBE_OPTIONS`` ⊂ ``MAP_OPTIONS`` ⊂ ``SEARCH_OPTIONS``); ``mlr run`` fills one from its own
config. The ``*_key`` methods say what each output depends on: an output in ``out`` is reused only
when it was made with the same key (``mlr.io.reusable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlr.analysis.perturb import PERTURBATIONS
from mlr.analysis.search import DEFAULT_TAU
from mlr.models import default_model_dir
from mlr.options import device_option, dtype_option, model_option, option, require, require_at_least

PROBE_OPTIONS = ("model", "harmful", "benign", "layer", "dtype", "device", "batch_size", "seed",
                 "out")
MAP_OPTIONS = (*PROBE_OPTIONS, "perturb", "alpha", "seeds", "ift")
SEARCH_OPTIONS = (*MAP_OPTIONS, "tau", "budget")


@dataclass(frozen=True)
class AnalysisConfig:
    """What the analysis stages read. Raises ``MlrInputError`` for an invalid value."""

    model: str | None = model_option()
    harmful: str | None = option(
        None, "harmful prompts: CSV (goal column), JSON/JSONL (prompt or instruction field) or "
        "text, one a line", metavar="FILE", none="the embedded set")
    benign: str | None = option(None, "benign prompts, same formats", metavar="FILE",
                                none="the embedded set")
    layer: int | None = option(None, "probe layer, 0-based", metavar="L",
                               none="the layer with the best held-out accuracy")
    dtype: str = dtype_option()
    device: str = device_option()
    batch_size: int = option(16, "prompts per forward pass", metavar="N")
    seed: int = option(0, "seed of the data split and of the first perturbation")
    out: str = option("mlr_out", "output directory (probe.json, robustness.json, "
                      "mods_robust.json and their plots)", metavar="DIR")
    perturb: str = option("noise", "relative Gaussian noise, or a normalized instruction-loss "
                          "gradient step", choices=PERTURBATIONS)
    alpha: float = option(0.5, "perturbation size relative to the weight's norm")
    seeds: int = option(3, "perturbation seeds to average (seed, seed + 1, ...)", metavar="K")
    ift: str | None = option(
        None, "benign instruction data for --perturb ift-grad, alpaca or chat JSON/JSONL as for "
        "training", metavar="FILE", none="the embedded instruction set")
    tau: float = option(DEFAULT_TAU, "keep the probe's accuracy >= tau x its clean accuracy")
    budget: float | None = option(None, "largest fraction of the module parameters Mods_Robust "
                                  "may hold", metavar="FRACTION", none="no limit")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "seeds")
        require(self.alpha >= 0, f"--alpha must be a non-negative number, got {self.alpha}")
        require(0 < self.tau <= 1, f"--tau must be a number in (0, 1], got {self.tau}")
        require(self.budget is None or 0 < self.budget <= 1,
                f"--budget must be a number in (0, 1], got {self.budget}")
        require(self.layer is None or self.layer >= 0, f"--layer must be >= 0, got {self.layer}")

    @property
    def perturbation_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]

    def probe_key(self) -> dict[str, Any]:
        """What a probe depends on. The embedded default is named by its cache directory, which
        changes with its recipe."""
        model = self.model if self.model is not None else str(default_model_dir())
        return {"model": model, "dtype": self.dtype, "harmful": self.harmful,
                "benign": self.benign, "seed": self.seed, "layer": self.layer}

    def map_key(self) -> dict[str, Any]:
        """What a robustness map depends on."""
        return {**self.probe_key(), "perturb": self.perturb, "alpha": self.alpha,
                "seeds": self.seeds, "ift": self.ift if self.perturb == "ift-grad" else None}

    def search_key(self) -> dict[str, Any]:
        """What a Mods_Robust search depends on."""
        return {**self.map_key(), "tau": self.tau, "budget": self.budget}
