"""Parameter sets the optimizer benchmarks step over, each with its param groups.

Every workload is a list of (group name, shapes) pairs: one param group per module, as ML-LR,
layer-wise LR decay or LoRA+ build them. Tensors are filled with random values, never zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Workload:
    name: str
    groups: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]

    @property
    def numel(self) -> int:
        return sum(_prod(s) for _, shapes in self.groups for s in shapes)

    @property
    def num_tensors(self) -> int:
        return sum(len(shapes) for _, shapes in self.groups)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def llama(layers: int, hidden: int, intermediate: int, vocab: int, kv_heads_ratio: int = 1) -> Workload:
    """A Llama-shaped model with one group per module (q,k,v,o,gate,up,down per layer), one for
    the norms and one each for the embeddings and the head."""
    kv = hidden // kv_heads_ratio
    module_shapes = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
                     "gate": (intermediate, hidden), "up": (intermediate, hidden),
                     "down": (hidden, intermediate)}
    groups = [("embed", ((vocab, hidden),))]
    for layer in range(layers):
        groups += [(f"{layer}.{m}", (shape,)) for m, shape in module_shapes.items()]
    groups += [("norms", tuple((hidden,) for _ in range(2 * layers + 1))), ("lm_head", ((vocab, hidden),))]
    return Workload(f"llama-{layers}x{hidden}", tuple(groups))


def lora(factors: int, rank: int = 16, width: int = 4096) -> Workload:
    """LoRA adapters: ``factors`` matrices of rank x width, A and B of a module in one group."""
    groups = tuple((f"lora{i}", ((rank, width), (rank, width))) for i in range(factors // 2))
    return Workload(f"lora-{factors}x{rank}x{width}", groups)


def small_tensors(count: int, size: int = 4096, per_group: int = 1) -> Workload:
    """Thousands of small tensors, ``per_group`` in each group (one: the worst case for per-group
    launches and for the per-step check's reads of group values)."""
    name = f"small-{count}x{size}" + (f"-groups-of-{per_group}" if per_group > 1 else "")
    return Workload(name, tuple((f"t{i}", ((size,),) * per_group) for i in range(0, count, per_group)))


CPU_WORKLOADS = {
    "llama": llama(layers=8, hidden=768, intermediate=2048, vocab=16000),  # ~81M parameters
    "lora": lora(448),  # 448 factors of 16x4096, 224 groups
    "small": small_tensors(2000),  # 2000 tensors of 4096 elements
    # Issue 18's setting for the per-step check's host time: 2000 small tensors, a group per two.
    "small-pairs": small_tensors(2000, per_group=2),
}

GPU_WORKLOADS = {
    "llama-125m": llama(layers=12, hidden=768, intermediate=3072, vocab=32000),
    "llama-1b": llama(layers=16, hidden=2048, intermediate=5632, vocab=32000, kv_heads_ratio=4),
    "llama-7b": llama(layers=32, hidden=4096, intermediate=11008, vocab=32000),
    "lora": lora(448),  # about 450 tensors, about 0.3 ms of device work: where the host time shows
    "small": small_tensors(2000),
}


def make_params(workload: Workload, device: str, dtype: torch.dtype, seed: int = 0):
    """Random parameters with random gradients, grouped as the workload says.

    Returns a list of (group name, [parameters]) with ``.grad`` set on every parameter."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for name, shapes in workload.groups:
        params = []
        for shape in shapes:
            p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device, dtype=dtype) * 0.02)
            p.grad = torch.randn(shape, generator=gen, device=device, dtype=dtype) * 1e-3
            params.append(p)
        out.append((name, params))
    return out
