"""The per-step check's host time under FSDP2, beside the same parameters unsharded.

MLRAdamW steps a workload's parameters as FSDP2 makes them (``fully_shard``, each group's module
sharded over a process group of one rank, gloo: DTensors whose local shards are the whole
tensors), with gradients FSDP2's backward made, and the same parameters as plain ones. For each,
the host time of what a step does before its launches is timed as ``compare_optimizers.py`` times
it (``host_check_us_per_param``): µs per parameter with the gradients unchanged since the last
step and with every gradient re-allocated, for each way the build can read them
(``MLR_HOST_READS``: ``c++``, ``python``).

    python bench/host_check_fsdp2.py [--workloads small-pairs,lora] [--rounds 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_optimizers import group_dicts, host_check_us_per_param  # noqa: E402
from mlr.environment import environment  # noqa: E402
from workloads import CPU_WORKLOADS, make_params  # noqa: E402

from mlr_kernels import MLRAdamW  # noqa: E402


class Group(torch.nn.Module):
    """One group's parameters, with a forward through which FSDP2 makes their gradients."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in params])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w.sum() for w in self.weights) * x


def sharded_groups(named_groups) -> tuple[list[tuple[str, list[torch.nn.Parameter]]], list[torch.Tensor]]:
    """The workload's groups with each group's parameters sharded by FSDP2 (a module per group),
    every parameter with a gradient FSDP2's backward made; and a second such gradient per
    parameter (in the groups' order), for the rounds with new gradients. FSDP2 gives a gradient
    its parameter's spec object, as the C++ reads expect (another, even an equal one, is left to
    the Python reads)."""
    modules = [Group(params) for _, params in named_groups]
    for module in modules:
        fully_shard(module)

    def backward() -> None:
        sum(module(torch.ones(())) for module in modules).backward()

    backward()
    params = [p for module in modules for p in module.parameters()]
    first = [p.grad for p in params]
    for p in params:
        p.grad = None
    backward()  # the first gradients are held: these are new tensors
    second = [p.grad for p in params]
    for p, grad in zip(params, first):
        p.grad = grad
    return [(name, list(module.parameters())) for (name, _), module in zip(named_groups, modules)], second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="small-pairs,lora",
                        help=f"comma-separated names from {', '.join(CPU_WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    names = args.workloads.split(",")
    unknown = [name for name in names if name not in CPU_WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(CPU_WORKLOADS)}")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        env = environment("cpu")
        del env["kernel_backends"]
        print(f"rounds={args.rounds} (medians) " + " ".join(f"{k}={v}" for k, v in env.items()))
        print("check µs/param, same / new grads, by reads")
        for name in names:
            named = make_params(CPU_WORKLOADS[name], "cpu", torch.float32)
            sharded, new_grads = sharded_groups(named)
            for kind, groups, grads in (("plain", named, None), ("FSDP2", sharded, new_grads)):
                opt = MLRAdamW(group_dicts(groups, 1e-3, with_mult=True), lr=1e-3, backend="cpu")
                opt.step()
                check = host_check_us_per_param(opt, args.rounds, grads)
                print(f"{name:<12s} {kind:<6s}" + "".join(f"  {path} {same:.2f} / {new:.2f}"
                                                         for path, (same, new) in check.items()),
                      flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
