"""Fit the security probe (harmful vs benign, logistic regression on last-token features) at every
decoder layer, score it on the held-out split, and choose the probe layer. Writes probe.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.analysis.config import PROBE_OPTIONS, AnalysisConfig
from mlr.analysis.pipeline import PROBE_FILE, run_probe
from mlr.analysis.probe import ProbeResult
from mlr.commands.common import print_table
from mlr.options import add_options, from_options
from mlr.sample_size import warn

NAME = "probe"
HELP = "fit the security probe per layer and choose the probe layer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, AnalysisConfig, only=PROBE_OPTIONS)


def print_probe(result: ProbeResult) -> None:
    print_table(["layer", "held-out acc", "AUC", "log-loss", ""],
                [[s.layer, f"{s.accuracy:.3f}", f"{s.auc:.3f}", f"{s.log_loss:.4f}",
                  "<- probe" if s.layer == result.layer else ""] for s in result.scores])


def run(args: argparse.Namespace) -> int:
    config = from_options(AnalysisConfig, args)
    result = run_probe(config)
    print_probe(result)
    print(f"probe layer {result.layer}; wrote {Path(config.out) / PROBE_FILE}")
    warn(result.note)
    warn(result.chance_note)
    return 0
