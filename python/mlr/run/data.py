"""Step 1 of ``mlr run``: the data every later step reads, each file read once and checked before
anything is aligned or trained: the fine-tuning examples, the evaluation set every model is scored
on, and the probe's prompts, handed to the analysis as they are. (With ``--perturb ift-grad`` the
analysis reads the ``--ift`` file once more for its instruction gradients.)"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.instructions import (
    InstructionExample,
    examples_from_records,
    load_instruction_records,
    load_instructions,
)
from mlr.data.prompts import load_prompts
from mlr.data.security_data import SecurityData, split_prompts
from mlr.data.split import heldout_split
from mlr.evaluation.evaluate import EvalSet, load_eval_set
from mlr.run.config import INSTRUCTION_HELDOUT_FRACTION, MAX_HELDOUT_INSTRUCTIONS, RunConfig


@dataclass(frozen=True)
class RunData:
    """What ``mlr run`` fine-tunes on (None: the embedded set), what every model is evaluated on,
    and the probe's split."""

    train_examples: list[InstructionExample] | None
    eval_set: EvalSet
    probe_split: SecurityData


def run_data(config: RunConfig) -> RunData:
    """Read ``config``'s files, each once. An ``--ift`` file without ``--heldout`` gives a fixed
    share of its examples to evaluation. Raises ``MlrInputError`` for a missing, empty or
    malformed file, or too few prompts for the probe's held-out split."""
    harmful = None if config.harmful is None else load_prompts(config.harmful)
    benign = None if config.benign is None else load_prompts(config.benign)
    eval_set = load_eval_set(None, None, config.heldout)
    eval_set = replace(eval_set, harmful=eval_set.harmful if harmful is None else harmful,
                       benign=eval_set.benign if benign is None else benign)
    train_examples = None
    if config.ift is not None:
        if config.heldout is not None:
            train_examples = load_instructions(config.ift)
        else:
            records = load_instruction_records(config.ift)
            # Examples made before the split: an error names the record's place in the file.
            examples = zip(examples_from_records(records, config.ift), records)
            held = min(MAX_HELDOUT_INSTRUCTIONS,
                       max(1, round(len(records) * INSTRUCTION_HELDOUT_FRACTION)))
            train, held_out = heldout_split(list(examples), held, seed=0)
            train_examples = [example for example, _ in train]
            eval_set = replace(eval_set, tasks=[record.get("task") for _, record in held_out],
                               instructions=[example for example, _ in held_out])
    if config.eval_limit is not None:
        eval_set = eval_set.limited(config.eval_limit)
    return RunData(train_examples, eval_set, probe_split(config, harmful, benign))


def probe_split(config: RunConfig, harmful: list[str] | None,
                  benign: list[str] | None) -> SecurityData:
    """The probe's split of the user's prompts; or, with ``probe_prompts`` N and no files, of the
    first N of each class of the embedded training split (split afresh, as a file's would be);
    else the embedded set's fixed split."""
    sources = (config.harmful, config.benign)
    if config.probe_prompts is not None and harmful is None and benign is None:
        harmful = harmful_prompts("train")[:config.probe_prompts]
        benign = benign_prompts("train")[:config.probe_prompts]
        sources = ("the embedded training split",) * 2
    return split_prompts(harmful, benign, sources=sources)
