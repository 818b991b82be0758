"""Progress bars for the analysis loops: shown on a terminal only, erased when the loop ends."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str) -> Iterable[T]:
    return tqdm(items, desc=desc, leave=False, disable=None)
