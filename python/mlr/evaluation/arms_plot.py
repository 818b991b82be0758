"""``arms.png``: every arm's mean with the 95 % interval of report.md, and every seed's safety
against usability.

The metric panels (ASR, refusal score, held-out loss, over-refusal) draw each arm's mean as a dot
and the report's interval (``{metric}_ci95``: Student's t over the seeds, for the shares and the
refusal score combined with the noise of the sample of prompts) as its bar, each seed as a small
point beside it; an arm without an interval (one model, or one seed) says so in words rather than
showing a bar of zero width that would look exact. No axis is a bar chart, so none needs to start
at zero. In the scatter every arm has its own marker shape and size, hollow, so that arms with the
same values stay visible as nested shapes. Arms are labelled as in the report's tables (``control
(uniform_lr)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mlr.io import save_figure_atomic

matplotlib.use("Agg")  # files only, never a window

LABELS = {"aligned": "aligned", "vanilla": "vanilla", "ml_lr": "ML-LR (ml_lr)",
          "frozen": "frozen", "swat": "SWAT (swat)", "uniform_lr": "control (uniform_lr)",
          "sppft": "SPPFT (sppft)", "safeinstr": "SafeInstr (safeinstr)"}
COLORS = {"aligned": "#888888", "vanilla": "#d62728", "ml_lr": "#2ca02c",
          "frozen": "#1f77b4", "swat": "#9467bd", "uniform_lr": "#ff7f0e", "sppft": "#8c564b",
          "safeinstr": "#17becf"}
MARKERS = {"aligned": "o", "vanilla": "o", "ml_lr": "s", "frozen": "^", "swat": "D",
           "uniform_lr": "v", "sppft": "P", "safeinstr": "X"}
# (metric, panel title, x limits; None: fitted to the data). The aligned model's held-out loss is
# left out: it never saw the tasks, and its loss would squeeze the arms' differences flat.
PANELS = (("asr", "attack success rate (lower is safer)", (0.0, 1.0)),
          ("refusal_score", "refusal score, teacher-forced (higher is safer)", (0.0, 1.0)),
          ("heldout_loss", "held-out loss, fine-tuned arms (lower is better)", None),
          ("over_refusal", "over-refusal (lower is better)", (0.0, 1.0)))
CAPTION = ("dot: mean; bar: its 95 % interval, as in report.md (Student's t over the seeds; for "
           "ASR and over-refusal combined with the noise of the sample of prompts); small points: "
           "each seed")
PLOT_FILE = "arms.png"
SMOKE_TEST = "SMOKE TEST (--quick): every stage ran on little data; these numbers mean nothing"


def arms_figure(arms: dict[str, dict[str, Any]], smoke_test: bool = False) -> Figure:
    """The figure of ``arms`` (the report's per-arm summaries, ``summarize_arm``, in the order
    to show them)."""
    names = list(arms)
    figure, axes = plt.subplots(1, len(PANELS) + 1, figsize=(4.7 * (len(PANELS) + 1), 4.6))
    for axis, (metric, title, limits) in zip(axes, PANELS):
        shown = [a for a in names if (metric != "heldout_loss" or a != "aligned")
                 and arms[a].get(metric) is not None]
        _interval_panel(axis, arms, shown, metric, limits)
        axis.set_title(title, fontsize=10)
    _seed_scatter(axes[-1], arms, [a for a in names if a != "aligned"])
    figure.text(0.5, 0.01, CAPTION, ha="center", fontsize=9)
    if smoke_test:
        figure.suptitle(SMOKE_TEST, color="#b00000", fontsize=12, fontweight="bold")
    figure.tight_layout(rect=(0, 0.05, 1, 0.94 if smoke_test else 1))
    return figure


def plot_arms(arms: dict[str, dict[str, Any]], path: Path, smoke_test: bool = False) -> None:
    """Write ``arms_figure(arms, smoke_test)`` to ``path`` atomically."""
    figure = arms_figure(arms, smoke_test)
    save_figure_atomic(path, figure)
    plt.close(figure)


def _interval_panel(axis: Any, arms: dict[str, dict[str, Any]], names: list[str], metric: str,
                    limits: tuple[float, float] | None) -> None:
    """One row per arm, top to bottom in ``names`` order: the mean, its 95 % interval, the seeds."""
    rows = range(len(names) - 1, -1, -1)
    for row, name in zip(rows, names):
        arm = arms[name]
        half = arm.get(f"{metric}_ci95")
        axis.errorbar(arm[metric], row, xerr=None if half is None else half, fmt=MARKERS[name],
                      color=COLORS[name], markersize=7, capsize=4, label=name)
        axis.scatter(arm[f"{metric}_per_seed"], [row - 0.22] * len(arm[f"{metric}_per_seed"]),
                     s=12, color=COLORS[name], alpha=0.6)
        if half is None:
            what = "one model" if name == "aligned" else "one seed"
            axis.annotate(f"{what}: no interval", (arm[metric], row), xytext=(8, 6),
                          textcoords="offset points", fontsize=8, color="#555555")
    axis.set_yticks(list(rows), [LABELS[n] for n in names])
    axis.set_ylim(-0.7, len(names) - 0.4)
    axis.set_xlabel("mean and 95 % interval")
    axis.grid(axis="x", alpha=0.3)
    if limits is not None:
        axis.set_xlim(limits[0] - 0.03, limits[1] + 0.03)


def _seed_scatter(axis: Any, arms: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Each seed's (held-out loss, ASR); later arms get smaller markers, so coinciding points show
    as nested shapes instead of hiding one another."""
    for order, name in enumerate(names):
        arm = arms[name]
        axis.scatter(arm["heldout_loss_per_seed"], arm["asr_per_seed"], marker=MARKERS[name],
                     s=150 - 25 * order, facecolors="none", edgecolors=COLORS[name],
                     linewidths=1.5, label=LABELS[name])
    axis.set_xlabel("held-out loss")
    axis.set_ylabel("ASR")
    axis.set_title("each seed: safety against usability", fontsize=10)
    axis.legend(fontsize=8)
