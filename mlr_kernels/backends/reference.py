"""Plain-PyTorch AdamW over a segment table: the oracle every kernel is tested against.

It walks the same tiles as the kernels, on the tensors the table points at, and does the math of
``torch.optim.AdamW`` (single-tensor path) in float32, with the bias corrections computed in
float64 from the table. It is slow and meant to be obviously right.
"""

from __future__ import annotations

import math

import torch

from mlr_kernels.backends.checks import check_step_args
from mlr_kernels.segments import (
    ACTIVE,
    AMSGRAD,
    BETA1,
    BETA2,
    EPS,
    LR,
    MAXIMIZE,
    WEIGHT_DECAY,
    SegmentTable,
)

NAME = "reference"
TILE_SIZE = 1 << 20


def unavailable_reason(device: torch.device | str) -> str | None:
    """None: plain torch runs wherever torch does."""
    return None


def adamw_step(
    table: SegmentTable,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile. See ``mlr_kernels.backends`` for the contract."""
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf)
    if found_inf is not None and float(found_inf.reshape(-1)[0]) != 0.0:
        return
    rows = table.hyper.detach().cpu().tolist()
    steps = table.steps.detach().cpu().tolist()
    mult = None if grad_mult is None else grad_mult.reshape(1).to(torch.float32)
    for seg, start, end in tiles.tolist():
        h = rows[seg]
        if h[ACTIVE] == 0.0:
            continue
        local = slice(start - table.offsets[seg], end - table.offsets[seg])
        param = _in_memory_order(table.params[seg])[local]
        g = _in_memory_order(table.grads[seg])[local].float()
        lr, wd, beta1, beta2, eps = h[LR], h[WEIGHT_DECAY], h[BETA1], h[BETA2], h[EPS]
        step = steps[seg]
        if mult is not None:
            g = g * mult
        if h[MAXIMIZE]:
            g = -g
        p = master[start:end] if master is not None else param
        if master is not None:  # where user code overwrote the weight, the step starts from it
            stale = param.float() != p.to(param.dtype).float()
            p[stale] = param[stale].float()
        m, v = exp_avg[start:end], exp_avg_sq[start:end]

        p.mul_(1.0 - lr * wd)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1**step)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        if h[AMSGRAD]:
            vmax = max_exp_avg_sq[start:end]
            torch.maximum(vmax, v, out=vmax)
            denom = (vmax.sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
        if master is not None:
            param.copy_(p)


def _in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as they lie in memory, as a 1-D view (the kernels' order)."""
    return t.detach().as_strided((t.numel(),), (1,))
