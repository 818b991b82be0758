"""Steps 4 and 5 of ``mlr run``: the arms. One job per fine-tuning arm and seed, fine-tuned and
evaluated in worker processes side by side on the CPU, and the aligned model evaluated the same way
(the ``aligned`` arm). ``experiments/lr_frontier.py`` runs its own arms through ``run_arm_jobs``.

An arm and seed whose evaluation in ``out`` was made with the same settings (the training's
fingerprint among them) is neither trained nor evaluated again, and one that finished training is
not trained again: a killed ``mlr run`` continues where it was. Each arm's fine-tuned weights are
deleted once evaluated unless ``keep_models``; an evaluation reused needs no weights.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from mlr.analysis.probe import ProbeResult
from mlr.data.instructions import InstructionExample
from mlr.evaluation.evaluate import (
    ANSWERS_FILE,
    EVAL_FILE,
    EVALUATION_VERSION,
    EvalSet,
    evaluate,
    read_outcomes,
    write_evaluation,
)
from mlr.io import reusable
from mlr.models import load_model
from mlr.progress import disable_progress
from mlr.run.config import RunConfig
from mlr.tuning.train import TrainConfig, expected_fingerprint, train


def arm_jobs(config: RunConfig, mods_robust: Path) -> list[ArmJob]:
    """Each fine-tuning arm (seed 0). The control arm has no robust module: every module at
    base × ratio, i.e. simply a lower learning rate. The peer defenses: ``sppft`` freezes
    ``config.sppft_layers``, ``safeinstr`` mixes ``config.safety_mix`` refusal examples into the
    data; both train everything else at the base rate."""
    arms = [ArmJob("vanilla", 1.0, None), ArmJob("ml_lr", config.ratio, mods_robust),
            ArmJob("frozen", 0.0, mods_robust)]
    if config.swat:
        arms.append(ArmJob("swat", 1.0, mods_robust, schedule="swat"))
    if config.control:
        arms.append(ArmJob("uniform_lr", config.ratio, None))
    if config.peers:
        arms += [ArmJob("sppft", 1.0, None, freeze_layers=config.sppft_layers),
                 ArmJob("safeinstr", 1.0, None, safety_mix=config.safety_mix)]
    return arms


@dataclass(frozen=True)
class ArmJob:
    """One fine-tuning run of an arm. ``schedule`` ml-lr: modules in ``mods_robust`` at the base
    LR, all others at base × ``ratio`` (no ``mods_robust``: every module at base × ``ratio``);
    swat: ``mods_robust`` alone for the warm-up, then everything at the base LR. ``freeze_layers``
    and ``safety_mix``: the peer defenses (``mlr.tuning.peers``)."""

    arm: str
    ratio: float
    mods_robust: Path | None
    seed: int = 0
    schedule: str = "ml-lr"
    freeze_layers: str | None = None  # SPPFT: these decoder layers keep their weights
    safety_mix: float = 0.0  # SafeInstr: this share of the data is refusal examples

    def run_dir(self, out: Path) -> Path:
        return out / "arms" / self.arm / f"seed-{self.seed}"


@dataclass(frozen=True)
class ArmContext:
    """What every arm and seed of a run shares: its settings (each job's folder under
    ``config.out``), the aligned model the arms start from (None: the embedded default), the
    fine-tuning examples (None: the embedded set), the evaluation set and the frozen probe."""

    config: RunConfig
    base: str | None
    examples: list[InstructionExample] | None
    eval_set: EvalSet
    probe: ProbeResult

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def run_arm_jobs(context: ArmContext, jobs: list[ArmJob]) -> list[dict[str, Any]]:
    """Fine-tune and evaluate every job; their metrics, in order. With ``context.config.jobs`` > 1
    the jobs run in that many worker processes, each with this process's torch thread count: every
    job is seeded and single-process, so the results are those of running them one after another.
    Raises the first error of a failed job."""
    workers = min(context.config.jobs, len(jobs))
    if workers <= 1:
        results = []
        for job in jobs:
            say(f"{job.arm} ({_describe(job)}), seed {job.seed}: fine-tune and evaluate")
            results.append(_train_and_evaluate(context, job))
        return results
    say(f"{len(jobs)} fine-tuning runs in {workers} worker processes")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(torch.get_num_threads(),)) as pool:
        futures = {pool.submit(_train_and_evaluate, context, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            future.result()  # a failed job stops the run here, with its own error
            say(f"{job.arm} ({_describe(job)}), seed {job.seed}: done")
        return [future.result() for future in futures]


def _describe(job: ArmJob) -> str:
    if job.freeze_layers is not None:
        return f"layers {job.freeze_layers} frozen"
    if job.safety_mix:
        return f"{job.safety_mix:.0%} refusal examples"
    return "SWAT schedule" if job.schedule == "swat" else f"ratio {job.ratio}"


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    disable_progress()  # bars of several processes on one terminal would garble each other
    transformers.utils.logging.disable_progress_bar()


def _train_and_evaluate(context: ArmContext, job: ArmJob) -> dict[str, Any]:
    """Fine-tune and evaluate one arm and seed; its metrics with each prompt's outcome. An
    evaluation made with the same settings and training fingerprint is reused without training
    (its model may be gone); a finished training is not run again (``train`` resumes). The model
    is deleted once evaluated unless ``keep_models``."""
    run_dir = job.run_dir(context.out)
    train_config = _train_config(context.config, context.base, job, run_dir)
    model = run_dir / "model"
    key = _eval_key(context, str(model), expected_fingerprint(train_config, context.examples))
    metrics = _saved_metrics(run_dir, key)
    if metrics is None:
        train(train_config, examples=context.examples)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        metrics = _evaluate(context, key, run_dir)
    if not context.config.keep_models:
        shutil.rmtree(model, ignore_errors=True)
    return {**metrics, **read_outcomes(run_dir)}


def _train_config(config: RunConfig, base: str | None, job: ArmJob,
                  run_dir: Path) -> TrainConfig:
    """The training of one arm and seed into ``run_dir``, resuming from its checkpoints."""
    swat = job.schedule == "swat"
    return TrainConfig(
        out=str(run_dir), model=base, max_length=config.max_length,
        mods_robust=None if job.mods_robust is None else str(job.mods_robust), ratio=job.ratio,
        schedule=job.schedule, swat_warmup_steps=config.swat_warmup_steps if swat else None,
        steps=config.steps, lr=config.lr, batch_size=config.batch_size, seed=job.seed,
        lora_rank=config.lora_rank, freeze_layers=job.freeze_layers, safety_mix=job.safety_mix,
        save_every=config.save_every, keep_checkpoints=1,
        resume=True, dtype=config.dtype, optimizer_state=config.optimizer_state,
        master_weights=config.master_weights, device=config.device, progress=not config.quick)


def evaluate_aligned(context: ArmContext) -> dict[str, Any]:
    """The aligned model's metrics (reused when made the same way) with each prompt's outcome,
    in ``out/arms/aligned``."""
    run_dir = context.out / "arms" / "aligned"
    key = _eval_key(context, context.base, None)
    metrics = _saved_metrics(run_dir, key)
    if metrics is None:
        metrics = _evaluate(context, key, run_dir)
    return {**metrics, **read_outcomes(run_dir)}


def _eval_key(context: ArmContext, model: str | None, trained: dict | None) -> dict[str, Any]:
    """What an evaluation depends on: the model's path, the prompts, the probe, the answers'
    length, what the evaluation computes (its judge and scores) and, for a fine-tuned model, its
    training's fingerprint (``trained``)."""
    return {"model": model, "eval_set": _digest(context.eval_set),
            "probe": context.probe.to_json({}), "max_new_tokens": context.config.max_new_tokens,
            "trained": trained,
            "evaluation": EVALUATION_VERSION}


def _saved_metrics(run_dir: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of ``run_dir``'s eval.json when it was made under ``key`` and its
    answers.jsonl is there, else None."""
    saved = reusable(run_dir / EVAL_FILE, key, field="key")
    if saved is None or not (run_dir / ANSWERS_FILE).is_file():
        return None
    return saved["metrics"]


def _evaluate(context: ArmContext, key: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Evaluate the model at ``key["model"]`` and write eval.json (with ``key``) and
    answers.jsonl into ``run_dir``; its metrics."""
    tick = time.perf_counter()
    config = context.config
    model, tokenizer = load_model(key["model"], config.dtype, config.device)
    metrics, answers = evaluate(model, tokenizer, context.eval_set, probe=context.probe,
                                max_new_tokens=config.max_new_tokens)
    write_evaluation(run_dir, {"key": key, "metrics": metrics,
                               "seconds": time.perf_counter() - tick}, answers)
    return metrics


def _digest(eval_set: EvalSet) -> str:
    return hashlib.sha256(json.dumps(asdict(eval_set), default=str).encode()).hexdigest()


def say(message: str) -> None:
    print(f"mlr run: {message}", file=sys.stderr, flush=True)
