"""Training checkpoints: everything a resumed run needs to continue bit-identically, written atomically.

A checkpoint holds the step, the trainable weights, the optimizer, the scheduler, the RNG states,
the sampler's position and the fingerprint of the run's settings. ``step-00000040.pt`` is written
to a temporary file and renamed into place, so a run killed while saving leaves the previous
checkpoint intact; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlr.io import publish_directory, write_atomic

PATTERN = "step-*.pt"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(step: int, model: nn.Module, optimizer: Any, scheduler: Any, sampler: Any,
                   fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The state after ``step`` optimizer steps (trainable weights only: the rest is the base
    model, which the resumed run loads again)."""
    return {
        "step": step,
        "fingerprint": fingerprint,
        "weights": {name: p.detach().cpu().clone()
                    for name, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": _rng_state(),
    }


def restore_training_state(state: dict[str, Any], model: nn.Module, optimizer: Any,
                           scheduler: Any, sampler: Any) -> int:
    """Load ``state`` into freshly built objects of the same run; returns the step reached."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["weights"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    _restore_rng(state["rng"])
    return int(state["step"])


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any], keep: int = 2) -> Path:
    directory = Path(directory)
    path = write_atomic(directory / f"step-{state['step']:08d}.pt",
                        lambda tmp: torch.save(state, tmp))
    for old in sorted(directory.glob(PATTERN))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = sorted(Path(directory).glob(PATTERN))
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_pretrained_atomic(model: nn.Module, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """``save_pretrained`` of model and tokenizer into ``directory``, which appears complete or
    not at all (an older one is replaced)."""

    def build(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return publish_directory(directory, build)
