"""Spearman's rank correlation: how alike two orderings are, used where the project compares two
rankings (the exact and first-order robustness maps; the refusal score and the ASR over models)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _ranks(values: Sequence[float]) -> torch.Tensor:
    """1-based ranks, tied values sharing their mean rank."""
    data = torch.tensor(values, dtype=torch.float64)
    order = torch.argsort(data)
    _, inverse, counts = torch.unique_consecutive(data[order], return_inverse=True,
                                                  return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    ranks = torch.empty_like(data)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the tie-averaged ranks); ``nan`` when
    either side is constant. Raises ``ValueError`` for unequal lengths or fewer than 2 values."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of >= 2, got {len(a)}, {len(b)}")
    x, y = _ranks(a), _ranks(b)
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else math.nan
