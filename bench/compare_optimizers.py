"""Compare MLRAdamW with torch.optim.AdamW (fused, foreach) in one interleaved run.

    python bench/compare_optimizers.py                      # CPU workloads of bench/workloads.py
    python bench/compare_optimizers.py --device cuda --dtype bf16 --workloads llama-1b,lora,small

Every variant steps the same random parameters and gradients (never zeros) with its own state,
once with one param group per module (ML-LR's multipliers on MLRAdamW) and once with a single
group; MLRAdamW in each state mode (float32 moments; bfloat16 moments; on bfloat16 weights also
without float32 masters). Rounds are interleaved so that machine noise hits all variants alike;
the table gives medians. Per variant:

* bytes of optimizer state it owns per parameter, and bytes a step must move per parameter:
  fp32 AdamW 8 and 28 (param, grad and both moments read; param and both moments written);
  with bf16 moments 4 and 20; on bf16 parameters with fp32 masters 12 and 30, with bf16 moments
  8 and 22, without masters (a bf16 compensation) 6 and 18; torch's AdamW on bf16 parameters
  4 and 14: bf16 moments rounded to nearest and no master, a less precise algorithm;
* device ms and host ms apart (bench/timing.py): on a GPU the events time the device's work with
  the stream kept busy, and host ms is what ``step()`` costs the host meanwhile; on the CPU both
  are the wall time of the call;
* GB/s, and that as a share of two ceilings measured in the same run over as many elements: a
  loop with fp32 AdamW's exact traffic and no math (``stream_4r3w``, 4 streams read and 3
  written), and a copy of 28 bytes per element;
* the speed-up over torch fused with the same groups, and GPU launches per step;
* for MLRAdamW, the per-step contract check's host time per parameter, with the gradients
  unchanged and with every gradient a new tensor (torch's default ``zero_grad()``), with the
  parameters read in C++ and in Python (mlr_kernels/host_reads.py; ``host_reads`` in the header
  says which one the timed steps used).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlr.environment import environment  # noqa: E402
from timing import (  # noqa: E402
    StepTimer,
    Timing,
    copy_ceiling,
    launches_per_step,
    median_timing,
    stream_ceiling,
)
from workloads import CPU_WORKLOADS, GPU_WORKLOADS, Workload, make_params  # noqa: E402

from mlr_kernels import MLRAdamW  # noqa: E402
from mlr_kernels.host_reads import HOST_READ_PATHS, HOST_READS_ENV  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CEILING_BYTES_PER_ELEMENT = 28
GROUPINGS = ("per-module groups", "1 group")


# MLRAdamW's state modes per parameter dtype: name and MLRAdamW keyword arguments.
MLR_MODES = {
    torch.float32: {"": {}, " bf16 state": dict(state_dtype=torch.bfloat16)},
    torch.bfloat16: {"": {}, " bf16 state": dict(state_dtype=torch.bfloat16),
                     " bf16 state, no master": dict(state_dtype=torch.bfloat16, master_weights=False)},
}


def bytes_per_param(dtype: torch.dtype, state_dtype: torch.dtype, master: bool) -> tuple[int, int]:
    """Bytes per parameter an AdamW step must move (weight read and written, gradient read, each
    state buffer read and written), and bytes of optimizer state it owns: for weights of
    ``dtype``, moments of ``state_dtype``, and for low-precision weights a float32 master or
    (``master`` False) a compensation in their dtype. torch's AdamW on bfloat16 weights is
    (bfloat16, bfloat16, False) without the compensation."""
    weight, moment = dtype.itemsize, state_dtype.itemsize
    extra = 0 if dtype == torch.float32 else (4 if master else weight)
    state = 2 * moment + extra
    return 3 * weight + 2 * state, state


@dataclass
class Variant:
    name: str
    grouping: str
    step: Callable[[], None]
    bytes_per_param: int  # moved by a step
    state_bytes_per_param: int  # owned by the optimizer
    optimizer: MLRAdamW | None = None  # MLRAdamW variants: for the contract check's host time

    @property
    def key(self) -> str:
        return f"{self.name}, {self.grouping}"


def group_dicts(named_groups, lr: float, with_mult: bool):
    """One param group per module; with ``with_mult``, lr multipliers as ML-LR would set them."""
    groups = []
    for k, (_, params) in enumerate(named_groups):
        group = {"params": params, "lr": lr}
        if with_mult:
            group["lr_mult"] = 1.0 if k % 3 == 0 else 0.1
        groups.append(group)
    return groups


def build_variants(workload: Workload, device: str, dtype: torch.dtype, backends: list[str]) -> list[Variant]:
    """Every variant, each optimizer over the same parameters, in both groupings."""
    named = make_params(workload, device, dtype)
    every = [p for _, params in named for p in params]
    variants = []
    for grouping in GROUPINGS:
        def groups(with_mult: bool, grouping: str = grouping):
            return group_dicts(named, 1e-3, with_mult) if grouping == GROUPINGS[0] else [{"params": every}]
        for backend in backends:
            for mode, options in MLR_MODES[dtype].items():
                opt = MLRAdamW(groups(True), lr=1e-3, backend=backend, **options)
                counts = bytes_per_param(dtype, opt.state_dtype, opt.master_weights)
                variants.append(Variant(f"MLRAdamW[{backend}]{mode}", grouping, opt.step, *counts, opt))
        for kind, flags in (("fused", dict(fused=True)), ("foreach", dict(foreach=True))):
            opt = torch.optim.AdamW(groups(False), lr=1e-3, **flags)
            counts = bytes_per_param(dtype, dtype, True) if dtype == torch.float32 else (7 * dtype.itemsize,
                                                                                         2 * dtype.itemsize)
            variants.append(Variant(f"torch AdamW {kind}", grouping, opt.step, *counts))
    return variants


def host_check_us_per_param(opt: MLRAdamW, rounds: int = 30,
                            new_grads: list[torch.Tensor] | None = None) -> dict[str, tuple[float, float]]:
    """Median host time of what a step does before its launches (``MLRAdamW._prepare``: the
    contract check and the host copy of the hyper table, a new lr in every group as a scheduler
    writes it), in µs per parameter, with the gradients unchanged since the last step and with
    every ``.grad`` a new tensor at a new address, as after torch's default ``zero_grad()`` and a
    backward; for each way the build can read the parameters (``"c++"``, ``"python"``:
    mlr_kernels/host_reads.py). Each is timed right after a step, as in training, when the step
    has pushed the parameters' Python and C++ objects out of the caches. Timed as this thread's
    CPU time (``time.thread_time``), which the other processes of a shared machine do not
    inflate. ``new_grads``: the gradients that replace the parameters' (in their order) every other
    round, made as the training loop would make them (default: clones)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    new_grads = [p.grad.clone() for p in params] if new_grads is None else new_grads
    spare = [[p.grad, g] for p, g in zip(params, new_grads)]
    times = {(path, new): [] for path in HOST_READ_PATHS for new in (False, True)}
    replaced = 0
    for k in range(rounds):
        for path, new in times:
            if os.environ.get(HOST_READS_ENV) != path:  # a step with these reads first: what they
                os.environ[HOST_READS_ENV] = path       # keep of a step is what the next compares
                opt.step()
            if new:
                replaced += 1
                for p, grads in zip(params, spare):
                    p.grad = grads[replaced % 2]
            for group in opt.param_groups:  # a scheduler's step
                group["lr"] = 1e-3 / (1 + k)
            start = time.thread_time()
            opt._prepare()
            times[path, new].append(time.thread_time() - start)
            opt.step()  # the uploads and launches, untimed: the next round starts from a step
    os.environ.pop(HOST_READS_ENV)
    return {path: tuple(statistics.median(times[path, new]) * 1e6 / len(params) for new in (False, True))
            for path in HOST_READ_PATHS}


def measure(workload: Workload, device: str, dtype: torch.dtype, backends: list[str], rounds: int,
            warmup: int) -> list[dict]:
    """Time every variant and both ceilings, interleaved; one row per variant."""
    variants = build_variants(workload, device, dtype, backends)
    ceilings = {"stream_4r3w": stream_ceiling(workload.numel, device),
                "copy": copy_ceiling(workload.numel, device)}
    calls = {**{f"ceiling {name}": fn for name, fn in ceilings.items()}, **{v.key: v.step for v in variants}}
    timer = StepTimer(device)
    host_ms = {name: 0.0 for name in calls}
    for _ in range(warmup):
        for name, fn in calls.items():
            host_ms[name] = timer(fn).host_ms
    samples: dict[str, list[Timing]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            samples[name].append(timer(fn, host_ms[name]))
    medians = {name: median_timing(times) for name, times in samples.items()}
    ceiling_bytes = workload.numel * CEILING_BYTES_PER_ELEMENT
    ceiling_gbs = {name: ceiling_bytes / 1e6 / medians[f"ceiling {name}"].device_ms for name in ceilings}
    fused = {v.grouping: medians[v.key].device_ms for v in variants if v.name == "torch AdamW fused"}
    rows = []
    for v in variants:
        t = medians[v.key]
        gbs = workload.numel * v.bytes_per_param / 1e6 / t.device_ms
        row = dict(workload=workload.name, params=workload.numel, tensors=workload.num_tensors,
                   groups=len(workload.groups) if v.grouping == GROUPINGS[0] else 1, variant=v.name,
                   grouping=v.grouping, bytes_per_param=v.bytes_per_param,
                   state_bytes_per_param=v.state_bytes_per_param, device_ms=t.device_ms,
                   host_ms=t.host_ms, host_bound=t.host_bound, gbs=gbs,
                   share_of_stream_ceiling=gbs / ceiling_gbs["stream_4r3w"],
                   share_of_copy_ceiling=gbs / ceiling_gbs["copy"],
                   speedup_vs_torch_fused=fused[v.grouping] / t.device_ms,
                   stream_ceiling_gbs=ceiling_gbs["stream_4r3w"], copy_ceiling_gbs=ceiling_gbs["copy"])
        if timer.cuda and v.grouping == GROUPINGS[0]:  # the profiler costs seconds: once per optimizer
            row["launches_per_step"] = launches_per_step(v.step)
        if v.optimizer is not None:
            row["check_us_per_param"] = host_check_us_per_param(v.optimizer)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\n{first['workload']}: {first['params'] / 1e6:.1f}M params in {first['tensors']} tensors; "
          f"ceilings: stream_4r3w {first['stream_ceiling_gbs']:.1f} GB/s, "
          f"copy {first['copy_ceiling_gbs']:.1f} GB/s")
    print(f"  {'variant':38s} {'groups':>6s} {'state B':>7s} {'moved B':>7s} {'device ms':>9s} "
          f"{'host ms':>8s} {'GB/s':>7s} {'% 4r3w':>7s} {'% copy':>7s} {'vs fused':>8s} {'launches':>8s}  "
          "check µs/param, same / new grads, by reads")
    for r in rows:
        launches = str(r.get("launches_per_step", "-"))
        check = "".join(f"  {path} {same:.2f} / {new:.2f}"
                        for path, (same, new) in r.get("check_us_per_param", {}).items())
        bound = " host-bound" if r["host_bound"] else ""
        print(f"  {r['variant']:38s} {r['groups']:6d} {r['state_bytes_per_param']:7d} "
              f"{r['bytes_per_param']:7d} {r['device_ms']:9.3f} "
              f"{r['host_ms']:8.3f} {r['gbs']:7.1f} {100 * r['share_of_stream_ceiling']:6.1f}% "
              f"{100 * r['share_of_copy_ceiling']:6.1f}% {r['speedup_vs_torch_fused']:7.2f}x "
              f"{launches:>8s}{check}{bound}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--workloads", default=None,
                        help="comma-separated names (default: all for the device)")
    parser.add_argument("--backends", default=None, help="MLRAdamW backends (default: cpu, or cuda,triton)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    catalogue = CPU_WORKLOADS if args.device == "cpu" else GPU_WORKLOADS
    names = args.workloads.split(",") if args.workloads else list(catalogue)
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(catalogue)}")
    default_backends = ["cpu"] if args.device == "cpu" else ["cuda", "triton"]
    backends = args.backends.split(",") if args.backends else default_backends
    env = environment(args.device)
    del env["kernel_backends"]  # per variant, in the rows
    print(f"device={args.device} dtype={args.dtype} rounds={args.rounds} (medians) "
          + " ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    for name in names:
        workload_rows = measure(catalogue[name], args.device, DTYPES[args.dtype], backends, args.rounds,
                                args.warmup)
        print_table(workload_rows)
        rows += workload_rows
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, dtype=args.dtype, rows=rows), indent=2))


if __name__ == "__main__":
    main()
