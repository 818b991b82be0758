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
from mlr.models import default_model_path
from mlr.options import Bounds, at_least, check_options, option, require
from mlr.shared_options import BATCH_SIZE, BENIGN, DEVICE, DTYPE, HARMFUL, IFT, MODEL, OUT, SEED

PROBE_OPTIONS = ("model", "harmful", "benign", "layer", "layer_tolerance", "dtype", "device",
                 "batch_size", "seed", "out")
MAP_OPTIONS = (*PROBE_OPTIONS, "method", "perturb", "alpha", "analysis_seeds", "ift",
               "heldout_limit")
MAP_METHODS = ("exact", "first-order")
# 64 prompts rank SmolLM2's modules as 192 do (Spearman 0.990) and keep its deepest map under
# 10 minutes on 2 CPU cores (docs/ml_lr.md).
DEFAULT_HELDOUT_LIMIT = 64
FORMAT = 2  # of probe.json / robustness.json / mods_robust.json: files of another are not reused
SEARCH_OPTIONS = (*MAP_OPTIONS, "tau", "budget", "bootstraps")


@dataclass(frozen=True)
class AnalysisConfig:
    """What the analysis stages read. Raises ``MlrInputError`` for an invalid value."""

    model: str | None = MODEL.field()
    harmful: str | None = HARMFUL.field()
    benign: str | None = BENIGN.field()
    layer: int | None = option(None, "probe layer, 0-based", metavar="L",
                               none="the shallowest layer within --layer-tolerance of the best "
                               "held-out log-loss", bounds=at_least(0))
    layer_tolerance: float = option(LAYER_TOLERANCE, "held-out log-loss (nats) within which a "
                                    "shallower layer counts as tied with the best", metavar="NATS",
                                    bounds=at_least(0))
    dtype: str = DTYPE.field()
    device: str = DEVICE.field()
    batch_size: int = BATCH_SIZE.field()
    seed: int = SEED.field()
    out: str = OUT.field("mlr_out")
    method: str = option("exact", "robustness map: each module perturbed and replayed, or the "
                         "first-order estimate alpha^2 rms(W)^2 |dL/dW|^2 from one gradient "
                         "(noise only)", choices=MAP_METHODS)
    perturb: str = option("noise", "perturbation of the robustness analysis: relative Gaussian "
                          "noise, or a normalized instruction-loss gradient step",
                          choices=PERTURBATIONS)
    alpha: float = option(0.5, "perturbation size relative to the weight's norm",
                          bounds=at_least(0))
    # Its old spelling --seeds still parses here, hidden: in `mlr run` --seeds counts fine-tuning seeds.
    analysis_seeds: int = option(3, "perturbation seeds of the robustness map and search, "
                                 "averaged (seed, seed + 1, ...)", metavar="K",
                                 bounds=at_least(1), aliases=("--seeds",))
    ift: str | None = IFT.field()
    heldout_limit: int = option(DEFAULT_HELDOUT_LIMIT, "at most N held-out prompts (half per "
                                "class) for the map and search, 0 for all; the map reports each "
                                "score's standard error", metavar="N")
    tau: float = option(DEFAULT_TAU, "search threshold: the probe's held-out likelihood with "
                        "Mods_Robust perturbed together stays >= tau x its clean likelihood",
                        bounds=Bounds(0, 1, low_open=True))
    budget: float | None = option(None, "largest fraction of the module parameters Mods_Robust "
                                  "may hold", metavar="FRACTION", none="no limit",
                                  bounds=Bounds(0, 1, low_open=True))
    bootstraps: int = option(20, "bootstrap draws of the held-out prompts on which the search is "
                             "rerun, for how often each module enters Mods_Robust (0: none)",
                             metavar="N", bounds=at_least(0))

    def __post_init__(self) -> None:
        check_options(self)
        require(self.heldout_limit == 0 or self.heldout_limit >= 4,
                f"--heldout-limit must be 0 (all) or at least 4, got {self.heldout_limit}")
        require(self.method != "first-order" or self.perturb == "noise",
                "--method first-order has a closed form for --perturb noise only")

    @property
    def perturbation_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.analysis_seeds)]

    def probe_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a probe fitted on ``prompts`` depends on: their digest, not the files they came
        from, so the same prompts under another path reuse it. The embedded default is named by
        its cache directory, which changes with its recipe (named only: loading the model builds it)."""
        model = self.model if self.model is not None else str(default_model_path())
        return {"format": FORMAT, "model": model, "dtype": self.dtype,
                "prompts": prompts.digest(), "seed": self.seed, "layer": self.layer,
                "layer_tolerance": self.layer_tolerance}

    def map_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a robustness map on ``prompts`` depends on."""
        return {**self.probe_key(prompts), "method": self.method, "perturb": self.perturb,
                "alpha": self.alpha, "analysis_seeds": self.analysis_seeds,
                "ift": self.ift if self.perturb == "ift-grad" else None,
                "heldout_limit": self.heldout_limit}

    def search_key(self, prompts: SecurityData) -> dict[str, Any]:
        """What a Mods_Robust search (and its stability) on ``prompts`` depends on."""
        return {**self.map_key(prompts), "tau": self.tau, "budget": self.budget,
                "bootstraps": self.bootstraps}
