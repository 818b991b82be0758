"""The seeded held-out split: the probe's prompts (each class apart) and an ``--ift`` file of
``mlr run`` without ``--heldout`` are both split by it, each with its own share held out."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def heldout_split(items: Sequence[T], held: int, seed: int) -> tuple[list[T], list[T]]:
    """``items`` shuffled by ``seed``, then split into (the rest, the first ``held``): the same
    seed and items always hold out the same ones."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[held:], shuffled[:held]
