"""Fused multi-segment AdamW in Triton: one launch per step per flat buffer, however many segments.

One program per tile row ``(segment, start, end)``. The program reads its segment's row of the
hyper table (float64) and derives the step size and bias correction there, so the step count lives
on the device: no host sync, and a captured CUDA graph replays correctly. It then walks the tile in
``BLOCK``-element chunks: whole chunks without a mask (tiles start on ``ALIGN_ELEMENTS`` boundaries,
so those loads vectorize), then one masked tail chunk. See :mod:`mlr_kernels.backends` for the
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

import torch

from mlr_kernels import segments
from mlr_kernels.backends.checks import check_step_args

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

UNAVAILABLE_REASON: str | None = _IMPORT_ERROR
# triton.jit chooses between compiling and interpreting when it decorates, i.e. at this import.
_INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)


def is_available(device: torch.device) -> bool:
    """True for CUDA tensors when triton imports, and for CPU tensors under the interpreter."""
    global UNAVAILABLE_REASON
    device = torch.device(device)
    if triton is None:
        UNAVAILABLE_REASON = _IMPORT_ERROR
    elif _INTERPRETED:
        UNAVAILABLE_REASON = None if device.type == "cpu" else (
            "Triton's interpreter is on (TRITON_INTERPRET=1), so the kernel runs on CPU tensors only")
    elif device.type == "cuda":
        UNAVAILABLE_REASON = None if torch.cuda.is_available() else "torch sees no CUDA device"
    elif device.type == "cpu":
        UNAVAILABLE_REASON = ("Triton runs on CPU tensors only through its interpreter "
                              "(set TRITON_INTERPRET=1 before triton is imported)")
    else:
        UNAVAILABLE_REASON = f"Triton does not support {device.type} tensors"
    return UNAVAILABLE_REASON is None


if triton is not None:
    # Globals read inside @triton.jit functions must be constexpr.
    _LR = tl.constexpr(segments.LR)
    _WEIGHT_DECAY = tl.constexpr(segments.WEIGHT_DECAY)
    _BETA1 = tl.constexpr(segments.BETA1)
    _BETA2 = tl.constexpr(segments.BETA2)
    _EPS = tl.constexpr(segments.EPS)
    _STEP = tl.constexpr(segments.STEP)
    _ACTIVE = tl.constexpr(segments.ACTIVE)
    _MAXIMIZE = tl.constexpr(segments.MAXIMIZE)
    _AMSGRAD = tl.constexpr(segments.AMSGRAD)
    _NUM_HYPER_COLUMNS = tl.constexpr(segments.NUM_HYPER_COLUMNS)
    _ALIGN_ELEMENTS = tl.constexpr(segments.ALIGN_ELEMENTS)

    @triton.jit
    def _round_to_bfloat16(x):
        """float32 -> bfloat16, round to nearest even, in integer arithmetic. The interpreter's
        cast truncates; doing it by hand keeps the GPU and the CPU tests on one code path."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # the carry could turn a NaN into inf
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _adamw_chunk(
        offsets, mask,
        param_ptr, grad_ptr, master_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
        amsgrad, grad_scale, decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
        bias_correction2_sqrt,
    ):
        """Update the elements at ``offsets`` (``mask`` is None for a whole aligned chunk)."""
        g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32) * grad_scale
        if master_ptr is not None:
            p = tl.load(master_ptr + offsets, mask=mask)
        else:
            p = tl.load(param_ptr + offsets, mask=mask)
        m = tl.load(exp_avg_ptr + offsets, mask=mask)
        v = tl.load(exp_avg_sq_ptr + offsets, mask=mask)

        # Fused multiply-adds exactly where torch's lerp_ and addcmul_ kernels fuse.
        p = p * decay
        m = tl.fma(one_minus_beta1, g - m, m)
        v = tl.fma(one_minus_beta2 * g, g, beta2 * v)
        second_moment = v
        if max_exp_avg_sq_ptr is not None:
            if amsgrad:
                second_moment = tl.maximum(tl.load(max_exp_avg_sq_ptr + offsets, mask=mask), v,
                                           propagate_nan=tl.PropagateNan.ALL)
                tl.store(max_exp_avg_sq_ptr + offsets, second_moment, mask=mask)
        # IEEE sqrt and division, as torch computes them: Triton's defaults are approximate.
        denom = tl.div_rn(tl.sqrt_rn(second_moment), bias_correction2_sqrt) + eps
        p = p - tl.div_rn(step_size * m, denom)

        tl.store(exp_avg_ptr + offsets, m, mask=mask)
        tl.store(exp_avg_sq_ptr + offsets, v, mask=mask)
        if master_ptr is not None:
            tl.store(master_ptr + offsets, p, mask=mask)
            if param_ptr.dtype.element_ty == tl.bfloat16:
                tl.store(param_ptr + offsets, _round_to_bfloat16(p), mask=mask)
            else:
                tl.store(param_ptr + offsets, p.to(param_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(param_ptr + offsets, p, mask=mask)

    @triton.jit
    def _adamw_tile_kernel(
        param_ptr, grad_ptr, master_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
        hyper_ptr, tiles_ptr, grad_mult_ptr, found_inf_ptr,
        BLOCK: tl.constexpr,
    ):
        """One program per tile. Optional pointers arrive as None and are specialized away."""
        tile = tl.program_id(0).to(tl.int64)
        segment = tl.load(tiles_ptr + 3 * tile)
        start = tl.multiple_of(tl.load(tiles_ptr + 3 * tile + 1), _ALIGN_ELEMENTS)
        end = tl.load(tiles_ptr + 3 * tile + 2)
        row = hyper_ptr + segment * _NUM_HYPER_COLUMNS

        active = tl.load(row + _ACTIVE) != 0.0
        if found_inf_ptr is not None:
            active = active & (tl.load(found_inf_ptr) == 0.0)
        if active:
            lr = tl.load(row + _LR)
            beta1 = tl.load(row + _BETA1)
            beta2 = tl.load(row + _BETA2)
            step = tl.load(row + _STEP)
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

            num_whole = (end - start) // BLOCK
            for chunk in range(num_whole):
                offsets = start + chunk * BLOCK + tl.arange(0, BLOCK)
                _adamw_chunk(offsets, None, param_ptr, grad_ptr, master_ptr, exp_avg_ptr,
                             exp_avg_sq_ptr, max_exp_avg_sq_ptr, amsgrad, grad_scale, decay,
                             one_minus_beta1, beta2_f32, one_minus_beta2, eps, step_size,
                             bias_correction2_sqrt)
            tail = start + num_whole * BLOCK
            if tail < end:
                offsets = tail + tl.arange(0, BLOCK)
                _adamw_chunk(offsets, offsets < end, param_ptr, grad_ptr, master_ptr, exp_avg_ptr,
                             exp_avg_sq_ptr, max_exp_avg_sq_ptr, amsgrad, grad_scale, decay,
                             one_minus_beta1, beta2_f32, one_minus_beta2, eps, step_size,
                             bias_correction2_sqrt)


def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    master: torch.Tensor | None,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    hyper: torch.Tensor,
    tiles: torch.Tensor,
    grad_mult: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """One AdamW step over every active tile, in one launch. See ``mlr_kernels.backends``.

    With ``max_exp_avg_sq`` None the AMSGRAD column is not read: checking it would sync."""
    if not is_available(param.device):
        raise RuntimeError(f"the Triton backend cannot run on {param.device}: {UNAVAILABLE_REASON}")
    check_step_args(param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq, hyper, tiles,
                    grad_mult, found_inf)
    num_tiles = tiles.shape[0]
    if num_tiles == 0:
        return
    # Triton launches on the current device; the buffers may live on another one.
    on_device = torch.cuda.device(param.device) if param.is_cuda else contextlib.nullcontext()
    with on_device:
        _adamw_tile_kernel[(num_tiles,)](
            param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq, hyper, tiles,
            grad_mult, found_inf, BLOCK=BLOCK, num_warps=NUM_WARPS,
            # Only the explicit tl.fma calls may fuse: they are where torch rounds once.
            enable_fp_fusion=False,
        )
