"""Output and input helpers every stage shares.

- Atomic writes: a reader never sees a half-written file or directory, and a killed run leaves none
  (``write_atomic`` and friends for files, ``publish_directory`` for directories).
- ``read_json``: a JSON file the user or an earlier stage gave us, or one line ``MlrInputError``.
- ``reusable``: an earlier output, reused only when it was made with the same options.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlr.errors import MlrInputError


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on POSIX, so ``path`` holds either the old content or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure_atomic(path: str | os.PathLike, figure: Any) -> Path:
    """Save a matplotlib figure atomically (format taken from ``path``'s suffix)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format=suffix, bbox_inches="tight"))


def publish_directory(directory: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Build a directory with ``build(staging)`` beside ``directory``, then rename it into place,
    so that ``directory`` appears complete or not at all; an existing ``directory`` is swapped for
    the new one. Raises whatever ``build`` raises, after removing the staging directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.building-"))
    try:
        build(staging)
        if not directory.exists():
            try:
                os.rename(staging, directory)
                return directory
            except OSError:
                if not directory.exists():  # not a lost race with another process: a real error
                    raise
        retired = staging.with_name(f".{directory.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(directory, retired)
        os.rename(staging, directory)
        shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed content of the JSON file ``path``.

    ``what`` names the file for the error message ("probe file", "mods_robust file"). Raises
    ``MlrInputError`` (one line) when the file is missing, unreadable or not JSON.
    """
    file = Path(path)
    if not file.is_file():
        raise MlrInputError(f"{what} not found: {path}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MlrInputError(f"cannot read {what} {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise MlrInputError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") from error


def reusable(path: str | os.PathLike, key: Any, field: str = "config") -> dict | None:
    """The JSON object at ``path`` when its ``field`` equals ``key`` (it was made with the same
    options), else ``None``. A file that is there but was made differently (or is unreadable) is
    noted on stderr, so that a recomputation is never silent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if isinstance(data, dict) and data.get(field) == key:
        return data
    print(f"mlr: {path} was made with other options; recomputing it", file=sys.stderr)
    return None
