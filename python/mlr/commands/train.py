"""ML-LR instruction fine-tuning with MLRAdamW: modules in mods_robust.json train at --lr, every other
trainable module at --lr x --ratio (1 = vanilla fine-tuning, 0 = freeze all but Mods_Robust). Full
fine-tuning or LoRA. Writes the model to OUT/model, metrics.jsonl, train.json and, with --save-every,
checkpoints that --resume continues from. Under torchrun, --distributed ddp|fsdp2 trains on every
rank."""

from __future__ import annotations

import argparse
import os

from mlr.options import add_options, from_options
from mlr.tuning.distributed import cleanup_distributed
from mlr.tuning.train import TrainConfig, train

NAME = "train"
HELP = "ML-LR instruction fine-tuning (full or LoRA) with MLRAdamW"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    config = from_options(TrainConfig, args)
    try:
        result = train(config)
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks: rank 0 speaks for the run
        return 0
    print(f"trained {result.steps} steps, {result.tokens} tokens in {result.seconds:.1f} s; "
          f"last loss {result.final_loss:.4f}; model in {result.model_dir}")
    return 0
