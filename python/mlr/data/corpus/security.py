"""Security twins as request pairs: each action of the table in a few fixed frames.

Every action appears in ``FRAMES_PER_ACTION`` frames, picked by a stable hash of the action. The last
of those is held out, so the held-out split has the same number of pairs in every category (one per
action) and asks about actions the training split has seen, in a frame it has not seen them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mlr.data.corpus.security_table import REQUEST_FRAMES, SECURITY_TABLE
from mlr.data.corpus.splits import Split, hash_order, in_split

FRAMES_PER_ACTION = 5


@dataclass(frozen=True)
class SecurityPair:
    """A harmful request and its benign twin, which differs from it by a few words."""

    harmful: str
    benign: str
    category: str
    split: Split
    helpful_gist: str  # a short harmless answer to ``benign``


def _phrase(frame: str, action: str) -> str:
    return frame.format(action=action)


@lru_cache(maxsize=1)
def _all_pairs() -> tuple[SecurityPair, ...]:
    pairs = []
    for category, rows in SECURITY_TABLE.items():
        for harmful_action, benign_action, gist in rows:
            frames = hash_order(harmful_action, REQUEST_FRAMES)[:FRAMES_PER_ACTION]
            for index, frame in enumerate(frames):
                split: Split = "heldout" if index == FRAMES_PER_ACTION - 1 else "train"
                pairs.append(SecurityPair(
                    harmful=_phrase(frame, harmful_action),
                    benign=_phrase(frame, benign_action),
                    category=category,
                    split=split,
                    helpful_gist=gist,
                ))
    return tuple(pairs)


def security_pairs(split: str = "all") -> list[SecurityPair]:
    """The security twins of ``split`` ("all", "train" or "heldout"), in a fixed order."""
    return [pair for pair in _all_pairs() if in_split(pair.split, split)]


def security_categories() -> list[str]:
    return list(SECURITY_TABLE)


def harmful_prompts(split: str = "all") -> list[str]:
    return [pair.harmful for pair in security_pairs(split)]


def benign_prompts(split: str = "all") -> list[str]:
    """The benign twins of the harmful prompts: hard negatives for the probe and over-refusal."""
    return [pair.benign for pair in security_pairs(split)]
