"""Step 1 of ``mlr run``: the data every later step reads, loaded and checked before anything is
aligned or trained: the fine-tuning examples, the evaluation set every model is scored on, and the
probe's prompts."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.ift import InstructionExample, example_from_record
from mlr.data.prompts import load_instruction_data
from mlr.evaluation.evaluate import EvalSet, load_eval_set
from mlr.io import write_text_atomic
from mlr.run.config import HELDOUT_FRACTION, MAX_HELDOUT, RunConfig
from mlr.tuning.sft import load_training_examples


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
        eval_set = eval_set.limited(config.eval_limit)
    return train_examples, eval_set


def probe_prompt_files(config: RunConfig, out: Path) -> tuple[str | None, str | None]:
    """The probe's harmful and benign prompt files: the user's, or (with ``probe_prompts`` N and
    no files) the first N of each class of the embedded training split written into
    ``out/probe_prompts/`` (the analysis splits them afresh), or None: the embedded set."""
    if config.probe_prompts is None or config.harmful is not None or config.benign is not None:
        return config.harmful, config.benign
    folder = out / "probe_prompts"
    paths = []
    for name, prompts in (("harmful", harmful_prompts("train")), ("benign", benign_prompts("train"))):
        lines = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:config.probe_prompts])
        paths.append(str(write_text_atomic(folder / f"{name}.jsonl", lines)))
    return paths[0], paths[1]
