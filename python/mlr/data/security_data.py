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
MIN_HELDOUT_PER_CLASS = 2
MIN_PROMPTS_PER_CLASS = 6  # the fewest whose HELDOUT_FRACTION rounds to MIN_HELDOUT_PER_CLASS
HARMFUL, BENIGN = 1, 0


@dataclass(frozen=True)
class LabeledPrompts:
    prompts: list[str]
    labels: torch.Tensor  # int64, 1 = harmful, 0 = benign

    @classmethod
    def of(cls, harmful: Sequence[str], benign: Sequence[str]) -> LabeledPrompts:
        labels = [HARMFUL] * len(harmful) + [BENIGN] * len(benign)
        return cls(list(harmful) + list(benign), torch.tensor(labels, dtype=torch.long))

    def balanced_subset(self, limit: int | None) -> LabeledPrompts:
        """At most ``limit`` prompts: the first ``limit // 2`` of each class in their order here
        (the rest to the other class when one runs short); all of them when ``limit`` is
        ``None``. The embedded set lists each harmful prompt's benign twin at the same position,
        so the subset keeps twins together."""
        if limit is None or limit >= len(self.prompts):
            return self
        harmful = [p for p, y in zip(self.prompts, self.labels.tolist()) if y == HARMFUL]
        benign = [p for p, y in zip(self.prompts, self.labels.tolist()) if y == BENIGN]
        take_harmful = min(len(harmful), max(limit // 2, limit - len(benign)))
        return LabeledPrompts.of(harmful[:take_harmful], benign[:limit - take_harmful])


@dataclass(frozen=True)
class SecurityData:
    train: LabeledPrompts
    heldout: LabeledPrompts

    def heldout_counts(self) -> dict[str, int]:
        """Held-out prompts per class: what the probe's held-out accuracy rests on."""
        harmful = int((self.heldout.labels == HARMFUL).sum())
        return {"harmful": harmful, "benign": len(self.heldout.prompts) - harmful}


def _split(prompts: list[str], seed: int, what: str, source: str) -> tuple[list[str], list[str]]:
    """A seeded split of one class; raises ``MlrInputError`` when fewer than
    ``MIN_HELDOUT_PER_CLASS`` prompts would be held out."""
    held = round(len(prompts) * HELDOUT_FRACTION)
    if held < MIN_HELDOUT_PER_CLASS:
        raise MlrInputError(
            f"{source} has {len(prompts)} {what} prompt(s), which leaves {held} held out "
            f"({HELDOUT_FRACTION:.0%}); the probe's held-out accuracy needs at least "
            f"{MIN_HELDOUT_PER_CLASS} per class, so give at least {MIN_PROMPTS_PER_CLASS} {what} "
            "prompts")
    shuffled = prompts[:]
    random.Random(seed).shuffle(shuffled)
    return shuffled[held:], shuffled[:held]


def load_security_data(harmful: str | None, benign: str | None, seed: int = 0) -> SecurityData:
    """Load the probe's data; ``harmful`` / ``benign`` are prompt files (see ``mlr.data.prompts``) or
    ``None`` for the embedded set. Raises ``MlrInputError`` for empty or unreadable sources, and
    for one too small to hold ``MIN_HELDOUT_PER_CLASS`` prompts out."""
    if harmful is None and benign is None:
        return SecurityData(
            train=LabeledPrompts.of(harmful_prompts("train"), benign_prompts("train")),
            heldout=LabeledPrompts.of(harmful_prompts("heldout"), benign_prompts("heldout")),
        )
    sides = {}
    for what, source, embedded in (("harmful", harmful, harmful_prompts),
                                   ("benign", benign, benign_prompts)):
        prompts = load_prompts(source) if source is not None else embedded("all")
        sides[what] = _split(list(prompts), seed, what, source or "the embedded set")
    return SecurityData(
        train=LabeledPrompts.of(sides["harmful"][0], sides["benign"][0]),
        heldout=LabeledPrompts.of(sides["harmful"][1], sides["benign"][1]),
    )
