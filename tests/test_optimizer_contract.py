"""The flat-buffer contract (docs/optimizer_contract.md): whatever user code does to parameters,
gradients, param groups and optimizer state between steps, MLRAdamW steps as torch.optim.AdamW
does. One test per pattern found in public bug reports about fused optimizers, then a randomized
mix of all of them over several steps and param groups."""

from __future__ import annotations

import copy
import io
import pickle
import random
import weakref
from collections import defaultdict
from functools import partial

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from mlr_kernels import MLRAdamW
from tests.optim_cases import (
    assert_same_params,
    available_backends,
    forward,
    make_model,
    move_state,
)

# Every test runs with the per-step reads in C++ and in Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_host_read_path")

BACKENDS = available_backends()


def ones_param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.ones(2))


def torch_twin(p: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(p.detach().clone())


# --------------------------------------------------------------- one test per failure pattern
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_assigned_or_copied_without_backward_is_used(backend):
    """Row 1: no backward at all; ``p.grad = g`` if None else ``p.grad.copy_(g)``."""
    p, q = ones_param(), ones_param()
    ours = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    ref = torch.optim.AdamW([q], lr=0.1, weight_decay=0.0)
    assert p.grad is None
    for g in (torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])):
        for param, opt in ((p, ours), (q, ref)):
            if param.grad is None:
                param.grad = g.clone()
            else:
                param.grad.copy_(g)
            opt.step()
    torch.testing.assert_close(p, q)
    assert not torch.equal(p, torch.ones(2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write", ["fill_", "load_state_dict", "nn.init", "clamp_"])
def test_in_place_write_to_bf16_weight_moves_its_master(backend, write):
    """Row 2: a bf16 weight written after the optimizer exists is where the step starts; the
    fp32 master follows. Oracle: torch AdamW on an fp32 copy given the same values and grads."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2).to(torch.bfloat16)
    ours = MLRAdamW(lin.parameters(), lr=1e-3, weight_decay=0.0, backend=backend)
    with torch.no_grad():
        if write == "fill_":
            lin.weight.fill_(1.0)
        elif write == "load_state_dict":
            lin.load_state_dict({"weight": torch.ones(2, 2), "bias": torch.zeros(2)})
        elif write == "nn.init":
            torch.nn.init.constant_(lin.weight, 1.0)
        else:
            lin.weight.clamp_(min=1.0)
    twin = torch.nn.Linear(2, 2)
    twin.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.0)
    lin(torch.ones(1, 2, dtype=torch.bfloat16)).sum().backward()
    twin(torch.ones(1, 2)).sum().backward()
    ours.step()
    ref.step()
    torch.testing.assert_close(lin.weight, torch.full((2, 2), 0.999, dtype=torch.bfloat16))
    torch.testing.assert_close(ours.state[lin.weight]["master_param"], twin.weight)


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_replaced_after_construction_is_stepped(backend):
    """Row 3: ``p.data = t`` after the optimizer exists."""
    p = ones_param()
    opt = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    p.data = torch.zeros(2)
    p.sum().backward()
    opt.step()
    torch.testing.assert_close(p, torch.full((2,), -0.1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_optimizers_over_one_parameter(backend):
    """Row 4: the optimizer that steps reads the parameter as it is, not a private copy."""
    p = ones_param()
    a = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    b = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    p.sum().backward()
    a.step()
    torch.testing.assert_close(p, torch.full((2,), 0.9))
    b.step()
    torch.testing.assert_close(p, torch.full((2,), 0.8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_parameters_are_accepted_and_left_alone_then_unfrozen(backend):
    """Row 5: ``requires_grad=False`` parameters in the list (a LoRA model's parameters()), frozen
    and unfrozen mid-training, as torch steps them."""
    m_ours, m_ref = make_model(1), make_model(1)
    for model in (m_ours, m_ref):
        model["mid"].requires_grad_(False)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    mid = m_ours["mid"].weight.detach().clone()
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:
            for model in (m_ours, m_ref):
                model["mid"].requires_grad_(True)
                model["inp"].requires_grad_(False)
        x = torch.randn(5, 7, generator=gen)
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            opt.step()
        if step < 3:
            assert torch.equal(m_ours["mid"].weight, mid)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["torch", "optimizer"])
def test_skipped_nan_batch_leaves_no_trace(backend, clip):
    """Row 6: NaN grads, clip, ``zero_grad()`` (the batch is skipped), a good batch, step."""
    p = ones_param()
    opt = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    p.grad = torch.full((2,), float("nan"))
    norm = (torch.nn.utils.clip_grad_norm_([p], 1.0) if clip == "torch" else opt.clip_grad_norm_(1.0))
    assert norm.isnan()
    opt.zero_grad()
    p.sum().backward()
    opt.step()
    torch.testing.assert_close(p, torch.full((2,), 0.9))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", ["new mapping", "clear", "one entry"])
def test_state_reset_starts_adam_afresh(backend, reset):
    """Row 7: two steps, reset the state as torch allows, step with grad -1: a fresh first step."""
    p, q = ones_param(), ones_param()
    ours = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    ref = torch.optim.AdamW([q], lr=0.1, weight_decay=0.0)
    for opt, param in ((ours, p), (ref, q)):
        for _ in range(2):
            param.grad = torch.ones(2)
            opt.step()
        if reset == "new mapping":
            opt.state = defaultdict(dict)
        elif reset == "clear":
            opt.state.clear()
        else:
            del opt.state[param]
        param.grad = -torch.ones(2)
        opt.step()
    torch.testing.assert_close(p, torch.full((2,), 0.9))
    torch.testing.assert_close(p, q)
    saved = ours.state_dict()["state"][0]
    assert saved["step"].item() == 1 and saved["exp_avg"].tolist() == pytest.approx([-0.1, -0.1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_storage_tie_is_kept_and_stepped_like_torch(backend, dtype):
    """Row 8: ``b.data = a.data`` before the optimizer: the tie survives and both updates land,
    in order, as torch's single-tensor AdamW applies them."""
    gen = torch.Generator().manual_seed(8)
    a, c = (torch.nn.Parameter(torch.randn(3, generator=gen).to(dtype)) for _ in range(2))
    b = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    b.data = a.data
    refs = [torch.nn.Parameter(t.detach().float().clone()) for t in (a, c)]
    refs.insert(1, torch.nn.Parameter(torch.zeros(3)))
    refs[1].data = refs[0].data
    ours = MLRAdamW([a, b, c], lr=0.1, backend=backend)
    ref = torch.optim.AdamW(refs, lr=0.1, foreach=False)
    assert a.data_ptr() == b.data_ptr()
    for _ in range(3):
        grads = [torch.randn(3, generator=gen).to(dtype) for _ in range(3)]
        for params, opt in (([a, b, c], ours), (refs, ref)):
            for param, g in zip(params, grads):
                param.grad = g.to(param.dtype)
            opt.step()
    assert a.data_ptr() == b.data_ptr()
    tolerance = {} if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for got, want in zip((a, b, c), refs):
        torch.testing.assert_close(got.float(), want, **tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_group_then_add_param_group(backend):
    """Row 9."""
    p = ones_param()
    opt = MLRAdamW([{"params": []}], lr=0.1, weight_decay=0.0, backend=backend)
    opt.step()
    opt.add_param_group({"params": [p]})
    p.sum().backward()
    opt.step()
    torch.testing.assert_close(p, torch.full((2,), 0.9))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_of_model_and_optimizer_trains_on_identically(backend, how):
    """Row 10: ``copy.deepcopy`` / pickling of the optimizer with its model."""
    model = make_model(10)
    opt = MLRAdamW(model.parameters(), lr=1e-2, backend=backend)
    gen = torch.Generator().manual_seed(10)
    batches = [torch.randn(4, 7, generator=gen) for _ in range(5)]

    def train(m, o, xs):
        for x in xs:
            o.zero_grad()
            forward(m, x).pow(2).mean().backward()
            o.step()

    train(model, opt, batches[:2])
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    alone = copy.deepcopy(opt)
    alone.zero_grad()
    train(model, opt, batches[2:])
    train(model2, opt2, batches[2:])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_fp16_clipping_under_grad_scaler_uses_the_true_norm():
    """Row 11: fp16 parameters under a GradScaler: ``clip_grad_norm_(..., grad_scaler=scaler)``
    returns the unscaled norm and clips to it; the fp32 master follows torch AdamW on fp32
    copies clipped with torch's own function."""
    half, full = make_model(11, torch.float16), make_model(11, torch.float16).float()
    ours = MLRAdamW(half.parameters(), lr=1e-2, backend="cpu" if BACKENDS else "reference")
    ref = torch.optim.AdamW(full.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen).to(torch.float16) for p in half.parameters()]
        scaler.scale(torch.ones(()))  # as scaler.scale(loss) does before backward
        for p, q, g in zip(half.parameters(), full.parameters(), grads):
            p.grad = g * scaler.get_scale()  # what scaler.scale(loss).backward() leaves
            q.grad = g.float()
        norm = ours.clip_grad_norm_(1.0, grad_scaler=scaler)
        want = torch.nn.utils.clip_grad_norm_(full.parameters(), 1.0)
        torch.testing.assert_close(norm, want, rtol=1e-3, atol=0)
        assert want > 1.0
        scaler.step(ours)
        scaler.update()
        ref.step()
    for p, q in zip(half.parameters(), full.parameters()):
        torch.testing.assert_close(ours.state[p]["master_param"], q, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="FP16"):  # why the keyword exists: torch refuses
        scaler.unscale_(ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_betas_list_edited_in_place_is_read(backend):
    """Row 12."""
    m_ours, m_ref = make_model(12), make_model(12)
    ours = MLRAdamW([{"params": list(m_ours.parameters()), "betas": [0.9, 0.999]}], lr=1e-2,
                    backend=backend)
    ref = torch.optim.AdamW([{"params": list(m_ref.parameters()), "betas": [0.9, 0.999]}], lr=1e-2)
    gen = torch.Generator().manual_seed(12)
    for step in range(4):
        x = torch.randn(4, 7, generator=gen)
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            if step == 2:
                opt.param_groups[0]["betas"][0] = 0.0
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            opt.step()
    assert_same_params(m_ours, m_ref)


def test_refused_param_group_is_not_added():
    """Row 13."""
    p, q = ones_param(), ones_param()
    opt = MLRAdamW([p], backend="reference")
    with pytest.raises(ValueError, match="twice"):
        opt.add_param_group({"params": [q, q]})
    with pytest.raises(ValueError, match="learning rate"):
        opt.add_param_group({"params": [q], "lr": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [q]})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_saving_one_layer_writes_that_layer_only(backend):
    """Row 14: parameters own their storage, so torch.save writes a layer's bytes, not a flat
    buffer of the whole model."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(256, 256))
    opt = MLRAdamW(model.parameters(), backend=backend)
    model[0](torch.randn(2, 16)).sum().backward()
    opt.step()
    buffers = [io.BytesIO(), io.BytesIO()]
    torch.save(model[0].state_dict(), buffers[0])
    torch.save(torch.nn.Linear(16, 16).state_dict(), buffers[1])
    assert len(buffers[0].getvalue()) == len(buffers[1].getvalue())


@pytest.mark.parametrize("backend", BACKENDS)
def test_flattened_torch_state_dict_loads(backend):
    """Row 15: ``torch.distributed.checkpoint``'s flattened (FQN-keyed) state_dict of a
    torch.optim.AdamW loads; keys only MLRAdamW has keep their values."""
    m_ours, m_ref = make_model(15), make_model(15)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(15)
    for _ in range(2):
        ref.zero_grad()
        forward(m_ref, torch.randn(4, 7, generator=gen)).pow(2).mean().backward()
        ref.step()
    options = StateDictOptions(flatten_optimizer_state_dict=True)
    saved = get_optimizer_state_dict(m_ref, ref, options=options)
    assert "state.inp.weight.exp_avg" in saved
    m_ours.load_state_dict(m_ref.state_dict())
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend=backend)
    set_optimizer_state_dict(m_ours, ours, saved, options=options)
    for _ in range(2):
        x = torch.randn(4, 7, generator=gen)
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            opt.step()
    assert_same_params(m_ours, m_ref)
    assert ours.state[m_ours["inp"].weight]["step"].item() == 4


@pytest.mark.parametrize("foreach", [None, False])
def test_clip_grad_norm_takes_torchs_keywords(foreach):
    """Row 16."""
    p = ones_param()
    opt = MLRAdamW([p], backend="reference")
    p.grad = torch.tensor([3.0, 4.0])
    norm = opt.clip_grad_norm_(1.0, 2.0, error_if_nonfinite=True, foreach=foreach)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
    p.grad = torch.tensor([float("nan"), 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.clip_grad_norm_(1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_reinterpreted_at_the_same_address_repacks(backend):
    """``p.data = p.data.view(torch.float16)`` of a bf16 weight keeps its address, shape and
    strides: the optimizer re-packs as for any change of dtype, and does not read the float16
    bits as bfloat16."""
    p = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    opt = MLRAdamW([p], lr=0.1, backend=backend)
    p.grad = torch.randn(8).to(torch.bfloat16)
    opt.step()
    address = p.data_ptr()
    p.data = p.data.view(torch.float16)
    assert p.data_ptr() == address
    p.grad = torch.randn(8).to(torch.float16)
    opt.step()
    assert list(opt.backends) == ["cpu/torch.float16"]


# ----------------------------------------------------------------------- past the rows
@pytest.mark.parametrize("backend", BACKENDS)
def test_cast_after_construction_repacks(backend):
    """``model.to(dtype)`` after steps: the optimizer re-packs, its moments carried over and the
    master taken from the cast weights, as a fresh optimizer loading the old state would."""
    model = make_model(20)
    opt = MLRAdamW(model.parameters(), lr=1e-2, backend=backend)
    gen = torch.Generator().manual_seed(20)
    for _ in range(2):
        opt.zero_grad()
        forward(model, torch.randn(4, 7, generator=gen)).pow(2).mean().backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    model.to(torch.bfloat16)
    twin = copy.deepcopy(model)
    fresh = MLRAdamW(twin.parameters(), lr=1e-2, backend=backend)
    fresh.load_state_dict(saved)
    for p in twin.parameters():  # the fp32 masters of the state_dict follow the cast weights
        fresh.state[p]["master_param"].copy_(p.detach().float())
    grads = [torch.randn(p.shape, generator=gen).to(torch.bfloat16) for p in model.parameters()]
    for m, o in ((model, opt), (twin, fresh)):
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
        o.step()
    assert opt.backends == {"cpu/torch.bfloat16": opt.backends["cpu/torch.bfloat16"]}
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)


def test_reshaped_parameter_is_refused_in_one_line():
    p = torch.nn.Parameter(torch.ones(4))
    opt = MLRAdamW([p], backend="reference")
    p.grad = torch.ones(4)
    opt.step()  # now p has state of 4 elements (before its first step, any shape is fine, as in torch)
    p.data = torch.ones(5)
    p.grad = torch.ones(5)
    with pytest.raises(ValueError, match=r"now has shape \(5,\).*build a new optimizer"):
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", ["flat", "rows"])
def test_parameter_viewed_in_another_shape_at_the_same_address_is_refused(backend, view):
    """The same address: only the shape tells. Stepped with the old one, the kernel would read
    16 elements of an 8-element gradient (``rows``)."""
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = MLRAdamW([p], backend=backend)
    p.grad = torch.ones(4, 4)
    opt.step()
    p.data = p.data.view(16) if view == "flat" else p.data[:2]
    p.grad = torch.ones(p.shape)
    with pytest.raises(ValueError, match=r"shape \(4, 4\) now has shape \((16,|2, 4)\)"):
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_parameters_and_gradients(backend):
    """A transposed parameter and a transposed gradient step as torch steps them."""
    gen = torch.Generator().manual_seed(21)
    base = torch.randn(3, 5, generator=gen)
    p, q = torch.nn.Parameter(base.t()), torch.nn.Parameter(base.t().clone())
    assert not p.is_contiguous()
    ours = MLRAdamW([p], lr=0.1, backend=backend)
    ref = torch.optim.AdamW([q], lr=0.1)
    for _ in range(3):
        g = torch.randn(3, 5, generator=gen).t()
        p.grad, q.grad = g, g.contiguous()
        ours.step()
        ref.step()
    torch.testing.assert_close(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_relaid_at_the_same_address(backend):
    """``p.data = p.data.t()`` on a square weight keeps its address but not its layout (a GPT-2
    Conv1D converted to Linear): it steps as torch steps it, its state indexed as the parameter
    is, and again in place once transposed back."""
    results = []
    for kind in ("ours", "torch"):
        gen = torch.Generator().manual_seed(23)
        p = torch.nn.Parameter(torch.randn(4, 4, generator=gen))
        opt = (MLRAdamW([p], lr=0.1, backend=backend) if kind == "ours"
               else torch.optim.AdamW([p], lr=0.1))
        for k in range(6):
            if k in (2, 4):
                address = p.data_ptr()
                p.data = p.data.t()
                assert p.data_ptr() == address
            p.grad = torch.randn(4, 4, generator=gen)
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(*results)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tie", ["relaid", "transposed", "transposed_inactive"])
@pytest.mark.parametrize("copied_first", [False, True])
def test_tied_parameter_stepped_through_a_copy(backend, tie, copied_first):
    """A tie where one member is in another layout than its state (stepped through a copy):
    tied to ``a`` and then relaid at the same address, or tied transposed, with a gradient or
    without. torch steps the members one after the other, each from what the last wrote; so does
    MLRAdamW, making and writing back each copy around its own launch."""
    results = []
    for kind in ("ours", "torch"):
        gen = torch.Generator().manual_seed(9)
        a, b = (torch.nn.Parameter(torch.randn(4, 4, generator=gen)) for _ in range(2))
        params = [b, a] if copied_first else [a, b]
        opt = (MLRAdamW(params, lr=0.1, backend=backend) if kind == "ours"
               else torch.optim.AdamW(params, lr=0.1, foreach=False))
        for k in range(4):
            if k == 1:
                b.data = a.data if tie == "relaid" else a.data.t()
                if tie == "relaid":
                    b.data = b.data.t()
                assert b.data_ptr() == a.data_ptr() and not b.is_contiguous()
            a.grad = torch.randn(4, 4, generator=gen)
            g = torch.randn(4, 4, generator=gen)
            b.grad = None if tie == "transposed_inactive" and k >= 1 else g
            opt.step()
        results.append(a.detach().clone())
    torch.testing.assert_close(*results)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_set_to_none_are_freed_before_the_next_backward(backend):
    """The optimizer holds no reference to a gradient past the step, so peak memory is torch's:
    the old gradient is gone when backward allocates the new one."""
    model = make_model(22)
    opt = MLRAdamW(model.parameters(), backend=backend)
    forward(model, torch.randn(4, 7)).sum().backward()
    old = [weakref.ref(p.grad) for p in model.parameters()]
    opt.step()
    opt.zero_grad()
    assert all(ref() is None for ref in old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_parameter_multiplier_survives_a_state_reset(backend):
    p = ones_param()
    opt = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    opt.set_lr_mult({p: 0.5})
    opt.state = defaultdict(dict)
    p.grad = torch.ones(2)
    opt.step()
    torch.testing.assert_close(p, torch.full((2,), 0.95))


# ------------------------------------------------------------------- randomized write patterns
GRAD_WRITES = ("keep", "accumulate", "assign", "in_place", "none", "transposed", "scaled")
PARAM_WRITES = ("nothing", "nothing", "in_place", "replace", "freeze", "unfreeze")


def _write_param(action: str, p: torch.nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        if action == "in_place":
            p.mul_(0.5).add_(value.to(p.dtype))
        elif action == "replace":
            p.data = value.to(p.dtype).clone()
        elif action == "freeze":
            p.requires_grad_(False)
        elif action == "unfreeze":
            p.requires_grad_(True)


def _write_grad(action: str, p: torch.nn.Parameter, g: torch.Tensor) -> None:
    g = g.to(p.dtype)
    if action == "assign":
        p.grad = g.clone()
    elif action == "accumulate":
        p.grad = g.clone() if p.grad is None else p.grad.add_(g)
    elif action == "in_place":
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
    elif action == "none":
        p.grad = None
    elif action == "transposed" and p.dim() == 2:
        p.grad = g.t().contiguous().t()
    elif action == "scaled" and p.grad is not None:
        p.grad.mul_(0.25)


def random_write_pattern_run(backend: str, seed: int, dtype: torch.dtype, steps: int = 8,
                             device: str = "cpu", state_dtype: torch.dtype = torch.float32,
                             master_weights: bool = True) -> None:
    """Both optimizers see the same writes. For float32 each write is done to both models; for
    bfloat16 it is done to ours and the fp32 oracle is given the resulting values (weights
    written, gradients always), and our fp32 master (or weight plus compensation, without
    masters) must follow torch AdamW on fp32. Random values are drawn on the CPU and moved to
    ``device``. With bfloat16 moments, stochastically rounded, the trajectories part by up to
    2**-4 of a step's largest update (lr) per step, and a weight with a compensation instead of a
    master holds about 16 bits (2**-16 of itself per step): a write the optimizer missed moves a
    weight by far more."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    low = dtype != torch.float32
    ours_model = make_model(seed, dtype).to(device)
    ref_model = make_model(seed, dtype).float().to(device)
    names = [n for n, _ in ours_model.named_parameters()]
    cut = rng.randint(1, len(names) - 1)
    spans = [names[:cut], names[cut:]]
    mults = [rng.choice([1.0, 0.5, 0.0]), rng.choice([1.0, 0.3])]
    ours_params, ref_params = dict(ours_model.named_parameters()), dict(ref_model.named_parameters())
    ours = MLRAdamW([{"params": [ours_params[n] for n in span], "lr_mult": m, "betas": [0.9, 0.99]}
                     for span, m in zip(spans, mults)], lr=1e-2, weight_decay=0.05, backend=backend,
                    state_dtype=state_dtype, master_weights=master_weights)
    tolerance = dict(rtol=1e-5, atol=1e-6)
    ref = torch.optim.AdamW([{"params": [ref_params[n] for n in span], "lr": 1e-2 * m,
                              "betas": [0.9, 0.99]} for span, m in zip(spans, mults)], weight_decay=0.05)

    def mirror_weight(name: str) -> None:
        # A write that leaves a weight's bf16 value as it was cannot be seen: there the master
        # keeps its extra precision (less than half a bf16 unit), as start_of_next_step says.
        ref_params[name].data = start_of_next_step(ours, ours_params[name]).clone()
        ref_params[name].requires_grad_(ours_params[name].requires_grad)

    for step in range(steps):
        for name in names:
            action = rng.choice(PARAM_WRITES)
            value = torch.randn(ours_params[name].shape, generator=gen).to(device, dtype)
            _write_param(action, ours_params[name], value)
            if low and action in ("in_place", "replace"):
                mirror_weight(name)
            else:
                _write_param(action, ref_params[name], value)
        if rng.random() < 0.2:  # a checkpoint loaded into the model
            state = {k: v.to(device, dtype) for k, v in make_model(rng.randint(0, 99)).state_dict().items()}
            ours_model.load_state_dict(state)
            ref_model.load_state_dict(state)
            if low:
                for name in names:
                    mirror_weight(name)
        kind = rng.choice(("zero_grad", "zero_grad_keep", "model_zero_grad", "accumulate"))
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            if kind == "zero_grad":
                opt.zero_grad()
            elif kind == "zero_grad_keep":
                opt.zero_grad(set_to_none=False)
            elif kind == "model_zero_grad":
                model.zero_grad()
        if not low:  # backward (accumulating onto whatever .grad holds)
            x, use_side = torch.randn(4, 7, generator=gen).to(device), rng.random() < 0.7
            for model in (ours_model, ref_model):
                forward(model, x, use_side).pow(2).mean().backward()
        for name in names:
            action = rng.choice(GRAD_WRITES)
            g = torch.randn(ours_params[name].shape, generator=gen).to(device)
            for params in (ours_params,) if low else (ours_params, ref_params):
                _write_grad(action, params[name], g)
        if rng.random() < 0.3:
            torch.nn.utils.clip_grad_norm_(ours_model.parameters(), 0.5)
            if not low:
                torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
        if low:
            for name in names:
                grad = ours_params[name].grad
                ref_params[name].grad = None if grad is None else grad.float()
        if rng.random() < 0.3:
            k, beta1 = rng.randrange(2), rng.choice([0.0, 0.5, 0.9])
            for opt in (ours, ref):
                opt.param_groups[k]["betas"][0] = beta1
        if rng.random() < 0.15:
            for opt in (ours, ref):
                opt.state = defaultdict(dict)
            if low:  # the fp32 masters were state: the weights user code sees are what is left
                for name in names:
                    mirror_weight(name)
        ours.step()
        ref.step()
        if state_dtype == torch.bfloat16:
            tolerance["atol"] += 2.0**-4 * 1e-2
        if low and not master_weights:  # a weight and its compensation hold about 16 bits
            tolerance["rtol"] += 2.0**-16
        for name in names:
            got = start_of_next_step(ours, ours_params[name]) if low else ours_params[name]
            torch.testing.assert_close(got, ref_params[name], **tolerance,
                                       msg=lambda m, name=name, step=step: f"step {step}, {name}: {m}")
            if low and master_weights:  # and the weight user code sees is that, rounded
                assert torch.equal(ours_params[name], got.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_random_ties_and_relayouts_match_torch(backend, seed):
    """Ties (``b.data = a.data``, also transposed), relayouts at the same address, new storage,
    dropped gradients and state resets, in random order on square weights: after every step the
    weights are torch's single-tensor AdamW's (the order it steps tied parameters in)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(4, 4, generator=gen) for _ in range(4)]
    ours_params = [torch.nn.Parameter(t.clone()) for t in start]
    ref_params = [torch.nn.Parameter(t.clone()) for t in start]
    ours = MLRAdamW(ours_params, lr=0.1, backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=0.1, foreach=False)
    for step in range(8):
        actions = rng.choices(("tie", "tie_transposed", "relay", "new_storage", "drop", "reset"),
                              k=rng.randint(0, 2))
        (a, b), i = rng.sample(range(4), 2), rng.randrange(4)
        grads = [torch.randn(4, 4, generator=gen) for _ in range(4)]
        for params, opt in ((ours_params, ours), (ref_params, ref)):
            for action in actions:
                if action == "tie":
                    params[b].data = params[a].data
                elif action == "tie_transposed":
                    params[b].data = params[a].data.t()
                elif action == "relay":
                    params[i].data = params[i].data.t()
                elif action == "new_storage":
                    params[i].data = params[i].data.clone()
                elif action == "reset":
                    opt.state = defaultdict(dict)
            for p, g in zip(params, grads):
                p.grad = None if "drop" in actions and p is params[i] else g.clone()
            opt.step()
        where = f"step {step} after {actions}"
        for k, (p, q) in enumerate(zip(ours_params, ref_params)):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, k=k, where=where: f"{where}, param {k}: {m}")


def start_of_next_step(opt: MLRAdamW, p: torch.Tensor) -> torch.Tensor:
    """The fp32 weight a low-precision parameter's next step starts from: its master, where the
    weight is still the master rounded; what the weight holds where user code wrote it since (the
    kernels re-read those elements when they next step it); without masters, the weight plus its
    compensation (a write keeps the compensation: at most half a unit of the weight); the weight
    itself without state."""
    master = opt.state[p].get("master_param")
    compensation = opt.state[p].get("kahan_comp")
    if compensation is not None:
        return p.detach().float() + compensation.float()
    if master is None:
        return p.detach().float()
    return torch.where(master.to(p.dtype) == p, master, p.detach().float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
def test_random_write_patterns_match_torch(backend, seed):
    random_write_pattern_run(backend, seed, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(3))
def test_random_write_patterns_bf16_follow_fp32_torch(backend, seed):
    random_write_pattern_run(backend, seed, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "state_dtype", "master_weights"), [
    pytest.param(torch.float32, torch.bfloat16, True, id="fp32-bf16state"),
    pytest.param(torch.bfloat16, torch.float32, False, id="bf16-no-master"),
    pytest.param(torch.bfloat16, torch.bfloat16, False, id="bf16-bf16state-no-master")])
@pytest.mark.parametrize("seed", range(2))
def test_random_write_patterns_with_less_state_follow_fp32_torch(backend, dtype, state_dtype, master_weights,
                                                                seed):
    random_write_pattern_run(backend, seed, dtype, state_dtype=state_dtype, master_weights=master_weights)


# ------------------------------------------------- patterns found by trying to break it (round 2)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write", ["data.fill_", "data[0]", "data.clamp_", "no_grad copy_"])
def test_writes_to_low_precision_weights_the_version_counter_misses(backend, write):
    """``p.data`` (and collectives such as ``dist.broadcast``) write without bumping the version
    counter the optimizer cannot see: the kernels compare each bf16 weight with its rounded master
    and start from the weight where they differ."""
    gen = torch.Generator().manual_seed(30)
    p = torch.nn.Parameter(torch.randn(64, generator=gen).to(torch.bfloat16))
    opt = MLRAdamW([p], lr=1e-2, backend=backend)
    for _ in range(2):
        p.grad = torch.randn(64, generator=gen).to(torch.bfloat16)
        opt.step()
    with torch.no_grad():
        if write == "data.fill_":
            p.data.fill_(1.0)
        elif write == "data[0]":
            p.data[:32] = 3.0
        elif write == "data.clamp_":
            p.data.clamp_(min=0.5)
        else:
            p.copy_(torch.full_like(p, -2.0))
    start = start_of_next_step(opt, p)
    assert torch.equal(start.to(torch.bfloat16), p)  # the written values, not the old master
    written = p != opt.state[p]["master_param"].to(torch.bfloat16)
    assert written.any() and torch.equal(start[written], p[written].float())
    twin = torch.nn.Parameter(start.clone())  # unwritten elements keep their fp32 master
    ref = torch.optim.AdamW([twin], lr=1e-2)
    saved = copy.deepcopy(opt.state_dict())  # torch's load keeps the tensors it is given
    ref.load_state_dict({"state": {0: {k: v for k, v in saved["state"][0].items()
                                       if k in ("step", "exp_avg", "exp_avg_sq")}},
                         "param_groups": saved["param_groups"]})
    g = torch.randn(64, generator=gen).to(torch.bfloat16)
    p.grad, twin.grad = g, g.float()
    opt.step()
    ref.step()
    torch.testing.assert_close(opt.state[p]["master_param"], twin, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_optimizers_over_one_bf16_parameter(backend):
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    a = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    b = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend=backend)
    for _ in range(3):
        p.grad = torch.ones(4, dtype=torch.bfloat16)
        a.step()
        b.step()
    # Each step starts from the other's bf16 result: 6 roundings of at most half a unit (2**-9).
    torch.testing.assert_close(p.float(), torch.full((4,), 0.4), rtol=0, atol=6 * 2**-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surgery", ["swap", "move", "reverse", "replace", "insert", "delete"])
def test_param_group_surgery_is_followed(backend, surgery):
    """Editing ``param_groups`` the way trainers do (same number of parameters or not): the
    optimizer steps the groups as they are now, with their learning rates."""
    def build(kind):
        a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
        groups = [{"params": [], "lr": 0.5}, {"params": [a, b], "lr": 0.1}, {"params": [], "lr": 0.0}]
        opt = (MLRAdamW(groups, weight_decay=0.0, backend=backend) if kind == "ours"
               else torch.optim.AdamW(groups, weight_decay=0.0))
        return opt, (a, b, c)

    results = []
    for kind in ("ours", "torch"):
        opt, (a, b, c) = build(kind)
        a.grad, b.grad, c.grad = torch.ones(2), torch.ones(2), torch.ones(2)
        opt.step()
        groups = opt.param_groups
        if surgery == "swap":
            groups[1]["params"][1] = c
            opt.state[c] = opt.state.pop(b)
        elif surgery == "move":
            del groups[1]["params"][1]  # b
            groups[2]["params"].append(b)
        elif surgery == "reverse":
            groups.reverse()
        elif surgery == "replace":
            groups[1]["params"] = [a, c]
        elif surgery == "insert":
            groups.insert(0, {**groups[1], "params": [], "lr": 0.3})
        else:
            del groups[0]
        opt.step()
        results.append([t.detach().clone() for t in (a, b, c)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_user_code_assigned_are_followed_when_edited_in_place(backend):
    """The optimizer's own ``params`` lists and ``state`` mapping count their changes; a list or a
    mapping user code assigned does not, and an edit made in place to it later is still seen."""
    results = []
    for kind in ("ours", "torch"):
        a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
        groups = [{"params": [a, b], "lr": 0.1}, {"params": [c], "lr": 0.3}]
        opt = (MLRAdamW(groups, weight_decay=0.0, backend=backend) if kind == "ours"
               else torch.optim.AdamW(groups, weight_decay=0.0))
        for step in range(5):
            for p in (a, b, c):
                p.grad = torch.full((2,), 1.0 + step)
            if step == 1:
                opt.param_groups[0]["params"] = [a]  # b leaves: a list of user code's own
                opt.state = defaultdict(dict, opt.state)  # and a mapping
            elif step == 2:
                opt.param_groups[0]["params"].append(b)  # edited in place
            elif step == 3:
                del opt.state[b]  # b starts afresh
            opt.step()
        results.append([t.detach().clone() for t in (a, b, c)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_amsgrad_switched_on_before_the_first_step(backend):
    p, q = ones_param(), ones_param()
    ours = MLRAdamW([p], lr=0.1, backend=backend)
    ref = torch.optim.AdamW([q], lr=0.1)
    for opt in (ours, ref):
        opt.param_groups[0]["amsgrad"] = True
    for g in (torch.tensor([1.0, 2.0]), torch.tensor([0.1, -3.0]), torch.tensor([0.2, 0.2])):
        for param, opt in ((p, ours), (q, ref)):
            param.grad = g.clone()
            opt.step()
    torch.testing.assert_close(p, q)
    assert "max_exp_avg_sq" in ours.state[p]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_hyperparameters_edited_in_place(backend):
    results = []
    for kind in ("ours", "torch"):
        p = torch.nn.Parameter(torch.ones(3))
        wd, eps = torch.tensor(0.01), torch.tensor(1e-8)
        betas = (torch.tensor(0.9), torch.tensor(0.999))
        opt = (MLRAdamW([p], lr=0.1, weight_decay=wd, eps=eps, betas=betas, backend=backend)
               if kind == "ours" else torch.optim.AdamW([p], lr=0.1, weight_decay=wd, eps=eps, betas=betas))
        for k in range(4):
            if k == 1:
                wd.fill_(0.5)
            if k == 2:
                eps.fill_(0.1)
                betas[0].fill_(0.5)
            p.grad = torch.tensor([1.0, -2.0, 3.0]) * (k + 1)
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(*results)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_hyperparameters_edited_in_place_or_replaced(backend):
    """Group values held as numpy arrays (a 0-d ``lr`` or ``weight_decay``, a ``betas`` array)
    are read at every step as torch reads them: replacing plain values, written in place or
    replaced again. (torch refuses a 0-d array ``eps``: a numpy scalar here.)"""
    results = []
    for kind in ("ours", "torch"):
        p = torch.nn.Parameter(torch.ones(3))
        group = {"params": [p], "lr": np.array(0.1), "weight_decay": 0.01, "betas": (0.9, 0.999)}
        opt = (MLRAdamW([group], backend=backend) if kind == "ours" else torch.optim.AdamW([group]))
        values = opt.param_groups[0]
        for k in range(7):
            if k == 1:  # arrays where a tuple and a float were
                values["betas"], values["weight_decay"] = np.array([0.9, 0.999]), np.array(0.01)
            if k == 2:
                values["weight_decay"][()] = 0.5
            if k == 3:
                values["betas"][0] = 0.5
            if k == 4:
                values["lr"][()] = 0.05
            if k == 5:
                values["betas"], values["eps"] = np.array([0.8, 0.99]), np.float64(0.1)
            p.grad = torch.tensor([1.0, -2.0, 3.0]) * (k + 1)
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(*results)


def test_load_state_dict_hooks_are_honoured():
    results = []
    for kind in ("ours", "torch"):
        p = ones_param()
        opt = MLRAdamW([p], lr=0.1, backend="reference") if kind == "ours" else torch.optim.AdamW([p], lr=0.1)
        p.grad = torch.tensor([1.0, 2.0])
        opt.step()
        saved = copy.deepcopy(opt.state_dict())

        def zero_exp_avg(_, state_dict):
            state_dict = copy.deepcopy(state_dict)
            state_dict["state"][0]["exp_avg"].zero_()
            return state_dict

        def halve_exp_avg_sq(o, p=p):
            o.state[p]["exp_avg_sq"].mul_(0.5)

        opt.register_load_state_dict_pre_hook(zero_exp_avg)
        opt.register_load_state_dict_post_hook(halve_exp_avg_sq)
        opt.load_state_dict(saved)
        p.grad = torch.tensor([0.5, 0.5])
        opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(*results)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["dtype", "size"])
def test_gradient_of_the_wrong_dtype_or_size_is_refused(backend, bad):
    """``p.grad.data = t`` gets past torch's own checks; the kernels would read the wrong bytes."""
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = MLRAdamW([p], backend=backend)
    p.grad = torch.ones(8, dtype=torch.bfloat16)
    p.grad.data = torch.ones(8) if bad == "dtype" else torch.ones(2, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="gradient"):
        opt.step()


def test_frozen_parameters_get_no_state_and_exotic_frozen_ones_are_accepted():
    """As torch, state exists only for parameters that have had a gradient: a frozen base model
    (LoRA) costs nothing, whatever its dtype or device."""
    base = torch.nn.Linear(256, 256)
    base.requires_grad_(False)
    adapter = torch.nn.Parameter(torch.randn(4, 256))
    quantized = torch.nn.Parameter(torch.zeros(16, dtype=torch.uint8), requires_grad=False)
    offloaded = torch.nn.Parameter(torch.empty(16, device="meta"), requires_grad=False)
    opt = MLRAdamW([*base.parameters(), adapter, quantized, offloaded], backend="reference")
    assert opt.state_dict()["state"] == {}
    adapter.grad = torch.randn(4, 256)
    opt.step()
    assert set(opt.state) == {adapter}
    assert sum(b.exp_avg.numel() for b in opt.buckets) < 2 * adapter.numel()
    with pytest.raises(ValueError, match="float64"):
        MLRAdamW([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_checkpoint_with_a_frozen_layer_resumes_through_dcp(backend, tmp_path):
    import torch.distributed.checkpoint as dcp

    m_ours, m_ref = make_model(31), make_model(31)
    for model in (m_ours, m_ref):
        model["side"].requires_grad_(False)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(31)
    ref.zero_grad()
    forward(m_ref, torch.randn(4, 7, generator=gen)).pow(2).mean().backward()
    ref.step()
    dcp.save({"optim": get_optimizer_state_dict(m_ref, ref)}, checkpoint_id=tmp_path)
    m_ours.load_state_dict(m_ref.state_dict())
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend=backend)
    template = {"optim": get_optimizer_state_dict(m_ours, ours)}
    dcp.load(template, checkpoint_id=tmp_path)
    set_optimizer_state_dict(m_ours, ours, template["optim"])
    for model, opt in ((m_ours, ours), (m_ref, ref)):
        opt.zero_grad()
        forward(model, torch.ones(4, 7)).pow(2).mean().backward()
        opt.step()
    assert_same_params(m_ours, m_ref)


def test_optimizer_built_under_inference_mode_trains():
    p = ones_param()
    with torch.inference_mode():
        opt = MLRAdamW([p], lr=0.1, weight_decay=0.0, backend="reference")
    p.grad = torch.ones(2)
    opt.step()
    torch.testing.assert_close(p, torch.full((2,), 0.9))


def test_state_dict_of_another_size_is_refused_as_torch_refuses_it():
    opt = MLRAdamW([ones_param(), ones_param()], backend="reference")
    small = MLRAdamW([ones_param()], backend="reference").state_dict()
    with pytest.raises(ValueError, match="doesn't match the size"):
        opt.load_state_dict(small)


def test_per_parameter_multipliers_survive_loading_a_torch_state_dict():
    p, q = ones_param(), ones_param()
    ref = torch.optim.AdamW([q], lr=0.1)
    q.grad = torch.ones(2)
    ref.step()
    opt = MLRAdamW([p], lr=0.1, backend="reference")
    opt.set_lr_mult({p: 0.5})
    opt.load_state_dict(ref.state_dict())
    assert opt.lr_mult_of(p) == 0.5


# ------------------------------------------------------- trainer patterns (issue 17, item 3)
def _train(pairs, steps: int, gen: torch.Generator) -> None:
    for _ in range(steps):
        x = torch.randn(4, 7, generator=gen)
        for model, opt in pairs:
            opt.zero_grad()
            forward(model, x.to(next(model.parameters()).dtype)).float().pow(2).mean().backward()
            opt.step()


def assert_same_state(ours: dict, theirs: dict) -> None:
    """Two state_dicts' state (as ``state_dict()["state"]``) hold the same values, fp32 rounding
    apart (torch keeps ``step`` in float32, MLRAdamW in float64)."""
    assert ours.keys() == theirs.keys()
    for index, entry in ours.items():
        assert entry.keys() == theirs[index].keys()
        for key, value in entry.items():
            torch.testing.assert_close(value.to(theirs[index][key].dtype), theirs[index][key], rtol=1e-5,
                                       atol=1e-7, msg=lambda m, index=index, key=key: f"{index}/{key}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["replace", "data"])
def test_state_offloaded_and_reloaded_between_steps_is_followed(backend, how):
    """Three steps, the state moved away and back (as verl or ms-swift do between rollouts),
    three more: the weights, the state_dict (step 6, not 3) and a resume from it are torch's."""
    m_ours, m_ref = make_model(40), make_model(40)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(40)
    _train([(m_ours, ours), (m_ref, ref)], 3, gen)
    bucket = ours.buckets[0]
    flat = weakref.ref(bucket.exp_avg)
    for opt in (ours, ref):
        move_state(opt, how)
    if how == "replace":  # no view of the buffers is left: their memory is freed while away
        assert flat() is None and bucket.exp_avg is None
    for opt in (ours, ref):
        move_state(opt, how)
    _train([(m_ours, ours), (m_ref, ref)], 3, gen)
    assert_same_params(m_ours, m_ref)
    saved_ours, saved_ref = copy.deepcopy(ours.state_dict()), copy.deepcopy(ref.state_dict())
    assert saved_ours["state"][0]["step"].item() == 6
    assert_same_state(saved_ours["state"], saved_ref["state"])
    resumed = []
    for saved, build in ((saved_ours, lambda ps: MLRAdamW(ps, lr=1e-2, backend=backend)),
                         (saved_ref, lambda ps: torch.optim.AdamW(ps, lr=1e-2))):
        model = copy.deepcopy(m_ref)
        opt = build(model.parameters())
        opt.load_state_dict(saved)
        resumed.append((model, opt))
    _train(resumed, 2, gen)
    assert_same_params(resumed[0][0], resumed[1][0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["replace", "data"])
def test_bf16_state_offloaded_and_reloaded_is_invisible(backend, how):
    """bf16 weights (their fp32 masters are state too): moving the state away and back between
    steps changes nothing, bit for bit, against the same training without the move."""
    runs = []
    for move in (False, True):
        model = make_model(41, torch.bfloat16)
        opt = MLRAdamW(model.parameters(), lr=1e-2, backend=backend)
        gen = torch.Generator().manual_seed(41)
        _train([(model, opt)], 2, gen)
        if move:
            move_state(opt, how)
            move_state(opt, how)
        _train([(model, opt)], 2, gen)
        runs.append((model, opt.state_dict()))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    for entry, moved in zip(runs[0][1]["state"].values(), runs[1][1]["state"].values()):
        for key in ("step", "exp_avg", "exp_avg_sq", "master_param"):
            assert torch.equal(entry[key], moved[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_tensors_replaced_or_rewritten_between_steps_are_used(backend):
    """New values put in the state by replacing a tensor or its ``.data`` are where the next
    step starts, as with torch; a tensor of another shape is refused in one line."""
    m_ours, m_ref = make_model(42), make_model(42)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(42)
    _train([(m_ours, ours), (m_ref, ref)], 2, gen)
    for model, opt in ((m_ours, ours), (m_ref, ref)):
        weight, bias = model["mid"].weight, model["out"].bias
        opt.state[weight]["exp_avg"] = torch.full_like(weight, 0.25)
        opt.state[weight]["step"] = torch.tensor(7.0)
        opt.state[bias]["exp_avg_sq"].data = torch.full_like(bias, 0.5)
    _train([(m_ours, ours), (m_ref, ref)], 2, gen)
    assert_same_params(m_ours, m_ref)
    assert_same_state(ours.state_dict()["state"], ref.state_dict()["state"])
    ours.state[m_ours["inp"].weight]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*'exp_avg' has shape \(3,\)"):
        _train([(m_ours, ours)], 1, gen)


@pytest.mark.parametrize("named", [False, True])
def test_checkpoint_of_parameters_in_another_order_is_refused_at_load(named):
    """pytorch/pytorch#1489: an MLP's up [32, 8] and down [8, 32], loaded after a refactor into
    parameters listed the other way round. torch loads and fails at the first step; MLRAdamW
    refuses at the load, names the parameter and both shapes, and is left as it was."""
    def mlp():
        torch.manual_seed(43)
        return torch.nn.ModuleDict({"up": torch.nn.Linear(8, 32, bias=False),
                                    "down": torch.nn.Linear(32, 8, bias=False)})

    def params(model, order):
        listed = [(name, model[name.split(".")[0]].weight) for name in order]
        return listed if named else [p for _, p in listed]

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(43))
    saved = {}
    for kind, build in (("ours", lambda ps: MLRAdamW(ps, lr=1e-2, backend="reference")),
                        ("torch", lambda ps: torch.optim.AdamW(ps, lr=1e-2))):
        model = mlp()
        opt = build(params(model, ["up.weight", "down.weight"]))
        model["down"](model["up"](x)).pow(2).mean().backward()
        opt.step()
        saved[kind] = opt.state_dict()
    model = mlp()
    ref = torch.optim.AdamW(params(model, ["down.weight", "up.weight"]), lr=1e-2)
    ref.load_state_dict(saved["torch"])
    model["down"](model["up"](x)).pow(2).mean().backward()
    with pytest.raises(RuntimeError, match="must match the size"):
        ref.step()
    model, twin = mlp(), mlp()
    ours = MLRAdamW(params(model, ["down.weight", "up.weight"]), lr=1e-2, backend="reference")
    where = "parameter 'down.weight'" if named else r"param_groups\[0\]\['params'\]\[0\]"
    with pytest.raises(ValueError, match=rf"load_state_dict: {where}: optimizer state 'exp_avg' has "
                                         r"shape \(32, 8\) but the parameter has shape \(8, 32\)"):
        ours.load_state_dict(saved["ours"])
    fresh = torch.optim.AdamW(params(twin, ["down.weight", "up.weight"]), lr=1e-2)
    for m, opt in ((model, ours), (twin, fresh)):
        m["down"](m["up"](x)).pow(2).mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def conv_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_weights_step_in_their_layout_like_torch(backend):
    """channels_last conv weights step where they are: weights and state as torch's (the
    state in the weight's layout, as ``zeros_like(p, memory_format=torch.preserve_format)``),
    with a gradient in another layout and a weight made contiguous after some steps."""
    models = [conv_net(44).to(memory_format=torch.channels_last) for _ in range(2)]
    ours = MLRAdamW(models[0].parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(models[1].parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(44)
    for step in range(5):
        x = torch.randn(2, 3, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
        for model, opt in zip(models, (ours, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            weight = model[0].weight
            assert weight.grad.stride() == weight.stride() != weight.contiguous().stride()
            if step == 1:  # a gradient in the contiguous layout
                weight.grad = weight.grad.contiguous()
            if step == 3:  # the weight itself made contiguous: its state stays channels_last
                model[2].weight.data = model[2].weight.data.contiguous()
            opt.step()
    assert_same_params(*models)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert ours.state[p][key].stride() == ref.state[q][key].stride(), key
    assert ours.state[models[0][0].weight]["exp_avg"].stride() == models[0][0].weight.stride()
    assert_same_state(ours.state_dict()["state"], ref.state_dict()["state"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_stepped_from_every_gradient_hook_matches_torch(backend):
    """Optimizer in backward with one shared optimizer: every parameter's post-accumulate-grad
    hook steps it and zeroes the gradients. The first backward meets one new gradient per step;
    each is appended to the one bucket (never a re-pack), and the buffers' spare room is given
    back at the next backward."""
    models = [torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(12)]) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = MLRAdamW(models[0].parameters(), lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(models[1].parameters(), lr=1e-2)
    buckets_seen = []

    def hook(_, opt):
        opt.step()
        opt.zero_grad()
        if opt is ours:
            buckets_seen.append(ours._buckets[0])

    for model, opt in zip(models, (ours, ref)):
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(partial(hook, opt=opt))
    gen = torch.Generator().manual_seed(45)
    for _ in range(3):
        x = torch.randn(4, 6, generator=gen)
        for model in models:
            model(x).pow(2).mean().backward()
        assert_same_params(*models)
    assert len(buckets_seen) == 3 * 24 and all(b is buckets_seen[0] for b in buckets_seen)
    bucket = buckets_seen[0]
    assert bucket.exp_avg.numel() == bucket.table.used_length
    assert_same_state(ours.state_dict()["state"], ref.state_dict()["state"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_parameters_keep_torchs_order_when_the_later_one_gets_state_first(backend):
    """``b.data = a.data``, listed [a, b, c]; b steps first, so it is packed first and a is
    appended after it: the tie is still stepped a then b, as torch's single-tensor AdamW does."""
    gen = torch.Generator().manual_seed(46)
    a, c = (torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(2))
    b = torch.nn.Parameter(torch.zeros(3))
    b.data = a.data
    refs = [torch_twin(a), torch.nn.Parameter(torch.zeros(3)), torch_twin(c)]
    refs[1].data = refs[0].data
    ours = MLRAdamW([a, b, c], lr=0.1, backend=backend)
    ref = torch.optim.AdamW(refs, lr=0.1, foreach=False)
    for live in ([1], [0, 2], [0, 1, 2], [0, 1, 2]):
        grads = [torch.randn(3, generator=gen) for _ in range(3)]
        for params, opt in (([a, b, c], ours), (refs, ref)):
            for k, param in enumerate(params):
                param.grad = grads[k] if k in live else None
            opt.step()
    for got, want in zip((a, b, c), refs):
        torch.testing.assert_close(got, want)
