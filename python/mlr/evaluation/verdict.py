"""What the report concludes from the arms: seed-paired differences with their power, and how far
the teacher-forced refusal score ranks the models as generated ASR does.

- ``differences``: each pair of ``COMPARISONS`` present (first arm minus second, same seeds) on
  ``DIFFERENCE_METRICS``, as ``mlr.evaluation.intervals.Difference`` (mean, 95 % interval, inside
  the noise or not, the smallest difference detectable with 80 % power).
- ``refusal_score_agreement``: Spearman's rank correlation between ``refusal_score`` and ``asr``
  over every fine-tuned (arm, seed) model and over the arms' means; a score that tracks ASR
  correlates negatively (a higher lean to refusal, a lower ASR).
"""

from __future__ import annotations

import math
from typing import Any

from mlr.analysis.first_order import spearman
from mlr.evaluation.intervals import Difference, paired_difference

# Seed-paired differences the report gives (first arm minus second).
COMPARISONS = (("ml_lr", "uniform_lr"), ("ml_lr", "vanilla"), ("swat", "uniform_lr"),
               ("swat", "vanilla"), ("sppft", "vanilla"), ("safeinstr", "vanilla"),
               ("ml_lr", "sppft"), ("ml_lr", "safeinstr"))
DIFFERENCE_METRICS = ("asr", "refusal_score", "heldout_loss")
_NAMES = {"asr": "ASR", "refusal_score": "refusal score", "heldout_loss": "held-out loss"}


def differences(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``COMPARISONS`` present in ``arms`` with the same seeds, as ``{"ml_lr-uniform_lr": {"asr":
    Difference.to_json(), ...}}`` (a metric an arm lacks is left out)."""
    out = {}
    for first, second in COMPARISONS:
        if first not in arms or second not in arms or arms[first]["seeds"] != arms[second]["seeds"]:
            continue
        a, b = arms[first], arms[second]
        out[f"{first}-{second}"] = {
            metric: paired_difference(a[f"{metric}_per_seed"], b[f"{metric}_per_seed"],
                                      a.get(f"{metric}_outcomes"),
                                      b.get(f"{metric}_outcomes")).to_json()
            for metric in DIFFERENCE_METRICS
            if a.get(metric) is not None and b.get(metric) is not None}
    return out


def refusal_score_agreement(arms: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Spearman of ``refusal_score`` against ``asr`` over the fine-tuned models (every arm but
    ``aligned``, every seed) and over the arms' means; None when fewer than 3 models carry both."""
    tuned = [arm for name, arm in arms.items() if name != "aligned"
             and arm.get("refusal_score") is not None and arm.get("asr") is not None]
    pairs = [(score, asr) for arm in tuned
             for score, asr in zip(arm["refusal_score_per_seed"], arm["asr_per_seed"])]
    if len(pairs) < 3:
        return None
    result = {"models": len(pairs), "spearman_models": _finite(spearman(*zip(*pairs))),
              "arms": len(tuned), "spearman_arms": None}
    if len(tuned) >= 3:
        result["spearman_arms"] = _finite(spearman([a["refusal_score"] for a in tuned],
                                                   [a["asr"] for a in tuned]))
    return result


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def difference_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    """The seed-paired differences as a markdown list: is each one outside the noise, and how
    large a difference could have been seen?"""
    if not found:
        return []
    lines = ["**Differences, seed by seed** (first arm minus second; a 95 % t interval over the "
             "paired seeds, for the shares and the refusal score combined with the noise of the "
             "sample of prompts; a difference whose interval holds 0 is inside the noise; "
             "*detectable*: the smallest true difference these seeds and prompts would have told "
             "apart from 0 with 80 % power):", ""]
    digits = {"asr": 3, "refusal_score": 3, "heldout_loss": 4}
    for pair, metrics in found.items():
        first, second = pair.split("-")
        parts = [f"{_NAMES[name]} "
                 f"{Difference.from_json(metrics[name]).describe(digits[name])}"
                 for name in DIFFERENCE_METRICS if name in metrics]
        lines.append(f"- `{first}` − `{second}`: {'; '.join(parts)}.")
    return lines + [""]


def agreement_lines(agreement: dict[str, Any] | None) -> list[str]:
    """The refusal score's agreement with ASR, in one paragraph."""
    if agreement is None:
        return []
    arms = agreement["spearman_arms"]
    over_arms = "" if arms is None else \
        f", and {arms:+.2f} over the {agreement['arms']} arms' means"
    models = agreement["spearman_models"]
    return [f"**Refusal score against ASR.** Spearman's rank correlation between the refusal "
            f"score and the generated answers' ASR is "
            f"{'n/a' if models is None else f'{models:+.2f}'} over the {agreement['models']} "
            f"fine-tuned models{over_arms} (−1: the score ranks the models exactly as ASR "
            "does, in reverse).", ""]
