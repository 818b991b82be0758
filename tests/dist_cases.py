"""Run a test body on several CPU ranks (gloo), as torchrun would start them.

``run_ranks(body, world_size, *args)`` spawns ``world_size`` processes, sets torchrun's environment
in each, joins the process group with :func:`mlr.tuning.distributed.init_distributed` and calls
``body(ctx, *args)``. ``body`` must be a module-level function (spawn pickles it by name); an
assertion that fails on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from mlr.tuning.checkpoint import load_checkpoint, save_checkpoint
from mlr.tuning.distributed import DistributedContext, cleanup_distributed, init_distributed
from mlr.tuning.sampler import EpochSampler
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mlr_kernels import MLRAdamW
from tests.optim_cases import forward, make_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(body: Callable[..., None], world_size: int, *args: Any) -> None:
    mp.spawn(_rank_main, args=(world_size, free_port(), body, args), nprocs=world_size)


def _rank_main(rank: int, world_size: int, port: int, body: Callable[..., None], args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks on two cores
    ctx = init_distributed(device_type="cpu")
    try:
        body(ctx, *args)
    finally:
        cleanup_distributed()


class Net(nn.Module):
    """``tests.optim_cases.make_model`` behind a ``forward``, so DDP and FSDP2 see every call."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.model = make_model(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.model, x)


def global_batches(steps: int, seed: int, rows: int = 8) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 7, generator=gen) for _ in range(steps)]


def train(pairs, batches: list[torch.Tensor], ctx: DistributedContext | None = None,
          max_norm: float | None = None, model_zero_grad_at: tuple[int, ...] = ()) -> None:
    """Train each (net, optimizer) pair on the same batches: this rank's share of each under
    ``ctx``, the whole batch without. ``max_norm`` clips (MLRAdamW's own clip, torch's for
    others); at the steps in ``model_zero_grad_at`` the model sets grads to None instead."""
    for step, batch in enumerate(batches):
        x = batch if ctx is None else rank_slice(batch, ctx)
        for net, opt in pairs:
            (net if step in model_zero_grad_at else opt).zero_grad()
            net(x).pow(2).mean().backward()
            if max_norm is not None and isinstance(opt, MLRAdamW):
                opt.clip_grad_norm_(max_norm)
            elif max_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            opt.step()


def rank_slice(batch: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """This rank's equal share of a global batch (rows), as a DistributedSampler would give."""
    per_rank = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]


def save_training(directory: str | os.PathLike, model: nn.Module, optimizer: MLRAdamW) -> Path:
    """Checkpoint ``model`` and ``optimizer`` as ``mlr train`` does (:mod:`mlr.tuning.checkpoint`,
    every rank calls it), beside a scheduler and a sampler these tests do not use; returns the
    checkpoint's directory."""
    return save_checkpoint(directory, 0, model, optimizer, *_unused_training_state(optimizer), {})


def resume_training(path: str | os.PathLike, model: nn.Module, optimizer: MLRAdamW) -> None:
    """Load what :func:`save_training` wrote into a freshly built ``model`` and ``optimizer``."""
    load_checkpoint(path, model, optimizer, *_unused_training_state(optimizer), {})


def _unused_training_state(optimizer: MLRAdamW) -> tuple[LambdaLR, EpochSampler]:
    return LambdaLR(optimizer, lambda _: 1.0), EpochSampler(1, 0)
