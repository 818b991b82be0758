"""ML-LR instruction fine-tuning with MLRAdamW: modules in mods_robust.json train at --lr, every other
trainable module at --lr x --ratio (1 = vanilla fine-tuning, 0 = freeze all but Mods_Robust). Full
fine-tuning or LoRA. Writes the model to OUT/model, metrics.jsonl, train.json and, with --save-every,
checkpoints that --resume continues from. Under torchrun, --distributed ddp|fsdp2 trains on every
rank."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from mlr.commands.common import add_device_arguments
from mlr.tuning.distributed import STRATEGIES, cleanup_distributed
from mlr.tuning.train import TrainConfig, train

NAME = "train"
HELP = "ML-LR instruction fine-tuning (full or LoRA) with MLRAdamW"

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--model", metavar="DIR",
                        help="local Hugging Face model directory (default: the embedded tiny Llama)")
    parser.add_argument("--data", metavar="FILE",
                        help="alpaca (instruction/input/output) or chat (messages) JSON/JSONL "
                             "(default: the embedded benign instruction set)")
    parser.add_argument("--mods-robust", metavar="FILE",
                        help="mods_robust.json from `mlr search` (default: no robust module)")
    parser.add_argument("--ratio", type=float, default=d["ratio"],
                        help=f"LR multiplier outside Mods_Robust (default {d['ratio']})")
    parser.add_argument("--out", metavar="DIR", default="mlr_train", help="output directory")
    parser.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps")
    parser.add_argument("--lr", type=float, default=d["lr"], help="base learning rate")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="N",
                        help="examples per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=d["grad_accum"], metavar="K",
                        help="micro-batches per optimizer step")
    parser.add_argument("--warmup-steps", type=int, metavar="N",
                        help="linear warm-up steps (default: 10%% of --steps)")
    parser.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"],
                        help="cosine floor as a fraction of --lr")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                        help="decoupled weight decay (never on norms and biases)")
    parser.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"])
    parser.add_argument("--max-length", type=int, default=d["max_length"],
                        help="tokens per example (longer ones are cut)")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="seed of data order, LoRA init and dropout")
    parser.add_argument("--lora-rank", type=int, default=d["lora_rank"],
                        help="LoRA rank on q/k/v/o/gate/up/down (0: full fine-tuning)")
    parser.add_argument("--lora-alpha", type=float, default=d["lora_alpha"])
    parser.add_argument("--lora-dropout", type=float, default=d["lora_dropout"])
    parser.add_argument("--save-every", type=int, default=d["save_every"], metavar="N",
                        help="checkpoint every N steps (0: none)")
    parser.add_argument("--keep-checkpoints", type=int, default=d["keep_checkpoints"])
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out")
    add_device_arguments(parser, "weight dtype (bf16 autocast is on with a GPU)")
    parser.add_argument("--distributed", choices=STRATEGIES,
                        help="under torchrun: every rank trains its share of each global batch "
                             "(DDP, or FSDP2 sharding); rank 0 logs and writes")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{name: getattr(args, name) for name in _DEFAULTS if hasattr(args, name)})


def run(args: argparse.Namespace) -> int:
    try:
        result = train(config_from_args(args))
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks: rank 0 speaks for the run
        return 0
    print(f"trained {result.steps} steps, {result.tokens} tokens in {result.seconds:.1f} s; "
          f"last loss {result.final_loss:.4f}; model in {result.model_dir}")
    return 0
