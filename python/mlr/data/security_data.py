"""Harmful vs benign queries for the security probe, with a fixed train / held-out split.

With no files the project's own paired set is used with its fixed split (``mlr.data.corpus``). A file
given for either side replaces that side (the other stays the embedded set); both sides are then
split afresh: a seeded shuffle per class, ``PROBE_HELDOUT_FRACTION`` of each class held out.
``mlr run`` reads its prompt files once and hands the loaded prompts to ``split_prompts``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlr.data.corpus import benign_prompts, harmful_prompts
from mlr.data.prompts import load_prompts
from mlr.data.split import heldout_split
from mlr.errors import MlrInputError

PROBE_HELDOUT_FRACTION = 0.25  # of each class of the probe's prompts, when split afresh
MIN_HELDOUT_PER_CLASS = 2
MIN_PROMPTS_PER_CLASS = 6  # the fewest whose held-out share rounds to MIN_HELDOUT_PER_CLASS
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

    def digest(self) -> str:
        """A digest of the prompts on each side of the split, with their labels: what a probe
        fitted on them depends on, whichever files they were read from."""
        sides = {name: [part.prompts, part.labels.tolist()]
                 for name, part in (("train", self.train), ("heldout", self.heldout))}
        return hashlib.sha256(json.dumps(sides).encode()).hexdigest()


def _split(prompts: list[str], seed: int, what: str, source: str) -> tuple[list[str], list[str]]:
    """A seeded split of one class; raises ``MlrInputError`` when fewer than
    ``MIN_HELDOUT_PER_CLASS`` prompts would be held out."""
    held = round(len(prompts) * PROBE_HELDOUT_FRACTION)
    if held < MIN_HELDOUT_PER_CLASS:
        raise MlrInputError(
            f"{source} has {len(prompts)} {what} prompt(s), which leaves {held} held out "
            f"({PROBE_HELDOUT_FRACTION:.0%}); the probe's held-out accuracy needs at least "
            f"{MIN_HELDOUT_PER_CLASS} per class, so give at least {MIN_PROMPTS_PER_CLASS} {what} "
            "prompts")
    return heldout_split(prompts, held, seed)


def load_security_data(harmful: str | None, benign: str | None, seed: int = 0) -> SecurityData:
    """Load the probe's data; ``harmful`` / ``benign`` are prompt files (see ``mlr.data.prompts``) or
    ``None`` for the embedded set. Raises ``MlrInputError`` for empty or unreadable sources, and
    for one too small to hold ``MIN_HELDOUT_PER_CLASS`` prompts out."""
    return split_prompts(None if harmful is None else load_prompts(harmful),
                         None if benign is None else load_prompts(benign), seed,
                         sources=(harmful, benign))


def split_prompts(harmful: Sequence[str] | None, benign: Sequence[str] | None, seed: int = 0,
                  sources: tuple[str | None, str | None] = (None, None)) -> SecurityData:
    """The probe's data from loaded prompts, ``None`` for a side of the embedded set: with neither
    side given, the embedded set's fixed split; else each side split afresh by ``seed``.
    ``sources`` name where each side came from, for the error. Raises ``MlrInputError`` for a side
    too small to hold ``MIN_HELDOUT_PER_CLASS`` prompts out."""
    if harmful is None and benign is None:
        return SecurityData(
            train=LabeledPrompts.of(harmful_prompts("train"), benign_prompts("train")),
            heldout=LabeledPrompts.of(harmful_prompts("heldout"), benign_prompts("heldout")),
        )
    sides = {}
    for what, prompts, source, embedded in (("harmful", harmful, sources[0], harmful_prompts),
                                            ("benign", benign, sources[1], benign_prompts)):
        prompts = embedded("all") if prompts is None else prompts
        sides[what] = _split(list(prompts), seed, what, source or "the embedded set")
    return SecurityData(
        train=LabeledPrompts.of(sides["harmful"][0], sides["benign"][0]),
        heldout=LabeledPrompts.of(sides["harmful"][1], sides["benign"][1]),
    )
