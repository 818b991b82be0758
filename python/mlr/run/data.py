"""Step 1 of ``mlr run``: the data every later step reads, each file read once and checked before
anything is aligned or trained: the fine-tuning examples, the evaluation set every model is scored
on, and the probe's prompts, handed to the analysis as they are."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.ift import InstructionExample, example_from_record
from mlr.data.prompts import load_instruction_data, load_prompts
from mlr.data.security_data import SecurityData, split_prompts
from mlr.data.split import heldout_split
from mlr.evaluation.evaluate import EvalSet, load_eval_set
from mlr.run.config import INSTRUCTION_HELDOUT_FRACTION, MAX_HELDOUT_INSTRUCTIONS, RunConfig
from mlr.tuning.sft import load_training_examples


@dataclass(frozen=True)
class RunData:
    """What ``mlr run`` fine-tunes on (None: the embedded set), what every model is evaluated on,
    and the probe's split."""

    train_examples: list[InstructionExample] | None
    eval_set: EvalSet
    probe_prompts: SecurityData


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
            train_examples = load_training_examples(config.ift)
        else:
            records = load_instruction_data(config.ift)
            held = min(MAX_HELDOUT_INSTRUCTIONS,
                       max(1, round(len(records) * INSTRUCTION_HELDOUT_FRACTION)))
            train_records, held_records = heldout_split(records, held, seed=0)
            train_examples = [example_from_record(r, f"{config.ift} example")
                              for r in train_records]
            eval_set = replace(eval_set, tasks=[r.get("task") for r in held_records],
                               instructions=[example_from_record(r, f"{config.ift} example")
                                             for r in held_records])
    if config.eval_limit is not None:
        eval_set = eval_set.limited(config.eval_limit)
    return RunData(train_examples, eval_set, probe_prompts(config, harmful, benign))


def probe_prompts(config: RunConfig, harmful: list[str] | None,
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
