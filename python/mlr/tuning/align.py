"""Safety alignment of the embedded default, so that there is alignment for benign fine-tuning to erode.

The tiny default starts from random weights, so its alignment is its whole chat training: the
``mlr train`` recipe (full fine-tuning, every module at the base LR) on the embedded alignment set
(``mlr.data.embedded_data.alignment_examples``: harmful request → refusal, benign twin → help, general
questions → answers). The result depends only on the default model's recipe and these settings, so
it is cached under ``$MLR_CACHE`` in a folder named by their hash, built beside it and renamed into
place (a reader never sees half of one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlr.data.embedded_data import alignment_examples
from mlr.io import publish_directory
from mlr.models.default_model import cache_root, recipe_hash
from mlr.tuning.train import TrainConfig, train


@dataclass(frozen=True)
class AlignSettings:
    steps: int = 800
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0


QUICK_ALIGNMENT = AlignSettings(steps=20)


def aligned_dir(settings: AlignSettings) -> Path:
    """Where the aligned default for ``settings`` is cached (its model is in ``model/``)."""
    key = json.dumps({"default_model": recipe_hash(), **asdict(settings)}, sort_keys=True)
    return cache_root() / f"aligned-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def align_default(settings: AlignSettings = AlignSettings(), progress: bool = True) -> Path:
    """The model directory of the safety-aligned default, trained on first use."""
    target = aligned_dir(settings)
    if (target / "model").is_dir():
        return target / "model"

    def build(staging: Path) -> None:
        train(TrainConfig(out=str(staging), steps=settings.steps, lr=settings.lr,
                          batch_size=settings.batch_size, seed=settings.seed, progress=progress),
              examples=alignment_examples("train"))

    publish_directory(target, build, replace=False)  # a concurrent run's identical build may win
    return target / "model"
