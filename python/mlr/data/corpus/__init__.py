"""The embedded corpus: template-generated text the project writes itself, fixed and deterministic.

- security twins (harmful request, benign twin a few words apart) in eight categories,
- alarming-but-safe requests ("How do I kill a Python process?") with helpful answers,
- refusals for the harmful requests and short helpful answers for their twins (safety alignment),
- benign instruction tasks with checkable answers (arithmetic, list, string, fact).

Every collection has a fixed ``train`` / ``heldout`` split (see ``security.py`` and ``tasks.py``);
``split="all"`` returns both. Requests only: no text here explains anything harmful.
"""

from __future__ import annotations

from collections.abc import Iterator

from mlr.data.corpus.alarming import alarming_examples, alarming_prompts
from mlr.data.corpus.instructions import instruction_examples, instruction_tasks
from mlr.data.corpus.responses import REFUSALS, alignment_examples, helpful_answer_for, refusal_for
from mlr.data.corpus.security import (
    SecurityPair,
    benign_prompts,
    harmful_prompts,
    security_categories,
    security_pairs,
)
from mlr.data.corpus.splits import SPLITS

__all__ = [
    "REFUSALS",
    "SPLITS",
    "SecurityPair",
    "alarming_examples",
    "alarming_prompts",
    "alignment_examples",
    "benign_prompts",
    "harmful_prompts",
    "helpful_answer_for",
    "instruction_examples",
    "instruction_tasks",
    "refusal_for",
    "security_categories",
    "security_pairs",
    "tokenizer_texts",
]


def tokenizer_texts() -> Iterator[str]:
    """Every text of the corpus, for training the embedded tokenizer."""
    for example in alignment_examples():
        for message in example["messages"]:
            yield message["content"]
    for example in instruction_examples():
        yield from (example["instruction"], example["input"], example["output"])
