"""``RunConfig``: every option of ``mlr run``, in one place that each of its steps reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlr.analysis.config import AnalysisConfig
from mlr.analysis.perturb import PERTURBATIONS
from mlr.analysis.probe import LAYER_TOLERANCE
from mlr.analysis.search import DEFAULT_TAU
from mlr.options import (
    device_option,
    dtype_option,
    master_weights_option,
    model_option,
    optimizer_state_option,
    option,
    require,
    require_at_least,
    require_master_weights_fit,
)
from mlr.run.presets import SMOLLM2, default_note
from mlr.tuning.align import AlignSettings
from mlr.tuning.ml_lr import check_ratio
from mlr.tuning.peers import parse_layer_block

INSTRUCTION_HELDOUT_FRACTION = 0.05  # of an --ift file held out for evaluation without --heldout
MAX_HELDOUT_INSTRUCTIONS = 200
EMBEDDED_NAME = "embedded default (aligned)"  # report.json's setup.model with no --model


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``mlr run``. Raises ``MlrInputError`` for an invalid value."""

    out: str = option("mlr_run", "output directory (report.md, report.json, plots, the analysis "
                      "files and arms/)", metavar="DIR")
    model: str | None = model_option(none="the embedded tiny Llama, safety-aligned first")
    harmful: str | None = option(None, "harmful prompts for the probe and the ASR (CSV goal "
                                 "column, JSON/JSONL, text)", metavar="FILE",
                                 none="the embedded set")
    benign: str | None = option(None, "benign prompts for the probe and over-refusal",
                                metavar="FILE", none="the embedded set")
    ift: str | None = option(None, "benign instruction data to fine-tune on, alpaca or chat "
                             "JSON/JSONL", metavar="FILE", none="the embedded fine-tuning tasks")
    heldout: str | None = option(None, "held-out instructions for loss and accuracy",
                                 metavar="FILE",
                                 none="the embedded held-out tasks, or "
                                 f"{INSTRUCTION_HELDOUT_FRACTION:.0%} of --ift")
    seeds: int | None = option(None, "fine-tuning seeds per arm", metavar="N",
                               none=default_note("seeds"))
    steps: int | None = option(None, "fine-tuning steps", none=default_note("steps"))
    lr: float | None = option(None, "base learning rate", none=default_note("lr"))
    batch_size: int | None = option(None, "fine-tuning examples per step", metavar="N",
                                    none=default_note("batch_size"))
    max_length: int | None = option(None, "tokens per fine-tuning example", metavar="N",
                                    none=default_note("max_length"))
    ratio: float = option(0.6, "ML-LR multiplier outside Mods_Robust, in [0, 1]")  # docs/ml_lr.md
    lora_rank: int = option(0, "fine-tune LoRA adapters of this rank (0: full fine-tuning)",
                            metavar="R")
    perturb: str = option("noise", "perturbation of the robustness analysis",
                          choices=PERTURBATIONS)
    alpha: float | None = option(None, "perturbation size relative to the weight's norm",
                                 none=default_note("alpha"))
    tau: float = option(DEFAULT_TAU, "search threshold: the probe's held-out likelihood with "
                        "Mods_Robust perturbed together stays >= tau x its clean likelihood")
    budget: float | None = option(None, "largest parameter fraction Mods_Robust may hold",
                                  metavar="FRACTION", none="no limit")
    layer: int | None = option(None, "probe layer", metavar="L",
                               none=f"the shallowest layer within {LAYER_TOLERANCE} nats of the "
                               "best held-out log-loss")
    analysis_seeds: int | None = option(None, "perturbation seeds of the robustness map and "
                                        "search", metavar="K", none=default_note("analysis_seeds"))
    max_new_tokens: int | None = option(None, "tokens generated per evaluated answer", metavar="N",
                                        none=default_note("max_new_tokens"))
    save_every: int | None = option(None, "checkpoint each fine-tuning run every N steps (0: "
                                    "never)", metavar="N", none=default_note("save_every"))
    control: bool = option(True, "skip the control arm (uniform_lr: every module at base x ratio)",
                           negative_flag="--no-control")
    swat: bool = option(True, "skip the SWAT arm (Mods_Robust alone for a warm-up, then everything)",
                        negative_flag="--no-swat")
    swat_warmup_steps: int | None = option(None, "fine-tuning steps of the SWAT arm's warm-up",
                                           metavar="N", none="a quarter of --steps, rounded up")
    peers: bool = option(True, "skip the peer-defense arms (sppft: the safety layers frozen; "
                         "safeinstr: refusal examples mixed into the data)",
                         negative_flag="--no-peers")
    sppft_layers: str | None = option(None, "decoder layers the sppft arm freezes", metavar="A-B",
                                      none="SPPFT's block, layers 5-14 of 32, scaled to the "
                                      "model's depth")
    safety_mix: float = option(0.03, "share of refusal examples in the safeinstr arm's data",
                               metavar="SHARE")
    dtype: str = dtype_option()
    optimizer_state: str = optimizer_state_option()
    master_weights: bool = master_weights_option()
    device: str = device_option()
    threads: int | None = option(None, "CPU threads for torch", metavar="N",
                                 none="1 for the embedded default, whose ops are too small to "
                                 f"share, and for {SMOLLM2} (on a busy 2-core machine one thread "
                                 "per process ran fine-tuning 3x faster than two); torch's choice "
                                 "with another --model")
    jobs: int | None = option(None, "fine-tuning runs side by side, each in its own process",
                              metavar="N", none="one per CPU core / threads on the CPU, else 1")
    quick: bool = option(False, "smoke test: every stage on little data for few steps (the "
                         "numbers mean nothing)")
    keep_models: bool = option(False, "keep every arm's fine-tuned weights in "
                               "arms/ARM/seed-N/model (about 4 bytes per parameter each); without "
                               "it each is deleted once evaluated")
    # Set from the model's RunDefaults (mlr.run.presets), not options:
    eval_limit: int | None = None  # evaluate only the first N prompts / 2N instructions of each set
    probe_prompts: int | None = None  # the probe on N + N prompts of the embedded train split
    probe_depth: float | None = None  # without --layer: the probe layer at this fraction of depth
    alignment: AlignSettings | None = None  # align the model first

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "batch_size", "max_length", "analysis_seeds",
                     "max_new_tokens", "threads", "jobs"):
            if getattr(self, name) is not None:
                require_at_least(self, 1, name)
        require_at_least(self, 0, "lora_rank")
        require_master_weights_fit(self.master_weights, self.dtype)
        if self.save_every is not None:
            require_at_least(self, 0, "save_every")
        require(self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}")
        require(self.alpha is None or self.alpha >= 0,
                f"--alpha must be a non-negative number, got {self.alpha}")
        check_ratio(self.ratio)
        if self.swat_warmup_steps is not None:  # its upper bound, --steps, is checked once resolved
            require_at_least(self, 0, "swat_warmup_steps")
        require(0.0 < self.safety_mix <= 0.5,
                f"--safety-mix must be in (0, 0.5], got {self.safety_mix}")
        if self.sppft_layers is not None:
            parse_layer_block(self.sppft_layers)
        require(self.jobs in (None, 1) or torch.device(self.device).type == "cpu",
                "--jobs above 1 runs several fine-tunings side by side on the CPU; "
                f"on {self.device} use --jobs 1")

    def analysis(self, model: str) -> AnalysisConfig:
        """The analysis stages' config: ``model`` (the aligned one), outputs in ``out``. The
        probe's prompts go to the analysis loaded (``mlr.run.data``), not as files."""
        return AnalysisConfig(model=model, ift=self.ift,
                              layer=self.layer, budget=self.budget, perturb=self.perturb,
                              alpha=self.alpha, tau=self.tau, seeds=self.analysis_seeds,
                              dtype=self.dtype, device=self.device, out=self.out)
