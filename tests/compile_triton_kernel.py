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


def compile_kernel(param: str, arch: int, aligned: bool = True):
    """The compiled kernel for ``param`` ("fp32", "bf16", "fp16") with every optional buffer
    present (master for low precision, max_exp_avg_sq, grad_mult, found_inf), for parameters and
    gradients at 16-byte aligned addresses (``aligned``) or anywhere."""
    master = "constexpr" if param == "fp32" else "*fp32"
    signature = {
        "hyper_ptr": "*fp64", "pointers_ptr": "*i64", "steps_ptr": "*fp64", "tiles_ptr": "*i64",
        "master_ptr": master,
        "exp_avg_ptr": "*fp32", "exp_avg_sq_ptr": "*fp32", "max_exp_avg_sq_ptr": "*fp32",
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
    parser.add_argument("params", nargs="+", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--unaligned", action="store_true",
                        help="parameters and gradients at any address (the launcher's ALIGNED=False)")
    args = parser.parse_args()
    patterns = {"load_v4": r"ld\.global[.\w]*\.v4", "store_v4": r"st\.global[.\w]*\.v4",
                "sqrt_rn": r"sqrt\.rn\.f32", "div_rn": r"div\.rn\.f32", "barriers": r"bar\.sync"}
    counts = {}
    for param in args.params:
        ptx = compile_kernel(param, args.arch, aligned=not args.unaligned).asm["ptx"]
        counts[param] = {name: len(re.findall(p, ptx)) for name, p in patterns.items()}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
