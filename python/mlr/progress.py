"""Progress bars for the analysis and generation loops: shown on a terminal only, erased when the
loop ends, and never in a worker process that shares the terminal with others."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = True


def disable_progress() -> None:
    """No progress bars from this process from now on."""
    global _enabled
    _enabled = False


def progress_enabled() -> bool:
    return _enabled


def progress(items: Iterable[T], desc: str) -> Iterable[T]:
    return tqdm(items, desc=desc, leave=False, disable=None if _enabled else True)
