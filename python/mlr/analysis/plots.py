"""Figures of the analysis: the robustness heatmap and the search curve (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from mlr.analysis.robustness import RobustnessMap
from mlr.analysis.search import SearchResult
from mlr.io import save_figure_atomic
from mlr.modules import MODULE_TYPES
from mlr.text import plural

matplotlib.use("Agg")  # files only, never a window

_ANNOTATE_MAX_CELLS = 160


def plot_robustness(rmap: RobustnessMap, path: str | os.PathLike) -> None:
    """Heatmap of robustness score, module type (rows) × layer (columns); modules above the probe
    layer (not measured) are left blank and hatched."""
    types = [t for t in MODULE_TYPES if any(m.type == t for m in rmap.modules)]
    grid = np.full((len(types), rmap.num_layers), np.nan)
    for m in rmap.modules:
        if m.measured:
            grid[types.index(m.type), m.layer] = m.score
    figure, axes = plt.subplots(figsize=(max(5.0, 0.45 * rmap.num_layers + 2), 0.5 * len(types) + 2))
    axes.set_facecolor("#dddddd")
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis",
                        interpolation="nearest")
    unmeasured = rmap.probe_layer + 1 < rmap.num_layers  # layers above the probe's
    if unmeasured:
        axes.axvspan(rmap.probe_layer + 0.5, rmap.num_layers - 0.5, fill=False, hatch="//",
                     edgecolor="#999999", linewidth=0)
        axes.axvline(rmap.probe_layer + 0.5, color="red", linewidth=1)
    if grid.size <= _ANNOTATE_MAX_CELLS:
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value < np.nanmean(grid) else "black")
    axes.set_yticks(range(len(types)), types)
    axes.set_xticks(range(rmap.num_layers))
    axes.set_xlabel(f"layer (probe at {rmap.probe_layer}; right of the red line: not measured)"
                    if unmeasured else f"layer (probe at {rmap.probe_layer}, the last layer)")
    axes.set_title(f"robustness: probe likelihood retained ({rmap.method}, {rmap.perturb}, "
                   f"alpha={rmap.alpha}, {plural(len(rmap.seeds), 'seed')})")
    figure.colorbar(image, ax=axes, label="score")
    save_figure_atomic(path, figure)
    plt.close(figure)


def plot_search(result: SearchResult, path: str | os.PathLike) -> None:
    """Likelihood retained and accuracy retained against the share of module parameters as modules
    join Mods_Robust, with the tau threshold and the rejected step."""
    fractions = [p.param_fraction for p in result.curve]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(fractions, [p.score for p in result.curve], marker="o", markersize=3,
              label="likelihood retained")
    axes.plot(fractions, [p.accuracy / result.clean_accuracy for p in result.curve], marker=".",
              markersize=3, label="accuracy retained")
    rejected = [p for p in result.curve if not p.accepted]
    if rejected:
        axes.plot([p.param_fraction for p in rejected], [p.score for p in rejected], "rx",
                  markersize=9, label="rejected")
    axes.axhline(result.tau, color="gray", linestyle="--", label=f"tau = {result.tau}")
    axes.set_xlabel("share of module parameters perturbed together (most robust first)")
    axes.set_ylabel("retained, perturbed / clean")
    axes.set_title(f"Mods_Robust: {plural(len(result.modules), 'module')}, "
                   f"{result.param_fraction:.1%} of module parameters (stop: {result.stop_reason})")
    axes.legend(loc="lower left")
    save_figure_atomic(path, figure)
    plt.close(figure)
