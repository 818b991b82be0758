"""Benign instruction tasks with exactly checkable answers, small enough for the tiny model.

Four task types, each an alpaca-style example plus ``task`` (the type) and ``subtask`` (the
operation): ``arithmetic`` (add, subtract), ``list`` (sort, reverse, first, last, count),
``string`` (uppercase, reverse, count, first_letter) and ``fact`` (the relations of ``facts.py``).

Two choices keep the tasks learnable by a model of a few hundred thousand weights: the tokenizer
splits digits one by one, and the string tasks give a word letter by letter ("c a t"), so each
letter is its own token and reversing or counting works on words the model has never seen.

Splits: an arithmetic, list or string example is held out when the stable hash of its instruction
and input says so (about 20 %); fact questions are split as ``facts.py`` describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mlr.data.corpus.facts import RELATIONS
from mlr.data.corpus.splits import hash_order, pick, split_by_hash, stable_hash
from mlr.data.corpus.vocabulary import LIST_ITEMS, SPELLING_WORDS

ARITHMETIC_PER_OPERATION = 250
LISTS_PER_OPERATION = 80
MAX_OPERAND = 49


def _example(task: str, subtask: str, instruction: str, input_text: str, output: str,
             split: str | None = None) -> dict:
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "task": task,
        "subtask": subtask,
        "split": split or split_by_hash(f"{instruction}|{input_text}"),
    }


ARITHMETIC_PHRASINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "add": (
        ("Add the two numbers.", "{a} + {b}"),
        ("What is the sum?", "{a} + {b}"),
        ("Compute the result.", "{a} + {b}"),
        ("What is {a} plus {b}?", ""),
    ),
    "subtract": (
        ("Subtract the second number from the first.", "{a} - {b}"),
        ("What is the difference?", "{a} - {b}"),
        ("Compute the result.", "{a} - {b}"),
        ("What is {a} minus {b}?", ""),
    ),
}


def arithmetic_examples() -> Iterator[dict]:
    numbers = range(MAX_OPERAND + 1)
    problems = {
        "add": [(a, b, a + b) for a in numbers for b in numbers],
        "subtract": [(a, b, a - b) for a in numbers for b in numbers if a >= b],
    }
    for operation, candidates in problems.items():
        for a, b, answer in hash_order(operation, candidates)[:ARITHMETIC_PER_OPERATION]:
            instruction, input_text = pick(f"{operation}|{a}|{b}", ARITHMETIC_PHRASINGS[operation])
            yield _example("arithmetic", operation, instruction.format(a=a, b=b),
                           input_text.format(a=a, b=b), str(answer))


LIST_OPERATIONS: dict[str, tuple[tuple[str, ...], Callable[[list[str]], str]]] = {
    "sort": (("Sort the items alphabetically.", "Put these words in alphabetical order."),
             lambda items: ", ".join(sorted(items))),
    "reverse": (("Reverse the order of the items.", "Write the list backwards."),
                lambda items: ", ".join(reversed(items))),
    "first": (("What is the first item in the list?", "Name the first item."),
              lambda items: items[0]),
    "last": (("What is the last item in the list?", "Name the last item."),
             lambda items: items[-1]),
    "count": (("How many items are in the list?", "Count the items in the list."),
              lambda items: str(len(items))),
}


def list_examples() -> Iterator[dict]:
    for operation, (instructions, answer) in LIST_OPERATIONS.items():
        for index in range(LISTS_PER_OPERATION):
            key = f"list|{operation}|{index}"
            length = 2 + stable_hash(key) % 5
            items = hash_order(key, LIST_ITEMS)[:length]
            yield _example("list", operation, pick(key, instructions), ", ".join(items),
                           answer(items))


STRING_OPERATIONS: dict[str, tuple[tuple[str, ...], Callable[[str], str]]] = {
    "uppercase": (("Write these letters in uppercase.", "Make every letter a capital letter."),
                  lambda word: " ".join(word.upper())),
    "reverse": (("Reverse the order of the letters.", "Write the letters backwards."),
                lambda word: " ".join(reversed(word))),
    "count": (("How many letters are there?", "Count the letters."),
              lambda word: str(len(word))),
    "first_letter": (("What is the first letter?", "Which letter comes first?"),
                     lambda word: word[0]),
}


def string_examples() -> Iterator[dict]:
    for operation, (instructions, answer) in STRING_OPERATIONS.items():
        for word in SPELLING_WORDS:
            yield _example("string", operation, pick(f"string|{operation}|{word}", instructions),
                           " ".join(word), answer(word))


def fact_examples() -> Iterator[dict]:
    for relation, (table, phrasings) in RELATIONS.items():
        for subject, answer in table.items():
            heldout = pick(f"fact|{relation}|{subject}", phrasings)
            for phrasing in phrasings:
                instruction, input_text = (part.format(x=subject) for part in phrasing)
                yield _example("fact", relation, instruction, input_text, answer,
                               split="heldout" if phrasing == heldout else "train")


TASK_GENERATORS: dict[str, Callable[[], Iterator[dict]]] = {
    "arithmetic": arithmetic_examples,
    "list": list_examples,
    "string": string_examples,
    "fact": fact_examples,
}
