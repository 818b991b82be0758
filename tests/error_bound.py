"""How far two correct float32 AdamW implementations can end apart: the tolerance of the kernel tests.

Every kernel and the reference compute the update of ``mlr_kernels.backends`` in float32 from
the same inputs, but they may legitimately round differently: a fused multiply-add where another
rounds twice, a division by a scalar done as a multiplication by its float32 reciprocal (torch
does this), a square root off by one unit in the last place (torch's CPU ``sqrt``, measured on
0.7 % of inputs), a GPU division good to 2 units, a float64 ``pow`` of the bias corrections one
unit apart. So no fixed tolerance is a bound: the difference grows with every step, and in units
of the *update*, not of the weight (a weight near zero moved by a large learning rate drifts by
many of its own units in the last place).

:func:`adamw_error_bound` is a first-order running error analysis (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., §3.3): it follows the exact (float64) trajectory
from the same float32 start and, per element and step, the largest distance any such float32
implementation can be from it. Per operation, with unit roundoff ``u = 2**-24`` and a budget
``OP_ROUNDINGS`` that counts every rounding either form of the operation may take (constants
rounded to float32 included):

    g  = grad * grad_mult                    |dg|  <= u |g|           (when grad_mult is set)
    p  = p * decay                           |dp|  <= decay |dp| + 2u |p decay|
    m  = lerp(m, g, 1 - beta1)               |dm|  <= beta1 |dm| + (1-beta1) |dg| + 4u (|m| + |g|)
    v  = beta2 v + (1 - beta2) g g           |dv|  <= beta2 |dv| + 2 (1-beta2) |g dg| + 6u v
    vmax = max(vmax, v)                      |dvmax| <= max(|dvmax|, |dv|)
    s  = sqrt(V)                             |ds|  <= min(|dV| / 2s, sqrt|dV|) + 2u s
    d  = s / sqrt(1 - beta2^t) + eps         |dd|  <= |ds| / bc2 + 8u d
    w  = lr / (1 - beta1^t) * m / d          |dw|  <= step (|dm| / d + |m| |dd| / d^2) + 8u |w|
    p  = p - w                               |dp|  <= |dp| + |dw| + u |p|

Moments kept in bfloat16 are written back with stochastic rounding, off by less than one unit of
bfloat16 (``|dm| += ulp(m)`` at each step; the update of that step reads them before they are
rounded). A weight kept without a master, as a bfloat16/float16 value plus a compensation in
its dtype, starts each step from their float32 sum (``u |p|``) and loses what the compensation's
rounding drops (under ``2**-t ulp(p)`` for a dtype of ``t`` fraction bits).

The two implementations' errors are independent of each other's rounding, so they end at most
twice the bound apart (tests/kernel_cases.py). A bfloat16 or float16 weight is its float32 value
rounded to nearest, so two of them may also sit one unit of their own dtype apart. Second-order
terms (products of two errors) are left out: they are below ``u`` times the first-order ones for
the inputs the tests draw.
"""

from __future__ import annotations

import math

import torch

from mlr_kernels import segments

UNIT_ROUNDOFF = 2.0**-24
# Bits of precision after the leading one, per low-precision weight dtype.
_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}
# The smallest positive subnormal: below it a unit in the last place does not shrink.
_SMALLEST = {torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}


def adamw_error_bound(case, steps: int) -> dict[str, torch.Tensor]:
    """Per element, how far one float32 implementation can be from the exact result after
    ``steps`` steps of ``case`` (an ``AdamWCase`` of tests/kernel_cases.py, on any device; its
    gradients and hyperparameters fixed, the step count advancing as ``check_against_reference``
    advances it).

    Returns float64 CPU tensors: ``"p"`` (the float32 weight or master, in state coordinates),
    ``"exp_avg"``, ``"exp_avg_sq"``, ``"max_exp_avg_sq"``; zero outside the active tiles."""
    case = case.to("cpu")
    u = UNIT_ROUNDOFF
    hyper, first_steps = case.hyper.tolist(), case.steps.tolist()
    bound = {name: torch.zeros(case.exp_avg.numel(), dtype=torch.float64)
             for name in ("p", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    skip = case.found_inf is not None and float(case.found_inf.reshape(-1)[0]) != 0.0
    if skip:
        return bound
    mult = None if case.grad_mult is None else float(case.grad_mult.reshape(-1)[0])
    for seg, (start, arena_start, n) in enumerate(zip(case.offsets, case.param_offsets, case.numels)):
        h = hyper[seg]
        if h[segments.ACTIVE] == 0.0 or n == 0:
            continue
        state = slice(start, start + n)
        param = case.param[arena_start:arena_start + n].double()
        if case.master is not None:  # the step starts from a weight user code wrote, as the kernels do
            master = case.master[state]
            p = torch.where(master.to(case.param.dtype).double() != param, param, master.double())
        elif case.compensation is not None:
            p = param + case.compensation[state].double()
        else:
            p = param
        grad = case.grad[arena_start:arena_start + n].double()
        g = grad * (mult if mult is not None else 1.0) * (-1.0 if h[segments.MAXIMIZE] else 1.0)
        dg = u * g.abs() if mult is not None else torch.zeros_like(g)
        m, v = case.exp_avg[state].double(), case.exp_avg_sq[state].double()
        vmax = case.max_exp_avg_sq[state].double() if h[segments.AMSGRAD] else None
        dp, dm, dv, dvmax = (torch.zeros_like(g) for _ in range(4))
        lr, wd, beta1, beta2, eps = (h[k] for k in (segments.LR, segments.WEIGHT_DECAY,
                                                    segments.BETA1, segments.BETA2, segments.EPS))
        for k in range(steps):
            t = first_steps[seg] + k
            if case.compensation is not None:  # the float32 sum of the weight and its compensation
                dp = dp + u * p.abs()
            decay = 1.0 - lr * wd
            p = p * decay
            dp = decay * dp + 2 * u * p.abs()
            dm = beta1 * dm + (1 - beta1) * dg + 4 * u * (m.abs() + g.abs())
            m = m + (1 - beta1) * (g - m)
            v = beta2 * v + (1 - beta2) * g * g
            dv = beta2 * dv + 2 * (1 - beta2) * g.abs() * dg + 6 * u * v
            big_v, dbig_v = v, dv
            if vmax is not None:
                vmax = torch.maximum(vmax, v)
                dvmax = torch.maximum(dvmax, dv)
                big_v, dbig_v = vmax, dvmax
            s = big_v.sqrt()
            ds = torch.minimum(dbig_v / (2 * s), dbig_v.sqrt()) + 2 * u * s
            bc2 = math.sqrt(1.0 - beta2**t)
            d = s / bc2 + eps
            dd = ds / bc2 + 8 * u * d
            step_size = lr / (1.0 - beta1**t)
            w = step_size * m / d
            dw = step_size * (dm / d + m.abs() * dd / d**2) + 8 * u * w.abs()
            p = p - w
            dp = dp + dw + u * p.abs()
            if case.compensation is not None:  # what rounding the compensation drops
                dp = dp + 2.0**-_MANTISSA_BITS[case.param.dtype] * ulp(p, case.param.dtype)
            if case.exp_avg.dtype == torch.bfloat16:  # stored stochastically rounded
                dm = dm + ulp(m, torch.bfloat16)
                dv = dv + ulp(v, torch.bfloat16)
                if vmax is not None:
                    dvmax = torch.maximum(dvmax, dv)
        bound["p"][state] = dp
        bound["exp_avg"][state] = dm
        bound["exp_avg_sq"][state] = dv
        if vmax is not None:
            bound["max_exp_avg_sq"][state] = dvmax
    return bound


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of each of ``values`` in ``dtype`` (bfloat16 or float16), as
    float64: the spacing of the dtype's numbers in the binade that holds the value."""
    _, exponent = torch.frexp(values.double())  # value = fraction * 2**exponent, 0.5 <= |fraction| < 1
    spacing = torch.ldexp(torch.ones_like(values, dtype=torch.float64), exponent - 1 - _MANTISSA_BITS[dtype])
    return spacing.clamp_min(_SMALLEST[dtype])
