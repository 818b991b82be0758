"""The ML-LR method end to end: (with no --model) build and safety-align the embedded default; probe,
robustness map and Mods_Robust search on the aligned model; benign fine-tuning in five arms with the
same data, steps and seeds (vanilla ratio 1, ml_lr, frozen ratio 0, swat: Mods_Robust alone for a
warm-up then everything, and the control uniform_lr: every module at base x ratio); evaluation of
the aligned model and every arm and seed; report.md, report.json and plots in --out, beside the
analysis files (probe.json, robustness.json, mods_robust.json) and arms/. With --model
smollm2-135m-instruct the model is safety-aligned first and the settings suit a real model."""

from __future__ import annotations

import argparse

import transformers

from mlr.evaluation.arms_plot import SMOKE_TEST
from mlr.evaluation.intervals import Difference
from mlr.evaluation.report import mean_and_interval
from mlr.options import add_options, from_options
from mlr.run.config import RunConfig
from mlr.run.pipeline import run_pipeline

NAME = "run"
HELP = "the whole method: align, analyze, fine-tune five arms, evaluate, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, RunConfig)


def run(args: argparse.Namespace) -> int:
    config = from_options(RunConfig, args)
    transformers.utils.logging.disable_progress_bar()  # one bar per model load drowns the rest
    report = run_pipeline(config)
    arms, check = report["arms"], report["target"]
    if report["smoke_test"]:
        print(SMOKE_TEST)
    for name, arm in arms.items():
        print(f"{name:10s} ASR {mean_and_interval(arm, 'asr')}  held-out loss "
              f"{mean_and_interval(arm, 'heldout_loss', 4)}  over-refusal "
              f"{mean_and_interval(arm, 'over_refusal')}")
    print("(mean ± the half-width of its 95 % interval over seeds, as in report.md)")
    control = check["differences"].get("ml_lr-uniform_lr")
    if control:
        print(f"ml_lr - uniform_lr (control): ASR "
              f"{Difference.from_json(control['asr']).describe()}")
    print(f"target {'met' if check['met'] else 'not met'}; wrote {config.out}/report.md")
    return 0
