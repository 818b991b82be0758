"""Module robustness map: perturb each q/k/v/o/gate/up/down module alone and measure how much of
the frozen probe's held-out likelihood is retained (or estimate it to first order from one
gradient). Reuses probe.json from --out when it was made with the
same options. Writes robustness.json and robustness.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.analysis.config import MAP_OPTIONS, AnalysisConfig
from mlr.analysis.pipeline import MAP_FILE, MAP_PLOT_FILE, run_map
from mlr.analysis.robustness import RobustnessMap
from mlr.commands.common import print_table
from mlr.modules import MODULE_TYPES
from mlr.options import add_options, from_options

NAME = "analyze"
HELP = "robustness of every module to a perturbation, as seen by the probe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, AnalysisConfig, only=MAP_OPTIONS)


def print_map(rmap: RobustnessMap) -> None:
    types = [t for t in MODULE_TYPES if any(m.type == t for m in rmap.modules)]
    cell = {(m.type, m.layer): f"{m.score:.3f}" if m.measured else "-" for m in rmap.modules}
    print_table(["type", *[f"L{i}" for i in range(rmap.num_layers)]],
                [[t, *[cell.get((t, i), "") for i in range(rmap.num_layers)]] for t in types])
    measured = [m for m in rmap.modules if m.measured]
    print(f"score = probe likelihood retained ({rmap.method} map); clean held-out accuracy "
          f"{rmap.clean_accuracy:.3f}, log-loss {rmap.clean_log_loss:.4f} on {rmap.heldout_rows} "
          f"prompts at probe layer {rmap.probe_layer}; '-' = above the probe layer, not measured")
    if measured:
        errors = sorted(m.score_se for m in measured if m.score_se is not None)
        spread = f"scores {min(m.score for m in measured):.3f}..{max(m.score for m in measured):.3f}"
        if errors:
            spread += f", median standard error {errors[len(errors) // 2]:.4f}"
        print(spread)
    if rmap.comparison is not None:
        c = rmap.comparison
        print(f"first-order map ({c['first_order_seconds']:.1f} s) against this one over "
              f"{c['modules']} modules: Spearman {c['spearman_score']:.3f} on the score, "
              f"{c['spearman_change']:.3f} on the RMS change")
    cost = rmap.cost
    print(f"cost: {cost['layer_forwards']} layer-forwards = {cost['fraction_of_naive']:.1%} of a "
          f"naive loop's {cost['naive_full_forwards']} full forwards (one per module and seed); "
          f"{cost['wall_seconds']:.1f} s vs ~{cost['naive_wall_seconds_estimate']:.1f} s naive")


def run(args: argparse.Namespace) -> int:
    config = from_options(AnalysisConfig, args)
    rmap = run_map(config)
    print_map(rmap)
    print(f"wrote {Path(config.out) / MAP_FILE} and {Path(config.out) / MAP_PLOT_FILE}")
    return 0
