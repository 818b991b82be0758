"""``mlr run``: the ML-LR method end to end.

1. data: the benign fine-tuning set and the fixed held-out evaluation set;
2. the aligned model: the embedded default, safety-aligned (``mlr.tuning.align``, cached), or ``--model``;
3. analysis on the aligned model: probe, robustness map, Mods_Robust search
   (``mlr.analysis.pipeline.run_search``; outputs in ``out``);
4. benign fine-tuning in four arms with the same data, steps and seeds: vanilla (ratio 1), ML-LR
   (``ratio``), frozen-but-robust (ratio 0) and the control ``uniform_lr`` that tells ML-LR from
   simply training slower (every module at base × ``ratio``); each seed resumable from its
   checkpoints;
5. evaluation of the aligned model and of every arm and seed, all with the same prompts and judge;
6. the report (``mlr.evaluation.report``).

An arm and seed that finished in ``out`` with the same settings is not trained again, and its
evaluation is reused when made with the same settings: a killed ``mlr run`` continues where it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from mlr.analysis.config import AnalysisConfig
from mlr.analysis.perturb import PERTURBATIONS
from mlr.analysis.pipeline import SEARCH_FILE, run_search
from mlr.analysis.probe import ProbeResult
from mlr.analysis.search import DEFAULT_TAU
from mlr.data.ift import InstructionExample, example_from_record
from mlr.data.prompts import load_instruction_data
from mlr.data.security_data import load_security_data
from mlr.evaluation.evaluate import (
    EVAL_FILE,
    EvalSet,
    evaluate,
    load_eval_set,
    warn_if_few_prompts,
    write_evaluation,
)
from mlr.evaluation.report import summarize_arm, write_report
from mlr.io import read_json, reusable
from mlr.models import load_model
from mlr.options import device_option, dtype_option, model_option, option, require, require_at_least
from mlr.progress import disable_progress
from mlr.tuning.align import QUICK_ALIGNMENT, AlignSettings, align_default
from mlr.tuning.ml_lr import check_ratio
from mlr.tuning.sft import load_training_examples
from mlr.tuning.train import TrainConfig, train

HELDOUT_FRACTION = 0.05  # of an --ift file, when no --heldout file is given
MAX_HELDOUT = 200


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
                                 none=f"the embedded held-out tasks, or {HELDOUT_FRACTION:.0%} "
                                 "of --ift")
    seeds: int = option(3, "fine-tuning seeds per arm", metavar="N")
    steps: int = option(400, "fine-tuning steps")
    lr: float = option(1e-3, "base learning rate")
    batch_size: int = option(16, "fine-tuning examples per step", metavar="N")
    ratio: float = option(0.6, "ML-LR multiplier outside Mods_Robust, in [0, 1]")  # docs/ml_lr.md
    lora_rank: int = option(0, "fine-tune LoRA adapters of this rank (0: full fine-tuning)",
                            metavar="R")
    perturb: str = option("noise", "perturbation of the robustness analysis",
                          choices=PERTURBATIONS)
    alpha: float = option(2.0, "perturbation size relative to the weight's norm")
    tau: float = option(DEFAULT_TAU, "search threshold, x the clean probe accuracy")
    budget: float | None = option(None, "largest parameter fraction Mods_Robust may hold",
                                  metavar="FRACTION", none="no limit")
    layer: int | None = option(None, "probe layer", metavar="L",
                               none="the layer with the best held-out accuracy")
    analysis_seeds: int = option(3, "perturbation seeds of the robustness map and search",
                                 metavar="K")
    max_new_tokens: int = option(32, "tokens generated per evaluated answer", metavar="N")
    eval_limit: int | None = None  # evaluate only the first N prompts / instructions of each set
    save_every: int = option(100, "checkpoint each fine-tuning run every N steps (0: never)",
                             metavar="N")
    control: bool = option(True, "skip the control arm (uniform_lr: every module at base x ratio)",
                           negative_flag="--no-control")
    dtype: str = dtype_option()
    device: str = device_option()
    threads: int | None = option(None, "CPU threads for torch", metavar="N",
                                 none="1 for the embedded default, whose ops are too small to "
                                 "share; torch's choice with --model")
    jobs: int | None = option(None, "fine-tuning runs side by side, each in its own process",
                              metavar="N", none="one per CPU core / threads on the CPU, else 1")
    quick: bool = option(False, "smoke test: every stage on little data for few steps (the "
                         "numbers mean nothing)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "seeds", "steps", "batch_size", "analysis_seeds",
                         "max_new_tokens")
        require_at_least(self, 0, "save_every", "lora_rank")
        for name in ("threads", "jobs"):
            if getattr(self, name) is not None:
                require_at_least(self, 1, name)
        check_ratio(self.ratio)
        require(self.jobs in (None, 1) or torch.device(self.device).type == "cpu",
                "--jobs above 1 runs several fine-tunings side by side on the CPU; "
                f"on {self.device} use --jobs 1")

    def analysis(self, model: str) -> AnalysisConfig:
        """The analysis stages' config: ``model`` (the aligned one), outputs in ``out``."""
        return AnalysisConfig(model=model, harmful=self.harmful, benign=self.benign, ift=self.ift,
                              layer=self.layer, budget=self.budget, perturb=self.perturb,
                              alpha=self.alpha, tau=self.tau, seeds=self.analysis_seeds,
                              dtype=self.dtype, device=self.device, out=self.out)


def quick_config(config: RunConfig) -> RunConfig:
    """A smoke-test pipeline: every stage runs, on little data for few steps (numbers mean
    nothing)."""
    return replace(config, seeds=2, steps=6, batch_size=8, analysis_seeds=1, eval_limit=12,
                   max_new_tokens=8, save_every=3, quick=True)


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """Run the method end to end into ``config.out``; returns the report (as in report.json).
    Sets torch's CPU thread count (``config.threads``). Raises ``MlrInputError`` for bad input,
    before anything is trained."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(config.out)
    config = _with_threads_and_jobs(config)

    # 1. Data: what the arms fine-tune on, what every model is evaluated on, and the probe's split
    #    (bad input fails here, before anything is trained).
    train_examples, eval_set = run_data(config)
    load_security_data(config.harmful, config.benign)
    warn_if_few_prompts(eval_set)

    # 2. The aligned model.
    _say("safety-aligned default model (cached after the first run)" if config.model is None
         else f"model {config.model}")
    if config.model is None:
        base = str(align_default(QUICK_ALIGNMENT if config.quick else AlignSettings()))
    else:
        base = config.model
    seconds["align"] = time.perf_counter() - started

    # 3. Analysis: probe.json, robustness.json, mods_robust.json (+ plots) in ``out``.
    tick = time.perf_counter()
    _say("probe, robustness map and Mods_Robust search")
    analysis = run_search(config.analysis(base))
    probe = analysis.probe
    _say(f"Mods_Robust: {len(analysis.search.modules)} modules, "
         f"{analysis.search.param_fraction:.1%} of module parameters (probe layer {probe.layer})")
    seconds["analysis"] = time.perf_counter() - tick
    mods_robust = out / SEARCH_FILE

    # 4 and 5. Fine-tune each arm over the seeds; evaluate every model the same way.
    seeds = list(range(config.seeds))
    tick = time.perf_counter()
    arms = {"aligned": [_evaluate(config, base, out / "arms" / "aligned", eval_set, probe)]}
    arm_seeds = {"aligned": [0]}
    jobs = [ArmJob(arm, ratio, robust, seed) for arm, ratio, robust in _arms(config, mods_robust)
            for seed in seeds]
    for job, metrics in zip(jobs, run_arm_jobs(config, base, jobs, out, train_examples, eval_set,
                                               probe)):
        arms.setdefault(job.arm, []).append(metrics)
        arm_seeds.setdefault(job.arm, []).append(job.seed)
    seconds["fine_tune_and_evaluate"] = time.perf_counter() - tick

    # 6. Report.
    summary = {arm: summarize_arm(arm_seeds[arm], results) for arm, results in arms.items()}
    setup = {**asdict(config), "model": config.model or "embedded default (aligned)",
             "counts": {"harmful": len(eval_set.harmful), "benign": len(eval_set.benign),
                        "instructions": len(eval_set.instructions)},
             "stage_seconds": seconds, "threads": torch.get_num_threads()}
    return write_report(out, summary, analysis.search.to_json({}), setup,
                        time.perf_counter() - started)


def _arms(config: RunConfig, mods_robust: Path) -> list[tuple[str, float, Path | None]]:
    """(name, ratio, Mods_Robust) of each fine-tuning arm. The control arm has no robust module:
    every module at base × ratio, i.e. simply a lower learning rate."""
    arms = [("vanilla", 1.0, None), ("ml_lr", config.ratio, mods_robust),
            ("frozen", 0.0, mods_robust)]
    return (arms + [("uniform_lr", config.ratio, None)]) if config.control else arms


@dataclass(frozen=True)
class ArmJob:
    """One fine-tuning run of an arm: modules in ``mods_robust`` at the base LR, all others at
    base × ``ratio`` (no ``mods_robust``: every module at base × ``ratio``)."""

    arm: str
    ratio: float
    mods_robust: Path | None
    seed: int

    def run_dir(self, out: Path) -> Path:
        return out / "arms" / self.arm / f"seed-{self.seed}"


def run_arm_jobs(config: RunConfig, base: str, jobs: list[ArmJob], out: Path,
                 examples: list[InstructionExample] | None, eval_set: EvalSet,
                 probe: ProbeResult) -> list[dict[str, Any]]:
    """Fine-tune and evaluate every job; their metrics, in order. With ``config.jobs`` > 1 the jobs
    run in that many worker processes, each with this process's torch thread count: every job is
    seeded and single-process, so the results are those of running them one after another."""
    work = functools.partial(_train_and_evaluate, config, base, out, examples, eval_set, probe)
    workers = min(config.jobs, len(jobs))
    if workers <= 1:
        results = []
        for job in jobs:
            _say(f"{job.arm} (ratio {job.ratio}), seed {job.seed}: fine-tune and evaluate")
            results.append(work(job))
        return results
    _say(f"{len(jobs)} fine-tuning runs in {workers} worker processes")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(torch.get_num_threads(),)) as pool:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            future.result()  # a failed job stops the run here, with its own error
            _say(f"{job.arm} (ratio {job.ratio}), seed {job.seed}: done")
        return [future.result() for future in futures]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    disable_progress()  # bars of several processes on one terminal would garble each other
    transformers.utils.logging.disable_progress_bar()


def _train_and_evaluate(config: RunConfig, base: str, out: Path,
                        examples: list[InstructionExample] | None, eval_set: EvalSet,
                        probe: ProbeResult, job: ArmJob) -> dict[str, Any]:
    run_dir = job.run_dir(out)
    model_dir = _fine_tune(config, base, job.mods_robust, job.ratio, job.seed, run_dir, examples)
    return _evaluate(config, str(model_dir), run_dir, eval_set, probe)


def _with_threads_and_jobs(config: RunConfig) -> RunConfig:
    """Apply ``config.threads`` (default: 1 for the embedded default, whose ops are too small to
    share; torch's choice with a model of the user's) and resolve the default ``jobs``: one per
    CPU core / threads on the CPU, else 1."""
    threads = config.threads if config.threads is not None else (1 if config.model is None else None)
    if threads is not None:
        torch.set_num_threads(threads)
    jobs = config.jobs
    if jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cpu = torch.device(config.device).type == "cpu"
        jobs = max(1, (cores or 1) // torch.get_num_threads()) if cpu else 1
    return replace(config, threads=torch.get_num_threads(), jobs=jobs)


def _say(message: str) -> None:
    print(f"mlr run: {message}", file=sys.stderr, flush=True)


def run_data(config: RunConfig) -> tuple[list[InstructionExample] | None, EvalSet]:
    """The fine-tuning examples (None: the embedded set) and the evaluation set. An ``--ift``
    file without ``--heldout`` gives a fixed share of its examples to evaluation."""
    eval_set = load_eval_set(config.harmful, config.benign, config.heldout)
    train_examples = None
    if config.ift is not None:
        if config.heldout is not None:
            train_examples = load_training_examples(config.ift)
        else:
            records = load_instruction_data(config.ift)
            random.Random(0).shuffle(records)
            held = min(MAX_HELDOUT, max(1, round(len(records) * HELDOUT_FRACTION)))
            examples = [example_from_record(r, f"{config.ift} example") for r in records]
            train_examples = examples[held:]
            eval_set = replace(eval_set, instructions=examples[:held],
                               tasks=[r.get("task") for r in records[:held]])
    if config.eval_limit is not None:
        n = config.eval_limit
        eval_set = EvalSet(eval_set.harmful[:n], eval_set.benign[:n],
                           eval_set.instructions[:2 * n], eval_set.tasks[:2 * n])
    return train_examples, eval_set


def _fine_tune(config: RunConfig, base: str, mods_robust: Path | None, ratio: float, seed: int,
               run_dir: Path, examples: list[InstructionExample] | None) -> Path:
    """Train one arm and seed (resuming, or reusing a finished run); its checkpoints are removed
    once the model is saved."""
    train_config = TrainConfig(
        out=str(run_dir), model=base, mods_robust=None if mods_robust is None else str(mods_robust),
        ratio=ratio, steps=config.steps, lr=config.lr, batch_size=config.batch_size, seed=seed,
        lora_rank=config.lora_rank, save_every=config.save_every, keep_checkpoints=1,
        resume=True, dtype=config.dtype, device=config.device, progress=not config.quick)
    result = train(train_config, examples=examples)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result.model_dir


def _evaluate(config: RunConfig, model_dir: str, run_dir: Path, eval_set: EvalSet,
              probe: ProbeResult) -> dict[str, Any]:
    """The metrics of one model (reused from ``eval.json`` when made the same way)."""
    key = {"model": model_dir, "eval_set": _digest(eval_set), "probe": probe.to_json({}),
           "max_new_tokens": config.max_new_tokens, "trained": _trained_stamp(run_dir)}
    saved = reusable(run_dir / EVAL_FILE, key, field="key")
    if saved is not None:
        return saved["metrics"]
    model, tokenizer = load_model(model_dir, config.dtype, config.device)
    metrics, answers = evaluate(model, tokenizer, eval_set, probe=probe,
                                max_new_tokens=config.max_new_tokens)
    write_evaluation(run_dir, {"key": key, "metrics": metrics}, answers)
    return metrics


def _digest(eval_set: EvalSet) -> str:
    return hashlib.sha256(json.dumps(asdict(eval_set), default=str).encode()).hexdigest()


def _trained_stamp(run_dir: Path) -> Any:
    """What identifies the trained model of ``run_dir`` (its fingerprint; None for the aligned
    model, which has no train.json there)."""
    summary = run_dir / "train.json"
    return read_json(summary, "train summary").get("fingerprint") if summary.is_file() else None
