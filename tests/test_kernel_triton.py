"""The Triton AdamW kernel against the reference.

On CUDA when there is a GPU; otherwise on CPU tensors through Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), which is slow, so the buffers stay small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

from mlr_kernels.backends import triton as triton_backend

VARIANTS = ("fp32", "bf16", "fp16", "fp32-bf16state", "bf16-bf16state-nomaster")  # compile_triton_kernel.py

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(triton_backend.unavailable_reason(DEVICE) is not None,
                                reason=f"Triton backend: {triton_backend.unavailable_reason(DEVICE)}")

# Tails shorter than a vector, exactly one 16-element unit, and segments spanning several whole
# BLOCK chunks; segment 2 is the one made inactive below.
NUMELS = [1, 15, 16, 17, 100, 2500]
# Tail-only tiles, tiles of one whole chunk plus a 16-element tail, and the backend's own size.
TILE_SIZES = [48, triton_backend.BLOCK + 16, triton_backend.TILE_SIZE]
PARAM_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def case(**options):
    return make_case(NUMELS, device=DEVICE, **options)


@pytest.mark.parametrize("tile_size", TILE_SIZES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_matches_reference(param_dtype, tile_size):
    check_against_reference(triton_backend, case(param_dtype=param_dtype, tile_size=tile_size,
                                                 amsgrad=True, maximize=True, inactive=(2,)))


@pytest.mark.parametrize(("state_dtype", "master"), [
    pytest.param(torch.bfloat16, True, id="bf16-state"), pytest.param(torch.float32, False, id="no-master"),
    pytest.param(torch.bfloat16, False, id="bf16-state-no-master")])
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_state_precision_modes_match_reference(param_dtype, state_dtype, master):
    check_against_reference(triton_backend, case(param_dtype=param_dtype, state_dtype=state_dtype,
                                                 master=master, tile_size=TILE_SIZES[1], amsgrad=True,
                                                 maximize=True, inactive=(2,), grad_mult=0.37), steps=2)


def test_rounding_draws_the_reference_bits():
    check_rounding_draws_the_reference_bits(triton_backend, case(state_dtype=torch.bfloat16, maximize=True,
                                                                 tile_size=TILE_SIZES[1], grad_mult=0.37))


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_plain_adamw_without_amsgrad_buffer(param_dtype):
    check_against_reference(triton_backend, case(param_dtype=param_dtype))


def test_amsgrad():
    check_against_reference(triton_backend, case(amsgrad=True))


def test_maximize():
    check_against_reference(triton_backend, case(maximize=True))


def test_inactive_segments_untouched():
    check_against_reference(triton_backend, case(inactive=(0, 3, 5), amsgrad=True))


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_written_low_precision_weights_are_where_the_step_starts(param_dtype):
    check_written_weights_reseed_the_master(triton_backend, case(param_dtype=param_dtype, amsgrad=True))


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_aligned_parameters_take_the_vector_path(param_dtype):
    aligned = case(param_dtype=param_dtype, misalign=False, amsgrad=True)
    assert aligned.step_kwargs()["table"].vector_aligned
    assert not case(param_dtype=param_dtype).step_kwargs()["table"].vector_aligned
    check_against_reference(triton_backend, aligned)


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_grad_mult(param_dtype):
    check_against_reference(triton_backend, case(param_dtype=param_dtype, grad_mult=0.37))


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_found_inf(found_inf):
    """Nonzero: nothing is written (the check compares every buffer bit for bit)."""
    check_against_reference(triton_backend, case(param_dtype=torch.bfloat16, amsgrad=True,
                                                 grad_mult=0.5, found_inf=found_inf))


def test_empty_tile_list_is_a_no_op():
    empty = case()
    empty.tiles = empty.tiles[:0]
    check_against_reference(triton_backend, empty)


@pytest.mark.parametrize(("field", "bad", "message"), [
    ("master", lambda c: torch.zeros_like(c.exp_avg), "master and compensation must be None"),
    ("exp_avg", lambda c: c.exp_avg[:-16], "exp_avg has"),
    ("hyper", lambda c: c.hyper.float(), "hyper must be a torch.float64"),
    ("tiles", lambda c: c.tiles.int(), "tiles must be a torch.int64"),
    ("found_inf", lambda c: torch.zeros(2, device=c.param.device), "found_inf has 2 elements"),
])
def test_rejects_bad_arguments(field, bad, message):
    bad_case = case()
    setattr(bad_case, field, bad(bad_case))
    with pytest.raises(ValueError, match=message):
        triton_backend.adamw_step(**bad_case.step_kwargs())


def test_low_precision_param_needs_a_master_or_a_compensation():
    bad_case = case(param_dtype=torch.bfloat16)
    bad_case.master = None
    with pytest.raises(ValueError, match="need a float32 master copy or a compensation buffer"):
        triton_backend.adamw_step(**bad_case.step_kwargs())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_cuda_graph_replay(param_dtype):
    check_cuda_graph_replay(triton_backend, case(param_dtype=param_dtype, amsgrad=True,
                                                 maximize=True, grad_mult=0.37, found_inf=0.0))


@pytest.fixture(scope="module")
def sm90_ptx_counts():
    """Compile the kernel for sm_90 in a process without the interpreter (see the script)."""
    pytest.importorskip("triton.backends.nvidia")
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    script = root / "tests" / "compile_triton_kernel.py"
    result = subprocess.run([sys.executable, str(script), *VARIANTS],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_for_sm90_with_vector_accesses(sm90_ptx_counts, variant):
    """The GPU compiler accepts the kernel (bfloat16 moments and master-free weights included),
    the whole-chunk path uses vector accesses (16 bytes where a stream is float32; 4 elements of a
    thread are 8 bytes of a 16-bit stream, and a kernel with only 16-bit streams has no 16-byte
    access), the sqrt and division are the IEEE ones, and no tensor changes layout through shared
    memory."""
    counts = sm90_ptx_counts[variant]
    only_16_bit = variant == "bf16-bf16state-nomaster"
    vector_loads = counts["load_v2"] if only_16_bit else counts["load_v4"]
    vector_stores = counts["store_v2"] if only_16_bit else counts["store_v4"]
    assert vector_loads > 0 and vector_stores > 0, counts
    assert counts["sqrt_rn"] > 0 and counts["div_rn"] > 0, counts
    assert counts["barriers"] == 0, counts
