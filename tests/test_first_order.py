"""The first-order robustness map: its gradient, its prediction, and the rank correlation."""

from __future__ import annotations

import math

import pytest
import torch
from mlr.analysis.first_order import compare_maps, first_order_scores, loss_gradients
from mlr.analysis.perturb import NoisePerturbation
from mlr.analysis.probe import log_loss
from mlr.analysis.robustness import score_modules
from mlr.modules import decoder_modules
from mlr.rank_correlation import spearman
from test_robustness import setup


def probe_loss(model, batches, probe, labels, layer) -> float:
    """The probe's mean log-loss in float64 throughout (``hidden_states[layer + 1]`` is the output
    of decoder layer ``layer`` below the last one)."""
    total, rows = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True).hidden_states[layer + 1]
            last = batch.attention_mask.sum(dim=1) - 1
            features = hidden[torch.arange(hidden.shape[0]), last].double()
            logits = features @ probe.weight.double() + probe.bias
            total += log_loss(logits, labels[batch.rows]).sum().item()
            rows += len(batch.rows)
    return total / rows


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_gradient_is_the_directional_derivative_of_the_held_out_log_loss(kind):
    model, batches, replay, evaluator = setup(kind, layers=3, probe_layer=1)
    model.double()
    refs = [r for r in decoder_modules(model) if r.layer <= 1]
    gradients = loss_gradients(model, batches, evaluator.probe, evaluator.labels, 1, refs)
    assert all(p.grad is None for p in model.parameters())
    for ref in (refs[0], refs[-1], next(r for r in refs if r.type == "v")):
        direction = torch.randn(ref.weight().shape, generator=torch.Generator().manual_seed(0))
        step = 1e-4  # small: the tiny random model is strongly curved; features are float32
        with torch.no_grad():
            ref.weight().add_(step * direction.double())
            plus = probe_loss(model, batches, evaluator.probe, evaluator.labels, 1)
            ref.weight().sub_(2 * step * direction.double())
            minus = probe_loss(model, batches, evaluator.probe, evaluator.labels, 1)
            ref.weight().add_(step * direction.double())
        numeric = (plus - minus) / (2 * step)
        assert (gradients[ref.name].double() * direction.double()).sum().item() == pytest.approx(
            numeric, rel=5e-3)


def test_small_noise_matches_the_first_order_prediction():
    model, batches, _, evaluator = setup("llama", layers=3, probe_layer=2)
    refs = decoder_modules(model)
    alpha = 1e-3
    predicted = first_order_scores(model, batches, evaluator.probe, evaluator.labels, 2, refs,
                                   alpha)
    exact = score_modules(evaluator, refs, NoisePerturbation(alpha), seeds=list(range(12)))
    for p, e in zip(predicted, exact):
        assert p.name == e.name and p.measured and p.score == pytest.approx(math.exp(-p.change))
        # RMS over 12 seeds of a Gaussian: within a factor of 1.6 of its expectation
        assert 0.6 < e.change / p.change < 1.6
    comparison = compare_maps(exact, predicted)
    assert comparison["modules"] == len(refs) and comparison["spearman_change"] > 0.8


def test_modules_above_the_probe_layer_are_not_measured():
    model, batches, _, evaluator = setup("llama", layers=3, probe_layer=1)
    scores = first_order_scores(model, batches, evaluator.probe, evaluator.labels, 1,
                                decoder_modules(model), 0.5)
    assert [s.measured for s in scores] == [s.layer <= 1 for s in scores]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/120
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # tie-averaged
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1], [1])
