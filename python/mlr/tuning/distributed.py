"""Training on several GPUs or nodes under ``torchrun``: DDP or FSDP2, rank-0 output, checkpoints.

The building blocks of ``mlr train --distributed ddp|fsdp2``, meant to read top to bottom::

    ctx = init_distributed()                      # torchrun's env; one plain process without it
    model = load_model(path).to(ctx.device)
    multipliers = module_lr_multipliers(model, robust, ratio)   # names of the unwrapped model
    model = wrap_model(model, "fsdp2")            # or "ddp"
    groups = param_groups(unwrap(model), multipliers, weight_decay)
    optimizer = MLRAdamW(groups, lr=lr)           # after wrapping: FSDP2 parameters are DTensors
    for indices in batches:                       # the one-GPU loop on this rank's share
        loss = loss_sum(model, rank_share(indices, ctx)) / (all_reduce_sum(tokens, ctx) / ctx.world_size)
        ...
        save_checkpoint(run_dir / "checkpoints", step, model, optimizer, ...)  # every rank
    whole = gathered_model(model, build=load_plain_model_on_cpu, ctx=ctx)   # every rank
    if ctx.is_main:
        whole.save_pretrained(out)
    barrier()
    cleanup_distributed()

DDP all-reduces gradients, FSDP2 reduce-scatters them, and MLRAdamW steps each rank's parameters
or shards with no further communication. Checkpoints (:mod:`mlr.tuning.checkpoint`) go through
``torch.distributed.checkpoint``: each rank writes its own shards, no rank gathers the model.
``mlr.tuning.train`` is this recipe; ``docs/distributed.md`` has the torchrun commands and the
memory each rank holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from mlr.errors import MlrInputError
from mlr.modules import decoder_layers
from mlr_kernels.dtensor import is_dtensor

STRATEGIES = ("ddp", "fsdp2")
T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its global and node-local rank, the world size, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes reports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one rank: collectives and barriers involve the others. False for a process
        that trains alone even where a process group exists (rank 0 aligning the cached model)."""
        return self.world_size > 1


def single_process(device: str | torch.device) -> DistributedContext:
    """The context of a run without torchrun: rank 0 of 1 on ``device``."""
    return DistributedContext(0, 0, 1, torch.device(device))


def init_distributed(device_type: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``). Each rank takes GPU ``LOCAL_RANK`` and NCCL, or the CPU
    and gloo (``device_type="cpu"``, or no GPU). Without torchrun's variables: one process and
    no process group."""
    cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if "WORLD_SIZE" not in os.environ:
        return single_process("cuda" if cuda else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistributedContext(rank, local_rank, world_size, device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_share(items: Sequence[T], ctx: DistributedContext) -> list[T]:
    """This rank's contiguous, equal share of a global batch (its length divides by the world
    size), so N ranks see together exactly the batch one process would."""
    if len(items) % ctx.world_size:
        raise MlrInputError(f"a batch of {len(items)} does not split over {ctx.world_size} ranks")
    share = len(items) // ctx.world_size
    return list(items[ctx.rank * share : (ctx.rank + 1) * share])


def all_reduce_sum(value: float, ctx: DistributedContext) -> float:
    """``value`` summed over the ranks of ``ctx``: token counts, losses. A single-process ``ctx``
    gets ``value`` back even when a process group exists (a run without ``--distributed``, such as
    the alignment rank 0 trains for the cache, talks to no other rank)."""
    if not ctx.is_distributed:
        return value
    total = torch.tensor(float(value), dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(total)
    return total.item()


def wrap_model(
    model: nn.Module,
    strategy: str,
    *,
    units: Iterable[nn.Module] | None = None,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Wrap ``model`` (already on this rank's device) for data-parallel training.

    ``ddp``: a ``DistributedDataParallel`` wrapper (``unwrap`` gives the model back).
    ``fsdp2``: ``fully_shard`` on each of ``units`` (default: the decoder layers), then on the
    model, in place; parameters become DTensors holding this rank's shard, so build the optimizer
    after this call. ``param_dtype`` (e.g. ``torch.bfloat16``) is FSDP2's compute dtype for
    forward and backward; the sharded parameters and the optimizer keep their own dtype, and
    gradients are reduced in float32.
    """
    if strategy == "ddp":
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp2":
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for unit in decoder_layers(model) if units is None else units:
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    raise MlrInputError(f"unknown distributed strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gathered_model(
    model: nn.Module, build: Callable[[], nn.Module], ctx: DistributedContext
) -> nn.Module | None:
    """The trained model whole, on rank 0 (None elsewhere), ready to ``save_pretrained``: the
    model itself in one process or under DDP; under FSDP2 a fresh ``build()`` (same architecture,
    on the CPU) loaded with the gathered weights. Every rank must call it."""
    if not any(is_dtensor(p) for p in model.parameters()):
        return unwrap(model) if ctx.is_main else None
    weights = full_state_dict(model)
    if not ctx.is_main:
        return None
    plain = build()
    plain.load_state_dict(weights)
    return plain


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered on the CPU of rank 0 (other ranks get ``{}``), with
    the names of the unwrapped model. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
