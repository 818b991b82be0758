"""Instruction data: (prompt, response) examples from the user's files or the embedded corpus.

A file (``load_instruction_records``) is local JSON or JSONL, each record alpaca-style
({"instruction", "input", "output"}, ``input`` may be absent) or a single-turn chat
({"messages": [user, assistant]}); ``examples_from_records`` turns records into examples, and
``load_instructions`` does both. The embedded sets say which part of the corpus each stage of the
default pipeline uses: the aligned default plays the part of a chat model such as Llama-2-chat,
answering general questions (the ``fact`` tasks) and refusing harmful requests (the safety chats);
the benign instruction fine-tuning then teaches it new skills it was never trained on (arithmetic,
list and string manipulation), as a user adapting a chat model to their own task would. None of
the fine-tuning data is a refusal, and its held-out split is what usability is measured on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlr.data.corpus import alarming_examples, instruction_examples
from mlr.data.corpus import alignment_examples as safety_chats
from mlr.data.prompts import instruction_prompt
from mlr.errors import MlrInputError, one_line

CHAT_ROLES = ("system", "user", "assistant")
PASSED_THROUGH = ("task", "subtask")  # labels of the embedded corpus, kept when present
ALIGNMENT_TASKS = ("fact",)
FINE_TUNING_TASKS = ("arithmetic", "list", "string")


@dataclass(frozen=True)
class InstructionExample:
    """One exchange; without a response the whole text is the training target."""

    prompt: str
    response: str | None = None


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise MlrInputError(f"{where}: 'messages' must be a non-empty list")
    checked = []
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in CHAT_ROLES or \
                not isinstance(message.get("content"), str):
            raise MlrInputError(f"{where}: each message needs a role ({', '.join(CHAT_ROLES)}) "
                                "and a string content")
        checked.append({"role": message["role"], "content": message["content"]})
    if checked[-1]["role"] != "assistant":
        raise MlrInputError(f"{where}: the last message must be the assistant's")
    return checked


def _check_record(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    if row.get("messages") is not None:
        return {"messages": _check_messages(row["messages"], where)}
    for field in ("instruction", "output"):
        if not isinstance(row.get(field), str):
            raise MlrInputError(f"{where}: {field!r} must be a string")
    record = {"instruction": row["instruction"], "input": row.get("input") or "",
              "output": row["output"]}
    if not isinstance(record["input"], str):
        raise MlrInputError(f"{where}: 'input' must be a string")
    record.update({key: row[key] for key in PASSED_THROUGH if isinstance(row.get(key), str)})
    return record


def _is_empty_json(file: Path) -> bool:
    try:
        return file.read_text(encoding="utf-8").strip() in ("", "[]")
    except (OSError, UnicodeDecodeError):
        return False


def load_instruction_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a local JSON or JSONL instruction file, loaded with ``datasets``, normalised:
    alpaca dicts with ``input`` always a string (plus ``task`` and ``subtask`` when present), or
    {"messages": [{"role", "content"}, ...]} ending with the assistant's answer.

    Raises ``MlrInputError`` for a missing file, another suffix, unreadable JSON, no records, or a
    record of neither shape."""
    import datasets

    file = Path(path).expanduser()
    if not file.is_file():
        raise MlrInputError(f"instruction data file not found: {path}")
    if file.suffix.lower() not in (".json", ".jsonl"):
        raise MlrInputError(f"instruction data must be .json or .jsonl, got {file.name}")
    try:
        dataset = datasets.load_dataset("json", data_files=str(file), split="train")
    except Exception as error:  # datasets raises many types, empty files included
        if _is_empty_json(file):
            raise MlrInputError(f"{file} holds no examples") from error
        cause = error.__cause__ or error  # DatasetGenerationError hides the parser's message
        raise MlrInputError(f"cannot read {file} as JSON data: {one_line(cause)}") from error
    if len(dataset) == 0:
        raise MlrInputError(f"{file} holds no examples")
    columns = set(dataset.column_names)
    if "messages" not in columns and not {"instruction", "output"} <= columns:
        raise MlrInputError(f"{file}: examples need 'instruction' and 'output' or 'messages' "
                            f"(columns: {', '.join(sorted(columns))})")
    return [_check_record(row, f"{file} example {index}")
            for index, row in enumerate(dataset, start=1)]


def _example_from_record(record: Mapping[str, Any], where: str) -> InstructionExample:
    """An alpaca record or a single-turn chat as an example. Raises ``MlrInputError`` (naming
    ``where``) for a chat of other turns than (user, assistant)."""
    messages = record.get("messages")
    if messages is None:
        return InstructionExample(instruction_prompt(record), record["output"])
    roles = [message["role"] for message in messages]
    if roles != ["user", "assistant"]:
        raise MlrInputError(f"{where}: only single-turn chats (user, assistant) are supported, "
                            f"got roles {roles}")
    return InstructionExample(messages[0]["content"], messages[1]["content"])


def examples_from_records(records: Sequence[Mapping[str, Any]],
                          source: str) -> list[InstructionExample]:
    """Every record as an example, in order; an error names ``source`` and the 1-based record."""
    return [_example_from_record(record, f"{source} example {index}")
            for index, record in enumerate(records, start=1)]


def load_instructions(path: str | None) -> list[InstructionExample]:
    """The examples of an instruction file (``load_instruction_records``), or the embedded benign
    fine-tuning set's training split when ``path`` is ``None``."""
    if path is None:
        return fine_tuning_examples("train")
    return examples_from_records(load_instruction_records(path), str(path))


def instruction_records(split: str, tasks: tuple[str, ...] = FINE_TUNING_TASKS) -> list[dict]:
    """The embedded instruction records of ``tasks`` (alpaca dicts with ``task``)."""
    return instruction_examples(split, list(tasks))


def fine_tuning_examples(split: str) -> list[InstructionExample]:
    """The embedded benign fine-tuning set: new skills, no refusals."""
    return examples_from_records(instruction_records(split), "embedded")


def alignment_examples(split: str, alarming: bool = False) -> list[InstructionExample]:
    """The embedded safety-alignment set: harmful request → refusal and benign twin → help, plus
    the general questions the aligned assistant answers; with ``alarming``, safe requests in
    alarming words → help."""
    records = safety_chats(split) + instruction_records(split, ALIGNMENT_TASKS)
    if alarming:
        records += alarming_examples(split)
    return examples_from_records(records, "embedded")
