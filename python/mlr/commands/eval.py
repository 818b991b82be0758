"""Evaluate a model: attack success rate on harmful prompts (greedy answers through the chat template,
refusal-keyword judge, optionally a local Llama-Guard-style judge model), over-refusal on benign
prompts, held-out loss and exact-match task accuracy on benign instructions, and the frozen security
probe's separation on this model. Writes OUT/eval.json and OUT/answers.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlr.analysis.probe import ProbeResult
from mlr.commands.common import add_device_arguments
from mlr.errors import MlrInputError
from mlr.evaluation.evaluate import ANSWERS_FILE, evaluate, load_eval_set, write_evaluation
from mlr.evaluation.judge import ModelJudge
from mlr.models import load_model

NAME = "eval"
HELP = "ASR, over-refusal, held-out loss, task accuracy and probe separation of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR",
                        help="local Hugging Face model directory (default: the embedded tiny Llama)")
    parser.add_argument("--harmful", metavar="FILE",
                        help="harmful prompts (CSV goal column, JSON/JSONL, text); default: the "
                             "embedded held-out set")
    parser.add_argument("--benign", metavar="FILE",
                        help="benign prompts for over-refusal; default: the embedded held-out set")
    parser.add_argument("--heldout", metavar="FILE",
                        help="held-out alpaca/chat JSON(L) for loss and accuracy (accuracy on "
                             "examples with a 'task' field); default: the embedded held-out tasks")
    parser.add_argument("--probe", metavar="FILE", help="probe.json from `mlr probe`")
    parser.add_argument("--judge-model", metavar="DIR",
                        help="local Llama-Guard-style judge model (answers 'safe' / 'unsafe')")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    add_device_arguments(parser)
    parser.add_argument("--out", metavar="DIR", default="mlr_eval", help="output directory")


def read_probe(path: str) -> ProbeResult:
    file = Path(path)
    if not file.is_file():
        raise MlrInputError(f"probe file not found: {path}")
    try:
        return ProbeResult.from_json(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MlrInputError(f"{path} is not a probe.json from `mlr probe`") from error


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise MlrInputError("--batch-size and --max-new-tokens must be at least 1")
    data = load_eval_set(args.harmful, args.benign, args.heldout)
    probe = read_probe(args.probe) if args.probe else None
    judge = ModelJudge(args.judge_model, args.device, args.dtype) if args.judge_model else None
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    metrics, answers = evaluate(model, tokenizer, data, judge, probe, args.batch_size,
                                args.max_new_tokens)
    path = write_evaluation(args.out, {"model": args.model, "metrics": metrics}, answers)
    accuracy = metrics["task_accuracy"]
    print(f"ASR {metrics['asr']:.3f}  over-refusal {metrics['over_refusal']:.3f}  held-out loss "
          f"{metrics['heldout_loss']:.4f}  task accuracy "
          f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}")
    print(f"wrote {path} and {Path(args.out) / ANSWERS_FILE}")
    return 0
