"""The per-segment table every AdamW kernel reads.

A *segment* is one parameter inside a flat buffer. Its row in the ``hyper`` table (float64, on the
buffer's device) holds everything the kernel needs to update it, so any number of param groups and
per-parameter multipliers costs one launch:

    hyper[s, LR]            effective learning rate = group lr * group lr_mult * param lr_mult
    hyper[s, WEIGHT_DECAY]  effective decoupled decay = group weight_decay * wd_mult
    hyper[s, BETA1], hyper[s, BETA2], hyper[s, EPS]
    hyper[s, STEP]          this segment's step count, already incremented for the current step
    hyper[s, ACTIVE]        1.0 if the parameter has a gradient this step, else 0.0 (left untouched)
    hyper[s, MAXIMIZE]      1.0 to ascend instead of descend
    hyper[s, AMSGRAD]       1.0 to use the running max of exp_avg_sq

Kernels walk *tiles*: rows ``(segment, start, end)`` of an int64 ``[T, 3]`` tensor, each a run of
at most ``tile_size`` elements inside one segment, so a block or thread finds its multipliers with
one lookup and never searches. Segments start on ``ALIGN_ELEMENTS`` boundaries, so 16-byte vector
loads stay aligned for every dtype.
"""

from __future__ import annotations

import torch

LR, WEIGHT_DECAY, BETA1, BETA2, EPS, STEP, ACTIVE, MAXIMIZE, AMSGRAD = range(9)
NUM_HYPER_COLUMNS = 9

# 16 elements = 64 bytes of fp32 (a cache line), 32 bytes of bf16: a 16-byte vector never straddles.
ALIGN_ELEMENTS = 16


def aligned(n: int, align: int = ALIGN_ELEMENTS) -> int:
    """Round ``n`` up to a multiple of ``align``."""
    return (n + align - 1) // align * align


def segment_offsets(numels: list[int]) -> tuple[list[int], int]:
    """Start offset of each segment in a flat buffer, and the buffer's padded length."""
    offsets, total = [], 0
    for n in numels:
        offsets.append(total)
        total += aligned(n)
    return offsets, max(total, ALIGN_ELEMENTS)


def make_tiles(offsets: list[int], numels: list[int], tile_size: int) -> torch.Tensor:
    """Split every segment into runs of at most ``tile_size`` elements: int64 ``[T, 3]`` rows of
    ``(segment, start, end)`` in flat-buffer coordinates. ``tile_size`` must be a multiple of
    ``ALIGN_ELEMENTS`` so that every tile starts aligned."""
    if tile_size <= 0 or tile_size % ALIGN_ELEMENTS:
        raise ValueError(f"tile_size must be a positive multiple of {ALIGN_ELEMENTS}, got {tile_size}")
    rows = []
    for seg, (start, n) in enumerate(zip(offsets, numels)):
        for lo in range(0, n, tile_size):
            rows.append((seg, start + lo, start + min(lo + tile_size, n)))
    if not rows:
        return torch.empty((0, 3), dtype=torch.int64)
    return torch.tensor(rows, dtype=torch.int64)
