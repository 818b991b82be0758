"""Random AdamW kernel inputs, and the checks every backend must pass against the reference.

Shared by the ``tests/test_kernel_*.py`` files::

    case = make_case([1, 17, 300], param_dtype=torch.bfloat16, device="cpu", amsgrad=True)
    got = check_against_reference(backend_module, case, steps=2)
    got = check_cuda_graph_replay(backend_module, cuda_case)  # GPU only

``make_case`` builds random values (never zeros): the parameters and gradients as tensors inside
an arena each (odd segments one element off 16-byte alignment, gaps between them), the flat state
buffers, every element outside a segment set to a signalling-NaN sentinel, a random per-segment
``hyper`` table, random step counts and the tile list; ``step_kwargs`` points a
:class:`~mlr_kernels.segments.SegmentTable` at it.
``check_against_reference`` runs the backend and :mod:`mlr_kernels.backends.reference` (on CPU
copies: the oracle) for a few steps; ``assert_step_result`` then asserts that the results agree
within the error bound of two correct float32 implementations after that many steps
(tests/error_bound.py), that a low-precision param is its master copy rounded to nearest even,
and that nothing outside the active tiles changed, bit for bit.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import torch
from error_bound import adamw_error_bound, ulp

from mlr_kernels import rounding, segments
from mlr_kernels.backends import reference

# Signalling NaNs: any arithmetic on them (a write of a computed value) changes their bits.
_SENTINEL_BITS = {torch.float32: 0x7FA5A5A5, torch.bfloat16: 0x7FA5, torch.float16: 0x7D5A}
_BITS_DTYPE = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}

# The buffers a step writes (grad is read-only).
WRITTEN = ("param", "master", "compensation", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_TENSORS = ("param", "grad", "master", "compensation", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "hyper",
            "steps", "tiles", "grad_mult", "found_inf")


@dataclasses.dataclass
class AdamWCase:
    """Arguments of one ``adamw_step`` call, and the layout they were built from.

    ``param`` and ``grad`` are arenas: segment ``s`` is ``param[param_offsets[s]:][:numels[s]]``;
    the state buffers are laid out by ``offsets`` (:func:`mlr_kernels.segments.segment_offsets`).
    """

    numels: list[int]
    offsets: list[int]
    param_offsets: list[int]
    param: torch.Tensor
    grad: torch.Tensor
    master: torch.Tensor | None
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_exp_avg_sq: torch.Tensor | None
    hyper: torch.Tensor
    steps: torch.Tensor
    tiles: torch.Tensor
    streams: list[int]
    compensation: torch.Tensor | None = None
    grad_mult: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None

    def segment_views(self, arena: torch.Tensor) -> list[torch.Tensor]:
        return [arena[o : o + n] for o, n in zip(self.param_offsets, self.numels)]

    def step_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``backend.adamw_step``: a segment table pointed at the arenas
        (its ``hyper`` and ``steps`` are this case's) and the state buffers."""
        table = segments.SegmentTable(self.numels, self.param.dtype, self.param.device)
        table.hyper, table.steps = self.hyper, self.steps
        params, grads = self.segment_views(self.param), self.segment_views(self.grad)
        table.point_at(params, grads, [p.data_ptr() for p in params], [g.data_ptr() for g in grads])
        table.set_streams(0, self.streams)
        table.upload()
        return dict(table=table, master=self.master, exp_avg=self.exp_avg, exp_avg_sq=self.exp_avg_sq,
                    max_exp_avg_sq=self.max_exp_avg_sq, tiles=self.tiles, grad_mult=self.grad_mult,
                    found_inf=self.found_inf, compensation=self.compensation)

    def to(self, device: torch.device | str) -> AdamWCase:
        """A copy with every tensor cloned onto ``device``."""
        def move(value):
            return value.detach().to(device, copy=True) if isinstance(value, torch.Tensor) else value
        return dataclasses.replace(self, **{k: move(getattr(self, k)) for k in _TENSORS})

    def advance_step(self) -> None:
        """Count one more step for every segment, as an optimizer does between calls."""
        self.steps += 1

    def updated_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool masks of the elements a step may write (tiles of active segments): of the state
        buffers, and of the parameter arena."""
        state = torch.zeros(self.exp_avg.numel(), dtype=torch.bool)
        param = torch.zeros(self.param.numel(), dtype=torch.bool)
        if self.found_inf is not None and float(self.found_inf.reshape(-1)[0]) != 0.0:
            return state, param
        active = self.hyper[:, segments.ACTIVE].cpu() != 0
        for seg, start, end in self.tiles.tolist():
            if active[seg]:
                state[start:end] = True
                shift = self.param_offsets[seg] - self.offsets[seg]
                param[start + shift : end + shift] = True
        return state, param


def make_case(
    numels: list[int],
    *,
    param_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    tile_size: int = 64,
    amsgrad: bool = False,
    maximize: bool = False,
    misalign: bool = True,
    inactive: tuple[int, ...] = (),
    grad_mult: float | None = None,
    found_inf: float | None = None,
    seed: int = 0,
    state_dtype: torch.dtype = torch.float32,
    master: bool = True,
) -> AdamWCase:
    """Random buffers for segments of ``numels`` elements, with sentinel-filled padding.

    ``state_dtype`` is the moments' (float32 or bfloat16); a bfloat16/float16 ``param_dtype`` has
    a float32 master, or with ``master=False`` a compensation buffer in its own dtype (up to half a
    unit of each weight). Each segment gets a random stream of random bits.

    ``amsgrad`` allocates ``max_exp_avg_sq`` and turns AMSGrad on for every even segment,
    ``maximize`` turns it on for every odd one, so each case mixes both settings; ``inactive``
    lists segments with ACTIVE = 0. With ``misalign`` every odd segment's parameter and gradient
    start one element past a 16-byte boundary. ``grad_mult``/``found_inf`` become one-element
    tensors."""
    gen = torch.Generator().manual_seed(seed)
    offsets, total = segments.segment_offsets(numels)
    # Parameters in the arena: after a sentinel gap, odd ones (with misalign) off alignment.
    param_offsets, arena = [], 0
    for s, n in enumerate(numels):
        start = segments.aligned(arena + 1) + (s % 2 if misalign else 0)
        param_offsets.append(start)
        arena = start + n
    arena = segments.aligned(arena + 1)

    def mask(starts: list[int], length: int) -> torch.Tensor:
        inside = torch.zeros(length, dtype=torch.bool)
        for start, n in zip(starts, numels):
            inside[start:start + n] = True
        return inside

    in_segment, in_arena = mask(offsets, total), mask(param_offsets, arena)

    def buffer(dtype: torch.dtype, values: torch.Tensor, inside: torch.Tensor = in_segment) -> torch.Tensor:
        sentinel = torch.full((inside.numel(),), _SENTINEL_BITS[dtype], dtype=_BITS_DTYPE[dtype])
        out = sentinel.view(dtype)
        out[inside] = values[: inside.numel()][inside].to(dtype)
        return out

    def in_arena_order(values: torch.Tensor) -> torch.Tensor:
        """The same per-element values as a state buffer, at the arena's positions."""
        out = torch.zeros(max(arena, total))
        for state_start, arena_start, n in zip(offsets, param_offsets, numels):
            out[arena_start:arena_start + n] = values[state_start:state_start + n]
        return out

    def normal(scale: float) -> torch.Tensor:
        return torch.randn(total, generator=gen) * scale

    def positive(scale: float) -> torch.Tensor:
        return (torch.rand(total, generator=gen) + 0.05) * scale

    master_values = normal(1.0)
    exp_avg_sq = positive(1e-2)
    case = AdamWCase(
        numels=list(numels),
        offsets=offsets,
        param_offsets=param_offsets,
        param=buffer(param_dtype, in_arena_order(master_values), in_arena),
        grad=buffer(param_dtype, torch.randn(arena, generator=gen) * 0.3, in_arena),
        master=None if param_dtype == torch.float32 or not master else buffer(torch.float32, master_values),
        exp_avg=buffer(state_dtype, normal(0.1)),
        exp_avg_sq=buffer(state_dtype, exp_avg_sq),
        # Around exp_avg_sq, so the running max is sometimes kept and sometimes replaced.
        max_exp_avg_sq=buffer(state_dtype, exp_avg_sq * (0.5 + torch.rand(total, generator=gen)))
        if amsgrad else None,
        hyper=_random_hyper(len(numels), gen, amsgrad, maximize, inactive),
        steps=torch.randint(1, 1000, (len(numels),), generator=gen).double(),
        tiles=segments.make_tiles(offsets, numels, tile_size),
        grad_mult=None if grad_mult is None else torch.tensor([grad_mult], dtype=torch.float32),
        found_inf=None if found_inf is None else torch.tensor([found_inf], dtype=torch.float32),
        streams=torch.randint(-(2**63), 2**63 - 1, (len(numels),), generator=gen).tolist(),
    )
    if param_dtype != torch.float32 and not master:
        weights = master_values.to(param_dtype).float()
        case.compensation = buffer(param_dtype, (master_values - weights).to(param_dtype).float())
    return case.to(device)


def _random_hyper(num_segments: int, gen: torch.Generator, amsgrad: bool, maximize: bool,
                  inactive: tuple[int, ...]) -> torch.Tensor:
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(num_segments, generator=gen, dtype=torch.float64)

    index = torch.arange(num_segments)
    hyper = torch.zeros(num_segments, segments.NUM_HYPER_COLUMNS, dtype=torch.float64)
    hyper[:, segments.LR] = 10.0 ** uniform(-4, -1)
    hyper[:, segments.WEIGHT_DECAY] = uniform(0.0, 0.2)
    hyper[:, segments.BETA1] = uniform(0.8, 0.95)
    hyper[:, segments.BETA2] = uniform(0.95, 0.999)
    hyper[:, segments.EPS] = 10.0 ** uniform(-8, -6)
    hyper[:, segments.ACTIVE] = 1.0
    hyper[list(inactive), segments.ACTIVE] = 0.0
    hyper[:, segments.MAXIMIZE] = float(maximize) * (index % 2 == 1).double()
    hyper[:, segments.AMSGRAD] = float(amsgrad) * (index % 2 == 0).double()
    return hyper


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(_BITS_DTYPE[tensor.dtype])


def check_against_reference(backend: ModuleType, case: AdamWCase, steps: int = 2) -> AdamWCase:
    """Run ``steps`` steps of ``backend`` and of the reference from the same ``case``; assert
    they agree and that nothing outside the active tiles changed. Returns the backend's result
    on the CPU (``case`` itself is left as it was)."""
    got = case.to(case.param.device)
    expected = case.to("cpu")
    for step in range(steps):
        if step:
            got.advance_step()
            expected.advance_step()
        backend.adamw_step(**got.step_kwargs())
        reference.adamw_step(**expected.step_kwargs())
    return assert_step_result(case, got, expected, steps)


def check_rounding_draws_the_reference_bits(backend: ModuleType, case: AdamWCase) -> None:
    """With beta1 = 0 the new exp_avg is the gradient itself (times ``grad_mult``, negated when
    maximizing): in bfloat16 it must be, bit for bit, :mod:`mlr_kernels.rounding`'s stochastic
    rounding of it with the random bits of the segment's stream, step and element indices. A
    backend drawing other bits would agree on about half the elements."""
    case = case.to(case.param.device)
    case.hyper[:, segments.BETA1] = 0.0
    backend.adamw_step(**case.step_kwargs())
    got = case.to("cpu")
    before = got.to("cpu")
    mult = 1.0 if got.grad_mult is None else float(got.grad_mult)
    active = got.hyper[:, segments.ACTIVE] != 0
    for seg, (state_start, arena_start, n) in enumerate(zip(got.offsets, got.param_offsets, got.numels)):
        if not active[seg]:
            continue
        g = before.grad[arena_start:arena_start + n].float() * mult
        if got.hyper[seg, segments.MAXIMIZE]:
            g = -g
        key = rounding.random_key(got.streams[seg], int(got.steps[seg]), 0)
        bits = rounding.random_bits(key, torch.arange(n, dtype=torch.int64))
        want = rounding.to_bfloat16_stochastic(g, bits)
        assert torch.equal(_bits(got.exp_avg[state_start:state_start + n]), _bits(want)), f"segment {seg}"


def check_written_weights_reseed_the_master(backend: ModuleType, case: AdamWCase) -> AdamWCase:
    """Overwrite every third low-precision weight (as user code may between steps): the step must
    start from the written value, not the master. Checked against the reference, and with lr = 0
    (nothing moves) the master must then hold exactly the written values."""
    written = case.to("cpu")
    gen = torch.Generator().manual_seed(3)
    for view in written.segment_views(written.param):
        view[::3] = (torch.randn(view[::3].shape, generator=gen) + 4.0).to(view.dtype)
    got = check_against_reference(backend, written.to(case.param.device))
    frozen = written.to(case.param.device)
    frozen.hyper[:, segments.LR] = 0.0
    backend.adamw_step(**frozen.step_kwargs())
    frozen = frozen.to("cpu")
    active = frozen.hyper[:, segments.ACTIVE] != 0
    layout = zip(frozen.offsets, frozen.param_offsets, frozen.numels)
    for seg, (state_start, arena_start, n) in enumerate(layout):
        if active[seg]:
            param = written.param[arena_start:arena_start + n]
            torch.testing.assert_close(frozen.master[state_start:state_start + n][::3], param[::3].float(),
                                       rtol=0, atol=0)
    return got


def check_cuda_graph_replay(backend: ModuleType, case: AdamWCase, steps: int = 2) -> AdamWCase:
    """Capture one step of ``backend`` in a CUDA graph and replay it ``steps`` times, advancing
    the step count on the device in between: the kernel must read everything it needs on the
    device. Compared with the reference like ``check_against_reference``."""
    warmup = case.to(case.param.device)
    backend.adamw_step(**warmup.step_kwargs())  # compile and load outside the capture
    torch.cuda.synchronize()
    got = case.to(case.param.device)
    expected = case.to("cpu")
    kwargs = got.step_kwargs()  # the segment table is written from the host: before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        backend.adamw_step(**kwargs)
    for step in range(steps):
        if step:
            got.advance_step()
            expected.advance_step()
        graph.replay()
        reference.adamw_step(**expected.step_kwargs())
    torch.cuda.synchronize()
    return assert_step_result(case, got, expected, steps)


def assert_step_result(before: AdamWCase, got: AdamWCase, expected: AdamWCase, steps: int) -> AdamWCase:
    """Assert that ``got`` (a backend's result after ``steps`` steps from ``before``) is within
    twice the error bound of :func:`error_bound.adamw_error_bound` of ``expected`` (the
    reference's), a low-precision param also within one unit of its dtype, and that nothing
    outside the active tiles changed. Returns ``got`` on the CPU."""
    before, got = before.to("cpu"), got.to("cpu")
    state_mask, param_mask = before.updated_mask()
    bound = adamw_error_bound(before, steps)
    tolerance = {"master": 2 * bound["p"], **{k: 2 * bound[k] for k in _MOMENTS}}
    tolerance["param"] = _in_arena_order(before, 2 * bound["p"])
    low = before.param.dtype
    if low != torch.float32:
        tolerance["param"] = tolerance["param"] + ulp(expected.param, low)
        # The compensation is what the weight's rounding dropped: one unit of the weight apart
        # when the weights are.
        tolerance["compensation"] = 2 * bound["p"] + _in_state_order(before, ulp(expected.param, low))
    if before.exp_avg.dtype == torch.bfloat16:  # stochastic rounding of nearly equal values
        for k in _MOMENTS:
            if getattr(expected, k) is not None:
                tolerance[k] = tolerance[k] + ulp(getattr(expected, k), torch.bfloat16)
    for name in WRITTEN:
        old, new, ref = getattr(before, name), getattr(got, name), getattr(expected, name)
        if old is None:
            continue
        updated = param_mask if name == "param" else state_mask
        assert torch.equal(_bits(new)[~updated], _bits(old)[~updated]), (
            f"{name} changed outside the active tiles")
        _assert_within(name, new[updated], ref[updated], tolerance[name][updated])
    assert torch.equal(_bits(got.grad), _bits(before.grad)), "grad was written"
    assert (torch.equal(got.hyper, expected.hyper) and torch.equal(got.steps, expected.steps)
            and torch.equal(got.tiles, before.tiles)), "the hyper table, steps or the tile list was written"
    for seg, (state_start, arena_start, n) in enumerate(zip(before.offsets, before.param_offsets,
                                                            before.numels)):
        param = got.param[arena_start:arena_start + n]
        if got.master is not None:
            master = got.master[state_start:state_start + n]
            assert torch.equal(_bits(param), _bits(master.to(got.param.dtype))), (
                f"segment {seg}: param is not its master copy rounded to nearest even")
        if got.compensation is not None:
            dropped = got.compensation[state_start:state_start + n].double().abs()
            assert (dropped <= ulp(param, param.dtype) / 2).all(), (
                f"segment {seg}: the compensation is more than half a unit of the weight")
    return got


def _assert_within(name: str, got: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    """|got - expected| <= bound elementwise (NaN where expected is NaN)."""
    got, expected = got.double(), expected.double()
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan), f"{name}: NaN where the reference has none, or not where it has"
    error = (got - expected).abs()
    outside = (error > bound) & ~nan
    if outside.any():
        worst = int((error - bound).masked_fill(nan, -1.0).argmax())
        raise AssertionError(
            f"{name}: {int(outside.sum())} of {got.numel()} elements beyond the error bound; worst: "
            f"{float(got[worst])!r} against {float(expected[worst])!r}, off by {float(error[worst]):.3g} "
            f"where the bound is {float(bound[worst]):.3g}")


def _in_state_order(case: AdamWCase, arena_values: torch.Tensor) -> torch.Tensor:
    """A per-element quantity at the parameter arena's positions, moved to state coordinates."""
    out = torch.zeros(case.exp_avg.numel(), dtype=arena_values.dtype)
    for state_start, arena_start, n in zip(case.offsets, case.param_offsets, case.numels):
        out[state_start:state_start + n] = arena_values[arena_start:arena_start + n]
    return out


def _in_arena_order(case: AdamWCase, state_values: torch.Tensor) -> torch.Tensor:
    """A per-element quantity in state coordinates, moved to the parameter arena's positions."""
    out = torch.zeros(case.param.numel(), dtype=state_values.dtype)
    for state_start, arena_start, n in zip(case.offsets, case.param_offsets, case.numels):
        out[arena_start:arena_start + n] = state_values[state_start:state_start + n]
    return out
