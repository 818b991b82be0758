"""Evaluate a model: attack success rate on harmful prompts (greedy answers through the chat template,
rule judge, optionally a local Llama-Guard-style judge model), over-refusal on benign
prompts, held-out loss and exact-match task accuracy on benign instructions, and the frozen security
probe's separation on this model, and the teacher-forced refusal score of every prompt (with
--no-answers only that, the held-out loss and the probe: no decoding). Writes OUT/eval.json and
OUT/answers.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.evaluation.evaluate import ANSWERS_FILE, EvalConfig, evaluate_model
from mlr.options import add_options, from_options

NAME = "eval"
HELP = "ASR, over-refusal, held-out loss, task accuracy and probe separation of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    config = from_options(EvalConfig, args)
    metrics, path = evaluate_model(config)
    print(f"refusal score: harmful {metrics['refusal_score']:.3f}, benign "
          f"{_value(metrics['benign_refusal_score'])}, alarming "
          f"{_value(metrics['alarming_refusal_score'])}  held-out loss "
          f"{metrics['heldout_loss']:.4f}")
    answers = Path(config.out) / ANSWERS_FILE
    if config.answers:
        print(f"ASR {metrics['asr']:.3f}  over-refusal {metrics['over_refusal']:.3f}  task "
              f"accuracy {_value(metrics['task_accuracy'])}")
        print(f"wrote {path} and {answers}")
    else:
        print(f"wrote {path}; {answers} is empty (--no-answers)")
    return 0


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
