"""The optimizer contract on a GPU, for the CUDA and Triton backends (skipped without one): the
randomized write patterns of tests/test_optimizer_contract.py on CUDA tensors, a model moved to
the GPU after the optimizer was built, a CUDA-graph capture of step() replayed while a tensor
learning rate changes, and the state offloaded to the CPU and back between steps."""

from __future__ import annotations

import pytest
import torch

from mlr_kernels import MLRAdamW
from mlr_kernels.backends import unavailable_reason
from tests.optim_cases import assert_same_params, forward, make_model
from tests.test_optimizer_contract import random_write_pattern_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    torch.cuda.is_available() and unavailable_reason(name, "cuda") is not None,
    reason=f"{name} backend unavailable")) for name in ("cuda", "triton")]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_random_write_patterns_on_the_gpu(backend, dtype, seed):
    random_write_pattern_run(backend, seed, dtype, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_model_moved_to_the_gpu_after_construction(backend):
    """Built on the CPU (``auto``: the C++ kernel), trained, then ``model.to('cuda')``: the state
    moves with it and the GPU kernel takes over, as torch AdamW continues on the moved state."""
    m_ours, m_ref = make_model(40), make_model(40)
    ours = MLRAdamW(m_ours.parameters(), lr=1e-2, backend="auto")
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(40)
    batches = [torch.randn(4, 7, generator=gen) for _ in range(4)]
    for x in batches[:2]:
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            opt.step()
    m_ours.to("cuda")
    m_ref.to("cuda")
    for state in ref.state.values():  # torch leaves its state behind: move it by hand
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor):
                state[key] = value.cuda()
    ours.backend_name = backend
    for x in batches[2:]:
        for model, opt in ((m_ours, ours), (m_ref, ref)):
            opt.zero_grad()
            forward(model, x.cuda()).pow(2).mean().backward()
            opt.step()
    assert set(ours.backends.values()) == {backend}
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_of_step_with_a_changing_tensor_lr(backend):
    m_ours, m_ref = make_model(41).cuda(), make_model(41).cuda()
    lr = torch.tensor(1e-2, device="cuda")
    ours = MLRAdamW(m_ours.parameters(), lr=lr, lr_mult=0.5, backend=backend)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=5e-3)
    x = torch.randn(4, 7, device="cuda")
    for model in (m_ours, m_ref):  # static gradients, as a captured training step has
        forward(model, x).pow(2).mean().backward()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ours.step()  # warm-up outside the capture: packs the state, compiles the kernel
    torch.cuda.current_stream().wait_stream(stream)
    ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours.step()
    for value in (1e-2, 4e-3, 2e-2):
        lr.fill_(value)
        graph.replay()
        ref.param_groups[0]["lr"] = value * 0.5
        ref.step()
    torch.cuda.synchronize()
    assert_same_params(m_ours, m_ref)


def _move_state_tensors(opt: torch.optim.Optimizer, device: str) -> None:
    """verl's offload_fsdp_optimizer / load_fsdp_optimizer: ``state[k] = v.to(device)``."""
    for state in opt.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device, non_blocking=True)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_state_offloaded_to_the_cpu_frees_its_gpu_memory_and_comes_back(backend, dtype):
    """The state moved to the CPU between steps and back, as verl does around rollouts: while it
    is away the flat buffers' GPU memory is free; after the reload the training is unchanged."""
    models = [make_model(43, dtype).cuda() for _ in range(2)]
    opts = [MLRAdamW(model.parameters(), lr=1e-2, backend=backend) for model in models]
    gen = torch.Generator().manual_seed(43)

    def train(steps, pairs):
        for _ in range(steps):
            x = torch.randn(4, 7, generator=gen).to("cuda", dtype)
            for model, opt in pairs:
                opt.zero_grad()
                forward(model, x).float().pow(2).mean().backward()
                opt.step()

    train(2, list(zip(models, opts)))
    torch.cuda.synchronize()
    moved = opts[1]
    buffers = [b for bucket in moved.buckets
               for b in (bucket.master, bucket.exp_avg, bucket.exp_avg_sq) if b is not None]
    state_bytes = sum(b.numel() * b.element_size() for b in buffers)
    del buffers
    allocated = torch.cuda.memory_allocated()
    _move_state_tensors(moved, "cpu")
    torch.cuda.synchronize()
    assert allocated - torch.cuda.memory_allocated() >= state_bytes
    _move_state_tensors(moved, "cuda")
    train(2, list(zip(models, opts)))
    for p, q in zip(*(model.parameters() for model in models)):
        assert torch.equal(p, q)
    for entry, other in zip(opts[0].state.values(), moved.state.values()):
        for key, value in entry.items():
            assert torch.equal(value, other[key]), key


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_scheduled_steps_with_reallocated_gradients_never_make_the_host_wait(backend):
    """torch raises at any host/device sync it knows of (``.item()``, a copy from pageable memory,
    a synchronize) under ``set_sync_debug_mode("error")``: 20 steps with a scheduler moving every
    group's lr, one group per module, gradients re-allocated by ``zero_grad()`` and a backward.
    The same steps as torch's fused AdamW, which never syncs either."""
    m_ours, m_ref = make_model(44).cuda(), make_model(44).cuda()
    mults = [0.5 + k for k in range(len(m_ours))]
    ours = MLRAdamW([{"params": list(m.parameters()), "lr_mult": r} for m, r in zip(m_ours.values(), mults)],
                    lr=1e-2, backend=backend)
    ref = torch.optim.AdamW([{"params": list(m.parameters()), "lr": 1e-2 * r}
                             for m, r in zip(m_ref.values(), mults)], lr=1e-2, fused=True)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)) for opt in (ours, ref)]
    batches = torch.randn(22, 4, 7, generator=torch.Generator().manual_seed(44)).cuda()

    def step(x):
        for model, opt, schedule in zip((m_ours, m_ref), (ours, ref), schedules):
            opt.zero_grad()
            forward(model, x).pow(2).mean().backward()
            opt.step()
            schedule.step()

    for x in batches[:2]:  # the first steps pack the state and compile the kernel
        step(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in batches[2:]:
            step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_params(m_ours, m_ref)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_capture_after_the_table_changed_is_refused(backend):
    """Captured after gradients were re-allocated since the last step: a replay could not
    follow the new addresses, so the capture raises instead of replaying stale ones."""
    model = make_model(45).cuda()
    opt = MLRAdamW(model.parameters(), lr=1e-2, backend=backend)
    x = torch.randn(4, 7, device="cuda")
    forward(model, x).pow(2).mean().backward()
    opt.step()
    kept = [p.grad for p in model.parameters()]  # held, so the new ones get other addresses
    opt.zero_grad()
    forward(model, x).pow(2).mean().backward()
    assert all(p.grad.data_ptr() != g.data_ptr() for p, g in zip(model.parameters(), kept))
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match="captured in a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.step()
