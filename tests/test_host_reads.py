"""The optimizer's per-step reads of parameters and gradients (mlr_kernels/host_reads.py): the C++
reads give exactly what the Python reads give, and leave to them every tensor they do not read
themselves; which reads run is chosen and reported as documented."""

from __future__ import annotations

import warnings

import pytest
import torch

from mlr_kernels import MLRAdamW, host_reads
from mlr_kernels.host_reads import HOST_READS_ENV, ParamReads, read_params, reads_of

BUILT = "c++" in host_reads.HOST_READ_PATHS
needs_cpp = pytest.mark.skipif(not BUILT, reason="mlr_kernels._host is not built for this torch")


def python_reads(params: list[torch.Tensor]) -> ParamReads:
    return reads_of([p.data_ptr() for p in params], [p.grad for p in params])


def cpp_reads(params: list[torch.Tensor]) -> ParamReads | None:
    reads = host_reads._host.read(params, host_reads._PLAIN_TYPES)
    return None if reads is None else ParamReads(*reads)


def assert_same_reads(a: ParamReads, b: ParamReads) -> None:
    assert a.data_ptrs == b.data_ptrs and a.live == b.live and a.grad_ptrs == b.grad_ptrs
    assert all(x is y for x, y in zip(a.grads, b.grads)) and len(a.grads) == len(b.grads)


def mixed_params() -> list[torch.nn.Parameter]:
    """Sizes (empty ones too), dtypes, gradients present and absent."""
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype))
              for shape, dtype in [((3,), torch.float32), ((0,), torch.float32), ((4, 5), torch.bfloat16),
                                   ((2, 3, 4), torch.float16), ((7,), torch.float32), ((1,), torch.float32)]]
    for p in params[::2]:
        p.grad = torch.randn_like(p)
    return params


@needs_cpp
def test_cpp_reads_are_the_python_reads():
    params = mixed_params()
    assert_same_reads(cpp_reads(params), python_reads(params))
    for p in params:  # every gradient present: another branch of the Python reads
        p.grad = torch.randn_like(p)
    assert_same_reads(cpp_reads(params), python_reads(params))
    assert cpp_reads([]) == ParamReads([], [], [], [])


@needs_cpp
def test_cpp_reads_give_the_gradient_autograd_made_before_python_touched_it():
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    params = list(model.parameters())
    reads = cpp_reads(params)
    assert all(g is p.grad for g, p in zip(reads.grads, params))
    assert reads.grad_ptrs == [p.grad.data_ptr() for p in params]


@needs_cpp
@pytest.mark.parametrize("case", ["transposed", "channels_last", "sparse", "param_subclass", "grad_subclass"])
def test_what_cpp_does_not_read_is_left_to_python(case):
    """A gradient not dense in row-major order, or a tensor whose type may override .grad or
    data_ptr(): the C++ reads answer None and read_params gives the Python reads."""
    class Subclass(torch.Tensor):
        pass

    params = mixed_params()
    p = params[1] = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    if case == "transposed":
        p.grad = torch.randn(3, 4, 2, 2).transpose(0, 1)
    elif case == "channels_last":
        p.grad = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    elif case == "sparse":
        params[1] = p = torch.nn.Parameter(torch.randn(4, 3))
        p.grad = torch.randn(4, 3).to_sparse()
    elif case == "param_subclass":
        params[1] = p = torch.nn.Parameter(torch.randn(4, 3)).as_subclass(Subclass).requires_grad_()
        p.grad = torch.randn(4, 3)
    else:
        p.grad = torch.randn(4, 3, 2, 2).as_subclass(Subclass)
        assert type(p.grad) is Subclass
    assert cpp_reads(params) is None
    reads = read_params(params)
    if case == "sparse":
        assert reads.grad_ptrs is None and reads.live == python_reads(params).live
    else:
        assert_same_reads(reads, python_reads(params))
    if case in ("transposed", "channels_last"):
        assert reads.grad_ptrs is None  # the caller copies it into its parameter's layout first


@needs_cpp
def test_a_torch_function_mode_sends_the_reads_to_python(monkeypatch):
    calls = []
    monkeypatch.setattr(host_reads._host, "read", lambda *args: calls.append(args))
    params = mixed_params()
    with torch.device("cpu"):  # a TorchFunctionMode: it could change what a read returns
        assert_same_reads(read_params(params), python_reads(params))
    assert calls == []
    read_params(params)
    assert len(calls) == 1


def test_the_choice_of_reads_follows_the_environment(monkeypatch):
    monkeypatch.setenv(HOST_READS_ENV, "python")
    assert host_reads.host_reads() == "python"
    monkeypatch.setenv(HOST_READS_ENV, "fast")
    with pytest.raises(ValueError, match="MLR_HOST_READS='fast' is unknown; use auto, c\\+\\+ or python"):
        host_reads.host_reads()
    monkeypatch.setenv(HOST_READS_ENV, "auto")
    assert host_reads.host_reads() == host_reads.HOST_READ_PATHS[0]


@needs_cpp
def test_an_extension_built_for_another_torch_is_not_used(monkeypatch):
    monkeypatch.setattr(host_reads._host, "TORCH_VERSION", "1.0.0")
    host_reads._native_reason.cache_clear()
    try:
        monkeypatch.setenv(HOST_READS_ENV, "auto")
        with pytest.warns(UserWarning, match="built for torch 1.0.0 but torch .* is running"):
            assert host_reads.host_reads() == "python"
        monkeypatch.setenv(HOST_READS_ENV, "c++")
        with warnings.catch_warnings(), pytest.raises(RuntimeError, match="MLR_HOST_READS=c\\+\\+, but"):
            warnings.simplefilter("ignore")  # cached: the warning was given once above
            host_reads.host_reads()
    finally:
        monkeypatch.undo()
        host_reads._native_reason.cache_clear()
    assert host_reads.host_reads() == "c++"


def test_c_plus_plus_reads_required_where_not_built(monkeypatch):
    monkeypatch.setattr(host_reads, "_host", None)
    host_reads._native_reason.cache_clear()
    try:
        monkeypatch.setenv(HOST_READS_ENV, "c++")
        with pytest.raises(RuntimeError, match="mlr_kernels._host is not built"):
            host_reads.host_reads()
        monkeypatch.setenv(HOST_READS_ENV, "auto")
        assert host_reads.host_reads() == "python"
    finally:
        monkeypatch.undo()
        host_reads._native_reason.cache_clear()


@needs_cpp
def test_a_step_makes_its_reads_in_cpp_and_matches_the_python_reads(monkeypatch):
    """The optimizer uses the C++ reads when they can run, and steps to the same bits either way."""
    calls = []
    read = host_reads._host.read
    monkeypatch.setattr(host_reads._host, "read", lambda *args: calls.append(1) or read(*args))
    results = {}
    for path in ("c++", "python"):
        monkeypatch.setenv(HOST_READS_ENV, path)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        opt = MLRAdamW([dict(params=[p], lr_mult=0.5 + k) for k, p in enumerate(model.parameters())], lr=1e-2)
        for _ in range(3):
            model(torch.randn(5, 4)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        results[path] = [p.detach().clone() for p in model.parameters()]
        assert (len(calls) > 0) == (path == "c++")
        calls.clear()
    assert all(torch.equal(a, b) for a, b in zip(results["c++"], results["python"]))
