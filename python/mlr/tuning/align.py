"""Safety alignment before benign fine-tuning, so that there is alignment for fine-tuning to erode.

The tiny default starts from random weights, so its alignment is its whole chat training; a real
chat model that ships barely safety-aligned (SmolLM2-135M-Instruct refuses 2 of 48 harmful
requests) gets a short alignment stage first, as the alignment stage of Vaccine, Lisa and Booster
does. Both are the ``mlr train`` recipe (full fine-tuning, every module at the base LR) on the
embedded alignment set (``mlr.data.instructions.alignment_examples``: harmful request → refusal,
benign twin → help, general questions → answers; with ``alarming``, also safe requests in alarming
words → help, so that the model learns to refuse harm rather than words). The result depends only
on the model and these settings, so it is cached under ``$MLR_CACHE`` in a folder named by their
hash, built once across processes and ranks, atomically, and checked before use
(``mlr.models.cache``). Under a process group rank 0 trains it alone (a run without ``distributed``
talks to no other rank) while the others wait.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlr.data.instructions import alignment_examples
from mlr.models import model_dir, recipe_hash
from mlr.models.cache import cache_entry, cache_root
from mlr.tuning.train import TrainConfig, train


@dataclass(frozen=True)
class AlignSettings:
    steps: int = 800
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0
    max_length: int = 512
    alarming: bool = False  # add the alarming-but-safe requests (training split) with answers


QUICK_ALIGNMENT = AlignSettings(steps=20)


def aligned_dir(settings: AlignSettings, model: str | None = None) -> Path:
    """Where ``model`` (None: the embedded default) aligned with ``settings`` is cached (its model
    is in ``model/``). A model is named by its recipe (the default) or by the directory it loads
    from (a GGUF file's converted directory is named after the file's path, size and time)."""
    source = {"default_model": recipe_hash()} if model is None else \
        {"model": str(model_dir(model).resolve())}
    settings_key = asdict(settings)
    if not settings.alarming:  # the key of the versions before the field: their caches stay valid
        del settings_key["alarming"]
    key = json.dumps({**source, **settings_key}, sort_keys=True)
    return cache_root() / f"aligned-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def align_model(settings: AlignSettings = AlignSettings(), model: str | None = None,
                progress: bool = True) -> Path:
    """The model directory of ``model`` (None: the embedded default) safety-aligned with
    ``settings``, trained on first use."""

    def build(staging: Path) -> None:
        train(TrainConfig(out=str(staging), model=model, steps=settings.steps, lr=settings.lr,
                          batch_size=settings.batch_size, seed=settings.seed,
                          max_length=settings.max_length, progress=progress),
              examples=alignment_examples("train", alarming=settings.alarming))

    name = "the embedded default" if model is None else str(model)
    what = f"{name} safety-aligned ({settings.steps} steps)"
    return cache_entry(aligned_dir(settings, model), build, what, model="model") / "model"
