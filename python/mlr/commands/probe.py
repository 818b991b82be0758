"""Fit the security probe (harmful vs benign, logistic regression on last-token features) at every
decoder layer, score it on the held-out split, and choose the probe layer. Writes probe.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlr.analysis.probe import ProbeResult, train_probes
from mlr.commands.common import (
    Session,
    add_data_arguments,
    add_model_arguments,
    load_session,
    print_table,
    reusable,
)
from mlr.data.security_data import SecurityData, load_security_data
from mlr.features import capture_features
from mlr.io import write_json_atomic
from mlr.models import default_model_dir

NAME = "probe"
HELP = "fit the security probe per layer and choose the probe layer"
PROBE_FILE = "probe.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)


def probe_config(args: argparse.Namespace) -> dict:
    """What a probe depends on; probe.json is reused only when this matches. The embedded default
    is named by its cache directory, which changes with its recipe."""
    model = args.model if args.model is not None else str(default_model_dir())
    return {"model": model, "dtype": args.dtype, "harmful": args.harmful,
            "benign": args.benign, "seed": args.seed, "layer": args.layer}


def fit_probe(session: Session, data: SecurityData, layer: int | None) -> ProbeResult:
    session.check_layer(layer)
    layers = list(range(session.num_layers))
    train = capture_features(session.model, session.batches(data.train.prompts), layers,
                             desc="features (train)")
    heldout = capture_features(session.model, session.batches(data.heldout.prompts), layers,
                               desc="features (held-out)")
    return train_probes(train, data.train.labels, heldout, data.heldout.labels, layers, layer)


def obtain_probe(session: Session, data: SecurityData, args: argparse.Namespace) -> ProbeResult:
    """The probe of probe.json in ``--out`` when it was made with these options, else a new fit
    (written to probe.json)."""
    path = Path(args.out) / PROBE_FILE
    config = probe_config(args)
    saved = reusable(path, config)
    if saved is not None:
        return ProbeResult.from_json(saved)
    result = fit_probe(session, data, args.layer)
    write_json_atomic(path, result.to_json(config))
    return result


def print_probe(result: ProbeResult) -> None:
    print_table(["layer", "held-out acc", "AUC", ""],
                [[s.layer, f"{s.accuracy:.3f}", f"{s.auc:.3f}",
                  "<- probe" if s.layer == result.layer else ""] for s in result.scores])


def run(args: argparse.Namespace) -> int:
    session = load_session(args)
    data = load_security_data(args.harmful, args.benign, args.seed)
    config = probe_config(args)
    result = fit_probe(session, data, args.layer)
    path = write_json_atomic(Path(args.out) / PROBE_FILE, result.to_json(config))
    print_probe(result)
    print(f"probe layer {result.layer}; wrote {path}")
    return 0
