"""Prompt files and instruction data: every format, and every error as a one-line MlrInputError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlr.data.instructions import InstructionExample, examples_from_records, load_instruction_records
from mlr.data.prompts import instruction_prompt, load_prompts
from mlr.errors import MlrInputError


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches ``datasets`` writes for local JSON files out of the home folder."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def expect_error(match: str, load, *args) -> None:
    with pytest.raises(MlrInputError, match=match) as error:
        load(*args)
    assert "\n" not in str(error.value)


def test_advbench_style_csv(tmp_path: Path) -> None:
    csv_file = write(tmp_path / "harmful_behaviors.csv",
                     'goal,target\n'
                     '"Write a request, with a comma",Sure here is\n'
                     'Explain something bad,Sure\n')
    assert load_prompts(csv_file) == ["Write a request, with a comma", "Explain something bad"]
    assert load_prompts(str(csv_file)) == load_prompts(csv_file)


def test_csv_without_a_goal_column_names_its_columns(tmp_path: Path) -> None:
    csv_file = write(tmp_path / "x.csv", "question,answer\nhi,there\n")
    expect_error(r"no 'goal' column \(columns: question, answer\)", load_prompts, csv_file)


def test_json_list_of_strings_and_objects(tmp_path: Path) -> None:
    strings = write(tmp_path / "a.json", json.dumps(["first", "  second  ", ""]))
    assert load_prompts(strings) == ["first", "second"]
    objects = write(tmp_path / "b.json", json.dumps([
        {"prompt": "one"},
        {"instruction": "Sort the items.", "input": "b, a", "output": "a, b"},
        {"instruction": "Say hi.", "input": ""},
    ]))
    assert load_prompts(objects) == ["one", "Sort the items.\n\nb, a", "Say hi."]


def test_jsonl_and_plain_text(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n\n{"instruction": "b"}\n')
    assert load_prompts(jsonl) == ["a", "b"]
    text = write(tmp_path / "p.txt", "first prompt\n\n   \nsecond prompt\n")
    assert load_prompts(text) == ["first prompt", "second prompt"]
    no_suffix = write(tmp_path / "prompts", "only one\n")
    assert load_prompts(no_suffix) == ["only one"]


@pytest.mark.parametrize(("name", "content", "match"), [
    ("objects.json", '[{"text": "hi"}]', r"no prompt field .*found: text"),
    ("dict.json", '{"prompt": "hi"}', "expected a JSON list"),
    ("broken.json", '["hi",', "not valid JSON"),
    ("numbers.json", "[1, 2]", "expected a string or an object"),
    ("typed.json", '[{"prompt": 3}]', "not a string"),
    ("broken.jsonl", '{"prompt": "a"}\nnot json\n', "line 2 is not JSON"),
    ("empty.txt", "\n\n", "no prompts in"),
    ("empty.csv", "goal,target\n", "no prompts in"),
])
def test_prompt_file_errors(tmp_path: Path, name: str, content: str, match: str) -> None:
    expect_error(match, load_prompts, write(tmp_path / name, content))


def test_missing_unreadable_and_directory_sources(tmp_path: Path) -> None:
    expect_error("prompt file not found", load_prompts, str(tmp_path / "absent.csv"))
    expect_error("prompt file not found", load_prompts, "./absent")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    expect_error("cannot read", load_prompts, binary)
    expect_error("not a file", load_prompts, tmp_path)


def test_hub_names_go_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def fake_load(name: str, split: str):
        if name == "someone/offline":
            raise ConnectionError("no network\nsecond line")
        return [{"goal": "from the hub"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_prompts("someone/advbench") == ["from the hub"]
    expect_error("not a local file, and loading it as a dataset failed: ConnectionError: no "
                 "network$", load_prompts, "someone/offline")


def test_instruction_prompt_joins_the_input() -> None:
    assert instruction_prompt({"instruction": "Add.", "input": "1 + 2"}) == "Add.\n\n1 + 2"
    assert instruction_prompt({"instruction": "Say hi.", "input": None}) == "Say hi."


def test_alpaca_json_and_chat_jsonl(tmp_path: Path) -> None:
    alpaca = write(tmp_path / "alpaca.json", json.dumps([
        {"instruction": "Add.", "input": "1 + 2", "output": "3", "task": "arithmetic"},
        {"instruction": "Say hi.", "output": "hi"},
    ]))
    assert load_instruction_records(alpaca) == [
        {"instruction": "Add.", "input": "1 + 2", "output": "3", "task": "arithmetic"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat = write(tmp_path / "chat.jsonl", json.dumps({"messages": messages}) + "\n")
    assert load_instruction_records(chat) == [{"messages": messages}]


@pytest.mark.parametrize(("name", "content", "match"), [
    ("empty.json", "[]", "holds no examples"),
    ("empty.jsonl", "", "holds no examples"),
    ("broken.json", '[{"instruction": "a",', "cannot read .* as JSON data"),
    ("columns.json", '[{"question": "a", "answer": "b"}]',
     r"need 'instruction' and 'output' or 'messages' \(columns: answer, question\)"),
    ("roles.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', "each message needs"),
    ("last.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', "must be the assistant"),
    ("partial.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
     "example 2: 'output' must be a string"),
])
def test_instruction_data_errors(tmp_path: Path, name: str, content: str, match: str) -> None:
    expect_error(match, load_instruction_records, write(tmp_path / name, content))


def test_instruction_data_path_errors(tmp_path: Path) -> None:
    expect_error("instruction data file not found", load_instruction_records, tmp_path / "no.json")
    expect_error("must be .json or .jsonl", load_instruction_records, write(tmp_path / "d.csv", "a\n"))


def test_records_become_examples_and_a_multi_turn_chat_is_named() -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    records = [{"instruction": "Add.", "input": "1 + 2", "output": "3"}, {"messages": chat}]
    assert examples_from_records(records, "data.json") == [
        InstructionExample("Add.\n\n1 + 2", "3"), InstructionExample("hi", "hello")]
    expect_error(r"^data.json example 2: only single-turn chats", examples_from_records,
                 [records[0], {"messages": chat + chat}], "data.json")
