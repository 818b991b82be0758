"""GPU checks that are not unit tests: run by bench/gpu_check.sh on a GPU.

    python3 bench/gpu_checks.py            # on a GPU: each check prints one PASS/FAIL line
    python3 bench/gpu_checks.py --dry-run  # anywhere: the plan and the memory each check needs

1. ``vs-torch-fused``: MLRAdamW (each GPU backend) against ``torch.optim.AdamW(fused=True)`` after
   3 steps on a 12-layer Llama-shaped parameter set with one group per module and lr multipliers
   folded into torch's groups; the largest difference must stay within ``rtol=1e-5, atol=1e-6``
   (three steps of fp32 rounding; tests/error_bound.py derives the kernel-level bound).
2. ``segment-over-2^31``: one float32 parameter of 2^31 + 4099 elements (int64 indexing, a tile
   list past 2^31): its last 1 << 20 elements after one step against torch's single-tensor AdamW
   on a copy of them, and its first ones likewise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import GPU_WORKLOADS, make_params  # noqa: E402

from mlr_kernels import MLRAdamW  # noqa: E402

BACKENDS = ("cuda", "triton")
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
LARGE_NUMEL = 2**31 + 4099
CHECKED = 1 << 20
OPTIONS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def check_against_torch_fused() -> bool:
    workload = GPU_WORKLOADS["llama-125m"]
    named = make_params(workload, "cuda", torch.float32)
    mults = [1.0 if k % 3 == 0 else 0.1 for k in range(len(named))]
    copies = {}
    for name in (*BACKENDS, "torch"):
        copies[name] = [[p.detach().clone().requires_grad_() for p in params] for _, params in named]
        for copy, (_, params) in zip(copies[name], named):
            for q, p in zip(copy, params):
                q.grad = p.grad.clone()
    optimizers = {name: MLRAdamW([{"params": ps, "lr_mult": m} for ps, m in zip(copies[name], mults)],
                                 backend=name, **OPTIONS) for name in BACKENDS}
    optimizers["torch"] = torch.optim.AdamW(
        [{"params": ps, "lr": OPTIONS["lr"] * m} for ps, m in zip(copies["torch"], mults)],
        fused=True, **{k: v for k, v in OPTIONS.items() if k != "lr"})
    for _ in range(3):
        for opt in optimizers.values():
            opt.step()
    torch.cuda.synchronize()
    ok = True
    reference = [p for ps in copies["torch"] for p in ps]
    for name in BACKENDS:
        got = [p for ps in copies[name] for p in ps]
        worst = max(float(((a - b).abs() - TOLERANCE["rtol"] * b.abs()).max())
                    for a, b in zip(got, reference))
        passed = worst <= TOLERANCE["atol"]
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} vs-torch-fused[{name}]: {workload.numel / 1e6:.0f}M params, "
              f"{len(named)} groups, 3 steps; max(|diff| - rtol |torch|) = {worst:.3g} "
              f"(atol {TOLERANCE['atol']})")
    return ok


def check_segment_over_2_31() -> bool:
    gen = torch.Generator(device="cuda").manual_seed(0)
    param = torch.nn.Parameter(torch.randn(LARGE_NUMEL, generator=gen, device="cuda"))
    param.grad = torch.randn(LARGE_NUMEL, generator=gen, device="cuda")
    ok = True
    for name in BACKENDS:
        ends = {"head": slice(0, CHECKED), "tail": slice(LARGE_NUMEL - CHECKED, LARGE_NUMEL)}
        twins = {where: torch.nn.Parameter(param.detach()[span].clone()) for where, span in ends.items()}
        for where, twin in twins.items():
            twin.grad = param.grad[ends[where]].clone()
        opt = MLRAdamW([param], backend=name, **OPTIONS)
        opt.step()
        torch.optim.AdamW(list(twins.values()), foreach=False, **OPTIONS).step()
        torch.cuda.synchronize()
        for where, twin in twins.items():
            close = torch.allclose(param.detach()[ends[where]], twin.detach(), **TOLERANCE)
            ok &= close
            print(f"{'PASS' if close else 'FAIL'} segment-over-2^31[{name}] {where}: {LARGE_NUMEL} elements, "
                  f"max |diff| {float((param.detach()[ends[where]] - twin).abs().max()):.3g}")
        del opt
        torch.cuda.empty_cache()
        param.data.copy_(torch.randn(LARGE_NUMEL, generator=gen, device="cuda"))  # fresh values per backend
    return ok


CHECKS = {"vs-torch-fused": (check_against_torch_fused, GPU_WORKLOADS["llama-125m"].numel * 4 * 4 * 5),
          "segment-over-2^31": (check_segment_over_2_31, LARGE_NUMEL * 4 * 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and memory needs; run nothing")
    args = parser.parse_args()
    if args.dry_run:
        for name, (_, nbytes) in CHECKS.items():
            print(f"{name}: needs about {nbytes / 2**30:.1f} GiB of GPU memory")
        return 0
    if not torch.cuda.is_available():
        print("gpu_checks: no CUDA device", file=sys.stderr)
        return 2
    results = {name: check() for name, (check, _) in CHECKS.items()}
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
