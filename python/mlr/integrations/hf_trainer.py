"""MLRAdamW and its learning-rate schedule for the Hugging Face ``Trainer``::

    multipliers = module_lr_multipliers(model, read_mods_robust("mods_robust.json"), ratio=0.1)
    # or: pattern_lr_multipliers(model, {"model.layers.*.self_attn.*": 1.0}, default=0.1)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=mlr_optimizers(model, args, multipliers))

Works on one device and under ``torchrun`` with DDP (Trainer wraps the model; the parameters stay
the optimizer's). Trainer refuses ``optimizers`` with FSDP, and accelerate's FSDP2 swaps the
optimizer's parameters after building it: for FSDP2 use :mod:`mlr.tuning.distributed`, which shards
first and builds MLRAdamW on the DTensor shards.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import TrainingArguments, get_scheduler

from mlr.errors import MlrInputError
from mlr.tuning.ml_lr import param_groups
from mlr_kernels import MLRAdamW


def mlr_optimizers(
    model: nn.Module,
    args: TrainingArguments,
    multipliers: Mapping[str, float],
    num_training_steps: int | None = None,
    backend: str = "auto",
    state_dtype: torch.dtype = torch.float32,
    master_weights: bool = True,
) -> tuple[MLRAdamW, LRScheduler]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``, as Trainer would build AdamW.

    ``multipliers`` maps trainable parameter names to learning-rate multipliers
    (:func:`mlr.tuning.ml_lr.module_lr_multipliers` or
    :func:`mlr.integrations.lr_patterns.pattern_lr_multipliers`); parameters at multiplier 0 are
    frozen, as ``mlr train`` does. Learning rate, betas, epsilon, weight decay (none on biases and
    norms) and the schedule (``lr_scheduler_type`` with ``warmup_steps``, e.g. ``"cosine"``) come
    from ``args``; ``num_training_steps`` defaults to ``args.max_steps``. The model is moved to
    ``args.device`` first, so MLRAdamW's state is allocated there once (moving the model later works
    too, at the cost of re-packing the state at the next step). ``state_dtype`` and
    ``master_weights`` go to :class:`MLRAdamW` (bfloat16 moments, no float32 masters), its seed is
    ``args.seed``.
    """
    steps = num_training_steps if num_training_steps is not None else args.max_steps
    if steps <= 0:
        raise MlrInputError("mlr_optimizers needs num_training_steps when args.max_steps is not set")
    model.to(args.device)
    for name, parameter in model.named_parameters():
        if multipliers.get(name) == 0.0:
            parameter.requires_grad_(False)
    optimizer = MLRAdamW(param_groups(model, multipliers, args.weight_decay), lr=args.learning_rate,
                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, seed=args.seed)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.get_warmup_steps(steps), num_training_steps=steps,
                              scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    return optimizer, scheduler
