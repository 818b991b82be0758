"""``AnalysisConfig``: every option of probe, robustness map and search, declared once.

``mlr probe``, ``mlr analyze`` and ``mlr search`` each take a subset of these fields as options
(``PROBE_OPTIONS`` ⊂ ``MAP_OPTIONS`` ⊂ ``SEARCH_OPTIONS``); ``mlr run`` fills one from its own
config. The ``*_key`` methods say what each output depends on, the probe's prompts by their
content: an output in ``out`` is reused only when it was made with the same key
(``mlr.io.reusable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlr.analysis.perturb import PERTURBATIONS
from mlr.analysis.probe import LAYER_TOLERANCE
from mlr.analysis.search import DEFAULT_TAU
from mlr.data.security_data import SecurityData
from mlr.models import default_model_dir
from mlr.options import device_option, dtype_option, model_option, option, require, require_at_least

PROBE_OPTIONS = ("model", "harmful", "benign", "layer", "layer_tolerance", "dtype", "device",
                 "batch_size", "seed", "out")
MAP_OPTIONS = (*PROBE_OPTIONS, "method", "perturb", "alpha", "seeds", "ift", "heldout_limit")
MAP_METHODS = ("exact", "first-order")
# 64 prompts rank SmolLM2's modules as 192 do (Spearman 0.990) and keep its deepest map under
# 10 minutes on 2 CPU cores (docs/ml_lr.md).
DEFAULT_HELDOUT_LIMIT = 64
FORMAT = 2  # of probe.json / robustness.json / mods_robust.json: files of another are not reused
SEARCH_OPTIONS = (*MAP_OPTIONS, "tau", "budget", "bootstraps")


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
                               none="the shallowest layer within --layer-tolerance of the best "
                               "held-out log-loss")
    layer_tolerance: float = option(LAYER_TOLERANCE, "held-out log-loss (nats) within which a "
                                    "shallower layer counts as tied with the best", metavar="NATS")
    dtype: str = dtype_option()
    device: str = device_option()
    batch_size: int = option(16, "prompts per forward pass", metavar="N")
    seed: int = option(0, "seed of the data split and of the first perturbation")
    out: str = option("mlr_out", "output directory (probe.json, robustness.json, "
                      "mods_robust.json and their plots)", metavar="DIR")
    method: str = option("exact", "robustness map: each module perturbed and replayed, or the "
                         "first-order estimate alpha^2 rms(W)^2 |dL/dW|^2 from one gradient "
                         "(noise only)", choices=MAP_METHODS)
    perturb: str = option("noise", "relative Gaussian noise, or a normalized instruction-loss "
                          "gradient step", choices=PERTURBATIONS)
    alpha: float = option(0.5, "perturbation size relative to the weight's norm")
    seeds: int = option(3, "perturbation seeds to average (seed, seed + 1, ...)", metavar="K")
    ift: str | None = option(
        None, "benign instruction data for --perturb ift-grad, alpaca or chat JSON/JSONL as for "
        "training", metavar="FILE", none="the embedded instruction set")
    heldout_limit: int = option(DEFAULT_HELDOUT_LIMIT, "at most N held-out prompts (half per "
                                "class) for the map and search, 0 for all; the map reports each "
                                "score's standard error", metavar="N")
    tau: float = option(DEFAULT_TAU, "keep the probe's held-out likelihood, with Mods_Robust "
                        "perturbed together, >= tau x its clean likelihood")
    budget: float | None = option(None, "largest fraction of the module parameters Mods_Robust "
                                  "may hold", metavar="FRACTION", none="no limit")
    bootstraps: int = option(20, "bootstrap draws of the held-out prompts on which the search is "
                             "rerun, for how often each module enters Mods_Robust (0: none)",
                             metavar="N")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "seeds")
        require_at_least(self, 0, "bootstraps")
        require(self.layer_tolerance >= 0,
                f"--layer-tolerance must be >= 0, got {self.layer_tolerance}")
        require(self.heldout_limit == 0 or self.heldout_limit >= 4,
                f"--heldout-limit must be 0 (all) or at least 4, got {self.heldout_limit}")
        require(self.method != "first-order" or self.perturb == "noise",
                "--method first-order has a closed form for --perturb noise only")
        require(self.alpha >= 0, f"--alpha must be a non-negative number, got {self.alpha}")
        require(0 < self.tau <= 1, f"--tau must be a number in (0, 1], got {self.tau}")
        require(self.budget is None or 0 < self.budget <= 1,
                f"--budget must be a number in (0, 1], got {self.budget}")
        require(self.layer is None or self.layer >= 0, f"--layer must be >= 0, got {self.layer}")

    @property
    def perturbation_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]

    def probe_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a probe fitted on ``prompts`` depends on: their digest, not the files they came
        from, so the same prompts under another path reuse it. The embedded default is named by
        its cache directory, which changes with its recipe."""
        model = self.model if self.model is not None else str(default_model_dir())
        return {"format": FORMAT, "model": model, "dtype": self.dtype,
                "prompts": prompts.digest(), "seed": self.seed, "layer": self.layer,
                "layer_tolerance": self.layer_tolerance}

    def map_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a robustness map on ``prompts`` depends on."""
        return {**self.probe_key(prompts), "method": self.method, "perturb": self.perturb,
                "alpha": self.alpha, "seeds": self.seeds,
                "ift": self.ift if self.perturb == "ift-grad" else None,
                "heldout_limit": self.heldout_limit}

    def search_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a Mods_Robust search (and its stability) on ``prompts`` depends on."""
        return {**self.map_key(prompts), "tau": self.tau, "budget": self.budget,
                "bootstraps": self.bootstraps}
