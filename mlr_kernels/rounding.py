"""Stochastic rounding for bfloat16 optimizer state, in torch: the twin of csrc/random_bits.h.

Moments kept in bfloat16 (``MLRAdamW(state_dtype=torch.bfloat16)``) are computed in float32 and
written back rounded up or down at random, with the probabilities that make the rounding unbiased
(Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015, section 3): a long run
of small updates then moves a moment by their sum on average, where round-to-nearest would drop
every update below half a unit. The random bits come from a counter-based generator, a pure
function of (stream, step, element index): the same on every backend, tiling and thread count,
reproducible from the optimizer's ``seed``, and a run resumed from a checkpoint (which restores
the step counts) continues the same stream with nothing more to save. ``stream`` is one number per
parameter, from the seed and the parameter's place in its param groups (:func:`stream_of`).

The kernels compute the same bits (csrc/random_bits.h, adamw_cuda.cu, backends/triton.py);
:mod:`mlr_kernels.backends.reference` uses these functions, and tests/test_rounding.py checks
them against each other.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_of(seed: int, group: int, index: int) -> int:
    """The random stream of the parameter at ``param_groups[group]["params"][index]``, as a
    signed int64 (the segment table's STREAM column)."""
    z = _splitmix64((seed * 0x9E3779B97F4A7C15 + (group << 32) + index) & _MASK64)
    return z - (1 << 64) if z >= 1 << 63 else z


def random_key(stream: int, step: int, index: int) -> int:
    """The 32-bit key of the elements from ``index`` on (those with its high 32 bits) at
    ``step`` in segment ``stream``."""
    z = ((stream & _MASK64) * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + (index >> 32)) & _MASK64
    return _splitmix64(z) & _MASK32


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low = x * (constant & 0xFFFF)
    high = (x * (constant >> 16)) & 0xFFFF
    return (low + (high << 16)) & _MASK32


def random_bits(key: int, indices: torch.Tensor) -> torch.Tensor:
    """lowbias32(key ^ index) for each of ``indices`` (int64, their low 32 bits are used): 32
    random bits per element, as int64 in [0, 2**32)."""
    x = (indices & _MASK32) ^ key
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def to_bfloat16_stochastic(values: torch.Tensor, random16: torch.Tensor) -> torch.Tensor:
    """float32 ``values`` rounded to bfloat16 up or down at random, unbiased: the low 16 bits of
    ``random16`` are added to the 16 bits bfloat16 drops, which carries into the kept bits with
    the probability of the dropped fraction. NaN stays NaN."""
    bits = values.float().view(torch.int32).to(torch.int64) & _MASK32
    rounded = ((bits + (random16 & 0xFFFF)) >> 16) & 0xFFFF
    rounded = torch.where(values.isnan(), 0x7FC0, rounded)
    return rounded.to(torch.int32).to(torch.int16).view(torch.bfloat16)
