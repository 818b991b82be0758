"""Plain-PyTorch AdamW over flat buffers: the oracle every kernel is tested against.

It walks the same tiles as the kernels and does the math of ``torch.optim.AdamW`` (single-tensor
path) in float32, with the bias corrections computed in float64 from the table. It is slow and
meant to be obviously right.
"""

from __future__ import annotations

import math

import torch

from mlr_kernels.segments import ACTIVE, AMSGRAD, BETA1, BETA2, EPS, LR, MAXIMIZE, STEP, WEIGHT_DECAY


def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    hyper: torch.Tensor,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile. See ``mlr_kernels.backends`` for the contract."""
    if found_inf is not None and float(found_inf.reshape(-1)[0]) != 0.0:
        return
    table = hyper.detach().cpu().tolist()
    mult = None if grad_mult is None else grad_mult.reshape(1).to(torch.float32)
    for seg, start, end in tiles.tolist():
        h = table[seg]
        if h[ACTIVE] == 0.0:
            continue
        lr, wd, beta1, beta2, eps = h[LR], h[WEIGHT_DECAY], h[BETA1], h[BETA2], h[EPS]
        step = h[STEP]
        g = grad[start:end].float()
        if mult is not None:
            g = g * mult
        if h[MAXIMIZE]:
            g = -g
        p = master[start:end] if master is not None else param[start:end]
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
            param[start:end].copy_(p)


TILE_SIZE = 1 << 20


def is_available(device: torch.device) -> bool:
    return True
