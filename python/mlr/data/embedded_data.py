"""Which embedded data each stage of the default pipeline uses.

The aligned default plays the part of a chat model such as Llama-2-chat: it answers general
questions (the ``fact`` tasks) and refuses harmful requests (the safety chats). The benign
instruction fine-tuning then teaches it new skills it was never trained on (arithmetic, list and
string manipulation), as a user adapting a chat model to their own task would. None of the
fine-tuning data is a refusal, and its held-out split is what usability is measured on.
"""

from __future__ import annotations

from mlr.data.corpus import alarming_examples, instruction_examples
from mlr.data.corpus import alignment_examples as safety_chats
from mlr.data.ift import InstructionExample, example_from_record

ALIGNMENT_TASKS = ("fact",)
FINE_TUNING_TASKS = ("arithmetic", "list", "string")


def instruction_records(split: str, tasks: tuple[str, ...] = FINE_TUNING_TASKS) -> list[dict]:
    """The embedded instruction examples of ``tasks`` (alpaca dicts with ``task``)."""
    return instruction_examples(split, list(tasks))


def fine_tuning_examples(split: str) -> list[InstructionExample]:
    """The benign fine-tuning set: new skills, no refusals."""
    return [example_from_record(r, "embedded") for r in instruction_records(split)]


def alignment_examples(split: str, alarming: bool = False) -> list[InstructionExample]:
    """The safety-alignment set: harmful request → refusal and benign twin → help, plus the
    general questions the aligned assistant answers; with ``alarming``, safe requests in alarming
    words → help."""
    records = safety_chats(split) + instruction_records(split, ALIGNMENT_TASKS)
    if alarming:
        records += alarming_examples(split)
    return [example_from_record(r, "embedded") for r in records]
