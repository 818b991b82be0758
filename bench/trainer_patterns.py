"""Two trainer patterns timed against torch.optim.AdamW, optionally against an older mlr_kernels.

    python bench/trainer_patterns.py                                  # MLRAdamW vs torch
    python bench/trainer_patterns.py --baseline /path/to/old/checkout # and an older MLRAdamW
    python bench/trainer_patterns.py --patterns in_backward --layers 160  # 320 hooked parameters

* ``channels_last``: one ``step()`` over conv weights in channels_last layout (and the same weights
  contiguous), gradients in the weights' layout as autograd leaves them.
* ``in_backward``: one optimizer stepped from every parameter's post-accumulate-grad hook
  (``step()`` then ``zero_grad()``), ``--layers`` Linear layers of width 64 (2 parameters each;
  80 by default); the first backward (every gradient is new to the optimizer) and the third.

Each round runs one worker process per implementation, alternating, so machine noise hits all
alike; the table gives medians over every sample of every round. ``--baseline`` is a directory
holding an ``mlr_kernels`` package (with its compiled extension) to import instead of this one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Conv weights of a small ResNet-like network: (out, in, kh, kw).
CONV_SHAPES = ((64, 3, 7, 7), *[(64, 64, 3, 3)] * 4, (128, 64, 3, 3), *[(128, 128, 3, 3)] * 3)
WIDTH = 64


def time_channels_last(samples: int) -> dict[str, list[float]]:
    """ms per step() for each optimizer over the conv weights, rounds interleaved."""
    import torch

    from mlr_kernels import MLRAdamW

    def weights(memory_format):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).contiguous(memory_format=memory_format))
                  for s in CONV_SHAPES]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).contiguous(memory_format=memory_format)
        return params

    cl = torch.channels_last
    steps = {
        "MLRAdamW channels_last": MLRAdamW(weights(cl), lr=1e-3).step,
        "MLRAdamW contiguous": MLRAdamW(weights(torch.contiguous_format), lr=1e-3).step,
        "torch AdamW channels_last": torch.optim.AdamW(weights(cl), lr=1e-3).step,
        "torch AdamW fused channels_last": torch.optim.AdamW(weights(cl), lr=1e-3, fused=True).step,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(samples + 3):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if k >= 3:  # warm-up
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def time_in_backward(samples: int, layers: int) -> dict[str, list[float]]:
    """ms of the first and of the third backward with the optimizer stepped from the hooks."""
    import torch

    from mlr_kernels import MLRAdamW

    builders = {"MLRAdamW": lambda ps: MLRAdamW(ps, lr=1e-3),
                "torch AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3)}
    times: dict[str, list[float]] = {f"{name} {which}": [] for name in builders
                                     for which in ("first backward", "third backward")}
    x = torch.randn(8, WIDTH, generator=torch.Generator().manual_seed(1))
    for _ in range(samples):
        for name, build in builders.items():
            torch.manual_seed(0)
            model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
            opt = build(list(model.parameters()))

            def hook(_: torch.Tensor, opt=opt) -> None:
                opt.step()
                opt.zero_grad()

            for p in model.parameters():
                p.register_post_accumulate_grad_hook(hook)
            for k in range(3):
                loss = model(x).pow(2).mean()
                start = time.perf_counter()
                loss.backward()
                elapsed = (time.perf_counter() - start) * 1e3
                if k in (0, 2):
                    times[f"{name} {'first' if k == 0 else 'third'} backward"].append(elapsed)
    return times


def worker(args: argparse.Namespace) -> None:
    times = {}
    if "channels_last" in args.patterns:
        times.update(time_channels_last(args.samples * 5))
    if "in_backward" in args.patterns:
        times.update(time_in_backward(args.samples, args.layers))
    print(json.dumps(times))


def run_worker(path: Path | None, args: argparse.Namespace) -> dict[str, list[float]]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = f"{path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [sys.executable, __file__, "--worker", "--samples", str(args.samples),
               "--layers", str(args.layers), "--patterns", args.patterns]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="directory with an older mlr_kernels package")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=3, help="samples per worker and round")
    parser.add_argument("--patterns", default="channels_last,in_backward")
    parser.add_argument("--layers", type=int, default=80, help="hooked Linear layers (in_backward)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    implementations = {"this checkout": None}
    if args.baseline is not None:
        implementations["baseline"] = args.baseline.resolve()
    results: dict[str, dict[str, list[float]]] = {name: {} for name in implementations}
    for _ in range(args.rounds):
        for name, path in implementations.items():
            for key, values in run_worker(path, args).items():
                results[name].setdefault(key, []).extend(values)
    print(f"medians over {args.rounds} rounds, interleaved; ms")
    for name, rows in results.items():
        print(f"\n{name}:")
        for key, values in rows.items():
            print(f"  {key:36s} {statistics.median(values):9.3f}  (n={len(values)})")


if __name__ == "__main__":
    main()
