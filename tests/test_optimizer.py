"""MLRAdamW against torch.optim.AdamW: trajectories, state_dict both ways, schedulers, grads."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from mlr_kernels import MLRAdamW
from tests.optim_cases import (
    assert_same_params,
    available_backends,
    build_pair,
    forward,
    make_model,
    random_groups,
    train_both,
)

# Every test runs with the per-step reads in C++ and in Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_host_read_path")

BACKEND_PARAMS = available_backends()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_groups_and_multipliers_match_torch(backend, seed):
    groups = random_groups(make_model(0), random.Random(seed))
    m_ours, m_ref = make_model(seed), make_model(seed)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)
    train_both([(m_ours, ours), (m_ref, ref)], steps=8, seed=seed)
    assert_same_params(m_ours, m_ref)
    assert any(not torch.equal(p, q) for p, q in zip(m_ours.parameters(), make_model(seed).parameters()))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("flags", [dict(amsgrad=True), dict(maximize=True)])
def test_amsgrad_and_maximize_match_torch(backend, flags):
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2), 0.5)]
    m_ours, m_ref = make_model(3), make_model(3)
    ours, ref = build_pair(groups, m_ours, m_ref, backend, **flags)
    train_both([(m_ours, ours), (m_ref, ref)], steps=6, seed=3)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_parameter_without_grad_is_left_alone_with_its_own_step(backend):
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2, weight_decay=0.1), 1.0)]
    m_ours, m_ref = make_model(4), make_model(4)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)
    side_before = m_ours["side"].weight.detach().clone()
    # "side" gets a gradient on odd steps only; torch leaves it untouched (no decay) otherwise.
    train_both([(m_ours, ours), (m_ref, ref)], steps=3, seed=4, use_side=lambda s: False)
    assert torch.equal(m_ours["side"].weight, side_before)
    train_both([(m_ours, ours), (m_ref, ref)], steps=6, seed=5, use_side=lambda s: s % 2 == 1)
    assert_same_params(m_ours, m_ref)
    side_steps = (ours.state[m_ours["side"].weight]["step"], ref.state[m_ref["side"].weight]["step"])
    assert side_steps[0].item() == side_steps[1].item() == 3
    assert ours.state[m_ours["inp"].weight]["step"].item() == 9


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_replaced_grads_are_detected(backend):
    """model.zero_grad() sets grads to None, so backward allocates new ones outside the buffer."""
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2), 1.0)]
    m_ours, m_ref = make_model(6), make_model(6)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)

    gen = torch.Generator().manual_seed(6)
    for step in range(5):
        x = torch.randn(6, 7, generator=gen)
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            model.zero_grad()  # grads -> None, not the optimizer's zero_grad
            use_side = step != 2
            forward(model, x, use_side).pow(2).mean().backward()
            if step == 3:  # a user who replaces a grad tensor outright
                model["out"].bias.grad = model["out"].bias.grad.clone() * 2
            opt.step()
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_zero_grad_without_set_to_none_keeps_zero_grads_live(backend):
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2, weight_decay=0.1), 1.0)]
    m_ours, m_ref = make_model(7), make_model(7)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)
    train_both([(m_ours, ours), (m_ref, ref)], steps=2, seed=7)
    for opt in (ours, ref):  # zero, live grads: torch still decays and applies momentum
        opt.zero_grad(set_to_none=False)
        opt.step()
    assert_same_params(m_ours, m_ref)


def test_parameters_and_gradients_stay_the_tensors_user_code_holds():
    """Nothing is re-pointed: the optimizer keeps its state in flat buffers and reads .data and
    .grad where they are, so a module's tensors own their storage."""
    model = make_model(8)
    before = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    opt = MLRAdamW(model.parameters(), backend="reference")
    forward(model, torch.randn(4, 7)).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        assert p is before[name][0] and p.data_ptr() == before[name][1]
        assert p.grad is grads[name]
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_state_dict_loads_into_torch_and_training_continues_identically(backend):
    groups = [([n for n, _ in make_model(0).named_parameters()][:4], dict(lr=1e-2), 1.0),
              ([n for n, _ in make_model(0).named_parameters()][4:], dict(lr=3e-3, weight_decay=0.0), 1.0)]
    m_ours, m_ref = make_model(9), make_model(9)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)
    train_both([(m_ours, ours)], steps=4, seed=9)
    m_ref.load_state_dict(m_ours.state_dict())
    ref.load_state_dict(copy.deepcopy(ours.state_dict()))
    train_both([(m_ours, ours), (m_ref, ref)], steps=4, seed=10)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_torch_state_dict_loads_into_mlr_and_training_continues_identically(backend):
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2, amsgrad=True), 1.0)]
    m_ours, m_ref = make_model(11), make_model(11)
    ours, ref = build_pair(groups, m_ours, m_ref, backend, amsgrad=True)
    train_both([(m_ref, ref)], steps=4, seed=11)
    m_ours.load_state_dict(m_ref.state_dict())
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    train_both([(m_ours, ours), (m_ref, ref)], steps=4, seed=12)
    assert_same_params(m_ours, m_ref)


def test_own_state_dict_round_trip_keeps_fp32_moments_of_bf16_params():
    model = make_model(13, torch.bfloat16)
    opt = MLRAdamW(model.parameters(), lr=1e-2, backend="reference")
    train_both([(model, opt)], steps=3, seed=13)
    saved = copy.deepcopy(opt.state_dict())
    clone = make_model(99, torch.bfloat16)
    clone.load_state_dict(model.state_dict())
    opt2 = MLRAdamW(clone.parameters(), lr=1e-2, backend="reference")
    opt2.load_state_dict(saved)
    first = next(iter(opt2.state.values()))
    assert first["exp_avg"].dtype == torch.float32 and first["master_param"].dtype == torch.float32
    train_both([(model, opt), (clone, opt2)], steps=3, seed=14)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    "linear_warmup": lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_drive_the_learning_rate(name):
    groups = [([n for n, _ in make_model(0).named_parameters()][:5], dict(lr=1e-2), 1.0),
              ([n for n, _ in make_model(0).named_parameters()][5:], dict(lr=2e-2), 1.0)]
    m_ours, m_ref = make_model(15), make_model(15)
    ours, ref = build_pair(groups, m_ours, m_ref, "reference")
    scheds = [SCHEDULERS[name](ours), SCHEDULERS[name](ref)]

    def step_and_schedule(opt):
        opt.step()
        scheds[0 if opt is ours else 1].step()

    train_both([(m_ours, ours), (m_ref, ref)], steps=8, seed=15, step_fn=step_and_schedule)
    assert_same_params(m_ours, m_ref)


def test_lr_mult_scales_only_the_learning_rate_under_a_scheduler():
    """lr_mult=0.25 under a scheduler equals torch AdamW whose lr is a quarter, at every step."""
    groups = [([n for n, _ in make_model(0).named_parameters()], dict(lr=1e-2), 0.25)]
    m_ours, m_ref = make_model(16), make_model(16)
    ours, ref = build_pair(groups, m_ours, m_ref, "reference")
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6) for o in (ours, ref)]

    def step_and_schedule(opt):
        opt.step()
        scheds[0 if opt is ours else 1].step()

    train_both([(m_ours, ours), (m_ref, ref)], steps=6, seed=16, step_fn=step_and_schedule)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_tensor_lr_changed_in_place_is_read_at_every_step(backend):
    """A tensor lr (what a CUDA-graph capture of step() needs) is re-read each step, so filling it
    in place acts like a scheduler; lr_mult still applies."""
    m_ours, m_ref = make_model(21), make_model(21)
    lr = torch.tensor(1e-2)
    ours = MLRAdamW(m_ours.parameters(), lr=lr, lr_mult=0.5, backend=backend)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=5e-3, foreach=False)
    schedule = [1e-2, 4e-3, 2e-2, 1e-3, 7e-3]

    def step(opt):
        k = step.calls[opt] = step.calls.get(opt, -1) + 1
        if opt is ours:
            lr.fill_(schedule[k])
        else:
            opt.param_groups[0]["lr"] = schedule[k] * 0.5
        opt.step()

    step.calls = {}
    train_both([(m_ours, ours), (m_ref, ref)], steps=len(schedule), seed=21, step_fn=step)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_group_hyperparameters_edited_between_steps_take_effect(backend):
    """Writing a group's weight_decay, betas or eps in place between steps, as some trainers do,
    changes the next step exactly as it does for torch.optim.AdamW."""
    names = [n for n, _ in make_model(0).named_parameters()]
    groups = [(names[:4], dict(lr=1e-2, weight_decay=0.0), 1.0), (names[4:], dict(lr=2e-2), 0.5)]
    m_ours, m_ref = make_model(22), make_model(22)
    ours, ref = build_pair(groups, m_ours, m_ref, backend)
    edits = {2: dict(weight_decay=0.3), 3: dict(betas=(0.5, 0.9)), 4: dict(eps=1e-3)}

    def step(opt):
        k = step.calls[opt] = step.calls.get(opt, -1) + 1
        for group in opt.param_groups:
            group.update(edits.get(k, {}))
        opt.step()

    step.calls = {}
    train_both([(m_ours, ours), (m_ref, ref)], steps=6, seed=22, step_fn=step)
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_set_lr_mult_by_name_and_by_parameter(backend):
    m_ours, m_ref = make_model(17), make_model(17)
    ours = MLRAdamW(m_ours.named_parameters(), lr=1e-2, backend=backend)
    ours.set_lr_mult({"mid.weight": 0.1, m_ours["out"].bias: 0.0})
    ref_groups = [{"params": [p], "lr": 1e-2 * {"mid.weight": 0.1, "out.bias": 0.0}.get(n, 1.0)}
                  for n, p in m_ref.named_parameters()]
    ref = torch.optim.AdamW(ref_groups)
    out_bias = m_ours["out"].bias.detach().clone()
    train_both([(m_ours, ours), (m_ref, ref)], steps=5, seed=17)
    assert_same_params(m_ours, m_ref)
    # lr 0 still applies no update at all (decay is lr * wd), so the parameter is unchanged.
    assert torch.equal(m_ours["out"].bias, out_bias)
    with pytest.raises(KeyError, match="no parameter named"):
        ours.set_lr_mult({"nope": 1.0})


def test_add_param_group_after_steps():
    m_ours, m_ref = make_model(18), make_model(18)
    names = [n for n, _ in m_ours.named_parameters()]
    ours = MLRAdamW([p for n, p in m_ours.named_parameters() if n.startswith("inp")], lr=1e-2,
                    backend="reference")
    ref = torch.optim.AdamW([p for n, p in m_ref.named_parameters() if n.startswith("inp")], lr=1e-2)
    train_both([(m_ours, ours), (m_ref, ref)], steps=3, seed=18)
    rest_ours = [p for n, p in m_ours.named_parameters() if not n.startswith("inp")]
    ours.add_param_group({"params": rest_ours, "lr": 5e-3, "lr_mult": 2.0})
    ref.add_param_group({"params": [p for n, p in m_ref.named_parameters() if not n.startswith("inp")],
                         "lr": 1e-2})
    train_both([(m_ours, ours), (m_ref, ref)], steps=3, seed=19)
    assert_same_params(m_ours, m_ref)
    assert len(names) == sum(len(g["params"]) for g in ours.param_groups)


def test_closure_is_called_with_grad_enabled_and_its_loss_returned():
    model = make_model(20)
    opt = MLRAdamW(model.parameters(), backend="reference")
    x = torch.randn(3, 7)
    def closure():
        opt.zero_grad()
        loss = forward(model, x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.requires_grad and loss.item() > 0


def test_grad_scaler_unscales_and_skips_non_finite_steps():
    m_ours, m_ref = make_model(21), make_model(21)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend="reference")
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    gen = torch.Generator().manual_seed(21)
    for step in range(5):
        x = torch.randn(6, 7, generator=gen)
        if step == 2:
            x[0, 0] = float("inf")  # this step's grads are non-finite: both must skip it
        for (model, opt), scaler in zip(((m_ours, ours), (m_ref, ref)), scalers):
            opt.zero_grad()
            scaler.scale(forward(model, x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
    assert_same_params(m_ours, m_ref)
    assert ours.state[m_ours["inp"].weight]["step"].item() == 4
    assert all(torch.isfinite(p).all() for p in m_ours.parameters())


def test_fused_clip_grad_norm_matches_torch_clipping():
    m_ours, m_ref = make_model(22), make_model(22)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend="reference")
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(22)
    for _ in range(4):
        x = torch.randn(6, 7, generator=gen) * 10
        norms = []
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            if opt is ours:
                norms.append(ours.clip_grad_norm_(0.5))
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5))
            opt.step()
        torch.testing.assert_close(norms[0], norms[1])
        assert norms[1] > 0.5  # clipping really happened
    assert_same_params(m_ours, m_ref)


def test_bf16_parameters_follow_fp32_master_weights():
    """Same gradients into a bf16 model (fp32 master) and an fp32 torch AdamW: the master equals
    the fp32 trajectory and the bf16 parameter is the master rounded to nearest."""
    low, high = make_model(23, torch.bfloat16), make_model(23, torch.bfloat16).float()
    ours = MLRAdamW(low.parameters(), lr=1e-2, backend="reference")
    ref = torch.optim.AdamW(high.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(23)
    for _ in range(5):
        ours.zero_grad()
        ref.zero_grad()
        for p, q in zip(low.parameters(), high.parameters()):
            g = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            p.grad = g  # a replaced grad: the optimizer copies it into its buffer
            q.grad = g.float()
        ours.step()
        ref.step()
    for p, q in zip(low.parameters(), high.parameters()):
        master = ours.state[p]["master_param"]
        torch.testing.assert_close(master, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(p, master.to(torch.bfloat16))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MLRAdamW([torch.zeros(3, dtype=torch.complex64, requires_grad=True)]), "complex"),
        (lambda: MLRAdamW([torch.zeros(3, dtype=torch.float64, requires_grad=True)]), "float64"),
        (lambda: MLRAdamW([{"params": [torch.nn.Parameter(torch.ones(2))] * 2}]), "twice"),
        (lambda: MLRAdamW([torch.nn.Parameter(torch.ones(2))], lr=-1.0), "learning rate"),
        (lambda: MLRAdamW([torch.nn.Parameter(torch.ones(2))], betas=(0.9, 1.0)), "betas"),
        (lambda: MLRAdamW([torch.nn.Parameter(torch.ones(2))], differentiable=True), "differentiable"),
        (lambda: MLRAdamW([torch.nn.Parameter(torch.ones(2))], backend="tpu"), "unknown backend"),
    ],
)
def test_bad_input_is_rejected_at_construction(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_parameter_in_two_groups_is_rejected():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        MLRAdamW([{"params": [p]}, {"params": [p]}])


def test_sparse_gradient_is_rejected_at_step():
    weight = torch.nn.Parameter(torch.randn(10, 4))
    opt = MLRAdamW([weight], backend="reference")
    weight.grad = torch.randn(10, 4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_sparse_embedding_gradient_is_refused_like_torch():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    for opt in (MLRAdamW(emb.parameters(), backend="reference"), torch.optim.AdamW(emb.parameters())):
        opt.zero_grad()
        emb(torch.tensor([1, 2, 2])).pow(2).sum().backward()
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            opt.step()


def test_nan_gradient_without_a_scaler_propagates_like_torch():
    """Without a GradScaler, torch AdamW applies a NaN gradient; so do we (no silent masking)."""
    m_ours, m_ref = make_model(24), make_model(24)
    ours = MLRAdamW(m_ours.parameters(), backend="reference")
    ref = torch.optim.AdamW(m_ref.parameters())
    for model, opt in ((m_ours, ours), (m_ref, ref)):
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.full_like(p, float("nan"))
        opt.step()
    for p, q in zip(m_ours.parameters(), m_ref.parameters()):
        assert torch.isnan(p).all() == torch.isnan(q).all()


def test_a_compiled_training_step_stops_at_the_optimizer_and_matches_eager():
    """torch.compile of forward, backward and step: Dynamo leaves ``step()`` to run eagerly (one
    graph break, as at torch's own ``zero_grad``), so it neither traces the host-side bookkeeping
    (a fresh optimizer's packing fails to functionalize) nor changes the numbers."""
    def run(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        opt = MLRAdamW(model.parameters(), lr=1e-2, backend="reference")
        x = torch.randn(4, 8)

        def train_step() -> None:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

        step = torch.compile(train_step, backend="aot_eager") if compiled else train_step
        for _ in range(3):
            step()
        return [p.detach().clone() for p in model.parameters()]

    torch._dynamo.reset()
    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want)
