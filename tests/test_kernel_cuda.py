"""The CUDA C++ AdamW kernel against the reference (GPU only), and the checks that need no GPU:
the source compiles with nvcc, and the ctypes wrapper loads lazily and explains itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from kernel_cases import (
    check_against_reference,
    check_cuda_graph_replay,
    check_rounding_draws_the_reference_bits,
    check_written_weights_reseed_the_master,
    make_case,
)

from mlr_kernels.backends import cuda as cuda_backend

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "adamw_cuda.cu"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Scalar tail only, vectors then a scalar tail (15, 17, 100), vectors only (16), and a segment
# spanning several block-wide passes (256 threads x 8 elements) with a tail of 3; segment 2 is
# made inactive below.
NUMELS = [1, 15, 16, 17, 100, 8195]
# Short tiles, one block-wide pass plus 16 elements, and the backend's own size.
TILE_SIZES = [48, 2064, cuda_backend.TILE_SIZE]
PARAM_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def case(**options):
    return make_case(NUMELS, device="cuda", **options)


@needs_gpu
@pytest.mark.parametrize("tile_size", TILE_SIZES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_matches_reference(param_dtype, tile_size):
    check_against_reference(cuda_backend, case(param_dtype=param_dtype, tile_size=tile_size,
                                               amsgrad=True, maximize=True, inactive=(2,)))


@needs_gpu
@pytest.mark.parametrize(("state_dtype", "master"), [
    pytest.param(torch.bfloat16, True, id="bf16-state"), pytest.param(torch.float32, False, id="no-master"),
    pytest.param(torch.bfloat16, False, id="bf16-state-no-master")])
@pytest.mark.parametrize("tile_size", TILE_SIZES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_state_precision_modes_match_reference(param_dtype, tile_size, state_dtype, master):
    for misalign in (True, False):  # the scalar path, and the 16-byte vector path
        check_against_reference(cuda_backend, case(param_dtype=param_dtype, state_dtype=state_dtype,
                                                   master=master, tile_size=tile_size, amsgrad=True,
                                                   maximize=True, inactive=(2,), grad_mult=0.37,
                                                   misalign=misalign), steps=2)


@needs_gpu
@pytest.mark.parametrize("misalign", [True, False])
def test_rounding_draws_the_reference_bits(misalign):
    check_rounding_draws_the_reference_bits(cuda_backend, case(state_dtype=torch.bfloat16, maximize=True,
                                                               grad_mult=0.37, misalign=misalign))


@needs_gpu
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_plain_adamw_without_amsgrad_buffer(param_dtype):
    check_against_reference(cuda_backend, case(param_dtype=param_dtype))


@needs_gpu
def test_amsgrad():
    check_against_reference(cuda_backend, case(amsgrad=True))


@needs_gpu
def test_maximize():
    check_against_reference(cuda_backend, case(maximize=True))


@needs_gpu
def test_inactive_segments_untouched():
    check_against_reference(cuda_backend, case(inactive=(0, 3, 5), amsgrad=True))


@needs_gpu
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_grad_mult(param_dtype):
    check_against_reference(cuda_backend, case(param_dtype=param_dtype, grad_mult=0.37))


@needs_gpu
@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_found_inf(found_inf):
    """Nonzero: nothing is written (the check compares every buffer bit for bit)."""
    check_against_reference(cuda_backend, case(param_dtype=torch.bfloat16, amsgrad=True,
                                               grad_mult=0.5, found_inf=found_inf))


@needs_gpu
def test_large_buffer_matches_reference():
    """Enough tiles to fill every SM several times over, mixing segment sizes."""
    numels = [1 << 20, 4096 * 3 + 5, 123_457, 1 << 16]
    check_against_reference(cuda_backend, make_case(numels, device="cuda", amsgrad=True,
                                                    maximize=True, tile_size=cuda_backend.TILE_SIZE),
                            steps=1)


@needs_gpu
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_written_low_precision_weights_are_where_the_step_starts(param_dtype):
    check_written_weights_reseed_the_master(cuda_backend, case(param_dtype=param_dtype, amsgrad=True))


@needs_gpu
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_aligned_parameters_take_the_vector_path(param_dtype):
    check_against_reference(cuda_backend, case(param_dtype=param_dtype, misalign=False, amsgrad=True))


@needs_gpu
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_cuda_graph_replay(param_dtype):
    check_cuda_graph_replay(cuda_backend, case(param_dtype=param_dtype, amsgrad=True,
                                               maximize=True, grad_mult=0.37, found_inf=0.0))


@needs_gpu
def test_rejects_misaligned_buffer():
    bad_case = case()
    storage = torch.empty(bad_case.exp_avg.numel() + 1, device="cuda")
    bad_case.exp_avg = storage[1:]  # 4 bytes past an allocation's start
    with pytest.raises(ValueError, match="exp_avg must start on a 16-byte boundary"):
        cuda_backend.adamw_step(**bad_case.step_kwargs())


@needs_gpu
def test_rejects_cpu_state_with_cuda_param():
    bad_case = case()
    bad_case.exp_avg_sq = bad_case.exp_avg_sq.cpu()
    with pytest.raises(ValueError, match="exp_avg_sq is on cpu"):
        cuda_backend.adamw_step(**bad_case.step_kwargs())


@needs_gpu
def test_stream_4r3w_adds_d_to_a_b_c():
    n = 5 * 2048 + 13  # whole vectors of every thread, then a scalar tail
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b, c, d = (torch.randn(n, generator=gen, device="cuda") for _ in range(4))
    expected = (a + d, b + d, c + d)
    cuda_backend.stream_4r3w(a, b, c, d)
    for got, want in zip((a, b, c), expected):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="d must be a contiguous 1-D float32 CUDA tensor"):
        cuda_backend.stream_4r3w(a, b, c, d[:-1])


def test_not_available_for_cpu_tensors_and_library_not_loaded(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_library", None)
    monkeypatch.setattr(cuda_backend, "_load_error", None)
    assert "CUDA tensors only" in cuda_backend.unavailable_reason(torch.device("cpu"))
    assert cuda_backend._library is None and cuda_backend._load_error is None


def test_missing_library_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda_backend, "LIBRARY_PATH", tmp_path / "_adamw_cuda.so")
    monkeypatch.setattr(cuda_backend, "_library", None)
    monkeypatch.setattr(cuda_backend, "_load_error", None)
    assert cuda_backend._load_library() is None
    assert "not built" in cuda_backend._load_error


def test_source_compiles_without_warnings(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH")
    result = subprocess.run(
        [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
         "-gencode=arch=compute_90,code=sm_90", str(SOURCE), "-o", str(tmp_path / "adamw.so")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
