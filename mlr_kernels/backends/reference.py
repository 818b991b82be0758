"""Plain-PyTorch AdamW over a segment table: the oracle every kernel is tested against.

It walks the same tiles as the kernels, on the tensors the table points at, and does the math of
``torch.optim.AdamW`` (single-tensor path) in float32, with the bias corrections computed in
float64 from the table; bfloat16 moments are rounded back with :mod:`mlr_kernels.rounding`, a
parameter without a master is stepped from itself plus its compensation. It is slow and meant to
be obviously right.
"""

from __future__ import annotations

import math

import torch

from mlr_kernels import rounding
from mlr_kernels.backends.checks import check_step_args
from mlr_kernels.segments import (
    ACTIVE,
    AMSGRAD,
    BETA1,
    BETA2,
    EPS,
    LR,
    MAXIMIZE,
    STREAM,
    WEIGHT_DECAY,
    SegmentTable,
)

NAME = "reference"
# It reads the tensors of table.params and table.grads, not only the pointer rows: a sync must
# hand them over at every step.
READS_TENSORS = True
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
    compensation: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile. See ``mlr_kernels.backends`` for the contract."""
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf,
                    compensation)
    if found_inf is not None and float(found_inf.reshape(-1)[0]) != 0.0:
        return
    rows = table.hyper.detach().cpu().tolist()
    steps = table.steps.detach().cpu().tolist()
    streams = table.pointers[:, STREAM].detach().cpu().tolist()
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
        if master is not None:  # where user code overwrote the weight, the step starts from it
            p = master[start:end].clone()
            stale = param.float() != p.to(param.dtype).float()
            p[stale] = param[stale].float()
        elif compensation is not None:
            p = param.float() + compensation[start:end].float()
        else:
            p = param.clone()
        m, v = exp_avg[start:end].float(), exp_avg_sq[start:end].float()

        p.mul_(1.0 - lr * wd)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1**step)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        second_moment = v
        if h[AMSGRAD]:
            second_moment = torch.maximum(max_exp_avg_sq[start:end].float(), v)
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)

        _store_moments(exp_avg[start:end], exp_avg_sq[start:end],
                       max_exp_avg_sq[start:end] if h[AMSGRAD] else None, m, v, second_moment,
                       streams[seg], int(step), local)
        param.copy_(p)  # rounded to nearest even for a bfloat16/float16 parameter
        if master is not None:
            master[start:end] = p
        elif compensation is not None:
            compensation[start:end] = p - param.float()  # what the rounding dropped, exact in float32


def _store_moments(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, max_exp_avg_sq: torch.Tensor | None,
                   m: torch.Tensor, v: torch.Tensor, vmax: torch.Tensor, stream: int, step: int,
                   local: slice) -> None:
    """Write the float32 moments back: as they are, or rounded stochastically to bfloat16 with the
    kernels' random bits (:mod:`mlr_kernels.rounding`); ``max_exp_avg_sq`` then stays the running
    max of the stored ``exp_avg_sq``."""
    if exp_avg.dtype == torch.float32:
        exp_avg.copy_(m)
        exp_avg_sq.copy_(v)
        if max_exp_avg_sq is not None:
            max_exp_avg_sq.copy_(vmax)
        return
    indices = torch.arange(local.start, local.stop, dtype=torch.int64, device=m.device)
    bits = rounding.random_bits(rounding.random_key(stream, step, local.start), indices)
    exp_avg.copy_(rounding.to_bfloat16_stochastic(m, bits))
    exp_avg_sq.copy_(rounding.to_bfloat16_stochastic(v, bits >> 16))
    if max_exp_avg_sq is not None:
        max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.float(), exp_avg_sq.float()))


def _in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as they lie in memory, as a 1-D view (the kernels' order)."""
    return t.detach().as_strided((t.numel(),), (1,))
