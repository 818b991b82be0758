"""Deterministic choices for the embedded corpus: stable hashing, picking and the fixed splits.

Nothing here uses ``random`` or Python's ``hash()``: both may change between runs or Python versions,
and the held-out split must never move. Every choice is a SHA-256 of a text key instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal, TypeVar

Split = Literal["train", "heldout"]
SPLITS = ("all", "train", "heldout")
HELDOUT_PERCENT = 20

T = TypeVar("T")


def stable_hash(key: str) -> int:
    """A 64-bit integer from ``key`` that is the same on every machine, run and Python version."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def pick(key: str, options: Sequence[T]) -> T:
    """One of ``options``, chosen by ``key``."""
    return options[stable_hash(key) % len(options)]


def hash_order(key: str, options: Sequence[T]) -> list[T]:
    """``options`` in a fixed order that looks shuffled and depends on ``key``."""
    return sorted(options, key=lambda option: stable_hash(f"{key}|{option}"))


def split_by_hash(key: str) -> Split:
    """``heldout`` for about ``HELDOUT_PERCENT`` % of keys, ``train`` for the rest."""
    return "heldout" if stable_hash(f"split|{key}") % 100 < HELDOUT_PERCENT else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def in_split(item_split: Split, split: str) -> bool:
    check_split(split)
    return split == "all" or item_split == split
