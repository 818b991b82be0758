"""95 % confidence intervals over seeds, and whether a difference between two arms is in the noise.

A seed fixes a fine-tuning run's data order (and LoRA's initial adapters); each seed's metric is
one draw of the whole run and its evaluation. With ``n`` seeds the interval of the mean
is Student's t: ``mean ± t(0.975, n - 1) · std / sqrt(n)``. Two arms trained with the same seeds
share each seed's data order, so their difference is taken seed by seed (a paired t interval),
which removes the part of the noise the arms have in common.

A share (ASR, over-refusal) has a second source of noise: the prompts are one sample of the kind
of prompt it stands for. Seeds alone miss it (two seeds that judge the same 48 prompts alike have a
std of 0, whatever 48 prompts could tell), so for shares the interval adds, in quadrature, the
normal 95 % half-width over prompts of each prompt's outcome averaged over the seeds (for a
difference, of each prompt's paired difference): ``sqrt(h_seeds² + h_prompts²)``.

With two seeds ``t`` is 12.7: an honest interval is wide, and "inside the noise" is the usual
verdict until more seeds (or prompts) are run.

A difference inside the noise is not "no effect": it is "no effect this large". ``Difference``
states how large: ``detectable``, the smallest true difference that this many seeds and prompts
would tell apart from 0 (the interval excluding 0) in 80 % of repetitions, ``h + z(0.8) · h / t``
for a half-width ``h`` of ``t`` standard errors (the power's normal approximation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# Student's t, 97.5th percentile, for 1-30 degrees of freedom (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964
_Z80 = 0.841621  # the normal's 80th percentile: 80 % power


def t975(df: int) -> float:
    """Student's t 97.5th percentile for ``df`` >= 1 degrees of freedom (beyond 30: the normal
    quantile with the first two terms of its Cornish-Fisher expansion in ``1/df``, within 0.0005
    of the exact value).

    Raises:
        ValueError: ``df`` < 1.
    """
    if df < 1:
        raise ValueError(f"t975 needs at least one degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def ci95_half_width(values: Sequence[float],
                    outcomes: Sequence[Sequence[float]] | None = None) -> float | None:
    """Half-width of the 95 % interval of the mean of ``values`` (one per seed; None for fewer
    than 2): Student's t over the seeds, combined with ``prompt_half_width(outcomes)`` when the
    per-seed, per-prompt ``outcomes`` behind a share are given."""
    if len(values) < 2:
        return None
    seeds = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return seeds if outcomes is None else math.hypot(seeds, prompt_half_width(outcomes))


def prompt_half_width(outcomes: Sequence[Sequence[float]]) -> float:
    """95 % normal half-width, over prompts, of the mean of each prompt's outcome averaged over
    the seeds; ``outcomes[seed][prompt]`` (0/1 for a share, or a paired difference of two).

    Raises:
        ValueError: the seeds judged different numbers of prompts.
    """
    if len({len(row) for row in outcomes}) != 1:
        raise ValueError("every seed must have judged the same prompts")
    per_prompt = [statistics.fmean(column) for column in zip(*outcomes)]
    if len(per_prompt) < 2:
        return 0.0
    return _Z975 * statistics.stdev(per_prompt) / math.sqrt(len(per_prompt))


@dataclass(frozen=True)
class Difference:
    """``a - b`` seed by seed: its mean, the 95 % interval's bounds (None with one seed), whether
    the interval holds 0 (True with one seed: nothing can be told apart) and the smallest true
    difference detectable with 80 % power (None with one seed)."""

    mean: float
    low: float | None
    high: float | None
    seeds: int

    @property
    def inside_noise(self) -> bool:
        return self.low is None or self.low <= 0.0 <= self.high

    @property
    def detectable(self) -> float | None:
        if self.low is None:
            return None
        half = (self.high - self.low) / 2
        return half * (1.0 + _Z80 / t975(self.seeds - 1))

    def to_json(self) -> dict:
        return {**asdict(self), "inside_noise": self.inside_noise, "detectable": self.detectable}

    @classmethod
    def from_json(cls, data: dict) -> Difference:
        return cls(data["mean"], data["low"], data["high"], data["seeds"])

    def describe(self, digits: int = 3) -> str:
        """E.g. ``-0.031 (95 % CI -0.180 to +0.118, 3 seeds): inside the noise; detectable
        ±0.192``."""
        head = f"{self.mean:+.{digits}f}"
        if self.low is None:
            return f"{head} (one seed: no interval, nothing told apart)"
        verdict = "inside the noise" if self.inside_noise else "outside the noise"
        return (f"{head} (95 % CI {self.low:+.{digits}f} to {self.high:+.{digits}f}, "
                f"{self.seeds} seeds): {verdict}; detectable ±{self.detectable:.{digits}f}")


def mean_difference(diffs: Sequence[float],
                    outcomes: Sequence[Sequence[float]] | None = None) -> Difference:
    """The mean of per-seed differences ``diffs`` (each seed's per-prompt differences in
    ``outcomes``, if any, add the prompts' noise) and its 95 % interval.

    Raises:
        ValueError: ``diffs`` is empty.
    """
    if not diffs:
        raise ValueError("a difference needs at least one seed")
    mean = statistics.fmean(diffs)
    half = ci95_half_width(diffs, outcomes)
    if half is None:
        return Difference(mean, None, None, len(diffs))
    return Difference(mean, mean - half, mean + half, len(diffs))


def paired_difference(a: Sequence[float], b: Sequence[float],
                      a_outcomes: Sequence[Sequence[float]] | None = None,
                      b_outcomes: Sequence[Sequence[float]] | None = None) -> Difference:
    """The difference ``a[i] - b[i]`` of two arms' per-seed values (same seeds, same order); with
    both arms' per-seed, per-prompt outcomes (same prompts), the prompts' noise joins the interval.

    Raises:
        ValueError: the sequences are empty or of different lengths.
    """
    if not a or len(a) != len(b):
        raise ValueError(f"paired seeds needed, got {len(a)} and {len(b)} values")
    outcomes = None
    if a_outcomes is not None and b_outcomes is not None:
        outcomes = [[x - y for x, y in zip(row_a, row_b)]
                    for row_a, row_b in zip(a_outcomes, b_outcomes)]
    return mean_difference([x - y for x, y in zip(a, b)], outcomes)
