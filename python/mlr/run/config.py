"""``RunConfig``: every option of ``mlr run``, in one place that each of its steps reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mlr.analysis.config import AnalysisConfig
from mlr.analysis.probe import LAYER_TOLERANCE
from mlr.evaluation.evaluate import EvalConfig
from mlr.options import at_least, check_options, option, require, same_option
from mlr.run.presets import SMOLLM2, default_note
from mlr.shared_options import (
    BENIGN,
    DEVICE,
    DTYPE,
    HARMFUL,
    IFT,
    MASTER_WEIGHTS,
    MODEL,
    OPTIMIZER_STATE,
    OUT,
    require_master_weights_fit,
)
from mlr.tuning.align import AlignSettings
from mlr.tuning.peers import parse_layer_block
from mlr.tuning.train import TrainConfig

INSTRUCTION_HELDOUT_FRACTION = 0.05  # of an --ift file held out for evaluation without --heldout
MAX_HELDOUT_INSTRUCTIONS = 200
EMBEDDED_NAME = "embedded default (aligned)"  # report.json's setup.model with no --model


def _preset(config: type, name: str) -> Any:
    """The option ``config`` declares as ``name``, defaulting to the model's preset (``None``
    until ``mlr.run.pipeline.resolve_defaults``)."""
    return same_option(config, name, None, none=default_note(name))


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``mlr run``. Raises ``MlrInputError`` for an invalid value."""

    out: str = OUT.field("mlr_run")
    model: str | None = MODEL.field(none="the embedded tiny Llama, safety-aligned first")
    harmful: str | None = HARMFUL.field()
    benign: str | None = BENIGN.field()
    ift: str | None = IFT.field()
    heldout: str | None = same_option(
        EvalConfig, "heldout",
        none=f"the embedded held-out tasks, or {INSTRUCTION_HELDOUT_FRACTION:.0%} of --ift")
    seeds: int | None = option(None, "fine-tuning seeds per arm", metavar="N",
                               none=default_note("seeds"), bounds=at_least(1))
    steps: int | None = _preset(TrainConfig, "steps")
    lr: float | None = _preset(TrainConfig, "lr")
    batch_size: int | None = _preset(TrainConfig, "batch_size")
    max_length: int | None = _preset(TrainConfig, "max_length")
    ratio: float = same_option(TrainConfig, "ratio", 0.6)  # docs/ml_lr.md
    lora_rank: int = same_option(TrainConfig, "lora_rank")
    perturb: str = same_option(AnalysisConfig, "perturb")
    alpha: float | None = _preset(AnalysisConfig, "alpha")
    tau: float = same_option(AnalysisConfig, "tau")
    budget: float | None = same_option(AnalysisConfig, "budget")
    layer: int | None = same_option(AnalysisConfig, "layer",
                                    none=f"the shallowest layer within {LAYER_TOLERANCE} nats of "
                                    "the best held-out log-loss")
    analysis_seeds: int | None = _preset(AnalysisConfig, "analysis_seeds")
    max_new_tokens: int | None = _preset(EvalConfig, "max_new_tokens")
    save_every: int | None = _preset(TrainConfig, "save_every")
    control: bool = option(True, "skip the control arm (uniform_lr: every module at base x ratio)",
                           negative_flag="--no-control")
    swat: bool = option(True, "skip the SWAT arm (Mods_Robust alone for a warm-up, then everything)",
                        negative_flag="--no-swat")
    swat_warmup_steps: int | None = same_option(TrainConfig, "swat_warmup_steps")
    peers: bool = option(True, "skip the peer-defense arms (sppft: the safety layers frozen; "
                         "safeinstr: refusal examples mixed into the data)",
                         negative_flag="--no-peers")
    sppft_layers: str | None = option(None, "decoder layers the sppft arm freezes", metavar="A-B",
                                      none="SPPFT's block, layers 5-14 of 32, scaled to the "
                                      "model's depth")
    safety_mix: float = same_option(TrainConfig, "safety_mix", 0.03)
    dtype: str = DTYPE.field()
    optimizer_state: str = OPTIMIZER_STATE.field()
    master_weights: bool = MASTER_WEIGHTS.field()
    device: str = DEVICE.field()
    threads: int | None = option(None, "CPU threads for torch", metavar="N", bounds=at_least(1),
                                 none="1 for the embedded default, whose ops are too small to "
                                 f"share, and for {SMOLLM2} (on a busy 2-core machine one thread "
                                 "per process ran fine-tuning 3x faster than two); torch's choice "
                                 "with another --model")
    jobs: int | None = option(None, "fine-tuning runs side by side, each in its own process",
                              metavar="N", none="one per CPU core / threads on the CPU, else 1",
                              bounds=at_least(1))
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
        check_options(self)
        require_master_weights_fit(self.master_weights, self.dtype)
        require(self.safety_mix > 0, "--safety-mix must be above 0 for the safeinstr arm, got "
                f"{self.safety_mix}")
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
                              alpha=self.alpha, tau=self.tau, analysis_seeds=self.analysis_seeds,
                              dtype=self.dtype, device=self.device, out=self.out)
