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

from mlr.evaluation.intervals import Difference, paired_difference
from mlr.rank_correlation import spearman

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
    """Spearman of ``refusal_score`` against ``asr`` and against ``refusal_rate`` (the share of
    generated answers that refuse) over the fine-tuned models (every arm but ``aligned``, every
    seed), and against ``asr`` over the arms' means; None when fewer than 3 models carry them."""
    tuned = [arm for name, arm in arms.items() if name != "aligned"
             and arm.get("refusal_score") is not None and arm.get("asr") is not None]
    scores = [s for arm in tuned for s in arm["refusal_score_per_seed"]]
    if len(scores) < 3:
        return None
    asr = [a for arm in tuned for a in arm["asr_per_seed"]]
    result = {"models": len(scores), "spearman_models": _finite(spearman(scores, asr)),
              "spearman_refusal_rate": None, "arms": len(tuned), "spearman_arms": None}
    if all(arm.get("refusal_rate") is not None for arm in tuned):
        rates = [r for arm in tuned for r in arm["refusal_rate_per_seed"]]
        result["spearman_refusal_rate"] = _finite(spearman(scores, rates))
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
    """The refusal score's agreement with the generated answers, in one paragraph."""
    if agreement is None:
        return []

    def rho(value: float | None) -> str:
        return "n/a (a constant side)" if value is None else f"{value:+.2f}"

    arms = agreement["spearman_arms"]
    over_arms = "" if arms is None else f", {rho(arms)} over the {agreement['arms']} arms' means"
    rate = agreement.get("spearman_refusal_rate")
    with_rate = "" if rate is None else \
        f"; against the share of generated answers that refuse, {rho(rate)} (+1: the same order)"
    return [f"**Refusal score against the generated answers.** Spearman's rank correlation of the "
            f"refusal score with ASR is {rho(agreement['spearman_models'])} over the "
            f"{agreement['models']} fine-tuned models{over_arms} (−1: the same order, reversed)"
            f"{with_rate}. Where every ASR is near 0, ASR has little order to agree with.", ""]
