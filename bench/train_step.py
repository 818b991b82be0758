"""A whole training step, MLRAdamW (float32 and bfloat16 moments) against
torch.optim.AdamW(fused=True): time and peak memory.

    python bench/train_step.py                       # CPU, a small Llama
    python bench/train_step.py --device cuda --layers 12 --hidden 768 --batch 16 --seq 512

Each step is what a trainer does: forward, backward, ``optimizer.zero_grad()`` (torch's default,
``set_to_none=True``, so every backward allocates new gradients that MLRAdamW must find), and
``optimizer.step()``; one param group per module, MLRAdamW's alternating ``lr_mult`` 1.0 / 0.1 as
ML-LR would. Both optimizers train their own copy of one model on the same batches, interleaved
step by step, and the table gives medians. Peak memory is measured in a fresh process per
optimizer (CPU: resident-set high-water mark, with large blocks mmap'ed so that freed memory
leaves it; GPU: ``torch.cuda.max_memory_allocated``) above the level after the model and batch
exist, so it counts gradients, optimizer state and activations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mlr_kernels import MLRAdamW

OPTIMIZERS = ("MLRAdamW", "MLRAdamW bf16 state", "torch fused")


def build_model(args: argparse.Namespace, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    heads = max(1, args.hidden // 64)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=args.seq)
    return LlamaForCausalLM(config).to(args.device)


def module_groups(model: torch.nn.Module, mlr: bool) -> list[dict]:
    """One param group per module (q, k, v, o, gate, up, down of each layer, norms, embeddings)."""
    by_module: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        by_module.setdefault(name.rsplit(".", 1)[0], []).append(p)
    groups = []
    for k, params in enumerate(by_module.values()):
        group = {"params": params}
        if mlr:
            group["lr_mult"] = 1.0 if k % 3 == 0 else 0.1
        groups.append(group)
    return groups


def build_optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "MLRAdamW":
        return MLRAdamW(module_groups(model, mlr=True), lr=1e-4)
    if kind == "MLRAdamW bf16 state":
        return MLRAdamW(module_groups(model, mlr=True), lr=1e-4, state_dtype=torch.bfloat16)
    return torch.optim.AdamW(module_groups(model, mlr=False), lr=1e-4, fused=True)


def batches(args: argparse.Namespace, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)
            for _ in range(count)]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def now(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_steps(args: argparse.Namespace) -> dict[str, list[float]]:
    """Milliseconds per step for each optimizer, interleaved step by step after a warm-up."""
    runs = {kind: build_model(args) for kind in OPTIMIZERS}
    optimizers = {kind: build_optimizer(kind, model) for kind, model in runs.items()}
    data = batches(args, args.warmup + args.steps)
    samples: dict[str, list[float]] = {kind: [] for kind in OPTIMIZERS}
    for i, ids in enumerate(data):
        for kind in OPTIMIZERS:
            start = now(args.device)
            train_step(runs[kind], optimizers[kind], ids)
            if i >= args.warmup:
                samples[kind].append((now(args.device) - start) * 1e3)
    return samples


def peak_memory_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: train with one optimizer and print its peak memory in MiB."""
    model = build_model(args)
    data = batches(args, 3)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
        _reset_peak_rss()
    optimizer = build_optimizer(args.child, model)
    for ids in data:
        train_step(model, optimizer, ids)
    if args.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mib() - base
    print(json.dumps({"peak_mib": peak}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> None:
    """Make the kernel's resident-set high-water mark restart from the current size."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(args: argparse.Namespace, kind: str) -> float:
    argv = [sys.executable, __file__, "--child", kind, *sys.argv[1:]]
    # Blocks of 64 KiB and more come from mmap and go back to the system when freed, so the
    # resident-set high-water mark follows live tensor memory instead of malloc's free lists.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args)
        return

    model = build_model(args)
    params = sum(p.numel() for p in model.parameters())
    groups = len(module_groups(model, mlr=False))
    del model
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}; Llama "
          f"{args.layers}x{args.hidden}, vocab {args.vocab}: {params / 1e6:.1f}M params, {groups} groups; "
          f"batch {args.batch}x{args.seq}; median of {args.steps} interleaved steps")
    samples = time_steps(args)
    peaks = {kind: peak_memory(args, kind) for kind in OPTIMIZERS}
    medians = {kind: statistics.median(times) for kind, times in samples.items()}
    print(f"  {'optimizer':20s} {'ms/step':>9s} {'peak MiB':>9s} {'speed vs torch fused':>21s} "
          f"{'peak - torch fused':>19s}")
    for kind in OPTIMIZERS:
        speed = medians["torch fused"] / medians[kind]
        print(f"  {kind:20s} {medians[kind]:9.1f} {peaks[kind]:9.1f} {speed:20.3f}x "
              f"{peaks[kind] - peaks['torch fused']:+15.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"medians_ms": medians, "peak_mib": peaks, "samples_ms": samples,
                                         "params": params, "groups": groups}, indent=2))


if __name__ == "__main__":
    main()
