"""The embedded corpus: sizes, twins, fixed and disjoint splits, determinism, checkable answers."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlr.data.corpus import (
    REFUSALS,
    alignment_examples,
    benign_prompts,
    harmful_prompts,
    helpful_answer_for,
    instruction_examples,
    instruction_tasks,
    refusal_for,
    security_categories,
    security_pairs,
    tokenizer_texts,
)
from mlr.data.corpus.facts import RELATIONS

REFUSAL_MARKERS = ("I can't", "I cannot", "I'm sorry", "I won't")


def changed_words(a: str, b: str) -> int:
    """Words replaced, inserted or deleted to turn ``a`` into ``b`` (the larger side of each edit)."""
    matcher = difflib.SequenceMatcher(a=a.split(), b=b.split())
    return sum(max(i2 - i1, j2 - j1)
               for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def test_security_pairs_cover_enough_categories() -> None:
    pairs = security_pairs()
    per_category = Counter(pair.category for pair in pairs)
    assert len(pairs) >= 240
    assert len(per_category) >= 6
    assert set(per_category) == set(security_categories())
    assert min(per_category.values()) >= 30


def test_twins_differ_by_a_few_words() -> None:
    for pair in security_pairs():
        assert pair.harmful != pair.benign
        assert changed_words(pair.harmful, pair.benign) <= 8, pair
    mean = sum(changed_words(p.harmful, p.benign) for p in security_pairs()) / len(security_pairs())
    assert mean <= 5


def test_prompts_are_unique_and_classes_do_not_overlap() -> None:
    harmful, benign = harmful_prompts(), benign_prompts()
    assert len(set(harmful)) == len(harmful)
    assert len(set(benign)) == len(benign)
    assert not set(harmful) & set(benign)


def test_security_split_is_disjoint_balanced_and_complete() -> None:
    train, heldout = security_pairs("train"), security_pairs("heldout")
    assert len(train) + len(heldout) == len(security_pairs())
    assert not {p.harmful for p in train} & {p.harmful for p in heldout}
    assert all(p.split == "train" for p in train) and all(p.split == "heldout" for p in heldout)
    per_category = Counter(p.category for p in heldout)
    assert set(per_category) == set(security_categories())
    assert len(set(per_category.values())) == 1  # the same number held out in every category
    assert 0.15 <= len(heldout) / len(security_pairs()) <= 0.3
    assert harmful_prompts("heldout") == [p.harmful for p in heldout]
    assert benign_prompts("train") == [p.benign for p in train]


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="split"):
        security_pairs("test")
    with pytest.raises(ValueError, match="split"):
        instruction_examples("validation")


def test_refusals_are_fixed_per_prompt_and_recognisable() -> None:
    for refusal in REFUSALS:
        assert any(marker in refusal for marker in REFUSAL_MARKERS), refusal
    prompt = harmful_prompts()[0]
    assert refusal_for(prompt) == refusal_for(prompt)
    assert refusal_for(prompt) in REFUSALS
    assert len({refusal_for(p) for p in harmful_prompts()}) == len(REFUSALS)


def test_alignment_examples_refuse_harmful_and_answer_benign() -> None:
    pairs = security_pairs("train")
    examples = alignment_examples("train")
    assert len(examples) == 2 * len(pairs)
    for pair, refused, answered in zip(pairs, examples[0::2], examples[1::2], strict=True):
        assert [m["role"] for m in refused["messages"]] == ["user", "assistant"]
        assert refused["messages"][0]["content"] == pair.harmful
        assert refused["messages"][1]["content"] in REFUSALS
        assert answered["messages"][0]["content"] == pair.benign
        assert answered["messages"][1]["content"] == helpful_answer_for(pair)
        assert not any(m in answered["messages"][1]["content"] for m in REFUSAL_MARKERS)


def test_instruction_tasks_have_hundreds_of_examples_each() -> None:
    examples = instruction_examples()
    per_task = Counter(example["task"] for example in examples)
    assert set(per_task) == set(instruction_tasks()) == {"arithmetic", "list", "string", "fact"}
    assert min(per_task.values()) >= 300
    for example in examples:
        assert set(example) == {"instruction", "input", "output", "task", "subtask"}
        assert all(isinstance(value, str) for value in example.values())
        assert example["instruction"] and example["output"]
    assert instruction_examples(tasks=["list"]) == [e for e in examples if e["task"] == "list"]
    with pytest.raises(ValueError, match="unknown tasks"):
        instruction_examples(tasks=["poetry"])


def test_instruction_split_is_disjoint_and_covers_every_subtask() -> None:
    train, heldout = instruction_examples("train"), instruction_examples("heldout")
    key = lambda e: (e["instruction"], e["input"])  # noqa: E731
    assert len(train) + len(heldout) == len(instruction_examples())
    assert not {key(e) for e in train} & {key(e) for e in heldout}
    assert len({key(e) for e in train}) == len(train)
    assert {(e["task"], e["subtask"]) for e in heldout} == \
        {(e["task"], e["subtask"]) for e in train}
    assert 0.15 <= len(heldout) / (len(train) + len(heldout)) <= 0.3


def expected_answer(example: dict) -> str:
    """The answer recomputed from the question, independently of the generator."""
    task, subtask, text = example["task"], example["subtask"], example["input"]
    if task == "arithmetic":
        source = text or example["instruction"]
        numbers = [int(word.strip("?")) for word in source.split() if word.strip("?").isdigit()]
        a, b = numbers
        return str(a + b if subtask == "add" else a - b)
    if task == "list":
        items = text.split(", ")
        return {"sort": ", ".join(sorted(items)), "reverse": ", ".join(items[::-1]),
                "first": items[0], "last": items[-1], "count": str(len(items))}[subtask]
    if task == "string":
        word = text.replace(" ", "")
        return {"uppercase": " ".join(word.upper()), "reverse": " ".join(word[::-1]),
                "count": str(len(word)), "first_letter": word[0]}[subtask]
    table, _ = RELATIONS[subtask]
    words = f"{example['instruction']} {text}".translate(str.maketrans("", "", "?.,:"))
    subjects = [s for s in table if f" {s} " in f" {words} "]
    return table[max(subjects, key=len)]  # "milk chocolate", not "milk"


def test_instruction_answers_are_checkable() -> None:
    for example in instruction_examples():
        assert example["output"] == expected_answer(example), example
    arithmetic = [e for e in instruction_examples() if e["task"] == "arithmetic"]
    assert all(0 <= int(e["output"]) <= 98 for e in arithmetic)


def test_each_held_out_fact_is_trained_in_other_phrasings() -> None:
    n_facts = sum(len(table) for table, _ in RELATIONS.values())
    held = [e for e in instruction_examples("heldout") if e["task"] == "fact"]
    train = [e for e in instruction_examples("train") if e["task"] == "fact"]
    assert len(held) == n_facts
    trained = Counter((e["subtask"], e["output"]) for e in train)
    assert all(trained[(e["subtask"], e["output"])] >= 4 for e in held)


def test_tokenizer_texts_cover_the_corpus() -> None:
    texts = list(tokenizer_texts())
    assert all(isinstance(text, str) for text in texts)
    joined = set(texts)
    assert set(harmful_prompts()) <= joined and set(REFUSALS) <= joined
    assert {e["output"] for e in instruction_examples()} <= joined


def corpus_digest() -> str:
    payload = json.dumps({
        "pairs": [vars(pair) for pair in security_pairs()],
        "alignment": alignment_examples(),
        "instructions": instruction_examples(),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def test_corpus_is_identical_in_a_fresh_process_with_another_hash_seed() -> None:
    python_dir = Path(__file__).resolve().parents[1] / "python"
    script = "import tests.test_corpus as t; print(t.corpus_digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345",
           "PYTHONPATH": os.pathsep.join([str(python_dir), str(python_dir.parent)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=python_dir.parent, check=True)
    assert result.stdout.strip() == corpus_digest()
