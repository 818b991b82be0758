"""The ML-LR method end to end: (with no --model) build and safety-align the embedded default; probe,
robustness map and Mods_Robust search on the aligned model; benign fine-tuning three ways with the
same data, steps and seeds (vanilla ratio 1, ML-LR, frozen-but-robust ratio 0) plus a control (every
module at base x ratio); evaluation of the aligned model and every arm and seed; report.md,
report.json and plots in --out."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

import torch
import transformers

from mlr.analysis.perturb import PERTURBATIONS
from mlr.commands.common import add_device_arguments
from mlr.errors import MlrInputError
from mlr.run import RunConfig, quick_config, run_pipeline

NAME = "run"
HELP = "the whole method: align, analyze, fine-tune three ways, evaluate, report"

_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--model", metavar="DIR",
                        help="local aligned chat model (default: the embedded tiny Llama, "
                             "safety-aligned first)")
    parser.add_argument("--harmful", metavar="FILE",
                        help="harmful prompts for the probe and ASR (CSV goal column, JSON/JSONL, "
                             "text); default: the embedded set")
    parser.add_argument("--benign", metavar="FILE",
                        help="benign prompts for the probe and over-refusal; default: embedded")
    parser.add_argument("--ift", metavar="FILE",
                        help="benign instruction data, alpaca or chat JSON/JSONL (default: the "
                             "embedded fine-tuning tasks)")
    parser.add_argument("--heldout", metavar="FILE",
                        help="held-out instructions for loss and accuracy (default: the embedded "
                             "held-out tasks, or 5%% of --ift)")
    parser.add_argument("--out", metavar="DIR", default=d["out"], help="output directory")
    parser.add_argument("--seeds", type=int, default=d["seeds"],
                        help=f"fine-tuning seeds per arm (default {d['seeds']})")
    parser.add_argument("--steps", type=int, default=d["steps"],
                        help=f"fine-tuning steps (default {d['steps']})")
    parser.add_argument("--lr", type=float, default=d["lr"], help=f"base LR (default {d['lr']})")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="N")
    parser.add_argument("--ratio", type=float, default=d["ratio"],
                        help=f"ML-LR multiplier outside Mods_Robust (default {d['ratio']})")
    parser.add_argument("--lora-rank", type=int, default=d["lora_rank"],
                        help="fine-tune LoRA adapters of this rank (default 0: full fine-tuning)")
    parser.add_argument("--perturb", choices=PERTURBATIONS, default=d["perturb"],
                        help="perturbation of the robustness analysis")
    parser.add_argument("--alpha", type=float, default=d["alpha"],
                        help=f"perturbation size (default {d['alpha']})")
    parser.add_argument("--tau", type=float, default=d["tau"],
                        help=f"search threshold, x clean probe accuracy (default {d['tau']})")
    parser.add_argument("--budget", type=float, metavar="FRACTION",
                        help="largest parameter fraction Mods_Robust may hold")
    parser.add_argument("--layer", type=int, metavar="L", help="probe layer (default: best)")
    parser.add_argument("--analysis-seeds", type=int, default=d["analysis_seeds"], metavar="K")
    parser.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])
    parser.add_argument("--save-every", type=int, default=d["save_every"], metavar="N",
                        help="checkpoint each fine-tuning run every N steps (0: never)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control arm (every module at base x ratio)")
    add_device_arguments(parser)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: 1 for the embedded default, whose "
                             "ops are too small to share; torch's choice for --model)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="fine-tuning runs side by side, each in its own process (default: "
                             "one per CPU core / threads on the CPU, else 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: every stage on little data for few steps")


def run(args: argparse.Namespace) -> int:
    threads = args.threads if args.threads is not None else (1 if args.model is None else None)
    if threads is not None:
        if threads < 1:
            raise MlrInputError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # one bar per model load drowns the rest
    if args.jobs is None:
        cpu = torch.device(args.device).type == "cpu"
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.jobs = max(1, (cores or 1) // torch.get_num_threads()) if cpu else 1
    config = RunConfig(**{name: getattr(args, name) for name in _DEFAULTS if hasattr(args, name)})
    report = run_pipeline(quick_config(config) if config.quick else config)
    arms, check = report["arms"], report["target"]
    for name, arm in arms.items():
        print(f"{name:8s} ASR {arm['asr']:.3f} ± {arm['asr_std']:.3f}  held-out loss "
              f"{arm['heldout_loss']:.4f} ± {arm['heldout_loss_std']:.4f}  over-refusal "
              f"{arm['over_refusal']:.3f}")
    print(f"target {'met' if check['met'] else 'not met'}; wrote {args.out}/report.md")
    return 0
