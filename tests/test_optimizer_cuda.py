"""The optimizer contract on a GPU, for the CUDA and Triton backends (skipped without one): the
randomized write patterns of tests/test_optimizer_contract.py on CUDA tensors, a model moved to
the GPU after the optimizer was built, and a CUDA-graph capture of step() replayed while a tensor
learning rate changes."""

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
