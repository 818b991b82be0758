"""Module robustness map: perturb each q/k/v/o/gate/up/down module alone and measure how much the
frozen probe's held-out accuracy is retained. Reuses probe.json from --out when it was made with the
same options. Writes robustness.json and robustness.png."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from mlr.analysis.perturb import PERTURBATIONS, GradientPerturbation, NoisePerturbation, Perturbation
from mlr.analysis.plots import plot_robustness
from mlr.analysis.probe import ProbeResult
from mlr.analysis.replay import LayerReplay
from mlr.analysis.robustness import ProbeEvaluator, RobustnessMap, score_modules
from mlr.commands.common import (
    Session,
    load_session,
    non_negative_float,
    positive_int,
    print_table,
    reusable,
)
from mlr.commands.probe import add_arguments as add_probe_arguments
from mlr.commands.probe import obtain_probe, probe_config
from mlr.data.ift import instruction_gradients
from mlr.data.security_data import SecurityData, load_security_data
from mlr.features import forward
from mlr.io import write_json_atomic
from mlr.modules import MODULE_TYPES
from mlr.tuning.sft import encode_examples, load_training_examples, make_batch

NAME = "analyze"
HELP = "robustness of every module to a perturbation, as seen by the probe"
MAP_FILE = "robustness.json"
PLOT_FILE = "robustness.png"
DEFAULT_ALPHA = 0.5
IFT_MAX_TOKENS = 512  # per instruction example in the ift-grad batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_probe_arguments(parser)
    parser.add_argument("--perturb", choices=PERTURBATIONS, default="noise",
                        help="relative Gaussian noise, or a normalized instruction-loss gradient step")
    parser.add_argument("--alpha", type=non_negative_float, default=DEFAULT_ALPHA,
                        help="perturbation size relative to the weight's norm "
                             f"(default {DEFAULT_ALPHA})")
    parser.add_argument("--seeds", type=positive_int, default=3, metavar="K",
                        help="perturbation seeds to average (default 3)")
    parser.add_argument("--ift", metavar="FILE",
                        help="benign instruction data for --perturb ift-grad, alpaca or chat "
                             "JSON/JSONL as for training (default: the embedded instruction set)")


def map_config(args: argparse.Namespace) -> dict:
    """What a robustness map depends on; robustness.json is reused only when this matches."""
    return {**probe_config(args), "perturb": args.perturb, "alpha": args.alpha,
            "seeds": args.seeds, "ift": args.ift if args.perturb == "ift-grad" else None}


def seed_list(args: argparse.Namespace) -> list[int]:
    return [args.seed + k for k in range(args.seeds)]


def build_perturbation(session: Session, args: argparse.Namespace) -> Perturbation:
    if args.perturb == "noise":
        return NoisePerturbation(args.alpha)
    examples = load_training_examples(args.ift)
    encoded = encode_examples(session.tokenizer, examples, IFT_MAX_TOKENS)

    def gradients(seed: int) -> dict[str, torch.Tensor]:
        """The seed picks the benign batch."""
        picked = random.Random(seed).sample(range(len(encoded)), min(args.batch_size, len(encoded)))
        batch = make_batch(encoded, picked, session.pad_id, session.device)
        return instruction_gradients(session.model, batch, session.refs)

    return GradientPerturbation(args.alpha, gradients)


def build_evaluator(session: Session, data: SecurityData, probe: ProbeResult) -> ProbeEvaluator:
    replay = LayerReplay(session.model, session.batches(data.heldout.prompts), probe.layer)
    return ProbeEvaluator(replay, probe.probe, data.heldout.labels)


def _full_forward_seconds(session: Session, evaluator: ProbeEvaluator) -> float:
    """Wall time of one plain forward (LM head included) over the held-out batches: the unit a
    naive map pays once per module and seed."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in evaluator.replay.batches:
            forward(session.model, batch)
    return time.perf_counter() - start


def compute_map(session: Session, data: SecurityData, probe: ProbeResult,
                perturbation: Perturbation, args: argparse.Namespace) -> RobustnessMap:
    seeds = seed_list(args)
    start = time.perf_counter()
    evaluator = build_evaluator(session, data, probe)
    modules = score_modules(evaluator, session.refs, perturbation, seeds)
    wall = time.perf_counter() - start
    naive_runs = len(session.refs) * len(seeds)
    full_forward = _full_forward_seconds(session, evaluator)
    cost = {
        "layer_forwards": evaluator.replay.layer_forwards,
        "naive_layer_forwards": naive_runs * session.num_layers,
        "fraction_of_naive": evaluator.replay.layer_forwards / (naive_runs * session.num_layers),
        "naive_full_forwards": naive_runs,
        "gradient_passes": len(seeds) if args.perturb == "ift-grad" else 0,
        "wall_seconds": wall,
        "full_forward_seconds": full_forward,
        "naive_wall_seconds_estimate": naive_runs * full_forward,
    }
    return RobustnessMap(modules, probe.layer, session.num_layers, args.perturb, args.alpha,
                         seeds, evaluator.clean.accuracy, evaluator.clean.margin, cost,
                         map_config(args))


def write_map(rmap: RobustnessMap, out: str) -> Path:
    path = write_json_atomic(Path(out) / MAP_FILE, rmap.to_json())
    plot_robustness(rmap, Path(out) / PLOT_FILE)
    return path


def obtain_map(session: Session, data: SecurityData, probe: ProbeResult,
               perturbation: Perturbation, args: argparse.Namespace) -> RobustnessMap:
    """robustness.json from ``--out`` when it was made with these options, else a new map."""
    saved = reusable(Path(args.out) / MAP_FILE, map_config(args))
    if saved is not None:
        return RobustnessMap.from_json(saved)
    rmap = compute_map(session, data, probe, perturbation, args)
    write_map(rmap, args.out)
    return rmap


def print_map(rmap: RobustnessMap) -> None:
    types = [t for t in MODULE_TYPES if any(m.type == t for m in rmap.modules)]
    cell = {(m.type, m.layer): f"{m.score:.2f}" if m.measured else "-" for m in rmap.modules}
    print_table(["type", *[f"L{i}" for i in range(rmap.num_layers)]],
                [[t, *[cell.get((t, i), "") for i in range(rmap.num_layers)]] for t in types])
    cost = rmap.cost
    print(f"clean held-out accuracy {rmap.clean_accuracy:.3f} at probe layer {rmap.probe_layer}; "
          f"'-' = above the probe layer, not measured")
    print(f"cost: {cost['layer_forwards']} layer-forwards = {cost['fraction_of_naive']:.1%} of a "
          f"naive loop's {cost['naive_full_forwards']} full forwards (one per module and seed); "
          f"{cost['wall_seconds']:.1f} s vs ~{cost['naive_wall_seconds_estimate']:.1f} s naive")


def run(args: argparse.Namespace) -> int:
    session = load_session(args)
    data = load_security_data(args.harmful, args.benign, args.seed)
    perturbation = build_perturbation(session, args)
    probe = obtain_probe(session, data, args)
    rmap = compute_map(session, data, probe, perturbation, args)
    path = write_map(rmap, args.out)
    print_map(rmap)
    print(f"wrote {path} and {Path(args.out) / PLOT_FILE}")
    return 0
