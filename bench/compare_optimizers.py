"""Compare MLRAdamW with torch.optim.AdamW (for-loop, foreach, fused) in one interleaved run.

    python bench/compare_optimizers.py                      # CPU workloads of bench/workloads.py
    python bench/compare_optimizers.py --device cuda --dtype bf16

Every variant steps over the same workload with one param group per module (and torch fused once
more with a single group). Rounds are interleaved so that machine noise hits all variants alike;
the table gives the median ms per step, GB/s of the bytes AdamW must move (28 per parameter) and
that as a share of a ceiling measured in the same run: on the CPU a loop with AdamW's exact
traffic (4 fp32 streams read, 3 written), on a GPU a device-to-device copy of as many bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import CPU_WORKLOADS, GPU_WORKLOADS, Workload, make_params  # noqa: E402

from mlr_kernels import MLRAdamW  # noqa: E402

BYTES_PER_PARAM = 28  # fp32 AdamW: read param, grad, exp_avg, exp_avg_sq; write param and both moments
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def group_dicts(named_groups, lr: float, with_mult: bool):
    """One param group per module; MLR variants alternate lr multipliers as ML-LR would."""
    groups = []
    for k, (_, params) in enumerate(named_groups):
        group = {"params": params, "lr": lr}
        if with_mult:
            group["lr_mult"] = 1.0 if k % 3 == 0 else 0.1
        groups.append(group)
    return groups


def build_variants(workload: Workload, device: str, dtype: torch.dtype, backends: list[str]):
    """name -> zero-argument step function, each over its own copy of the workload; and the
    MLRAdamW optimizers by name."""
    variants: dict[str, Callable[[], None]] = {}
    optimizers: dict[str, MLRAdamW] = {}
    for backend in backends:
        opt = MLRAdamW(group_dicts(make_params(workload, device, dtype), 1e-3, True), backend=backend)
        variants[f"MLRAdamW[{backend}] per-module groups"] = opt.step
        optimizers[f"MLRAdamW[{backend}] per-module groups"] = opt
    torch_kinds = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    for kind, flags in torch_kinds.items():
        opt = torch.optim.AdamW(group_dicts(make_params(workload, device, dtype), 1e-3, False), **flags)
        variants[f"torch AdamW {kind} per-module groups"] = opt.step
    single = [p for _, ps in make_params(workload, device, dtype) for p in ps]
    variants["torch AdamW fused 1 group"] = torch.optim.AdamW(single, lr=1e-3, fused=True).step
    return variants, optimizers


def host_check_ms(opt: MLRAdamW, rounds: int = 30) -> tuple[float, float]:
    """Median host time of the per-step contract check (``MLRAdamW._sync``) alone: with the
    gradients unchanged since the last step, and with every ``.grad`` a new tensor at a new
    address, as after torch's default ``zero_grad()`` and a backward."""
    params = [p for g in opt.param_groups for p in g["params"]]
    spare = [[p.grad, p.grad.clone()] for p in params]
    unchanged, replaced = [], []
    for k in range(rounds):
        start = time.perf_counter()
        opt._sync()
        unchanged.append(time.perf_counter() - start)
        for p, grads in zip(params, spare):
            p.grad = grads[k % 2]
        start = time.perf_counter()
        opt._sync()
        replaced.append(time.perf_counter() - start)
    return statistics.median(unchanged) * 1e3, statistics.median(replaced) * 1e3


def ceiling_step(numel: int, device: str) -> Callable[[], None]:
    """The bandwidth ceiling with AdamW's traffic, measured like any variant."""
    gen = torch.Generator(device=device).manual_seed(1)
    if device == "cpu":
        from mlr_kernels.backends import cpu

        a, b, c, d = (torch.randn(numel, generator=gen) for _ in range(4))
        return lambda: cpu.stream_4r3w(a, b, c, d)
    src = torch.randn(numel * BYTES_PER_PARAM // 8, generator=gen, device=device)  # 14 B read + 14 written
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def launches_per_step(step: Callable[[], None]) -> int:
    """GPU work items (kernels, copies, memsets) one call of ``step`` issues, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    if device == "cpu":
        def run(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return run

    def run_cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return run_cuda


def measure(workload: Workload, device: str, dtype: torch.dtype, backends: list[str], rounds: int,
            warmup: int):
    steps, optimizers = build_variants(workload, device, dtype, backends)
    variants = {"ceiling (same traffic)": ceiling_step(workload.numel, device), **steps}
    time_one = timer(device)
    for _ in range(warmup):
        for fn in variants.values():
            time_one(fn)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(time_one(fn))
    checks = {name: host_check_ms(opt) for name, opt in optimizers.items()}
    if device == "cuda":
        for name, fn in variants.items():
            print(f"  {name}: {launches_per_step(fn)} GPU launches per step")
    return {name: statistics.median(times) for name, times in samples.items()}, checks


def print_table(workload: Workload, medians: dict[str, float],
                checks: dict[str, tuple[float, float]]) -> list[dict]:
    gbytes = workload.numel * BYTES_PER_PARAM / 1e9
    ceiling = gbytes / (medians["ceiling (same traffic)"] / 1e3)
    fused = medians["torch AdamW fused per-module groups"]
    print(f"\n{workload.name}: {workload.numel / 1e6:.1f}M params in {workload.num_tensors} tensors, "
          f"{len(workload.groups)} groups; ceiling {ceiling:.1f} GB/s")
    print(f"  {'variant':42s} {'ms/step':>9s} {'GB/s':>7s} {'% ceil':>7s} {'vs fused':>9s}")
    rows = []
    for name, ms in medians.items():
        gbs = gbytes / (ms / 1e3)
        rows.append(dict(workload=workload.name, variant=name, ms=ms, gbs=gbs, ceiling_share=gbs / ceiling,
                         speedup_vs_fused_same_groups=fused / ms))
        print(f"  {name:42s} {ms:9.2f} {gbs:7.1f} {100 * gbs / ceiling:6.1f}% {fused / ms:8.2f}x")
    for name, (unchanged, replaced) in checks.items():
        print(f"  {name}: contract check {unchanged:.3f} ms per step with the same grads, "
              f"{replaced:.3f} ms with every grad replaced ({workload.num_tensors} tensors)")
        rows.append(dict(workload=workload.name, variant=name, check_ms_same_grads=unchanged,
                         check_ms_new_grads=replaced))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--workloads", default=None,
                        help="comma-separated names (default: all for the device)")
    parser.add_argument("--backends", default=None,
                        help="MLRAdamW backends (default: cpu, or cuda,triton)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    catalogue = CPU_WORKLOADS if args.device == "cpu" else GPU_WORKLOADS
    names = args.workloads.split(",") if args.workloads else list(catalogue)
    default_backends = ["cpu"] if args.device == "cpu" else ["cuda", "triton"]
    backends = args.backends.split(",") if args.backends else default_backends
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} rounds={args.rounds} (medians)")
    rows = []
    for name in names:
        medians, checks = measure(catalogue[name], args.device, DTYPES[args.dtype], backends,
                                  args.rounds, args.warmup)
        rows += print_table(catalogue[name], medians, checks)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
