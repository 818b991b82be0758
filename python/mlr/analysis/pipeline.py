"""The three analysis stages as a library, over an ``AnalysisConfig``; outputs in ``config.out``.

1. **probe** (``probe.json``): the security probe fitted at every decoder layer on last-token
   features, scored on the held-out split; the probe layer is the shallowest within
   ``layer_tolerance`` of the best held-out log-loss (or ``config.layer``).
2. **map** (``robustness.json``, ``robustness.png``): each module perturbed alone, scored by how
   much of the frozen probe's held-out likelihood is retained (layer inputs cached and replayed),
   or, with ``method="first-order"``, estimated from one gradient. The exact map under noise also
   computes the first-order one and records their Spearman correlation (``comparison``). A probe
   whose sets separate perfectly at layer 0 is refused unless ``config.layer`` was given.
3. **search** (``mods_robust.json``, ``search.png``): Mods_Robust grown from the most robust module
   while the probe's likelihood retained with all of them perturbed stays ≥ tau, and its
   stability: how often each module enters it when the search reruns on bootstrap draws of the
   held-out prompts (``mlr.analysis.stability``; ``stability`` in ``mods_robust.json``).

``run_probe``, ``run_map`` and ``run_search`` compute the stage asked for and reuse each earlier
stage's output from ``out`` when it was made with the same options (``AnalysisConfig.*_key``),
computing it otherwise; ``mlr probe``, ``mlr analyze``, ``mlr search`` and ``mlr run`` call them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mlr.analysis.config import AnalysisConfig
from mlr.analysis.first_order import compare_maps, first_order_scores
from mlr.analysis.perturb import (
    GradientPerturbation,
    NoisePerturbation,
    Perturbation,
    instruction_gradients,
)
from mlr.analysis.plots import plot_robustness, plot_search
from mlr.analysis.probe import ProbeResult, train_probes
from mlr.analysis.replay import LayerReplay
from mlr.analysis.robustness import ModuleScore, ProbeEvaluator, RobustnessMap, score_modules
from mlr.analysis.search import SearchResult, grow_robust_set, rank_modules
from mlr.analysis.session import Session, open_session
from mlr.analysis.stability import Stability, search_stability
from mlr.data.security_data import SecurityData
from mlr.errors import MlrInputError
from mlr.features import capture_features, forward
from mlr.instruction_loss import encode_examples, make_batch
from mlr.io import reusable, write_json_atomic
from mlr.sample_size import warn

PROBE_FILE = "probe.json"
MAP_FILE = "robustness.json"
MAP_PLOT_FILE = "robustness.png"
SEARCH_FILE = "mods_robust.json"
SEARCH_PLOT_FILE = "search.png"
INSTRUCTION_MAX_TOKENS = 512  # per instruction example in the ift-grad batch


@dataclass(frozen=True)
class Analysis:
    """What ``run_search`` produced: the probe, the robustness map, Mods_Robust and its
    stability (None with ``bootstraps`` 0)."""

    probe: ProbeResult
    robustness: RobustnessMap
    search: SearchResult
    stability: Stability | None = None


def run_probe(config: AnalysisConfig) -> ProbeResult:
    """Fit the probe afresh and write ``probe.json``.

    Raises:
        MlrInputError: as :func:`~mlr.analysis.session.open_session`: a missing, empty or
            malformed prompt file, too few prompts, an output directory that cannot be written,
            a model that cannot be loaded, or a ``layer`` the model does not have."""
    session = open_session(config)
    return _write_probe(session, fit_probe(session))


def run_map(config: AnalysisConfig) -> RobustnessMap:
    """The robustness map afresh (the probe reused when it matches), written with its plot.

    Raises:
        MlrInputError: as :func:`run_probe`, and for bad ``ift`` data with ``perturb`` ift-grad;
            when the prompt sets separate perfectly at layer 0 and ``layer`` was not given (the
            probe would read wording, not intent); or when the probe is wrong on average on the
            held-out prompts (mean signed margin <= 0)."""
    session = open_session(config, needs_instructions=True)
    perturbation = build_perturbation(session)
    probe = obtain_probe(session)
    return _write_map(config, compute_map(session, probe, perturbation))


def run_search(config: AnalysisConfig, prompts: SecurityData | None = None,
               probe_depth: float | None = None) -> Analysis:
    """Mods_Robust afresh (probe and map reused when they match), with its stability over
    ``config.bootstraps`` draws of the held-out prompts, written with its plot. ``prompts`` and
    ``probe_depth``: the probe's data already loaded and its layer as a fraction of the depth
    (``open_session``).

    Raises:
        MlrInputError: as :func:`run_map`, and when a reused robustness map lists other modules
            than the model has."""
    session = open_session(config, needs_instructions=True, prompts=prompts, probe_depth=probe_depth)
    config = session.config
    perturbation = build_perturbation(session)
    probe = obtain_probe(session)
    rmap = obtain_map(session, probe, perturbation)
    evaluator = build_evaluator(session, probe)
    result = search_robust_set(session, probe, rmap, perturbation, evaluator)
    stability = None
    if config.bootstraps:
        stability = search_stability(evaluator, session.refs, rmap.modules, perturbation,
                                     config.perturbation_seeds, result, config.bootstraps,
                                     config.seed)
    saved = result.to_json(config.search_key(session.data))
    saved["stability"] = None if stability is None else stability.to_json()
    write_json_atomic(Path(config.out) / SEARCH_FILE, saved)
    plot_search(result, Path(config.out) / SEARCH_PLOT_FILE)
    return Analysis(probe, rmap, result, stability)


# Stage 1: the probe.

def fit_probe(session: Session) -> ProbeResult:
    """Probes at every layer on the train split's features, scored on the held-out split."""
    data, layers = session.data, list(range(session.num_layers))
    train = capture_features(session.model, session.batches(data.train.prompts), layers,
                             desc="features (train)")
    heldout = capture_features(session.model, session.batches(data.heldout.prompts), layers,
                               desc="features (held-out)")
    return train_probes(train, data.train.labels, heldout, data.heldout.labels, layers,
                        session.config.layer, session.config.layer_tolerance)


def obtain_probe(session: Session) -> ProbeResult:
    """``probe.json`` from ``out`` when made with these options, else a new fit (written)."""
    config = session.config
    saved = reusable(Path(config.out) / PROBE_FILE, config.probe_key(session.data))
    if saved is not None:
        return ProbeResult.from_json(saved)
    return _write_probe(session, fit_probe(session))


def _write_probe(session: Session, result: ProbeResult) -> ProbeResult:
    config = session.config
    key = config.probe_key(session.data)
    write_json_atomic(Path(config.out) / PROBE_FILE, result.to_json(key))
    return result


# Stage 2: the robustness map.

def build_perturbation(session: Session) -> Perturbation:
    """Relative noise, or a gradient step on a benign batch that the seed picks."""
    config = session.config
    if config.perturb == "noise":
        return NoisePerturbation(config.alpha)
    encoded = encode_examples(session.tokenizer, session.instructions, INSTRUCTION_MAX_TOKENS)

    def gradients(seed: int) -> dict[str, torch.Tensor]:
        picked = random.Random(seed).sample(range(len(encoded)),
                                            min(config.batch_size, len(encoded)))
        batch = make_batch(encoded, picked, session.pad_id, config.device)
        return instruction_gradients(session.model, batch, session.refs)

    return GradientPerturbation(config.alpha, gradients)


def build_evaluator(session: Session, probe: ProbeResult) -> ProbeEvaluator:
    """The frozen probe on the held-out split (at most ``heldout_limit`` prompts), replaying from
    cached layer inputs."""
    heldout = session.data.heldout.balanced_subset(session.config.heldout_limit or None)
    replay = LayerReplay(session.model, session.batches(heldout.prompts), probe.layer)
    return ProbeEvaluator(replay, probe.probe, heldout.labels)


def check_probe_reads_intent(session: Session, probe: ProbeResult) -> None:
    """Raise ``MlrInputError`` (the probe's ``wording_note``) when the sets separate perfectly at
    layer 0 and the probe layer was chosen, not given: a map of that probe maps noise."""
    if probe.note is not None and session.config.layer is None:
        raise MlrInputError(f"{probe.note}; --layer maps that probe anyway")


def _full_forward_seconds(session: Session, evaluator: ProbeEvaluator) -> float:
    """Wall time of one plain forward (LM head included) over the held-out batches: the unit a
    naive map pays once per module and seed."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in evaluator.replay.batches:
            forward(session.model, batch)
    return time.perf_counter() - start


def _first_order(session: Session, probe: ProbeResult,
                 evaluator: ProbeEvaluator) -> list[ModuleScore]:
    """The first-order map on the evaluator's held-out batches."""
    replay = evaluator.replay
    return first_order_scores(session.model, replay.batches, probe.probe, evaluator.labels,
                              probe.layer, session.refs, session.config.alpha)


def compute_map(session: Session, probe: ProbeResult, perturbation: Perturbation) -> RobustnessMap:
    """Score every module, with the cost against a naive loop of full forwards; the exact map
    under noise also times the first-order map and records how the two rank modules."""
    config, seeds = session.config, session.config.perturbation_seeds
    check_probe_reads_intent(session, probe)
    warn(probe.chance_note)
    start = time.perf_counter()
    evaluator = build_evaluator(session, probe)
    comparison = None
    if config.method == "first-order":
        modules = _first_order(session, probe, evaluator)
    else:
        modules = score_modules(evaluator, session.refs, perturbation, seeds)
    wall = time.perf_counter() - start
    if config.method == "exact" and config.perturb == "noise":
        tick = time.perf_counter()
        comparison = {**compare_maps(modules, _first_order(session, probe, evaluator)),
                      "first_order_seconds": time.perf_counter() - tick}
    naive_runs = len(session.refs) * len(seeds)
    full_forward = _full_forward_seconds(session, evaluator)
    cost = {
        "layer_forwards": evaluator.replay.layer_forwards,
        "naive_layer_forwards": naive_runs * session.num_layers,
        "fraction_of_naive": evaluator.replay.layer_forwards / (naive_runs * session.num_layers),
        "naive_full_forwards": naive_runs,
        "gradient_passes": len(seeds) if config.perturb == "ift-grad" else 0,
        "wall_seconds": wall,
        "full_forward_seconds": full_forward,
        "naive_wall_seconds_estimate": naive_runs * full_forward,
    }
    return RobustnessMap(modules, probe.layer, session.num_layers, config.perturb, config.alpha,
                         seeds, evaluator.clean.accuracy, evaluator.clean.margin,
                         evaluator.clean.log_loss, evaluator.replay.rows, config.method, cost,
                         config.map_key(session.data), comparison)


def obtain_map(session: Session, probe: ProbeResult, perturbation: Perturbation) -> RobustnessMap:
    """``robustness.json`` from ``out`` when made with these options, else a new map (written)."""
    config = session.config
    saved = reusable(Path(config.out) / MAP_FILE, config.map_key(session.data))
    if saved is not None:
        return RobustnessMap.from_json(saved)
    return _write_map(config, compute_map(session, probe, perturbation))


def _write_map(config: AnalysisConfig, rmap: RobustnessMap) -> RobustnessMap:
    write_json_atomic(Path(config.out) / MAP_FILE, rmap.to_json())
    plot_robustness(rmap, Path(config.out) / MAP_PLOT_FILE)
    return rmap


# Stage 3: the search.

def search_robust_set(session: Session, probe: ProbeResult, rmap: RobustnessMap,
                      perturbation: Perturbation, evaluator: ProbeEvaluator) -> SearchResult:
    """Grow Mods_Robust along the map's ranking, scored by ``evaluator`` (``build_evaluator``).
    Raises ``MlrInputError`` when the map lists other modules than the model has."""
    config = session.config
    refs = {ref.name: ref for ref in session.refs}
    if set(refs) != {m.name for m in rmap.modules}:
        raise MlrInputError(f"{Path(config.out) / MAP_FILE} lists other modules than the model has")

    def retained_with(names: list[str]) -> tuple[float, float]:
        score, kept = evaluator.retained([refs[n] for n in names], perturbation,
                                         config.perturbation_seeds)
        return score, kept * evaluator.clean.accuracy

    total_params = sum(ref.numel for ref in session.refs)
    return grow_robust_set(rank_modules(rmap.modules), retained_with, evaluator.clean.accuracy,
                           total_params, config.tau, config.budget)
