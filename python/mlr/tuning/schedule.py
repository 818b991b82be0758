"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> LambdaLR:
    """Scale every group's LR by ``(step + 1) / warmup_steps`` during warm-up, then follow a cosine
    from 1 down to ``min_ratio`` at ``total_steps``. Call ``scheduler.step()`` after each
    optimizer step; the first step already trains (no zero-LR step)."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in 0..{total_steps}, got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return min_ratio + (1.0 - min_ratio) * cosine

    return LambdaLR(optimizer, factor)
