"""All benign instruction examples, assembled once and filtered by split."""

from __future__ import annotations

from functools import lru_cache

from mlr.data.corpus.splits import check_split
from mlr.data.corpus.tasks import TASK_GENERATORS


@lru_cache(maxsize=1)
def _all_examples() -> tuple[tuple[str, dict], ...]:
    """(split, example) for every task, without duplicates, in a fixed order."""
    seen: set[tuple[str, str]] = set()
    examples = []
    for generate in TASK_GENERATORS.values():
        for example in generate():
            key = (example["instruction"], example["input"])
            if key in seen:
                continue
            seen.add(key)
            split = example.pop("split")
            examples.append((split, example))
    return tuple(examples)


def instruction_tasks() -> list[str]:
    return list(TASK_GENERATORS)


def instruction_examples(split: str = "all", tasks: list[str] | None = None) -> list[dict]:
    """Alpaca-style examples {"instruction", "input", "output", "task", "subtask"}; ``output`` is
    the exact answer, so accuracy is a string comparison. ``tasks`` limits the task types."""
    check_split(split)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASK_GENERATORS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASK_GENERATORS)}")
    return [
        dict(example)
        for item_split, example in _all_examples()
        if split in ("all", item_split) and (tasks is None or example["task"] in tasks)
    ]
