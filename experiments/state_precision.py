"""Does less optimizer state cost quality? AdamW state precision arm by arm, on one fine-tuning.

    python experiments/state_precision.py --steps 500 --seeds 3 --out runs/state_precision
    PYTHONPATH=/path/with/torchao_and_optimi python experiments/state_precision.py ...  # peers too

Every arm trains the embedded default model (a 4-layer Llama of 0.87 M parameters, as built: its
initial weights, not aligned) on the embedded benign instruction set's ``train`` split, with the
same batches (an epoch sampler seeded by the seed), warm-up + cosine schedule, gradient clipping
and seeds, and reports the mean train loss of the last 50 steps and the loss on the ``heldout``
split (per response token): mean and 95 % half-width over seeds (Student's t). Arms:

* ``fp32 / fp32 state``: float32 weights, MLRAdamW as torch's AdamW (the reference);
* ``fp32 / bf16 state``: float32 weights, bfloat16 moments (stochastic rounding);
* ``bf16 / master``: bfloat16 weights with float32 masters and moments (mixed precision);
* ``bf16 / master + bf16 state``: the same with bfloat16 moments;
* ``bf16 / no master + bf16 state``: bfloat16 weights stepped through a Kahan compensation;
* ``bf16 / torch AdamW``: torch's AdamW on bfloat16 weights (bfloat16 moments, rounding to nearest,
  no master): what the low-precision modes must beat;
* ``bf16 / torchao SR`` and ``bf16 / optimi Kahan``: torchao's AdamW with bfloat16 stochastic
  rounding of the weights and torch-optimi's AdamW with Kahan summation, when they import (they are
  not dependencies of this project: put them on PYTHONPATH).

The bfloat16 arms also compute in bfloat16, so compare them with each other, and the float32 arms
with each other. Writes ``results.json`` into ``--out`` and prints the table;
``--table RESULTS.json [...]`` prints the documented Markdown table of one or more such files (one
sweep's arms in several runs), with each arm's paired difference from its reference: the same
seeds, so the same initial weights and batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from mlr.data.instructions import fine_tuning_examples
from mlr.environment import environment
from mlr.evaluation.intervals import ci95_half_width, paired_difference
from mlr.instruction_loss import (
    batches_in_order,
    encode_examples,
    make_batch,
    response_loss_sum,
    target_tokens,
)
from mlr.io import write_json_atomic
from mlr.models.loading import load_model
from mlr.tuning.sampler import EpochSampler
from mlr.tuning.schedule import warmup_cosine

from mlr_kernels import MLRAdamW

MAX_LENGTH = 128
LAST_STEPS = 50  # the train loss reported: the mean of these last steps
OptimizerFactory = Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]


def mlr(**options) -> OptimizerFactory:
    return lambda params, lr: MLRAdamW(params, lr=lr, weight_decay=0.0, **options)


def peers() -> dict[str, tuple[torch.dtype, OptimizerFactory]]:
    """The peer optimizers that import here, by arm name."""
    arms = {}
    try:
        from torchao.optim import _AdamW as TorchaoAdamW  # the class its AdamW variants build on
    except ImportError as error:
        print(f"torchao arm skipped: {error}", file=sys.stderr)
    else:
        arms["bf16 / torchao SR"] = (torch.bfloat16, lambda params, lr: TorchaoAdamW(
            params, lr=torch.tensor(lr), weight_decay=0.0, bf16_stochastic_round=True))
    try:
        import optimi
    except ImportError as error:
        print(f"optimi arm skipped: {error}", file=sys.stderr)
    else:
        arms["bf16 / optimi Kahan"] = (torch.bfloat16, lambda params, lr: optimi.AdamW(
            params, lr=lr, weight_decay=0.0, kahan_sum=True))
    return arms


ARMS: dict[str, tuple[torch.dtype, OptimizerFactory]] = {
    "fp32 / fp32 state": (torch.float32, mlr()),
    "fp32 / bf16 state": (torch.float32, mlr(state_dtype=torch.bfloat16)),
    "bf16 / master": (torch.bfloat16, mlr()),
    "bf16 / master + bf16 state": (torch.bfloat16, mlr(state_dtype=torch.bfloat16)),
    "bf16 / no master + bf16 state": (torch.bfloat16,
                                     mlr(state_dtype=torch.bfloat16, master_weights=False)),
    "bf16 / torch AdamW": (torch.bfloat16,
                           lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)),
}


def run_arm(dtype: torch.dtype, factory: OptimizerFactory, seed: int, args: argparse.Namespace) -> dict:
    """Train one arm with one seed; its final train and held-out losses."""
    torch.manual_seed(seed)
    model, tokenizer = load_model(None, str(dtype).removeprefix("torch."), padding_side="right")
    model.train()
    train_set = encode_examples(tokenizer, fine_tuning_examples("train"), MAX_LENGTH)
    heldout = encode_examples(tokenizer, fine_tuning_examples("heldout"), MAX_LENGTH)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = factory(params, args.lr)
    schedule = warmup_cosine(optimizer, args.steps // 10, args.steps, min_ratio=0.1)  # fills tensor lrs
    sampler = EpochSampler(len(train_set), seed)
    losses = []
    started = time.perf_counter()
    for _ in range(args.steps):
        batch = make_batch(train_set, sampler.next_batch(args.batch_size), tokenizer.pad_token_id)
        optimizer.zero_grad()
        loss = response_loss_sum(model, batch) / target_tokens(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches_in_order(heldout, 32, tokenizer.pad_token_id):
            total += float(response_loss_sum(model, batch))
            tokens += target_tokens(batch)
    return {"seed": seed, "train_loss": statistics.mean(losses[-LAST_STEPS:]),
            "heldout_loss": total / tokens, "seconds": seconds}


def summary(runs: list[dict], key: str) -> dict:
    values = [run[key] for run in runs]
    return {"mean": statistics.mean(values), "ci95": ci95_half_width(values), "values": values}


# Each arm is named "<weights> / <optimizer>"; its reference trains the same weights.
REFERENCE = {"fp32": "fp32 / fp32 state", "bf16": "bf16 / master"}


def markdown_table(paths: list[Path]) -> str:
    """The arms of the ``results.json`` files at ``paths`` (same settings) as a Markdown table:
    mean ± 95 % half-width of the final train and held-out losses, and the held-out loss's paired
    difference from the arm that trains the same weights' dtype (:data:`REFERENCE`) (mean ± 95 % half-width
    over seeds).

    Raises:
        ValueError: the files' settings differ (other than ``arms``).
    """
    results = [json.loads(path.read_text()) for path in paths]
    settings = [{k: v for k, v in r["settings"].items() if k != "arms"} for r in results]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"the results files were run with different settings: {settings}")
    arms = {name: arm for r in results for name, arm in r["arms"].items()}
    lines = ["| arm | train loss | held-out loss | held-out − reference |", "| --- | ---: | ---: | ---: |"]
    for name, arm in arms.items():
        reference = REFERENCE[name.split(" / ")[0]]
        if name == reference or reference not in arms:
            difference = "(reference)" if name == reference else "—"
        else:
            paired = paired_difference(arm["heldout_loss"]["values"],
                                       arms[reference]["heldout_loss"]["values"])
            half_width = None if paired.high is None else paired.high - paired.mean
            difference = _show({"mean": paired.mean, "ci95": half_width}, signed=True)
        lines.append(f"| {name} | {_show(arm['train_loss'])} | {_show(arm['heldout_loss'])} | {difference} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: runs are reproducible)")
    parser.add_argument("--arms", default=None,
                        help="comma-separated arm names (default: all that import)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="print the Markdown table of these results files instead of training")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if args.out is None:
        parser.error("--out is required to train")
    torch.set_num_threads(args.threads)
    arms = {**ARMS, **peers()}
    if args.arms:
        unknown = [name for name in args.arms.split(",") if name not in arms]
        if unknown:
            parser.error(f"unknown or unavailable arm(s): {', '.join(unknown)}")
        arms = {name: arms[name] for name in args.arms.split(",")}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results = {"settings": {**settings, "max_length": MAX_LENGTH},
               "environment": environment("cpu"), "arms": {}}
    for name, (dtype, factory) in arms.items():
        runs = [run_arm(dtype, factory, seed, args) for seed in range(args.seeds)]
        results["arms"][name] = {"runs": runs, "train_loss": summary(runs, "train_loss"),
                                 "heldout_loss": summary(runs, "heldout_loss")}
        write_json_atomic(args.out / "results.json", results)  # a killed sweep keeps what it had
        seconds = statistics.mean(run["seconds"] for run in runs)
        print(f"{name:32s} train {_show(results['arms'][name]['train_loss'])}  heldout "
              f"{_show(results['arms'][name]['heldout_loss'])}  ({seconds:.0f} s a run)", flush=True)


def _show(stats: dict, signed: bool = False) -> str:
    ci = stats["ci95"]
    return f"{stats['mean']:{'+' if signed else ''}.4f}" + ("" if ci is None else f" ± {ci:.4f}")


if __name__ == "__main__":
    main()
