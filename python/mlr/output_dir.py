"""The ``--out`` check: can the output directory be created and written?

Every command that writes an output directory asks this once its inputs are read and before any
long work (loading a model, aligning, training), so that an ``--out`` under ``/proc``, below a
file or naming a file is one line ``mlr: error: ...`` instead of a traceback minutes later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlr.errors import MlrInputError, first_line


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the directory ``path`` (and its parents) when missing, then create and remove a
    file in it; returns it as a ``Path``.

    Raises:
        MlrInputError: ``path`` names an existing file, or the directory cannot be created or
            written (a parent is a file, a read-only or virtual file system, no permission); the
            message names ``option`` and ``path``.
    """
    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise MlrInputError(f"{option} {path} is an existing file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".mlr-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or first_line(error)
        raise MlrInputError(f"{option} {path}: cannot create or write the output directory "
                            f"({reason})") from error
    return directory
