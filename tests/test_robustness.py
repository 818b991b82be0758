"""Cached partial forwards, perturbations and the robustness scores."""

from __future__ import annotations

import math

import pytest
import torch
from mlr.analysis.perturb import (
    GradientPerturbation,
    NoisePerturbation,
    instruction_gradients,
    perturbed,
)
from mlr.analysis.probe import fit_logistic
from mlr.analysis.replay import LayerReplay
from mlr.analysis.robustness import (
    ModuleScore,
    ProbeEvaluator,
    RobustnessMap,
    Verdict,
    likelihood_retained,
    score_modules,
)
from mlr.features import capture_features, make_batches
from mlr.instruction_loss import IGNORE_INDEX, LossBatch
from mlr.modules import decoder_modules
from tiny_models import VOCAB, tiny_model

ROWS = 24


def token_ids(rows: int = ROWS, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (rows,), generator=generator)
    return [torch.randint(3, VOCAB, (int(n),), generator=generator).tolist() for n in lengths]


def setup(kind: str = "llama", layers: int = 3, probe_layer: int = 2):
    model = tiny_model(kind, layers=layers)
    batches = make_batches(token_ids(), batch_size=5, pad_id=0)
    replay = LayerReplay(model, batches, probe_layer)
    labels = torch.randint(0, 2, (ROWS,), generator=torch.Generator().manual_seed(1))
    probe = fit_logistic(replay.clean_features, labels, l2=1e-4)
    return model, batches, replay, ProbeEvaluator(replay, probe, labels)


def full_forward_features(model, batches, layer):
    return capture_features(model, batches, [layer])[0]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cached_partial_forward_equals_full_forward(kind):
    model, batches, replay, _ = setup(kind)
    assert torch.equal(replay.clean_features, full_forward_features(model, batches, 2))
    for start in range(3):
        assert torch.equal(replay.features_from(start), replay.clean_features)
    ref = next(r for r in decoder_modules(model) if r.layer == 1 and r.type == "v")
    with perturbed([ref], NoisePerturbation(0.3), seed=0):
        partial = replay.features_from(1)
        full = full_forward_features(model, batches, 2)
    assert torch.equal(partial, full)
    assert not torch.equal(partial, replay.clean_features)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_perturbation_is_undone_bit_for_bit_and_touches_only_its_module(kind):
    model = tiny_model(kind, layers=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = next(r for r in decoder_modules(model) if r.type == "k")
    with perturbed([ref], NoisePerturbation(0.5), seed=3):
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed == {ref.parameter_name}
        current = ref.parameter.detach().clone()
        ref.view(current).copy_(ref.view(before[ref.parameter_name]))
        assert torch.equal(current, before[ref.parameter_name])  # nothing outside k's part moved
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_perturbation_sizes():
    model = tiny_model("llama", layers=1)
    ref = decoder_modules(model)[0]
    weight_norm = float(ref.weight().detach().norm())
    noise = NoisePerturbation(0.1).delta(ref, seed=0)
    assert torch.equal(noise, NoisePerturbation(0.1).delta(ref, seed=0))
    assert not torch.equal(noise, NoisePerturbation(0.1).delta(ref, seed=1))
    assert float(noise.norm()) == pytest.approx(0.1 * weight_norm, rel=0.1)
    gradient = torch.randn(ref.weight().shape)
    step = GradientPerturbation(0.1, lambda seed: {ref.name: gradient}).delta(ref, seed=0)
    assert float(step.norm()) == pytest.approx(0.1 * weight_norm, rel=1e-5)
    torch.testing.assert_close(step / step.norm(), -gradient / gradient.norm())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_zero_perturbation_scores_one(kind):
    model, _, _, evaluator = setup(kind)
    refs = decoder_modules(model)
    noise = score_modules(evaluator, refs, NoisePerturbation(0.0), seeds=[0, 1])
    zero_gradients = {r.name: torch.ones(r.weight().shape) for r in refs}
    grad = score_modules(evaluator, refs, GradientPerturbation(0.0, lambda s: zero_gradients), [0])
    for score in noise + grad:
        assert score.measured and score.score == 1.0 and score.margin == 1.0
        assert score.accuracy == 1.0 and score.change == 0.0 and score.score_se == 0.0


def test_large_noise_degrades_and_modules_above_probe_layer_are_not_measured():
    model, _, replay, evaluator = setup("llama", layers=3, probe_layer=1)
    refs = decoder_modules(model)
    scores = score_modules(evaluator, refs, NoisePerturbation(3.0), seeds=[0, 1])
    above = [s for s in scores if s.layer == 2]
    assert above and all(not s.measured and s.score is None and s.seeds == [] for s in above)
    measured = [s for s in scores if s.measured]
    assert len(measured) == 14 and all(len(s.seeds) == 2 for s in measured)
    assert min(s.margin for s in measured) < 0.9
    assert min(s.score for s in measured) < 0.9 and all(s.change > 0 for s in measured)
    # continuous: modules that tie on accuracy retained still get distinct scores
    assert len({round(s.score, 9) for s in measured}) == len(measured)
    # one recording pass (layers 0..1) + per seed 2 layer-forwards for layer 0, 1 for layer 1
    assert replay.layer_forwards == 2 + 2 * 7 * (2 + 1)


def test_instruction_gradients_match_autograd_and_restore_flags():
    model = tiny_model("gpt2", layers=2)
    refs = decoder_modules(model)
    ids = torch.randint(3, VOCAB, (3, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    batch = LossBatch(ids, torch.ones_like(ids), labels)
    model.transformer.wte.weight.requires_grad_(False)
    gradients = instruction_gradients(model, batch, refs)
    assert not model.transformer.wte.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    model.transformer.wte.weight.requires_grad_(True)
    model(input_ids=ids, labels=labels).loss.backward()
    for ref in refs:
        torch.testing.assert_close(gradients[ref.name], ref.view(ref.parameter.grad))


def test_likelihood_retained_is_exp_of_minus_the_mean_loss_change_with_its_standard_error():
    clean = Verdict(1.0, 2.0, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    worse = Verdict(0.75, 1.0, torch.tensor([0.3, 0.2, 0.5, 0.8], dtype=torch.float64))
    better = Verdict(1.0, 3.0, torch.tensor([0.1, 0.2, 0.1, 0.4], dtype=torch.float64))
    score, se = likelihood_retained(clean, [worse])
    changes = torch.tensor([0.2, 0.0, 0.2, 0.4], dtype=torch.float64)
    assert score == pytest.approx(math.exp(-0.2))
    assert se == pytest.approx(score * changes.std().item() / 2)
    both, _ = likelihood_retained(clean, [worse, better])  # seeds averaged per prompt
    assert both == pytest.approx(math.exp(-(0.8 - 0.2) / 8))
    assert likelihood_retained(clean, [better])[0] > 1.0


def test_robustness_map_json_round_trip():
    score = ModuleScore("m.q", "q", 0, 16, True, 0.9, 0.01, 0.1, 0.8, 0.7, [0.9], [0.8])
    rmap = RobustnessMap([score], 0, 1, "noise", 0.5, [0], 0.75, 1.5, 0.3, 24, "exact",
                         {"layer_forwards": 1}, {}, {"modules": 1})
    assert RobustnessMap.from_json(rmap.to_json()) == rmap
