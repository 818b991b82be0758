"""Fused multi-segment AdamW in Triton: one launch per step per segment table, however many segments.

One program per tile row ``(segment, start, end)``. The program reads its segment's rows of the
``hyper`` table (float64) and of the ``pointers`` table (where the parameter and its gradient are:
int64 addresses cast to pointers) and its entry of ``steps``, and derives the step size and bias
correction there, so the step count lives on the device: no host sync, and a captured CUDA graph
replays correctly. It then
walks the tile in ``BLOCK``-element chunks: whole chunks without a mask (tiles start on
``ALIGN_ELEMENTS`` boundaries, and with ``ALIGNED`` every address is 16-byte aligned, so those
loads vectorize), then one masked tail chunk. See :mod:`mlr_kernels.backends` for the
math and the contract.

On CPU tensors the same kernel runs through Triton's interpreter (``TRITON_INTERPRET=1`` set before
triton is imported); that is how the tests exercise it without a GPU.

No autotuning: the kernel updates its buffers in place, so every timed trial would apply the step
again unless the autotuner first cloned the whole optimizer state, and a first call inside a
CUDA-graph capture could not benchmark at all. A streaming kernel needs no more than enough bytes
in flight: 1024 elements over 8 warps is 4 per thread, one 16-byte access per float32 stream
(8 bytes for bfloat16/float16). With 4 warps the compiler gave 16-bit loads 8 elements per thread
and float32 stores 4, and moved every stored tensor between the two layouts through shared memory
behind a barrier. Tune BLOCK, NUM_WARPS and TILE_SIZE with the benchmarks, on a GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch

from mlr_kernels import segments
from mlr_kernels.backends.checks import check_step_args
from mlr_kernels.segments import SegmentTable

try:
    import triton
    import triton.language as tl
except ImportError as error:  # triton is an optional extra: this module must import without it
    triton = None
    _IMPORT_ERROR = f"triton cannot be imported ({error})"
else:
    _IMPORT_ERROR = None

TILE_SIZE = 1 << 14
BLOCK = 1024
NUM_WARPS = 8

NAME = "triton"
# It reads only the segment table's rows (addresses), not table.params or table.grads.
READS_TENSORS = False


def _interpreter_on() -> bool:
    """Whether triton.jit, which chooses between compiling and interpreting when it decorates (at
    this import), interprets: ``triton.knobs`` says so from Triton 3.4 on; earlier versions read
    ``TRITON_INTERPRET`` from the environment themselves."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRETED = triton is not None and _interpreter_on()


def unavailable_reason(device: torch.device | str) -> str | None:
    """None for CUDA tensors when triton imports, and for CPU tensors under the interpreter."""
    device = torch.device(device)
    if triton is None:
        return _IMPORT_ERROR
    if _INTERPRETED:
        return None if device.type == "cpu" else (
            "Triton's interpreter is on (TRITON_INTERPRET=1), so the kernel runs on CPU tensors only")
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "torch sees no CUDA device"
    if device.type == "cpu":
        return ("Triton runs on CPU tensors only through its interpreter "
                "(set TRITON_INTERPRET=1 before triton is imported)")
    return f"Triton does not support {device.type} tensors"


if triton is not None:
    # Globals read inside @triton.jit functions must be constexpr.
    _LR = tl.constexpr(segments.LR)
    _WEIGHT_DECAY = tl.constexpr(segments.WEIGHT_DECAY)
    _BETA1 = tl.constexpr(segments.BETA1)
    _BETA2 = tl.constexpr(segments.BETA2)
    _EPS = tl.constexpr(segments.EPS)
    _ACTIVE = tl.constexpr(segments.ACTIVE)
    _MAXIMIZE = tl.constexpr(segments.MAXIMIZE)
    _AMSGRAD = tl.constexpr(segments.AMSGRAD)
    _NUM_HYPER_COLUMNS = tl.constexpr(segments.NUM_HYPER_COLUMNS)
    _PARAM_PTR = tl.constexpr(segments.PARAM_PTR)
    _GRAD_PTR = tl.constexpr(segments.GRAD_PTR)
    _OFFSET = tl.constexpr(segments.OFFSET)
    _STREAM = tl.constexpr(segments.STREAM)
    _NUM_POINTER_COLUMNS = tl.constexpr(segments.NUM_POINTER_COLUMNS)
    _ALIGN_ELEMENTS = tl.constexpr(segments.ALIGN_ELEMENTS)

    _TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def _round_to_bfloat16(x):
        """float32 -> bfloat16, round to nearest even, in integer arithmetic. The interpreter's
        cast truncates; doing it by hand keeps the GPU and the CPU tests on one code path."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # the carry could turn a NaN into inf
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _round_to(x, dtype: tl.constexpr):
        """float32 -> the parameters' bfloat16 or float16, round to nearest even."""
        if dtype == tl.bfloat16:
            return _round_to_bfloat16(x)
        return x.to(dtype)

    @triton.jit
    def _splitmix64(z):
        z = (z ^ (z >> 30)) * tl.full((), 0xBF58476D1CE4E5B9, tl.uint64)
        z = (z ^ (z >> 27)) * tl.full((), 0x94D049BB133111EB, tl.uint64)
        return z ^ (z >> 31)

    @triton.jit
    def _random_key(stream, step, index):
        """csrc/random_bits.h's random_key: the 32-bit key of a tile (uint64 arithmetic)."""
        z = (stream.to(tl.uint64, bitcast=True) * tl.full((), 0x9E3779B97F4A7C15, tl.uint64)
             + step.to(tl.uint64) * tl.full((), 0xBF58476D1CE4E5B9, tl.uint64) + (index.to(tl.uint64) >> 32))
        return _splitmix64(z) & 0xFFFFFFFF

    @triton.jit
    def _random_bits(key, index):
        """csrc/random_bits.h's random_bits (lowbias32), in uint64 lanes masked to 32 bits so that
        no multiply depends on how a literal is typed."""
        x = key ^ (index.to(tl.uint64) & 0xFFFFFFFF)
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    @triton.jit
    def _round_stochastic(x, random16):
        """float32 -> bfloat16, up or down at random, unbiased (mlr_kernels.rounding)."""
        bits = x.to(tl.uint32, bitcast=True).to(tl.uint64)
        rounded = ((bits + (random16 & 0xFFFF)) >> 16) & 0xFFFF
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _adamw_chunk(
        offsets, mask, aligned: tl.constexpr,
        param_ptr, grad_ptr, master_ptr, compensation_ptr, exp_avg_ptr, exp_avg_sq_ptr,
        max_exp_avg_sq_ptr, amsgrad, grad_scale, decay, one_minus_beta1, beta2, one_minus_beta2,
        eps, step_size, bias_correction2_sqrt, key, first_index,
    ):
        """Update the elements at ``offsets`` from every pointer, each already at the tile's first
        element (``mask`` is None for a whole chunk). With ``aligned`` the parameter and gradient
        of a whole chunk start on a 16-byte boundary. Moments in bfloat16 are rounded back
        stochastically with the random bits of ``key`` and the elements' indices in the segment
        (``first_index + offsets``); without a master, a compensation buffer in the parameter's
        dtype keeps what the parameter's rounding dropped."""
        param_ptrs = param_ptr + offsets
        grad_ptrs = grad_ptr + offsets
        if aligned:
            param_ptrs = tl.multiple_of(param_ptrs, 16)
            grad_ptrs = tl.multiple_of(grad_ptrs, 16)
        g = tl.load(grad_ptrs, mask=mask).to(tl.float32) * grad_scale
        if master_ptr is not None:
            # A weight that is not its master rounded was written by user code since the last
            # step: the step starts from what it holds.
            p = tl.load(master_ptr + offsets, mask=mask)
            seen = tl.load(param_ptrs, mask=mask)
            seen = seen.to(tl.float32)
            p = tl.where(_round_to(p, param_ptr.dtype.element_ty).to(tl.float32) != seen, seen, p)
        elif compensation_ptr is not None:
            p = (tl.load(param_ptrs, mask=mask).to(tl.float32)
                 + tl.load(compensation_ptr + offsets, mask=mask).to(tl.float32))
        else:
            p = tl.load(param_ptrs, mask=mask)
        state_rounded: tl.constexpr = exp_avg_ptr.dtype.element_ty == tl.bfloat16
        m = tl.load(exp_avg_ptr + offsets, mask=mask).to(tl.float32)
        v = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)

        # Fused multiply-adds exactly where torch's lerp_ and addcmul_ kernels fuse.
        p = p * decay
        m = tl.fma(one_minus_beta1, g - m, m)
        v = tl.fma(one_minus_beta2 * g, g, beta2 * v)
        second_moment = v
        vmax = v
        if max_exp_avg_sq_ptr is not None:
            if amsgrad:
                vmax = tl.load(max_exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
                second_moment = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        # IEEE sqrt and division, as torch computes them: Triton's defaults are approximate.
        denom = tl.div_rn(tl.sqrt_rn(second_moment), bias_correction2_sqrt) + eps
        p = p - tl.div_rn(step_size * m, denom)

        if state_rounded:
            bits = _random_bits(key, first_index + offsets)
            v_stored = _round_stochastic(v, bits >> 16)
            tl.store(exp_avg_ptr + offsets, _round_stochastic(m, bits), mask=mask)
            tl.store(exp_avg_sq_ptr + offsets, v_stored, mask=mask)
            # The running max of the stored exp_avg_sq: both are bfloat16 values, nothing rounds.
            second_moment = tl.maximum(vmax, v_stored.to(tl.float32), propagate_nan=tl.PropagateNan.ALL)
        else:
            tl.store(exp_avg_ptr + offsets, m, mask=mask)
            tl.store(exp_avg_sq_ptr + offsets, v, mask=mask)
        if max_exp_avg_sq_ptr is not None:
            if amsgrad:
                tl.store(max_exp_avg_sq_ptr + offsets, second_moment.to(max_exp_avg_sq_ptr.dtype.element_ty),
                         mask=mask)
        if master_ptr is not None:
            tl.store(master_ptr + offsets, p, mask=mask)
            tl.store(param_ptrs, _round_to(p, param_ptr.dtype.element_ty), mask=mask)
        elif compensation_ptr is not None:
            high = _round_to(p, param_ptr.dtype.element_ty)
            tl.store(param_ptrs, high, mask=mask)
            # What the rounding dropped, exact in float32, kept in the parameter's dtype.
            dropped = _round_to(p - high.to(tl.float32), param_ptr.dtype.element_ty)
            tl.store(compensation_ptr + offsets, dropped, mask=mask)
        else:
            tl.store(param_ptrs, p, mask=mask)

    @triton.jit
    def _adamw_tile_kernel(
        hyper_ptr, pointers_ptr, steps_ptr, tiles_ptr,
        master_ptr, compensation_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
        grad_mult_ptr, found_inf_ptr,
        PARAM_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One program per tile. Optional pointers arrive as None and are specialized away.
        ``ALIGNED``: every parameter and gradient address is a multiple of 16 bytes (the launcher
        checked), so chunks may use 16-byte accesses. Without it the compiler gives parameter and
        gradient accesses a narrower layout than the state's and converts between the two through
        shared memory (tests/compile_triton_kernel.py --unaligned counts the barriers)."""
        tile = tl.program_id(0).to(tl.int64)
        segment = tl.load(tiles_ptr + 3 * tile)
        start = tl.multiple_of(tl.load(tiles_ptr + 3 * tile + 1), _ALIGN_ELEMENTS)
        end = tl.load(tiles_ptr + 3 * tile + 2)
        row = hyper_ptr + segment * _NUM_HYPER_COLUMNS
        where = pointers_ptr + segment * _NUM_POINTER_COLUMNS

        active = tl.load(row + _ACTIVE) != 0.0
        if found_inf_ptr is not None:
            active = active & (tl.load(found_inf_ptr) == 0.0)
        if active:
            lr = tl.load(row + _LR)
            beta1 = tl.load(row + _BETA1)
            beta2 = tl.load(row + _BETA2)
            step = tl.load(steps_ptr + segment)
            # beta ** step in float64 as exp2(step * log2(beta)): libdevice's pow has no
            # interpreter twin. The relative error stays near step * 1e-16, far below float32's.
            bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
            bias_correction2 = 1.0 - tl.exp2(step * tl.log2(beta2))
            step_size = (lr / bias_correction1).to(tl.float32)
            bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
            decay = (1.0 - lr * tl.load(row + _WEIGHT_DECAY)).to(tl.float32)
            # Negating a product is exact, so maximize folds into the gradient multiplier.
            grad_scale = tl.where(tl.load(row + _MAXIMIZE) != 0.0, -1.0, 1.0)
            if grad_mult_ptr is not None:
                grad_scale = grad_scale * tl.load(grad_mult_ptr)
            amsgrad = tl.load(row + _AMSGRAD) != 0.0
            one_minus_beta1 = (1.0 - beta1).to(tl.float32)
            one_minus_beta2 = (1.0 - beta2).to(tl.float32)
            beta2_f32 = beta2.to(tl.float32)
            eps = tl.load(row + _EPS).to(tl.float32)

            # The tile's first parameter and gradient element: state element `start` is element
            # `start - OFFSET` of the segment. Tiles start a multiple of ALIGN_ELEMENTS into it.
            local = tl.multiple_of(start - tl.load(where + _OFFSET), _ALIGN_ELEMENTS)
            param_address = tl.load(where + _PARAM_PTR)
            grad_address = tl.load(where + _GRAD_PTR)
            param_ptr = param_address.to(tl.pointer_type(PARAM_DTYPE), bitcast=True) + local
            grad_ptr = grad_address.to(tl.pointer_type(PARAM_DTYPE), bitcast=True) + local
            master_tile = master_ptr
            if master_ptr is not None:
                master_tile = master_ptr + start
            compensation_tile = compensation_ptr
            if compensation_ptr is not None:
                compensation_tile = compensation_ptr + start
            max_exp_avg_sq_tile = max_exp_avg_sq_ptr
            if max_exp_avg_sq_ptr is not None:
                max_exp_avg_sq_tile = max_exp_avg_sq_ptr + start
            key = _random_key(tl.load(where + _STREAM), step, local)

            n = end - start
            num_whole = n // BLOCK
            for chunk in range(num_whole):
                offsets = chunk * BLOCK + tl.arange(0, BLOCK)
                _adamw_chunk(offsets, None, ALIGNED, param_ptr, grad_ptr, master_tile, compensation_tile,
                             exp_avg_ptr + start, exp_avg_sq_ptr + start, max_exp_avg_sq_tile,
                             amsgrad, grad_scale, decay, one_minus_beta1, beta2_f32,
                             one_minus_beta2, eps, step_size, bias_correction2_sqrt, key, local)
            tail = num_whole * BLOCK
            if tail < n:
                offsets = tail + tl.arange(0, BLOCK)
                _adamw_chunk(offsets, offsets < n, ALIGNED, param_ptr, grad_ptr, master_tile,
                             compensation_tile, exp_avg_ptr + start, exp_avg_sq_ptr + start,
                             max_exp_avg_sq_tile, amsgrad, grad_scale, decay, one_minus_beta1, beta2_f32,
                             one_minus_beta2, eps, step_size, bias_correction2_sqrt, key, local)


def adamw_step(
    table: SegmentTable,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    compensation: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile, in one launch. See ``mlr_kernels.backends``.

    With ``max_exp_avg_sq`` None the AMSGRAD column is not read: checking it would sync."""
    reason = unavailable_reason(table.device)
    if reason is not None:
        raise RuntimeError(f"the Triton backend cannot run on {table.device}: {reason}")
    check_step_args(table, master, exp_avg, exp_avg_sq, max_exp_avg_sq, tiles, grad_mult, found_inf,
                    compensation)
    num_tiles = tiles.shape[0]
    if num_tiles == 0:
        return
    # Triton launches on the current device; the buffers may live on another one.
    on_device = torch.cuda.device(table.device) if table.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        _adamw_tile_kernel[(num_tiles,)](
            table.hyper, table.pointers, table.steps, tiles, master, compensation, exp_avg, exp_avg_sq,
            max_exp_avg_sq, grad_mult, found_inf, PARAM_DTYPE=_TRITON_DTYPES[table.dtype],
            ALIGNED=table.vector_aligned, BLOCK=BLOCK, num_warps=NUM_WARPS,
            # Only the explicit tl.fma calls may fuse: they are where torch rounds once.
            enable_fp_fusion=False,
        )
