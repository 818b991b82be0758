"""Compile the Triton AdamW kernel for a GPU target, without a GPU, and print what the PTX does.

The interpreter runs the kernel's Python, not its compiled form, so CPU-only tests miss code that
only the compiler rejects or de-optimizes. Triton ships ptxas, so compiling needs no device.
Run in a process without TRITON_INTERPRET (triton.jit chooses at import):

    python tests/compile_triton_kernel.py fp32 bf16 --arch 90

prints one JSON object: per param dtype, counts in the PTX of 16-byte global loads/stores, of
IEEE sqrt/div, and of barriers (a sign of layout conversions through shared memory).
"""

from __future__ import annotations

import argparse
import json
import re

import triton.language as tl
from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mlr_kernels.backends import triton as triton_backend

# A variant: the parameters' dtype, the moments' dtype, and whether a low-precision parameter has
# a float32 master (else a compensation buffer in its dtype).
VARIANTS = {"fp32": ("fp32", "fp32", True), "bf16": ("bf16", "fp32", True), "fp16": ("fp16", "fp32", True),
            "fp32-bf16state": ("fp32", "bf16", True), "bf16-bf16state-nomaster": ("bf16", "bf16", False)}


def compile_kernel(variant: str, arch: int, aligned: bool = True):
    """The compiled kernel for a variant of ``VARIANTS`` with every optional buffer present
    (master or compensation for low precision, max_exp_avg_sq, grad_mult, found_inf), for
    parameters and gradients at 16-byte aligned addresses (``aligned``) or anywhere."""
    param, state, with_master = VARIANTS[variant]
    low = param != "fp32"
    master = "*fp32" if low and with_master else "constexpr"
    compensation = f"*{param}" if low and not with_master else "constexpr"
    signature = {
        "hyper_ptr": "*fp64", "pointers_ptr": "*i64", "steps_ptr": "*fp64", "tiles_ptr": "*i64",
        "master_ptr": master, "compensation_ptr": compensation,
        "exp_avg_ptr": f"*{state}", "exp_avg_sq_ptr": f"*{state}", "max_exp_avg_sq_ptr": f"*{state}",
        "grad_mult_ptr": "*fp32", "found_inf_ptr": "*fp32", "PARAM_DTYPE": "constexpr",
        "ALIGNED": "constexpr", "BLOCK": "constexpr",
    }
    constants = {name: None for name, kind in signature.items() if kind == "constexpr"}
    constants.update(BLOCK=triton_backend.BLOCK, ALIGNED=aligned,
                     PARAM_DTYPE={"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[param])
    # What the launcher's specialization gives torch allocations: 16-byte aligned pointers.
    attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
             if kind.startswith("*")}
    source = ASTSource(triton_backend._adamw_tile_kernel, signature, constants, attrs)
    options = {"num_warps": triton_backend.NUM_WARPS, "enable_fp_fusion": False}
    return triton_compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--unaligned", action="store_true",
                        help="parameters and gradients at any address (the launcher's ALIGNED=False)")
    args = parser.parse_args()
    patterns = {"load_v4": r"ld\.global[.\w]*\.v4", "store_v4": r"st\.global[.\w]*\.v4",
                "load_v2": r"ld\.global[.\w]*\.v2", "store_v2": r"st\.global[.\w]*\.v2",
                "sqrt_rn": r"sqrt\.rn\.f32", "div_rn": r"div\.rn\.f32", "barriers": r"bar\.sync"}
    counts = {}
    for variant in args.variants:
        ptx = compile_kernel(variant, args.arch, aligned=not args.unaligned).asm["ptx"]
        counts[variant] = {name: len(re.findall(p, ptx)) for name, p in patterns.items()}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
