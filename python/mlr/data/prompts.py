"""Loading the user's prompt files; every problem is a one-line MlrInputError.

Prompt sources (``load_prompts``): CSV with a ``goal`` column (AdvBench's harmful_behaviors.csv),
JSON (a list of strings or of objects), JSONL, plain text with one prompt per line, or, when the
string is not an existing path, a ``datasets`` hub name (which needs the network or a local cache).
Objects give their prompt in ``prompt``, ``instruction`` or ``goal``; an alpaca ``input`` is
appended to its instruction.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlr.errors import MlrInputError, one_line

PROMPT_FIELDS = ("prompt", "instruction", "goal")
PROMPT_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".txt")


def instruction_prompt(example: Mapping[str, Any]) -> str:
    """The user turn of an alpaca example: the instruction, a blank line, then the input."""
    instruction = str(example["instruction"]).strip()
    extra = str(example.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _prompt_from(record: Any, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, Mapping):
        for field in PROMPT_FIELDS:
            value = record.get(field)
            if value is None:
                continue
            if not isinstance(value, str):
                raise MlrInputError(f"{where}: field {field!r} is not a string")
            return instruction_prompt(record) if field == "instruction" else value
        fields = ", ".join(map(str, record)) or "none"
        raise MlrInputError(f"{where}: no prompt field (need one of {', '.join(PROMPT_FIELDS)}; "
                            f"found: {fields})")
    raise MlrInputError(f"{where}: expected a string or an object, got {type(record).__name__}")


def _prompts_from(records: Iterable[Any], source: str) -> list[str]:
    prompts = [_prompt_from(record, f"{source} item {index}").strip()
               for index, record in enumerate(records, start=1)]
    prompts = [prompt for prompt in prompts if prompt]
    if not prompts:
        raise MlrInputError(f"no prompts in {source}")
    return prompts


def _read_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        column = next((c for c in ("goal", *PROMPT_FIELDS) if c in columns), None)
        if column is None:
            raise MlrInputError(f"{path}: CSV has no 'goal' column "
                                f"(columns: {', '.join(columns) or 'none'})")
        return [row[column] or "" for row in reader]


def _read_jsonl(path: Path) -> list[Any]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise MlrInputError(f"{path} line {number} is not JSON: {error.msg}") from error
    return records


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MlrInputError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") \
            from error
    if not isinstance(data, list):
        raise MlrInputError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
    return data


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _load_prompt_file(path: Path) -> list[str]:
    if not path.is_file():
        raise MlrInputError(f"not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if not path.read_bytes().strip():
            raise MlrInputError(f"{path} is empty: no prompts in it")
        if suffix == ".csv":
            return _prompts_from(_read_csv(path), str(path))
        if suffix == ".jsonl":
            return _prompts_from(_read_jsonl(path), str(path))
        if suffix == ".json":
            return _prompts_from(_read_json(path), str(path))
        return _prompts_from(_read_lines(path), str(path))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MlrInputError(f"cannot read {path}: {one_line(error)}") from error


def _load_hub_prompts(name: str) -> list[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # datasets raises many types; all mean "could not get it"
        raise MlrInputError(f"{name!r} is not a local file, and loading it as a dataset failed: "
                            f"{one_line(error)}") from error
    return _prompts_from(dataset, f"dataset {name}")


def _looks_like_path(source: str) -> bool:
    """A missing path is reported as such instead of being tried as a hub name."""
    return Path(source).suffix.lower() in PROMPT_FILE_SUFFIXES or source.startswith(("/", ".", "~"))


def load_prompts(source: str | os.PathLike) -> list[str]:
    """User prompts from a file (CSV/JSON/JSONL/text, by suffix) or a ``datasets`` name."""
    path = Path(source).expanduser()
    if path.exists():
        return _load_prompt_file(path)
    if _looks_like_path(str(source)):
        raise MlrInputError(f"prompt file not found: {source}")
    return _load_hub_prompts(str(source))
