"""The model cache: where built and converted model directories live, and how they get there.

Everything goes under ``$MLR_CACHE`` (default ``~/.cache/mlr``). A directory is built in a
temporary folder beside its final name and renamed into place, so a reader never sees half of one,
and two processes that race both end up using one complete directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mlr.errors import MlrInputError
from mlr.io import publish_directory


def cache_root() -> Path:
    """``$MLR_CACHE``, else ``~/.cache/mlr`` (not created here)."""
    return Path(os.environ.get("MLR_CACHE") or Path.home() / ".cache" / "mlr").expanduser()


def build_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Build a new directory at ``path`` with ``build(staging)`` (:func:`mlr.io.publish_directory`);
    if another process published a complete one there first, that one is kept.

    Raises ``MlrInputError`` when ``path`` exists already, and whatever ``build`` raises.
    """
    path = Path(path)
    if path.exists():
        raise MlrInputError(f"cannot build into {path}: it already exists")
    return publish_directory(path, build, replace=False)


def cached_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """``path`` if it is a directory already, else built there once by ``build``; a build that
    loses a race to another process yields the winner's directory."""
    path = Path(path)
    return path if path.is_dir() else publish_directory(path, build, replace=False)
