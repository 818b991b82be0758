"""The C++ CPU AdamW kernel against the reference, on random inputs, and what only this backend
has: bounds checks on the tile list in C++, results independent of the thread count and of the
SIMD level, exact bfloat16/float16 conversions, and the bandwidth-ceiling loop the benchmarks use.

Every test runs once per SIMD level this CPU has (baseline, AVX2, AVX-512: ``MLR_CPU_SIMD``), so a
level that computes differently fails here on any machine that has it, not only on a machine
whose widest level it is."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import (
    check_against_reference,
    check_rounding_draws_the_reference_bits,
    check_written_weights_reseed_the_master,
    make_case,
)

from mlr_kernels import segments
from mlr_kernels.backends import cpu

pytestmark = pytest.mark.skipif(cpu.unavailable_reason("cpu") is not None,
                                reason=f"CPU backend: {cpu.unavailable_reason('cpu')}")

# Segments shorter than a vector, exactly one, one plus a tail, and one spanning many tiles;
# segment 2 is the one made inactive below.
NUMELS = [1, 15, 16, 17, 100, 2500]
# One vector per tile, tiles ending mid-vector, and the backend's own size (larger than any segment).
TILE_SIZES = [16, 48, 1024, cpu.TILE_SIZE]
PARAM_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
# (moments' dtype, master weights): bfloat16 moments, weights without a master, both.
STATE_MODES = [pytest.param(torch.bfloat16, True, id="bf16-state"),
               pytest.param(torch.float32, False, id="no-master"),
               pytest.param(torch.bfloat16, False, id="bf16-state-no-master")]


@pytest.fixture(autouse=True, params=cpu.simd_levels())
def simd_level(request, monkeypatch):
    """Run the test with the kernel forced to one SIMD level."""
    monkeypatch.setenv(cpu.SIMD_ENV, request.param)
    assert cpu.simd_level() == request.param
    return request.param


def case(**options):
    return make_case(NUMELS, **options)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(BITS[tensor.dtype])


@pytest.mark.parametrize("tile_size", TILE_SIZES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_matches_reference(param_dtype, tile_size):
    check_against_reference(cpu, case(param_dtype=param_dtype, tile_size=tile_size, amsgrad=True,
                                      maximize=True, inactive=(2,), grad_mult=0.37))


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_plain_adamw_without_amsgrad_buffer(param_dtype):
    check_against_reference(cpu, case(param_dtype=param_dtype))


@pytest.mark.parametrize(("state_dtype", "master"), STATE_MODES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_state_precision_modes_match_reference(param_dtype, state_dtype, master):
    check_against_reference(cpu, case(param_dtype=param_dtype, state_dtype=state_dtype, master=master,
                                      tile_size=48, amsgrad=True, maximize=True, inactive=(2,),
                                      grad_mult=0.37), steps=3)


@pytest.mark.parametrize("param_dtype", PARAM_DTYPES, ids=str)
def test_rounding_draws_the_reference_bits(param_dtype):
    check_rounding_draws_the_reference_bits(cpu, case(param_dtype=param_dtype, state_dtype=torch.bfloat16,
                                                      tile_size=48, maximize=True, inactive=(2,),
                                                      grad_mult=0.37))


@pytest.mark.parametrize(("param_dtype", "state_dtype", "master"), [
    (torch.float32, torch.float32, True), (torch.bfloat16, torch.float32, True),
    (torch.float32, torch.bfloat16, True), (torch.bfloat16, torch.bfloat16, False)])
def test_many_steps(param_dtype, state_dtype, master):
    """Rounding differences stay within the error bound after 100 steps. The weights drift apart
    by units in the last place of each step's update (torch's CPU sqrt is off by one unit for
    0.7 % of inputs, the kernel's is correctly rounded), so the bound grows with the steps
    (tests/error_bound.py)."""
    check_against_reference(cpu, case(param_dtype=param_dtype, state_dtype=state_dtype, master=master,
                                      amsgrad=True, maximize=True, grad_mult=0.8), steps=100)


@settings(max_examples=40, deadline=None)
@given(
    numels=st.lists(st.one_of(st.integers(1, 15), st.integers(16, 1200)), min_size=1, max_size=5),
    tile_size=st.sampled_from([16, 32, 48, 256, 1024]),
    param_dtype=st.sampled_from(PARAM_DTYPES),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    grad_mult=st.one_of(st.none(), st.floats(0.05, 4.0)),
    inactive_bits=st.integers(0, 31),
    low_beta1=st.booleans(),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    state_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    master=st.booleans(),
)
def test_random_layouts_match_reference(numels, tile_size, param_dtype, amsgrad, maximize,
                                        grad_mult, inactive_bits, low_beta1, steps, seed, state_dtype,
                                        master):
    inactive = tuple(s for s in range(len(numels)) if inactive_bits >> s & 1)
    random_case = make_case(numels, param_dtype=param_dtype, tile_size=tile_size, amsgrad=amsgrad,
                            maximize=maximize, inactive=inactive, grad_mult=grad_mult, seed=seed,
                            state_dtype=state_dtype, master=master)
    if low_beta1:  # 1 - beta1 >= 0.5: torch's lerp_ takes its other form
        random_case.hyper[:, segments.BETA1] = torch.linspace(0.0, 0.45, len(numels))
    check_against_reference(cpu, random_case, steps=steps)


@pytest.mark.parametrize("found_inf", [0.0, 1.0, float("nan")])
def test_found_inf(found_inf):
    """Nonzero (NaN included): nothing is written, checked bit for bit."""
    check_against_reference(cpu, case(param_dtype=torch.bfloat16, amsgrad=True, grad_mult=0.5,
                                      found_inf=found_inf))


def test_empty_tile_list_is_a_no_op():
    empty = case()
    empty.tiles = empty.tiles[:0]
    check_against_reference(cpu, empty)


def test_grad_mult_and_maximize_act_on_the_gradient():
    """grad_mult = 0.5 is the step on grad / 2, and maximize the step on -grad, bit for bit."""
    base = case(amsgrad=True)
    runs = {"halved": base.to("cpu"), "mult": base.to("cpu"), "negated": base.to("cpu"),
            "maximize": base.to("cpu")}
    runs["halved"].grad = base.grad * 0.5  # the sentinels in the gaps stay NaN
    runs["mult"].grad_mult = torch.tensor([0.5])
    runs["negated"].grad = -base.grad
    runs["maximize"].hyper[:, segments.MAXIMIZE] = 1.0
    for run in runs.values():
        cpu.adamw_step(**run.step_kwargs())
    for a, b in (("halved", "mult"), ("negated", "maximize")):
        for name in ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(bits(getattr(runs[a], name)), bits(getattr(runs[b], name))), (a, name)


def test_result_does_not_depend_on_thread_count():
    """Big enough for three threads (the kernel gives each at least 32K elements): the threads split
    the tiles, never an element's arithmetic, so 1, 2 and 3 threads write the same bits."""
    base = make_case([1, 15, 40_000, 17, 70_000, 2500], param_dtype=torch.float16, tile_size=1024,
                     amsgrad=True, maximize=True, inactive=(3,))
    check_against_reference(cpu, base)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            run = base.to("cpu")
            cpu.adamw_step(**run.step_kwargs())
            results.append(run)
    finally:
        torch.set_num_threads(threads)
    for run in results[1:]:
        for name in ("param", "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(bits(getattr(run, name)), bits(getattr(results[0], name))), name


def test_every_simd_level_writes_the_same_bits(simd_level, monkeypatch):
    """The levels differ only in vector width: each writes the bits of the scalar baseline (the
    widest, for the baseline itself), for every dtype, with AMSGrad, maximize, grad_mult, tile
    tails and misaligned segments."""
    if len(cpu.simd_levels()) == 1:
        pytest.skip("this CPU runs one SIMD level only")
    other = "baseline" if simd_level != "baseline" else cpu.simd_levels()[-1]
    for param_dtype in PARAM_DTYPES:
        base = case(param_dtype=param_dtype, tile_size=48, amsgrad=True, maximize=True,
                    inactive=(2,), grad_mult=0.37)
        runs = []
        for level in (simd_level, other):
            monkeypatch.setenv(cpu.SIMD_ENV, level)
            runs.append(run := base.to("cpu"))
            for _ in range(3):
                cpu.adamw_step(**run.step_kwargs())
                run.advance_step()
        for name in ("param", "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            ours, theirs = (getattr(run, name) for run in runs)
            if ours is not None:
                assert torch.equal(bits(ours), bits(theirs)), (param_dtype, name, other)


def test_simd_level_named_in_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv(cpu.SIMD_ENV, "avx1024")
    with pytest.raises(ValueError, match="MLR_CPU_SIMD='avx1024' is unknown; this CPU runs: baseline"):
        cpu.simd_level()
    missing = [level for level in cpu.SIMD_LEVELS if level not in cpu.simd_levels()]
    for level in missing:  # a level this CPU lacks is refused, not run
        monkeypatch.setenv(cpu.SIMD_ENV, level)
        with pytest.raises(ValueError, match="not supported by this CPU or build"):
            cpu.adamw_step(**case().step_kwargs())


def float32_values_to_round(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of ``dtype``, the midpoints between neighbours (ties) and the floats
    either side of each midpoint, plus random bit patterns: NaN, infinities, subnormals."""
    exact = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).double()
    exact = exact[exact.isfinite()].unique()  # sorted
    ties = ((exact[1:] + exact[:-1]) / 2).float()  # exact: one bit more than dtype has
    gen = torch.Generator().manual_seed(1)
    random_bits = torch.randint(-(2**31), 2**31, (1 << 14,), generator=gen, dtype=torch.int64)
    values = torch.cat([exact.float(), ties, torch.nextafter(ties, ties.new_tensor(float("inf"))),
                        torch.nextafter(ties, ties.new_tensor(float("-inf"))),
                        random_bits.int().view(torch.float32)])
    return values[: values.numel() // 16 * 16]


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_param_is_master_rounded_to_nearest_even_for_every_kind_of_value(param_dtype):
    """With lr = 0 the master copy stays as it is and param must be torch's own rounding of it:
    ties to even, overflow to infinity, subnormals, signed zeros, infinities; NaN stays NaN."""
    values = float32_values_to_round(param_dtype)
    run = make_case([values.numel()], param_dtype=param_dtype, tile_size=4096)
    run.master[: values.numel()].copy_(values)
    run.segment_views(run.param)[0].copy_(values.to(param_dtype))  # consistent: not a user write
    # exp_avg stays >= 0, so the update lr * exp_avg / denom is -0.0, which keeps a -0.0 master.
    run.grad.abs_()
    run.exp_avg.abs_()
    run.hyper[:, segments.LR] = 0.0
    cpu.adamw_step(**run.step_kwargs())
    expected = values.to(param_dtype)
    nan = values.isnan()
    param = run.segment_views(run.param)[0]
    assert torch.equal(param.isnan(), nan)
    assert torch.equal(bits(param)[~nan], bits(expected)[~nan])
    assert torch.equal(bits(run.master[: values.numel()])[~nan], bits(values)[~nan])


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_written_low_precision_weights_are_where_the_step_starts(param_dtype):
    check_written_weights_reseed_the_master(cpu, case(param_dtype=param_dtype, amsgrad=True))


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_grad_is_widened_exactly_for_every_finite_value(param_dtype):
    """With beta1 = 0 the new exp_avg is the gradient itself (torch's lerp_ at weight 1)."""
    grads = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(param_dtype)
    grads = grads[grads.isfinite()]
    grads = grads[: grads.numel() // 16 * 16]
    run = make_case([grads.numel()], param_dtype=param_dtype, tile_size=4096)
    run.segment_views(run.grad)[0].copy_(grads)
    run.exp_avg.abs_()  # g + 0 * (g - m) keeps the sign of a -0.0 gradient only when m > 0
    run.hyper[:, segments.BETA1] = 0.0
    run.hyper[:, segments.LR] = 0.0
    cpu.adamw_step(**run.step_kwargs())
    assert torch.equal(bits(run.exp_avg[: grads.numel()]), bits(grads.float()))


@pytest.mark.parametrize(("tile", "message"), [
    ((0, 0, 10**6), "not a range inside the buffers"),
    ((0, 20, 10), "not a range inside the buffers"),
    ((0, -16, 0), "not a range inside the buffers"),
    ((6, 0, 16), "names a segment outside the table's 6 rows"),
    ((-1, 0, 16), "names a segment outside the table's 6 rows"),
    ((0, 0, 16), "lies outside its segment's elements"),  # segment 0 has 1 element
    ((5, 0, 16), "lies outside its segment's elements"),  # another segment's state
])
def test_rejects_tiles_outside_the_buffers_before_writing(tile, message):
    bad = case(amsgrad=True)
    bad.tiles = torch.cat([bad.tiles, torch.tensor([tile])])
    before = bad.to("cpu")
    with pytest.raises(ValueError, match=message):
        cpu.adamw_step(**bad.step_kwargs())
    assert torch.equal(bits(bad.param), bits(before.param))
    assert torch.equal(bits(bad.exp_avg), bits(before.exp_avg))


def test_rejects_amsgrad_segment_without_its_buffer():
    bad = case(amsgrad=True)
    bad.max_exp_avg_sq = None
    with pytest.raises(ValueError, match="amsgrad segment but max_exp_avg_sq is None"):
        cpu.adamw_step(**bad.step_kwargs())


def test_rejects_active_segment_without_a_gradient_before_writing():
    bad = case()
    kwargs = bad.step_kwargs()
    kwargs["table"].pointers[3, segments.GRAD_PTR] = 0
    before = bad.to("cpu")
    with pytest.raises(ValueError, match="active segment without a parameter or gradient"):
        cpu.adamw_step(**kwargs)
    assert torch.equal(bits(bad.param), bits(before.param))


@pytest.mark.parametrize(("field", "bad", "message"), [
    ("exp_avg", lambda c: c.exp_avg.to("meta"), "exp_avg is on meta"),
    ("exp_avg_sq", lambda c: c.exp_avg_sq[::2], "exp_avg_sq"),
    ("exp_avg", lambda c: c.exp_avg.double(), "exp_avg must be torch.float32"),
    ("hyper", lambda c: c.hyper[:, :7], r"hyper must be a torch.float64 \[6, 8\] table"),
    ("hyper", lambda c: c.hyper[:5], r"hyper must be a torch.float64 \[6, 8\] table"),
    ("steps", lambda c: c.steps.float(), r"steps must be a torch.float64 \[6\] vector"),
    ("tiles", lambda c: c.tiles.int(), "tiles must be a torch.int64"),
])
def test_rejects_bad_arguments(field, bad, message):
    bad_case = case()
    setattr(bad_case, field, bad(bad_case))
    with pytest.raises(ValueError, match=message):
        cpu.adamw_step(**bad_case.step_kwargs())


def test_low_precision_param_needs_a_master_or_a_compensation():
    bad_case = case(param_dtype=torch.bfloat16)
    bad_case.master = None
    with pytest.raises(ValueError, match="need a float32 master copy or a compensation buffer"):
        cpu.adamw_step(**bad_case.step_kwargs())


def test_available_for_cpu_tensors_only():
    assert cpu.unavailable_reason("cpu") is None and cpu.unavailable_reason(torch.device("cpu")) is None
    assert "CPU tensors only" in cpu.unavailable_reason("cuda")


def test_stream_4r3w_adds_d_to_a_b_c():
    n = 3 * 65536 + 5  # several chunks and a partial one
    gen = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, generator=gen) for _ in range(4))
    expected = (a + d, b + d, c + d)
    cpu.stream_4r3w(a, b, c, d)
    for got, want in zip((a, b, c), expected):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="d must be a contiguous 1-D float32 CPU tensor"):
        cpu.stream_4r3w(a, b, c, d[:-1])
