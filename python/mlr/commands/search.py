"""Proxy-guided search for Mods_Robust: add modules from the most robust down while the probe's
held-out likelihood with all of them perturbed together stays >= tau x clean, within an optional parameter
budget, and its stability over bootstrap draws of the held-out prompts. Reuses robustness.json (and
probe.json) from --out when made with the same options. Writes mods_robust.json and search.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.analysis.config import SEARCH_OPTIONS, AnalysisConfig
from mlr.analysis.pipeline import SEARCH_FILE, SEARCH_PLOT_FILE, run_search
from mlr.analysis.search import SearchResult
from mlr.commands.common import print_table
from mlr.options import add_options, from_options

NAME = "search"
HELP = "grow Mods_Robust from the most robust module while the probe stays accurate"
SHOWN_MODULES = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, AnalysisConfig, only=SEARCH_OPTIONS)


def print_result(result: SearchResult) -> None:
    accepted = [p for p in result.curve if p.added is not None and p.accepted]
    rows = [[p.step, p.added, f"{p.score:.3f}", f"{p.accuracy:.3f}", f"{p.param_fraction:.1%}"]
            for p in accepted[:SHOWN_MODULES]]
    print_table(["#", "module", "likelihood kept", "accuracy", "params"], rows)
    if len(accepted) > SHOWN_MODULES:
        print(f"... and {len(accepted) - SHOWN_MODULES} more")
    print(f"{result.summary} (clean accuracy {result.clean_accuracy:.3f})")


def run(args: argparse.Namespace) -> int:
    config = from_options(AnalysisConfig, args)
    analysis = run_search(config)
    print_result(analysis.search)
    if analysis.stability is not None:
        print(f"stability: {analysis.stability.summary(analysis.search.modules)}")
    print(f"wrote {Path(config.out) / SEARCH_FILE} and {Path(config.out) / SEARCH_PLOT_FILE}")
    return 0
