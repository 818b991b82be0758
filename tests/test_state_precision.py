"""MLRAdamW with less optimizer state: bfloat16 moments (``state_dtype=torch.bfloat16``) and
bfloat16/float16 weights without float32 masters (``master_weights=False``): the memory each mode
owns, checkpoints both ways with torch.optim.AdamW, runs that resume to the same bits, and the
rounding's lack of bias. The kernels' side is in tests/test_kernel_*.py, the user-write patterns
in tests/test_optimizer_contract.py."""

from __future__ import annotations

import copy

import pytest
import torch

from mlr_kernels import MLRAdamW, rounding
from tests.optim_cases import available_backends, forward, make_model

BACKENDS = available_backends()


def owned_bytes_per_parameter(opt: MLRAdamW) -> float:
    """Bytes of the buffers the optimizer owns (moments, masters, compensation), per parameter."""
    buffers = [getattr(b, attr) for b in opt.buckets
               for attr in ("master", "compensation", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
    owned = sum(t.numel() * t.element_size() for t in buffers if t is not None)
    return owned / sum(p.numel() for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize(("dtype", "state_dtype", "master_weights", "expected"), [
    (torch.float32, torch.float32, True, 8), (torch.float32, torch.bfloat16, True, 4),
    (torch.bfloat16, torch.float32, True, 12), (torch.bfloat16, torch.bfloat16, True, 8),
    (torch.bfloat16, torch.bfloat16, False, 6), (torch.float16, torch.bfloat16, False, 6)])
def test_owned_bytes_per_parameter(dtype, state_dtype, master_weights, expected):
    params = [torch.nn.Parameter(torch.randn(64, 48, dtype=dtype)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = MLRAdamW(params, state_dtype=state_dtype, master_weights=master_weights)
    opt.step()
    assert owned_bytes_per_parameter(opt) == expected


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        opt.zero_grad()
        forward(model, torch.randn(4, 7, generator=gen).to(dtype)).float().pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bfloat16_state_checkpoint_loads_into_torch_adamw_as_float32_and_back(backend):
    ours_model = make_model(50)
    ours = MLRAdamW(ours_model.parameters(), lr=1e-2, state_dtype=torch.bfloat16, backend=backend)
    train(ours_model, ours, 3, seed=50)
    torch_model = copy.deepcopy(ours_model)
    theirs = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    theirs.load_state_dict(ours.state_dict())
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert theirs.state[q][key].dtype == torch.float32
            assert torch.equal(theirs.state[q][key], ours.state[p][key].float())
    train(torch_model, theirs, 2, seed=51)  # torch trains on from it
    back_model = copy.deepcopy(torch_model)
    back = MLRAdamW(back_model.parameters(), lr=1e-2, state_dtype=torch.bfloat16, backend=backend)
    back.load_state_dict(theirs.state_dict())
    for p, q in zip(torch_model.parameters(), back_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert back.state[q][key].dtype == torch.bfloat16
            assert torch.equal(back.state[q][key], theirs.state[p][key].to(torch.bfloat16))
        assert float(back.state[q]["step"]) == float(theirs.state[p]["step"]) == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("master_weights", [True, False])
def test_a_resumed_run_draws_the_same_random_bits(backend, master_weights):
    """The random bits are a function of the seed, each parameter's place and the step counts a
    checkpoint restores: six steps, or three, a checkpoint, a new optimizer and three more, end
    bit for bit alike. Another seed does not."""
    def build(seed: int, model_seed: int = 52):
        model = make_model(model_seed, torch.bfloat16)
        return model, MLRAdamW(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16,
                                master_weights=master_weights, seed=seed, backend=backend)

    whole_model, whole = build(seed=7)
    train(whole_model, whole, 3, seed=1)
    train(whole_model, whole, 3, seed=2)
    first_model, first = build(seed=7)
    train(first_model, first, 3, seed=1)
    resumed_model, resumed = build(seed=7)
    resumed_model.load_state_dict(first_model.state_dict())
    resumed.load_state_dict(first.state_dict())
    train(resumed_model, resumed, 3, seed=2)
    other_model, other = build(seed=8)
    train(other_model, other, 3, seed=1)
    train(other_model, other, 3, seed=2)
    for p, q in zip(whole_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        for key, value in whole.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key
    assert any(not torch.equal(whole.state[p]["exp_avg"], other.state[r]["exp_avg"])
               for p, r in zip(whole_model.parameters(), other_model.parameters()))


def test_a_checkpoint_with_masters_loads_into_an_optimizer_without_them_and_back():
    """The compensation is taken as what the weight's rounding dropped from its master, and a
    master as the weight plus its compensation: the float32 weight survives both ways, to the
    precision of a weight and its compensation (about 16 bits)."""
    model = make_model(53, torch.bfloat16)
    with_masters = MLRAdamW(model.parameters(), lr=1e-2)
    train(model, with_masters, 3, seed=53)
    without = MLRAdamW(model.parameters(), lr=1e-2, master_weights=False)
    without.load_state_dict(with_masters.state_dict())
    again = MLRAdamW(model.parameters(), lr=1e-2)
    again.load_state_dict(without.state_dict())
    for p in model.parameters():
        master = with_masters.state[p]["master_param"]
        compensated = p.float() + without.state[p]["kahan_comp"].float()
        torch.testing.assert_close(compensated, master, rtol=2.0**-15, atol=0)
        torch.testing.assert_close(again.state[p]["master_param"], master, rtol=2.0**-15, atol=0)


def test_stochastic_rounding_is_unbiased_and_rounding_to_nearest_is_not():
    """Rounding x = 1 + 2**-10 (an eighth of the way from bfloat16's 1 to 1 + 2**-7) many times with
    fresh bits: the mean is x within its 95 % interval, where rounding to nearest always gives 1.
    The carry happens with the probability of the dropped fraction, so the mean of n draws has a
    standard deviation of ulp * sqrt(f (1 - f) / n)."""
    n, x, unit = 1 << 16, 1.0 + 2.0**-10, 2.0**-7
    values = torch.full((n,), x)
    bits = rounding.random_bits(rounding.random_key(12345, 7, 0), torch.arange(n))
    rounded = rounding.to_bfloat16_stochastic(values, bits).double()
    fraction = (x - 1.0) / unit
    half_width = 1.96 * unit * (fraction * (1 - fraction) / n) ** 0.5
    assert abs(rounded.mean().item() - x) < half_width
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + unit}
    assert values.to(torch.bfloat16).double().mean().item() == 1.0


def test_state_dtype_is_checked():
    with pytest.raises(ValueError, match="state_dtype must be torch.float32 or torch.bfloat16"):
        MLRAdamW([torch.nn.Parameter(torch.ones(2))], state_dtype=torch.float16)
