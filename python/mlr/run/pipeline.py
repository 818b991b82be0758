"""``mlr run``'s steps, in their order:

1. data (``mlr.run.data``): the benign fine-tuning set, the fixed held-out evaluation set and the
   probe's prompts;
2. the aligned model: the embedded default or a preset such as ``smollm2-135m-instruct``,
   safety-aligned (``mlr.tuning.align``, cached), or ``--model`` as it is; the per-model settings
   (learning rate, steps, evaluation sizes, ``--quick``) are in ``mlr.run.presets``;
3. analysis on the aligned model: probe, robustness map, Mods_Robust search
   (``mlr.analysis.pipeline.run_search``; outputs in ``out``);
4. benign fine-tuning in seven arms with the same data, steps and seeds: vanilla (ratio 1), ML-LR
   (``ratio``), frozen-but-robust (ratio 0), SWAT (Mods_Robust alone for a warm-up, then
   everything), the control ``uniform_lr`` that tells ML-LR from simply training slower (every
   module at base × ``ratio``), and the peer defenses ``sppft`` (the safety layers frozen) and
   ``safeinstr`` (refusal examples mixed into the data); each seed resumable from its
   checkpoints, in worker processes (``mlr.run.arms``);
5. evaluation of the aligned model and of every arm and seed, all with the same prompts and judge;
6. the report (``mlr.evaluation.report``).

Each arm's fine-tuned weights are deleted once evaluated (about 4 bytes per parameter each: 540 MB
for SmolLM2) unless ``keep_models``; a killed ``mlr run`` continues where it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from mlr.analysis.pipeline import SEARCH_FILE, run_search
from mlr.environment import environment
from mlr.evaluation.evaluate import warn_if_few_prompts
from mlr.evaluation.report import summarize_arm, write_report
from mlr.io import read_json
from mlr.options import require
from mlr.output_dir import check_output_dir
from mlr.run.arms import ArmContext, arm_jobs, evaluate_aligned, run_arm_jobs, say
from mlr.run.config import EMBEDDED_NAME, RunConfig
from mlr.run.data import run_data
from mlr.run.presets import OPTION_FIELDS, run_defaults
from mlr.text import plural
from mlr.tuning.align import align_model
from mlr.tuning.peers import scaled_safety_layers
from mlr.tuning.phases import default_swat_warmup


def resolve_defaults(config: RunConfig) -> RunConfig:
    """``config`` with every setting the user left ``None`` taken from its model's table
    (``mlr.run.presets``); with ``quick``, the table's smoke-test settings replace the user's.
    Raises ``MlrInputError`` for a SWAT warm-up longer than the run."""
    table = run_defaults(config.model, config.quick)
    chosen = {name: getattr(table, name) if config.quick or getattr(config, name) is None
              else getattr(config, name) for name in OPTION_FIELDS}
    resolved = replace(config, **chosen, alignment=table.alignment,
                       probe_depth=table.probe_depth if config.quick else None,
                       eval_limit=config.eval_limit or table.eval_limit,
                       probe_prompts=config.probe_prompts or table.probe_prompts,
                       threads=table.threads if config.threads is None else config.threads)
    if resolved.swat_warmup_steps is None:
        return replace(resolved, swat_warmup_steps=default_swat_warmup(resolved.steps))
    require(resolved.swat_warmup_steps <= resolved.steps, f"--swat-warmup-steps must be in "
            f"0..{resolved.steps} (--steps), got {resolved.swat_warmup_steps}")
    return resolved


def _with_threads_and_jobs(config: RunConfig) -> RunConfig:
    """Apply ``config.threads`` (None: torch's choice) and resolve the default ``jobs``: one per
    CPU core / threads on the CPU, else 1."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    jobs = config.jobs
    if jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cpu = torch.device(config.device).type == "cpu"
        jobs = max(1, (cores or 1) // torch.get_num_threads()) if cpu else 1
    return replace(config, threads=torch.get_num_threads(), jobs=jobs)


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """Run the method end to end into ``config.out``; returns the report (as in report.json).
    Sets torch's CPU thread count (``config.threads``). Raises ``MlrInputError`` for bad input
    (an ``out`` that cannot be written among it), before anything is aligned or trained."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(config.out)
    config = _with_threads_and_jobs(resolve_defaults(config))

    # 1. Data: what the arms fine-tune on, what every model is evaluated on, and the probe's split
    #    (bad input fails here, before anything is trained).
    data = run_data(config)
    eval_set = data.eval_set
    warn_if_few_prompts(eval_set)
    check_output_dir(out)

    # 2. The aligned model.
    name = "the embedded default" if config.model is None else config.model
    if config.alignment is not None:
        say(f"{name}, safety-aligned ({config.alignment.steps} steps; cached after the first run)")
        base = str(align_model(config.alignment, config.model, progress=not config.quick))
    else:
        say(f"model {name}")
        base = config.model
    seconds["align"] = time.perf_counter() - started

    # 3. Analysis: probe.json, robustness.json, mods_robust.json (+ plots) in ``out``.
    tick = time.perf_counter()
    say("probe, robustness map and Mods_Robust search")
    analysis = run_search(config.analysis(base), data.probe_split, config.probe_depth)
    probe = analysis.probe
    say(f"Mods_Robust: {plural(len(analysis.search.modules), 'module')}, "
        f"{analysis.search.param_fraction:.1%} of module parameters (probe layer {probe.layer})")
    seconds["analysis"] = time.perf_counter() - tick
    mods_robust = out / SEARCH_FILE
    config = with_sppft_layers(config, analysis.robustness.num_layers)

    # 4 and 5. Fine-tune each arm over the seeds; evaluate every model the same way.
    seeds = list(range(config.seeds))
    tick = time.perf_counter()
    context = ArmContext(config, base, data.train_examples, eval_set, probe)
    arms = {"aligned": [evaluate_aligned(context)]}
    arm_seeds = {"aligned": [0]}
    jobs = [replace(arm, seed=seed) for arm in arm_jobs(config, mods_robust) for seed in seeds]
    for job, metrics in zip(jobs, run_arm_jobs(context, jobs)):
        arms.setdefault(job.arm, []).append(metrics)
        arm_seeds.setdefault(job.arm, []).append(job.seed)
    seconds["fine_tune_and_evaluate"] = time.perf_counter() - tick

    # 6. Report.
    summary = {arm: summarize_arm(arm_seeds[arm], results) for arm, results in arms.items()}
    setup = {**asdict(config), "model": config.model or EMBEDDED_NAME,
             "counts": {"harmful": len(eval_set.harmful), "benign": len(eval_set.benign),
                        "alarming": len(eval_set.alarming),
                        "instructions": len(eval_set.instructions),
                        "refusal_scored": len(eval_set.refusal_scored)},
             "stage_seconds": seconds, "threads": torch.get_num_threads()}
    env = environment(config.device, kernel_backends([job.run_dir(out) for job in jobs]))
    stability = None if analysis.stability is None else analysis.stability.to_json()
    return write_report(out, summary, {**analysis.search.to_json({}), "stability": stability},
                        setup, env, time.perf_counter() - started)


def with_sppft_layers(config: RunConfig, num_layers: int) -> RunConfig:
    """``config`` with ``sppft_layers`` resolved: the user's, else SPPFT's block scaled to the
    aligned model's ``num_layers`` decoder layers (``mlr.tuning.peers.scaled_safety_layers``)."""
    if config.sppft_layers is not None or not config.peers:
        return config
    return replace(config, sppft_layers=scaled_safety_layers(num_layers))


def kernel_backends(run_dirs: list[Path]) -> dict[str, str] | None:
    """The MLRAdamW kernel of each bucket (``MLRAdamW.backends``) over the fine-tuning runs in
    ``run_dirs``, as their train.json files recorded it (kernels that differ between runs are
    joined by commas); None when none recorded one."""
    found: dict[str, set[str]] = {}
    for run_dir in run_dirs:
        summary = run_dir / "train.json"
        recorded = read_json(summary, "train summary").get("backends") if summary.is_file() else None
        for bucket, name in (recorded or {}).items():
            found.setdefault(bucket, set()).add(name)
    return {bucket: ", ".join(sorted(names)) for bucket, names in sorted(found.items())} or None
