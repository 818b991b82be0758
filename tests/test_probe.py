"""The logistic-regression probe, its AUC and the layer choice."""

from __future__ import annotations

import itertools

import pytest
import torch
from mlr.analysis.probe import (
    LayerScore,
    ProbeResult,
    accuracy,
    auc,
    chance_note,
    choose_layer,
    fit_logistic,
    signed_margins,
    train_probes,
    wording_note,
)


def planted(rows: int, hidden: int, seed: int, signal: bool = True):
    """Gaussian features with a large offset and scale per dimension; labels are the sign of a
    fixed direction (signal) or coin flips (no signal)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, hidden, generator=generator) * torch.linspace(0.1, 5, hidden) + 3
    direction = torch.ones(hidden) / torch.linspace(0.1, 5, hidden)
    if signal:
        labels = ((features - 3) @ direction > 0).long()
    else:
        labels = torch.randint(0, 2, (rows,), generator=generator)
    return features, labels


def test_finds_a_planted_linear_signal():
    train_x, train_y = planted(400, 16, seed=0)
    test_x, test_y = planted(200, 16, seed=1)
    probe = fit_logistic(train_x, train_y)
    logits = probe.logits(test_x)
    assert accuracy(logits, test_y) > 0.93
    assert auc(logits, test_y) > 0.99
    correct = (signed_margins(logits, test_y) > 0).double().mean().item()
    assert correct == pytest.approx(accuracy(logits, test_y))


def test_fit_is_deterministic():
    x, y = planted(100, 8, seed=2)
    first, second = fit_logistic(x, y), fit_logistic(x, y)
    assert torch.equal(first.weight, second.weight) and first.bias == second.bias


def test_auc_matches_pairwise_count_with_ties():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (40,), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=generator)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = list(itertools.product(pos.tolist(), neg.tolist()))
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0


def test_per_layer_probes_choose_the_signal_layer():
    layers = [0, 1, 2]
    train = [planted(300, 12, seed=10 + i, signal=i == 1) for i in layers]
    held = [planted(200, 12, seed=20 + i, signal=i == 1) for i in layers]
    # Labels must be shared across layers: take layer 1's, which carries the signal.
    train_y, held_y = train[1][1], held[1][1]
    result = train_probes(torch.stack([x for x, _ in train]), train_y,
                          torch.stack([x for x, _ in held]), held_y, layers)
    assert result.layer == 1
    assert result.scores[1].accuracy > 0.9
    assert max(result.scores[0].accuracy, result.scores[2].accuracy) < 0.7
    given = train_probes(torch.stack([x for x, _ in train]), train_y,
                         torch.stack([x for x, _ in held]), held_y, layers, layer=2)
    assert given.layer == 2


def test_layer_choice_is_the_shallowest_within_tolerance_of_the_best_log_loss():
    scores = [LayerScore(0, 0.84, 0.90, 0.40), LayerScore(1, 0.95, 0.99, 0.12),
              LayerScore(2, 1.00, 1.00, 0.08), LayerScore(3, 1.00, 1.00, 0.03)]
    assert choose_layer(scores, tolerance=0.05) == 2  # 0.08 <= 0.03 + 0.05; 0.12 is not
    assert choose_layer(scores, tolerance=0.0) == 3
    assert choose_layer(scores, tolerance=1.0) == 0
    # Tied accuracy (1.00 at layers 2 and 3) no longer decides: the log-loss does.
    assert choose_layer([LayerScore(0, 1.0, 1.0, 0.30), LayerScore(5, 1.0, 1.0, 0.01)]) == 5


def test_perfect_separation_at_layer_zero_says_wording_not_intent():
    perfect = [LayerScore(0, 1.0, 1.0, 0.01), LayerScore(1, 1.0, 1.0, 0.01)]
    note = wording_note(perfect)
    assert note is not None and "wording, not intent" in note and "twins" in note
    assert wording_note([LayerScore(0, 0.99, 1.0, 0.05), LayerScore(1, 1.0, 1.0, 0.01)]) is None


def test_a_probe_no_better_than_chance_at_any_layer_says_so():
    # a user's small files on the aligned embedded model gave AUC 0.000, accuracy 0.25
    worse = [LayerScore(0, 0.25, 0.0, 1.2), LayerScore(1, 0.5, 0.5, 0.9)]
    note = ProbeResult(worse, 1, None).chance_note
    assert note is not None and "better than chance" in note and "best AUC 0.500, at layer 1" in note
    assert chance_note([LayerScore(0, 0.25, 0.0, 1.2), LayerScore(1, 0.75, 0.56, 0.6)]) is None


def test_held_out_log_loss_is_reported_per_layer():
    x, y = planted(200, 8, seed=6)
    noise, _ = planted(200, 8, seed=7, signal=False)
    result = train_probes(torch.stack([noise, x]), y, torch.stack([noise, x]), y, [0, 1])
    assert result.layer == 1
    assert result.scores[1].log_loss < 0.5 < result.scores[0].log_loss
    logits = result.probe.logits(x)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), y.double())
    assert result.scores[1].log_loss == pytest.approx(expected.item())


def test_probe_json_round_trip():
    x, y = planted(60, 4, seed=5)
    result = train_probes(x[None], y, x[None], y, [0])
    restored = ProbeResult.from_json(result.to_json({"model": None}))
    assert restored.layer == 0 and restored.scores == result.scores
    assert torch.equal(restored.probe.logits(x), result.probe.logits(x))


def test_probe_json_without_log_loss_still_loads():
    x, y = planted(60, 4, seed=5)
    record = train_probes(x[None], y, x[None], y, [0]).to_json({})
    for layer in record["layers"]:
        del layer["log_loss"]
    restored = ProbeResult.from_json(record)
    assert restored.layer == 0 and restored.scores[0].accuracy == record["layers"][0]["accuracy"]
