"""Proxy-guided search for Mods_Robust: add modules from the most robust down while the probe's
accuracy with all of them perturbed together stays >= tau x clean, within an optional parameter
budget. Reuses robustness.json (and probe.json) from --out when made with the same options.
Writes mods_robust.json and search.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.analysis.plots import plot_search
from mlr.analysis.search import DEFAULT_TAU, SearchResult, grow_robust_set, rank_modules
from mlr.commands.analyze import add_arguments as add_analyze_arguments
from mlr.commands.analyze import (
    build_evaluator,
    build_perturbation,
    map_config,
    obtain_map,
    seed_list,
)
from mlr.commands.common import load_session, print_table, unit_fraction
from mlr.commands.probe import obtain_probe
from mlr.data.security_data import load_security_data
from mlr.errors import MlrInputError
from mlr.io import write_json_atomic

NAME = "search"
HELP = "grow Mods_Robust from the most robust module while the probe stays accurate"
RESULT_FILE = "mods_robust.json"
PLOT_FILE = "search.png"
SHOWN_MODULES = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_analyze_arguments(parser)
    parser.add_argument("--tau", type=unit_fraction, default=DEFAULT_TAU,
                        help=f"keep accuracy >= tau x clean accuracy (default {DEFAULT_TAU})")
    parser.add_argument("--budget", type=unit_fraction, metavar="FRACTION",
                        help="largest fraction of the module parameters Mods_Robust may hold")


def print_result(result: SearchResult) -> None:
    accepted = [p for p in result.curve if p.added is not None and p.accepted]
    rows = [[p.step, p.added, f"{p.accuracy:.3f}", f"{p.param_fraction:.1%}"]
            for p in accepted[:SHOWN_MODULES]]
    print_table(["#", "module", "accuracy", "params"], rows)
    if len(accepted) > SHOWN_MODULES:
        print(f"... and {len(accepted) - SHOWN_MODULES} more")
    print(f"Mods_Robust: {len(result.modules)} modules, {result.param_fraction:.1%} of module "
          f"parameters; clean accuracy {result.clean_accuracy:.3f}, threshold "
          f"{result.tau * result.clean_accuracy:.3f}; stopped: {result.stop_reason}")


def run(args: argparse.Namespace) -> int:
    seeds = seed_list(args)
    session = load_session(args)
    data = load_security_data(args.harmful, args.benign, args.seed)
    perturbation = build_perturbation(session, args)
    probe = obtain_probe(session, data, args)
    rmap = obtain_map(session, data, probe, perturbation, args)
    evaluator = build_evaluator(session, data, probe)
    refs = {ref.name: ref for ref in session.refs}
    if set(refs) != {m.name for m in rmap.modules}:
        raise MlrInputError(f"{Path(args.out) / 'robustness.json'} lists other modules than "
                            "the model has")

    def evaluate(names: list[str]) -> float:
        return evaluator.mean_accuracy([refs[n] for n in names], perturbation, seeds)

    total_params = sum(ref.numel for ref in session.refs)
    result = grow_robust_set(rank_modules(rmap.modules), evaluate, evaluator.clean.accuracy,
                             total_params, args.tau, args.budget)
    config = {**map_config(args), "tau": args.tau, "budget": args.budget}
    path = write_json_atomic(Path(args.out) / RESULT_FILE, result.to_json(config))
    plot_search(result, Path(args.out) / PLOT_FILE)
    print_result(result)
    print(f"wrote {path} and {Path(args.out) / PLOT_FILE}")
    return 0
