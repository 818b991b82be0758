"""The model cache: where built and converted model directories live, and how they get there.

Everything goes under ``$MLR_CACHE`` (default ``~/.cache/mlr``). A directory is built in a
temporary folder beside its final name and renamed into place, so a reader never sees half of one,
and two processes that race both end up using one complete directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlr.errors import MlrInputError


def cache_root() -> Path:
    """``$MLR_CACHE``, else ``~/.cache/mlr`` (not created here)."""
    return Path(os.environ.get("MLR_CACHE") or Path.home() / ".cache" / "mlr").expanduser()


def build_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Run ``build(staging)`` on an empty folder beside ``path``, then rename it to ``path``.

    ``path`` must not exist yet (``MlrInputError`` if it does). Raises ``FileExistsError`` when
    another process renamed its own complete build into place first; the staging folder is removed
    whatever happens.
    """
    path = Path(path)
    if path.exists():
        raise MlrInputError(f"cannot build into {path}: it already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.building-"))
    try:
        build(staging)
        os.rename(staging, path)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "built concurrently", str(path)) from error
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def cached_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """``path`` if it is a directory already, else built there once by ``build`` (see
    ``build_directory``); a build that loses a race to another process yields the winner's."""
    path = Path(path)
    if not path.is_dir():
        try:
            build_directory(path, build)
        except FileExistsError:
            pass  # another process finished first; its directory is complete
    return path
