"""Harmful vs benign queries for the security probe, with a fixed train / held-out split.

With no files the project's own paired set is used with its fixed split (``mlr.data.corpus``). A file
given for either side replaces that side (the other stays the embedded set); both sides are then
split afresh: a seeded shuffle per class, ``HELDOUT_FRACTION`` of each class held out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.prompts import load_prompts
from mlr.errors import MlrInputError

HELDOUT_FRACTION = 0.25
HARMFUL, BENIGN = 1, 0


@dataclass(frozen=True)
class LabeledPrompts:
    prompts: list[str]
    labels: torch.Tensor  # int64, 1 = harmful, 0 = benign

    @classmethod
    def of(cls, harmful: Sequence[str], benign: Sequence[str]) -> LabeledPrompts:
        labels = [HARMFUL] * len(harmful) + [BENIGN] * len(benign)
        return cls(list(harmful) + list(benign), torch.tensor(labels, dtype=torch.long))


@dataclass(frozen=True)
class SecurityData:
    train: LabeledPrompts
    heldout: LabeledPrompts


def _split(prompts: list[str], seed: int, what: str) -> tuple[list[str], list[str]]:
    if len(prompts) < 2:
        raise MlrInputError(f"need at least 2 {what} examples to hold some out, got {len(prompts)}")
    shuffled = prompts[:]
    random.Random(seed).shuffle(shuffled)
    held = max(1, round(len(shuffled) * HELDOUT_FRACTION))
    return shuffled[held:], shuffled[:held]


def _nonempty(prompts: list[str], what: str, source: str) -> list[str]:
    if not prompts:
        raise MlrInputError(f"no {what} examples in {source}")
    return prompts


def load_security_data(harmful: str | None, benign: str | None, seed: int = 0) -> SecurityData:
    """Load the probe's data; ``harmful`` / ``benign`` are prompt files (see ``mlr.data.prompts``) or
    ``None`` for the embedded set. Raises ``MlrInputError`` for empty or unreadable sources."""
    if harmful is None and benign is None:
        return SecurityData(
            train=LabeledPrompts.of(harmful_prompts("train"), benign_prompts("train")),
            heldout=LabeledPrompts.of(harmful_prompts("heldout"), benign_prompts("heldout")),
        )
    sides = {}
    for what, source, embedded in (("harmful", harmful, harmful_prompts),
                                   ("benign", benign, benign_prompts)):
        prompts = load_prompts(source) if source is not None else embedded("all")
        sides[what] = _split(_nonempty(list(prompts), what, source or "the embedded set"),
                             seed, what)
    return SecurityData(
        train=LabeledPrompts.of(sides["harmful"][0], sides["benign"][0]),
        heldout=LabeledPrompts.of(sides["harmful"][1], sides["benign"][1]),
    )
