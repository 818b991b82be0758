"""Training checkpoints through ``torch.distributed.checkpoint`` (DCP): one format and one code path
for a single process and for DDP or FSDP2 ranks.

A checkpoint is the directory ``step-00000040/`` under the run's ``checkpoints/``. It holds what a
resumed run needs to continue exactly: the trainable weights and the optimizer state (each rank
writes its own shards under FSDP2; under DDP and in one process one copy), the scheduler, the
sampler's position, the step, the fingerprint of the run's settings and the world size (written
once), and every rank's RNG states (under the rank's own key). Every rank must call
``save_checkpoint`` and ``load_checkpoint``.

Saving writes into ``.step-00000040.partial/`` and renames it into place once every rank is done,
so a run killed while saving leaves the previous checkpoints intact; only the newest ``keep`` are
kept. ``step-*.pt`` files are the single-file format of earlier versions: they cannot be resumed,
and ``latest_checkpoint`` says so in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mlr.errors import MlrInputError
from mlr.io import publish_directory
from mlr.tuning.distributed import barrier, unwrap

PREFIX = "step-"
OLD_FORMAT = "step-*.pt"


def checkpoint_dir(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"{PREFIX}{step:08d}"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None. Raises ``MlrInputError`` when
    ``directory`` holds checkpoints of the old single-file format only."""
    directory = Path(directory)
    found = sorted(p for p in directory.glob(f"{PREFIX}*") if (p / ".metadata").is_file())
    if found:
        return found[-1]
    old = sorted(directory.glob(OLD_FORMAT))
    if old:
        raise MlrInputError(f"{old[-1]} is a checkpoint of the old single-file format, which this "
                            "version cannot resume; start the run again in another --out")
    return None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group that it assumes one process: we know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in unwrap(model).named_parameters() if p.requires_grad}


def _state(model: nn.Module, optimizer: Any, scheduler: Any, sampler: Any, step: int,
           fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's state dict as DCP saves it (and, built from fresh objects, the template
    it loads into): trainable weights and optimizer in DCP's form, the rest as plain values."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    trainable = _trainable_names(model)
    return {
        "model": {name: value for name, value in model_state.items() if name in trainable},
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        # One opaque string: DCP flattens nested dicts and would load only the keys a fresh
        # template already has.
        "meta": {"step": step, "fingerprint": json.dumps(fingerprint, sort_keys=True),
                 "world_size": _world_size()},
        f"rng_rank{_rank()}": _rng_state(),
    }


def save_checkpoint(directory: str | os.PathLike, step: int, model: nn.Module, optimizer: Any,
                    scheduler: Any, sampler: Any, fingerprint: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write the state after ``step`` optimizer steps to ``directory/step-<step>/`` (every rank
    calls it); returns that path."""
    import torch.distributed.checkpoint as dcp

    target = checkpoint_dir(directory, step)
    state = _state(model, optimizer, scheduler, sampler, step, fingerprint)

    def write(staging: Path) -> None:
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=staging)

    if not dist.is_initialized():
        publish_directory(target, write)
    else:  # every rank writes into one staging directory; rank 0 publishes it
        staging = target.with_name(f".{target.name}.partial")
        if _rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        write(staging)
        barrier()
        if _rank() == 0:
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
    if _rank() == 0:
        for old in sorted(p for p in Path(directory).glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
        for stale in Path(directory).glob(f".{PREFIX}*"):  # half-written by a killed run
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return target


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The step, fingerprint and world size a checkpoint was saved with (any rank may call it)."""
    import torch.distributed.checkpoint as dcp

    state: dict[str, Any] = {"meta": {"step": 0, "fingerprint": "{}", "world_size": 0}}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(path), no_dist=True)
    return {**state["meta"], "fingerprint": json.loads(state["meta"]["fingerprint"])}


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: Any, scheduler: Any,
                    sampler: Any, fingerprint: dict[str, Any]) -> int:
    """Restore a checkpoint into the freshly built objects of the same run (every rank calls
    it); returns the step it was saved after. Raises ``MlrInputError`` when the checkpoint belongs
    to a run with other settings or another number of ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    meta = read_checkpoint_meta(path)
    changed = sorted(k for k in fingerprint if meta["fingerprint"].get(k) != fingerprint[k])
    if changed:
        raise MlrInputError(f"cannot resume from {path}: the run differs in {', '.join(changed)}")
    if meta["world_size"] != _world_size():
        raise MlrInputError(f"cannot resume from {path}: it was saved by {meta['world_size']} "
                            f"process(es), this run has {_world_size()}")
    state = _state(model, optimizer, scheduler, sampler, 0, fingerprint)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    _restore_rng(state[f"rng_rank{_rank()}"])
    return int(state["meta"]["step"])


def save_pretrained_atomic(model: nn.Module, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """``save_pretrained`` of model and tokenizer into ``directory``, which appears complete or
    not at all (an older one is replaced)."""

    def build(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return publish_directory(directory, build)
